"""Per-tenant limits: API requests per minute, LLM tokens and cost per UTC day.

* :class:`TenantLimitsService`: the gateway admits each tenant request against its rate
  (429 ``rate-limited`` with ``Retry-After`` past it), leases each open stream or wait a slot
  (:class:`StreamLease`; 429 ``too-many-streams`` past ``max_open_streams``) and serves
  ``GET/PUT /v1/tenants/{tenant_id}/limits``;
* :class:`BudgetGuard`: the agent loop's :class:`~agentcluster.agent.Budget` in each session
  host: a call the day's budget does not allow fails the turn (``BudgetExceeded``), no call made;
* :class:`LimitsResolver`: the ``SA01_LIMITS_*`` defaults with a tenant's overrides;
* ports :class:`RateLimiter`, :class:`UsageCounter`, :class:`OverridesStore`,
  :class:`StreamSlots` with the Redis,
  in-process and state-store adapters (:mod:`agentcluster.limits._ports` tells which is which);
* :func:`sliding_window` and :func:`budget_verdict`: the arithmetic, free of storage.
"""

from agentcluster.limits._factory import open_budget_guard, open_tenant_limits
from agentcluster.limits._math import budget_verdict, retry_after_header, sliding_window
from agentcluster.limits._memory import MemoryRateLimiter, MemoryStreamSlots
from agentcluster.limits._models import (
    NANO_USD,
    WINDOW_S,
    BudgetName,
    DailyUsage,
    LimitOverrides,
    RateDecision,
    StreamDecision,
    TenantLimits,
    TenantLimitsOut,
    UsageToday,
    day_key,
    next_reset,
    to_nano_usd,
)
from agentcluster.limits._ports import (
    Admission,
    OverridesStore,
    RateLimiter,
    StreamSlots,
    UsageCounter,
)
from agentcluster.limits._redis import RedisLimiter
from agentcluster.limits._service import (
    BudgetGuard,
    LimitsResolver,
    TenantLimitsService,
    budget_exceeded,
    estimate_prompt_tokens,
)
from agentcluster.limits._sql import LimitsDatabase, SqlOverridesStore, SqlUsageCounter
from agentcluster.limits._streams import STREAM_RETRY_AFTER_S, StreamLease, open_stream_lease

__all__ = [
    "NANO_USD",
    "STREAM_RETRY_AFTER_S",
    "WINDOW_S",
    "Admission",
    "BudgetGuard",
    "BudgetName",
    "DailyUsage",
    "LimitOverrides",
    "LimitsDatabase",
    "LimitsResolver",
    "MemoryRateLimiter",
    "MemoryStreamSlots",
    "OverridesStore",
    "RateDecision",
    "RateLimiter",
    "RedisLimiter",
    "SqlOverridesStore",
    "SqlUsageCounter",
    "StreamDecision",
    "StreamLease",
    "StreamSlots",
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
    "open_stream_lease",
    "open_tenant_limits",
    "retry_after_header",
    "sliding_window",
    "to_nano_usd",
]
