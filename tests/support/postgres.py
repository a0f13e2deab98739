"""Fresh PostgreSQL databases on the local server of ``make deps-up``, dropped afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator

import asyncpg
from sqlalchemy.engine import make_url

__all__ = ["fresh_database"]


def _asyncpg_dsn(dsn: str) -> str:
    return make_url(dsn).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(dsn: str, statement: str) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(dsn))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.contextmanager
def fresh_database(server_dsn: str, prefix: str = "ac_test") -> Iterator[str]:
    """A new, empty database on the server of ``server_dsn`` (an SQLAlchemy URL): yields its
    DSN in the same form and drops it on exit. Call it outside a running event loop."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_dsn, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_dsn).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
