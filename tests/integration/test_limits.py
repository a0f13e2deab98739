"""Limits on real services: the Redis limiter's scripts (atomic under concurrent callers, keys that
expire, the same answers as the in-process window), the state-store counters and overrides on
SQLite and PostgreSQL (two stores on one database stand for two processes), and a Redis that
cannot be reached (a closed loopback port: the shared Redis is never stopped) failing clearly.

Every test has its own key prefix and tenant ids.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI

from agentcluster.config import load_settings
from agentcluster.errors import BudgetExceeded, DependencyUnavailable, NotFoundError, RateLimited
from agentcluster.events import Usage
from agentcluster.gateway._problems import install_problem_handlers
from agentcluster.limits import (
    DailyUsage,
    LimitOverrides,
    LimitsResolver,
    MemoryRateLimiter,
    RedisLimiter,
    SqlOverridesStore,
    SqlUsageCounter,
    TenantLimits,
    TenantLimitsService,
    UsageCounter,
    day_key,
    open_budget_guard,
    open_tenant_limits,
    sliding_window,
)
from agentcluster.llm import ChatMessage, LlmRequest
from agentcluster.store import SqlStateStore, open_store
from tests.conftest import service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DAY = "2025-03-14"
"""A fixed day for the state-store counters (Redis tests use today: older keys expire at once)."""


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def prefix() -> str:
    return f"ac-limits-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis_limiter(prefix: str) -> AsyncIterator[RedisLimiter]:
    limiter = RedisLimiter(service("SA01_REDIS_URL"), prefix=prefix)
    yield limiter
    await limiter.aclose()


@pytest.fixture
async def raw_redis(prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(service("SA01_REDIS_URL"), decode_responses=True)
    yield client
    keys = [key async for key in client.scan_iter(f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def today() -> str:
    return day_key(datetime.now(UTC))


# -- Redis: request windows ------------------------------------------------------------------


async def test_redis_window_refuses_the_request_over_the_limit(
    redis_limiter: RedisLimiter, raw_redis: aioredis.Redis
) -> None:
    who = tenant()
    decisions = [await redis_limiter.hit(who, 3, 60.0) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert 58.0 < decisions[3].retry_after_s <= 60.0
    assert (await redis_limiter.hit(tenant(), 3, 60.0)).allowed  # another tenant
    key = redis_limiter.rate_key(who)
    assert await raw_redis.zcard(key) == 3  # the refused request is not recorded
    assert 0 < await raw_redis.pttl(key) <= 60_000


async def test_redis_window_slots_free_after_the_window(redis_limiter: RedisLimiter) -> None:
    who = tenant()
    assert (await redis_limiter.hit(who, 1, 0.5)).allowed
    refused = await redis_limiter.hit(who, 1, 0.5)
    assert not refused.allowed and 0 < refused.retry_after_s <= 0.5
    await asyncio.sleep(refused.retry_after_s + 0.05)
    assert (await redis_limiter.hit(who, 1, 0.5)).allowed


async def test_redis_window_is_atomic_under_concurrent_requests(
    redis_limiter: RedisLimiter, prefix: str
) -> None:
    who = tenant()
    # Two limiters (two connections pools) stand for two gateway replicas.
    other = RedisLimiter(service("SA01_REDIS_URL"), prefix=prefix)
    try:
        hits = [(redis_limiter if i % 2 else other).hit(who, 20, 60.0) for i in range(60)]
        decisions = await asyncio.gather(*hits)
    finally:
        await other.aclose()
    assert sum(d.allowed for d in decisions) == 20
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(20))


async def test_redis_and_memory_windows_answer_alike(redis_limiter: RedisLimiter) -> None:
    who = tenant()
    times: deque[float] = deque()
    for _ in range(7):
        remote = await redis_limiter.hit(who, 5, 60.0)
        local = sliding_window(times, time.monotonic(), 5, 60.0)
        assert (remote.allowed, remote.remaining) == (local.allowed, local.remaining)
        assert remote.retry_after_s == pytest.approx(local.retry_after_s, abs=0.5)


# -- Redis: daily usage ----------------------------------------------------------------------


async def test_redis_reservations_are_atomic_under_concurrent_calls(
    redis_limiter: RedisLimiter, prefix: str
) -> None:
    who, day = tenant(), today()
    limits = TenantLimits(tokens_per_day=200)
    other = RedisLimiter(service("SA01_REDIS_URL"), prefix=prefix)
    try:
        calls = [
            (redis_limiter if i % 2 else other).reserve(who, day, 10, limits) for i in range(40)
        ]
        admissions = await asyncio.gather(*calls)
    finally:
        await other.aclose()
    assert sum(a.refused is None for a in admissions) == 20
    assert {a.refused for a in admissions if a.refused} == {"tokens_per_day"}
    assert await redis_limiter.read(who, day) == DailyUsage(tokens=200)


async def test_redis_usage_adds_up_and_expires_after_the_next_day(
    redis_limiter: RedisLimiter, raw_redis: aioredis.Redis
) -> None:
    who, day = tenant(), today()
    await asyncio.gather(*(redis_limiter.add(who, day, 3, 1_000) for _ in range(50)))
    await redis_limiter.add(who, day, -10, 0)  # a reservation corrected down
    assert await redis_limiter.read(who, day) == DailyUsage(tokens=140, cost_nano_usd=50_000)
    expires = await raw_redis.expiretime(redis_limiter.usage_key(who, day))
    start = datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=UTC)
    assert expires == int((start + timedelta(days=2)).timestamp())
    # A day before yesterday is past its expiry: Redis keeps nothing of it.
    old = (date.fromisoformat(day) - timedelta(days=2)).isoformat()
    await redis_limiter.add(who, old, 5, 0)
    assert await raw_redis.exists(redis_limiter.usage_key(who, old)) == 0


async def test_redis_cost_budget_is_counted_in_nano_dollars(redis_limiter: RedisLimiter) -> None:
    who, day = tenant(), today()
    limits = TenantLimits(cost_per_day_usd=0.000002)
    assert (await redis_limiter.reserve(who, day, 5, limits)).refused is None
    await redis_limiter.add(who, day, 0, 2_000)
    admission = await redis_limiter.reserve(who, day, 5, limits)
    assert admission.refused == "cost_per_day_usd"
    assert admission.used == DailyUsage(tokens=5, cost_nano_usd=2_000)


# -- Redis unreachable -----------------------------------------------------------------------


async def test_unreachable_redis_is_a_clear_error_naming_it() -> None:
    limiter = RedisLimiter(f"redis://127.0.0.1:{closed_port()}/0", timeout_s=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(DependencyUnavailable, match=r"^redis: ") as raised:
            await limiter.hit(tenant(), 5, 60.0)
        assert raised.value.dependency == "redis" and raised.value.retryable
        with pytest.raises(DependencyUnavailable, match="redis"):
            await limiter.reserve(tenant(), DAY, 5, TenantLimits(tokens_per_day=10))
        with pytest.raises(DependencyUnavailable, match="redis"):
            await limiter.add(tenant(), DAY, 5, 0)
        assert time.monotonic() - started < 10
    finally:
        await limiter.aclose()


class _Overrides:
    def __init__(self, overrides: LimitOverrides) -> None:
        self.overrides = overrides

    async def read(self, tenant_id: str) -> LimitOverrides:
        return self.overrides

    async def write(self, tenant_id: str, overrides: LimitOverrides) -> None:
        self.overrides = overrides


async def test_unreachable_redis_answers_503_for_a_rate_limited_tenant() -> None:
    limiter = RedisLimiter(f"redis://127.0.0.1:{closed_port()}/0", timeout_s=1.0)
    overrides = _Overrides(LimitOverrides(requests_per_minute=5))
    limits = TenantLimitsService(
        LimitsResolver(TenantLimits(), overrides), overrides, limiter, limiter
    )
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/v1/probe")
    async def probe() -> dict[str, str]:
        await limits.admit("t1")
        return {"ok": "yes"}

    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/v1/probe")
    finally:
        await limits.aclose()
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"].endswith("/dependency-unavailable")
    assert body["detail"].startswith("redis: ")


# -- the state store: overrides and the embedded counters ------------------------------------


@pytest.fixture
async def second_store(backend_dsn: str) -> AsyncIterator[SqlStateStore]:
    """Another engine on the same database: another process's view."""
    opened = await open_store(backend_dsn, pool_size=5)
    yield opened
    await opened.close()


async def test_sql_reservations_are_atomic_across_processes(
    store: SqlStateStore, second_store: SqlStateStore
) -> None:
    who = (await store.create_tenant("limits")).tenant_id
    limits = TenantLimits(tokens_per_day=100)
    counters: list[UsageCounter] = [SqlUsageCounter(store), SqlUsageCounter(second_store)]
    calls = [counters[i % 2].reserve(who, DAY, 10, limits) for i in range(16)]
    admissions = await asyncio.gather(*calls)
    assert sum(a.refused is None for a in admissions) == 10
    await asyncio.gather(*(counters[i % 2].add(who, DAY, 1, 7) for i in range(10)))
    assert await counters[0].read(who, DAY) == DailyUsage(tokens=110, cost_nano_usd=70)


async def test_sql_counters_keep_yesterday_and_drop_older_days(store: SqlStateStore) -> None:
    who = (await store.create_tenant("limits")).tenant_id
    counter = SqlUsageCounter(store)
    for day in ("2025-03-11", "2025-03-12", "2025-03-13"):
        await counter.add(who, day, 1, 0)
    await counter.add(who, "2025-03-14", 2, 0)
    assert await counter.read(who, "2025-03-11") == DailyUsage()
    assert await counter.read(who, "2025-03-12") == DailyUsage()
    assert await counter.read(who, "2025-03-13") == DailyUsage(tokens=1)
    assert await counter.read(who, "2025-03-14") == DailyUsage(tokens=2)


async def test_sql_overrides_are_shared_and_need_a_tenant(
    store: SqlStateStore, second_store: SqlStateStore
) -> None:
    who = (await store.create_tenant("limits")).tenant_id
    writer, reader = SqlOverridesStore(store), SqlOverridesStore(second_store)
    assert await reader.read(who) == LimitOverrides()
    await writer.write(who, LimitOverrides(requests_per_minute=5, tokens_per_day=0))
    assert await reader.read(who) == LimitOverrides(requests_per_minute=5, tokens_per_day=0)
    await writer.write(who, LimitOverrides(cost_per_day_usd=1.5))
    assert await reader.read(who) == LimitOverrides(cost_per_day_usd=1.5)
    with pytest.raises(NotFoundError):
        await writer.write(f"missing-{uuid.uuid4().hex}", LimitOverrides())


async def test_memory_limiter_matches_its_documented_scope() -> None:
    """Two in-process limiters (two replicas without Redis) each admit the full rate."""
    replicas = [MemoryRateLimiter(), MemoryRateLimiter()]
    who = tenant()
    admitted = [(await replicas[i % 2].hit(who, 2, 60.0)).allowed for i in range(6)]
    assert admitted == [True, True, True, True, False, False]


async def test_embedded_mode_hosts_share_budgets_through_the_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without SA01_REDIS_URL: two session hosts (two guards, two engines on one SQLite file)
    spend one tenant's budget together; the gateway's rate limit is its own process's."""
    monkeypatch.delenv("SA01_REDIS_URL", raising=False)
    settings = load_settings({"db": {"dsn": f"sqlite:///{tmp_path / 'embedded.db'}"}})
    assert settings.redis.url is None
    stores = [await open_store(settings.db_dsn), await open_store(settings.db_dsn)]
    try:
        who = (await stores[0].create_tenant("embedded")).tenant_id
        gateway = open_tenant_limits(settings, stores[0])
        await gateway.write(who, LimitOverrides(requests_per_minute=2, tokens_per_day=100))
        assert [(await gateway.admit(who)) is not None for _ in range(2)] == [True, True]
        with pytest.raises(RateLimited):
            await gateway.admit(who)

        hosts = [open_budget_guard(settings, store) for store in stores]
        request = LlmRequest(model="m", messages=[ChatMessage(role="user", content="hi")])
        hold = await hosts[0].reserve(who, request)
        await hosts[0].settle(hold, Usage(prompt_tokens=40, completion_tokens=30))
        hold = await hosts[1].reserve(who, request)
        await hosts[1].settle(hold, Usage(prompt_tokens=10, completion_tokens=15))
        with pytest.raises(BudgetExceeded, match="used 95 of 100 tokens"):
            await hosts[0].reserve(who, request)
        assert (await gateway.read(who)).usage_today.tokens == 95
        await gateway.aclose()
    finally:
        for store in stores:
            await store.close()
