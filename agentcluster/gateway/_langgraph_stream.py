"""A turn's events and deltas as a LangGraph run stream, one SSE event per stream mode.

Every item is translated for every mode and numbered, then the requested modes are sent: an
event's id does not depend on the modes asked. The agent is drawn as LangGraph's ReAct graph
(nodes ``agent`` and ``tools``), so the modes say what a LangGraph client expects:

- ``values``: the thread's messages after the user's message, each model step and each tool
  result;
- ``updates``: ``{"agent": {"messages": [ai]}}`` per model step, ``{"tools": {"messages": [tool]}}``
  per tool result;
- ``messages-tuple`` (event ``messages``): ``[message chunk, metadata]`` per streamed token, the
  step's last chunk with its tool calls, each tool message;
- ``messages``: ``messages/metadata``, ``messages/partial`` (the text so far) and
  ``messages/complete``;
- ``events``: ``on_chain_start``/``on_chain_end`` of the run, ``on_chat_model_start``/
  ``_stream``/``_end`` per step, ``on_tool_start``/``on_tool_end`` per tool call.

``debug``, ``tasks``, ``checkpoints``, ``custom`` and ``tools`` are accepted and send nothing. A
failed turn ends with an ``error`` event. A turn that pauses for approvals ends as an interrupted
LangGraph run does: ``values`` with ``__interrupt__`` (the waiting calls as interrupts) beside
the messages, and ``updates`` ``{"__interrupt__": [...]}``.

Every event but the first (``metadata``) has an id ``<seq>-<n>``: the seq of the persisted event it
comes from and its index among what that event (and the live tokens after it) produced; a client
resuming with ``Last-Event-ID`` gets the turn replayed from the store with everything up to that id
left out (tokens are live only: a resumed stream carries the steps' complete messages).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from agentcluster import events as ev
from agentcluster.gateway._approval_turns import waiting_calls, waiting_payload
from agentcluster.gateway._langgraph_messages import (
    agent_message,
    human_message,
    message_id,
    tool_content,
    tool_message,
)
from agentcluster.runtime import Delta, Overflow, StreamItem

__all__ = [
    "EVENT_ID_PATTERN",
    "STREAM_MODES",
    "EventId",
    "RunStream",
    "SseOut",
    "StreamMode",
    "parse_event_id",
]

StreamMode = Literal[
    "values",
    "messages",
    "updates",
    "events",
    "tasks",
    "checkpoints",
    "debug",
    "custom",
    "messages-tuple",
    "tools",
    "lifecycle",
]
STREAM_MODES: tuple[str, ...] = StreamMode.__args__  # type: ignore[attr-defined]
EVENT_ID_PATTERN = r"^([0-9]{1,18}-[0-9]{1,9})?$"
"""A ``Last-Event-ID`` of a run stream: ``<seq>-<index>`` (ASCII digits; empty: from the start)."""
_EVENT_ID = re.compile(r"([0-9]{1,18})-([0-9]{1,9})")
_MODE_OF = {"messages": "messages-tuple", "values": "values", "updates": "updates"}


def _mode_of(event: str) -> str:
    if event.startswith("messages/"):
        return "messages"
    return _MODE_OF.get(event, event)


@dataclass(frozen=True, order=True)
class EventId:
    """Where an SSE event of a run stream comes from: a persisted event's seq, and an index."""

    seq: int
    index: int

    def __str__(self) -> str:
        return f"{self.seq}-{self.index}"


def parse_event_id(value: str | None) -> EventId | None:
    """A ``Last-Event-ID`` of a run stream; None without one.

    Raises:
        ValueError: not ``<seq>-<index>``.
    """
    if value is None or value == "":
        return None
    found = _EVENT_ID.fullmatch(value)
    if found is None:
        raise ValueError("Last-Event-ID must be <seq>-<index>, as this server sent it")
    return EventId(int(found[1]), int(found[2]))


@dataclass(frozen=True)
class SseOut:
    """One SSE event to send."""

    event: str
    data: Any
    event_id: str | None = None


@dataclass
class _Message:
    """The agent's message being streamed (the next one of the turn)."""

    text: str = ""


@dataclass
class RunStream:
    """Translates one turn's stream items into the run's SSE events.

    Args:
        run_id: the turn's id.
        thread_id: the session's id.
        assistant: the assistant's id.
        graph_id: the agent's name.
        modes: the requested stream modes.
        history: the thread's messages before this turn (for ``values``).
        resume_after: leave out what was sent up to this id (``Last-Event-ID``).
        first_position: the turn's messages after the user's already in ``history`` (a run
            resumed after approvals streams on from there).
    """

    run_id: str
    thread_id: str
    assistant: str
    graph_id: str
    modes: frozenset[str]
    history: list[dict[str, Any]] = field(default_factory=list)
    resume_after: EventId | None = None
    first_position: int = 0
    ended: bool = False
    cut: bool = False
    _seq: int = 0
    _index: int = 0
    _position: int = 0
    _step: int = 0
    _turn: list[dict[str, Any]] = field(default_factory=list)
    _tools: dict[str, str] = field(default_factory=dict)
    _pending_calls: int = 0
    _current: _Message = field(default_factory=_Message)
    _asked: list[ev.Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._position = self.first_position

    def feed(self, item: StreamItem) -> list[SseOut]:
        """The SSE events of one stream item (sets ``ended`` at the turn's end, ``cut`` when the
        stream must stop before it)."""
        if isinstance(item, Overflow):
            self.cut = True  # this subscriber was dropped: the client resumes by its id
            return []
        if isinstance(item, Delta):
            return self._number(self._delta(item), live=True)
        self._seq, self._index = item.seq, 0
        if isinstance(item, ev.TURN_OUTCOMES):
            self.ended = True
        return self._number(self._event(item), live=False)

    def _number(self, pairs: list[tuple[str, Any]], live: bool) -> list[SseOut]:
        out = []
        for event, data in pairs:
            event_id = EventId(self._seq, self._index)
            self._index += 1
            if not live and self.resume_after is not None and event_id <= self.resume_after:
                continue
            if event == "error" or _mode_of(event) in self.modes:
                out.append(SseOut(event, data, str(event_id)))
        return out

    # -- metadata ---------------------------------------------------------------------------

    def metadata(self, node: str) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "graph_id": self.graph_id,
            "assistant_id": self.assistant,
            "langgraph_node": node,
            "langgraph_step": self._step,
            "langgraph_checkpoint_ns": "",
        }

    def _event_dict(
        self, kind: str, name: str, data: dict[str, Any], node: str | None = None
    ) -> tuple[str, Any]:
        run = self.run_id if node is None else f"{self.run_id}-{node}-{self._step}"
        payload = {
            "event": kind,
            "name": name,
            "run_id": run,
            "tags": [],
            "metadata": self.metadata(node or "__start__"),
            "data": data,
            "parent_ids": [] if node is None else [self.run_id],
        }
        return "events", payload

    # -- items ------------------------------------------------------------------------------

    def _event(self, event: ev.Event) -> list[tuple[str, Any]]:
        if isinstance(event, ev.MessageReceived):
            return self._received(event)
        if isinstance(event, ev.LlmCompleted):
            return self._llm_completed(event)
        if isinstance(event, ev.ToolRequested):
            return self._tool_requested(event)
        if isinstance(event, ev.ToolCompleted):
            return self._tool_completed(event)
        if isinstance(event, ev.TurnCompleted):
            return self._completed(event)
        if isinstance(event, ev.TurnFailed):
            return [("error", {"error": event.error_type, "message": event.error})]
        if isinstance(event, ev.ToolApprovalRequested | ev.ToolApprovalDecided):
            self._asked.append(event)
            return []
        if isinstance(event, ev.TurnAwaitingApproval):
            return self._interrupted(event)
        return []

    def _interrupted(self, event: ev.TurnAwaitingApproval) -> list[tuple[str, Any]]:
        waiting = [r for r in waiting_calls(self._asked) if r.tool_call_id in event.tool_call_ids]
        interrupts = [{"value": waiting_payload(r), "id": r.tool_call_id} for r in waiting]
        values = {"messages": [*self.history, *self._turn], "__interrupt__": interrupts}
        return [("updates", {"__interrupt__": interrupts}), ("values", values)]

    def _values(self) -> tuple[str, Any]:
        return "values", {"messages": [*self.history, *self._turn]}

    def _received(self, event: ev.MessageReceived) -> list[tuple[str, Any]]:
        human = human_message(event.content, event.message_id)
        self._turn.append(human)
        data = {"input": {"messages": [human]}}
        start = self._event_dict("on_chain_start", "LangGraph", data)
        return [self._values(), start, *self._open_step()]

    def _next_id(self) -> str:
        return message_id(self.run_id, self._position + 1)

    def _delta(self, delta: Delta) -> list[tuple[str, Any]]:
        self._step = delta.step
        self._current.text += delta.text
        chunk = agent_message(delta.text, self._next_id(), chunk=True)
        partial = agent_message(self._current.text, self._next_id())
        return [
            ("messages", [chunk, self.metadata("agent")]),
            ("messages/partial", [partial]),
            self._event_dict("on_chat_model_stream", self.graph_id, {"chunk": chunk}, "agent"),
        ]

    def _open_step(self) -> list[tuple[str, Any]]:
        """A model step begins (after the user's message, after the last tool result of a
        step): announced from persisted events only, so a replay numbers it the same way."""
        self._step += 1
        data = {"input": {"messages": [[*self.history, *self._turn]]}}
        announce = {self._next_id(): {"metadata": self.metadata("agent")}}
        return [
            self._event_dict("on_chat_model_start", self.graph_id, data, "agent"),
            ("messages/metadata", announce),
        ]

    def _llm_completed(self, event: ev.LlmCompleted) -> list[tuple[str, Any]]:
        self._step = event.step
        msg_id = self._next_id()
        ai = agent_message(event.content, msg_id, event.tool_calls, event.usage)
        out = [
            ("messages", [self._last_chunk(event, msg_id, ai), self.metadata("agent")]),
            ("messages/complete", [ai]),
            self._event_dict("on_chat_model_end", self.graph_id, {"output": ai}, "agent"),
        ]
        self._position += 1
        self._current = _Message()
        self._pending_calls = len(event.tool_calls)
        self._tools.update({str(c.get("id")): str(c.get("name")) for c in event.tool_calls})
        stored = agent_message(event.content, msg_id, event.tool_calls)  # as the store has it
        return [*out, *self._appended(stored, "agent")]

    def _last_chunk(self, event: ev.LlmCompleted, msg_id: str, ai: dict[str, Any]) -> Any:
        """The step's message as tokens streamed it: the rest of the text the deltas did not
        carry, with the tool calls; the whole message when nothing streamed."""
        if not self._current.text:
            return ai
        content = event.content or ""
        streamed = self._current.text
        rest = content[len(streamed) :] if content.startswith(streamed) else ""
        return agent_message(rest, msg_id, event.tool_calls, event.usage, chunk=True)

    def _appended(self, message: dict[str, Any], node: str) -> list[tuple[str, Any]]:
        self._turn.append(message)
        return [("updates", {node: {"messages": [message]}}), self._values()]

    def _tool_requested(self, event: ev.ToolRequested) -> list[tuple[str, Any]]:
        data = {"input": event.arguments}
        return [self._event_dict("on_tool_start", event.tool, data, "tools")]

    def _tool_completed(self, event: ev.ToolCompleted) -> list[tuple[str, Any]]:
        self._position += 1
        content = tool_content(event.ok, event.result, event.error)
        msg_id = message_id(self.run_id, self._position)
        tool = tool_message(content, msg_id, event.tool_call_id, event.tool, event.ok)
        meta = {msg_id: {"metadata": self.metadata("tools")}}
        out = [
            ("messages", [tool, self.metadata("tools")]),
            ("messages/metadata", meta),
            ("messages/complete", [tool]),
            self._event_dict("on_tool_end", event.tool, {"output": tool}, "tools"),
            *self._appended(tool, "tools"),
        ]
        self._pending_calls = max(self._pending_calls - 1, 0)
        return out if self._pending_calls else [*out, *self._open_step()]

    def _completed(self, event: ev.TurnCompleted) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        if not any(message["type"] == "ai" for message in self._turn):
            # The journal stores an answer without a model step (none ran): show it as one.
            self._position += 1
            ai = agent_message(event.content, message_id(self.run_id, self._position))
            out.extend(self._appended(ai, "agent"))
        data = {"output": {"messages": [*self.history, *self._turn]}}
        out.append(self._event_dict("on_chain_end", "LangGraph", data))
        return out
