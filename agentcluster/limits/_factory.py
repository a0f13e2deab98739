"""Builds the limits from the settings tree: the one place that picks the adapters (Redis when
``SA01_REDIS_URL`` is set; else this process's memory for request rates and open streams and the
state store for daily usage). Overrides are kept in the state store in every mode."""

from __future__ import annotations

from agentcluster.config import Settings
from agentcluster.limits._memory import MemoryRateLimiter, MemoryStreamSlots
from agentcluster.limits._models import TenantLimits
from agentcluster.limits._ports import RateLimiter, StreamSlots, UsageCounter
from agentcluster.limits._redis import RedisLimiter
from agentcluster.limits._service import BudgetGuard, LimitsResolver, TenantLimitsService
from agentcluster.limits._sql import LimitsDatabase, SqlOverridesStore, SqlUsageCounter

__all__ = ["open_budget_guard", "open_tenant_limits"]


def _redis(settings: Settings) -> RedisLimiter | None:
    if settings.redis.url is None:
        return None
    return RedisLimiter(
        settings.redis.url,
        prefix=settings.runtime.namespace,
        timeout_s=settings.limits.redis_timeout_s,
    )


def _resolver(settings: Settings, state_store: LimitsDatabase) -> LimitsResolver:
    return LimitsResolver(
        TenantLimits.defaults(settings.limits),
        SqlOverridesStore(state_store),
        refresh_s=settings.limits.refresh_s,
    )


def open_tenant_limits(settings: Settings, state_store: LimitsDatabase) -> TenantLimitsService:
    """The gateway's limits (close with ``aclose``; the state store stays open)."""
    redis = _redis(settings)
    rate: RateLimiter = redis if redis is not None else MemoryRateLimiter()
    usage: UsageCounter = redis if redis is not None else SqlUsageCounter(state_store)
    streams: StreamSlots = redis if redis is not None else MemoryStreamSlots()
    return TenantLimitsService(
        _resolver(settings, state_store),
        SqlOverridesStore(state_store),
        rate,
        usage,
        streams=streams,
        stream_lease_s=settings.limits.stream_lease_s,
    )


def open_budget_guard(settings: Settings, state_store: LimitsDatabase) -> BudgetGuard:
    """A session host's budget guard (close with ``aclose``; the state store stays open)."""
    redis = _redis(settings)
    usage: UsageCounter = redis if redis is not None else SqlUsageCounter(state_store)
    return BudgetGuard(_resolver(settings, state_store), usage)
