"""The actor pool on a real local Ray: a cheap member class defined here, one pool per test."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import ray
from ray.exceptions import RayActorError

from actors.pool import ActorPool, LeaseLost, PoolConfig, PoolExhausted, PoolSpec
from tests.conftest import eventually

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]

NAMESPACE = "agentcluster-test"


class Echo:
    """A member: answers health(), echoes, can die on request."""

    def __init__(self, greeting: str) -> None:
        self._greeting = greeting
        self._resets = 0

    async def health(self) -> int:
        return os.getpid()

    async def echo(self, text: str) -> str:
        return f"{self._greeting} {text}"

    async def reset(self) -> None:
        self._resets += 1

    async def resets(self) -> int:
        return self._resets

    async def die(self) -> None:
        os._exit(1)


def spec(**config: Any) -> PoolSpec:
    settings = {
        "name": f"echo-{uuid.uuid4().hex[:8]}",
        "min_size": 0,
        "max_size": 2,
        "health_interval_s": 0.2,
        "health_timeout_s": 5.0,
        "reconcile_interval_s": 0.1,
        **config,
    }
    return PoolSpec(
        config=PoolConfig.model_validate(settings),
        actor_class=Echo,
        args=("hello",),
        namespace=NAMESPACE,
    )


@pytest.fixture
async def make_pool() -> AsyncIterator[Any]:
    pools: list[ActorPool] = []

    def make(**config: Any) -> ActorPool:
        pool = ActorPool.start(spec(**config))
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.shutdown()


async def test_lease_release_and_sticky_keys(make_pool: Any) -> None:
    pool: ActorPool = make_pool()
    first = await pool.lease("session-a", timeout_s=30)
    assert await first.member.echo.remote("there") == "hello there"
    assert await pool.lease("session-a") == first
    other = await pool.lease("session-b", timeout_s=30)
    assert other.member_id != first.member_id
    assert await pool.release(first) is True
    assert await pool.release(first) is False
    again = await pool.lease("session-c", timeout_s=30)
    assert again.member_id == first.member_id
    assert await again.member.resets.remote() == 1  # reset between leases
    stats = await pool.stats()
    assert stats.size == 2 and stats.leased == 2 and stats.leases_granted == 3


async def test_an_exhausted_pool_raises_backpressure_not_a_hang(make_pool: Any) -> None:
    pool: ActorPool = make_pool(max_size=1)
    await pool.lease("holder", timeout_s=30)
    with pytest.raises(PoolExhausted) as caught:
        await pool.lease("waiter", timeout_s=0.5)
    assert caught.value.retryable
    assert caught.value.message.startswith(f"pool {pool.name}: no free member within 0.5 s")
    assert "1 of at most 1 members leased" in caught.value.message


async def test_a_dead_member_is_replaced_and_its_lease_invalidated(make_pool: Any) -> None:
    pool: ActorPool = make_pool(min_size=1)
    lease = await pool.lease("session-a", timeout_s=30)
    old_pid = await lease.member.health.remote()
    with pytest.raises(RayActorError):
        await lease.member.die.remote()

    async def lost() -> str | None:
        try:
            await pool.touch(lease)
        except LeaseLost as exc:
            return exc.message
        return None

    message = await eventually(lost, message="the dead member's lease is invalidated")
    assert "failed" in message and lease.member_id in message
    fresh = await pool.lease("session-a", timeout_s=30)
    assert fresh.member_id != lease.member_id
    assert await fresh.member.health.remote() != old_pid
    stats = await pool.stats()
    assert stats.members_failed == 1 and stats.size == 1


async def test_an_unused_lease_is_released_after_the_idle_timeout(make_pool: Any) -> None:
    pool: ActorPool = make_pool(idle_release_s=0.5)
    lease = await pool.lease("session-a", timeout_s=30)

    async def released() -> bool:
        return (await pool.stats()).leases_idle_released == 1

    await eventually(released, message="the idle lease is released")
    with pytest.raises(LeaseLost, match=r"released after 0\.5 s without use"):
        await pool.touch(lease)


async def test_it_scales_up_to_max_under_demand_and_back_down(make_pool: Any) -> None:
    pool: ActorPool = make_pool(min_size=0, max_size=3, scale_down_after_s=0.5)
    leases = await asyncio.gather(*(pool.lease(f"s{n}", timeout_s=60) for n in range(3)))
    assert len({lease.member_id for lease in leases}) == 3
    with pytest.raises(PoolExhausted):
        await pool.lease("one-too-many", timeout_s=0.3)
    assert (await pool.stats()).size == 3
    for lease in leases:
        await pool.release(lease)

    async def shrunk() -> bool:
        return (await pool.stats()).size == 0

    await eventually(shrunk, message="idle members above min are removed")


@ray.remote
def lease_from_another_process(name: str) -> str:
    async def lease() -> str:
        pool = ActorPool.connect(name, NAMESPACE)
        async with pool.leased("elsewhere", timeout_s=30) as lease:
            return str(await lease.member.echo.remote("from afar"))

    return asyncio.run(lease())


async def test_any_process_can_lease_through_the_named_manager(make_pool: Any) -> None:
    pool: ActorPool = make_pool()
    assert await lease_from_another_process.remote(pool.name) == "hello from afar"
    assert (await pool.stats()).leased == 0
