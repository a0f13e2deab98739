"""Migrating a database that already holds data, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import JSON, String, column, insert, inspect, table
from sqlalchemy.ext.asyncio import AsyncConnection

from agentcluster.store import current_revision, head_revision, open_store, upgrade
from agentcluster.store.models import SessionRow, TenantRow, UtcDateTime
from tests.conftest import service
from tests.support.postgres import fresh_database

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
# The table as revision 0002 made it (no model describes it any more).
AGENTS = table(
    "agents",
    column("agent_id", String()),
    column("tenant_id", String()),
    column("name", String()),
    column("profile", JSON()),
    column("created_at", UtcDateTime()),
    column("updated_at", UtcDateTime()),
)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database nothing has migrated yet."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
        return
    with fresh_database(service("SA01_DB_DSN"), prefix="ac_migrate") as dsn:
        yield dsn


async def _tables(connection: AsyncConnection) -> set[str]:
    return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


async def _seed_at_0002(connection: AsyncConnection) -> None:
    times = {"created_at": NOW, "updated_at": NOW}
    await connection.execute(insert(TenantRow).values(tenant_id="t1", name="acme", created_at=NOW))
    await connection.execute(
        insert(AGENTS).values(agent_id="a1", tenant_id="t1", name="default", profile={}, **times)
    )
    await connection.execute(
        insert(SessionRow).values(
            session_id="s1", tenant_id="t1", agent="default", session_metadata={}, **times
        )
    )


async def test_upgrading_drops_the_unused_agents_table_and_keeps_the_rest(empty_dsn: str) -> None:
    store = await open_store(empty_dsn, pool_size=2, migrate=False)
    try:
        await upgrade(store.engine, "0002")
        async with store.engine.begin() as connection:
            assert "agents" in await _tables(connection)
            await _seed_at_0002(connection)
            before = await _tables(connection)

        await upgrade(store.engine)

        assert await current_revision(store.engine) == head_revision()
        async with store.engine.connect() as connection:
            # 0003 drops agents; 0005 and 0006 add the schedules' and the webhooks' tables.
            added = {"schedules", "leases", "webhook_deliveries", "webhook_secrets"}
            assert await _tables(connection) == (before - {"agents"}) | added
        assert (await store.get_tenant("t1")).name == "acme"
        assert (await store.get_session("t1", "s1")).agent == "default"
    finally:
        await store.close()
