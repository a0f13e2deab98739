"""Budgets and rate limits without services: the window and budget arithmetic, the in-process rate
limiter, the resolver's cache, the gateway's admission, the budget guard in the agent loop and the
429 answer. Fakes are typed against the ports and passed through constructors."""

from __future__ import annotations

import logging
from collections import deque
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI

from agentcluster.agent import AgentLoop, Budget, BudgetHold
from agentcluster.config import load_settings
from agentcluster.errors import (
    BudgetExceeded,
    ConfigError,
    DependencyUnavailable,
    NotFoundError,
    RateLimited,
)
from agentcluster.events import Usage
from agentcluster.gateway._problems import install_problem_handlers
from agentcluster.limits import (
    Admission,
    BudgetGuard,
    DailyUsage,
    LimitOverrides,
    LimitsResolver,
    MemoryRateLimiter,
    OverridesStore,
    RateDecision,
    RateLimiter,
    TenantLimits,
    TenantLimitsService,
    UsageCounter,
    budget_verdict,
    estimate_prompt_tokens,
    retry_after_header,
    sliding_window,
)
from agentcluster.llm import ChatMessage, LlmRequest, LlmResult
from agentcluster.tools import AllowAllPolicy, InProcessToolExecutor, builtin_registry
from tests.unit.test_agent_loop import CONTEXT, PROFILE, MemoryJournal, ScriptedLLM, _keep

pytestmark = pytest.mark.timeout(10)

NOW = datetime(2025, 3, 14, 15, 9, 26, tzinfo=UTC)
DAY = "2025-03-14"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeOverrides(OverridesStore):
    def __init__(self, **tenants: LimitOverrides) -> None:
        self.tenants = dict(tenants)
        self.reads = 0
        self.failure: Exception | None = None

    async def read(self, tenant_id: str) -> LimitOverrides:
        self.reads += 1
        if self.failure is not None:
            raise self.failure
        return self.tenants.get(tenant_id, LimitOverrides())

    async def write(self, tenant_id: str, overrides: LimitOverrides) -> None:
        if tenant_id not in self.tenants:
            raise NotFoundError(f"tenant {tenant_id} not found")
        self.tenants[tenant_id] = overrides


class FakeUsage(UsageCounter):
    """Daily counters in a dict, with the same check as the real adapters."""

    description = "fake usage"

    def __init__(self) -> None:
        self.days: dict[tuple[str, str], DailyUsage] = {}
        self.calls: list[str] = []
        self.failure: Exception | None = None

    async def reserve(
        self, tenant_id: str, day: str, tokens: int, limits: TenantLimits
    ) -> Admission:
        self.calls.append("reserve")
        if self.failure is not None:
            raise self.failure
        used = self.days.get((tenant_id, day), DailyUsage())
        refused = budget_verdict(limits, used, tokens)
        if refused is None:
            self.days[(tenant_id, day)] = DailyUsage(used.tokens + tokens, used.cost_nano_usd)
        return Admission(refused=refused, used=used)

    async def add(self, tenant_id: str, day: str, tokens: int, cost_nano_usd: int) -> None:
        self.calls.append("add")
        if self.failure is not None:
            raise self.failure
        used = self.days.get((tenant_id, day), DailyUsage())
        self.days[(tenant_id, day)] = DailyUsage(
            used.tokens + tokens, used.cost_nano_usd + cost_nano_usd
        )

    async def read(self, tenant_id: str, day: str) -> DailyUsage:
        return self.days.get((tenant_id, day), DailyUsage())

    async def aclose(self) -> None:
        return None


class CountingRate(RateLimiter):
    description = "counting"

    def __init__(self, inner: RateLimiter) -> None:
        self.inner = inner
        self.hits: list[tuple[str, int]] = []

    async def hit(self, tenant_id: str, limit: int, window_s: float) -> RateDecision:
        self.hits.append((tenant_id, limit))
        return await self.inner.hit(tenant_id, limit, window_s)

    async def aclose(self) -> None:
        await self.inner.aclose()


# -- the arithmetic --------------------------------------------------------------------------


def test_the_window_admits_limit_requests_then_says_when_a_slot_frees() -> None:
    times: deque[float] = deque()
    decisions = [sliding_window(times, 100.0 + i, 3, 60.0) for i in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[3].retry_after_s == pytest.approx(57.0)  # 100 + 60 - 103
    assert list(times) == [100.0, 101.0, 102.0]  # the refused request is not counted


def test_a_slot_frees_exactly_a_window_after_its_request() -> None:
    times: deque[float] = deque([100.0, 101.0])
    assert not sliding_window(times, 159.999, 2, 60.0).allowed
    again = sliding_window(times, 160.0, 2, 60.0)
    assert again.allowed and list(times) == [101.0, 160.0]


def test_a_lowered_limit_waits_for_enough_slots() -> None:
    times: deque[float] = deque([100.0, 110.0, 120.0, 130.0])
    refused = sliding_window(times, 131.0, 2, 60.0)
    # Two must leave for one more to fit under 2: the one of 120 s leaves at 180 s.
    assert not refused.allowed and refused.retry_after_s == pytest.approx(49.0)


@pytest.mark.parametrize(
    ("seconds", "header"), [(0.0, 1), (0.2, 1), (1.0, 1), (12.0, 12), (12.000001, 13), (59.5, 60)]
)
def test_retry_after_is_whole_seconds_rounded_up(seconds: float, header: int) -> None:
    assert retry_after_header(seconds) == header


def test_budget_verdict_tokens_count_the_call_cost_counts_what_was_spent() -> None:
    limits = TenantLimits(tokens_per_day=100, cost_per_day_usd=0.5)
    assert budget_verdict(limits, DailyUsage(tokens=60), 40) is None  # exactly the budget
    assert budget_verdict(limits, DailyUsage(tokens=60), 41) == "tokens_per_day"
    half = DailyUsage(tokens=0, cost_nano_usd=500_000_000)
    assert budget_verdict(limits, half, 1) == "cost_per_day_usd"
    almost = DailyUsage(tokens=0, cost_nano_usd=499_999_999)
    assert budget_verdict(limits, almost, 1) is None
    unlimited = TenantLimits()
    assert budget_verdict(unlimited, DailyUsage(10**9, 10**15), 10**6) is None


def test_overrides_replace_the_defaults_field_by_field() -> None:
    defaults = TenantLimits(requests_per_minute=60, tokens_per_day=1000)
    merged = defaults.merged(LimitOverrides(tokens_per_day=0, cost_per_day_usd=2.0))
    assert merged == TenantLimits(requests_per_minute=60, tokens_per_day=0, cost_per_day_usd=2.0)
    assert not TenantLimits(requests_per_minute=5).has_budget


def test_limit_settings_name_their_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SA01_LIMITS_TOKENS_PER_DAY", "5000")
    monkeypatch.setenv("SA01_LIMITS_COST_PER_DAY_USD", "2.5")
    limits = load_settings().limits
    assert (limits.requests_per_minute, limits.tokens_per_day) == (0, 5000)
    assert limits.cost_per_day_usd == 2.5
    monkeypatch.setenv("SA01_LIMITS_REQUESTS_PER_MINUTE", "-1")
    with pytest.raises(ConfigError, match=r"^SA01_LIMITS_REQUESTS_PER_MINUTE: "):
        load_settings()


# -- the in-process limiter and the resolver -------------------------------------------------


async def test_the_memory_limiter_counts_each_tenant_apart() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock=clock)
    assert [(await limiter.hit("a", 2, 60.0)).allowed for _ in range(3)] == [True, True, False]
    assert (await limiter.hit("b", 2, 60.0)).allowed
    clock.now += 60.0
    assert (await limiter.hit("a", 2, 60.0)).allowed


async def test_the_resolver_reuses_overrides_for_refresh_s() -> None:
    clock = Clock()
    store = FakeOverrides(t1=LimitOverrides(requests_per_minute=5))
    resolver = LimitsResolver(
        TenantLimits(requests_per_minute=60, tokens_per_day=100), store, refresh_s=5, clock=clock
    )
    assert await resolver.limits("t1") == TenantLimits(requests_per_minute=5, tokens_per_day=100)
    store.tenants["t1"] = LimitOverrides(requests_per_minute=7)
    assert (await resolver.limits("t1")).requests_per_minute == 5
    assert store.reads == 1
    clock.now += 5
    assert (await resolver.limits("t1")).requests_per_minute == 7
    assert (await resolver.limits("t2")).requests_per_minute == 60


async def test_a_failed_refresh_keeps_the_last_overrides_a_first_read_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    store = FakeOverrides(t1=LimitOverrides(tokens_per_day=10))
    resolver = LimitsResolver(TenantLimits(), store, refresh_s=1, clock=clock)
    await resolver.limits("t1")
    store.failure = DependencyUnavailable("postgresql", "down")
    clock.now += 2
    with caplog.at_level(logging.WARNING):
        assert (await resolver.limits("t1")).tokens_per_day == 10
    assert "keeping the last known overrides" in caplog.text
    with pytest.raises(DependencyUnavailable, match="postgresql"):
        await resolver.limits("never-read")


# -- the gateway's admission -----------------------------------------------------------------


def _service(
    defaults: TenantLimits, store: FakeOverrides, clock: Clock
) -> tuple[TenantLimitsService, CountingRate, FakeUsage]:
    rate = CountingRate(MemoryRateLimiter(clock=clock))
    usage = FakeUsage()
    resolver = LimitsResolver(defaults, store, refresh_s=5, clock=clock)
    return TenantLimitsService(resolver, store, rate, usage, now=lambda: NOW), rate, usage


async def test_no_rate_limit_counts_nothing() -> None:
    service, rate, _ = _service(TenantLimits(), FakeOverrides(), Clock())
    assert await service.admit("t1") is None
    assert rate.hits == []


async def test_over_the_rate_is_rate_limited_with_whole_seconds() -> None:
    clock = Clock()
    store = FakeOverrides(t1=LimitOverrides(requests_per_minute=2))
    service, rate, _ = _service(TenantLimits(), store, clock)
    first = await service.admit("t1")
    assert first is not None and first.remaining == 1
    clock.now += 0.5
    await service.admit("t1")
    clock.now += 0.25
    with pytest.raises(RateLimited) as raised:
        await service.admit("t1")
    error = raised.value
    assert error.retry_after == 60  # 59.25 s rounded up
    assert error.limit == 2 and error.retryable and error.status == 429
    assert "2 requests per minute" in error.message and "retry after 60 s" in error.message
    assert await service.admit("t2") is None  # other tenants: the default (unlimited)
    assert rate.hits == [("t1", 2)] * 3  # an unlimited tenant costs no counter call


async def test_read_and_write_a_tenants_limits() -> None:
    store = FakeOverrides(t1=LimitOverrides())
    service, _, usage = _service(TenantLimits(requests_per_minute=100), store, Clock())
    await usage.add("t1", DAY, 1234, 2_500_000)
    out = await service.write("t1", LimitOverrides(tokens_per_day=5000))
    assert out.limits == TenantLimits(requests_per_minute=100, tokens_per_day=5000)
    assert out.overrides == LimitOverrides(tokens_per_day=5000)
    assert out.defaults == TenantLimits(requests_per_minute=100)
    assert out.usage_today.day == DAY and out.usage_today.tokens == 1234
    assert out.usage_today.cost_usd == pytest.approx(0.0025)
    assert out.usage_today.resets_at == datetime(2025, 3, 15, tzinfo=UTC)
    # The writer's replica applies the change at once, without waiting for refresh_s.
    assert (await service.resolver.limits("t1")).tokens_per_day == 5000
    with pytest.raises(NotFoundError):
        await service.write("nobody", LimitOverrides())


# -- the budget guard ------------------------------------------------------------------------


def _guard(overrides: LimitOverrides, usage: FakeUsage, estimate: int = 30) -> BudgetGuard:
    resolver = LimitsResolver(TenantLimits(), FakeOverrides(t1=overrides), refresh_s=5)
    return BudgetGuard(resolver, usage, estimate=lambda request: estimate, now=lambda: NOW)


REQUEST = LlmRequest(model="openai/a", messages=[ChatMessage(role="user", content="hi")])


async def test_without_a_budget_nothing_is_reserved_and_usage_is_still_counted() -> None:
    usage = FakeUsage()
    guard = _guard(LimitOverrides(), usage)
    hold = await guard.reserve("t1", REQUEST)
    assert hold == BudgetHold(tenant_id="t1", period=DAY, tokens=0)
    await guard.settle(hold, Usage(prompt_tokens=20, completion_tokens=5, cost_usd=0.001))
    assert usage.calls == ["add"]
    assert usage.days[("t1", DAY)] == DailyUsage(tokens=25, cost_nano_usd=1_000_000)


async def test_a_reservation_is_corrected_to_the_real_usage() -> None:
    usage = FakeUsage()
    guard = _guard(LimitOverrides(tokens_per_day=1000), usage, estimate=30)
    hold = await guard.reserve("t1", REQUEST)
    assert hold.tokens == 30 and usage.days[("t1", DAY)].tokens == 30
    await guard.settle(hold, Usage(prompt_tokens=28, completion_tokens=12, total_tokens=40))
    assert usage.days[("t1", DAY)].tokens == 40


async def test_the_token_budget_refuses_with_a_message_naming_it() -> None:
    usage = FakeUsage()
    usage.days[("t1", DAY)] = DailyUsage(tokens=980)
    guard = _guard(LimitOverrides(tokens_per_day=1000), usage, estimate=30)
    with pytest.raises(BudgetExceeded) as raised:
        await guard.reserve("t1", REQUEST)
    error = raised.value
    assert (error.budget, error.used, error.limit) == ("tokens_per_day", 980, 1000)
    assert error.resets_at == "2025-03-15T00:00:00Z" and not error.retryable
    assert error.message == (
        "daily token budget exceeded: tenant t1 used 980 of 1000 tokens today and the next LLM "
        "call needs about 30 more; the budget resets at 2025-03-15T00:00:00Z"
    )
    assert usage.days[("t1", DAY)].tokens == 980  # nothing reserved


async def test_the_cost_budget_refuses_once_spent() -> None:
    usage = FakeUsage()
    usage.days[("t1", DAY)] = DailyUsage(tokens=10, cost_nano_usd=2_000_000_000)
    guard = _guard(LimitOverrides(cost_per_day_usd=2.0), usage)
    with pytest.raises(BudgetExceeded, match=r"daily cost budget exceeded: .* used \$2 of \$2"):
        await guard.reserve("t1", REQUEST)


def test_the_estimate_is_tiktokens_count_of_the_prompt() -> None:
    short = estimate_prompt_tokens(REQUEST)
    longer = REQUEST.model_copy(
        update={"messages": [*REQUEST.messages, ChatMessage(role="user", content="word " * 100)]}
    )
    assert 5 < short < 20 and estimate_prompt_tokens(longer) > short + 90


# -- the budget in the agent loop ------------------------------------------------------------


def _loop(llm: ScriptedLLM, budget: Budget) -> AgentLoop:
    executor = InProcessToolExecutor(builtin_registry())
    return AgentLoop(PROFILE, llm, executor, AllowAllPolicy(), _keep, budget)


def _answer(text: str, tokens: int) -> LlmResult:
    return LlmResult(
        model="openai/a",
        content=text,
        usage=Usage(prompt_tokens=tokens - 5, completion_tokens=5, total_tokens=tokens),
    )


async def test_a_spent_budget_fails_the_next_turn_without_calling_the_llm() -> None:
    usage = FakeUsage()
    llm = ScriptedLLM(_answer("first", 120), _answer("never sent", 10))
    loop = _loop(llm, _guard(LimitOverrides(tokens_per_day=100), usage, estimate=30))
    history = [ChatMessage(role="user", content="one")]
    first = await loop.run_turn(CONTEXT, history, MemoryJournal())
    assert first.status == "completed" and usage.days[("t1", DAY)].tokens == 120

    journal = MemoryJournal()
    history.append(ChatMessage(role="user", content="two"))
    second = await loop.run_turn(CONTEXT.model_copy(update={"turn_id": "u2"}), history, journal)
    assert second.status == "failed" and second.error is not None
    assert "daily token budget exceeded" in second.error and "120 of 100 tokens" in second.error
    assert journal.entries == [("started", 1), ("failed", "BudgetExceeded", False)]
    assert len(llm.requests) == 1  # the second turn made no call


async def test_unreachable_counters_fail_the_turn_before_the_call() -> None:
    usage = FakeUsage()
    usage.failure = DependencyUnavailable("redis", "connection refused")
    llm = ScriptedLLM(_answer("never sent", 10))
    loop = _loop(llm, _guard(LimitOverrides(tokens_per_day=100), usage))
    journal = MemoryJournal()
    result = await loop.run_turn(CONTEXT, [ChatMessage(role="user", content="x")], journal)
    assert result.status == "failed" and result.error is not None and "redis" in result.error
    assert journal.entries[-1] == ("failed", "DependencyUnavailable", True)
    assert llm.requests == []


async def test_usage_that_cannot_be_counted_after_the_call_keeps_the_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    usage = FakeUsage()
    guard = _guard(LimitOverrides(), usage)  # no budget: reserve does no I/O, settle does
    usage.failure = DependencyUnavailable("redis", "connection refused")
    llm = ScriptedLLM(_answer("kept", 10))
    with caplog.at_level(logging.WARNING):
        result = await _loop(llm, guard).run_turn(
            CONTEXT, [ChatMessage(role="user", content="x")], MemoryJournal()
        )
    assert result.status == "completed" and result.content == "kept"
    assert "usage of an LLM call was not counted" in caplog.text


# -- the 429 answer --------------------------------------------------------------------------


async def test_rate_limited_is_a_429_problem_with_retry_after() -> None:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/limited")
    async def limited() -> None:
        raise RateLimited("rate limit of 5 requests per minute reached", retry_after=12, limit=5)

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/limited")
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "12"
    assert response.headers["ratelimit-limit"] == "5"
    assert response.headers["ratelimit-remaining"] == "0"
    body = response.json()
    assert body["type"] == "https://agentcluster.dev/problems/rate-limited"
    assert body["status"] == 429 and "5 requests per minute" in body["detail"]
