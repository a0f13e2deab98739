"""The fenced unit of work every write to a session goes through.

:class:`SessionWriter`

* fences: with an epoch, the session row is only updated while ``owner_epoch`` still matches, so a
  host that lost ownership cannot write (:class:`~agentcluster.errors.StaleEpochError`);
* serializes: the first statement updates the session row, which locks it until commit (PostgreSQL
  row lock, SQLite write lock), so per-session sequence numbers never collide;
* records events in the same transaction as the state change (the transactional outbox).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from functools import cache
from typing import Any, NoReturn, cast

from sqlalchemy import Insert, Select, Table, Update, bindparam, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from agentcluster import events as ev
from agentcluster.domain import MessageRole, MultitaskStrategy, TurnStatus
from agentcluster.errors import NotFoundError, StaleEpochError
from agentcluster.store._sql_base import (
    AWAITING,
    OPEN_TURN_STATUSES,
    RUNNABLE_TURN_STATUSES,
    SqlStoreBase,
    new_id,
)
from agentcluster.store.models import (
    EventRow,
    MessageRow,
    SessionRow,
    ToolCallRow,
    TurnRow,
    WebhookDeliveryRow,
    utcnow,
)

__all__ = ["SessionWriter", "SqlWriting"]

# The statements of every turn, built once: a statement given its values as parameters is
# compiled once and found by a constant cache key, where ``insert(Row).values(...)`` coerces each
# value and rebuilds the key on every call (half the CPU of a statement, measured).
_SESSIONS, _TURNS = cast(Table, SessionRow.__table__), cast(Table, TurnRow.__table__)
_INSERT_EVENTS: Insert = insert(cast(Table, EventRow.__table__))
_INSERT_MESSAGE: Insert = insert(cast(Table, MessageRow.__table__))
_INSERT_TURN: Insert = insert(_TURNS)


@cache
def _lock_statement(fenced: bool, tenanted: bool) -> Update:
    """Take the session's write lock (and ``b_events`` sequence numbers), optionally fenced by
    ``b_epoch`` and scoped to ``b_tenant``."""
    columns = _SESSIONS.c
    conditions = [columns.session_id == bindparam("b_session")]
    if fenced:
        conditions.append(columns.owner_epoch == bindparam("b_epoch"))
    if tenanted:
        conditions.append(columns.tenant_id == bindparam("b_tenant"))
    return (
        update(_SESSIONS)
        .where(*conditions)
        .values(updated_at=bindparam("v_now"), next_seq=columns.next_seq + bindparam("b_events"))
        .returning(columns.tenant_id, columns.next_seq, columns.status, columns.webhook)
    )


@cache
def _start_statement(resumed: bool) -> Update:
    columns = _TURNS.c
    return (
        update(_TURNS)
        .where(
            columns.turn_id == bindparam("b_turn"),
            columns.session_id == bindparam("b_session"),
            columns.status.in_(RUNNABLE_TURN_STATUSES),
        )
        .values(
            status="running",
            attempt=columns.attempt if resumed else columns.attempt + 1,
            started_at=bindparam("v_now"),
        )
        .returning(columns.attempt)
    )


_ANY_OPEN: Select[int] = (
    select(literal(1))
    .where(_TURNS.c.session_id == bindparam("b_session"), _TURNS.c.status.in_(OPEN_TURN_STATUSES))
    .limit(1)
)


@cache
def _finish_statement(with_usage: bool, with_answer: bool) -> Update:
    columns = _TURNS.c
    values: dict[str, Any] = {
        "status": bindparam("v_status"),
        "finished_at": bindparam("v_now"),
        "error": bindparam("v_error"),
    }
    if with_usage:
        values["usage"] = bindparam("v_usage", type_=columns.usage.type)
    if with_answer:
        values["answer_message_id"] = bindparam("v_answer")
    return (
        update(_TURNS)
        .where(columns.turn_id == bindparam("b_turn"), columns.session_id == bindparam("b_session"))
        .values(values)
        .returning(columns.webhook)
    )


class SessionWriter:
    """A fenced unit of work on one session; obtain it from :meth:`SqlWriting.writer` (or, for
    a session created in the same transaction, use it as ``async with``: the events it emitted
    are written when the block ends without an error)."""

    def __init__(
        self,
        connection: AsyncConnection,
        tenant_id: str,
        session_id: str,
        seq: int,
        status: str = "active",
        webhook: str | None = None,
    ) -> None:
        self._connection = connection
        self.tenant_id = tenant_id
        self.session_id = session_id
        self.status = status
        self.webhook = webhook
        """The session's webhook (its turns' outcomes go there unless a message names one)."""
        self._next_seq = seq
        self.emitted: list[ev.Event] = []
        self._event_rows: list[dict[str, Any]] = []

    @property
    def connection(self) -> AsyncConnection:
        """The transaction's connection, for store-internal statements."""
        return self._connection

    @property
    def next_seq(self) -> int:
        return self._next_seq

    async def emit(self, event: ev.Event) -> ev.Event:
        """Record ``event`` in the outbox with the next sequence number; returns it with its seq.
        The rows of a unit of work's events are written together at its end, in the same
        transaction (nothing in a unit of work reads its own events back)."""
        if event.session_id != self.session_id or event.tenant_id != self.tenant_id:
            raise ValueError("event belongs to another session")
        stamped: ev.Event = event.model_copy(update={"seq": self._next_seq})
        self._next_seq += 1
        self._event_rows.append(
            {
                "event_id": stamped.event_id,
                "tenant_id": self.tenant_id,
                "session_id": self.session_id,
                "seq": stamped.seq,
                "type": stamped.type,
                "payload": ev.dump_event(stamped).decode(),
                "created_at": stamped.ts,
            }
        )
        self.emitted.append(stamped)
        return stamped

    async def __aenter__(self) -> SessionWriter:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None and self._event_rows:
            # The emitted events, one statement for all of them.
            rows, self._event_rows = self._event_rows, []
            await self._connection.execute(_INSERT_EVENTS, rows)

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
        message_id = message_id or new_id()
        await self._connection.execute(
            _INSERT_MESSAGE,
            {
                "message_id": message_id,
                "tenant_id": self.tenant_id,
                "session_id": self.session_id,
                "turn_id": turn_id,
                "role": role,
                "content": content,
                "tool_calls": tool_calls,
                "tool_call_id": tool_call_id,
                "idempotency_key": idempotency_key,
                "created_at": utcnow(),
            },
        )
        return message_id

    async def add_turn(
        self,
        turn_id: str,
        message_id: str,
        strategy: MultitaskStrategy = "enqueue",
        *,
        webhook: str | None = None,
    ) -> None:
        """Queue a turn answering ``message_id`` (sent with ``strategy``; its outcome goes to
        ``webhook``)."""
        await self._connection.execute(
            _INSERT_TURN,
            {
                "turn_id": turn_id,
                "tenant_id": self.tenant_id,
                "session_id": self.session_id,
                "message_id": message_id,
                "status": "queued",
                "strategy": strategy,
                "webhook": webhook,
                "attempt": 0,
                "usage": {},
                "created_at": utcnow(),
            },
        )

    async def start_turn(self, turn_id: str, *, resumed: bool = False) -> int | None:
        """Mark an open turn running and count the attempt (not when it ``resumed`` after its
        approvals: the same attempt goes on); returns the attempt number, or None when the turn
        is no longer open (cancelled or superseded since it was read)."""
        result = await self._connection.execute(
            _start_statement(resumed),
            {"b_turn": turn_id, "b_session": self.session_id, "v_now": utcnow()},
        )
        attempt = result.scalar_one_or_none()
        return None if attempt is None else int(attempt)

    async def has_open_turns(self) -> bool:
        """Whether the session has a queued, running or paused turn, this unit of work's changes
        included: with the write lock held, the answer stands until it commits."""
        found = await self._connection.scalar(_ANY_OPEN, {"b_session": self.session_id})
        return found is not None

    async def finish_turn(
        self,
        turn_id: str,
        status: TurnStatus,
        *,
        usage: dict[str, Any] | None = None,
        answer_message_id: str | None = None,
        error: str | None = None,
    ) -> str | None:
        """Record a turn's outcome; returns the webhook its outcome goes to, if any."""
        webhook = await self._connection.scalar(
            _finish_statement(usage is not None, answer_message_id is not None),
            {
                "b_turn": turn_id,
                "b_session": self.session_id,
                "v_status": status,
                "v_now": utcnow(),
                "v_error": error,
                "v_usage": usage,
                "v_answer": answer_message_id,
            },
        )
        return str(webhook) if webhook else None

    async def pause_turn(self, turn_id: str, usage: dict[str, Any]) -> str | None:
        """The running turn waits for a person: ``awaiting_approval``, unless each of its calls
        was decided meanwhile (then it is queued to resume at once). Returns the webhook its
        pause goes to."""
        waiting = await self._connection.scalar(
            select(ToolCallRow.row_id)
            .where(ToolCallRow.turn_id == turn_id, ToolCallRow.status == AWAITING)
            .limit(1)
        )
        status = "awaiting_approval" if waiting is not None else "queued"
        webhook = await self._connection.scalar(
            update(TurnRow)
            .where(
                TurnRow.turn_id == turn_id,
                TurnRow.session_id == self.session_id,
                TurnRow.status == "running",
            )
            .values(status=status, usage=usage)
            .returning(TurnRow.webhook)
        )
        return str(webhook) if webhook else None

    async def request_approval(
        self, turn_id: str, tool_call_id: str, reason: str, expires_at: datetime
    ) -> None:
        """The policy sends the turn's call ``tool_call_id`` to a person: it waits, unrun."""
        await self._connection.execute(
            update(ToolCallRow)
            .where(
                ToolCallRow.turn_id == turn_id,
                ToolCallRow.tool_call_id == tool_call_id,
                ToolCallRow.session_id == self.session_id,
                ToolCallRow.finished_at.is_(None),
                ToolCallRow.status == "requested",
            )
            .values(status=AWAITING, decision="ask", reason=reason, expires_at=expires_at)
        )

    async def add_webhook_delivery(self, turn_id: str, url: str, payload: str) -> None:
        """Queue ``payload`` (a turn's outcome) for ``url``, in this transaction: it is sent
        once the outcome is committed, whatever happens to the process that wrote it."""
        now = utcnow()
        await self._connection.execute(
            insert(WebhookDeliveryRow).values(
                delivery_id=new_id(),
                tenant_id=self.tenant_id,
                session_id=self.session_id,
                turn_id=turn_id,
                url=url,
                payload=payload,
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )

    async def roll_back_messages(self, turn_id: str) -> None:
        """Hide a turn's messages from the model for good (they stay stored)."""
        await self._connection.execute(
            update(MessageRow)
            .where(MessageRow.turn_id == turn_id, MessageRow.session_id == self.session_id)
            .values(rolled_back=True)
        )

    async def record_tool_call(
        self, tool_call_id: str, turn_id: str, tool: str, arguments: dict[str, Any]
    ) -> None:
        """Record that the model asked for a tool call."""
        await self._connection.execute(
            insert(ToolCallRow).values(
                row_id=new_id(),
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


class SqlWriting(SqlStoreBase):
    """Opens :class:`SessionWriter` units of work (for the sessions and activation roles)."""

    @asynccontextmanager
    async def writer(
        self,
        session_id: str,
        *,
        epoch: int | None = None,
        tenant_id: str | None = None,
        events: int = 0,
    ) -> AsyncIterator[SessionWriter]:
        """A fenced, serialized unit of work on a session; commits on exit, rolls back on error.

        Args:
            session_id: the session to write.
            epoch: the writer's owner epoch; when given, the write is rejected unless it is current.
            tenant_id: when given, the session must belong to this tenant.
            events: how many events the work will emit, when known: their sequence numbers are
                taken with the lock, saving the statement that would advance them at the end
                (any other count emitted is set right at the end, under the same lock).

        Raises:
            StaleEpochError: ``epoch`` is no longer the session's owner epoch.
            NotFoundError: no such session (for this tenant).
        """
        async with self._one_writer(), self.transaction() as connection:
            locked = (
                await connection.execute(
                    _lock_statement(epoch is not None, tenant_id is not None),
                    {
                        "b_session": session_id,
                        "b_epoch": epoch,
                        "b_tenant": tenant_id,
                        "b_events": events,
                        "v_now": utcnow(),
                    },
                )
            ).one_or_none()
            if locked is None:
                await self._explain_missing(connection, session_id, epoch, tenant_id)
            stored_next = locked.next_seq  # with the reserved numbers taken
            async with SessionWriter(
                connection,
                locked.tenant_id,
                session_id,
                seq=stored_next - events,
                status=locked.status,
                webhook=locked.webhook,
            ) as writer:
                yield writer
            if writer.next_seq != stored_next:
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
