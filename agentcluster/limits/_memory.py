"""The embedded rate limiter and stream slots: request times and open streams in this process's
memory.

Each gateway replica is its own process, so each one limits alone: with N replicas a tenant may
get up to N times its rate. That is accepted for the embedded default (one machine, usually one
replica); set ``SA01_REDIS_URL`` for one limit shared by every replica.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from agentcluster.limits._math import sliding_window
from agentcluster.limits._models import RateDecision, StreamDecision

__all__ = ["MemoryRateLimiter", "MemoryStreamSlots"]

SWEEP_EVERY = 1024
"""Requests between sweeps of tenants whose windows emptied (memory stays bounded)."""


class MemoryRateLimiter:
    """In-process :class:`~agentcluster.limits.RateLimiter` (see the module docstring).

    Args:
        clock: monotonic seconds (tests pass their own).
    """

    description = "in-process rate limiter (each gateway replica limits alone)"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, deque[float]] = {}
        self._hits = 0

    async def hit(self, tenant_id: str, limit: int, window_s: float) -> RateDecision:
        now = self._clock()
        self._hits += 1
        if self._hits % SWEEP_EVERY == 0:
            self._sweep(now, window_s)
        times = self._windows.setdefault(tenant_id, deque())
        return sliding_window(times, now, limit, window_s)

    def _sweep(self, now: float, window_s: float) -> None:
        idle = [t for t, times in self._windows.items() if not times or times[-1] <= now - window_s]
        for tenant_id in idle:
            del self._windows[tenant_id]

    async def aclose(self) -> None:
        self._windows.clear()


class MemoryStreamSlots:
    """In-process :class:`~agentcluster.limits.StreamSlots`: each gateway replica counts the
    streams it serves (a process that dies takes its slots with it, so leases matter only for
    a holder that never releases).

    Args:
        clock: monotonic seconds (tests pass their own).
    """

    description = "in-process stream slots (each gateway replica counts alone)"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._slots: dict[str, dict[str, float]] = {}  # tenant -> slot -> lease expiry

    def _live(self, tenant_id: str) -> dict[str, float]:
        now = self._clock()
        slots = self._slots.setdefault(tenant_id, {})
        for slot_id in [s for s, expiry in slots.items() if expiry <= now]:
            del slots[slot_id]
        return slots

    async def acquire(
        self, tenant_id: str, slot_id: str, limit: int, lease_s: float
    ) -> StreamDecision:
        slots = self._live(tenant_id)
        if len(slots) >= limit:
            return StreamDecision(acquired=False, open_streams=len(slots))
        slots[slot_id] = self._clock() + lease_s
        return StreamDecision(acquired=True, open_streams=len(slots))

    async def renew(self, tenant_id: str, slot_id: str, lease_s: float) -> None:
        self._live(tenant_id)[slot_id] = self._clock() + lease_s

    async def release(self, tenant_id: str, slot_id: str) -> None:
        slots = self._slots.get(tenant_id)
        if slots is None:
            return
        slots.pop(slot_id, None)
        if not slots:
            del self._slots[tenant_id]

    async def aclose(self) -> None:
        self._slots.clear()
