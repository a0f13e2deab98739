"""Tool calls that wait for a person, on SQLAlchemy (the :class:`~agentcluster.store.ApprovalStore`
role, and what a host reads to resume a turn).

A call the policy answers ``ask`` is a ``tool_calls`` row with a ``reason`` (the marker of an
approval), ``status`` ``awaiting`` and an ``expires_at``; its turn is ``awaiting_approval`` once
the step's calls are all asked. A decision (a person's, or the expiry's reject) sets ``approval``
and ``status`` (``approved``, ``rejected``) under the session's write lock, with its
``tool.approval_decided`` event; the last decision of a turn queues it again, to resume where it
stopped (a queued turn that has started before).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update

from agentcluster import events as ev
from agentcluster.domain import Approval, ApprovalDecision, ApprovalStatus
from agentcluster.errors import ApprovalNotPending, NotFoundError
from agentcluster.store._sql_base import AWAITING, OPEN_TURN_STATUSES
from agentcluster.store._sql_writer import SessionWriter, SqlWriting
from agentcluster.store.models import SessionRow, ToolCallRow, TurnRow, utcnow

__all__ = ["SqlApprovals", "approval_of"]

EXPIRY = "expiry"
"""Who decided an approval nobody answered in time."""
_DECIDED_STATUS = {"approve": "approved", "edit": "approved", "reject": "rejected"}


def approval_of(row: Any) -> Approval:
    """An approval from a ``tool_calls`` row joined with its turn's status (``turn_status``)."""
    record: dict[str, Any] = row.approval or {}
    return Approval(
        tool_call_id=row.tool_call_id,
        tenant_id=row.tenant_id,
        session_id=row.session_id,
        turn_id=row.turn_id,
        tool=row.tool,
        arguments=row.arguments or {},
        reason=row.reason or "",
        status=_status(row.status, row.turn_status, record),
        expires_at=row.expires_at,
        created_at=row.created_at,
        decided_at=datetime.fromisoformat(record["decided_at"]) if record else None,
        decided_by=record.get("decided_by"),
        edited_arguments=record.get("arguments") if record.get("decision") == "edit" else None,
        message=record.get("message"),
    )


def _status(row_status: str, turn_status: str, record: dict[str, Any]) -> ApprovalStatus:
    if record:
        if record.get("expired"):
            return "expired"
        decided: dict[str, ApprovalStatus] = {"approve": "approved", "edit": "edited"}
        return decided.get(record["decision"], "rejected")
    if row_status == AWAITING and turn_status in OPEN_TURN_STATUSES:
        return "pending"
    return "cancelled"  # its turn ended before anyone decided


def _approval_rows() -> Any:
    return select(ToolCallRow, TurnRow.status.label("turn_status")).join(
        TurnRow, TurnRow.turn_id == ToolCallRow.turn_id
    )


class SqlApprovals(SqlWriting):
    """Lists and decides a session's waiting tool calls, expires the unanswered ones, and gives
    a resuming host the decisions of its turn."""

    async def list_approvals(
        self, tenant_id: str, session_id: str, *, pending_only: bool = True
    ) -> list[Approval]:
        """The session's approvals, oldest first (only those still waiting by default).

        Raises:
            NotFoundError: no such session for this tenant.
        """
        query = _approval_rows().where(
            ToolCallRow.session_id == session_id,
            ToolCallRow.tenant_id == tenant_id,
            ToolCallRow.reason.is_not(None),
        )
        if pending_only:
            query = query.where(
                ToolCallRow.status == AWAITING, TurnRow.status.in_(OPEN_TURN_STATUSES)
            )
        async with self.transaction() as connection:
            owned = await connection.scalar(
                select(SessionRow.session_id).where(
                    SessionRow.session_id == session_id, SessionRow.tenant_id == tenant_id
                )
            )
            if owned is None:
                raise NotFoundError(f"session {session_id} not found")
            rows = (await connection.execute(query.order_by(ToolCallRow.created_at))).all()
        return [approval_of(row) for row in rows]

    async def decide_approval(
        self,
        tenant_id: str,
        session_id: str,
        tool_call_id: str,
        decision: ApprovalDecision,
        *,
        decided_by: str,
        arguments: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> tuple[Approval, bool]:
        """Decide the session's waiting call ``tool_call_id``; returns the approval and whether
        its turn is ready to resume (it was the turn's last waiting call).

        Raises:
            NotFoundError: no such session for this tenant, or no such call waiting in it.
            ApprovalNotPending: the call was decided already, expired, or its turn ended.
        """
        async with self.writer(session_id, tenant_id=tenant_id) as writer:
            row = (
                await writer.connection.execute(
                    _approval_rows()
                    .where(
                        ToolCallRow.session_id == session_id,
                        ToolCallRow.tool_call_id == tool_call_id,
                        ToolCallRow.reason.is_not(None),
                    )
                    .order_by(ToolCallRow.created_at.desc())
                    .limit(1)
                )
            ).one_or_none()
            if row is None:
                raise NotFoundError(f"tool call {tool_call_id} of session {session_id} not found")
            current = approval_of(row)
            if current.status != "pending":
                raise ApprovalNotPending(
                    f"tool call {tool_call_id} is {current.status}, no longer awaiting a decision"
                )
            if row.expires_at is not None and row.expires_at <= utcnow():
                raise ApprovalNotPending(
                    f"the approval of tool call {tool_call_id} expired at "
                    f"{row.expires_at.isoformat()} (it counts as rejected)"
                )
            resumed = await _decide(writer, row, decision, decided_by, arguments, message)
            decided = (
                await writer.connection.execute(
                    _approval_rows().where(ToolCallRow.row_id == row.row_id)
                )
            ).one()
        return approval_of(decided), resumed

    async def expire_approvals(
        self, *, owner_prefix: str | None = None, limit: int = 100
    ) -> list[str]:
        """Decide the waiting calls past their expiry as rejected (``decided_by`` ``expiry``);
        returns the sessions whose turn is now ready to resume. ``owner_prefix``: only of
        sessions owned by a host whose id starts with it, or by none (a database may be shared
        by host sets)."""
        query = (
            select(ToolCallRow.session_id, ToolCallRow.row_id)
            .join(TurnRow, TurnRow.turn_id == ToolCallRow.turn_id)
            .where(
                ToolCallRow.status == AWAITING,
                ToolCallRow.expires_at <= utcnow(),
                TurnRow.status == "awaiting_approval",
            )
            .limit(limit)
        )
        if owner_prefix is not None:
            owner = SessionRow.owner_host
            query = query.join(SessionRow, SessionRow.session_id == ToolCallRow.session_id).where(
                or_(owner.is_(None), owner.startswith(owner_prefix, autoescape=True))
            )
        async with self.transaction() as connection:
            due = (await connection.execute(query)).all()
        by_session: dict[str, list[str]] = defaultdict(list)
        for session_id, row_id in due:
            by_session[session_id].append(row_id)
        resumed: list[str] = []
        for session_id, row_ids in by_session.items():
            async with self.writer(session_id) as writer:
                rows = (
                    await writer.connection.execute(
                        _approval_rows().where(
                            ToolCallRow.row_id.in_(row_ids), ToolCallRow.status == AWAITING
                        )
                    )
                ).all()  # read again under the lock: a person may have decided meanwhile
                ready = False
                for row in rows:
                    ready = await _decide(writer, row, "reject", EXPIRY, None, None) or ready
            if ready:
                resumed.append(session_id)
        return resumed

    async def turn_approvals(self, session_id: str, turn_id: str) -> dict[str, Approval]:
        """The approvals of the turn's calls that have not run yet, by tool call id (what a
        host resuming the turn does with each)."""
        query = _approval_rows().where(
            ToolCallRow.session_id == session_id,
            ToolCallRow.turn_id == turn_id,
            ToolCallRow.reason.is_not(None),
            ToolCallRow.finished_at.is_(None),
        )
        async with self.transaction() as connection:
            rows = (await connection.execute(query)).all()
        return {row.tool_call_id: approval_of(row) for row in rows}


async def _decide(
    writer: SessionWriter,
    row: Any,
    decision: ApprovalDecision,
    decided_by: str,
    arguments: dict[str, Any] | None,
    message: str | None,
) -> bool:
    """Record one decision and its event; True when it was the turn's last waiting call and
    the turn is queued to resume."""
    expired = decided_by == EXPIRY
    if expired:
        message = "the approval request expired unanswered"
    record = {
        "decision": decision,
        "arguments": arguments,
        "message": message,
        "decided_by": decided_by,
        "decided_at": utcnow().isoformat(),
        "expired": expired,
    }
    connection = writer.connection
    await connection.execute(
        update(ToolCallRow)
        .where(ToolCallRow.row_id == row.row_id)
        .values(status=_DECIDED_STATUS[decision], approval=record)
    )
    await writer.emit(
        ev.ToolApprovalDecided(
            tenant_id=writer.tenant_id,
            session_id=writer.session_id,
            turn_id=row.turn_id,
            tool_call_id=row.tool_call_id,
            tool=row.tool,
            decision=decision,
            arguments=arguments,
            message=message,
            decided_by=decided_by,
            expired=expired,
        )
    )
    waiting = await connection.scalar(
        select(func.count())
        .select_from(ToolCallRow)
        .where(ToolCallRow.turn_id == row.turn_id, ToolCallRow.status == AWAITING)
    )
    if waiting:
        return False
    queued = await connection.execute(
        update(TurnRow)
        .where(TurnRow.turn_id == row.turn_id, TurnRow.status == "awaiting_approval")
        .values(status="queued")
    )
    return bool(queued.rowcount)
