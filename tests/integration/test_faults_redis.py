"""Redis stopped under the limits and the provider settings, then back (a private redis-server).

Limits fail closed: while Redis is down a rate-limited tenant's request, an open stream and an
LLM budget check are refused with 503 ``dependency-unavailable`` naming redis, with Retry-After,
never let through unlimited. Provider settings: reads and writes are 503 naming redis, while the
LLM client keeps routing with the version it last read. Both serve again, with the same client
objects, once Redis is back (it restarts empty here: counters start again from zero).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI

from agentcluster.config import load_settings
from agentcluster.errors import DependencyUnavailable
from agentcluster.gateway._problems import install_problem_handlers
from agentcluster.limits import (
    LimitOverrides,
    LimitsResolver,
    RedisLimiter,
    TenantLimits,
    TenantLimitsService,
)
from agentcluster.providers import ProviderResolver, key_source
from agentcluster.providers._store import RedisSettingsStore
from tests.support.private_services import PrivateRedis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[PrivateRedis]:
    with PrivateRedis() as server:
        yield server


@pytest.fixture
async def redis(redis_server: PrivateRedis) -> AsyncIterator[PrivateRedis]:
    await asyncio.to_thread(redis_server.start)
    yield redis_server
    await asyncio.to_thread(redis_server.start)


class _Overrides:
    """Every tenant limited (the overrides port, kept in memory: not the fault under test)."""

    async def read(self, tenant_id: str) -> LimitOverrides:
        return LimitOverrides(requests_per_minute=100, max_open_streams=4)

    async def write(self, tenant_id: str, overrides: LimitOverrides) -> None:
        raise NotImplementedError


def _app(limits: TenantLimitsService) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/v1/request/{tenant_id}")
    async def request(tenant_id: str) -> dict[str, str]:
        await limits.admit(tenant_id)
        return {"ok": "admitted"}

    @app.get("/v1/stream/{tenant_id}")
    async def stream(tenant_id: str) -> dict[str, str]:
        async with await limits.open_stream(tenant_id):
            return {"ok": "streamed"}

    return app


async def _statuses(client: httpx.AsyncClient, tenant_id: str) -> list[httpx.Response]:
    return [
        await client.get(f"/v1/request/{tenant_id}"),
        await client.get(f"/v1/stream/{tenant_id}"),
    ]


async def test_limits_fail_closed_naming_redis_and_recover(redis: PrivateRedis) -> None:
    limiter = RedisLimiter(redis.url, prefix=f"f{uuid.uuid4().hex[:6]}", timeout_s=1.0)
    overrides = _Overrides()
    limits = TenantLimitsService(
        LimitsResolver(TenantLimits(), overrides), overrides, limiter, limiter, streams=limiter
    )
    tenant = str(uuid.uuid4())
    transport = httpx.ASGITransport(app=_app(limits))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert [r.status_code for r in await _statuses(client, tenant)] == [200, 200]
            await asyncio.to_thread(redis.stop)
            for response in await _statuses(client, tenant):
                assert response.status_code == 503, response.text
                assert response.headers["content-type"] == "application/problem+json"
                assert int(response.headers["retry-after"]) >= 1
                body = response.json()
                assert body["type"].endswith("/dependency-unavailable")
                assert body["detail"].startswith("redis: ")
            await asyncio.to_thread(redis.start)
            assert [r.status_code for r in await _statuses(client, tenant)] == [200, 200]
    finally:
        await limits.aclose()


async def test_budget_checks_fail_closed_naming_redis_and_recover(redis: PrivateRedis) -> None:
    limiter = RedisLimiter(redis.url, prefix=f"f{uuid.uuid4().hex[:6]}", timeout_s=1.0)
    tenant, day, budget = str(uuid.uuid4()), "2026-12-01", TenantLimits(tokens_per_day=1000)
    try:
        assert (await limiter.reserve(tenant, day, 10, budget)).refused is None
        await asyncio.to_thread(redis.stop)
        with pytest.raises(DependencyUnavailable, match=r"^redis: ") as down:
            await limiter.reserve(tenant, day, 10, budget)
        assert down.value.retryable
        with pytest.raises(DependencyUnavailable, match=r"^redis: "):
            await limiter.add(tenant, day, 10, 0)
        await asyncio.to_thread(redis.start)
        assert (await limiter.reserve(tenant, day, 10, budget)).refused is None
    finally:
        await limiter.aclose()


async def test_provider_settings_keep_the_last_version_and_recover(redis: PrivateRedis) -> None:
    settings = load_settings({"crypto": {"fernet_key": Fernet.generate_key().decode()}})
    store = RedisSettingsStore(redis.url, prefix=f"f{uuid.uuid4().hex[:6]}", timeout_s=1.0)
    resolver = ProviderResolver(store, key_source(settings), refresh_s=0.01)
    try:
        first = await store.write({}, expected_version=0)
        assert await resolver.refresh() == first
        await asyncio.to_thread(redis.stop)
        with pytest.raises(DependencyUnavailable, match=r"^redis: "):
            await store.read()
        with pytest.raises(DependencyUnavailable, match=r"^redis: "):
            await store.write({}, expected_version=first)
        # The LLM client's view: the version it last read, not an error per call.
        assert await resolver.refresh() == first
        assert await resolver.route("openai/gpt-x") is None
        await asyncio.to_thread(redis.start)  # empty again: no persistence in this instance
        second = await store.write({}, expected_version=0)
        assert (await store.read()).version == second
        assert await resolver.refresh() == second
    finally:
        await resolver.aclose()
