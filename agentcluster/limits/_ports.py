"""The ports of the limits: where request times, daily usage and a tenant's overrides are kept.

Adapters (chosen by :mod:`agentcluster.limits._factory`):

======================  ==========================================  ==============================
port                    embedded default (no ``SA01_REDIS_URL``)    production
======================  ==========================================  ==============================
:class:`RateLimiter`    :class:`MemoryRateLimiter` (per process)    :class:`RedisLimiter`
:class:`UsageCounter`   :class:`SqlUsageCounter` (state store)      :class:`RedisLimiter`
:class:`OverridesStore` :class:`SqlOverridesStore` (state store)    the same
:class:`StreamSlots`    :class:`MemoryStreamSlots` (per process)    :class:`RedisLimiter`
======================  ==========================================  ==============================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from agentcluster.limits._models import (
    BudgetName,
    DailyUsage,
    LimitOverrides,
    RateDecision,
    StreamDecision,
    TenantLimits,
)

__all__ = ["Admission", "OverridesStore", "RateLimiter", "StreamSlots", "UsageCounter"]


class RateLimiter(Protocol):
    """Port: requests per tenant in a sliding window."""

    description: str

    async def hit(self, tenant_id: str, limit: int, window_s: float) -> RateDecision:
        """Count a request of ``tenant_id`` if fewer than ``limit`` were counted in the last
        ``window_s`` seconds (see :func:`~agentcluster.limits.sliding_window`).

        Raises:
            InfrastructureError: the backend failed (``DependencyUnavailable`` when unreachable).
        """
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Admission:
    """The answer of :meth:`UsageCounter.reserve`: the budget that refused the call (None:
    admitted, the tokens reserved) and the day's usage before it."""

    refused: BudgetName | None
    used: DailyUsage


class UsageCounter(Protocol):
    """Port: tokens and cost per tenant per UTC day; counters of older days expire."""

    description: str

    async def reserve(
        self, tenant_id: str, day: str, tokens: int, limits: TenantLimits
    ) -> Admission:
        """Atomically: when :func:`~agentcluster.limits.budget_verdict` admits ``tokens`` more
        against ``limits``, add them to the day's tokens.

        Raises:
            InfrastructureError: the backend failed.
        """
        ...

    async def add(self, tenant_id: str, day: str, tokens: int, cost_nano_usd: int) -> None:
        """Add to the day's counters (``tokens`` may be negative: a reservation corrected)."""
        ...

    async def read(self, tenant_id: str, day: str) -> DailyUsage:
        """The day's counters (zero when nothing was counted)."""
        ...

    async def aclose(self) -> None: ...


class OverridesStore(Protocol):
    """Port: a tenant's own limits, shared by every process."""

    async def read(self, tenant_id: str) -> LimitOverrides:
        """The tenant's overrides (none set: all ``None``)."""
        ...

    async def write(self, tenant_id: str, overrides: LimitOverrides) -> None:
        """Replace the tenant's overrides.

        Raises:
            NotFoundError: no such tenant.
        """
        ...


class StreamSlots(Protocol):
    """Port: the streams and waits each tenant holds open, one slot per stream.

    A slot is leased: it frees itself ``lease_s`` after it was last taken or renewed, so the
    slots of a process that died come back without anyone releasing them.
    """

    description: str

    async def acquire(
        self, tenant_id: str, slot_id: str, limit: int, lease_s: float
    ) -> StreamDecision:
        """Atomically: take slot ``slot_id`` if the tenant holds fewer than ``limit`` live ones.

        Raises:
            InfrastructureError: the backend failed (``DependencyUnavailable`` when unreachable).
        """
        ...

    async def renew(self, tenant_id: str, slot_id: str, lease_s: float) -> None:
        """Extend the slot's lease by ``lease_s`` from now (taken again if it had expired: the
        stream is still open, so it counts)."""
        ...

    async def release(self, tenant_id: str, slot_id: str) -> None:
        """Free the slot (nothing when it is not held)."""
        ...

    async def aclose(self) -> None: ...
