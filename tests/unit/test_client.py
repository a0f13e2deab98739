"""The Python client's protocol handling against an in-process fake of the gateway's HTTP API.

The fake (``FakeGateway``) is an ``httpx.MockTransport`` handler implementing the v1 routes with a
little state, plus a script of failures to inject. Every client test runs twice, against
``Client`` and ``AsyncClient``, through one awaitable driver (``Api``).
"""

from __future__ import annotations

import inspect
import json
import pickle
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from agentcluster import events as ev
from agentcluster.api import PROBLEM_BASE, KeyCreated, Ready, SessionOut, TurnOut
from agentcluster.client import (
    ApiError,
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    RateLimited,
    ServerError,
    ServerSentEvent,
    SSEDecoder,
    Unauthorized,
    Unavailable,
)
from agentcluster.errors import ConflictError, DependencyUnavailable, NotFoundError, UserError
from agentcluster.runtime import Delta

pytestmark = pytest.mark.timeout(10)

BASE = "http://gateway.test"
KEY = "ac_tenant_key_0001"
ADMIN = "ac_admin_key_00001"
NOW = "2025-01-01T00:00:00Z"
SID = "s1"

Step = Callable[[httpx.Request], httpx.Response]


# --- the fake gateway -------------------------------------------------------------------------


def problem(status: int, slug: str, title: str, detail: str = "", **headers: str) -> httpx.Response:
    body = {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail}
    return httpx.Response(
        status, json=body, headers={"content-type": "application/problem+json", **headers}
    )


def fail(error: type[httpx.TransportError]) -> Step:
    def step(request: httpx.Request) -> httpx.Response:
        raise error("injected", request=request)

    return step


def answer(response: httpx.Response) -> Step:
    return lambda request: response


class Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body for both transports that may break after its chunks."""

    def __init__(self, chunks: list[bytes], error: type[httpx.TransportError] | None) -> None:
        self.chunks = chunks
        self.error = error

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.error is not None:
            raise self.error("connection reset mid-stream")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.error is not None:
            raise self.error("connection reset mid-stream")


def sse(*parts: str, error: type[httpx.TransportError] | None = None) -> Step:
    # One chunk per part, so lines and events also arrive split across reads.
    chunks = [part.encode() for part in parts]
    headers = {"content-type": "text/event-stream; charset=utf-8"}
    return lambda request: httpx.Response(200, headers=headers, stream=Chunks(chunks, error))


def frame(event: ev.Event) -> str:
    return f"id: {event.seq}\nevent: {event.type}\ndata: {event.model_dump_json()}\n\n"


def delta_frame(text: str, turn: str = "t1", index: int = 1) -> str:
    delta = Delta(session_id=SID, turn_id=turn, step=1, index=index, text=text)
    return f"event: delta\ndata: {delta.model_dump_json()}\n\n"


def created(seq: int) -> ev.SessionCreated:
    return ev.SessionCreated(tenant_id="tn", session_id=SID, seq=seq, agent="default")


def received(seq: int, turn: str = "t1") -> ev.MessageReceived:
    return ev.MessageReceived(
        tenant_id="tn", session_id=SID, seq=seq, message_id=f"m-{turn}", turn_id=turn, content="hi"
    )


def started(seq: int, turn: str = "t1") -> ev.TurnStarted:
    return ev.TurnStarted(tenant_id="tn", session_id=SID, seq=seq, turn_id=turn)


def completed(seq: int, turn: str = "t1") -> ev.TurnCompleted:
    return ev.TurnCompleted(
        tenant_id="tn", session_id=SID, seq=seq, turn_id=turn, message_id=f"a-{turn}", content="4"
    )


def closed(seq: int) -> ev.SessionClosed:
    return ev.SessionClosed(tenant_id="tn", session_id=SID, seq=seq)


def session_body(session_id: str, agent: str = "default", **extra: Any) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "agent": agent,
        "status": "active",
        "metadata": {},
        "last_seq": 0,
        "created_at": NOW,
        "updated_at": NOW,
        **extra,
    }


def key_body(key_id: str, tenant_id: str) -> dict[str, Any]:
    return {
        "key_id": key_id,
        "tenant_id": tenant_id,
        "name": "ci",
        "prefix": "ac_x",
        "created_at": NOW,
    }


class FakeGateway:
    """The v1 routes with in-memory state. ``script`` holds steps that answer the next requests
    before routing (failures to inject); ``event_streams``/``turn_streams`` answer, in order, the
    connections to the SSE endpoints."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.script: list[Step] = []
        self.event_streams: list[Step] = []
        self.turn_streams: list[Step] = []
        self.sessions: dict[str, dict[str, Any]] = {}
        self.turns: dict[str, str] = {}  # idempotency key -> turn id
        self.ready_status = 200
        self.routes: list[tuple[str, re.Pattern[str], Callable[..., httpx.Response]]] = [
            ("POST", re.compile(r"/v1/sessions"), self.create_session),
            ("GET", re.compile(r"/v1/sessions"), self.list_sessions),
            ("GET", re.compile(r"/v1/sessions/([^/]+)"), self.get_session),
            ("DELETE", re.compile(r"/v1/sessions/([^/]+)"), self.close_session),
            ("POST", re.compile(r"/v1/sessions/([^/]+)/messages"), self.post_message),
            ("GET", re.compile(r"/v1/sessions/([^/]+)/messages"), self.messages),
            ("GET", re.compile(r"/v1/sessions/([^/]+)/events"), self.events),
            ("POST", re.compile(r"/v1/sessions/([^/]+)/cancel"), self.cancel),
            ("GET", re.compile(r"/v1/agents"), self.agents),
            ("GET", re.compile(r"/v1/agents/([^/]+)"), self.agent),
            (
                "GET",
                re.compile(r"/v1/health"),
                lambda r: httpx.Response(200, json={"status": "ok"}),
            ),
            ("GET", re.compile(r"/v1/ready"), self.ready),
            ("POST", re.compile(r"/v1/keys"), self.create_key),
            ("GET", re.compile(r"/v1/keys"), self.list_keys),
            ("DELETE", re.compile(r"/v1/keys/([^/]+)"), lambda r, k: httpx.Response(204)),
        ]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.script:
            return self.script.pop(0)(request)
        auth = request.headers.get("authorization")
        if auth not in (f"Bearer {KEY}", f"Bearer {ADMIN}"):
            return problem(401, "unauthorized", "Unauthorized", "missing or unknown API key")
        if request.url.path.startswith("/v1/keys") and auth != f"Bearer {ADMIN}":
            return problem(403, "forbidden", "Forbidden", "admin key required")
        for method, pattern, route in self.routes:
            match = pattern.fullmatch(request.url.path)
            if match and method == request.method:
                return route(request, *match.groups())
        return problem(404, "not-found", "Not Found", request.url.path)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def create_session(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        session_id = f"s{len(self.sessions) + 1}"
        self.sessions[session_id] = session_body(
            session_id, body["agent"], metadata=body["metadata"]
        )
        return httpx.Response(201, json=self.sessions[session_id])

    def list_sessions(self, request: httpx.Request) -> httpx.Response:
        limit = int(request.url.params["limit"])
        start = int(request.url.params.get("cursor", "0"))
        items = list(self.sessions.values())[start : start + limit]
        more = start + limit < len(self.sessions)
        return httpx.Response(
            200, json={"items": items, "next_cursor": str(start + limit) if more else None}
        )

    def get_session(self, request: httpx.Request, session_id: str) -> httpx.Response:
        if session_id not in self.sessions:
            return problem(404, "not-found", "Not Found", f"no session {session_id}")
        return httpx.Response(200, json=self.sessions[session_id])

    def close_session(self, request: httpx.Request, session_id: str) -> httpx.Response:
        self.sessions[session_id] |= {"status": "closed", "closed_at": NOW}
        return httpx.Response(200, json=self.sessions[session_id])

    def post_message(self, request: httpx.Request, session_id: str) -> httpx.Response:
        key = request.headers["idempotency-key"]
        turn_id = self.turns.setdefault(key, f"t{len(self.turns) + 1}")
        ids = {"session_id": session_id, "message_id": f"m-{turn_id}", "turn_id": turn_id}
        if request.headers.get("accept") == "text/event-stream":
            return self.turn_streams.pop(0)(request)
        if request.url.params.get("wait") == "true":
            return httpx.Response(200, json=ids | {"status": "completed", "content": "4"})
        return httpx.Response(202, json=ids)

    def messages(self, request: httpx.Request, session_id: str) -> httpx.Response:
        message = {"message_id": "m1", "turn_id": "t1", "role": "user", "content": "hi"}
        return httpx.Response(200, json={"items": [message | {"created_at": NOW}]})

    def events(self, request: httpx.Request, session_id: str) -> httpx.Response:
        if not self.event_streams:
            return sse()(request)  # opens, then ends without a byte
        return self.event_streams.pop(0)(request)

    def cancel(self, request: httpx.Request, session_id: str) -> httpx.Response:
        return httpx.Response(200, json={"cancelled": json.loads(request.content) == {}})

    def agents(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"items": [self._agent("default")]})

    def agent(self, request: httpx.Request, name: str) -> httpx.Response:
        if name != "default":
            return problem(404, "not-found", "Not Found", f"no agent {name}")
        return httpx.Response(200, json=self._agent(name))

    @staticmethod
    def _agent(name: str) -> dict[str, Any]:
        return {"name": name, "description": "d", "model": "m", "fallback_models": [], "tools": []}

    def ready(self, request: httpx.Request) -> httpx.Response:
        state = "up" if self.ready_status == 200 else "down"
        body = {
            "status": "ready" if self.ready_status == 200 else "degraded",
            "dependencies": [{"name": "postgresql", "state": state}],
        }
        return httpx.Response(self.ready_status, json=body)

    def create_key(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        created_key = key_body("k1", body.get("tenant_id") or "new-tenant") | {
            "secret": "ac_s3cret"
        }
        return httpx.Response(201, json=created_key)

    def list_keys(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"items": [key_body("k1", request.url.params["tenant_id"])]}
        )


# --- one driver for both clients --------------------------------------------------------------


class Api:
    """Calls ``Client`` or ``AsyncClient`` the same way, so every test covers both."""

    def __init__(self, kind: str, gateway: FakeGateway, api_key: str | None, **options: Any):
        self.kind = kind
        self.sleeps: list[float] = []
        transport = httpx.MockTransport(gateway)
        if kind == "sync":
            self.client: Client | AsyncClient = Client(
                BASE, api_key, transport=transport, sleep=self.sleeps.append, **options
            )
        else:
            self.client = AsyncClient(
                BASE, api_key, transport=transport, sleep=self._async_sleep, **options
            )

    async def _async_sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    async def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.client, method)(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result

    async def collect(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        iterator = getattr(self.client, method)(*args, **kwargs)
        if self.kind == "sync":
            return list(iterator)
        async with aclosing(iterator):
            return [item async for item in iterator]

    async def close(self) -> None:
        if isinstance(self.client, Client):
            self.client.close()
        else:
            await self.client.aclose()


Connect = Callable[..., Api]


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture(params=["sync", "async"])
async def connect(request: pytest.FixtureRequest, gateway: FakeGateway) -> AsyncIterator[Connect]:
    opened: list[Api] = []

    def make(api_key: str | None = KEY, **options: Any) -> Api:
        opened.append(Api(request.param, gateway, api_key, **options))
        return opened[-1]

    yield make
    for api in opened:
        await api.close()


@pytest.fixture
def api(connect: Connect) -> Api:
    return connect()


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


# --- requests and typed answers ---------------------------------------------------------------


async def test_create_session_sends_body_and_key(api: Api, gateway: FakeGateway) -> None:
    session = await api("create_session", agent="researcher", metadata={"user": "u1"})

    assert isinstance(session, SessionOut)
    assert (session.session_id, session.agent, session.metadata) == (
        "s1",
        "researcher",
        {"user": "u1"},
    )
    request = gateway.last
    assert (request.method, request.url.path) == ("POST", "/v1/sessions")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["user-agent"].startswith("agentcluster-python/")
    assert body(request) == {"agent": "researcher", "metadata": {"user": "u1"}}


async def test_session_routes(api: Api, gateway: FakeGateway) -> None:
    created_id = (await api("create_session")).session_id

    assert (await api("get_session", created_id)).status == "active"
    assert gateway.last.url.path == f"/v1/sessions/{created_id}"
    closed_session = await api("close_session", created_id)
    assert (closed_session.status, closed_session.closed_at) == (
        "closed",
        datetime(2025, 1, 1, tzinfo=UTC),
    )
    assert (gateway.last.method, gateway.last.url.path) == ("DELETE", f"/v1/sessions/{created_id}")
    page = await api("list_sessions", limit=10)
    assert [s.session_id for s in page.items] == [created_id] and page.next_cursor is None
    assert gateway.last.url.params["limit"] == "10" and "cursor" not in gateway.last.url.params
    history = await api("messages", created_id)
    assert [(m.role, m.content) for m in history.items] == [("user", "hi")]
    assert gateway.last.url.path == f"/v1/sessions/{created_id}/messages"


async def test_ids_are_quoted_into_one_path_segment(api: Api, gateway: FakeGateway) -> None:
    with pytest.raises(NotFound):
        await api("get_session", "../keys?x=1")

    assert gateway.last.url.raw_path == b"/v1/sessions/..%2Fkeys%3Fx%3D1"


async def test_iter_sessions_follows_cursors(api: Api, gateway: FakeGateway) -> None:
    for _ in range(5):
        await api("create_session")
    gateway.requests.clear()

    sessions = await api.collect("iter_sessions", limit=2)

    assert [s.session_id for s in sessions] == ["s1", "s2", "s3", "s4", "s5"]
    cursors = [r.url.params.get("cursor") for r in gateway.requests]
    assert cursors == [None, "2", "4"]


async def test_send_message_generates_one_key_per_call(api: Api, gateway: FakeGateway) -> None:
    first = await api("send_message", SID, "hello")
    second = await api("send_message", SID, "hello")

    keys = [r.headers["idempotency-key"] for r in gateway.requests]
    assert len(set(keys)) == 2 and all(len(k) == 36 for k in keys)
    assert first.turn_id != second.turn_id
    assert body(gateway.last) == {"content": "hello"}
    assert "wait" not in gateway.last.url.params


async def test_send_message_uses_the_callers_key(api: Api, gateway: FakeGateway) -> None:
    first = await api("send_message", SID, "hello", idempotency_key="k-1")
    again = await api("send_message", SID, "hello", idempotency_key="k-1")

    assert [r.headers["idempotency-key"] for r in gateway.requests] == ["k-1", "k-1"]
    assert first == again


async def test_ask_waits_for_the_turn(api: Api, gateway: FakeGateway) -> None:
    turn = await api("ask", SID, "2+2?", turn_timeout=120.0)

    assert isinstance(turn, TurnOut) and (turn.status, turn.content) == ("completed", "4")
    assert gateway.last.url.params["wait"] == "true"
    assert gateway.last.headers["idempotency-key"]
    assert gateway.last.extensions["timeout"]["read"] == 120.0


async def test_cancel_agents_health(api: Api, gateway: FakeGateway) -> None:
    assert (await api("cancel", SID)).cancelled is True
    assert (gateway.last.method, gateway.last.url.path) == ("POST", f"/v1/sessions/{SID}/cancel")
    assert body(gateway.last) == {}
    await api("cancel", SID, turn_id="t9")
    assert body(gateway.last) == {"turn_id": "t9"}
    assert [a.name for a in (await api("agents")).items] == ["default"]
    assert (await api("agent", "default")).model == "m"
    assert (await api("health")).status == "ok"


async def test_ready_returns_a_degraded_answer(api: Api, gateway: FakeGateway) -> None:
    assert (await api("ready")).status == "ready"
    gateway.ready_status = 503

    degraded = await api("ready")

    assert isinstance(degraded, Ready) and degraded.status == "degraded"
    assert degraded.dependencies[0].state == "down"
    assert len(gateway.requests) == 2 and api.sleeps == []  # an answer: not retried


async def test_admin_key_routes(connect: Connect, gateway: FakeGateway) -> None:
    admin = connect(ADMIN)

    created_key = await admin("create_key", "ci", tenant_name="acme")
    assert isinstance(created_key, KeyCreated) and created_key.secret == "ac_s3cret"
    assert body(gateway.last) == {"name": "ci", "tenant_name": "acme"}
    listed = await admin("list_keys", tenant_id="tn-1")
    assert gateway.last.url.params["tenant_id"] == "tn-1" and listed.items[0].tenant_id == "tn-1"
    assert await admin("revoke_key", "k1") is None
    assert (gateway.last.method, gateway.last.url.path) == ("DELETE", "/v1/keys/k1")

    with pytest.raises(Forbidden) as raised:
        await connect(KEY)("list_keys")
    assert raised.value.status == 403 and raised.value.detail == "admin key required"


async def test_invalid_body_is_rejected_before_sending(api: Api, gateway: FakeGateway) -> None:
    with pytest.raises(InvalidRequest) as raised:
        await api("send_message", SID, "")

    assert gateway.requests == []
    assert raised.value.status == 422 and "content" in raised.value.detail


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, InvalidRequest),
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (409, Conflict),
        (413, PayloadTooLarge),
        (422, InvalidRequest),
        (429, RateLimited),
        (500, ServerError),
        (503, Unavailable),
        (418, ApiError),
    ],
)
async def test_problem_maps_to_its_exception(
    connect: Connect, gateway: FakeGateway, status: int, cls: type[ApiError]
) -> None:
    api = connect(retries=0)
    gateway.script.append(answer(problem(status, "some-problem", "Some title", "what happened")))

    with pytest.raises(ApiError) as raised:
        await api("get_session", SID)

    error = raised.value
    assert type(error) is cls
    assert (error.status, error.type, error.title, error.detail) == (
        status,
        PROBLEM_BASE + "some-problem",
        "Some title",
        "what happened",
    )
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls and copy.__dict__ == error.__dict__ and str(copy) == str(error)


async def test_errors_sit_in_the_agentcluster_hierarchy(api: Api, gateway: FakeGateway) -> None:
    with pytest.raises(NotFoundError):
        await api("get_session", "nope")
    gateway.script.append(answer(problem(409, "conflict", "Conflict", "session is closed")))
    with pytest.raises(ConflictError) as raised:
        await api("send_message", SID, "hi")
    assert isinstance(raised.value, UserError) and not raised.value.retryable


async def test_missing_key_is_unauthorized(connect: Connect, gateway: FakeGateway) -> None:
    with pytest.raises(Unauthorized) as raised:
        await connect(None)("health")

    assert "authorization" not in gateway.last.headers
    assert raised.value.detail == "missing or unknown API key"


async def test_a_non_problem_error_body_is_described(
    connect: Connect, gateway: FakeGateway
) -> None:
    api = connect(retries=0)
    gateway.script.append(answer(httpx.Response(502, text="<html>bad gateway</html>")))

    with pytest.raises(ServerError) as raised:
        await api("health")

    assert raised.value.status == 502 and raised.value.title == "Bad Gateway"
    assert raised.value.detail == "<html>bad gateway</html>" and raised.value.retryable


async def test_an_answer_off_contract_is_a_protocol_error(api: Api, gateway: FakeGateway) -> None:
    gateway.script.append(answer(httpx.Response(200, json={"unexpected": True})))

    with pytest.raises(
        ProtocolError, match=re.escape("GET /v1/agents/default -> 200: does not parse as AgentOut")
    ):
        await api("agent", "default")


# --- retries ----------------------------------------------------------------------------------


async def test_retry_after_503_reuses_the_idempotency_key(api: Api, gateway: FakeGateway) -> None:
    gateway.script.append(answer(problem(503, "unavailable", "Unavailable")))

    accepted = await api("send_message", SID, "hello")

    assert accepted.turn_id == "t1"
    keys = [r.headers["idempotency-key"] for r in gateway.requests]
    assert len(keys) == 2 and keys[0] == keys[1]
    assert len(api.sleeps) == 1 and 0.25 <= api.sleeps[0] <= 0.5


async def test_lost_answer_then_resend_starts_one_turn(api: Api, gateway: FakeGateway) -> None:
    # The first POST reaches the gateway (a turn starts), then its answer is lost.
    def lost(request: httpx.Request) -> httpx.Response:
        gateway.post_message(request, SID)
        raise httpx.ReadError("connection reset", request=request)

    gateway.script.append(lost)

    accepted = await api("send_message", SID, "hello")

    assert accepted.turn_id == "t1" and list(gateway.turns.values()) == ["t1"]


@pytest.mark.parametrize("status", [400, 404, 409, 422])
async def test_no_retry_on_client_errors(api: Api, gateway: FakeGateway, status: int) -> None:
    gateway.script.append(answer(problem(status, "x", "X")))

    with pytest.raises(ApiError):
        await api("send_message", SID, "hello")

    assert len(gateway.requests) == 1 and api.sleeps == []


async def test_429_waits_retry_after(api: Api, gateway: FakeGateway) -> None:
    gateway.script.append(answer(problem(429, "rate-limited", "Too Many", **{"Retry-After": "7"})))

    assert (await api("health")).status == "ok"

    assert api.sleeps == [7.0] and len(gateway.requests) == 2


async def test_503_retry_after_is_honoured(api: Api, gateway: FakeGateway) -> None:
    gateway.script.append(
        answer(problem(503, "unavailable", "Unavailable", **{"Retry-After": "1"}))
    )

    assert (await api("cancel", SID)).cancelled

    assert api.sleeps == [1.0] and len(gateway.requests) == 2


async def test_429_beyond_the_cap_raises_at_once(connect: Connect, gateway: FakeGateway) -> None:
    api = connect(max_retry_after=10.0)
    gateway.script.append(
        answer(problem(429, "rate-limited", "Too Many", **{"Retry-After": "120"}))
    )

    with pytest.raises(RateLimited) as raised:
        await api("health")

    assert raised.value.retry_after == 120.0 and raised.value.retryable
    assert api.sleeps == [] and len(gateway.requests) == 1


async def test_retries_are_bounded(api: Api, gateway: FakeGateway) -> None:
    gateway.script.extend(answer(problem(503, "unavailable", "Unavailable")) for _ in range(5))

    with pytest.raises(Unavailable):
        await api("get_session", SID)

    assert len(gateway.requests) == 3  # the first attempt and retries=2
    assert len(api.sleeps) == 2 and api.sleeps[1] >= 0.5  # doubled backoff, with jitter


async def test_connection_errors_retry_then_map(api: Api, gateway: FakeGateway) -> None:
    gateway.script.extend(fail(httpx.ReadTimeout) for _ in range(3))

    with pytest.raises(ConnectionFailed) as raised:
        await api("get_session", SID)

    assert len(gateway.requests) == 3
    assert isinstance(raised.value, DependencyUnavailable) and raised.value.retryable
    assert isinstance(raised.value.__cause__, httpx.ReadTimeout)
    assert "GET /v1/sessions/s1: ReadTimeout" in str(raised.value)


async def test_create_session_is_not_resent_when_ambiguous(api: Api, gateway: FakeGateway) -> None:
    gateway.script.append(answer(problem(503, "unavailable", "Unavailable")))
    with pytest.raises(Unavailable):
        await api("create_session")
    gateway.script.append(fail(httpx.ReadError))
    with pytest.raises(ConnectionFailed):
        await api("create_session")

    assert len(gateway.requests) == 2 and gateway.sessions == {}


async def test_create_session_is_resent_when_never_sent(api: Api, gateway: FakeGateway) -> None:
    gateway.script.append(fail(httpx.ConnectError))

    session = await api("create_session")

    assert session.session_id == "s1" and len(gateway.sessions) == 1 and len(gateway.requests) == 2


# --- server-sent events -----------------------------------------------------------------------


def decode_all(text: str) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    return [e for line in text.split("\n") if (e := decoder.feed(line)) is not None]


def test_sse_decoder_fields_and_dispatch() -> None:
    text = (
        "\ufeff: heartbeat comment\n"
        "id: 7\nevent: turn.started\ndata: first\ndata:  second\ndata\n\n"
        ":ping\n\n"  # a comment alone dispatches nothing
        "event: delta\ndata:{}\n\n"  # no id: the last one persists
        "retry: 2500\nunknown: field\ndata: x\n\n"
        "id: 8\n\n"  # id without data: no event, but the id is remembered
        "data: y\n\n"
        "data: never dispatched"
    )

    events = decode_all(text)

    assert events == [
        ServerSentEvent(event="turn.started", data="first\n second\n", id="7"),
        ServerSentEvent(event="delta", data="{}", id="7"),
        ServerSentEvent(event="message", data="x", id="7", retry=2500),
        ServerSentEvent(event="message", data="y", id="8", retry=2500),
    ]


async def test_events_yield_events_and_deltas(api: Api, gateway: FakeGateway) -> None:
    message = frame(received(2))
    gateway.event_streams.append(
        sse(
            ": connected\n\n",
            frame(created(1)),
            message[:40],  # an event split across reads
            message[40:],
            delta_frame("Hel"),
            ": heartbeat\n\n",
            "id: 3\nevent: tool.newfangled\ndata: {}\n\n",  # a newer server's event: skipped
            delta_frame("lo", index=2),
        )
    )

    items = await api.collect("events", SID, follow=False)

    assert [type(i).__name__ for i in items] == [
        "SessionCreated",
        "MessageReceived",
        "Delta",
        "Delta",
    ]
    assert "".join(i.text for i in items if isinstance(i, Delta)) == "Hello"
    assert items[1].model_dump_json() == message.split("data: ")[1].strip()
    request = gateway.last
    assert (request.url.path, request.headers["accept"]) == (
        f"/v1/sessions/{SID}/events",
        "text/event-stream",
    )
    assert "last-event-id" not in request.headers


async def test_events_multiline_data_is_joined(api: Api, gateway: FakeGateway) -> None:
    event = received(1)
    pretty = json.dumps(json.loads(event.model_dump_json()), indent=2).replace("\n", "\ndata: ")
    gateway.event_streams.append(sse(f"id: 1\nevent: message.received\ndata: {pretty}\n\n"))

    assert await api.collect("events", SID, follow=False) == [event]


async def test_events_after_sends_last_event_id(api: Api, gateway: FakeGateway) -> None:
    gateway.event_streams.append(sse(frame(received(5)), frame(started(6))))

    items = await api.collect("events", SID, after=5, follow=False)

    assert gateway.last.headers["last-event-id"] == "5"
    assert [i.seq for i in items] == [6]  # a server replaying seq 5 is deduplicated


async def test_follow_reconnects_without_duplicates(api: Api, gateway: FakeGateway) -> None:
    gateway.event_streams += [
        sse(frame(created(1)), frame(received(2))),  # the server ends the stream
        sse(
            frame(received(2)),
            frame(started(3)),
            delta_frame("4"),
            frame(completed(4)),
            frame(closed(5)),
        ),
    ]

    items = await api.collect("events", SID)

    assert [getattr(i, "seq", "delta") for i in items] == [1, 2, 3, "delta", 4, 5]
    assert [r.headers.get("last-event-id") for r in gateway.requests] == [None, "2"]
    assert api.sleeps == [0.0]  # the stream had made progress: reconnect at once


async def test_follow_resumes_after_a_broken_connection(api: Api, gateway: FakeGateway) -> None:
    gateway.event_streams += [
        sse(frame(created(1)), frame(received(2)), error=httpx.ReadError),
        sse(frame(started(3)), frame(closed(4))),
    ]

    items = await api.collect("events", SID)

    assert [i.seq for i in items] == [1, 2, 3, 4]
    assert gateway.requests[1].headers["last-event-id"] == "2"


async def test_overflow_resubscribes_after_the_last_seq(api: Api, gateway: FakeGateway) -> None:
    gateway.event_streams += [
        sse(
            frame(created(1)),
            f"event: overflow\ndata: {json.dumps({'session_id': SID})}\n\n",
            frame(received(9)),
        ),
        sse(frame(received(2)), frame(started(3))),
    ]

    items = await api.collect("events", SID, follow=False)

    assert [i.seq for i in items] == [1, 2, 3]  # nothing read past the overflow
    assert gateway.requests[1].headers["last-event-id"] == "1"


async def test_follow_gives_up_after_empty_connections(api: Api, gateway: FakeGateway) -> None:
    gateway.event_streams.append(sse(frame(created(1))))  # then only empty streams

    with pytest.raises(ConnectionFailed, match="after seq 1"):
        await api.collect("events", SID)

    assert len(gateway.requests) == 4  # the good one, then 1 + retries=2 that end at once
    assert api.sleeps[0] == 0.0 and len(api.sleeps) == 3


async def test_follow_false_raises_on_a_broken_stream(api: Api, gateway: FakeGateway) -> None:
    gateway.event_streams.append(sse(frame(created(1)), error=httpx.RemoteProtocolError))

    with pytest.raises(ConnectionFailed):
        await api.collect("events", SID, follow=False)


async def test_events_error_status_raises_problem(api: Api, gateway: FakeGateway) -> None:
    gateway.event_streams.append(answer(problem(404, "not-found", "Not Found", "no session s1")))

    with pytest.raises(NotFound, match="no session s1"):
        await api.collect("events", SID)


async def test_bad_event_data_is_a_protocol_error(api: Api, gateway: FakeGateway) -> None:
    gateway.event_streams.append(sse('id: 1\nevent: turn.started\ndata: {"seq": 1}\n\n'))

    with pytest.raises(ProtocolError, match=r"'turn\.started'"):
        await api.collect("events", SID, follow=False)


# --- streamed turns ---------------------------------------------------------------------------


async def test_stream_turn_ends_at_the_terminal_event(api: Api, gateway: FakeGateway) -> None:
    gateway.turn_streams.append(
        sse(
            frame(received(2)),
            frame(started(3)),
            delta_frame("4"),
            frame(completed(4)),
            frame(received(5, "t2")),
        )
    )

    items = await api.collect("stream_turn", SID, "2+2?", idempotency_key="k-7")

    assert [type(i).__name__ for i in items] == [
        "MessageReceived",
        "TurnStarted",
        "Delta",
        "TurnCompleted",
    ]
    request = gateway.last
    assert (request.method, request.url.path) == ("POST", f"/v1/sessions/{SID}/messages")
    assert request.headers["accept"] == "text/event-stream"
    assert request.headers["idempotency-key"] == "k-7" and body(request) == {"content": "2+2?"}


async def test_stream_turn_resumes_from_the_event_stream(api: Api, gateway: FakeGateway) -> None:
    gateway.turn_streams.append(sse(frame(received(2)), delta_frame("4"), error=httpx.ReadError))
    gateway.event_streams.append(
        sse(
            frame(started(3)),
            frame(received(4, "t0")),
            frame(completed(5)),
            frame(started(6, "t0")),
        )
    )

    items = await api.collect("stream_turn", SID, "2+2?")

    assert [getattr(i, "seq", "delta") for i in items] == [2, "delta", 3, 5]  # t0's events dropped
    resume = gateway.last
    assert (resume.method, resume.url.path) == ("GET", f"/v1/sessions/{SID}/events")
    assert resume.headers["last-event-id"] == "2"


async def test_stream_turn_reposts_with_the_same_key_before_the_turn_is_known(
    api: Api, gateway: FakeGateway
) -> None:
    gateway.turn_streams += [
        sse(": accepted\n\n", error=httpx.ReadError),
        sse(frame(received(2)), frame(completed(3))),
    ]

    items = await api.collect("stream_turn", SID, "2+2?")

    assert [i.seq for i in items] == [2, 3]
    keys = [r.headers["idempotency-key"] for r in gateway.requests]
    assert len(keys) == 2 and keys[0] == keys[1] and list(gateway.turns) == keys[:1]


# --- construction -----------------------------------------------------------------------------


def test_sync_and_async_clients_have_the_same_methods() -> None:
    def public(cls: type) -> dict[str, list[str]]:
        return {
            name: list(inspect.signature(member).parameters)
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_") and name not in {"close", "aclose"}
        }

    assert public(Client) == public(AsyncClient)
    assert "ask" in public(Client) and "stream_turn" in public(Client)


def test_from_env_reads_agentcluster_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTCLUSTER_URL", BASE)
    monkeypatch.setenv("AGENTCLUSTER_API_KEY", KEY)
    gateway = FakeGateway()

    with Client.from_env(transport=httpx.MockTransport(gateway)) as client:
        assert client.health().status == "ok"

    assert str(gateway.last.url) == f"{BASE}/v1/health"
    assert gateway.last.headers["authorization"] == f"Bearer {KEY}"


async def test_async_context_manager_closes(gateway: FakeGateway) -> None:
    async with AsyncClient(BASE, KEY, transport=httpx.MockTransport(gateway)) as client:
        assert (await client.health()).status == "ok"

    with pytest.raises(RuntimeError):
        await client.health()


def test_sync_context_manager_closes(gateway: FakeGateway) -> None:
    with Client(BASE, KEY, transport=httpx.MockTransport(gateway)) as client:
        assert client.agent("default").name == "default"

    with pytest.raises(RuntimeError):
        client.health()
