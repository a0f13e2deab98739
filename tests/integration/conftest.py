"""Integration fixtures: state stores on real SQLite and on real PostgreSQL (``postgres_dsn``,
a fresh database, comes from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcluster.store import SqlStateStore, open_store


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
