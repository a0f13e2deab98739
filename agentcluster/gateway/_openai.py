"""The OpenAI-compatible API: ``/v1/models``, ``/v1/chat/completions`` and ``/v1/responses``,
a thin adapter over :class:`GatewayService` (same keys, tenants, policy, limits, idempotency and
events as the native API; no session model of its own).

``model`` is an agent's name; the agent's tools run server side and the answer is the turn's.

Continuity of chat completions: with an ``X-Session-Id`` header the request's last user message
is sent to that session, whose stored history is the context (the earlier messages of the
request are not sent again). Without it each request opens a new session (its id comes back in
the ``X-Session-Id`` response header) and its one user message carries the earlier messages of
the request as a plain transcript (``role: text`` lines under a header), followed by the last
user message: the agent sees them as text in one message, not as turns of its own.

Approvals: a response whose turn waits for a person holds ``mcp_approval_request`` items; a
request with its ``previous_response_id`` and only ``mcp_approval_response`` input items decides
them and continues that turn (see :mod:`._openai_responses`). Chat completions have no such
item: a turn that pauses there is answered as one still open (504 ``turn_timeout``; decide its
approvals through ``/v1/sessions/{id}/approvals``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse
from sse_starlette.sse import ServerSentEvent

from agentcluster import api
from agentcluster import events as ev
from agentcluster.domain import Submission
from agentcluster.gateway._approval_turns import Resumption, decide, follow_resumed, wait_resumed
from agentcluster.gateway._callers import CallerDep, ServiceDep
from agentcluster.gateway._openai_errors import (
    ERROR_RESPONSES,
    OpenAIApiError,
    OpenAIRoute,
    openai_error_body,
)
from agentcluster.gateway._openai_models import (
    ChatChoice,
    ChatChunkChoice,
    ChatChunkDelta,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionIn,
    ChatMessageIn,
    ChatMessageOut,
    CompletionUsage,
    InputMessage,
    McpApprovalResponseIn,
    ModelList,
    ModelOut,
    ResponseCreateIn,
    ResponseObject,
    TextPart,
)
from agentcluster.gateway._openai_responses import (
    STORE_KEY,
    ResponseOptions,
    SessionRef,
    TurnState,
    load_response,
    pending_response,
    response_events,
    response_id,
    response_of_turn,
    session_of_response,
)
from agentcluster.gateway._service import Caller, GatewayService
from agentcluster.gateway._streams import LeasedEventSource, release_on_error, release_shielded
from agentcluster.runtime import Delta, StreamItem

__all__ = ["SESSION_HEADER", "openai_router"]

SESSION_HEADER = "X-Session-Id"
HEARTBEAT_S = 15
CANCEL_WAIT_S = 5.0
EARLIER = "[Earlier messages of this conversation, sent by the client]"
CURRENT = "[Current message]"
_RESPONSE_SESSIONS: OrderedDict[tuple[str, str], SessionRef] = OrderedDict()
"""(tenant, response id) -> its session, for the responses this replica created: continuing
one with previous_response_id reads nothing (submitting authorizes and checks the session)."""
_RESPONSE_SESSIONS_KEPT = 10_000
_NO_RETRY = {"x-should-retry": "false"}  # the openai SDK would resend a failed turn otherwise

SessionHeader = Annotated[
    str | None,
    Header(
        alias=SESSION_HEADER,
        max_length=200,
        description="continue this session (ours, not OpenAI's); answered on every response",
    ),
]
IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=r"^[\x20-\x7e]{1,200}$",
        description="a resend to the same session returns the first turn (with X-Session-Id "
        "or previous_response_id; a request that opens a session opens a new one)",
    ),
]

openai_router = APIRouter(
    prefix="/v1", tags=["openai"], route_class=OpenAIRoute, responses=ERROR_RESPONSES
)

_SSE_OR_JSON = {
    "description": "The object, or with ``stream: true`` its events (text/event-stream)",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
    "headers": {
        SESSION_HEADER: {
            "description": "the session the turn ran in (send it back to continue)",
            "schema": {"type": "string"},
        }
    },
}


# -- inputs -----------------------------------------------------------------------------------


def _text(content: str | list[TextPart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def _transcript(earlier: list[tuple[str, str]], current: str) -> str:
    """One message carrying the client's earlier messages as text, then the current one."""
    if not earlier:
        return current
    lines = [EARLIER, *(f"{role}: {text}" for role, text in earlier), "", CURRENT, current]
    return "\n".join(lines)


def _last_user_text(messages: list[ChatMessageIn] | list[InputMessage], param: str) -> str:
    last = messages[-1]
    text = _text(last.content)
    if last.role != "user" or not text:
        raise OpenAIApiError(400, "the last message must be the user's, with text", param=param)
    return text


def _require_agent(service: GatewayService, model: str) -> None:
    if model not in service.profiles:
        message = f"The model {model!r} does not exist (models are this cluster's agents)"
        raise OpenAIApiError(404, message, code="model_not_found", param="model")


async def _session(
    service: GatewayService,
    caller: Caller,
    model: str,
    session_id: str | None,
    metadata: dict[str, Any],
) -> str:
    """The given session (of the caller's tenant, talking to ``model``), or a new one."""
    if session_id is None:
        body = api.SessionCreateIn(agent=model, metadata=metadata)
        return (await service.create_session(caller, body)).session_id
    session = await service.get_session(caller, session_id)
    _check_agent(session.agent, model, session_id)
    return session_id


def _check_agent(agent: str, model: str, session_id: str) -> None:
    if agent != model:
        message = f"session {session_id} talks to {agent!r}, not {model!r}"
        raise OpenAIApiError(400, message, code="model_mismatch", param="model")


def _message(content: str) -> api.MessageIn:
    return api.MessageIn(content=content)  # its length limit: 400 through the route's errors


def _turn_error(turn: api.TurnOut) -> OpenAIApiError:
    if turn.status == "failed":
        message = f"the agent's turn failed: {turn.error}"
        return OpenAIApiError(500, message, code="turn_failed", headers=_NO_RETRY)
    if turn.status == "cancelled":
        return OpenAIApiError(409, f"the turn was cancelled: {turn.error or ''}".strip(": "))
    message = f"turn {turn.turn_id} is still {turn.status}; see session {turn.session_id}"
    return OpenAIApiError(504, message, code="turn_timeout", headers=_NO_RETRY)


async def _started(items: AsyncIterator[StreamItem]) -> AsyncIterator[StreamItem]:
    """``items`` with its first item received: the session is subscribed and woken before the
    response starts, so the turn runs even if the client leaves at once."""
    first = await anext(items, None)

    async def chained() -> AsyncIterator[StreamItem]:
        if first is None:
            return
        yield first
        async for item in items:
            yield item

    return chained()


async def _submit_streamed(
    service: GatewayService,
    caller: Caller,
    session_id: str,
    content: str,
    key: str | None,
    body: Callable[[AsyncIterator[StreamItem], Submission], AsyncIterator[ServerSentEvent]],
) -> LeasedEventSource:
    """Commit the message holding an open-stream slot; ``body(items, submission)`` turns the
    turn's items into the response's events."""
    lease = await service.open_stream(caller)  # before the commit: a 429 leaves nothing
    async with release_on_error(lease):
        submission = await service.submit(caller, session_id, _message(content), key, notify=False)
        items = await _started(service.turn_items(caller, session_id, submission))
        events = body(items, submission)
    headers = {SESSION_HEADER: session_id}
    return LeasedEventSource(events, lease, ping=HEARTBEAT_S, headers=headers)


# -- models -----------------------------------------------------------------------------------


@openai_router.get("/models", response_model=ModelList)
async def list_models(caller: CallerDep, service: ServiceDep) -> ModelList:
    """The agents, as models."""
    return ModelList(data=[ModelOut(id=agent.name) for agent in service.agents(caller).items])


@openai_router.get("/models/{model}", response_model=ModelOut)
async def get_model(model: str, caller: CallerDep, service: ServiceDep) -> ModelOut:
    """One agent, as a model."""
    _require_agent(service, model)
    return ModelOut(id=model)


# -- chat completions -------------------------------------------------------------------------


def _chat_input(body: ChatCompletionIn, continued: bool) -> str:
    current = _last_user_text(body.messages, "messages")
    if continued:
        return current
    earlier = [(str(m.role), _text(m.content)) for m in body.messages[:-1]]
    return _transcript(earlier, current)


def _completion_usage(usage: ev.Usage) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


class _Chunks:
    """The chunks of one streamed chat completion."""

    def __init__(self, turn_id: str, model: str) -> None:
        self.head = {"id": f"chatcmpl-{turn_id}", "created": _now(), "model": model}

    def sse(self, chunk: ChatCompletionChunk) -> ServerSentEvent:
        return ServerSentEvent(data=chunk.model_dump_json())

    def choice(self, delta: ChatChunkDelta, finish: bool = False) -> ServerSentEvent:
        choice = ChatChunkChoice(delta=delta, finish_reason="stop" if finish else None)
        return self.sse(ChatCompletionChunk(**self.head, choices=[choice]))

    def usage(self, usage: ev.Usage) -> ServerSentEvent:
        chunk = ChatCompletionChunk(**self.head, choices=[], usage=_completion_usage(usage))
        return self.sse(chunk)


def _now() -> int:
    return int(time.time())


async def _chat_chunks(
    items: AsyncIterator[StreamItem], submission: Submission, model: str, include_usage: bool
) -> AsyncIterator[ServerSentEvent]:
    chunks = _Chunks(submission.turn_id, model)
    yield chunks.choice(ChatChunkDelta(role="assistant", content=""))
    streamed = ""
    async for item in items:
        if isinstance(item, Delta):
            streamed += item.text
            yield chunks.choice(ChatChunkDelta(content=item.text))
        elif isinstance(item, ev.TurnCompleted):
            rest = item.content[len(streamed) :] if item.content.startswith(streamed) else ""
            if rest:  # what the deltas did not carry (a missed or unstreamed answer)
                yield chunks.choice(ChatChunkDelta(content=rest))
            yield chunks.choice(ChatChunkDelta(), finish=True)
            if include_usage:
                yield chunks.usage(item.usage)
        elif isinstance(item, ev.TurnFailed | ev.TurnCancelled):
            reason = item.error if isinstance(item, ev.TurnFailed) else item.reason
            error = openai_error_body(500, f"the agent's turn ended: {reason}", item.type)
            yield ServerSentEvent(data=error.model_dump_json())
    yield ServerSentEvent(data="[DONE]")


@openai_router.post(
    "/chat/completions", response_model=ChatCompletion, responses={200: _SSE_OR_JSON}
)
async def create_chat_completion(
    body: ChatCompletionIn,
    caller: CallerDep,
    service: ServiceDep,
    session_id: SessionHeader = None,
    idempotency_key: IdempotencyHeader = None,
) -> Response:
    """A turn of the agent ``model``: the answer as a chat completion (or its chunks)."""
    _require_agent(service, body.model)
    content = _chat_input(body, continued=session_id is not None)
    session_id = await _session(
        service, caller, body.model, session_id, {"openai": "chat.completions"}
    )
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return await _submit_streamed(
            service,
            caller,
            session_id,
            content,
            idempotency_key,
            lambda items, sub: _chat_chunks(items, sub, body.model, usage),
        )
    turn = await service.ask(caller, session_id, _message(content), idempotency_key)
    if turn.status != "completed":
        raise _turn_error(turn)
    completion = ChatCompletion(
        id=f"chatcmpl-{turn.turn_id}",
        created=_now(),
        model=body.model,
        choices=[ChatChoice(message=ChatMessageOut(content=turn.content))],
        usage=_completion_usage(turn.usage),
    )
    return JSONResponse(completion.model_dump(mode="json"), headers={SESSION_HEADER: session_id})


# -- responses --------------------------------------------------------------------------------


def _approval_inputs(body: ResponseCreateIn) -> list[McpApprovalResponseIn]:
    """The request's ``mcp_approval_response`` items (then it has nothing else and continues
    ``previous_response_id``)."""
    if isinstance(body.input, str):
        return []
    found = [item for item in body.input if isinstance(item, McpApprovalResponseIn)]
    if found and len(found) != len(body.input):
        message = "send mcp_approval_response items alone (the turn they decide continues)"
        raise OpenAIApiError(400, message, param="input")
    if found and body.previous_response_id is None:
        message = "mcp_approval_response items need the previous_response_id that asked them"
        raise OpenAIApiError(400, message, param="previous_response_id")
    return found


def _response_input(body: ResponseCreateIn) -> str:
    if isinstance(body.input, str):
        current, earlier = body.input, list[tuple[str, str]]()
        if not current:
            raise OpenAIApiError(400, "input must not be empty", param="input")
    else:
        messages = [item for item in body.input if isinstance(item, InputMessage)]
        if not messages:
            raise OpenAIApiError(400, "input must not be empty", param="input")
        current = _last_user_text(messages, "input")
        earlier = [(str(m.role), _text(m.content)) for m in messages[:-1]]
    if body.instructions:
        earlier.insert(0, ("instructions", body.instructions))
    return _transcript(earlier, current)


async def _response_session(
    service: GatewayService, caller: Caller, body: ResponseCreateIn
) -> SessionRef:
    """A new session, or the session of ``previous_response_id`` (read once: its lookup is
    tenant-scoped and authorized, and submitting authorizes the message)."""
    if body.previous_response_id is None:
        metadata = {"openai": "responses", STORE_KEY: body.store}
        session_id = await _session(service, caller, body.model, None, metadata)
        return SessionRef(caller.tenant(), session_id, body.model, body.store)
    key = (caller.tenant(), body.previous_response_id)
    ref = _RESPONSE_SESSIONS.get(key)
    if ref is None:
        session, _turn = await session_of_response(
            service, caller, body.previous_response_id, "previous_response_id"
        )
        ref = SessionRef.of(session)
    _check_agent(ref.agent, body.model, ref.session_id)
    return ref


def _remember_session(ref: SessionRef, turn_id: str) -> None:
    """The session of a response this replica created, for the request that continues it (a
    response's session never changes; a stored response only)."""
    if not ref.store:
        return
    _RESPONSE_SESSIONS[(ref.tenant_id, response_id(turn_id))] = ref
    while len(_RESPONSE_SESSIONS) > _RESPONSE_SESSIONS_KEPT:
        _RESPONSE_SESSIONS.popitem(last=False)


def _options(body: ResponseCreateIn) -> ResponseOptions:
    return ResponseOptions(
        store=body.store,
        background=body.background,
        instructions=body.instructions,
        previous_response_id=body.previous_response_id,
        metadata=body.metadata or {},
    )


async def _ask_response(
    service: GatewayService, caller: Caller, session_id: str, content: str, key: str | None
) -> tuple[Submission, TurnState]:
    """Send and wait for the turn's end, holding an open-stream slot (as ``?wait=true``)."""
    lease = await service.open_stream(caller)
    try:
        submission = await service.submit(caller, session_id, _message(content), key, notify=False)
        return submission, TurnState.of(await service.wait(caller, session_id, submission))
    finally:
        await release_shielded(lease)


@openai_router.post("/responses", response_model=ResponseObject, responses={200: _SSE_OR_JSON})
async def create_response(
    body: ResponseCreateIn,
    caller: CallerDep,
    service: ServiceDep,
    idempotency_key: IdempotencyHeader = None,
) -> Response:
    """A turn of the agent ``model`` as a response (streamed, in the background, or waited);
    with ``mcp_approval_response`` items, the previous response's turn decided and continued."""
    _require_agent(service, body.model)
    approvals = _approval_inputs(body)
    content = "" if approvals else _response_input(body)
    session = await _response_session(service, caller, body)
    if approvals:
        return await _continue_response(service, caller, body, session, approvals)
    session_id = session.session_id
    options = _options(body)

    async def finish(submission: Submission, known: TurnState | None = None) -> ResponseObject:
        after = max(submission.seq - 1, 0)
        turn_id = submission.turn_id
        _remember_session(session, turn_id)
        return await response_of_turn(service, session, turn_id, options, after, known)

    if body.stream:

        def events(
            items: AsyncIterator[StreamItem], sub: Submission
        ) -> AsyncIterator[ServerSentEvent]:
            pending = pending_response(sub.turn_id, body.model, options)
            return response_events(items, pending, sub.turn_id, lambda: finish(sub))

        return await _submit_streamed(service, caller, session_id, content, idempotency_key, events)
    known: TurnState | None = None
    if body.background:
        message = _message(content)
        submission = await service.submit(caller, session_id, message, idempotency_key)
    else:
        submission, known = await _ask_response(
            service, caller, session_id, content, idempotency_key
        )
    response = await finish(submission, known)
    return JSONResponse(response.model_dump(mode="json"), headers={SESSION_HEADER: session_id})


def _decisions(approvals: list[McpApprovalResponseIn]) -> list[tuple[str, api.ApprovalDecisionIn]]:
    return [
        (
            item.approval_request_id,
            api.ApprovalDecisionIn(
                decision="approve" if item.approve else "reject", message=item.reason
            ),
        )
        for item in approvals
    ]


async def _continue_response(
    service: GatewayService,
    caller: Caller,
    body: ResponseCreateIn,
    session: SessionRef,
    approvals: list[McpApprovalResponseIn],
) -> Response:
    """Decide the previous response's waiting calls, then its turn from the decisions on (the
    same response id): streamed, in the background (as it stands), or waited for its next end
    or pause. While some of its calls still wait, the turn as it stands (those requests)."""
    options = _options(body)
    headers = {SESSION_HEADER: session.session_id}
    if body.stream:
        lease = await service.open_stream(caller)
        async with release_on_error(lease):
            resumption = await decide(service, caller, session.session_id, _decisions(approvals))
            events = await _continued_events(service, caller, session, resumption, options)
        return LeasedEventSource(events, lease, ping=HEARTBEAT_S, headers=headers)
    resumption = await decide(service, caller, session.session_id, _decisions(approvals))
    known: TurnState | None = None
    if resumption.resumed and not body.background:
        known = TurnState.of(await wait_resumed(service, caller, resumption))
    after = resumption.after_seq if resumption.resumed else 0
    _remember_session(session, resumption.turn_id)
    response = await response_of_turn(service, session, resumption.turn_id, options, after, known)
    return JSONResponse(response.model_dump(mode="json"), headers=headers)


async def _continued_events(
    service: GatewayService,
    caller: Caller,
    session: SessionRef,
    resumption: Resumption,
    options: ResponseOptions,
) -> AsyncIterator[ServerSentEvent]:
    """The events of a continued response (its turn's items after the decisions)."""
    after = resumption.after_seq if resumption.resumed else 0
    turn_id = resumption.turn_id

    async def finish() -> ResponseObject:
        _remember_session(session, turn_id)
        return await response_of_turn(service, session, turn_id, options, after)

    async def nothing() -> AsyncIterator[StreamItem]:
        none: tuple[StreamItem, ...] = ()
        for item in none:
            yield item

    items = nothing()
    if resumption.resumed:
        items = await _started(follow_resumed(service, caller, resumption))
    pending = pending_response(turn_id, session.agent, options)
    return response_events(items, pending, turn_id, finish)


@openai_router.get("/responses/{response_id}", response_model=ResponseObject)
async def get_response(response_id: str, caller: CallerDep, service: ServiceDep) -> ResponseObject:
    """A stored response of the caller's tenant, as it stands now."""
    return await load_response(service, caller, response_id)


@openai_router.post("/responses/{response_id}/cancel", response_model=ResponseObject)
async def cancel_response(
    response_id: str, caller: CallerDep, service: ServiceDep
) -> ResponseObject:
    """Cancel the response's turn (queued, running or waiting for approvals) and answer the
    response once the turn has ended (or after CANCEL_WAIT_S, still in progress); an ended turn
    is answered as it is."""
    session, turn = await session_of_response(service, caller, response_id)
    if turn.status in ("queued", "running", "awaiting_approval"):
        await service.cancel(caller, session.session_id, turn.turn_id)
        submission = Submission(message_id=turn.message_id, turn_id=turn.turn_id, created=False)
        await service.runtime.wait_turn(
            session.tenant_id, session.session_id, submission, CANCEL_WAIT_S
        )
    return await response_of_turn(service, SessionRef.of(session), turn.turn_id, ResponseOptions())
