"""PostgreSQL stopped, crashed or silent under the state store, then back (a private cluster).

What clients see while it is gone: :class:`DependencyUnavailable` naming ``postgresql`` (the
gateway's 503 ``dependency-unavailable`` with Retry-After; see tests/e2e/test_faults.py). What
recovers: the same store object serves again as soon as the database is back, with no request
failing on a pooled connection the restart closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from agentcluster.errors import DependencyUnavailable
from agentcluster.store import SqlStateStore, open_store
from tests.support.private_services import PrivatePostgres

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

POOL_SIZE = 4
HANG_GUARD_S = 60  # a hang fails the test; not a timing assertion


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    with PrivatePostgres() as server:
        yield server


@pytest.fixture
async def store(postgres: PrivatePostgres) -> AsyncIterator[SqlStateStore]:
    await asyncio.to_thread(postgres.start)  # a test may have left it stopped
    opened = await open_store(postgres.url, pool_size=POOL_SIZE, command_timeout_s=2)
    yield opened
    await opened.close()


async def _fill_pool(store: SqlStateStore, tenant_id: str) -> None:
    """Open every pooled connection (concurrent reads), so a restart leaves them all stale."""
    await asyncio.gather(*(store.get_tenant(tenant_id) for _ in range(POOL_SIZE)))


async def _each_call(store: SqlStateStore, tenant_id: str) -> list[object]:
    """A read, a write and a ping, each answer or error in order."""
    calls = (store.get_tenant(tenant_id), store.create_tenant("during-fault"), store.ping())
    return list(
        await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), HANG_GUARD_S)
    )


async def test_a_stopped_database_is_dependency_unavailable_naming_it(
    postgres: PrivatePostgres, store: SqlStateStore
) -> None:
    tenant = await store.create_tenant("before")
    await _fill_pool(store, tenant.tenant_id)
    # Stopped from a thread: the event loop keeps running, as in a server.
    await asyncio.to_thread(postgres.stop)
    for outcome in await _each_call(store, tenant.tenant_id):
        assert isinstance(outcome, DependencyUnavailable), repr(outcome)
        assert outcome.dependency == "postgresql"
        assert outcome.retryable
        assert outcome.message.startswith("postgresql: ")
        assert f"127.0.0.1:{postgres.port}" in outcome.message


@pytest.mark.parametrize("crash", [False, True], ids=["stopped", "crashed"])
async def test_every_call_succeeds_once_the_database_is_back(
    postgres: PrivatePostgres, store: SqlStateStore, crash: bool
) -> None:
    tenant = await store.create_tenant("before")
    await _fill_pool(store, tenant.tenant_id)
    await asyncio.to_thread(postgres.stop, kill=crash)
    await asyncio.to_thread(postgres.start)
    # Every pooled connection died with the server: none of them may reach a caller.
    reads = [store.get_tenant(tenant.tenant_id) for _ in range(POOL_SIZE * 2)]
    writes = [store.create_tenant(f"after-{n}") for n in range(POOL_SIZE)]
    outcomes = await asyncio.gather(*reads, *writes, return_exceptions=True)
    assert [o for o in outcomes if isinstance(o, BaseException)] == []
    assert (await store.get_tenant(tenant.tenant_id)).name == "before"


async def test_a_silent_database_fails_calls_in_bounded_time_then_recovers(
    postgres: PrivatePostgres, store: SqlStateStore
) -> None:
    tenant = await store.create_tenant("before")
    await _fill_pool(store, tenant.tenant_id)
    postgres.pause()
    try:
        # More callers than pooled connections: some wait for a connection, some for an answer.
        calls = [store.get_tenant(tenant.tenant_id) for _ in range(POOL_SIZE * 3)]
        outcomes = await asyncio.wait_for(
            asyncio.gather(*calls, return_exceptions=True), HANG_GUARD_S
        )
    finally:
        postgres.resume()
    for outcome in outcomes:
        assert isinstance(outcome, DependencyUnavailable), repr(outcome)
        assert outcome.dependency == "postgresql"
    assert (await store.get_tenant(tenant.tenant_id)).name == "before"


async def test_a_database_shutting_down_is_dependency_unavailable_naming_it(
    postgres: PrivatePostgres, store: SqlStateStore
) -> None:
    """A smart shutdown waits for open sessions while refusing new ones ("the database system
    is shutting down", SQLSTATE 57P03): a new connection in that window is an outage, not a bug."""
    import os
    import signal

    import asyncpg

    tenant = await store.create_tenant("before")
    held = await asyncpg.connect(postgres.url.replace("postgresql+asyncpg", "postgresql"))
    try:
        pid = postgres.pid
        assert pid is not None
        os.kill(pid, signal.SIGTERM)  # smart shutdown: the held session keeps it waiting
        await store.engine.dispose()  # the next call needs a new connection
        try:
            await asyncio.wait_for(store.get_tenant(tenant.tenant_id), HANG_GUARD_S)
        except DependencyUnavailable as exc:
            assert exc.dependency == "postgresql"
            assert "shutting down" in exc.message
        else:
            pytest.fail("a call succeeded on a database that refuses new connections")
    finally:
        await held.close()
    await asyncio.to_thread(postgres.stop)  # it ends the shutdown once the session is gone
