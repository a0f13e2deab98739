"""The state store adapter's base on SQLAlchemy async: PostgreSQL through asyncpg, SQLite through
aiosqlite.

One adapter serves both backends; the differences (connection setup, pool) live in
:func:`make_engine`. :class:`SqlStoreBase` holds the engine and :meth:`~SqlStoreBase.transaction`,
which turns driver errors into ours naming the database; the role mixins (``_sql_tenants``,
``_sql_sessions``, ``_sql_activation``, ``_sql_outbox``) build on it and ``_sql`` composes them
into :class:`~agentcluster.store.SqlStateStore`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, exists, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InvalidatePoolError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from agentcluster.domain import Message, Session, Turn
from agentcluster.errors import (
    ConflictError,
    DependencyUnavailable,
    InfrastructureError,
    NotFoundError,
    StaleEpochError,
    ValidationFailed,
)
from agentcluster.store.models import SessionRow, TenantRow, TurnRow

__all__ = [
    "SqlStoreBase",
    "describe_dsn",
    "make_engine",
    "message_of",
    "new_id",
    "require_tenant",
    "session_of",
    "turn_of",
]


def new_id() -> str:
    return str(uuid.uuid4())


def _backend(dsn: str) -> str:
    return "postgresql" if make_url(dsn).get_backend_name() == "postgresql" else "sqlite"


def describe_dsn(dsn: str) -> str:
    url = make_url(dsn)
    if url.get_backend_name() == "sqlite":
        return f"sqlite at {url.database}"
    return f"postgresql at {url.host}:{url.port or 5432}/{url.database}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _discard_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Checkout hook: a pooled connection the server already closed (a restart, a crash, an
    admin's terminate) is replaced before use, and every connection pooled before it with it.

    asyncpg notices the server's close on the event loop (``is_closed()``), so this costs no round
    trip, unlike ``pool_pre_ping``; the first request after the database is back succeeds.
    """
    inner = getattr(dbapi_connection, "_connection", None)
    if inner is not None and inner.is_closed():
        raise InvalidatePoolError("the database closed this pooled connection")


def make_engine(
    dsn: str,
    pool: tuple[int, int],
    connect_timeout_s: float,
    command_timeout_s: float,
    echo: bool,
) -> AsyncEngine:
    """The engine; ``pool`` is (pool_size, max_overflow)."""
    if _backend(dsn) == "postgresql":
        engine = create_async_engine(
            dsn,
            pool_size=pool[0],
            max_overflow=pool[1],
            # No pre-ping: it doubled every store call's round trips (benchmarks/turn_overhead).
            # _discard_closed replaces connections the server closed, for free; one broken in
            # another way is invalidated (with the whole pool) on its first error, which surfaces
            # as DependencyUnavailable.
            pool_pre_ping=False,
            pool_recycle=1800,
            # A database that stops answering (paused, partitioned) fails the wait for a pooled
            # connection and each statement in bounded time instead of hanging the caller.
            pool_timeout=command_timeout_s,
            echo=echo,
            connect_args={"timeout": connect_timeout_s, "command_timeout": command_timeout_s},
        )
        event.listen(engine.sync_engine, "checkout", _discard_closed)
        return engine
    database = make_url(dsn).database
    if database and database != ":memory:":
        from pathlib import Path

        from agentcluster.datadir import prepare_sqlite_file

        # 0600 before SQLite opens it: SQLite gives -wal and -shm the database file's mode.
        prepare_sqlite_file(Path(database))
    # Pooled, as PostgreSQL: a connection per transaction (NullPool) cost a connect, the pragmas
    # and a new aiosqlite thread each time, a third of an embedded turn's CPU. SQLAlchemy makes
    # aiosqlite's threads daemons, so a store left open never holds up the process's exit.
    engine = create_async_engine(
        dsn, pool_size=pool[0], max_overflow=pool[1], echo=echo, connect_args={"timeout": 30}
    )
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def session_of(row: Any) -> Session:
    """A session from its row; ``awaiting_approval`` when the row comes with an ``awaiting``
    column that is true (see :func:`awaiting_column`)."""
    awaiting = row.status == "active" and bool(getattr(row, "awaiting", False))
    return Session(
        session_id=row.session_id,
        tenant_id=row.tenant_id,
        agent=row.agent,
        status="awaiting_approval" if awaiting else row.status,
        metadata=row._mapping["metadata"] or {},
        owner_host=row.owner_host,
        owner_epoch=row.owner_epoch,
        last_seq=row.next_seq - 1,
        created_at=row.created_at,
        updated_at=row.updated_at,
        closed_at=row.closed_at,
        webhook=row.webhook,
    )


OPEN_TURN_STATUSES = ("queued", "running", "awaiting_approval")
"""Turns a session still has to run, finish, or have decided (the session's next turns wait)."""
AWAITING = "awaiting"
"""A tool call's status while it waits for a person."""
RUNNABLE_TURN_STATUSES = ("queued", "running")
"""Open turns a host can go on with now (not waiting for a person)."""


def awaiting_column() -> Any:
    """Whether the session (in a query on ``sessions``) has a turn waiting for a person."""
    return (
        exists()
        .where(TurnRow.session_id == SessionRow.session_id, TurnRow.status == "awaiting_approval")
        .label("awaiting")
    )


def message_of(row: Any) -> Message:
    return Message(
        message_id=row.message_id,
        session_id=row.session_id,
        turn_id=row.turn_id,
        role=row.role,
        content=row.content,
        tool_calls=row.tool_calls,
        tool_call_id=row.tool_call_id,
        created_at=row.created_at,
        rolled_back=row.rolled_back,
    )


def turn_of(row: Any) -> Turn:
    return Turn(
        turn_id=row.turn_id,
        session_id=row.session_id,
        tenant_id=row.tenant_id,
        message_id=row.message_id,
        status=row.status,
        attempt=row.attempt,
        usage=row.usage or {},
        answer_message_id=row.answer_message_id,
        error=row.error,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        strategy=row.strategy,
    )


async def require_tenant(connection: AsyncConnection, tenant_id: str) -> None:
    """Raises NotFoundError unless the tenant exists (in ``connection``'s transaction)."""
    found = await connection.scalar(
        select(TenantRow.tenant_id).where(TenantRow.tenant_id == tenant_id)
    )
    if found is None:
        raise NotFoundError(f"tenant {tenant_id} not found")


class SqlStoreBase:
    """The engine, its transactions and the database's health (see module docstring)."""

    def __init__(self, engine: AsyncEngine, *, description: str = "database") -> None:
        self._engine = engine
        self.description = description
        self.dependency = "postgresql" if engine.dialect.name == "postgresql" else "sqlite"
        self._session_writes: asyncio.Lock | None = None

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @asynccontextmanager
    async def _one_writer(self) -> AsyncIterator[None]:
        """SQLite: this process's session writes take turns here. SQLite has one writer at a
        time, and its busy handler retries a waiting writer with growing sleeps: sixteen
        concurrent turns waited up to 4.5 s (p99 1.3 s) for it; queued here they wait in order.
        PostgreSQL locks the session's row instead: nothing to do."""
        if self.dependency != "sqlite":
            yield
            return
        if self._session_writes is None:
            self._session_writes = asyncio.Lock()
        async with self._session_writes:
            yield

    async def close(self) -> None:
        await self._engine.dispose()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction whose driver errors become ours, naming the database (also for the
        adapters that keep their own rows in this database, e.g. the settings table's)."""
        try:
            async with self._engine.begin() as connection:
                yield connection
        except (IntegrityError, StaleEpochError, NotFoundError, ConflictError, ValidationFailed):
            raise
        except (OSError, TimeoutError) as exc:
            detail = str(exc) or f"no answer ({type(exc).__name__})"
            raise DependencyUnavailable(self.dependency, f"{self.description}: {detail}") from exc
        except PoolTimeout as exc:
            raise DependencyUnavailable(
                self.dependency, f"{self.description}: no connection free in time ({exc})"
            ) from exc
        except OperationalError as exc:
            raise InfrastructureError(self.dependency, f"{self.description}: {exc.orig}") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated or _unreachable(exc):
                raise DependencyUnavailable(
                    self.dependency, f"{self.description}: {exc.orig}"
                ) from exc
            raise

    async def ping(self) -> None:
        """Check the database answers.

        Raises:
            DependencyUnavailable: it does not.
        """
        try:
            async with self._engine.connect() as connection:
                await connection.execute(select(1))
        except (OSError, TimeoutError, DBAPIError, PoolTimeout) as exc:
            detail = getattr(exc, "orig", None) or exc or type(exc).__name__
            raise DependencyUnavailable(
                self.dependency, f"cannot reach {self.description}: {detail}"
            ) from exc


# SQLSTATE classes of a server that cannot serve now: connection exception (08), insufficient
# resources (53: too many connections), operator intervention (57: shutting down, starting up,
# terminated by the administrator).
_UNREACHABLE_SQLSTATE_CLASSES = ("08", "53", "57")


def _unreachable(exc: DBAPIError) -> bool:
    """Whether a driver error means the database cannot serve now (a restart, an outage), not
    that the statement was wrong."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in _UNREACHABLE_SQLSTATE_CLASSES
