"""Interrupts of the LangGraph-compatible API: a run whose turn waits for approvals, resumed with
``Command(resume=...)``.

A thread's waiting tool calls are its interrupts (``id`` the tool call's id). A run created with
``command: {"resume": ...}`` (and no input) decides them through the gateway's approvals (the
policy's ``session.approve``) and is the same run (the same turn) going on from there: created
(background), streamed from the decisions to its next end or pause, or waited for. ``resume`` is
one decision when one call waits (``"approve"``, ``"reject"``, or ``{"decision" | "type":
"approve" | "edit" | "reject", "arguments"?, "message"?}``), a map of interrupt id to decision,
or ``{"decisions": [...]}`` in the interrupts' order (as LangChain's human-in-the-loop
middleware answers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentcluster import api
from agentcluster.gateway._approval_turns import decision_of
from agentcluster.gateway._langgraph_errors import LangGraphApiError
from agentcluster.gateway._langgraph_threads import interrupt_of
from agentcluster.gateway._service import Caller, GatewayService

__all__ = ["interrupts_of", "resume_decisions", "waiting_approvals"]

_DECISION_KEYS = frozenset({"decision", "type"})


async def waiting_approvals(
    service: GatewayService, caller: Caller, session_id: str, turn_id: str | None = None
) -> list[api.ApprovalOut]:
    """The thread's tool calls that wait for a person (of ``turn_id`` when given; else of the
    turn of the first that waits: one turn of a session waits at a time)."""
    pending = (await service.approvals(caller, session_id)).items
    turn_id = turn_id or (pending[0].turn_id if pending else None)
    return [approval for approval in pending if approval.turn_id == turn_id]


async def interrupts_of(
    service: GatewayService, caller: Caller, session_id: str, turn_id: str
) -> list[dict[str, Any]]:
    """The run's interrupts (its waiting calls), as ``__interrupt__`` carries them."""
    waiting = await waiting_approvals(service, caller, session_id, turn_id)
    return [interrupt_of(approval) for approval in waiting]


def _only(waiting: list[api.ApprovalOut]) -> str:
    if len(waiting) != 1:
        raise LangGraphApiError(
            422,
            f"{len(waiting)} interrupts wait: resume with a map of interrupt id to decision",
        )
    return waiting[0].tool_call_id


def resume_decisions(
    resume: Any, waiting: list[api.ApprovalOut]
) -> list[tuple[str, api.ApprovalDecisionIn]]:
    """The decisions ``resume`` makes on the ``waiting`` calls (see the module's docstring).

    Raises:
        LangGraphApiError: 409 when nothing waits, 422 for a resume that decides nothing.
    """
    if not waiting:
        raise LangGraphApiError(409, "the thread has no interrupt to resume")
    if isinstance(resume, Mapping) and isinstance(resume.get("decisions"), list):
        decisions = resume["decisions"]
        if len(decisions) != len(waiting):
            detail = f"{len(decisions)} decisions for {len(waiting)} interrupts"
            raise LangGraphApiError(422, detail)
        return [(a.tool_call_id, decision_of(d)) for a, d in zip(waiting, decisions, strict=True)]
    if isinstance(resume, str) or (isinstance(resume, Mapping) and _DECISION_KEYS & set(resume)):
        return [(_only(waiting), decision_of(resume))]
    if isinstance(resume, Mapping) and resume:
        return [(str(key), decision_of(value)) for key, value in resume.items()]
    raise LangGraphApiError(422, "command.resume: a decision, or interrupt id -> decision")
