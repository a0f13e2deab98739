"""What the gateway and the session hosts do with the limits.

* :class:`LimitsResolver`: a tenant's limits (the ``SA01_LIMITS_*`` defaults with its overrides),
  reused for ``SA01_LIMITS_REFRESH_S`` in each process;
* :class:`TenantLimitsService`: the gateway's side: admits each tenant request against its rate
  (:class:`~agentcluster.errors.RateLimited` past it), leases a slot to each open stream or wait
  (:class:`~agentcluster.errors.TooManyStreams` past ``max_open_streams``), reads and writes a
  tenant's limits;
* :class:`BudgetGuard`: the session host's side, the agent loop's
  :class:`~agentcluster.agent.Budget`: before each LLM call it reserves the call's estimated prompt
  tokens against the tenant's daily budgets (:class:`~agentcluster.errors.BudgetExceeded` when they
  do not allow it), after the call it corrects the reservation to the provider's usage and adds the
  cost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from agentcluster.agent import BudgetHold
from agentcluster.errors import AgentClusterError, BudgetExceeded, RateLimited
from agentcluster.events import Usage
from agentcluster.limits._math import retry_after_header
from agentcluster.limits._memory import MemoryStreamSlots
from agentcluster.limits._models import (
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
from agentcluster.limits._ports import OverridesStore, RateLimiter, StreamSlots, UsageCounter
from agentcluster.limits._streams import StreamLease, open_stream_lease
from agentcluster.llm import LlmRequest, count_messages

__all__ = [
    "BudgetGuard",
    "LimitsResolver",
    "TenantLimitsService",
    "budget_exceeded",
    "estimate_prompt_tokens",
]

log = logging.getLogger(__name__)

CACHE_SIZE = 10_000
"""Tenants whose limits a process remembers (all forgotten when full)."""

Now = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class LimitsResolver:
    """A tenant's limits, its overrides read at most every ``refresh_s`` seconds per process.

    A read that fails keeps the tenant's last known overrides (logged once per failure); a tenant
    never read before gets the error (``InfrastructureError``): limits fail closed.

    Args:
        defaults: every tenant's limits before overrides.
        overrides: where the overrides are kept.
        refresh_s: how long a tenant's overrides are reused (``0``: read every time).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        defaults: TenantLimits,
        overrides: OverridesStore,
        *,
        refresh_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.defaults = defaults
        self._overrides = overrides
        self._refresh_s = refresh_s
        self._clock = clock
        self._cache: dict[str, tuple[LimitOverrides, float]] = {}
        self._last_failure: str | None = None

    async def limits(self, tenant_id: str) -> TenantLimits:
        """The limits that apply to ``tenant_id`` now."""
        return self.defaults.merged(await self.overrides(tenant_id))

    async def overrides(self, tenant_id: str) -> LimitOverrides:
        """The tenant's overrides as this process knows them."""
        cached = self._cache.get(tenant_id)
        if cached is not None and self._clock() < cached[1]:
            return cached[0]
        try:
            found = await self._overrides.read(tenant_id)
        except AgentClusterError as exc:
            if cached is None:
                raise
            self._log_failure(exc)
            return cached[0]
        self.remember(tenant_id, found)
        return found

    def remember(self, tenant_id: str, overrides: LimitOverrides) -> None:
        """Use ``overrides`` for the tenant from now on (the writer's process sees a change at
        once; the others within ``refresh_s``)."""
        if self._refresh_s <= 0:
            return
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[tenant_id] = (overrides, self._clock() + self._refresh_s)
        self._last_failure = None

    def _log_failure(self, exc: AgentClusterError) -> None:
        if exc.message != self._last_failure:
            self._last_failure = exc.message
            log.warning("tenant limits: keeping the last known overrides; reading failed: %s", exc)


class TenantLimitsService:
    """The gateway's limits: request rates, open streams, and the admin API's reads and writes.

    Args:
        resolver: tenants' limits.
        overrides: where the admin API writes overrides.
        rate: the request-rate counters.
        usage: the daily usage counters (read for the admin API).
        streams: the open-stream slots (default: this process's).
        stream_lease_s: the lease of a stream's slot (renewed while the stream is open).
        now: the current time (tests pass their own).
    """

    def __init__(
        self,
        resolver: LimitsResolver,
        overrides: OverridesStore,
        rate: RateLimiter,
        usage: UsageCounter,
        *,
        streams: StreamSlots | None = None,
        stream_lease_s: float = 30.0,
        now: Now = _utcnow,
    ) -> None:
        self.resolver = resolver
        self._overrides = overrides
        self._rate = rate
        self._usage = usage
        self._streams: StreamSlots = streams if streams is not None else MemoryStreamSlots()
        self._stream_lease_s = stream_lease_s
        self._now = now

    async def admit(self, tenant_id: str) -> RateDecision | None:
        """Count one request of ``tenant_id`` against its rate; None when it has no rate limit.

        Raises:
            RateLimited: over the rate; ``retry_after`` is whole seconds until a slot frees.
            InfrastructureError: the counters cannot be reached (never silently unlimited).
        """
        limit = (await self.resolver.limits(tenant_id)).requests_per_minute
        if not limit:
            return None
        decision = await self._rate.hit(tenant_id, limit, WINDOW_S)
        if decision.allowed:
            return decision
        seconds = retry_after_header(decision.retry_after_s)
        raise RateLimited(
            f"rate limit of {limit} requests per minute reached; retry after {seconds} s",
            retry_after=seconds,
            limit=limit,
            window_s=WINDOW_S,
        )

    async def open_stream(self, tenant_id: str) -> StreamLease:
        """Lease one of the tenant's open-stream slots for a stream or a wait; release it (or
        leave ``async with``) when the stream closes.

        Raises:
            TooManyStreams: the tenant holds ``max_open_streams`` already (429, Retry-After).
            InfrastructureError: the slots cannot be counted (503; never silently unlimited).
        """
        limit = (await self.resolver.limits(tenant_id)).max_open_streams
        return await open_stream_lease(self._streams, tenant_id, limit, self._stream_lease_s)

    async def read(self, tenant_id: str) -> TenantLimitsOut:
        """The tenant's limits, where they come from, and today's usage (the overrides are read
        from the store, not from this process's cache)."""
        overrides = await self._overrides.read(tenant_id)
        self.resolver.remember(tenant_id, overrides)
        now = self._now()
        used = await self._usage.read(tenant_id, day_key(now))
        return TenantLimitsOut(
            tenant_id=tenant_id,
            limits=self.resolver.defaults.merged(overrides),
            defaults=self.resolver.defaults,
            overrides=overrides,
            usage_today=UsageToday(
                day=day_key(now),
                tokens=used.tokens,
                cost_usd=used.cost_usd,
                resets_at=next_reset(now),
            ),
        )

    async def write(self, tenant_id: str, overrides: LimitOverrides) -> TenantLimitsOut:
        """Replace the tenant's overrides; they apply at once on this replica, within
        ``SA01_LIMITS_REFRESH_S`` everywhere else.

        Raises:
            NotFoundError: no such tenant.
        """
        await self._overrides.write(tenant_id, overrides)
        return await self.read(tenant_id)

    async def aclose(self) -> None:
        # One Redis client may serve as both ports: close each object once.
        closers = {id(port): port for port in (self._rate, self._usage, self._streams)}
        await asyncio.gather(*(port.aclose() for port in closers.values()))


def estimate_prompt_tokens(request: LlmRequest) -> int:
    """The request's prompt tokens as tiktoken counts them (messages, tools, reply priming)."""
    return count_messages(request.messages, request.model, request.tools)


def _usd(amount: float) -> str:
    text = f"{amount:,.6f}".rstrip("0").rstrip(".")
    return f"${text}"


def budget_exceeded(
    tenant_id: str,
    budget: BudgetName,
    limits: TenantLimits,
    used: DailyUsage,
    estimate_tokens: int,
    now: datetime,
) -> BudgetExceeded:
    """The error of a call the tenant's ``budget`` does not allow (its message names the budget,
    the day's usage, the limit and when the budget resets)."""
    resets_at = next_reset(now).strftime("%Y-%m-%dT%H:%M:%SZ")
    if budget == "tokens_per_day":
        message = (
            f"daily token budget exceeded: tenant {tenant_id} used {used.tokens} of "
            f"{limits.tokens_per_day} tokens today and the next LLM call needs about "
            f"{estimate_tokens} more; the budget resets at {resets_at}"
        )
        spent, limit = float(used.tokens), float(limits.tokens_per_day)
    else:
        message = (
            f"daily cost budget exceeded: tenant {tenant_id} used {_usd(used.cost_usd)} of "
            f"{_usd(limits.cost_per_day_usd)} today; the budget resets at {resets_at}"
        )
        spent, limit = used.cost_usd, limits.cost_per_day_usd
    return BudgetExceeded(
        message, tenant_id=tenant_id, budget=budget, used=spent, limit=limit, resets_at=resets_at
    )


class BudgetGuard:
    """The session host's :class:`~agentcluster.agent.Budget` (see the module docstring).

    Args:
        resolver: tenants' limits.
        usage: the daily usage counters.
        estimate: a request's prompt tokens (default: tiktoken's count).
        now: the current time (tests pass their own).
    """

    def __init__(
        self,
        resolver: LimitsResolver,
        usage: UsageCounter,
        *,
        estimate: Callable[[LlmRequest], int] = estimate_prompt_tokens,
        now: Now = _utcnow,
    ) -> None:
        self._resolver = resolver
        self._usage = usage
        self._estimate = estimate
        self._now = now

    async def reserve(self, tenant_id: str, request: LlmRequest) -> BudgetHold:
        """Reserve the call's prompt tokens in today's budget (nothing without a budget).

        Raises:
            BudgetExceeded: the tenant's tokens or cost budget does not allow the call.
            InfrastructureError: the limits or counters cannot be read (fails closed).
        """
        now = self._now()
        day = day_key(now)
        limits = await self._resolver.limits(tenant_id)
        if not limits.has_budget:
            return BudgetHold(tenant_id=tenant_id, period=day)
        tokens = self._estimate(request)
        admission = await self._usage.reserve(tenant_id, day, tokens, limits)
        if admission.refused is not None:
            raise budget_exceeded(tenant_id, admission.refused, limits, admission.used, tokens, now)
        return BudgetHold(tenant_id=tenant_id, period=day, tokens=tokens)

    async def settle(self, hold: BudgetHold, usage: Usage) -> None:
        """Count the call's real usage: the reservation corrected to the provider's prompt and
        completion tokens, and LiteLLM's cost."""
        tokens = max(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens)
        correction = tokens - hold.tokens
        cost = to_nano_usd(usage.cost_usd)
        if correction or cost:
            await self._usage.add(hold.tenant_id, hold.period, correction, cost)

    async def aclose(self) -> None:
        await self._usage.aclose()
