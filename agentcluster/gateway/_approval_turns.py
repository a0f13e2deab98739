"""Approvals as the protocol facades (A2A, LangGraph, OpenAI Responses, MCP) see them.

A turn whose tool calls wait for a person ends its stream and its wait with
``turn.awaiting_approval``; each facade shows that pause in its protocol's own terms and takes
the decisions back in them. What they share is here: the calls a turn's events leave waiting,
a decision read from what a client sent, and deciding (through
:meth:`GatewayService.decide_approval`, so the policy's ``session.approve`` and the tenant's
scope apply) while noting where the turn's events stand, so the facade can follow the resumed
turn from there to its next outcome (its end, or another pause).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agentcluster import api
from agentcluster import events as ev
from agentcluster.domain import Submission, TurnStatus
from agentcluster.errors import ValidationFailed
from agentcluster.gateway._service import WAIT_TIMEOUT_S, Caller, GatewayService
from agentcluster.gateway._streams import release_shielded
from agentcluster.runtime import StreamItem

__all__ = [
    "Resumption",
    "decide",
    "decision_of",
    "follow_resumed",
    "wait_resumed",
    "waiting_calls",
    "waiting_payload",
]

_DECISION_WORDS: dict[str, str] = {
    "approve": "approve",
    "approved": "approve",
    "accept": "approve",
    "yes": "approve",
    "y": "approve",
    "reject": "reject",
    "rejected": "reject",
    "deny": "reject",
    "no": "reject",
    "n": "reject",
}
"""Plain answers a client may give for one waiting call (edit needs its arguments)."""


def waiting_calls(events: Iterable[ev.Event]) -> list[ev.ToolApprovalRequested]:
    """The approval requests among ``events`` that no later ``tool.approval_decided`` decided,
    in the order they were asked."""
    asked: dict[str, ev.ToolApprovalRequested] = {}
    for event in events:
        if isinstance(event, ev.ToolApprovalRequested):
            asked[event.tool_call_id] = event
        elif isinstance(event, ev.ToolApprovalDecided):
            asked.pop(event.tool_call_id, None)
    return list(asked.values())


def waiting_payload(request: ev.ToolApprovalRequested | api.ApprovalOut) -> dict[str, Any]:
    """What a client is shown of one waiting call (JSON-ready)."""
    return {
        "tool_call_id": request.tool_call_id,
        "tool": request.tool,
        "arguments": request.arguments,
        "reason": request.reason,
        "decisions": list(request.decisions),
        "expires_at": request.expires_at.isoformat() if request.expires_at else None,
    }


def decision_of(value: Any) -> api.ApprovalDecisionIn:
    """A decision from what a client sent: a word (``approve``, ``reject``; also yes/no), or an
    object ``{"decision" | "type": ..., "arguments"?, "message"?}`` (``type`` as LangChain's
    human-in-the-loop decisions name it; ``edit`` needs ``arguments``).

    Raises:
        ValidationFailed: anything else (422).
    """
    if isinstance(value, str):
        word = _DECISION_WORDS.get(value.strip().lower())
        if word is None:
            raise ValidationFailed(
                f"a decision is approve or reject (or edit with arguments), " f"not {value[:40]!r}"
            )
        return api.ApprovalDecisionIn.model_validate({"decision": word})
    if not isinstance(value, Mapping):
        raise ValidationFailed("a decision is a word (approve, reject) or an object with decision")
    fields = dict(value)
    if "decision" not in fields and "type" in fields:
        fields["decision"] = fields.pop("type")
    fields.pop("tool_call_id", None)
    fields.pop("id", None)
    try:
        return api.ApprovalDecisionIn.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error.get("loc", ())) or "decision"
        raise ValidationFailed(f"invalid decision ({where}): {error.get('msg')}") from None


@dataclass(frozen=True)
class Resumption:
    """The decisions a facade made on one turn, and where its events stood before them."""

    session_id: str
    turn_id: str
    message_id: str
    after_seq: int
    """The session's last event before the decisions: the resumed turn's events follow it."""
    decided: tuple[api.ApprovalOut, ...]
    still_waiting: tuple[api.ApprovalOut, ...]
    """The turn's calls that still wait (the turn resumes once there are none)."""

    @property
    def resumed(self) -> bool:
        return not self.still_waiting

    def submission(self) -> Submission:
        """The turn as a submission whose events start after :attr:`after_seq` (what
        :meth:`GatewayService.wait` and ``turn_items`` read from)."""
        return Submission(
            message_id=self.message_id, turn_id=self.turn_id, created=False, seq=self.after_seq + 1
        )


async def decide(
    service: GatewayService,
    caller: Caller,
    session_id: str,
    decisions: Sequence[tuple[str, api.ApprovalDecisionIn]],
) -> Resumption:
    """Decide ``decisions`` (tool call id, decision) in order, each through the gateway's
    approvals (404 for another tenant's session or an unknown call, 409 for one no longer
    pending); the calls must be of one turn.

    Raises:
        ValidationFailed: no decision, or calls of different turns.
    """
    if not decisions:
        raise ValidationFailed("no decision: name a waiting tool call and approve or reject it")
    store = service.runtime.store
    tenant_id = caller.tenant()
    after_seq = (await store.get_session(tenant_id, session_id)).last_seq
    decided: list[api.ApprovalOut] = []
    for tool_call_id, body in decisions:
        decided.append(await service.decide_approval(caller, session_id, tool_call_id, body))
    turn_ids = {approval.turn_id for approval in decided}
    if len(turn_ids) > 1:  # decided all the same: each was a call of the caller's session
        raise ValidationFailed("the decided calls belong to different turns")
    turn_id = decided[0].turn_id
    pending = await service.approvals(caller, session_id)
    waiting = tuple(approval for approval in pending.items if approval.turn_id == turn_id)
    turn = await store.get_turn(tenant_id, turn_id)
    return Resumption(session_id, turn_id, turn.message_id, after_seq, tuple(decided), waiting)


async def wait_resumed(
    service: GatewayService, caller: Caller, resumption: Resumption
) -> api.TurnOut:
    """The resumed turn's next outcome (completed, failed, cancelled, or awaiting approval
    again), holding one of the tenant's open-stream slots while it waits, as ``?wait=true``
    does; at once (``awaiting_approval``) when some of its calls still wait.

    It follows the turn's events after the decisions (a host remembers a turn's latest outcome,
    the pause, until the resumed turn replaces it: waiting on the turn could answer the pause
    again); past WAIT_TIMEOUT_S, or when the stream ends without an outcome, the turn as the
    store has it."""
    if not resumption.resumed:
        awaiting = [approval.tool_call_id for approval in resumption.still_waiting]
        return _turn_out(resumption, "awaiting_approval", awaiting_approval=awaiting)
    lease = await service.open_stream(caller)
    try:
        outcome = await _next_outcome(follow_resumed(service, caller, resumption))
    finally:
        await release_shielded(lease)
    if outcome is not None:
        return _outcome_out(resumption, outcome)
    return await _stored_out(service, caller, resumption)


async def _next_outcome(items: AsyncIterator[StreamItem]) -> ev.TurnOutcome | None:
    try:
        async with asyncio.timeout(WAIT_TIMEOUT_S):
            async for item in items:
                if isinstance(item, ev.TURN_OUTCOMES):
                    return item
    except TimeoutError:
        return None
    finally:
        close = getattr(items, "aclose", None)
        if close is not None:
            await close()
    return None


def _turn_out(resumption: Resumption, status: TurnStatus, **fields: Any) -> api.TurnOut:
    return api.TurnOut(
        session_id=resumption.session_id,
        message_id=resumption.message_id,
        turn_id=resumption.turn_id,
        status=status,
        **fields,
    )


def _outcome_out(resumption: Resumption, outcome: ev.TurnOutcome) -> api.TurnOut:
    if isinstance(outcome, ev.TurnCompleted):
        return _turn_out(resumption, "completed", content=outcome.content, usage=outcome.usage)
    if isinstance(outcome, ev.TurnFailed):
        return _turn_out(resumption, "failed", error=outcome.error)
    if isinstance(outcome, ev.TurnAwaitingApproval):
        return _turn_out(resumption, "awaiting_approval", awaiting_approval=outcome.tool_call_ids)
    return _turn_out(resumption, "cancelled", error=outcome.reason)


async def _stored_out(
    service: GatewayService, caller: Caller, resumption: Resumption
) -> api.TurnOut:
    store = service.runtime.store
    turn = await store.get_turn(caller.tenant(), resumption.turn_id)
    content = None
    if turn.answer_message_id:
        content = (await store.get_message(caller.tenant(), turn.answer_message_id)).content
    usage = ev.Usage.model_validate(turn.usage or {})
    return _turn_out(resumption, turn.status, content=content, error=turn.error, usage=usage)


def follow_resumed(
    service: GatewayService, caller: Caller, resumption: Resumption
) -> AsyncIterator[StreamItem]:
    """The resumed turn's events and deltas after the decisions, up to its next outcome (the
    caller holds an open-stream slot for it)."""
    return service.turn_items(caller, resumption.session_id, resumption.submission())
