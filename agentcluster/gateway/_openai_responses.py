"""OpenAI Responses objects over agentcluster turns: a response is one turn of a session.

A response's id is ``resp_<turn id>``; its output is built from the session's events: each tool
call the agent made (``tool.requested``) as a ``function_call`` item, its result
(``tool.completed``) as a ``function_call_output`` item, then the turn's answer as a ``message``.
``previous_response_id`` continues the previous response's session. ``store: false`` is kept on
the session the request opens: its responses cannot be retrieved or continued (the turns are
still recorded in the session, like every turn).

A turn whose tool calls wait for a person (``turn.awaiting_approval``) is a ``completed``
response holding an ``mcp_approval_request`` item per waiting call (``id`` the tool call's id,
``server_label`` ``agentcluster``), as OpenAI's remote MCP tools ask for approval. A request with
that ``previous_response_id`` and ``mcp_approval_response`` input items decides them; its
response is the same turn (the same id) from the decisions on: the tool results and the answer,
or new approval requests.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from sse_starlette.sse import ServerSentEvent

from agentcluster import api
from agentcluster import events as ev
from agentcluster.domain import Session, Turn, TurnStatus
from agentcluster.errors import NotFoundError
from agentcluster.gateway._approval_turns import waiting_calls
from agentcluster.gateway._openai_errors import OpenAIApiError
from agentcluster.gateway._openai_models import (
    FunctionCallItem,
    FunctionCallOutputItem,
    ItemEvent,
    McpApprovalRequestItem,
    OutputItem,
    OutputMessage,
    OutputText,
    PartEvent,
    ResponseError,
    ResponseEvent,
    ResponseObject,
    ResponseStatus,
    ResponseUsage,
    TextDeltaEvent,
    TextDoneEvent,
)
from agentcluster.gateway._service import Caller, GatewayService
from agentcluster.runtime import Delta, StreamItem

__all__ = [
    "STORE_KEY",
    "ResponseOptions",
    "SessionRef",
    "TurnState",
    "load_response",
    "response_events",
    "response_id",
    "response_of_turn",
    "session_of_response",
]

PREFIX = "resp_"
STORE_KEY = "openai_store"
"""Session metadata: False when the request that opened the session said ``store: false``."""
EVENTS_PAGE = 500

_STATUS: dict[str, ResponseStatus] = {
    "queued": "queued",
    "running": "in_progress",
    "awaiting_approval": "completed",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}


@dataclass(frozen=True)
class ResponseOptions:
    """What a create request asked that the turn itself does not record (echoed back)."""

    store: bool = True
    background: bool = False
    instructions: str | None = None
    previous_response_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionRef:
    """What a response needs of its session."""

    tenant_id: str
    session_id: str
    agent: str
    store: bool = True

    @classmethod
    def of(cls, session: Session) -> SessionRef:
        stored = session.metadata.get(STORE_KEY) is not False
        return cls(session.tenant_id, session.session_id, session.agent, stored)


@dataclass(frozen=True)
class TurnState:
    """A turn as a response shows it: from the store, or from the outcome a wait returned."""

    turn_id: str
    status: TurnStatus
    created_at: int
    usage: ev.Usage
    answer: str | None = None
    error: str | None = None

    @classmethod
    def of(cls, turn: api.TurnOut) -> TurnState:
        return cls(
            turn.turn_id, turn.status, int(time.time()), turn.usage, turn.content, turn.error
        )


def response_id(turn_id: str) -> str:
    return PREFIX + turn_id


def _turn_id(value: str) -> str:
    if not value.startswith(PREFIX) or len(value) <= len(PREFIX):
        raise OpenAIApiError(404, f"response {value!r} not found", code="response_not_found")
    return value[len(PREFIX) :]


async def session_of_response(
    service: GatewayService, caller: Caller, value: str, param: str | None = None
) -> tuple[Session, Turn]:
    """The session and turn of a stored response of the caller's tenant (404 otherwise)."""
    tenant_id = await service.authorize(caller, "session.read")
    store = service.runtime.store
    try:
        turn = await store.get_turn(tenant_id, _turn_id(value))
        session = await store.get_session(tenant_id, turn.session_id)
    except NotFoundError:
        message = f"response {value!r} not found"
        raise OpenAIApiError(404, message, code="response_not_found", param=param) from None
    if session.metadata.get(STORE_KEY) is False:
        message = f"response {value!r} was created with store=false"
        raise OpenAIApiError(404, message, code="response_not_found", param=param)
    return session, turn


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _tool_item(event: ev.Event) -> OutputItem | None:
    if isinstance(event, ev.ToolRequested):
        return FunctionCallItem(
            id=f"fc_{event.tool_call_id}",
            call_id=event.tool_call_id,
            name=event.tool,
            arguments=json.dumps(event.arguments),
        )
    if isinstance(event, ev.ToolCompleted):
        output = _json_text(event.result) if event.ok else f"error: {event.error}"
        return FunctionCallOutputItem(
            id=f"fco_{event.tool_call_id}", call_id=event.tool_call_id, output=output
        )
    if isinstance(event, ev.ToolApprovalRequested):
        return McpApprovalRequestItem(
            id=event.tool_call_id, name=event.tool, arguments=json.dumps(event.arguments)
        )
    return None


def _output_items(events: list[ev.Event], paused: bool = True) -> list[OutputItem]:
    """The tool call items of a turn's events; of its approval requests, those still waiting
    while it is ``paused`` (a decided one is answered: its result follows; none waits in a turn
    that ended)."""
    waiting = {request.tool_call_id for request in waiting_calls(events)} if paused else set()
    shown = (
        event
        for event in events
        if not isinstance(event, ev.ToolApprovalRequested) or event.tool_call_id in waiting
    )
    return [item for item in map(_tool_item, shown) if item is not None]


def _message_item(turn_id: str, output_index: int, text: str) -> OutputMessage:
    return OutputMessage(id=f"msg_{turn_id}_{output_index}", content=[OutputText(text=text)])


@dataclass
class _TurnEvents:
    events: list[ev.Event] = field(default_factory=list)
    previous_turn_id: str | None = None


async def _turn_events(
    service: GatewayService, session: SessionRef, turn_id: str, after_seq: int
) -> _TurnEvents:
    """The turn's persisted events (and the turn before it when read from the start)."""
    found = _TurnEvents()
    while True:
        page = await service.runtime.store.list_events(
            session.tenant_id, session.session_id, after_seq=after_seq, limit=EVENTS_PAGE
        )
        for event in page:
            if getattr(event, "turn_id", None) == turn_id:
                found.events.append(event)
            elif isinstance(event, ev.MessageReceived) and not found.events:
                found.previous_turn_id = event.turn_id
        ended = bool(found.events) and isinstance(found.events[-1], ev.TURN_OUTCOMES)
        if len(page) < EVENTS_PAGE or ended:
            return found
        after_seq = page[-1].seq


def _usage(usage: ev.Usage) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def _error(turn: TurnState) -> ResponseError | None:
    if turn.status == "failed":
        return ResponseError(code="server_error", message=turn.error or "the turn failed")
    return None


async def _stored_turn(service: GatewayService, turn: Turn, events: list[ev.Event]) -> TurnState:
    """The turn as the store has it (its answer from its events, else its answer message)."""
    answer = next((e.content for e in events if isinstance(e, ev.TurnCompleted)), None)
    if answer is None and turn.answer_message_id is not None:
        store = service.runtime.store
        answer = (await store.get_message(turn.tenant_id, turn.answer_message_id)).content
    usage = ev.Usage.model_validate(turn.usage or {})
    created_at = int(turn.created_at.timestamp())
    return TurnState(turn.turn_id, turn.status, created_at, usage, answer, turn.error)


async def response_of_turn(
    service: GatewayService,
    session: SessionRef,
    turn_id: str,
    options: ResponseOptions,
    after_seq: int = 0,
    known: TurnState | None = None,
) -> ResponseObject:
    """The response of ``turn_id``: its tool calls from the session's events (after
    ``after_seq``), the rest from ``known`` when given, else from the store."""
    found = await _turn_events(service, session, turn_id, after_seq)
    if known is None:
        stored = await service.runtime.store.get_turn(session.tenant_id, turn_id)
        known = await _stored_turn(service, stored, found.events)
    output = _output_items(found.events, paused=known.status == "awaiting_approval")
    if known.answer is not None:
        output.append(_message_item(turn_id, len(output), known.answer))
    previous = options.previous_response_id
    if previous is None and after_seq == 0 and found.previous_turn_id is not None:
        previous = response_id(found.previous_turn_id)
    return ResponseObject(
        id=response_id(turn_id),
        created_at=known.created_at,
        status=_STATUS[known.status],
        model=session.agent,
        output=output,
        usage=_usage(known.usage) if known.status != "queued" else None,
        error=_error(known),
        instructions=options.instructions,
        metadata=options.metadata,
        previous_response_id=previous,
        store=session.store,
        background=options.background,
    )


async def load_response(service: GatewayService, caller: Caller, value: str) -> ResponseObject:
    """``GET /v1/responses/{id}``: a stored response of the caller's tenant."""
    session, turn = await session_of_response(service, caller, value)
    return await response_of_turn(service, SessionRef.of(session), turn.turn_id, ResponseOptions())


def pending_response(turn_id: str, model: str, options: ResponseOptions) -> ResponseObject:
    """The response as a stream announces it, before anything ran."""
    return ResponseObject(
        id=response_id(turn_id),
        created_at=int(time.time()),
        status="in_progress",
        model=model,
        output=[],
        instructions=options.instructions,
        metadata=options.metadata,
        previous_response_id=options.previous_response_id,
        store=options.store,
        background=options.background,
    )


class _Emitter:
    """Numbers a response stream's events and tracks its open message item."""

    def __init__(self, turn_id: str) -> None:
        self.turn_id = turn_id
        self.seq = -1
        self.output_index = -1
        self.message: OutputMessage | None = None
        self.text = ""
        self.streamed = ""

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def sse(self, event: BaseModel) -> ServerSentEvent:
        payload = event.model_dump(mode="json")
        return ServerSentEvent(data=json.dumps(payload), event=payload["type"])

    def item(self, kind: str, item: OutputItem) -> ServerSentEvent:
        event = ItemEvent(
            type=f"response.output_item.{kind}",
            sequence_number=self.next_seq(),
            output_index=self.output_index,
            item=item,
        )
        return self.sse(event)

    def part(self, kind: str, item_id: str, text: str) -> ServerSentEvent:
        event = PartEvent(
            type=f"response.content_part.{kind}",
            sequence_number=self.next_seq(),
            item_id=item_id,
            output_index=self.output_index,
            part=OutputText(text=text),
        )
        return self.sse(event)

    def tool(self, item: OutputItem) -> list[ServerSentEvent]:
        events = self.close_message()
        self.output_index += 1
        running = item
        if not isinstance(item, McpApprovalRequestItem):  # it has no status
            running = item.model_copy(update={"status": "in_progress"})
        return [*events, self.item("added", running), self.item("done", item)]

    def delta(self, text: str) -> list[ServerSentEvent]:
        events = [] if self.message is not None else self.open_message()
        assert self.message is not None
        self.text += text
        self.streamed += text
        delta = TextDeltaEvent(
            sequence_number=self.next_seq(),
            item_id=self.message.id,
            output_index=self.output_index,
            delta=text,
        )
        return [*events, self.sse(delta)]

    def open_message(self) -> list[ServerSentEvent]:
        self.output_index += 1
        self.message = OutputMessage(
            id=f"msg_{self.turn_id}_{self.output_index}", status="in_progress", content=[]
        )
        self.text = ""
        return [self.item("added", self.message), self.part("added", self.message.id, "")]

    def close_message(self) -> list[ServerSentEvent]:
        if self.message is None:
            return []
        message_id, text = self.message.id, self.text
        done = TextDoneEvent(
            sequence_number=self.next_seq(),
            item_id=message_id,
            output_index=self.output_index,
            text=text,
        )
        item = OutputMessage(id=message_id, content=[OutputText(text=text)])
        self.message = None
        return [self.sse(done), self.part("done", message_id, text), self.item("done", item)]

    def answer(self, final: ResponseObject) -> list[ServerSentEvent]:
        """What the deltas did not carry of the final answer, then the message closed."""
        answer = "".join(
            part.text
            for item in final.output
            if isinstance(item, OutputMessage)
            for part in item.content
        )
        rest = answer[len(self.streamed) :] if answer.startswith(self.streamed) else ""
        events = self.delta(rest) if rest else []
        return [*events, *self.close_message()]

    def response(self, kind: str, response: ResponseObject) -> ServerSentEvent:
        event = ResponseEvent(type=kind, sequence_number=self.next_seq(), response=response)
        return self.sse(event)


async def response_events(
    items: AsyncIterator[StreamItem],
    pending: ResponseObject,
    turn_id: str,
    finish: Callable[[], Awaitable[ResponseObject]],
) -> AsyncIterator[ServerSentEvent]:
    """The event sequence of a streamed response: created, in_progress, the tool call items (and
    approval requests), the message item (part added, text deltas, text done, part done, item
    done), then completed (also a turn that waits for approvals; ``response.failed`` for a
    failed or cancelled turn) carrying the stored response."""
    emit = _Emitter(turn_id)
    yield emit.response("response.created", pending)
    yield emit.response("response.in_progress", pending)
    async for item in items:
        if isinstance(item, Delta):
            for event in emit.delta(item.text):
                yield event
        elif isinstance(item, ev.ToolRequested | ev.ToolCompleted | ev.ToolApprovalRequested):
            tool = _tool_item(item)
            assert tool is not None
            for event in emit.tool(tool):
                yield event
    final = await finish()
    for event in emit.answer(final):
        yield event
    done = "response.completed" if final.status == "completed" else "response.failed"
    yield emit.response(done, final)
