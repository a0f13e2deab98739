"""Schedules in the store and the ticker, on SQLite and PostgreSQL: the lease elects one ticker,
a tick is one message however often it is submitted, missed ticks follow the schedule's policy,
a closed session's schedules go."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agentcluster.config import ScheduleSettings
from agentcluster.domain import MissedTicks
from agentcluster.errors import ConflictError, NotFoundError
from agentcluster.schedules import LEASE, ScheduleTicker, tick_key
from agentcluster.store import SqlStateStore
from tests.support.postgres import fresh_database

pytestmark = pytest.mark.parametrize("backend_dsn", ["sqlite", "postgresql"], indirect=True)

SETTINGS = ScheduleSettings(tick_s=1, lease_s=5, min_interval_s=1, max_per_session=3)


async def _session(store: SqlStateStore) -> tuple[str, str]:
    tenant = await store.create_tenant(f"schedules-{uuid.uuid4().hex[:6]}")
    session = await store.create_session(tenant.tenant_id, "tester")
    return tenant.tenant_id, session.session_id


async def _schedule(
    store: SqlStateStore, tenant_id: str, session_id: str, due: datetime, missed: MissedTicks
) -> str:
    schedule = await store.create_schedule(
        tenant_id,
        session_id,
        cron="0 * * * *",
        timezone="UTC",
        content=f"tick {uuid.uuid4().hex}",
        missed=missed,
        next_fire_at=due,
        max_per_session=SETTINGS.max_per_session,
    )
    return schedule.schedule_id


def _ticker(store: SqlStateStore, holder: str) -> ScheduleTicker:
    return ScheduleTicker(store, store.submit_message, SETTINGS, holder)


async def _users(store: SqlStateStore, tenant_id: str, session_id: str) -> list[str]:
    return [m.content for m in await store.list_messages(tenant_id, session_id)]


@pytest.fixture
def backend_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of this test's own: host controllers of the suite's clusters tick the
    schedules of the shared one (and hold its ticker lease)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'schedules.db'}"
        return
    with fresh_database(str(request.getfixturevalue("postgres_dsn")), "ac_schedules") as dsn:
        yield dsn


async def test_a_due_tick_is_submitted_once_and_the_schedule_moves_on(
    store: SqlStateStore,
) -> None:
    now = datetime.now(UTC).replace(minute=30)
    tenant_id, session_id = await _session(store)
    await _schedule(store, tenant_id, session_id, now - timedelta(seconds=1), "once")
    ticker = _ticker(store, "a")
    assert await ticker.tick(now) == 1
    assert await ticker.tick(now) == 0  # moved to the next hour
    [schedule] = await store.list_schedules(tenant_id, session_id)
    assert schedule.next_fire_at == (now + timedelta(hours=1)).replace(
        minute=0, second=0, microsecond=0
    )
    assert schedule.last_fired_at == now
    assert len(await _users(store, tenant_id, session_id)) == 1


async def test_only_the_lease_holder_ticks_until_its_lease_expires(store: SqlStateStore) -> None:
    now = datetime.now(UTC)
    tenant_id, session_id = await _session(store)
    await _schedule(store, tenant_id, session_id, now - timedelta(seconds=1), "once")
    assert await store.acquire_lease(LEASE, "a", SETTINGS.lease_s)
    assert await _ticker(store, "b").tick(now) == 0  # "a" holds it
    assert await store.acquire_lease(LEASE, "a", SETTINGS.lease_s)  # renewed by its holder
    assert not await store.acquire_lease(LEASE, "b", SETTINGS.lease_s)
    async with store.transaction() as connection:  # "a" stops renewing: its lease runs out
        from sqlalchemy import update

        from agentcluster.store.models import LeaseRow

        await connection.execute(
            update(LeaseRow).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert await _ticker(store, "b").tick(now) == 1
    assert not await store.acquire_lease(LEASE, "a", SETTINGS.lease_s)


async def test_a_tick_submitted_twice_is_one_message(store: SqlStateStore) -> None:
    # Two tickers across a lease handover, or a crash between submitting and recording the
    # tick: the tick's idempotency key makes the second submission the first one's.
    now = datetime.now(UTC)
    tenant_id, session_id = await _session(store)
    due = now - timedelta(seconds=1)
    schedule_id = await _schedule(store, tenant_id, session_id, due, "once")
    first = await store.submit_message(
        tenant_id, session_id, "tick", idempotency_key=tick_key(schedule_id, due)
    )
    assert await _ticker(store, "a").tick(now) == 1
    assert await _users(store, tenant_id, session_id) == ["tick"]
    assert first.created


async def test_missed_ticks_run_once_or_are_skipped(store: SqlStateStore) -> None:
    now = datetime.now(UTC)
    tenant_id, session_id = await _session(store)
    long_ago = now - timedelta(hours=5)
    await _schedule(store, tenant_id, session_id, long_ago, "once")
    skipping_tenant, skipping_session = await _session(store)
    await _schedule(store, skipping_tenant, skipping_session, long_ago, "skip")
    assert await _ticker(store, "a").tick(now) == 1
    assert len(await _users(store, tenant_id, session_id)) == 1  # one for the five hours
    assert await _users(store, skipping_tenant, skipping_session) == []
    for t, s in ((tenant_id, session_id), (skipping_tenant, skipping_session)):
        [schedule] = await store.list_schedules(t, s)
        assert schedule.next_fire_at > now


async def test_a_closed_sessions_schedules_are_dropped_and_refused(store: SqlStateStore) -> None:
    now = datetime.now(UTC)
    tenant_id, session_id = await _session(store)
    await _schedule(store, tenant_id, session_id, now - timedelta(seconds=1), "once")
    await store.close_session(tenant_id, session_id)
    assert await _ticker(store, "a").tick(now) == 0
    assert await store.list_schedules(tenant_id, session_id) == []
    with pytest.raises(ConflictError):
        await _schedule(store, tenant_id, session_id, now, "once")


async def test_schedules_belong_to_the_sessions_tenant_and_are_bounded(
    store: SqlStateStore,
) -> None:
    now = datetime.now(UTC) + timedelta(days=1)
    tenant_id, session_id = await _session(store)
    other_tenant, _ = await _session(store)
    ids = [await _schedule(store, tenant_id, session_id, now, "once") for _ in range(3)]
    with pytest.raises(ConflictError, match="most allowed"):
        await _schedule(store, tenant_id, session_id, now, "once")
    with pytest.raises(NotFoundError):
        await store.list_schedules(other_tenant, session_id)
    with pytest.raises(NotFoundError):
        await store.delete_schedule(other_tenant, session_id, ids[0])
    with pytest.raises(NotFoundError):
        await _schedule(store, other_tenant, session_id, now, "once")
    await store.delete_schedule(tenant_id, session_id, ids[0])
    assert {s.schedule_id for s in await store.list_schedules(tenant_id, session_id)} == set(
        ids[1:]
    )
