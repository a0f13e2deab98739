"""Open-stream slots on real Redis (two limiter clients stand for two gateway replicas) and in
process: the count is exact under concurrent callers, a released slot is free at once, a lease
that is not renewed (a crashed replica) frees itself, a held lease is renewed in the background,
and a Redis that cannot be reached fails closed.

Every test has its own key prefix and tenant ids.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from agentcluster.config import load_settings
from agentcluster.errors import DependencyUnavailable, RateLimited, TooManyStreams
from agentcluster.limits import (
    MemoryStreamSlots,
    RedisLimiter,
    StreamSlots,
    open_stream_lease,
    open_tenant_limits,
)
from agentcluster.store import open_store
from tests.conftest import eventually, service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def slot() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def prefix() -> str:
    return f"ac-streams-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def replicas(prefix: str) -> AsyncIterator[tuple[RedisLimiter, RedisLimiter]]:
    """Two Redis clients on the same keys: two gateway replicas."""
    first = RedisLimiter(service("SA01_REDIS_URL"), prefix=prefix)
    second = RedisLimiter(service("SA01_REDIS_URL"), prefix=prefix)
    yield first, second
    await first.aclose()
    await second.aclose()


@pytest.fixture
async def raw_redis(prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(service("SA01_REDIS_URL"), decode_responses=True)
    yield client
    keys = [key async for key in client.scan_iter(f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_concurrent_acquires_on_two_replicas_take_exactly_the_limit(
    replicas: tuple[RedisLimiter, RedisLimiter], raw_redis: aioredis.Redis
) -> None:
    who = tenant()
    attempts = [replicas[n % 2].acquire(who, slot(), 5, 30.0) for n in range(40)]
    decisions = await asyncio.gather(*attempts)
    assert sum(d.acquired for d in decisions) == 5
    assert all(d.open_streams == 5 for d in decisions if not d.acquired)
    key = replicas[0].streams_key(who)
    assert await raw_redis.zcard(key) == 5
    assert 0 < await raw_redis.pttl(key) <= 30_000
    # Another tenant has its own slots.
    assert (await replicas[1].acquire(tenant(), slot(), 5, 30.0)).acquired


async def test_a_released_slot_is_free_at_once_on_the_other_replica(
    replicas: tuple[RedisLimiter, RedisLimiter],
) -> None:
    first, second = replicas
    who, held = tenant(), slot()
    assert (await first.acquire(who, held, 1, 30.0)).acquired
    assert not (await second.acquire(who, slot(), 1, 30.0)).acquired
    await first.release(who, held)
    await first.release(who, held)  # twice is harmless
    assert (await second.acquire(who, slot(), 1, 30.0)).acquired


async def test_a_slot_not_renewed_frees_itself_and_a_renewal_extends_it(
    replicas: tuple[RedisLimiter, RedisLimiter], raw_redis: aioredis.Redis
) -> None:
    first, second = replicas
    who, crashed, kept = tenant(), slot(), slot()
    # A replica that dies holds its slot only until the lease ends.
    assert (await first.acquire(who, crashed, 1, 0.5)).acquired

    async def taken_over() -> bool:
        return (await second.acquire(who, kept, 1, 30.0)).acquired

    await eventually(taken_over, timeout=10, message="the dead replica's slot expired")
    key = second.streams_key(who)
    assert await raw_redis.zrange(key, 0, -1) == [kept]
    before = await raw_redis.zscore(key, kept)
    assert before is not None
    await second.renew(who, kept, 60.0)
    after = await raw_redis.zscore(key, kept)
    assert after is not None and after > before
    assert 30_000 < await raw_redis.pttl(key) <= 60_000  # the key lives as long as its leases


async def test_a_held_lease_is_renewed_in_the_background_and_released_on_exit(
    replicas: tuple[RedisLimiter, RedisLimiter], raw_redis: aioredis.Redis
) -> None:
    limiter, _ = replicas
    who = tenant()
    key = limiter.streams_key(who)
    async with await open_stream_lease(limiter, who, 2, 0.6) as lease:
        assert lease.held
        first = await raw_redis.zscore(key, lease.slot_id)
        assert first is not None

        async def renewed() -> bool:
            score = await raw_redis.zscore(key, lease.slot_id)
            return score is not None and score > first

        await eventually(renewed, timeout=10, message="the lease renewed itself")
        # Still held well past its first expiry: the renewal keeps it counted.
        with pytest.raises(TooManyStreams):
            async with await open_stream_lease(limiter, who, 2, 0.6):
                await open_stream_lease(limiter, who, 2, 0.6)
    assert not lease.held
    assert await raw_redis.zcard(key) == 0


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_memory_and_redis_slots_answer_alike(
    backend: str, replicas: tuple[RedisLimiter, RedisLimiter]
) -> None:
    slots: StreamSlots = MemoryStreamSlots() if backend == "memory" else replicas[0]
    who = tenant()
    held = [slot() for _ in range(3)]
    answers = [await slots.acquire(who, s, 2, 30.0) for s in held]
    assert [(a.acquired, a.open_streams) for a in answers] == [(True, 1), (True, 2), (False, 2)]
    await slots.release(who, held[0])
    assert (await slots.acquire(who, slot(), 2, 30.0)).acquired
    refused = await slots.acquire(who, slot(), 2, 30.0)
    assert (refused.acquired, refused.open_streams) == (False, 2)


async def test_the_service_refuses_past_the_tenants_limit_with_a_retry_after(
    sqlite_dsn: str, prefix: str
) -> None:
    settings = load_settings(
        {
            "redis": {"url": service("SA01_REDIS_URL")},
            "runtime": {"namespace": prefix},
            "limits": {"max_open_streams": 2},
        }
    )
    store = await open_store(sqlite_dsn)
    limits = open_tenant_limits(settings, store)
    try:
        owner = await store.create_tenant("streams")
        who = owner.tenant_id
        async with await limits.open_stream(who), await limits.open_stream(who):
            with pytest.raises(TooManyStreams) as refused:
                await limits.open_stream(who)
        error = refused.value
        assert isinstance(error, RateLimited) and error.problem_type == "too-many-streams"
        assert error.status == 429 and error.retry_after is not None and error.retry_after >= 1
        assert (error.max_open_streams, error.open_streams) == (2, 2)
        assert error.limit is None  # not a request rate: no RateLimit-* headers
        async with await limits.open_stream(who), await limits.open_stream(who):
            pass  # both were released on exit above
    finally:
        await limits.aclose()
        await store.close()


async def test_an_unreachable_redis_fails_closed_naming_it() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    limiter = RedisLimiter(f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
    try:
        with pytest.raises(DependencyUnavailable) as failed:
            await open_stream_lease(limiter, tenant(), 3, 30.0)
        assert failed.value.dependency == "redis"
    finally:
        await limiter.aclose()
