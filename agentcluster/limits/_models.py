"""The values of per-tenant limits: what a tenant may use, what it used today, the API bodies, and
the UTC day arithmetic the daily budgets share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agentcluster.config import LimitSettings

__all__ = [
    "NANO_USD",
    "WINDOW_S",
    "BudgetName",
    "DailyUsage",
    "LimitOverrides",
    "RateDecision",
    "StreamDecision",
    "TenantLimits",
    "TenantLimitsOut",
    "UsageToday",
    "day_key",
    "next_reset",
    "to_nano_usd",
]

WINDOW_S = 60.0
"""The window of ``requests_per_minute``: at most that many requests in any 60 seconds."""
NANO_USD = 1_000_000_000
"""Costs are counted in integer nano-dollars: exact sums, and a call of a few tokens of a cheap
model (1e-7 USD) still counts."""

BudgetName = Literal["tokens_per_day", "cost_per_day_usd"]


class TenantLimits(BaseModel):
    """The limits that apply to a tenant (``0``: unlimited)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests_per_minute: int = Field(default=0, ge=0)
    tokens_per_day: int = Field(default=0, ge=0)
    cost_per_day_usd: float = Field(default=0.0, ge=0)
    max_open_streams: int = Field(default=0, ge=0)

    @classmethod
    def defaults(cls, settings: LimitSettings) -> TenantLimits:
        """Every tenant's limits before overrides (``SA01_LIMITS_*``)."""
        return cls(
            requests_per_minute=settings.requests_per_minute,
            tokens_per_day=settings.tokens_per_day,
            cost_per_day_usd=settings.cost_per_day_usd,
            max_open_streams=settings.max_open_streams,
        )

    @property
    def has_budget(self) -> bool:
        """Whether a daily budget (tokens or cost) applies."""
        return self.tokens_per_day > 0 or self.cost_per_day_usd > 0

    def merged(self, overrides: LimitOverrides) -> TenantLimits:
        """These limits with the tenant's overrides applied (``None`` keeps the default)."""
        return self.model_copy(update=overrides.model_dump(exclude_none=True))


class LimitOverrides(BaseModel):
    """A tenant's own limits (``PUT /v1/tenants/{tenant_id}/limits``): a value replaces the
    default, ``null`` (or leaving it out) keeps the default, ``0`` means unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests_per_minute: int | None = Field(default=None, ge=0, le=1_000_000)
    tokens_per_day: int | None = Field(default=None, ge=0, le=10**12)
    cost_per_day_usd: float | None = Field(default=None, ge=0, le=10**7)
    max_open_streams: int | None = Field(default=None, ge=0, le=100_000)


@dataclass(frozen=True)
class DailyUsage:
    """What a tenant used on one UTC day: tokens and cost (nano-dollars)."""

    tokens: int = 0
    cost_nano_usd: int = 0

    @property
    def cost_usd(self) -> float:
        return self.cost_nano_usd / NANO_USD


class UsageToday(BaseModel):
    """A tenant's usage on the current UTC day and when it starts again from zero."""

    model_config = ConfigDict(frozen=True)

    day: str
    tokens: int
    cost_usd: float
    resets_at: datetime


class TenantLimitsOut(BaseModel):
    """``GET /v1/tenants/{tenant_id}/limits``: the limits in force, where they come from, and the
    day's usage."""

    model_config = ConfigDict(frozen=True)

    tenant_id: str
    limits: TenantLimits
    """What applies now: the defaults with the overrides applied."""
    defaults: TenantLimits
    """``SA01_LIMITS_*``."""
    overrides: LimitOverrides
    usage_today: UsageToday


@dataclass(frozen=True)
class RateDecision:
    """The answer of a rate limiter for one request.

    Attributes:
        allowed: whether the request is admitted (and counted).
        limit: requests allowed per window.
        remaining: requests still allowed in the window after this one.
        retry_after_s: when refused, seconds until a slot frees (0 when allowed).
    """

    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float = 0.0


def day_key(now: datetime) -> str:
    """The UTC day of ``now`` (``2025-01-31``): the key of the daily counters."""
    return now.astimezone(UTC).date().isoformat()


def next_reset(now: datetime) -> datetime:
    """The next UTC midnight after ``now``, when the daily counters start again."""
    day = now.astimezone(UTC).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def to_nano_usd(cost_usd: float) -> int:
    """US dollars as integer nano-dollars (rounded)."""
    return round(cost_usd * NANO_USD)


@dataclass(frozen=True)
class StreamDecision:
    """The answer of :meth:`~agentcluster.limits.StreamSlots.acquire`.

    Attributes:
        acquired: whether a slot was taken (it is held until released or its lease expires).
        open_streams: the tenant's open streams, counting this one when acquired.
    """

    acquired: bool
    open_streams: int
