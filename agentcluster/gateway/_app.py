"""The gateway's FastAPI app: HTTP API v1 over the runtime. Plain ASGI; Serve wraps it in
``deployments/gateway.py``."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated

import httpx
from fastapi import APIRouter, FastAPI, Header, Path, Query, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentcluster import api, tracing
from agentcluster import events as ev
from agentcluster import metrics as cluster_metrics
from agentcluster._gc import settle_long_lived_objects
from agentcluster.agent import load_profiles
from agentcluster.config import Settings
from agentcluster.console import include_console
from agentcluster.errors import DependencyUnavailable
from agentcluster.gateway._a2a import a2a_router
from agentcluster.gateway._approvals_api import include_approvals_api
from agentcluster.gateway._callers import CallerDep, ServiceDep
from agentcluster.gateway._inputs import MAX_EVENT_ID, JsonDepthLimit, parse_event_id
from agentcluster.gateway._langgraph import langgraph_router
from agentcluster.gateway._limits_api import include_limits_api
from agentcluster.gateway._mcp import MCP_PATH, McpEndpoint
from agentcluster.gateway._openai import openai_router
from agentcluster.gateway._problems import BodyLimit, ProblemError, install_problem_handlers
from agentcluster.gateway._ready import include_ready, start_ready, stop_ready
from agentcluster.gateway._responses import (
    digits_at_most,
    exact_openapi,
    operations_of,
    problem_responses,
)
from agentcluster.gateway._schedules_api import include_schedules_api
from agentcluster.gateway._service import GatewayService
from agentcluster.gateway._settings_api import (
    include_settings_api,
    start_settings_api,
    stop_settings_api,
)
from agentcluster.gateway._streams import LeasedEventSource, release_on_error
from agentcluster.gateway._webhooks_api import include_webhooks_api
from agentcluster.limits import open_tenant_limits
from agentcluster.policy import build_policy_engine
from agentcluster.runtime import Delta, Overflow, Runtime, StreamItem

if TYPE_CHECKING:
    from agentcluster.console import ProbeFactory

__all__ = ["create_app", "current_service", "replica_id"]

MAX_BODY_BYTES = 256 * 1024


_SERVICE: list[GatewayService] = []


def _register(service: GatewayService) -> None:
    # Module state on purpose: Serve pickles the app into each replica, so the handle methods'
    # copy of it is not the one whose lifespan ran; both see this module, imported once.
    _SERVICE[:] = [service]


def current_service() -> GatewayService:
    """This process's gateway service (set when the app starts)."""
    if not _SERVICE:
        raise DependencyUnavailable("gateway", "the gateway app has not started in this process")
    return _SERVICE[0]


def replica_id() -> str:
    """Which gateway replica answers (a response header, for debugging and tests). Computed per
    call: the app is pickled into each replica, so a module constant would be the builder's."""
    return f"{socket.gethostname()}:{os.getpid()}"


HEARTBEAT_S = 15

# The replica's own series, apart from prometheus_client's process collectors: /metrics also
# carries the node's Ray metrics, whose process_* and python_* families would clash.
REPLICA_REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "agentcluster_http_requests_total",
    "HTTP requests",
    ["route", "status"],
    registry=REPLICA_REGISTRY,
)
LATENCY = Histogram(
    "agentcluster_http_request_seconds",
    "HTTP request latency",
    ["route"],
    registry=REPLICA_REGISTRY,
)


def _sse(item: StreamItem) -> ServerSentEvent:
    if isinstance(item, Delta):
        return ServerSentEvent(data=item.model_dump_json(), event="delta")
    if isinstance(item, Overflow):
        return ServerSentEvent(data=item.model_dump_json(), event="overflow")
    return ServerSentEvent(data=ev.dump_event(item).decode(), event=item.type, id=str(item.seq))


async def _sse_stream(items: AsyncIterator[StreamItem]) -> AsyncIterator[ServerSentEvent]:
    async for item in items:
        yield _sse(item)


async def _started(items: AsyncIterator[StreamItem]) -> AsyncIterator[StreamItem]:
    """``items`` with its first item already received: the host has subscribed and woken the
    session before the response starts, so the turn runs even if the client leaves at once."""
    try:
        first = await anext(items)
    except StopAsyncIteration:
        return _empty()

    async def chained() -> AsyncIterator[StreamItem]:
        yield first
        async for item in items:
            yield item

    return chained()


async def _empty() -> AsyncIterator[StreamItem]:
    return
    yield  # an async generator that yields nothing


def _parse_after(last_event_id: str | None, after: str | None) -> int:
    """The seq a stream resumes after: Last-Event-ID wins over ``?after=``; both are checked
    (400 ``invalid-last-event-id`` unless ASCII digits of a signed 64-bit seq)."""
    from_query = parse_event_id(after, "?after=")
    from_header = parse_event_id(last_event_id)
    return from_header if from_header is not None else from_query or 0


_IDEMPOTENCY_KEY = re.compile(api.IDEMPOTENCY_KEY_PATTERN)
EVENT_ID_PATTERN = digits_at_most(MAX_EVENT_ID, padding=" \t")
"""What ``parse_event_id`` accepts, for the OpenAPI document."""


def _idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if _IDEMPOTENCY_KEY.match(value) is None:
        raise ProblemError(
            400,
            "invalid-idempotency-key",
            "Idempotency-Key must be 1-200 printable ASCII characters",
        )
    return value


SessionId = Annotated[
    str, Path(description="a session's id", json_schema_extra={"pattern": api.ID_PATTERN})
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        description="a resend with the same key returns the first answer, never a second turn",
        json_schema_extra={"pattern": api.IDEMPOTENCY_KEY_PATTERN},  # 400 when not (ours)
    ),
]
EventId = Annotated[
    str | None,
    Header(
        description="resume after this event seq (an SSE id)",
        json_schema_extra={"pattern": EVENT_ID_PATTERN},
    ),
]
AfterSeq = Annotated[
    str | None,
    Query(
        description="resume after this event seq (Last-Event-ID wins)",
        json_schema_extra={"pattern": EVENT_ID_PATTERN},
    ),
]


def _json(model: BaseModel, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status)


sessions = APIRouter(prefix="/v1/sessions", tags=["sessions"])


@sessions.post("", status_code=201, response_model=api.SessionOut)
async def create_session(
    body: api.SessionCreateIn, caller: CallerDep, service: ServiceDep
) -> api.SessionOut:
    return await service.create_session(caller, body)


@sessions.get("", response_model=api.SessionList)
async def list_sessions(
    caller: CallerDep,
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None,
        Query(pattern=api.CURSOR_PATTERN, description="a page's next_cursor: the next page"),
    ] = None,
) -> api.SessionList:
    return await service.list_sessions(caller, limit, cursor)


@sessions.get("/{session_id}", response_model=api.SessionOut, responses=problem_responses(404))
async def get_session(
    session_id: SessionId, caller: CallerDep, service: ServiceDep
) -> api.SessionOut:
    return await service.get_session(caller, session_id)


@sessions.delete("/{session_id}", response_model=api.SessionOut, responses=problem_responses(404))
async def close_session(
    session_id: SessionId, caller: CallerDep, service: ServiceDep
) -> api.SessionOut:
    return await service.close_session(caller, session_id)


@sessions.post(
    "/{session_id}/messages",
    status_code=202,
    response_model=api.MessageAccepted,
    responses={
        200: {
            "model": api.TurnOut,
            "description": "With ?wait=true: the turn's outcome. With Accept: text/event-stream: "
            "the turn's events and deltas as SSE, until its outcome",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **problem_responses(404, 409),
    },
)
async def send_message(
    session_id: SessionId,
    body: api.MessageIn,
    caller: CallerDep,
    service: ServiceDep,
    idempotency_key: IdempotencyKey = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
    wait: Annotated[bool, Query(description="answer with the turn's outcome")] = False,
) -> Response:
    key = _idempotency_key(idempotency_key)
    if accept and "text/event-stream" in accept:
        lease = await service.open_stream(caller)  # before the commit: a 429 leaves nothing
        async with release_on_error(lease):
            submission = await service.submit(caller, session_id, body, key, notify=False)
            items = await _started(service.turn_items(caller, session_id, submission))
        return LeasedEventSource(_sse_stream(items), lease, ping=HEARTBEAT_S)
    if wait:
        return _json(await service.ask(caller, session_id, body, key))
    submission = await service.submit(caller, session_id, body, key)
    accepted = api.MessageAccepted(
        session_id=session_id, message_id=submission.message_id, turn_id=submission.turn_id
    )
    return _json(accepted, 202)


@sessions.get(
    "/{session_id}/messages", response_model=api.MessageList, responses=problem_responses(404)
)
async def list_messages(
    session_id: SessionId, caller: CallerDep, service: ServiceDep
) -> api.MessageList:
    return await service.messages(caller, session_id)


@sessions.get(
    "/{session_id}/attachments/{attachment_id}",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "The file's bytes"},
        **problem_responses(404),
    },
)
async def get_attachment(
    session_id: SessionId,
    attachment_id: Annotated[str, Path(json_schema_extra={"pattern": api.ID_PATTERN})],
    caller: CallerDep,
    service: ServiceDep,
) -> Response:
    """A file a tool produced in the session, e.g. a browser screenshot."""
    media_type, data = await service.attachment(caller, session_id, attachment_id)
    return Response(
        data,
        media_type=media_type,
        headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


@sessions.get(
    "/{session_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "The session's events (SSE), then its live deltas and events",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **problem_responses(400, 404),
    },
)
async def stream_events(
    session_id: SessionId,
    caller: CallerDep,
    service: ServiceDep,
    last_event_id: EventId = None,
    after: AfterSeq = None,
) -> EventSourceResponse:
    items = await service.events(caller, session_id, _parse_after(last_event_id, after))
    lease = await service.open_stream(caller)  # held until the response ends (429 past it)
    return LeasedEventSource(_sse_stream(items), lease, ping=HEARTBEAT_S)


@sessions.post(
    "/{session_id}/cancel", response_model=api.CancelOut, responses=problem_responses(404)
)
async def cancel(
    session_id: SessionId, caller: CallerDep, service: ServiceDep, body: api.CancelIn | None = None
) -> api.CancelOut:
    return await service.cancel(caller, session_id, body.turn_id if body is not None else None)


agents = APIRouter(prefix="/v1/agents", tags=["agents"])


@agents.get("", response_model=api.AgentList)
async def list_agents(caller: CallerDep, service: ServiceDep) -> api.AgentList:
    return service.agents(caller)


@agents.get("/{name}", response_model=api.AgentOut, responses=problem_responses(404))
async def get_agent(
    name: Annotated[str, Path(description="an agent's name")],
    caller: CallerDep,
    service: ServiceDep,
) -> api.AgentOut:
    return service.agent(caller, name)


keys = APIRouter(prefix="/v1/keys", tags=["keys"])


@keys.post("", status_code=201, response_model=api.KeyCreated, responses=problem_responses(404))
async def create_key(
    body: api.KeyCreateIn, caller: CallerDep, service: ServiceDep
) -> api.KeyCreated:
    return await service.create_key(caller, body)


@keys.get("", response_model=api.KeyList)
async def list_keys(
    caller: CallerDep, service: ServiceDep, tenant_id: str | None = None
) -> api.KeyList:
    return await service.list_keys(caller, tenant_id)


@keys.delete("/{key_id}", status_code=204, responses=problem_responses(404))
async def revoke_key(
    key_id: Annotated[str, Path(json_schema_extra={"pattern": api.ID_PATTERN})],
    caller: CallerDep,
    service: ServiceDep,
) -> Response:
    await service.revoke_key(caller, key_id)
    return Response(status_code=204)


system = APIRouter(tags=["system"])


@system.get("/v1/health", response_model=api.Health)
async def health() -> api.Health:
    return api.Health()


NODE_SCRAPE_TIMEOUT_S = 5.0


async def _node_metrics() -> str:
    """This node's Ray metrics (every process's ``ray_agentcluster_*`` series), or a comment
    saying why they are missing: the replica's own series are still worth answering with."""
    try:
        port = await cluster_metrics.node_metrics_port()
        async with httpx.AsyncClient(timeout=NODE_SCRAPE_TIMEOUT_S) as client:
            return await cluster_metrics.scrape_node_metrics(client, port)
    except DependencyUnavailable as exc:
        reason = " ".join(str(exc).split())
        return f"# agentcluster: the node's Ray metrics are unavailable: {reason}\n"


@system.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """This replica's ``agentcluster_http_*`` series, then this node's Ray metrics (the
    ``ray_agentcluster_*`` series of every session host, pool, relay and gateway replica here)."""
    own = generate_latest(REPLICA_REGISTRY).decode()
    return Response(own + await _node_metrics(), media_type=CONTENT_TYPE_LATEST)


class Measure:
    """ASGI middleware: request count and latency by route template, and the replica's id as a
    response header (plain ASGI: Starlette's BaseHTTPMiddleware costs a task per request).
    Starlette builds it on the first request, in the replica's own process."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.replica = replica_id().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_measured(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-agentcluster-replica", self.replica)]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_measured)
        finally:
            name = getattr(scope.get("route"), "path", "unmatched")
            seconds = time.perf_counter() - started
            LATENCY.labels(name).observe(seconds)
            REQUESTS.labels(name, str(status)).inc()
            cluster_metrics.record_http_request(name, status, seconds)


_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})
UNTRACED_PATHS = frozenset({"/metrics"})
"""Scrapes every few seconds would bury the requests worth looking at."""


class TraceRequests:
    """ASGI middleware: a SERVER span per HTTP request (``{method} {route}``, with the route
    template, method and status), continuing the caller's ``traceparent`` when it sends one.
    Everything the request awaits, Ray calls to session hosts included, runs under it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not tracing.tracing_enabled()
            or scope["path"] in UNTRACED_PATHS
        ):
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        parent = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _TRACE_HEADERS
        }
        attributes = {"http.request.method": method, "url.path": scope["path"]}
        request = tracing.start_span(
            method, kind=tracing.SpanKind.SERVER, attributes=attributes, parent=parent
        )
        status = 500

        async def send_traced(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            with tracing.use(request):
                await self.app(scope, receive, send_traced)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route is not None:
                request.update_name(f"{method} {route}")
                request.set_attribute("http.route", route)
            request.set_attribute("http.response.status_code", status)
            if status >= 500:
                tracing.mark_error(request, str(status))
            request.end()


def create_app(
    settings: Settings,
    connect: Callable[[Settings], Awaitable[Runtime]],
    probe: ProbeFactory | None = None,
) -> FastAPI:
    """The gateway app; ``connect`` builds the runtime at startup and ``probe`` reads the cluster
    for the console (both injected by the edge: the Serve deployment passes
    ``actors.compose.connect_runtime`` and ``actors.console_probe.ray_cluster_probe``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await connect(settings)
        policy = build_policy_engine(settings)
        limits = open_tenant_limits(settings, runtime.store)
        app.state.service = GatewayService(runtime, settings, profiles, policy, limits)
        start_ready(app, settings, runtime.store)
        await start_settings_api(app, settings, state_store=runtime.store, known_agents=profiles)
        _register(app.state.service)
        settle_long_lived_objects()
        try:
            async with mcp.running():
                yield
        finally:
            await stop_settings_api(app)  # before the runtime: it may share the store's engine
            await limits.aclose()
            await policy.aclose()
            await stop_ready(app)  # before the runtime: the probe pings the runtime's store
            await runtime.close()
            await tracing.flush_tracing()

    app = FastAPI(
        title="agentcluster",
        version="1",
        description="Agent sessions on a Ray cluster: HTTP API v1.",
        lifespan=lifespan,
    )
    profiles = load_profiles(settings.runtime.agents_dir)
    install_problem_handlers(app)
    app.add_middleware(JsonDepthLimit)  # inside BodyLimit: it reads bodies BodyLimit bounded
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(TraceRequests)
    app.add_middleware(Measure)

    for router in (sessions, agents, keys, system, openai_router, a2a_router, langgraph_router):
        app.include_router(router)
    include_settings_api(app)
    include_limits_api(app)
    include_schedules_api(app)
    include_approvals_api(app)
    include_webhooks_api(app)
    include_ready(app)
    # The MCP server answers at exactly /mcp (its app routes that path itself).
    mcp = McpEndpoint(current_service)
    app.router.routes.append(Route(MCP_PATH, endpoint=mcp))
    include_console(app, probe=probe)  # the web console at /ui, /v1/whoami and /v1/cluster
    exact_openapi(app, profiles, foreign=operations_of([openai_router, langgraph_router]))
    return app
