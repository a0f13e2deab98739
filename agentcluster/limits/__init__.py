"""Per-tenant limits: API requests per minute, LLM tokens and cost per UTC day.

* :class:`TenantLimitsService`: the gateway admits each tenant request against its rate
  (429 ``rate-limited`` with ``Retry-After`` past it) and serves ``GET/PUT
  /v1/tenants/{tenant_id}/limits``;
* :class:`BudgetGuard`: the agent loop's :class:`~agentcluster.agent.Budget` in each session
  host: a call the day's budget does not allow fails the turn (``BudgetExceeded``), no call made;
* :class:`LimitsResolver`: the ``SA01_LIMITS_*`` defaults with a tenant's overrides;
* ports :class:`RateLimiter`, :class:`UsageCounter`, :class:`OverridesStore` with the Redis,
  in-process and state-store adapters (:mod:`agentcluster.limits._ports` tells which is which);
* :func:`sliding_window` and :func:`budget_verdict`: the arithmetic, free of storage.
"""

from agentcluster.limits._factory import open_budget_guard, open_tenant_limits
from agentcluster.limits._math import budget_verdict, retry_after_header, sliding_window
from agentcluster.limits._memory import MemoryRateLimiter
from agentcluster.limits._models import (
    NANO_USD,
    WINDOW_S,
    BudgetName,
    DailyUsage,
    LimitOverrides,
    RateDecision,
    TenantLimits,
    TenantLimitsOut,
    UsageToday,
    day_key,
    next_reset,
    to_nano_usd,
)
from agentcluster.limits._ports import Admission, OverridesStore, RateLimiter, UsageCounter
from agentcluster.limits._redis import RedisLimiter
from agentcluster.limits._service import (
    BudgetGuard,
    LimitsResolver,
    TenantLimitsService,
    budget_exceeded,
    estimate_prompt_tokens,
)
from agentcluster.limits._sql import SqlOverridesStore, SqlUsageCounter

__all__ = [
    "NANO_USD",
    "WINDOW_S",
    "Admission",
    "BudgetGuard",
    "BudgetName",
    "DailyUsage",
    "LimitOverrides",
    "LimitsResolver",
    "MemoryRateLimiter",
    "OverridesStore",
    "RateDecision",
    "RateLimiter",
    "RedisLimiter",
    "SqlOverridesStore",
    "SqlUsageCounter",
    "TenantLimits",
    "TenantLimitsOut",
    "TenantLimitsService",
    "UsageCounter",
    "UsageToday",
    "budget_exceeded",
    "budget_verdict",
    "day_key",
    "estimate_prompt_tokens",
    "next_reset",
    "open_budget_guard",
    "open_tenant_limits",
    "retry_after_header",
    "sliding_window",
    "to_nano_usd",
]
