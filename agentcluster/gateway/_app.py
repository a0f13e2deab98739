"""The gateway's FastAPI app: HTTP API v1 over the runtime. Plain ASGI; Serve wraps it in
``deployments/gateway.py``."""

from __future__ import annotations

import hmac
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from sse_starlette.sse import EventSourceResponse, ServerSentEvent

from agentcluster import api
from agentcluster import events as ev
from agentcluster.agent import AgentProfile, load_profiles
from agentcluster.config import Settings
from agentcluster.domain import Submission
from agentcluster.errors import ValidationFailed
from agentcluster.gateway._problems import BodyLimit, ProblemError, install_problem_handlers
from agentcluster.health import probe_all
from agentcluster.runtime import Delta, Overflow, Runtime, StreamItem

__all__ = ["Caller", "create_app"]

MAX_BODY_BYTES = 256 * 1024


def replica_id() -> str:
    """Which gateway replica answers (a response header, for debugging and tests). Computed per
    call: the app is pickled into each replica, so a module constant would be the builder's."""
    return f"{socket.gethostname()}:{os.getpid()}"


HEARTBEAT_S = 15
WAIT_TIMEOUT_S = 300.0

REQUESTS = Counter("agentcluster_http_requests_total", "HTTP requests", ["route", "status"])
LATENCY = Histogram("agentcluster_http_request_seconds", "HTTP request latency", ["route"])


@dataclass(frozen=True)
class Caller:
    """Who is calling: a tenant's key, or the admin key (no tenant)."""

    tenant_id: str | None
    key_id: str | None
    admin: bool = False

    def tenant(self) -> str:
        if self.tenant_id is None:
            raise ProblemError(
                403, "forbidden", "the admin key manages keys; use a tenant key for sessions"
            )
        return self.tenant_id


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(_runtime)]


async def _caller(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    if not authorization:
        raise ProblemError(401, "unauthorized", "missing API key", {"WWW-Authenticate": "Bearer"})
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ProblemError(
            401,
            "unauthorized",
            "use Authorization: Bearer <api key>",
            {"WWW-Authenticate": "Bearer"},
        )
    token = token.strip()
    settings: Settings = request.app.state.settings
    admin_key = settings.auth.admin_key
    if admin_key and hmac.compare_digest(token.encode(), admin_key.encode()):
        return Caller(tenant_id=None, key_id=None, admin=True)
    key = await _runtime(request).store.authenticate(token)
    if key is None:
        raise ProblemError(401, "unauthorized", "invalid API key", {"WWW-Authenticate": "Bearer"})
    return Caller(tenant_id=key.tenant_id, key_id=key.key_id)


CallerDep = Annotated[Caller, Depends(_caller)]


async def _admin(caller: CallerDep) -> Caller:
    if not caller.admin:
        raise ProblemError(403, "forbidden", "this endpoint needs the admin key")
    return caller


AdminDep = Annotated[Caller, Depends(_admin)]


def _profiles(request: Request) -> dict[str, AgentProfile]:
    profiles: dict[str, AgentProfile] = request.app.state.profiles
    return profiles


def _agent_out(profile: AgentProfile) -> api.AgentOut:
    return api.AgentOut(
        name=profile.name,
        description=profile.description,
        model=profile.model,
        fallback_models=list(profile.fallback_models),
        tools=list(profile.tools),
    )


def _sse(item: StreamItem) -> ServerSentEvent:
    if isinstance(item, Delta):
        return ServerSentEvent(data=item.model_dump_json(), event="delta")
    if isinstance(item, Overflow):
        return ServerSentEvent(data=item.model_dump_json(), event="overflow")
    return ServerSentEvent(data=ev.dump_event(item).decode(), event=item.type, id=str(item.seq))


def _parse_after(last_event_id: str | None, after: int | None) -> int:
    if last_event_id is None:
        return after or 0
    value = last_event_id.strip()
    if not value.isdigit():
        raise ProblemError(
            400, "invalid-last-event-id", "Last-Event-ID must be an event seq (an integer >= 0)"
        )
    return int(value)


def _idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= 200 or not value.isprintable():
        raise ProblemError(
            400, "invalid-idempotency-key", "Idempotency-Key must be 1-200 printable characters"
        )
    return value


sessions = APIRouter(prefix="/v1/sessions", tags=["sessions"])


@sessions.post("", status_code=201, response_model=api.SessionOut)
async def create_session(
    body: api.SessionCreateIn, caller: CallerDep, runtime: RuntimeDep, request: Request
) -> api.SessionOut:
    profiles = _profiles(request)
    if body.agent not in profiles:
        known = ", ".join(sorted(profiles))
        raise ValidationFailed(f"unknown agent {body.agent!r}; known agents: {known}")
    session = await runtime.create_session(caller.tenant(), body.agent, body.metadata)
    return api.SessionOut.of(session)


@sessions.get("", response_model=api.SessionList)
async def list_sessions(
    caller: CallerDep,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> api.SessionList:
    page = await runtime.store.list_sessions(caller.tenant(), limit=limit, cursor=cursor)
    return api.SessionList(
        items=[api.SessionOut.of(s) for s in page.items], next_cursor=page.next_cursor
    )


@sessions.get("/{session_id}", response_model=api.SessionOut)
async def get_session(session_id: str, caller: CallerDep, runtime: RuntimeDep) -> api.SessionOut:
    return api.SessionOut.of(await runtime.store.get_session(caller.tenant(), session_id))


@sessions.delete("/{session_id}", response_model=api.SessionOut)
async def close_session(session_id: str, caller: CallerDep, runtime: RuntimeDep) -> api.SessionOut:
    closed = await runtime.store.close_session(caller.tenant(), session_id, "closed by the API")
    return api.SessionOut.of(closed)


@sessions.post(
    "/{session_id}/messages",
    status_code=202,
    response_model=api.MessageAccepted,
    responses={200: {"model": api.TurnOut}},
)
async def send_message(
    session_id: str,
    body: api.MessageIn,
    caller: CallerDep,
    runtime: RuntimeDep,
    idempotency_key: Annotated[str | None, Header()] = None,
    accept: Annotated[str | None, Header()] = None,
    wait: bool = False,
) -> Response:
    tenant_id = caller.tenant()
    submission = await runtime.send_message(
        tenant_id, session_id, body.content, idempotency_key=_idempotency_key(idempotency_key)
    )
    if accept and "text/event-stream" in accept:
        after = max(submission.seq - 1, 0)
        items = runtime.stream(
            tenant_id, session_id, after_seq=after, until_turn=submission.turn_id
        )
        return EventSourceResponse(_turn_items(items, submission.turn_id), ping=HEARTBEAT_S)
    if wait:
        return JSONResponse(
            (await _wait(runtime, tenant_id, session_id, submission)).model_dump(mode="json")
        )
    accepted = api.MessageAccepted(
        session_id=session_id, message_id=submission.message_id, turn_id=submission.turn_id
    )
    return JSONResponse(accepted.model_dump(mode="json"), status_code=202)


async def _turn_items(
    items: AsyncIterator[StreamItem], turn_id: str
) -> AsyncIterator[ServerSentEvent]:
    async for item in items:
        if getattr(item, "turn_id", turn_id) == turn_id:
            yield _sse(item)


async def _wait(
    runtime: Runtime, tenant_id: str, session_id: str, submission: Submission
) -> api.TurnOut:
    turn = await runtime.store.get_turn(tenant_id, submission.turn_id)
    if turn.status in {"queued", "running"}:
        after = max(submission.seq - 1, 0)
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        async for item in runtime.stream(
            tenant_id, session_id, after_seq=after, until_turn=submission.turn_id
        ):
            if isinstance(item, ev.TurnCompleted | ev.TurnFailed | ev.TurnCancelled):
                break
            if time.monotonic() > deadline:
                break
        turn = await runtime.store.get_turn(tenant_id, submission.turn_id)
    content = None
    if turn.answer_message_id:
        answer = await runtime.store.get_message(tenant_id, turn.answer_message_id)
        content = answer.content
    return api.TurnOut(
        session_id=session_id,
        message_id=submission.message_id,
        turn_id=turn.turn_id,
        status=turn.status,
        content=content,
        error=turn.error,
        usage=ev.Usage.model_validate(turn.usage or {}),
    )


@sessions.get("/{session_id}/messages", response_model=api.MessageList)
async def list_messages(session_id: str, caller: CallerDep, runtime: RuntimeDep) -> api.MessageList:
    tenant_id = caller.tenant()
    await runtime.store.get_session(tenant_id, session_id)
    messages = await runtime.store.list_messages(tenant_id, session_id)
    return api.MessageList(items=[api.MessageOut.of(m) for m in messages])


@sessions.get("/{session_id}/events", response_class=EventSourceResponse)
async def stream_events(
    session_id: str,
    caller: CallerDep,
    runtime: RuntimeDep,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[int | None, Query(ge=0)] = None,
) -> EventSourceResponse:
    tenant_id = caller.tenant()
    after_seq = _parse_after(last_event_id, after)
    await runtime.store.get_session(tenant_id, session_id)  # 404 before the stream starts

    async def items() -> AsyncIterator[ServerSentEvent]:
        async for item in runtime.stream(tenant_id, session_id, after_seq=after_seq):
            yield _sse(item)

    return EventSourceResponse(items(), ping=HEARTBEAT_S)


@sessions.post("/{session_id}/cancel", response_model=api.CancelOut)
async def cancel(
    session_id: str, caller: CallerDep, runtime: RuntimeDep, body: api.CancelIn | None = None
) -> api.CancelOut:
    turn_id = body.turn_id if body is not None else None
    return api.CancelOut(cancelled=await runtime.cancel(caller.tenant(), session_id, turn_id))


agents = APIRouter(prefix="/v1/agents", tags=["agents"])


@agents.get("", response_model=api.AgentList)
async def list_agents(caller: CallerDep, request: Request) -> api.AgentList:
    return api.AgentList(items=[_agent_out(p) for p in _profiles(request).values()])


@agents.get("/{name}", response_model=api.AgentOut)
async def get_agent(name: str, caller: CallerDep, request: Request) -> api.AgentOut:
    profile = _profiles(request).get(name)
    if profile is None:
        raise ProblemError(404, "not-found", f"agent {name!r} not found")
    return _agent_out(profile)


keys = APIRouter(prefix="/v1/keys", tags=["keys"])


@keys.post("", status_code=201, response_model=api.KeyCreated)
async def create_key(body: api.KeyCreateIn, admin: AdminDep, runtime: RuntimeDep) -> api.KeyCreated:
    if body.tenant_id is not None:
        tenant_id = (await runtime.store.get_tenant(body.tenant_id)).tenant_id
    else:
        tenant_id = (await runtime.store.create_tenant(body.tenant_name or body.name)).tenant_id
    key, secret = await runtime.store.create_api_key(tenant_id, body.name)
    return api.KeyCreated(**api.KeyOut.of(key).model_dump(), secret=secret)


@keys.get("", response_model=api.KeyList)
async def list_keys(
    admin: AdminDep, runtime: RuntimeDep, tenant_id: str | None = None
) -> api.KeyList:
    return api.KeyList(
        items=[api.KeyOut.of(k) for k in await runtime.store.list_api_keys(tenant_id)]
    )


@keys.delete("/{key_id}", status_code=204)
async def revoke_key(key_id: str, admin: AdminDep, runtime: RuntimeDep) -> Response:
    await runtime.store.revoke_api_key(None, key_id)
    return Response(status_code=204)


system = APIRouter(tags=["system"])


@system.get("/v1/health", response_model=api.Health)
async def health() -> api.Health:
    return api.Health()


@system.get("/v1/ready", response_model=api.Ready, responses={503: {"model": api.Ready}})
async def ready(request: Request) -> JSONResponse:
    statuses = await probe_all(request.app.state.settings)
    degraded = any(status.state == "down" for status in statuses)
    body = api.Ready(
        status="degraded" if degraded else "ready",
        dependencies=[api.ReadyDependency(**s.model_dump()) for s in statuses],
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=503 if degraded else 200)


@system.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def create_app(
    settings: Settings, connect: Callable[[Settings], Awaitable[Runtime]] | None = None
) -> FastAPI:
    """The gateway app; ``connect`` builds the runtime at startup (default: Runtime.connect)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await (connect or Runtime.connect)(settings)
        app.state.runtime = runtime
        try:
            yield
        finally:
            await runtime.close()

    app = FastAPI(
        title="agentcluster",
        version="1",
        description="Agent sessions on a Ray cluster: HTTP API v1.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.profiles = load_profiles(settings.runtime.agents_dir)
    install_problem_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)

    @app.middleware("http")
    async def measure(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        LATENCY.labels(name).observe(time.perf_counter() - started)
        REQUESTS.labels(name, str(response.status_code)).inc()
        response.headers["x-agentcluster-replica"] = replica_id()
        return response

    for router in (sessions, agents, keys, system):
        app.include_router(router)
    return app
