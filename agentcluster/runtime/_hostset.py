"""How many session hosts to run: a pure function of their loads, bounded by min and max."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

__all__ = ["HostSetBounds", "plan_host_count"]


class HostSetBounds(Protocol):
    min_hosts: int
    max_hosts: int
    sessions_per_host: int
    target_utilization: float


def plan_host_count(loads: Sequence[int], bounds: HostSetBounds) -> int:
    """The host count to converge on, given each current host's active sessions.

    Grows at once to what the load needs; shrinks one host at a time and only when the rest would
    be at most half full (hysteresis, so a load hovering at a boundary does not flap).
    """
    current = len(loads)
    total = sum(loads)
    capacity = bounds.sessions_per_host * bounds.target_utilization
    needed = math.ceil(total / capacity) if total else 0
    if needed > current:
        target = needed
    elif current > 1 and total <= (current - 1) * capacity * 0.5:
        target = current - 1
    else:
        target = current
    return max(bounds.min_hosts, min(bounds.max_hosts, target))
