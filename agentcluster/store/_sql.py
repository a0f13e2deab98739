"""The state store on SQLAlchemy async: PostgreSQL through asyncpg, SQLite through aiosqlite.

One adapter serves both backends; the differences (connection setup, pool) live in
:func:`open_store`.
All writes that touch a session go through :class:`SessionWriter`, a unit of work that

* fences: with an epoch, the session row is only updated while ``owner_epoch`` still matches, so a
  host that lost ownership cannot write (:class:`~agentcluster.errors.StaleEpochError`);
* serializes: the first statement updates the session row, which locks it until commit (PostgreSQL
  row lock, SQLite write lock), so per-session sequence numbers never collide;
* records events in the same transaction as the state change (the transactional outbox).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy import Select, and_, event, func, insert, not_, or_, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InvalidatePoolError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from agentcluster import events as ev
from agentcluster.config import normalize_dsn
from agentcluster.domain import (
    Activated,
    ApiKey,
    Message,
    MessageRole,
    OutboxRecord,
    Page,
    Session,
    Submission,
    Tenant,
    Turn,
    TurnStatus,
)
from agentcluster.errors import (
    ConfigError,
    ConflictError,
    DependencyUnavailable,
    InfrastructureError,
    NotFoundError,
    StaleEpochError,
    ValidationFailed,
)
from agentcluster.store import _migrate
from agentcluster.store.models import (
    ApiKeyRow,
    AttachmentRow,
    EventRow,
    MessageRow,
    SessionRow,
    TenantRow,
    ToolCallRow,
    TurnRow,
    utcnow,
)

__all__ = ["SessionWriter", "SqlStateStore", "hash_api_key", "open_store"]

KEY_PREFIX = "ac_"


def _new_id() -> str:
    return str(uuid.uuid4())


def hash_api_key(secret: str) -> str:
    """SHA-256 of an API key. Keys are 256-bit random, so a fast hash is enough (no brute force)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _backend(dsn: str) -> str:
    return "postgresql" if make_url(dsn).get_backend_name() == "postgresql" else "sqlite"


def _describe(dsn: str) -> str:
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


def _make_engine(
    dsn: str, pool_size: int, connect_timeout_s: float, command_timeout_s: float, echo: bool
) -> AsyncEngine:
    if _backend(dsn) == "postgresql":
        engine = create_async_engine(
            dsn,
            pool_size=pool_size,
            max_overflow=pool_size,
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
    engine = create_async_engine(dsn, poolclass=NullPool, echo=echo, connect_args={"timeout": 30})
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


async def open_store(
    dsn: str,
    *,
    pool_size: int = 10,
    connect_timeout_s: float = 5.0,
    command_timeout_s: float = 30.0,
    migrate: bool = True,
    echo: bool = False,
) -> SqlStateStore:
    """Connect to the database (failing fast with the dependency named) and run migrations.

    ``command_timeout_s`` bounds each PostgreSQL statement and the wait for a pooled connection.

    Raises:
        DependencyUnavailable: the database cannot be reached.
    """
    try:
        dsn = normalize_dsn(dsn)
    except ValueError as exc:
        raise ConfigError(f"SA01_DB_DSN: {exc}") from None
    engine = _make_engine(dsn, pool_size, connect_timeout_s, command_timeout_s, echo)
    store = SqlStateStore(engine, description=_describe(dsn))
    try:
        await store.ping()
        if migrate:
            await _migrate.upgrade(engine)
    except BaseException:
        await engine.dispose()
        raise
    return store


def _session(row: Any) -> Session:
    return Session(
        session_id=row.session_id,
        tenant_id=row.tenant_id,
        agent=row.agent,
        status=row.status,
        metadata=row._mapping["metadata"] or {},
        owner_host=row.owner_host,
        owner_epoch=row.owner_epoch,
        last_seq=row.next_seq - 1,
        created_at=row.created_at,
        updated_at=row.updated_at,
        closed_at=row.closed_at,
    )


def _message(row: Any) -> Message:
    return Message(
        message_id=row.message_id,
        session_id=row.session_id,
        turn_id=row.turn_id,
        role=row.role,
        content=row.content,
        tool_calls=row.tool_calls,
        tool_call_id=row.tool_call_id,
        created_at=row.created_at,
    )


def _turn(row: Any) -> Turn:
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
    )


def _api_key(row: Any) -> ApiKey:
    return ApiKey(
        key_id=row.key_id,
        tenant_id=row.tenant_id,
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _encode_cursor(created_at: datetime, session_id: str) -> str:
    raw = f"{created_at.isoformat()}|{session_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, session_id = raw.split("|", 1)
        return datetime.fromisoformat(stamp), session_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed(f"invalid cursor {cursor!r}") from exc


def _open_turns_query(session_id: str) -> Select[TurnRow, str]:
    # The user message's content comes along, so a worker starting a turn needs no second query.
    return (
        select(TurnRow, MessageRow.content.label("prompt"))
        .join(MessageRow, MessageRow.message_id == TurnRow.message_id)
        .where(TurnRow.session_id == session_id, TurnRow.status.in_(("queued", "running")))
        .order_by(MessageRow.position)
    )


class SessionWriter:
    """A fenced unit of work on one session; obtain it from :meth:`SqlStateStore.writer`."""

    def __init__(
        self,
        connection: AsyncConnection,
        tenant_id: str,
        session_id: str,
        seq: int,
        status: str = "active",
    ) -> None:
        self._connection = connection
        self.tenant_id = tenant_id
        self.session_id = session_id
        self.status = status
        self._next_seq = seq
        self.emitted: list[ev.Event] = []

    @property
    def connection(self) -> AsyncConnection:
        """The transaction's connection, for store-internal statements."""
        return self._connection

    @property
    def next_seq(self) -> int:
        return self._next_seq

    async def emit(self, event: ev.Event) -> ev.Event:
        """Record ``event`` in the outbox with the next sequence number; returns it with its seq."""
        if event.session_id != self.session_id or event.tenant_id != self.tenant_id:
            raise ValueError("event belongs to another session")
        stamped: ev.Event = event.model_copy(update={"seq": self._next_seq})
        self._next_seq += 1
        await self._connection.execute(
            insert(EventRow).values(
                event_id=stamped.event_id,
                tenant_id=self.tenant_id,
                session_id=self.session_id,
                seq=stamped.seq,
                type=stamped.type,
                payload=ev.dump_event(stamped).decode(),
                created_at=stamped.ts,
            )
        )
        self.emitted.append(stamped)
        return stamped

    async def add_message(
        self,
        role: MessageRole,
        content: str,
        *,
        turn_id: str | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
        tool_call_id: str | None = None,
        idempotency_key: str | None = None,
        message_id: str | None = None,
    ) -> str:
        """Append a message to the session's history; returns its id."""
        message_id = message_id or _new_id()
        await self._connection.execute(
            insert(MessageRow).values(
                message_id=message_id,
                tenant_id=self.tenant_id,
                session_id=self.session_id,
                turn_id=turn_id,
                role=role,
                content=content,
                tool_calls=tool_calls,
                tool_call_id=tool_call_id,
                idempotency_key=idempotency_key,
                created_at=utcnow(),
            )
        )
        return message_id

    async def add_turn(self, turn_id: str, message_id: str) -> None:
        """Queue a turn answering ``message_id``."""
        await self._connection.execute(
            insert(TurnRow).values(
                turn_id=turn_id,
                tenant_id=self.tenant_id,
                session_id=self.session_id,
                message_id=message_id,
                status="queued",
                attempt=0,
                usage={},
                created_at=utcnow(),
            )
        )

    async def start_turn(self, turn_id: str) -> int:
        """Mark a turn running and count the attempt; returns the attempt number."""
        result = await self._connection.execute(
            update(TurnRow)
            .where(TurnRow.turn_id == turn_id, TurnRow.session_id == self.session_id)
            .values(status="running", attempt=TurnRow.attempt + 1, started_at=utcnow())
            .returning(TurnRow.attempt)
        )
        attempt = result.scalar_one_or_none()
        if attempt is None:
            raise NotFoundError(f"turn {turn_id} not found in session {self.session_id}")
        return int(attempt)

    async def finish_turn(
        self,
        turn_id: str,
        status: TurnStatus,
        *,
        usage: dict[str, Any] | None = None,
        answer_message_id: str | None = None,
        error: str | None = None,
    ) -> None:
        """Record a turn's outcome."""
        values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
        if usage is not None:
            values["usage"] = usage
        if answer_message_id is not None:
            values["answer_message_id"] = answer_message_id
        await self._connection.execute(
            update(TurnRow)
            .where(TurnRow.turn_id == turn_id, TurnRow.session_id == self.session_id)
            .values(**values)
        )

    async def record_tool_call(
        self, tool_call_id: str, turn_id: str, tool: str, arguments: dict[str, Any]
    ) -> None:
        """Record that the model asked for a tool call."""
        await self._connection.execute(
            insert(ToolCallRow).values(
                row_id=_new_id(),
                tool_call_id=tool_call_id,
                tenant_id=self.tenant_id,
                session_id=self.session_id,
                turn_id=turn_id,
                tool=tool,
                arguments=arguments,
                status="requested",
                created_at=utcnow(),
            )
        )

    async def finish_tool_call(
        self,
        turn_id: str,
        tool_call_id: str,
        *,
        status: str,
        decision: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        """Record the decision and/or result of the turn's unfinished call with this id."""
        values: dict[str, Any] = {"status": status, "decision": decision, "result": result}
        if status in {"completed", "failed", "denied"}:
            values["finished_at"] = utcnow()
        await self._connection.execute(
            update(ToolCallRow)
            .where(
                ToolCallRow.turn_id == turn_id,
                ToolCallRow.tool_call_id == tool_call_id,
                ToolCallRow.session_id == self.session_id,
                ToolCallRow.finished_at.is_(None),
            )
            .values(**{k: v for k, v in values.items() if v is not None})
        )


class SqlStateStore:
    """The durable state store (see module docstring)."""

    def __init__(self, engine: AsyncEngine, *, description: str = "database") -> None:
        self._engine = engine
        self.description = description
        self.dependency = "postgresql" if engine.dialect.name == "postgresql" else "sqlite"

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

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

    # -- tenants and API keys -------------------------------------------------------------------

    async def create_tenant(self, name: str, tenant_id: str | None = None) -> Tenant:
        tenant = TenantRow(tenant_id=tenant_id or _new_id(), name=name, created_at=utcnow())
        async with self.transaction() as connection:
            await connection.execute(
                insert(TenantRow).values(
                    tenant_id=tenant.tenant_id, name=name, created_at=tenant.created_at
                )
            )
        return Tenant(tenant_id=tenant.tenant_id, name=name, created_at=tenant.created_at)

    async def get_tenant(self, tenant_id: str) -> Tenant:
        async with self.transaction() as connection:
            row = (
                await connection.execute(select(TenantRow).where(TenantRow.tenant_id == tenant_id))
            ).one_or_none()
        if row is None:
            raise NotFoundError(f"tenant {tenant_id} not found")
        return Tenant(tenant_id=row.tenant_id, name=row.name, created_at=row.created_at)

    async def create_api_key(self, tenant_id: str, name: str) -> tuple[ApiKey, str]:
        """Create a key; returns its record and the secret (stored hashed, never shown again)."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKeyRow(
            key_id=_new_id(),
            tenant_id=tenant_id,
            name=name,
            prefix=secret[:10],
            key_hash=hash_api_key(secret),
            created_at=utcnow(),
        )
        async with self.transaction() as connection:
            await self._require_tenant(connection, tenant_id)
            await connection.execute(
                insert(ApiKeyRow).values(
                    key_id=row.key_id,
                    tenant_id=tenant_id,
                    name=name,
                    prefix=row.prefix,
                    key_hash=row.key_hash,
                    created_at=row.created_at,
                )
            )
        return _api_key(row), secret

    async def authenticate(self, secret: str) -> ApiKey | None:
        """The live key whose secret this is, or None."""
        async with self.transaction() as connection:
            row = (
                await connection.execute(
                    select(ApiKeyRow).where(
                        ApiKeyRow.key_hash == hash_api_key(secret), ApiKeyRow.revoked_at.is_(None)
                    )
                )
            ).one_or_none()
        return None if row is None else _api_key(row)

    async def list_api_keys(self, tenant_id: str | None) -> list[ApiKey]:
        """Keys of a tenant (of every tenant when None, for an admin), oldest first."""
        query = select(ApiKeyRow).order_by(ApiKeyRow.created_at)
        if tenant_id is not None:
            query = query.where(ApiKeyRow.tenant_id == tenant_id)
        async with self.transaction() as connection:
            rows = (await connection.execute(query)).all()
        return [_api_key(row) for row in rows]

    async def revoke_api_key(self, tenant_id: str | None, key_id: str) -> None:
        """Revoke a live key (of ``tenant_id`` when given; any tenant's for an admin)."""
        conditions = [ApiKeyRow.key_id == key_id, ApiKeyRow.revoked_at.is_(None)]
        if tenant_id is not None:
            conditions.append(ApiKeyRow.tenant_id == tenant_id)
        async with self.transaction() as connection:
            result = await connection.execute(
                update(ApiKeyRow).where(*conditions).values(revoked_at=utcnow())
            )
        if result.rowcount == 0:
            raise NotFoundError(f"api key {key_id} not found")

    async def _require_tenant(self, connection: AsyncConnection, tenant_id: str) -> None:
        found = await connection.scalar(
            select(TenantRow.tenant_id).where(TenantRow.tenant_id == tenant_id)
        )
        if found is None:
            raise NotFoundError(f"tenant {tenant_id} not found")

    # -- sessions -------------------------------------------------------------------------------

    async def create_session(
        self, tenant_id: str, agent: str, metadata: dict[str, Any] | None = None
    ) -> Session:
        """Create a session and record ``session.created`` in the same transaction."""
        now = utcnow()
        session_id = _new_id()
        async with self.transaction() as connection:
            await self._require_tenant(connection, tenant_id)
            await connection.execute(
                insert(SessionRow).values(
                    session_id=session_id,
                    tenant_id=tenant_id,
                    agent=agent,
                    status="active",
                    metadata=metadata or {},
                    owner_epoch=0,
                    next_seq=2,
                    created_at=now,
                    updated_at=now,
                )
            )
            writer = SessionWriter(connection, tenant_id, session_id, seq=1)
            await writer.emit(
                ev.SessionCreated(
                    tenant_id=tenant_id, session_id=session_id, agent=agent, metadata=metadata or {}
                )
            )
        return await self.get_session(tenant_id, session_id)

    async def get_session(self, tenant_id: str, session_id: str) -> Session:
        """The session, if it belongs to ``tenant_id`` (another tenant's session is not found)."""
        async with self.transaction() as connection:
            row = (
                await connection.execute(
                    select(SessionRow).where(
                        SessionRow.session_id == session_id, SessionRow.tenant_id == tenant_id
                    )
                )
            ).one_or_none()
        if row is None:
            raise NotFoundError(f"session {session_id} not found")
        return _session(row)

    async def list_sessions(
        self, tenant_id: str, *, limit: int = 50, cursor: str | None = None
    ) -> Page:
        """Sessions of a tenant, oldest first, ``limit`` at a time."""
        query = select(SessionRow).where(SessionRow.tenant_id == tenant_id)
        if cursor:
            created_at, session_id = _decode_cursor(cursor)
            query = query.where(
                (SessionRow.created_at > created_at)
                | ((SessionRow.created_at == created_at) & (SessionRow.session_id > session_id))
            )
        query = query.order_by(SessionRow.created_at, SessionRow.session_id).limit(limit + 1)
        async with self.transaction() as connection:
            rows = (await connection.execute(query)).all()
        items = [_session(row) for row in rows[:limit]]
        more = len(rows) > limit
        next_cursor = _encode_cursor(items[-1].created_at, items[-1].session_id) if more else None
        return Page(items=items, next_cursor=next_cursor)

    @asynccontextmanager
    async def writer(
        self, session_id: str, *, epoch: int | None = None, tenant_id: str | None = None
    ) -> AsyncIterator[SessionWriter]:
        """A fenced, serialized unit of work on a session; commits on exit, rolls back on error.

        Args:
            session_id: the session to write.
            epoch: the writer's owner epoch; when given, the write is rejected unless it is current.
            tenant_id: when given, the session must belong to this tenant.

        Raises:
            StaleEpochError: ``epoch`` is no longer the session's owner epoch.
            NotFoundError: no such session (for this tenant).
        """
        conditions = [SessionRow.session_id == session_id]
        if epoch is not None:
            conditions.append(SessionRow.owner_epoch == epoch)
        if tenant_id is not None:
            conditions.append(SessionRow.tenant_id == tenant_id)
        async with self.transaction() as connection:
            locked = (
                await connection.execute(
                    update(SessionRow)
                    .where(*conditions)
                    .values(updated_at=utcnow())
                    .returning(SessionRow.tenant_id, SessionRow.next_seq, SessionRow.status)
                )
            ).one_or_none()
            if locked is None:
                await self._explain_missing(connection, session_id, epoch, tenant_id)
            writer = SessionWriter(
                connection, locked.tenant_id, session_id, seq=locked.next_seq, status=locked.status
            )
            yield writer
            if writer.next_seq != locked.next_seq:
                await connection.execute(
                    update(SessionRow)
                    .where(SessionRow.session_id == session_id)
                    .values(next_seq=writer.next_seq)
                )

    async def _explain_missing(
        self, connection: AsyncConnection, session_id: str, epoch: int | None, tenant_id: str | None
    ) -> NoReturn:
        query = select(SessionRow.owner_epoch).where(SessionRow.session_id == session_id)
        if tenant_id is not None:
            query = query.where(SessionRow.tenant_id == tenant_id)
        current = await connection.scalar(query)
        if current is None:
            raise NotFoundError(f"session {session_id} not found")
        raise StaleEpochError(session_id, epoch)

    async def submit_message(
        self, tenant_id: str, session_id: str, content: str, *, idempotency_key: str | None = None
    ) -> Submission:
        """Commit a user message and queue its turn; a repeated idempotency key gets the first."""
        async with self.writer(session_id, tenant_id=tenant_id) as writer:
            if idempotency_key is not None:
                existing = (
                    await writer.connection.execute(
                        select(MessageRow.message_id, MessageRow.turn_id).where(
                            MessageRow.session_id == session_id,
                            MessageRow.idempotency_key == idempotency_key,
                        )
                    )
                ).one_or_none()
                if existing is not None:
                    return Submission(
                        message_id=existing.message_id, turn_id=existing.turn_id, created=False
                    )
            if writer.status != "active":
                raise ConflictError(f"session {session_id} is closed")
            turn_id = _new_id()
            message_id = await writer.add_message(
                "user", content, turn_id=turn_id, idempotency_key=idempotency_key
            )
            await writer.add_turn(turn_id, message_id)
            received = await writer.emit(
                ev.MessageReceived(
                    tenant_id=writer.tenant_id,
                    session_id=session_id,
                    message_id=message_id,
                    turn_id=turn_id,
                    content=content,
                )
            )
        return Submission(message_id=message_id, turn_id=turn_id, created=True, seq=received.seq)

    async def close_session(self, tenant_id: str, session_id: str, reason: str = "") -> Session:
        """Close a session (idempotent) and record ``session.closed``."""
        async with self.writer(session_id, tenant_id=tenant_id) as writer:
            if writer.status == "active":
                await writer.connection.execute(
                    update(SessionRow)
                    .where(SessionRow.session_id == session_id)
                    .values(status="closed", closed_at=utcnow())
                )
                await writer.emit(
                    ev.SessionClosed(tenant_id=tenant_id, session_id=session_id, reason=reason)
                )
        return await self.get_session(tenant_id, session_id)

    # -- ownership ------------------------------------------------------------------------------

    async def claim_session(self, session_id: str, host_id: str) -> int:
        """Make ``host_id`` the owner with a new epoch; every older epoch is fenced off."""
        async with self.transaction() as connection:
            epoch = await connection.scalar(
                update(SessionRow)
                .where(SessionRow.session_id == session_id)
                .values(owner_epoch=SessionRow.owner_epoch + 1, owner_host=host_id)
                .returning(SessionRow.owner_epoch)
            )
        if epoch is None:
            raise NotFoundError(f"session {session_id} not found")
        return int(epoch)

    async def activate_session(self, session_id: str, host_id: str) -> Activated:
        """Claim a session and load what an activation needs, in one transaction.

        Returns the session (with its new owner epoch), its messages in commit order and its open
        turns in arrival order.

        Raises:
            NotFoundError: no such session.
        """
        async with self.transaction() as connection:
            row = (
                await connection.execute(
                    update(SessionRow)
                    .where(SessionRow.session_id == session_id)
                    .values(owner_epoch=SessionRow.owner_epoch + 1, owner_host=host_id)
                    .returning(*SessionRow.__table__.columns)
                )
            ).one_or_none()
            if row is None:
                raise NotFoundError(f"session {session_id} not found")
            messages = (
                await connection.execute(
                    select(MessageRow)
                    .where(MessageRow.session_id == session_id)
                    .order_by(MessageRow.position)
                )
            ).all()
            turns = (await connection.execute(_open_turns_query(session_id))).all()
        return Activated(
            session=_session(row),
            messages=[_message(m) for m in messages],
            open_turns=[_turn(t) for t in turns],
        )

    async def release_session(self, session_id: str, epoch: int) -> bool:
        """Give up ownership if still the owner (passivation); True if released."""
        async with self.transaction() as connection:
            result = await connection.execute(
                update(SessionRow)
                .where(SessionRow.session_id == session_id, SessionRow.owner_epoch == epoch)
                .values(owner_host=None)
            )
        return bool(result.rowcount)

    # -- reads ----------------------------------------------------------------------------------

    async def list_messages(
        self, tenant_id: str, session_id: str, *, limit: int | None = None
    ) -> list[Message]:
        """The session's history in order (the latest ``limit`` when given)."""
        query = select(MessageRow).where(
            MessageRow.session_id == session_id, MessageRow.tenant_id == tenant_id
        )
        if limit is not None:
            query = query.order_by(MessageRow.position.desc()).limit(limit)
        else:
            query = query.order_by(MessageRow.position)
        async with self.transaction() as connection:
            rows = list((await connection.execute(query)).all())
        if limit is not None:
            rows.reverse()
        return [_message(row) for row in rows]

    async def list_events(
        self, tenant_id: str, session_id: str, *, after_seq: int = 0, limit: int = 1000
    ) -> list[ev.Event]:
        """Persisted events of a session with ``seq > after_seq``, in order."""
        query = (
            select(EventRow.payload)
            .where(
                EventRow.session_id == session_id,
                EventRow.tenant_id == tenant_id,
                EventRow.seq > after_seq,
            )
            .order_by(EventRow.seq)
            .limit(limit)
        )
        async with self.transaction() as connection:
            payloads = (await connection.execute(query)).scalars().all()
        return [ev.load_event(payload) for payload in payloads]

    # -- attachments -------------------------------------------------------------------------

    async def add_attachment(
        self, tenant_id: str, session_id: str, turn_id: str, media_type: str, data: bytes
    ) -> str:
        """Store a file a tool produced for a session's turn; returns its id."""
        attachment_id = _new_id()
        async with self.transaction() as connection:
            await connection.execute(
                insert(AttachmentRow).values(
                    attachment_id=attachment_id,
                    tenant_id=tenant_id,
                    session_id=session_id,
                    turn_id=turn_id,
                    media_type=media_type,
                    size=len(data),
                    data=data,
                    created_at=utcnow(),
                )
            )
        return attachment_id

    async def get_attachment(
        self, tenant_id: str, session_id: str, attachment_id: str
    ) -> tuple[str, bytes]:
        """An attachment's media type and bytes (scoped by tenant and session).

        Raises:
            NotFoundError: no such attachment in that tenant's session.
        """
        async with self.transaction() as connection:
            row = (
                await connection.execute(
                    select(AttachmentRow.media_type, AttachmentRow.data).where(
                        AttachmentRow.attachment_id == attachment_id,
                        AttachmentRow.tenant_id == tenant_id,
                        AttachmentRow.session_id == session_id,
                    )
                )
            ).one_or_none()
        if row is None:
            raise NotFoundError(f"attachment {attachment_id} not found")
        return str(row.media_type), bytes(row.data)

    async def get_turn(self, tenant_id: str, turn_id: str) -> Turn:
        async with self.transaction() as connection:
            row = (
                await connection.execute(
                    select(TurnRow).where(
                        TurnRow.turn_id == turn_id, TurnRow.tenant_id == tenant_id
                    )
                )
            ).one_or_none()
        if row is None:
            raise NotFoundError(f"turn {turn_id} not found")
        return _turn(row)

    async def open_turns(self, session_id: str) -> list[Turn]:
        """Queued and running turns of a session in arrival order (what an activation must run)."""
        return [turn for turn, _prompt in await self.open_turns_with_prompts(session_id)]

    async def open_turns_with_prompts(self, session_id: str) -> list[tuple[Turn, str]]:
        """Like :meth:`open_turns`, each with the content of the user message that started it."""
        async with self.transaction() as connection:
            rows = (await connection.execute(_open_turns_query(session_id))).all()
        return [(_turn(row), row.prompt) for row in rows]

    async def get_message(self, tenant_id: str, message_id: str) -> Message:
        async with self.transaction() as connection:
            row = (
                await connection.execute(
                    select(MessageRow).where(
                        MessageRow.message_id == message_id, MessageRow.tenant_id == tenant_id
                    )
                )
            ).one_or_none()
        if row is None:
            raise NotFoundError(f"message {message_id} not found")
        return _message(row)

    async def sessions_with_open_turns(self, owner_host: str, *, prefix: bool = False) -> list[str]:
        """Sessions owned by ``owner_host`` (with ``prefix``: by any owner id starting with it)
        that still have queued or running turns."""
        owner = SessionRow.owner_host
        owned = owner.startswith(owner_host, autoescape=True) if prefix else owner == owner_host
        query = (
            select(SessionRow.session_id)
            .join(TurnRow, TurnRow.session_id == SessionRow.session_id)
            .where(owned, TurnRow.status.in_(("queued", "running")))
            .distinct()
        )
        async with self.transaction() as connection:
            return list((await connection.execute(query)).scalars().all())

    async def sessions_to_wake(
        self,
        owner_prefix: str,
        live_owners: Collection[str] | None,
        *,
        unowned_after_s: float = 10.0,
        excluding: str | None = None,
        limit: int = 500,
    ) -> list[str]:
        """Sessions with queued or running turns that no live host runs: owned by a host of
        this host set (owner id starting with ``owner_prefix``, not with ``excluding``) not in
        ``live_owners`` (a host that died or was retired; None: ignore owned sessions), or owned
        by nobody (never woken, passivated) with a turn older than ``unowned_after_s``. At most
        ``limit``."""
        owner = SessionRow.owner_host
        cutoff = utcnow() - timedelta(seconds=unowned_after_s)
        unowned = and_(owner.is_(None), TurnRow.created_at < cutoff)
        condition = unowned
        if live_owners is not None:
            orphaned = and_(
                owner.startswith(owner_prefix, autoescape=True),
                owner.not_in(list(live_owners)),
            )
            if excluding is not None:
                orphaned = and_(orphaned, not_(owner.startswith(excluding, autoescape=True)))
            condition = or_(unowned, orphaned)
        query = (
            select(SessionRow.session_id)
            .join(TurnRow, TurnRow.session_id == SessionRow.session_id)
            .where(TurnRow.status.in_(("queued", "running")), condition)
            .distinct()
            .limit(limit)
        )
        async with self.transaction() as connection:
            return list((await connection.execute(query)).scalars().all())

    # -- outbox ---------------------------------------------------------------------------------

    async def fetch_unpublished(self, limit: int) -> list[OutboxRecord]:
        """Committed events not yet relayed, in commit-compatible order (per session: by seq)."""
        query = (
            select(
                EventRow.position,
                EventRow.event_id,
                EventRow.session_id,
                EventRow.seq,
                EventRow.payload,
            )
            .where(EventRow.published_at.is_(None))
            .order_by(EventRow.position)
            .limit(limit)
        )
        async with self.transaction() as connection:
            rows = (await connection.execute(query)).all()
        return [
            OutboxRecord(
                position=row.position,
                event_id=row.event_id,
                session_id=row.session_id,
                seq=row.seq,
                payload=row.payload.encode(),
            )
            for row in rows
        ]

    async def mark_published(self, positions: Sequence[int]) -> None:
        if not positions:
            return
        async with self.transaction() as connection:
            for start in range(0, len(positions), 500):
                chunk = list(positions[start : start + 500])
                await connection.execute(
                    update(EventRow)
                    .where(EventRow.position.in_(chunk))
                    .values(published_at=utcnow())
                )

    async def outbox_lag(self) -> int:
        """How many committed events wait for the relay."""
        async with self.transaction() as connection:
            count = await connection.scalar(
                select(func.count()).select_from(EventRow).where(EventRow.published_at.is_(None))
            )
        return int(count or 0)


# SQLSTATE classes of a server that cannot serve now: connection exception (08), insufficient
# resources (53: too many connections), operator intervention (57: shutting down, starting up,
# terminated by the administrator).
_UNREACHABLE_SQLSTATE_CLASSES = ("08", "53", "57")


def _unreachable(exc: DBAPIError) -> bool:
    """Whether a driver error means the database cannot serve now (a restart, an outage), not
    that the statement was wrong."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in _UNREACHABLE_SQLSTATE_CLASSES
