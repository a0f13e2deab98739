"""PoolCore without Ray: leases, stickiness, backpressure, failures, idle release and scaling.

Members are plain objects made by a factory typed against the MemberFactory port; a fake clock
drives the idle and scale-down timeouts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from agentcluster.errors import DependencyUnavailable
from agentcluster.pools import (
    LeaseLost,
    MemberFactory,
    PoolConfig,
    PoolCore,
    PoolExhausted,
    PoolStats,
)


@dataclass
class Member:
    member_id: str
    healthy: bool = True
    hang: bool = False
    resets: int = 0
    destroyed: bool = False


@dataclass
class Factory:
    needs_reset: bool = False
    fail_start: str | None = None
    fail_reset: bool = False
    start_delay_s: float = 0.0
    members: list[Member] = field(default_factory=list)

    async def create(self, member_id: str) -> Member:
        await asyncio.sleep(self.start_delay_s)
        if self.fail_start:
            raise RuntimeError(self.fail_start)
        member = Member(member_id)
        self.members.append(member)
        return member

    async def check(self, member: Member) -> None:
        if member.hang:
            await asyncio.sleep(3600)
        if not member.healthy:
            raise RuntimeError("member is broken")

    async def reset(self, member: Member) -> None:
        if self.fail_reset:
            raise RuntimeError("reset broke")
        member.resets += 1

    async def destroy(self, member: Member) -> None:
        member.destroyed = True

    def live(self) -> list[Member]:
        return [member for member in self.members if not member.destroyed]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_pool(
    factory: Factory | None = None, clock: Clock | None = None, **config: object
) -> tuple[PoolCore[Member], Factory, Clock]:
    factory = factory or Factory()
    clock = clock or Clock()
    settings: dict[str, object] = {"name": "test", "min_size": 0, "max_size": 2, **config}
    port: MemberFactory[Member] = factory
    core = PoolCore(PoolConfig.model_validate(settings), port, clock=clock)
    return core, factory, clock


async def settle() -> None:
    """Let spawned start/reset tasks run."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_lease_starts_a_member_and_release_makes_it_reusable() -> None:
    core, factory, _ = make_pool()
    first = await core.lease(timeout_s=1)
    assert first.pool == "test" and isinstance(first.member, Member)
    assert core.stats().leased == 1
    assert await core.release(first.lease_id) is True
    assert await core.release(first.lease_id) is False
    second = await core.lease(timeout_s=1)
    assert second.member is first.member and second.lease_id != first.lease_id
    assert len(factory.members) == 1


async def test_a_key_gets_the_same_lease_while_held() -> None:
    core, _, _ = make_pool()
    first = await core.lease("session-a", timeout_s=1)
    again = await core.lease("session-a", timeout_s=1)
    other = await core.lease("session-b", timeout_s=1)
    assert again == first
    assert other.member is not first.member
    await core.release(first.lease_id)
    fresh = await core.lease("session-a", timeout_s=1)
    assert fresh.lease_id != first.lease_id


async def test_concurrent_leases_for_one_key_share_one_member() -> None:
    core, factory, _ = make_pool(Factory(start_delay_s=0.05))
    leases = await asyncio.gather(*(core.lease("session-a", timeout_s=2) for _ in range(3)))
    assert len({lease.lease_id for lease in leases}) == 1
    assert len(factory.members) == 1


async def test_an_exhausted_pool_answers_with_backpressure_within_the_timeout() -> None:
    core, _, _ = make_pool(max_size=1)
    await core.lease("held", timeout_s=1)
    with pytest.raises(PoolExhausted) as caught:
        await core.lease("other", timeout_s=0.2)
    error = caught.value
    assert isinstance(error, DependencyUnavailable) and error.retryable
    assert "pool test" in error.message
    assert "1 of at most 1 members leased" in error.message
    assert "within 0.2 s" in error.message
    stats = core.stats()
    assert stats.exhausted == 1 and stats.waiters == 0


async def test_a_waiter_gets_the_member_another_caller_releases() -> None:
    core, _, _ = make_pool(max_size=1)
    held = await core.lease(timeout_s=1)
    waiting = asyncio.create_task(core.lease("next", timeout_s=5))
    await settle()
    assert core.stats().waiters == 1
    await core.release(held.lease_id)
    granted = await waiting
    assert granted.member is held.member and granted.key == "next"


async def test_a_failed_member_is_replaced_and_its_lease_says_why() -> None:
    core, factory, _ = make_pool(min_size=1)
    lease = await core.lease("session-a", timeout_s=1)
    lease.member.healthy = False
    assert await core.check_health() == 1
    with pytest.raises(LeaseLost) as caught:
        core.touch(lease.lease_id)
    assert "health check failed" in caught.value.message
    await settle()
    assert lease.member.destroyed
    fresh = await core.lease("session-a", timeout_s=1)
    assert fresh.member is not lease.member and not fresh.member.destroyed
    assert core.stats().members_failed == 1
    assert len(factory.live()) == 1


async def test_a_hanging_health_check_counts_as_a_failure() -> None:
    core, _, _ = make_pool(health_timeout_s=0.05)
    lease = await core.lease(timeout_s=1)
    lease.member.hang = True
    assert await core.check_health() == 1
    with pytest.raises(LeaseLost, match=r"timed out after 0\.05 s"):
        core.touch(lease.lease_id)


async def test_a_reported_failure_replaces_the_member_at_once() -> None:
    core, _, _ = make_pool()
    lease = await core.lease("session-a", timeout_s=1)
    assert await core.report_failure(lease.lease_id, "actor died") is True
    with pytest.raises(LeaseLost, match="actor died"):
        core.touch(lease.lease_id)
    await settle()
    stats = core.stats()
    assert stats.size == 1 and stats.idle == 1  # the replacement, started right away


async def test_an_unused_lease_is_released_after_the_idle_timeout() -> None:
    core, _, clock = make_pool(idle_release_s=60)
    lease = await core.lease("session-a", timeout_s=1)
    clock.now += 59
    core.touch(lease.lease_id)
    clock.now += 59
    await core.reconcile()
    assert core.stats().leased == 1
    clock.now += 2
    stats = await core.reconcile()
    assert stats.leased == 0 and stats.leases_idle_released == 1
    with pytest.raises(LeaseLost, match="released after 60 s without use"):
        core.touch(lease.lease_id)
    fresh = await core.lease("session-a", timeout_s=1)
    assert fresh.lease_id != lease.lease_id


async def test_it_grows_to_max_under_demand_and_shrinks_back_to_min_later() -> None:
    core, factory, clock = make_pool(min_size=1, max_size=3, scale_down_after_s=30)
    core.start()
    try:
        await settle()
        assert core.stats().size == 1
        leases = await asyncio.gather(*(core.lease(timeout_s=2) for _ in range(3)))
        assert core.stats().size == 3
        with pytest.raises(PoolExhausted):
            await core.lease(timeout_s=0.05)
        assert core.stats().size == 3  # never above max
        for lease in leases:
            await core.release(lease.lease_id)
        clock.now += 10
        assert (await core.reconcile()).size == 3  # hysteresis: not idle long enough yet
        clock.now += 30
        stats = await core.reconcile()
        assert stats.size == 1 and stats.members_scaled_down == 2
        await settle()
        assert len(factory.live()) == 1
    finally:
        await core.stop()


async def test_a_member_that_cannot_start_is_named_in_the_backpressure_error() -> None:
    core, _, _ = make_pool(Factory(fail_start="no chromium here"))
    with pytest.raises(PoolExhausted, match="start failed: RuntimeError: no chromium here"):
        await core.lease(timeout_s=0.2)
    assert core.stats().start_failures >= 1


async def test_members_are_reset_between_leases_and_replaced_when_reset_fails() -> None:
    factory = Factory(needs_reset=True)
    core, _, _ = make_pool(factory)
    lease = await core.lease(timeout_s=1)
    await core.release(lease.lease_id)
    assert core.stats().resetting == 1
    again = await core.lease(timeout_s=1)
    assert again.member is lease.member and lease.member.resets == 1
    factory.fail_reset = True
    await core.release(again.lease_id)
    await settle()
    assert lease.member.destroyed and core.stats().members_failed == 1


async def test_stop_fails_waiters_and_destroys_members() -> None:
    core, factory, _ = make_pool(max_size=1)
    await core.lease(timeout_s=1)
    waiting = asyncio.create_task(core.lease(timeout_s=10))
    await settle()
    assert await core.stop() == 1
    with pytest.raises(DependencyUnavailable, match="shutting down"):
        await waiting
    assert factory.live() == []


def test_config_rejects_min_above_max() -> None:
    with pytest.raises(ValueError, match="min_size"):
        PoolConfig(name="x", min_size=3, max_size=2)


def test_stats_are_a_plain_dict_when_dumped() -> None:
    core, _, _ = make_pool()
    dumped = core.stats().model_dump()
    assert set(dumped) == set(PoolStats.model_fields)
    assert dumped["pool"] == "test" and dumped["size"] == 0


async def test_release_key_ends_a_sessions_lease() -> None:
    core, _, _ = make_pool()
    lease = await core.lease("session-a", timeout_s=1)
    assert await core.release_key("session-a") is True
    assert await core.release_key("session-a") is False
    assert core.stats().leased == 0
    with pytest.raises(LeaseLost):
        core.touch(lease.lease_id)
