"""Assistants, threads, states and runs of the LangGraph-compatible API, read through
:class:`GatewayService` (tenant-scoped, policy-checked): an assistant is an agent, a thread a
session (a closed session is a deleted thread), a run a turn, a thread's checkpoints the ends of
its turns.

A turn whose tool calls wait for a person is an interrupted run of an ``interrupted`` thread:
each waiting call is an interrupt (``id`` the tool call's id, ``value`` the call: tool_call_id,
tool, arguments, reason, decisions, expires_at), listed in the thread's ``interrupts`` (under
the run's id) and in its state's ``interrupts`` and ``tasks`` (node ``tools``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agentcluster import api
from agentcluster import events as ev
from agentcluster.agent import AgentProfile
from agentcluster.domain import Message, Turn, TurnStatus
from agentcluster.errors import NotFoundError
from agentcluster.gateway._approval_turns import waiting_payload
from agentcluster.gateway._langgraph_errors import LangGraphApiError
from agentcluster.gateway._langgraph_messages import (
    assistant_id,
    messages_of,
    run_status,
    thread_status,
    timestamp,
)
from agentcluster.gateway._langgraph_models import (
    AssistantOut,
    Checkpoint,
    GraphSchemaOut,
    RunOut,
    ThreadOut,
    ThreadStateOut,
)
from agentcluster.gateway._service import Caller, GatewayService

__all__ = [
    "Session",
    "ThreadView",
    "TurnRecord",
    "agent_of",
    "assistant_out",
    "ended",
    "graph_of",
    "history_of",
    "interrupt_of",
    "run_of_turn",
    "schemas_of",
    "state_of",
    "thread_out",
    "thread_session",
    "thread_turn",
    "thread_view",
    "turn_records",
]

EVENTS_PAGE = 1000
AGENTS_CREATED = timestamp(datetime(1970, 1, 1, tzinfo=UTC))
"""Agents are configuration: their creation time is not recorded."""
_ENDED: tuple[TurnStatus, ...] = ("completed", "failed", "cancelled")


# -- assistants -------------------------------------------------------------------------------


def agent_of(service: GatewayService, assistant: str) -> AgentProfile:
    """The agent of an assistant id (``uuid5`` of its name) or of its name (a graph id)."""
    profile = service.profiles.get(assistant)
    if profile is not None:
        return profile
    for candidate in service.profiles.values():
        if assistant_id(candidate.name) == assistant:
            return candidate
    raise LangGraphApiError(404, f"Assistant {assistant!r} not found")


def assistant_out(profile: AgentProfile) -> AssistantOut:
    return AssistantOut(
        assistant_id=assistant_id(profile.name),
        graph_id=profile.name,
        name=profile.name,
        description=profile.description or None,
        metadata={"created_by": "system", "model": profile.model, "tools": list(profile.tools)},
        created_at=AGENTS_CREATED,
        updated_at=AGENTS_CREATED,
    )


def _messages_schema(title: str) -> dict[str, Any]:
    return {
        "title": title,
        "type": "object",
        "properties": {
            "messages": {
                "title": "Messages",
                "type": "array",
                "items": {"type": "object"},
                "description": "LangChain messages; a run sends the last human one",
            }
        },
        "required": ["messages"],
    }


def schemas_of(profile: AgentProfile) -> GraphSchemaOut:
    return GraphSchemaOut(
        graph_id=profile.name,
        input_schema=_messages_schema("Input"),
        output_schema=_messages_schema("Output"),
        state_schema=_messages_schema("State"),
        config_schema={"title": "Config", "type": "object", "properties": {}},
        context_schema=None,
    )


def graph_of(profile: AgentProfile) -> dict[str, list[dict[str, Any]]]:
    """The agent drawn as a ReAct graph: the model step, then its tools, until it answers."""
    nodes: list[dict[str, Any]] = [
        {"id": "__start__", "type": "schema", "data": "__start__"},
        {"id": "agent", "type": "runnable", "data": {"id": ["agentcluster", profile.name]}},
        {"id": "tools", "type": "runnable", "data": {"id": ["agentcluster", "tools"]}},
        {"id": "__end__", "type": "schema", "data": "__end__"},
    ]
    edges: list[dict[str, Any]] = [
        {"source": "__start__", "target": "agent"},
        {"source": "agent", "target": "tools", "conditional": True},
        {"source": "agent", "target": "__end__", "conditional": True},
        {"source": "tools", "target": "agent"},
    ]
    if not profile.tools:
        nodes.pop(2)
        edges = [
            {"source": "__start__", "target": "agent"},
            {"source": "agent", "target": "__end__"},
        ]
    return {"nodes": nodes, "edges": edges}


# -- threads ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """A thread's session, with the tenant it belongs to."""

    tenant_id: str
    session_id: str
    agent: str
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, tenant_id: str, session: api.SessionOut) -> Session:
        return cls(
            tenant_id,
            session.session_id,
            session.agent,
            session.metadata,
            session.created_at,
            session.updated_at,
        )


def _not_found(thread_id: str) -> LangGraphApiError:
    return LangGraphApiError(404, f"Thread {thread_id!r} not found")


async def thread_session(service: GatewayService, caller: Caller, thread_id: str) -> Session:
    """The caller's session ``thread_id`` (404 for another tenant's, a closed one, none)."""
    try:
        session = await service.get_session(caller, thread_id)
    except NotFoundError:
        raise _not_found(thread_id) from None
    if session.status == "closed":
        raise _not_found(thread_id)
    return Session.of(caller.tenant(), session)


def interrupt_of(request: ev.ToolApprovalRequested | api.ApprovalOut) -> dict[str, Any]:
    """A waiting tool call as a LangGraph interrupt (resumed by its id)."""
    return {"value": waiting_payload(request), "id": request.tool_call_id}


@dataclass(frozen=True)
class ThreadView:
    """A thread as read: its session, stored messages and latest turn's status (and, when that
    turn waits for approvals, its id and interrupts)."""

    session: Session
    messages: list[Message]
    last_turn: TurnStatus | None
    last_turn_id: str | None = None
    interrupts: tuple[dict[str, Any], ...] = ()


async def thread_view(service: GatewayService, session: Session) -> ThreadView:
    store = service.runtime.store
    messages = await store.list_messages(session.tenant_id, session.session_id)
    last = next((m for m in reversed(messages) if m.role == "user" and m.turn_id), None)
    if last is None or last.turn_id is None:
        return ThreadView(session, messages, None)
    status = (await store.get_turn(session.tenant_id, last.turn_id)).status
    interrupts: tuple[dict[str, Any], ...] = ()
    if status == "awaiting_approval":
        waiting = await service.runtime.approvals(session.tenant_id, session.session_id)
        found = [api.ApprovalOut.of(a) for a in waiting if a.turn_id == last.turn_id]
        interrupts = tuple(interrupt_of(approval) for approval in found)
    return ThreadView(session, messages, status, last.turn_id, interrupts)


def thread_out(view: ThreadView) -> ThreadOut:
    session = view.session
    return ThreadOut(
        thread_id=session.session_id,
        created_at=timestamp(session.created_at),
        updated_at=timestamp(session.updated_at),
        metadata={**session.metadata, "graph_id": session.agent},
        status=thread_status(view.last_turn),
        values={"messages": messages_of(view.messages)},
        interrupts={view.last_turn_id: list(view.interrupts)} if view.interrupts else {},
    )


def _checkpoint(session: Session, messages: list[dict[str, Any]]) -> Checkpoint:
    last = messages[-1]["id"] if messages else None
    return Checkpoint(thread_id=session.session_id, checkpoint_id=last)


def state_of(view: ThreadView) -> ThreadStateOut:
    """The thread's state now: its messages, checkpointed at the last of them."""
    messages = messages_of(view.messages)
    created = view.messages[-1].created_at if view.messages else view.session.created_at
    interrupts = list(view.interrupts)
    tasks = []
    if interrupts:
        task = {"id": view.last_turn_id, "name": "tools", "error": None, "interrupts": interrupts}
        tasks.append({**task, "checkpoint": None, "state": None, "result": None})
    return ThreadStateOut(
        values={"messages": messages},
        next=["tools"] if interrupts else [],
        checkpoint=_checkpoint(view.session, messages),
        metadata={"source": "loop", "graph_id": view.session.agent},
        created_at=timestamp(created),
        tasks=tasks,
        interrupts=interrupts,
    )


def _turn_ends(stored: list[Message]) -> list[tuple[int, Message]]:
    """(number of messages, last message) at the end of each turn, oldest first."""
    ends: list[tuple[int, Message]] = []
    for index, message in enumerate(stored):
        following = stored[index + 1] if index + 1 < len(stored) else None
        if following is None or following.turn_id != message.turn_id:
            ends.append((index + 1, message))
    return ends


def _before_id(before: dict[str, Any] | str | None) -> str | None:
    if before is None or isinstance(before, str):
        return before
    configurable = before.get("configurable")
    if isinstance(configurable, dict):
        before = configurable
    found = before.get("checkpoint_id")
    return str(found) if found is not None else None


def history_of(
    view: ThreadView, limit: int, before: dict[str, Any] | str | None = None
) -> list[ThreadStateOut]:
    """The thread's states at the end of each turn, newest first (``before`` a checkpoint id)."""
    messages = messages_of(view.messages)
    states: list[ThreadStateOut] = []
    parent: Checkpoint | None = None
    for step, (count, last) in enumerate(_turn_ends(view.messages)):
        checkpoint = _checkpoint(view.session, messages[:count])
        states.append(
            ThreadStateOut(
                values={"messages": messages[:count]},
                checkpoint=checkpoint,
                metadata={"source": "loop", "step": step, "run_id": last.turn_id},
                created_at=timestamp(last.created_at),
                parent_checkpoint=parent,
            )
        )
        parent = checkpoint
    states.reverse()
    cut = _before_id(before)
    if cut is not None:
        ids = [state.checkpoint.checkpoint_id for state in states]
        states = states[ids.index(cut) + 1 :] if cut in ids else []
    return states[:limit]


# -- runs -------------------------------------------------------------------------------------


def run_of_turn(turn: Turn, agent: str) -> RunOut:
    updated = turn.finished_at or turn.started_at or turn.created_at
    return RunOut(
        run_id=turn.turn_id,
        thread_id=turn.session_id,
        assistant_id=assistant_id(agent),
        created_at=timestamp(turn.created_at),
        updated_at=timestamp(updated),
        status=run_status(turn.status),
    )


async def thread_turn(
    service: GatewayService, caller: Caller, thread_id: str, run_id: str
) -> tuple[Session, Turn]:
    """The thread and its run ``run_id`` (404 unless that turn is of that session)."""
    session = await thread_session(service, caller, thread_id)
    try:
        turn = await service.runtime.store.get_turn(session.tenant_id, run_id)
    except NotFoundError:
        turn = None
    if turn is None or turn.session_id != session.session_id:
        raise LangGraphApiError(404, f"Run {run_id!r} not found in thread {thread_id!r}")
    return session, turn


@dataclass
class TurnRecord:
    """A turn as the session's events tell it."""

    turn_id: str
    seq: int
    created: datetime
    updated: datetime
    status: TurnStatus = "queued"

    def run(self, session: Session) -> RunOut:
        return RunOut(
            run_id=self.turn_id,
            thread_id=session.session_id,
            assistant_id=assistant_id(session.agent),
            created_at=timestamp(self.created),
            updated_at=timestamp(self.updated),
            status=run_status(self.status),
        )


_OUTCOME_STATUS: dict[str, TurnStatus] = {
    "turn.completed": "completed",
    "turn.failed": "failed",
    "turn.cancelled": "cancelled",
}


def _record(records: dict[str, TurnRecord], event: ev.Event) -> None:
    if isinstance(event, ev.MessageReceived):
        records.setdefault(event.turn_id, TurnRecord(event.turn_id, event.seq, event.ts, event.ts))
        return
    turn_id = getattr(event, "turn_id", None)
    record = records.get(turn_id) if isinstance(turn_id, str) else None
    if record is None:
        return
    record.updated = event.ts
    if isinstance(event, ev.TurnStarted):
        record.status = "running"
    elif isinstance(event, ev.TurnAwaitingApproval):
        record.status = "awaiting_approval"
    elif event.type in _OUTCOME_STATUS:
        record.status = _OUTCOME_STATUS[event.type]


async def turn_records(service: GatewayService, session: Session) -> list[TurnRecord]:
    """The session's turns from its events, oldest first (a scan of its event log)."""
    records: dict[str, TurnRecord] = {}
    after = 0
    while True:
        page = await service.runtime.store.list_events(
            session.tenant_id, session.session_id, after_seq=after, limit=EVENTS_PAGE
        )
        for event in page:
            _record(records, event)
        if len(page) < EVENTS_PAGE:
            return list(records.values())
        after = page[-1].seq


def ended(status: TurnStatus) -> bool:
    return status in _ENDED
