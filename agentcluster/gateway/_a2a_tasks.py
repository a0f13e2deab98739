"""A2A tasks over agentcluster turns (pure mapping, no I/O).

A task is one turn: its id is the turn id, its ``contextId`` the session id. The task's state
follows the turn (queued: submitted, running: working, then completed, failed or canceled). Its
history is the user's message, then one agent message per tool call and per tool result (a
``data`` part, ``metadata.kind`` ``tool_call`` or ``tool_result``); its one artifact, ``answer``,
is the turn's answer. A failed or cancelled turn says why in its status message.

A stream shows the same: the task (submitted), ``working`` status updates (those of tool calls
carry their message), the answer as artifact chunks as the model writes it (the last chunk
``lastChunk: true``), then the final status.

A turn whose tool calls wait for a person (``turn.awaiting_approval``) is ``input-required``: its
status message says so in a text part and lists the waiting calls in a data part
``{"approvals": [{tool_call_id, tool, arguments, reason, decisions, expires_at}]}``; a stream
ends with that status. A message to the task (its ``taskId``) decides them (see
:func:`approval_decisions`) and the task goes on from there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from a2a.types import (
    Artifact,
    Message,
    Part,
    Role,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from a2a.utils.errors import ContentTypeNotSupportedError, InvalidParamsError
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.struct_pb2 import Value
from google.protobuf.timestamp_pb2 import Timestamp

from agentcluster import api
from agentcluster import events as ev
from agentcluster.domain import TurnStatus
from agentcluster.gateway._approval_turns import decision_of, waiting_calls, waiting_payload
from agentcluster.runtime import Delta, StreamItem

__all__ = [
    "ANSWER_ARTIFACT",
    "TERMINAL",
    "TaskStream",
    "TaskView",
    "answer_artifact",
    "approval_decisions",
    "message_text",
    "task_of",
    "task_state",
    "tool_message",
    "user_message",
    "views_of_session",
]

ANSWER_ARTIFACT = "answer"
"""The artifact id and name of a task's answer."""

_STATES: dict[str, TaskState] = {
    "queued": TaskState.TASK_STATE_SUBMITTED,
    "running": TaskState.TASK_STATE_WORKING,
    "awaiting_approval": TaskState.TASK_STATE_INPUT_REQUIRED,
    "completed": TaskState.TASK_STATE_COMPLETED,
    "failed": TaskState.TASK_STATE_FAILED,
    "cancelled": TaskState.TASK_STATE_CANCELED,
}
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
"""The turn statuses that end a task (it can no longer be cancelled or subscribed to)."""

StreamEvent = Task | TaskStatusUpdateEvent | TaskArtifactUpdateEvent


def task_state(status: TurnStatus | str) -> TaskState:
    """The A2A task state of a turn status."""
    return _STATES[status]


@dataclass(frozen=True)
class TaskView:
    """What a task shows of its turn (from the store, or from a wait's outcome)."""

    turn_id: str
    session_id: str
    status: TurnStatus
    message_id: str
    content: str
    answer: str | None = None
    error: str | None = None
    updated_at: datetime | None = None
    events: tuple[ev.Event, ...] = field(default=())
    last_seq: int = 0
    """The seq of the turn's latest event read (a subscription follows on from it)."""


def _timestamp(when: datetime | None) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime((when or datetime.now(UTC)).astimezone(UTC))
    return stamp


def _text_part(text: str) -> Part:
    return Part(text=text)


def _data_part(payload: dict[str, Any]) -> Part:
    part = Part()
    part.data.CopyFrom(ParseDict(json.loads(json.dumps(payload, default=str)), Value()))
    return part


def _agent_message(turn_id: str, session_id: str, message_id: str, part: Part) -> Message:
    return Message(
        message_id=message_id,
        context_id=session_id,
        task_id=turn_id,
        role=Role.ROLE_AGENT,
        parts=[part],
    )


def user_message(message_id: str, turn_id: str, session_id: str, content: str) -> Message:
    """The user's message of a task, as it was committed."""
    return Message(
        message_id=message_id,
        context_id=session_id,
        task_id=turn_id,
        role=Role.ROLE_USER,
        parts=[_text_part(content)],
    )


def tool_message(turn_id: str, session_id: str, event: ev.Event) -> Message | None:
    """A tool call or its result as an agent message (None for any other event)."""
    if isinstance(event, ev.ToolRequested):
        payload = {"tool": event.tool, "call_id": event.tool_call_id, "arguments": event.arguments}
        part = _data_part(payload)
        message = _agent_message(turn_id, session_id, f"{event.tool_call_id}-call", part)
        message.metadata.update({"kind": "tool_call"})
        return message
    if isinstance(event, ev.ToolCompleted):
        result: dict[str, Any] = {"tool": event.tool, "call_id": event.tool_call_id}
        result.update({"ok": event.ok, "result": event.result, "error": event.error})
        part = _data_part(result)
        message = _agent_message(turn_id, session_id, f"{event.tool_call_id}-result", part)
        message.metadata.update({"kind": "tool_result"})
        return message
    return None


def approval_message(
    turn_id: str, session_id: str, waiting: list[ev.ToolApprovalRequested]
) -> Message:
    """The status message of a task waiting for a person: what waits (text), and each waiting
    call (a data part ``{"approvals": [...]}``)."""
    tools = ", ".join(request.tool for request in waiting) or "a tool call"
    text = (
        f"waiting for a person to approve {tools}: send a message to this task with a data part "
        '{"approvals": [{"tool_call_id": ..., "decision": "approve" | "edit" | "reject", '
        '"arguments"?: {...}, "message"?: "..."}]} (or the text approve / reject when one '
        "call waits)"
    )
    payload = {"approvals": [waiting_payload(request) for request in waiting]}
    message = Message(
        message_id=f"{turn_id}-approval",
        context_id=session_id,
        task_id=turn_id,
        role=Role.ROLE_AGENT,
        parts=[_text_part(text), _data_part(payload)],
    )
    message.metadata.update({"kind": "approval_request"})
    return message


def _status(view: TaskView, state: TaskState, why: str | None) -> TaskStatus:
    status = TaskStatus(state=state, timestamp=_timestamp(view.updated_at))
    if view.status == "awaiting_approval":
        waiting = waiting_calls(view.events)
        status.message.CopyFrom(approval_message(view.turn_id, view.session_id, waiting))
    elif why:
        message_id = f"{view.turn_id}-status"
        message = _agent_message(view.turn_id, view.session_id, message_id, _text_part(why))
        status.message.CopyFrom(message)
    return status


def _why(view: TaskView) -> str | None:
    if view.status == "failed":
        return f"the agent's turn failed: {view.error or 'unknown error'}"
    if view.status == "cancelled":
        return f"the turn was cancelled: {view.error}" if view.error else "the turn was cancelled"
    return None


def answer_artifact(text: str) -> Artifact:
    """The artifact holding (a chunk of) the turn's answer."""
    return Artifact(artifact_id=ANSWER_ARTIFACT, name=ANSWER_ARTIFACT, parts=[_text_part(text)])


def task_of(view: TaskView, history_length: int | None = None) -> Task:
    """The task of a turn: state, history (the user's message and the tool messages, the last
    ``history_length`` of them when given) and the answer as its artifact."""
    user = user_message(view.message_id, view.turn_id, view.session_id, view.content)
    tools = (tool_message(view.turn_id, view.session_id, event) for event in view.events)
    history = [user, *(message for message in tools if message is not None)]
    if history_length is not None:
        history = history[len(history) - history_length :] if history_length > 0 else []
    task = Task(
        id=view.turn_id,
        context_id=view.session_id,
        status=_status(view, task_state(view.status), _why(view)),
        history=history,
    )
    if view.answer is not None and view.status == "completed":
        task.artifacts.append(answer_artifact(view.answer))
    return task


@dataclass
class _Turn:
    """A turn as its events tell it so far."""

    received: ev.MessageReceived
    status: TurnStatus = "queued"
    answer: str | None = None
    error: str | None = None
    updated_at: datetime | None = None
    events: list[ev.Event] = field(default_factory=list)

    def add(self, event: ev.Event) -> None:
        self.events.append(event)
        self.updated_at = event.ts
        if isinstance(event, ev.TurnStarted):
            self.status = "running"
        elif isinstance(event, ev.TurnAwaitingApproval):
            self.status = "awaiting_approval"
        elif isinstance(event, ev.TurnCompleted):
            self.status, self.answer = "completed", event.content
        elif isinstance(event, ev.TurnFailed):
            self.status, self.error = "failed", event.error
        elif isinstance(event, ev.TurnCancelled):
            self.status, self.error = "cancelled", event.reason

    def view(self) -> TaskView:
        received = self.received
        return TaskView(
            turn_id=received.turn_id,
            session_id=received.session_id,
            status=self.status,
            message_id=received.message_id,
            content=received.content,
            answer=self.answer,
            error=self.error,
            updated_at=self.updated_at or received.ts,
            events=tuple(self.events),
            last_seq=max([received.seq, *(event.seq for event in self.events)]),
        )


def views_of_session(events: Iterable[ev.Event]) -> list[TaskView]:
    """The tasks of a session's events (its turns in the order they arrived; each as far as
    the events go: a turn with no ``turn.started`` yet is still queued)."""
    turns: dict[str, _Turn] = {}
    for event in events:
        if isinstance(event, ev.MessageReceived):
            turns.setdefault(event.turn_id, _Turn(received=event))
            continue
        turn = turns.get(getattr(event, "turn_id", None) or "")
        if turn is not None:
            turn.add(event)
    return [turn.view() for turn in turns.values()]


def _integral(value: Any) -> Any:
    """JSON from a protobuf ``Value`` with its whole numbers as integers (it holds doubles)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def message_text(message: Message) -> str:
    """The text a user's message sends to the agent: its text parts, and its data parts as
    JSON, one per line.

    Raises:
        ContentTypeNotSupportedError: a file part (``raw`` or ``url``).
        InvalidParamsError: not the user's, or no text at all.
    """
    if message.role == Role.ROLE_AGENT:
        raise InvalidParamsError("the message must be the user's (role ROLE_USER)")
    texts: list[str] = []
    for part in message.parts:
        kind = part.WhichOneof("content")
        if kind == "text":
            texts.append(part.text)
        elif kind == "data":
            texts.append(json.dumps(_integral(MessageToDict(part))["data"]))
        else:
            raise ContentTypeNotSupportedError(f"{kind} parts are not supported: send text or data")
    text = "\n".join(text for text in texts if text)
    if not text.strip():
        raise InvalidParamsError("the message has no text")
    return text


def _data_of(part: Part) -> Any:
    return _integral(MessageToDict(part))["data"]


def approval_decisions(
    message: Message, waiting: list[ev.ToolApprovalRequested]
) -> list[tuple[str, api.ApprovalDecisionIn]]:
    """The decisions a user's message to an ``input-required`` task sends: its data parts'
    ``{"approvals": [{"tool_call_id", "decision", "arguments"?, "message"?}]}`` (or one
    ``{"decision", ...}`` when exactly one call waits), else its text: ``approve`` or
    ``reject`` (what follows a colon is the message) when exactly one call waits.

    Raises:
        InvalidParamsError: no decision in it, or a bare decision while several calls wait.
    """
    if message.role == Role.ROLE_AGENT:
        raise InvalidParamsError("the message must be the user's (role ROLE_USER)")
    data = [_data_of(part) for part in message.parts if part.WhichOneof("content") == "data"]
    if data:
        return [item for payload in data for item in _data_decisions(payload, waiting)]
    text = " ".join(part.text for part in message.parts if part.WhichOneof("content") == "text")
    word, _colon, note = text.strip().partition(":")
    if not word.strip():
        raise InvalidParamsError("the task waits for approvals: send the decisions")
    decision = decision_of(word.strip())
    if note.strip():
        decision = decision.model_copy(update={"message": note.strip()})
    return [(_only_waiting(waiting), decision)]


def _only_waiting(waiting: list[ev.ToolApprovalRequested]) -> str:
    if len(waiting) != 1:
        raise InvalidParamsError(
            f"{len(waiting)} calls wait: name each with its tool_call_id in a data part "
            '{"approvals": [...]}'
        )
    return waiting[0].tool_call_id


def _data_decisions(
    payload: Any, waiting: list[ev.ToolApprovalRequested]
) -> list[tuple[str, api.ApprovalDecisionIn]]:
    if isinstance(payload, dict) and isinstance(payload.get("approvals"), list):
        items = payload["approvals"]
    elif isinstance(payload, dict) and "decision" in payload:
        items = [payload]
    else:
        raise InvalidParamsError('a data part of decisions is {"approvals": [...]}')
    decided: list[tuple[str, api.ApprovalDecisionIn]] = []
    for item in items:
        if not isinstance(item, dict):
            raise InvalidParamsError("each approval is an object with tool_call_id and decision")
        tool_call_id = item.get("tool_call_id") or _only_waiting(waiting)
        if not isinstance(tool_call_id, str):
            raise InvalidParamsError("tool_call_id is a string")
        decided.append((tool_call_id, decision_of(item)))
    return decided


class TaskStream:
    """Turns one turn's stream items into A2A stream events (see the module's docstring)."""

    def __init__(self, turn_id: str, session_id: str) -> None:
        self.turn_id = turn_id
        self.session_id = session_id
        self.streamed = ""
        self.chunks = 0
        self.asked: list[ev.Event] = []
        """The approval requests and decisions seen (what an input-required status lists)."""

    def _update(self, state: TaskState, message: Message | None = None) -> StreamEvent:
        status = TaskStatus(state=state, timestamp=_timestamp(None))
        if message is not None:
            status.message.CopyFrom(message)
        return TaskStatusUpdateEvent(
            task_id=self.turn_id, context_id=self.session_id, status=status
        )

    def _chunk(self, text: str, last: bool) -> StreamEvent:
        event = TaskArtifactUpdateEvent(
            task_id=self.turn_id,
            context_id=self.session_id,
            artifact=answer_artifact(text),
            append=self.chunks > 0,
            last_chunk=last,
        )
        self.chunks += 1
        self.streamed += text
        return event

    def _ended(self, reason: str, state: TaskState) -> StreamEvent:
        message_id = f"{self.turn_id}-status"
        message = _agent_message(self.turn_id, self.session_id, message_id, _text_part(reason))
        return self._update(state, message)

    def events(self, item: StreamItem) -> list[StreamEvent]:
        """The A2A events of one stream item (none for items a client has no use for)."""
        if isinstance(item, Delta):
            return [self._chunk(item.text, last=False)] if item.text else []
        if isinstance(item, ev.TurnStarted):
            return [self._update(TaskState.TASK_STATE_WORKING)]
        if isinstance(item, ev.ToolRequested | ev.ToolCompleted):
            message = tool_message(self.turn_id, self.session_id, item)
            return [self._update(TaskState.TASK_STATE_WORKING, message)]
        if isinstance(item, ev.ToolApprovalRequested | ev.ToolApprovalDecided):
            self.asked.append(item)
            return []
        if isinstance(item, ev.TurnAwaitingApproval):
            waiting = [r for r in waiting_calls(self.asked) if r.tool_call_id in item.tool_call_ids]
            message = approval_message(self.turn_id, self.session_id, waiting)
            return [self._update(TaskState.TASK_STATE_INPUT_REQUIRED, message)]
        if isinstance(item, ev.TurnCompleted):
            return [self._last_chunk(item.content), self._update(TaskState.TASK_STATE_COMPLETED)]
        if isinstance(item, ev.TurnFailed):
            why = f"the agent's turn failed: {item.error}"
            return [self._ended(why, TaskState.TASK_STATE_FAILED)]
        if isinstance(item, ev.TurnCancelled):
            why = f"the turn was cancelled: {item.reason}" if item.reason else "cancelled"
            return [self._ended(why, TaskState.TASK_STATE_CANCELED)]
        return []

    def _last_chunk(self, answer: str) -> StreamEvent:
        """What the deltas did not carry of the answer (all of it when they carried none or
        another text), as the last chunk."""
        if self.chunks and answer.startswith(self.streamed):
            return self._chunk(answer[len(self.streamed) :], last=True)
        self.chunks = 0  # a fresh artifact: the deltas were not the answer's prefix
        self.streamed = ""
        return self._chunk(answer, last=True)
