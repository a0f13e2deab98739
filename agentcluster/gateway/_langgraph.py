"""The LangGraph Agent Server compatible API under ``/langgraph``: enough of it for
``langgraph-sdk``'s ``get_client(url=<gateway>/langgraph)`` (and ``get_sync_client``), as a thin
adapter over :class:`GatewayService` (same keys, tenants, policy, limits, idempotency and events
as the native API; no session model of its own).

Assistants are the agents (``assistant_id`` is the agent's name or ``uuid5`` of it, as LangGraph
names a graph's default assistant), threads are sessions, runs are turns. A run sends the last
message of its ``input`` to the thread's session (earlier ones as a transcript before it); the
session's stored history is the context. ``multitask_strategy`` is the native API's:
``enqueue`` (the default) queues the turn after the open ones, ``reject`` answers 409 while a
turn is open (nothing stored), ``interrupt`` cancels the open turns and runs, ``rollback`` also
hides their messages (from the model and from the thread's state). Stateless runs
(``/runs/...``) open a new session. A turn whose tool calls wait for a person is an interrupted
run (see :mod:`._langgraph_resume`): ``runs/wait`` answers the values with ``__interrupt__``,
a stream ends with it, and a run with ``command: {"resume": ...}`` continues it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from sse_starlette.sse import ServerSentEvent

from agentcluster import api
from agentcluster.agent import AgentProfile
from agentcluster.domain import Submission
from agentcluster.gateway._approval_turns import (
    Resumption,
    decide,
    follow_resumed,
    wait_resumed,
)
from agentcluster.gateway._callers import ServiceDep
from agentcluster.gateway._langgraph_errors import (
    ERROR_RESPONSES,
    LangGraphApiError,
    LangGraphCallerDep,
    LangGraphRoute,
)
from agentcluster.gateway._langgraph_messages import (
    RunStatus,
    assistant_id,
    input_text,
    messages_of,
)
from agentcluster.gateway._langgraph_models import (
    AssistantOut,
    AssistantSearchIn,
    GraphSchemaOut,
    HistoryIn,
    InfoOut,
    RunCreateIn,
    RunOut,
    ThreadCreateIn,
    ThreadOut,
    ThreadSearchIn,
    ThreadStateOut,
)
from agentcluster.gateway._langgraph_resume import (
    interrupts_of,
    resume_decisions,
    waiting_approvals,
)
from agentcluster.gateway._langgraph_stream import (
    EVENT_ID_PATTERN,
    STREAM_MODES,
    EventId,
    RunStream,
    StreamMode,
    parse_event_id,
)
from agentcluster.gateway._langgraph_threads import (
    Session,
    agent_of,
    assistant_out,
    ended,
    graph_of,
    history_of,
    run_of_turn,
    schemas_of,
    state_of,
    thread_out,
    thread_session,
    thread_turn,
    thread_view,
    turn_records,
)
from agentcluster.gateway._service import WAIT_TIMEOUT_S, Caller, GatewayService
from agentcluster.gateway._streams import LeasedEventSource, release_on_error, release_shielded
from agentcluster.runtime import StreamItem

__all__ = ["LANGGRAPH_PREFIX", "langgraph_router"]

LANGGRAPH_PREFIX = "/langgraph"
HEARTBEAT_S = 15
SEARCH_SCAN = 10_000
"""Thread search reads at most this many of the tenant's sessions (newest first after)."""
JOIN_MODES = frozenset({"values"})

langgraph_router = APIRouter(
    prefix=LANGGRAPH_PREFIX,
    tags=["langgraph"],
    route_class=LangGraphRoute,
    responses=ERROR_RESPONSES,
)

IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=r"^[\x20-\x7e]{1,200}$",
        description="a resend to the same thread returns the first run (ours, not LangGraph's)",
    ),
]
_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "description": "metadata, a stream mode's name, error, end"},
        "data": {"type": "string", "description": "JSON"},
        "id": {"type": "string", "pattern": EVENT_ID_PATTERN, "description": "Last-Event-ID"},
        "retry": {"type": "integer"},
    },
}
_SSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The run's events (text/event-stream), one per stream mode",
        "content": {"text/event-stream": {"schema": _SSE_EVENT}},
    }
}


# -- info and assistants ----------------------------------------------------------------------


@langgraph_router.get("/info", response_model=InfoOut)
async def info() -> InfoOut:
    """What this server is and which optional parts of the API it has."""
    flags = {"assistants": True, "crons": False, "langsmith": False, "store": False}
    return InfoOut(version="agentcluster-langgraph-1", flags=flags)


def _matches(subset: dict[str, Any] | None, metadata: dict[str, Any]) -> bool:
    return not subset or all(metadata.get(key) == value for key, value in subset.items())


@langgraph_router.post("/assistants/search", response_model=list[AssistantOut])
async def search_assistants(
    body: AssistantSearchIn, caller: LangGraphCallerDep, service: ServiceDep
) -> Response:
    """The agents as assistants (``X-Pagination-Next`` when more follow)."""
    found = [
        assistant_out(profile)
        for profile in service.profiles.values()
        if (body.graph_id is None or profile.name == body.graph_id)
        and (body.name is None or profile.name == body.name)
    ]
    found = [item for item in found if _matches(body.metadata, item.metadata)]
    key = body.sort_by or "created_at"
    found.sort(key=lambda item: (str(getattr(item, key)), item.name))
    if body.sort_order == "desc":
        found.reverse()
    page = found[body.offset : body.offset + body.limit]
    headers = {}
    if body.offset + body.limit < len(found):
        headers["X-Pagination-Next"] = str(body.offset + body.limit)
    return JSONResponse([item.model_dump(mode="json") for item in page], headers=headers)


@langgraph_router.get("/assistants/{assistant_id}", response_model=AssistantOut)
async def get_assistant(
    assistant_id: str, caller: LangGraphCallerDep, service: ServiceDep
) -> AssistantOut:
    """One agent as an assistant (by its id or its name)."""
    return assistant_out(agent_of(service, assistant_id))


@langgraph_router.get("/assistants/{assistant_id}/schemas", response_model=GraphSchemaOut)
async def get_assistant_schemas(
    assistant_id: str, caller: LangGraphCallerDep, service: ServiceDep
) -> GraphSchemaOut:
    """The agent's input, output and state: ``{"messages": [...]}``."""
    return schemas_of(agent_of(service, assistant_id))


@langgraph_router.get("/assistants/{assistant_id}/graph")
async def get_assistant_graph(
    assistant_id: str,
    caller: LangGraphCallerDep,
    service: ServiceDep,
    xray: Annotated[str | None, Query(max_length=10)] = None,
) -> dict[str, list[dict[str, Any]]]:
    """The agent drawn as LangGraph's ReAct graph (``agent`` and ``tools`` nodes)."""
    return graph_of(agent_of(service, assistant_id))


@langgraph_router.get("/assistants/{assistant_id}/subgraphs")
async def get_assistant_subgraphs(
    assistant_id: str, caller: LangGraphCallerDep, service: ServiceDep
) -> dict[str, Any]:
    """None: an agent has no subgraphs."""
    agent_of(service, assistant_id)
    return {}


# -- threads ----------------------------------------------------------------------------------


def _default_agent(service: GatewayService) -> str:
    return "default" if "default" in service.profiles else sorted(service.profiles)[0]


async def _new_thread(
    service: GatewayService, caller: Caller, agent: str, metadata: dict[str, Any]
) -> Session:
    body = api.SessionCreateIn(agent=agent, metadata=metadata)
    return Session.of(caller.tenant(), await service.create_session(caller, body))


async def _existing_thread(
    service: GatewayService, caller: Caller, thread_id: str
) -> Session | None:
    try:
        return await thread_session(service, caller, thread_id)
    except LangGraphApiError as exc:
        if exc.status == 404:
            return None
        raise


_ASSIGNED = "thread ids are assigned by this server: create the thread without thread_id"


@langgraph_router.post("/threads", response_model=ThreadOut)
async def create_thread(
    body: ThreadCreateIn, caller: LangGraphCallerDep, service: ServiceDep
) -> ThreadOut:
    """A new session of the agent named by ``metadata.graph_id`` (else the default agent); with
    the ``thread_id`` of an existing thread, that thread (``if_exists: do_nothing``) or 409."""
    if body.thread_id is not None:
        existing = await _existing_thread(service, caller, body.thread_id)
        if existing is None:
            raise LangGraphApiError(404, f"Thread {body.thread_id!r} not found ({_ASSIGNED})")
        if body.if_exists == "raise":
            raise LangGraphApiError(409, f"Thread {body.thread_id!r} already exists")
        return thread_out(await thread_view(service, existing))
    metadata = dict(body.metadata or {})
    agent = metadata.pop("graph_id", None) or _default_agent(service)
    agent = agent_of(service, str(agent)).name
    session = await _new_thread(service, caller, agent, metadata)
    return thread_out(await thread_view(service, session))


async def _tenant_sessions(service: GatewayService, caller: Caller) -> list[Session]:
    """The tenant's open sessions (at most SEARCH_SCAN read), newest first."""
    found: list[Session] = []
    cursor: str | None = None
    while len(found) < SEARCH_SCAN:
        page = await service.list_sessions(caller, 200, cursor)
        tenant_id = caller.tenant()
        found.extend(Session.of(tenant_id, s) for s in page.items if s.status != "closed")
        cursor = page.next_cursor
        if cursor is None:
            break
    found.sort(key=lambda session: (session.created_at, session.session_id), reverse=True)
    return found


def _sorted(sessions: list[Session], body: ThreadSearchIn) -> list[Session]:
    key = body.sort_by or "created_at"
    if key == "thread_id":
        sessions.sort(key=lambda session: session.session_id)
    elif key == "updated_at":
        sessions.sort(key=lambda session: session.updated_at)
    else:
        sessions.sort(key=lambda session: (session.created_at, session.session_id))
    if (body.sort_order or "desc") == "desc":
        sessions.reverse()
    return sessions


@langgraph_router.post("/threads/search", response_model=list[ThreadOut])
async def search_threads(
    body: ThreadSearchIn, caller: LangGraphCallerDep, service: ServiceDep
) -> list[ThreadOut]:
    """The tenant's threads (sessions) matching ``ids``, ``metadata`` and ``status``."""
    candidates = [
        session
        for session in await _tenant_sessions(service, caller)
        if (body.ids is None or session.session_id in body.ids)
        and _matches(body.metadata, {**session.metadata, "graph_id": session.agent})
    ]
    found: list[ThreadOut] = []
    skip = body.offset
    for session in _sorted(candidates, body):
        thread = thread_out(await thread_view(service, session))
        if body.status is not None and thread.status != body.status:
            continue
        if skip:
            skip -= 1
            continue
        found.append(thread)
        if len(found) == body.limit:
            break
    return found


@langgraph_router.get("/threads/{thread_id}", response_model=ThreadOut)
async def get_thread(thread_id: str, caller: LangGraphCallerDep, service: ServiceDep) -> ThreadOut:
    """A thread with its messages (``values``) and status."""
    return thread_out(await thread_view(service, await thread_session(service, caller, thread_id)))


@langgraph_router.delete("/threads/{thread_id}", status_code=204)
async def delete_thread(
    thread_id: str, caller: LangGraphCallerDep, service: ServiceDep
) -> Response:
    """Close the thread's session (its history stays readable through the native API)."""
    session = await thread_session(service, caller, thread_id)
    await service.close_session(caller, session.session_id)
    return Response(status_code=204)


@langgraph_router.get("/threads/{thread_id}/state", response_model=ThreadStateOut)
async def get_thread_state(
    thread_id: str,
    caller: LangGraphCallerDep,
    service: ServiceDep,
    subgraphs: bool = False,
) -> ThreadStateOut:
    """The thread's messages now, checkpointed at the last of them."""
    return state_of(await thread_view(service, await thread_session(service, caller, thread_id)))


@langgraph_router.post("/threads/{thread_id}/history", response_model=list[ThreadStateOut])
async def get_thread_history(
    thread_id: str, body: HistoryIn, caller: LangGraphCallerDep, service: ServiceDep
) -> list[ThreadStateOut]:
    """The thread's state at the end of each turn, newest first."""
    view = await thread_view(service, await thread_session(service, caller, thread_id))
    return history_of(view, body.limit, body.before)


# -- runs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    """A run about to start: its thread's session, agent and message."""

    session: Session
    profile: AgentProfile
    message: api.MessageIn | None
    """None: the run resumes the thread's interrupted run (``command``)."""
    stateless: bool = False
    resume: Any = None
    """``command.resume``: the decisions on the thread's interrupts."""


def _input_message(body: RunCreateIn) -> api.MessageIn | None:
    if body.input is None:
        return None
    try:
        content = input_text(body.input.model_dump(), api.MAX_CONTENT_CHARS)
    except ValueError as exc:  # the model's rules already hold: a second line of defence
        raise LangGraphApiError(422, str(exc)) from None
    return api.MessageIn(content=content, multitask_strategy=body.multitask_strategy)


async def _prepare(
    service: GatewayService, caller: Caller, thread_id: str | None, body: RunCreateIn
) -> _Run:
    """Check the request and find (or, stateless, open) the run's session."""
    message = _input_message(body)
    profile = agent_of(service, body.assistant_id)
    if thread_id is None and message is None:
        detail = "a stateless run opens a new thread, which has no interrupt to resume"
        raise LangGraphApiError(409, detail)
    if thread_id is None:
        session = await _new_thread(service, caller, profile.name, {"langgraph": "stateless"})
        return _Run(session, profile, message, stateless=True)
    found = await _existing_thread(service, caller, thread_id)
    if found is None:
        raise LangGraphApiError(404, f"Thread {thread_id!r} not found ({_ASSIGNED})")
    if found.agent != profile.name:
        detail = f"Thread {thread_id!r} talks to assistant {found.agent!r}, not {profile.name!r}"
        raise LangGraphApiError(409, detail)
    resume = body.command.resume if body.command is not None else None
    return _Run(found, profile, message, resume=resume)


def _run_url(request: Request, thread_id: str, run_id: str) -> str:
    base = str(request.base_url).rstrip("/")
    return f"{base}{LANGGRAPH_PREFIX}/threads/{thread_id}/runs/{run_id}"


def _stream_headers(
    request: Request, thread_id: str, run_id: str, modes: frozenset[str]
) -> dict[str, str]:
    """Where the run is, and where its stream resumes (the SDK reconnects there with
    Last-Event-ID, keeping the stream modes)."""
    run_url = _run_url(request, thread_id, run_id)
    query = urlencode([("stream_mode", mode) for mode in sorted(modes)])
    return {"Content-Location": run_url, "Location": f"{run_url}/stream?{query}"}


async def _started(items: AsyncIterator[StreamItem]) -> AsyncIterator[StreamItem]:
    """``items`` with its first item received: the session is subscribed and woken before the
    response starts, so the turn runs even if the client leaves at once."""
    first = await anext(items, None)

    async def chained() -> AsyncIterator[StreamItem]:
        try:
            if first is None:
                return
            yield first
            async for item in items:
                yield item
        finally:
            close = getattr(items, "aclose", None)
            if close is not None:
                await close()

    return chained()


async def _history_before(
    service: GatewayService, session: Session, message_id: str | None
) -> list[dict[str, Any]]:
    """The thread's messages before the user message ``message_id`` (all without it)."""
    stored = await service.runtime.store.list_messages(session.tenant_id, session.session_id)
    messages = messages_of(stored)
    ids = [message["id"] for message in messages]
    return messages[: ids.index(message_id)] if message_id in ids else messages


def _sse(data: Any, event: str, event_id: str | None = None) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(data, default=str), event=event, id=event_id)


async def _run_events(
    translator: RunStream,
    items: AsyncIterator[StreamItem],
    on_exit: Callable[[bool], Awaitable[None]],
) -> AsyncIterator[ServerSentEvent]:
    """The run's SSE events: ``metadata``, then the stream modes' events until the turn ends;
    ``on_exit(ended)`` runs last (shielded: also when the client went away)."""
    try:
        yield _sse({"run_id": translator.run_id, "attempt": 1}, "metadata")
        async for item in items:
            for out in translator.feed(item):
                yield _sse(out.data, out.event, out.event_id)
            if translator.ended or translator.cut:
                break
    finally:
        with anyio.CancelScope(shield=True):
            close = getattr(items, "aclose", None)
            if close is not None:
                await close()
            await on_exit(translator.ended)


def _exit_action(
    service: GatewayService, caller: Caller, run: _Run, turn_id: str, body: RunCreateIn
) -> Callable[[bool], Awaitable[None]]:
    """What ends a streamed run: cancel it if the client left (``on_disconnect: cancel``);
    close a stateless run's session once it ended (``on_completion: delete``)."""

    async def on_exit(turn_ended: bool) -> None:
        if not turn_ended and body.on_disconnect == "cancel":
            await service.cancel(caller, run.session.session_id, turn_id)
        if turn_ended and _deletes(run, body):
            await service.close_session(caller, run.session.session_id)

    return on_exit


def _deletes(run: _Run, body: RunCreateIn) -> bool:
    # LangGraph deletes a stateless run's thread unless asked to keep it.
    explicit = "on_completion" in body.model_fields_set
    return run.stateless and (body.on_completion == "delete" or not explicit)


async def _stream(
    request: Request,
    service: GatewayService,
    caller: Caller,
    run: _Run,
    body: RunCreateIn,
    key: str | None,
) -> Response:
    modes = body.modes()
    session_id = run.session.session_id
    if run.message is None:
        return await _stream_resumed(request, service, caller, run, body)
    lease = await service.open_stream(caller)  # before the commit: a 429 leaves nothing
    async with release_on_error(lease):
        history = []
        if modes & {"values", "events"}:
            history = await _history_before(service, run.session, None)
        submission = await service.submit(caller, session_id, run.message, key, notify=False)
        items = await _started(service.turn_items(caller, session_id, submission))
    translator = RunStream(
        run_id=submission.turn_id,
        thread_id=session_id,
        assistant=assistant_id(run.profile.name),
        graph_id=run.profile.name,
        modes=modes,
        history=history,
    )
    on_exit = _exit_action(service, caller, run, submission.turn_id, body)
    events = _run_events(translator, items, on_exit)
    headers = _stream_headers(request, session_id, submission.turn_id, modes)
    return LeasedEventSource(events, lease, ping=HEARTBEAT_S, headers=headers)


def _turn_position(history: list[dict[str, Any]], turn_id: str) -> int:
    """How many of the turn's messages after the user's are in ``history``."""
    return sum(1 for message in history if str(message.get("id", "")).startswith(turn_id + "-"))


async def _still_interrupted(
    translator: RunStream, interrupts: list[dict[str, Any]]
) -> AsyncIterator[ServerSentEvent]:
    """The stream of a resume that left calls waiting: the run is still interrupted."""
    yield _sse({"run_id": translator.run_id, "attempt": 1}, "metadata")
    values = {"messages": translator.history, "__interrupt__": interrupts}
    for event, data in (("updates", {"__interrupt__": interrupts}), ("values", values)):
        if event in translator.modes:
            yield _sse(data, event)


async def _stream_resumed(
    request: Request, service: GatewayService, caller: Caller, run: _Run, body: RunCreateIn
) -> Response:
    """A resuming run, streamed: decide, then the turn's items from the decisions on."""
    modes = body.modes()
    session_id = run.session.session_id
    lease = await service.open_stream(caller)
    async with release_on_error(lease):
        history = await _history_before(service, run.session, None)
        resumption = await _resume(service, caller, run, run.resume)
        items = None
        if resumption.resumed:
            items = await _started(follow_resumed(service, caller, resumption))
    turn_id = resumption.turn_id
    translator = RunStream(
        run_id=turn_id,
        thread_id=session_id,
        assistant=assistant_id(run.profile.name),
        graph_id=run.profile.name,
        modes=modes,
        history=history,
        first_position=_turn_position(history, turn_id),
    )
    headers = _stream_headers(request, session_id, turn_id, modes)
    if items is None:
        interrupts = await interrupts_of(service, caller, session_id, turn_id)
        events = _still_interrupted(translator, interrupts)
    else:
        events = _run_events(translator, items, _exit_action(service, caller, run, turn_id, body))
    return LeasedEventSource(events, lease, ping=HEARTBEAT_S, headers=headers)


async def _values(service: GatewayService, session: Session) -> dict[str, Any]:
    stored = await service.runtime.store.list_messages(session.tenant_id, session.session_id)
    return {"messages": messages_of(stored)}


async def _wait(
    request: Request, service: GatewayService, caller: Caller, run: _Run, key: str | None
) -> Response:
    """Send and wait for the turn's end (as ``?wait=true``); the thread's values after it (with
    ``__interrupt__`` when it waits for approvals), or ``__error__`` for a failed turn (the SDK
    raises it). A resuming run decides, then waits for the resumed turn."""
    session_id = run.session.session_id
    if run.message is None:
        resumption = await _resume(service, caller, run, run.resume)
        turn = await wait_resumed(service, caller, resumption)
    else:
        turn = await service.ask(caller, session_id, run.message, key)
    if turn.status == "failed":
        values: dict[str, Any] = {"__error__": {"error": "TurnFailed", "message": turn.error}}
    else:
        values = await _values(service, run.session)
    if turn.status == "awaiting_approval":
        values["__interrupt__"] = await interrupts_of(service, caller, session_id, turn.turn_id)
    run_url = _run_url(request, session_id, turn.turn_id)
    headers = {"Content-Location": run_url, "Location": f"{run_url}/join"}
    return JSONResponse(values, headers=headers)


async def _create(service: GatewayService, caller: Caller, run: _Run, key: str | None) -> RunOut:
    """A background run: the message committed (or the interrupt decided: pending again once
    no call waits, still interrupted while some do)."""
    if run.message is None:
        resumption = await _resume(service, caller, run, run.resume)
        turn_id = resumption.turn_id
        status: RunStatus = "pending" if resumption.resumed else "interrupted"
    else:
        submission = await service.submit(caller, run.session.session_id, run.message, key)
        turn_id, status = submission.turn_id, "pending"
    now = datetime.now(UTC).isoformat()
    return RunOut(
        run_id=turn_id,
        thread_id=run.session.session_id,
        assistant_id=assistant_id(run.profile.name),
        created_at=now,
        updated_at=now,
        status=status,
    )


# -- resuming an interrupted run ----------------------------------------------------------------


async def _resume(service: GatewayService, caller: Caller, run: _Run, resume: Any) -> Resumption:
    """Decide the thread's interrupts as ``resume`` says."""
    session_id = run.session.session_id
    waiting = await waiting_approvals(service, caller, session_id)
    return await decide(service, caller, session_id, resume_decisions(resume, waiting))


@langgraph_router.post("/threads/{thread_id}/runs", response_model=RunOut)
async def create_run(
    thread_id: str,
    body: RunCreateIn,
    caller: LangGraphCallerDep,
    service: ServiceDep,
    idempotency_key: IdempotencyHeader = None,
) -> RunOut:
    """A run in the background: the turn is committed and queued."""
    run = await _prepare(service, caller, thread_id, body)
    return await _create(service, caller, run, idempotency_key)


@langgraph_router.post("/threads/{thread_id}/runs/stream", responses=_SSE)
async def stream_run(
    thread_id: str,
    body: RunCreateIn,
    request: Request,
    caller: LangGraphCallerDep,
    service: ServiceDep,
    idempotency_key: IdempotencyHeader = None,
) -> Response:
    """A run, streamed in the requested ``stream_mode``s."""
    run = await _prepare(service, caller, thread_id, body)
    return await _stream(request, service, caller, run, body, idempotency_key)


@langgraph_router.post("/threads/{thread_id}/runs/wait")
async def wait_run(
    thread_id: str,
    body: RunCreateIn,
    request: Request,
    caller: LangGraphCallerDep,
    service: ServiceDep,
    idempotency_key: IdempotencyHeader = None,
) -> Response:
    """A run, answered with the thread's values once it ended."""
    run = await _prepare(service, caller, thread_id, body)
    return await _wait(request, service, caller, run, idempotency_key)


@langgraph_router.post("/runs", response_model=RunOut)
async def create_stateless_run(
    body: RunCreateIn,
    caller: LangGraphCallerDep,
    service: ServiceDep,
    idempotency_key: IdempotencyHeader = None,
) -> RunOut:
    """A background run in a new thread (kept: its session is the run's record)."""
    run = await _prepare(service, caller, None, body)
    return await _create(service, caller, run, idempotency_key)


@langgraph_router.post("/runs/stream", responses=_SSE)
async def stream_stateless_run(
    body: RunCreateIn, request: Request, caller: LangGraphCallerDep, service: ServiceDep
) -> Response:
    """A streamed run in a new thread (closed after the run unless ``on_completion: keep``)."""
    run = await _prepare(service, caller, None, body)
    return await _stream(request, service, caller, run, body, None)


@langgraph_router.post("/runs/wait")
async def wait_stateless_run(
    body: RunCreateIn, request: Request, caller: LangGraphCallerDep, service: ServiceDep
) -> Response:
    """A waited run in a new thread (closed after the run unless ``on_completion: keep``)."""
    run = await _prepare(service, caller, None, body)
    response = await _wait(request, service, caller, run, None)
    if _deletes(run, body):
        await service.close_session(caller, run.session.session_id)
    return response


@langgraph_router.get("/threads/{thread_id}/runs", response_model=list[RunOut])
async def list_runs(
    thread_id: str,
    caller: LangGraphCallerDep,
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    offset: Annotated[int, Query(ge=0)] = 0,
    status: str | None = None,
) -> list[RunOut]:
    """The thread's runs (turns), newest first."""
    session = await thread_session(service, caller, thread_id)
    runs = [record.run(session) for record in reversed(await turn_records(service, session))]
    runs = [run for run in runs if status is None or run.status == status]
    return runs[offset : offset + limit]


@langgraph_router.get("/threads/{thread_id}/runs/{run_id}", response_model=RunOut)
async def get_run(
    thread_id: str, run_id: str, caller: LangGraphCallerDep, service: ServiceDep
) -> RunOut:
    """A run (turn) of the thread, as it stands."""
    session, turn = await thread_turn(service, caller, thread_id, run_id)
    return run_of_turn(turn, session.agent)


async def _wait_ended(
    service: GatewayService, caller: Caller, session: Session, message_id: str, turn_id: str
) -> None:
    """Wait (up to WAIT_TIMEOUT_S, holding an open-stream slot) for the turn to end."""
    lease = await service.open_stream(caller)
    try:
        submission = Submission(message_id=message_id, turn_id=turn_id, created=False)
        await service.runtime.wait_turn(
            session.tenant_id, session.session_id, submission, WAIT_TIMEOUT_S
        )
    finally:
        await release_shielded(lease)


@langgraph_router.get("/threads/{thread_id}/runs/{run_id}/join")
async def join_run(
    thread_id: str, run_id: str, caller: LangGraphCallerDep, service: ServiceDep
) -> dict[str, Any]:
    """Wait for the run to end; the thread's values then (an interrupted run answers at once,
    with ``__interrupt__``)."""
    session, turn = await thread_turn(service, caller, thread_id, run_id)
    if not ended(turn.status) and turn.status != "awaiting_approval":
        await _wait_ended(service, caller, session, turn.message_id, turn.turn_id)
        turn = (await thread_turn(service, caller, thread_id, run_id))[1]
    values = await _values(service, session)
    if turn.status == "awaiting_approval":
        values["__interrupt__"] = await interrupts_of(
            service, caller, session.session_id, turn.turn_id
        )
    return values


def _join_modes(stream_mode: Sequence[str]) -> frozenset[str]:
    modes = frozenset(mode for mode in stream_mode if mode)
    return modes or JOIN_MODES


def _resume_id(last_event_id: str | None) -> EventId | None:
    try:
        return parse_event_id(last_event_id)
    except ValueError as exc:
        raise LangGraphApiError(422, str(exc)) from None


@langgraph_router.get("/threads/{thread_id}/runs/{run_id}/stream", responses=_SSE)
async def join_run_stream(
    thread_id: str,
    run_id: str,
    caller: LangGraphCallerDep,
    service: ServiceDep,
    stream_mode: Annotated[
        list[StreamMode | Literal[""]], Query(max_length=len(STREAM_MODES))
    ] = [],  # noqa: B006 (FastAPI copies a default per request)
    cancel_on_disconnect: bool = False,
    last_event_id: Annotated[
        str,
        Header(
            pattern=EVENT_ID_PATTERN,
            description="resume after this event (``<seq>-<index>``, an ``id:`` of the stream)",
        ),
    ] = "",
) -> Response:
    """The run's stream from its start (replayed from the store, then live), or after
    ``Last-Event-ID``; ``stream_mode`` as the run was created with (default ``values``)."""
    modes = _join_modes(stream_mode)
    resume = _resume_id(last_event_id)
    session, turn = await thread_turn(service, caller, thread_id, run_id)
    records = await turn_records(service, session)
    record = next((r for r in records if r.turn_id == turn.turn_id), None)
    if record is None:  # its message.received is committed with it: only a race gets here
        raise LangGraphApiError(404, f"Run {run_id!r} has no events yet")
    lease = await service.open_stream(caller)
    async with release_on_error(lease):
        history = await _history_before(service, session, turn.message_id)
        start = Submission(
            message_id=turn.message_id, turn_id=turn.turn_id, created=False, seq=record.seq
        )
        items = await _started(service.turn_items(caller, session.session_id, start))
    translator = RunStream(
        run_id=turn.turn_id,
        thread_id=session.session_id,
        assistant=assistant_id(session.agent),
        graph_id=session.agent,
        modes=modes,
        history=history,
        resume_after=resume,
    )

    async def on_exit(turn_ended: bool) -> None:
        if not turn_ended and cancel_on_disconnect:
            await service.cancel(caller, session.session_id, turn.turn_id)

    events = _run_events(translator, items, on_exit)
    return LeasedEventSource(events, lease, ping=HEARTBEAT_S)


@langgraph_router.post("/threads/{thread_id}/runs/{run_id}/cancel", status_code=204)
async def cancel_run(
    thread_id: str,
    run_id: str,
    caller: LangGraphCallerDep,
    service: ServiceDep,
    wait: bool = False,
    action: Annotated[str, Query(pattern="^(interrupt|rollback)$")] = "interrupt",
) -> Response:
    """Cancel the run (queued or running); with ``wait``, answer once it ended."""
    if action == "rollback":
        raise LangGraphApiError(422, "action rollback is not supported: turns are never deleted")
    session, turn = await thread_turn(service, caller, thread_id, run_id)
    if not ended(turn.status):
        await service.cancel(caller, session.session_id, turn.turn_id)
        if wait:
            await _wait_ended(service, caller, session, turn.message_id, turn.turn_id)
    return Response(status_code=204)
