"""Integration fixtures: state stores on real SQLite and on real PostgreSQL (fresh database)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from agentcluster.store import SqlStateStore, open_store
from tests.conftest import service


def _asyncpg_dsn(dsn: str, database: str | None = None) -> str:
    url = make_url(dsn).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


async def _admin(dsn: str, statement: str) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(dsn))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test run, dropped afterwards."""
    base = service("SA01_DB_DSN")
    name = f"ac_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(base, f'CREATE DATABASE "{name}"'))
    yield make_url(base).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("sqlite") / "agentcluster.db"
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_dsn(request: pytest.FixtureRequest, sqlite_dsn: str) -> str:
    if request.param == "sqlite":
        return sqlite_dsn
    return str(request.getfixturevalue("postgres_dsn"))


@pytest.fixture
async def store(backend_dsn: str) -> AsyncIterator[SqlStateStore]:
    """The same store tests on both backends."""
    dsn = backend_dsn
    opened = await open_store(dsn, pool_size=5)
    yield opened
    await opened.close()
