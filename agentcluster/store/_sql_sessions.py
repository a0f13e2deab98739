"""Sessions, messages, turns, events and attachments as the API reads and writes them, on
SQLAlchemy (the :class:`~agentcluster.store.SessionStore` role)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from agentcluster import events as ev
from agentcluster.domain import (
    Message,
    MultitaskStrategy,
    Page,
    QueuedTurn,
    Session,
    Submission,
    Turn,
)
from agentcluster.errors import ConflictError, NotFoundError, TurnInProgress, ValidationFailed
from agentcluster.store._sql_base import (
    OPEN_TURN_STATUSES,
    awaiting_column,
    message_of,
    new_id,
    require_tenant,
    session_of,
    turn_of,
)
from agentcluster.store._sql_writer import SessionWriter, SqlWriting
from agentcluster.store.models import (
    AttachmentRow,
    EventRow,
    MessageRow,
    SessionRow,
    TurnRow,
    utcnow,
)

__all__ = ["SqlSessions"]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_CURSOR = re.compile(r"([0-9]{1,17})\.([0-9a-f-]{1,36})")
"""A position in a tenant's sessions: ``<created_at in microseconds since 1970 UTC>.<session
id>``. Every string of this form is a valid cursor (``agentcluster.api.CURSOR_PATTERN``, in the
OpenAPI document); a page starts after that position."""


def _encode_cursor(created_at: datetime, session_id: str) -> str:
    stamp = created_at if created_at.tzinfo is not None else created_at.replace(tzinfo=UTC)
    return f"{(stamp - _EPOCH) // _MICROSECOND}.{session_id}"


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    found = _CURSOR.fullmatch(cursor)
    if found is None:
        raise ValidationFailed(f"invalid cursor {cursor!r}: <microseconds>.<session id> expected")
    return _EPOCH + int(found[1]) * _MICROSECOND, found[2]


class SqlSessions(SqlWriting):
    """Sessions and what the API reads of them, every call scoped to a tenant."""

    async def create_session(
        self,
        tenant_id: str,
        agent: str,
        metadata: dict[str, Any] | None = None,
        *,
        webhook: str | None = None,
    ) -> Session:
        """Create a session and record ``session.created`` in the same transaction."""
        now = utcnow()
        session_id = new_id()
        async with self.transaction() as connection:
            await require_tenant(connection, tenant_id)
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
                    webhook=webhook,
                )
            )
            async with SessionWriter(connection, tenant_id, session_id, seq=1) as writer:
                await writer.emit(
                    ev.SessionCreated(
                        tenant_id=tenant_id,
                        session_id=session_id,
                        agent=agent,
                        metadata=metadata or {},
                    )
                )
        return await self.get_session(tenant_id, session_id)

    async def get_session(self, tenant_id: str, session_id: str) -> Session:
        """The session, if it belongs to ``tenant_id`` (another tenant's session is not found)."""
        async with self.transaction() as connection:
            row = (
                await connection.execute(
                    select(SessionRow, awaiting_column()).where(
                        SessionRow.session_id == session_id, SessionRow.tenant_id == tenant_id
                    )
                )
            ).one_or_none()
        if row is None:
            raise NotFoundError(f"session {session_id} not found")
        return session_of(row)

    async def list_sessions(
        self, tenant_id: str, *, limit: int = 50, cursor: str | None = None
    ) -> Page:
        """Sessions of a tenant, oldest first, ``limit`` at a time."""
        query = select(SessionRow, awaiting_column()).where(SessionRow.tenant_id == tenant_id)
        if cursor:
            created_at, session_id = _decode_cursor(cursor)
            query = query.where(
                (SessionRow.created_at > created_at)
                | ((SessionRow.created_at == created_at) & (SessionRow.session_id > session_id))
            )
        query = query.order_by(SessionRow.created_at, SessionRow.session_id).limit(limit + 1)
        async with self.transaction() as connection:
            rows = (await connection.execute(query)).all()
        items = [session_of(row) for row in rows[:limit]]
        more = len(rows) > limit
        next_cursor = _encode_cursor(items[-1].created_at, items[-1].session_id) if more else None
        return Page(items=items, next_cursor=next_cursor)

    async def submit_message(
        self,
        tenant_id: str,
        session_id: str,
        content: str,
        *,
        idempotency_key: str | None = None,
        strategy: MultitaskStrategy = "enqueue",
        webhook: str | None = None,
    ) -> Submission:
        """Commit a user message and queue its turn; a repeated idempotency key gets the first.
        The turn's outcome goes to ``webhook``, or else to the session's.

        ``strategy`` says what happens when the session has a turn open: ``reject`` raises
        TurnInProgress (nothing is written; checked under the session's write lock, so two
        rejecting messages never both start); the others queue the turn, and its host cancels
        the open turns before it for ``interrupt`` and ``rollback``."""
        async with self.writer(session_id, tenant_id=tenant_id, events=1) as writer:
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
            if strategy == "reject":
                await _refuse_while_open(writer.connection, session_id)
                strategy = "enqueue"  # none open: it simply waits its turn
            turn_id = new_id()
            message_id = await writer.add_message(
                "user", content, turn_id=turn_id, idempotency_key=idempotency_key
            )
            # The session's webhook came with the write lock: no extra read per message.
            await writer.add_turn(turn_id, message_id, strategy, webhook=webhook or writer.webhook)
            received = await writer.emit(
                ev.MessageReceived(
                    tenant_id=writer.tenant_id,
                    session_id=session_id,
                    message_id=message_id,
                    turn_id=turn_id,
                    content=content,
                    multitask_strategy=strategy,
                )
            )
        queued = QueuedTurn(
            turn_id=turn_id,
            message_id=message_id,
            seq=received.seq,
            prompt=content,
            strategy=strategy,
        )
        return Submission(
            message_id=message_id, turn_id=turn_id, created=True, seq=received.seq, queued=queued
        )

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
        return [message_of(row) for row in rows]

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
        attachment_id = new_id()
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
        return turn_of(row)

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
        return message_of(row)


async def _refuse_while_open(connection: AsyncConnection, session_id: str) -> None:
    """Raises TurnInProgress when the session has a turn queued, running or waiting for a
    person."""
    open_turn = (
        await connection.execute(
            select(TurnRow.turn_id)
            .where(TurnRow.session_id == session_id, TurnRow.status.in_(OPEN_TURN_STATUSES))
            .limit(1)
        )
    ).scalar_one_or_none()
    if open_turn is not None:
        raise TurnInProgress(
            f"session {session_id} has turn {open_turn} open; the message was not accepted "
            "(multitask_strategy reject: send it again when the turn has ended, or choose "
            "enqueue, interrupt or rollback)"
        )
