"""Open streams per tenant, and the in-cluster handle's checks, end to end: real Serve HTTP on
loopback (two gateway replicas), Redis holding the stream slots, the OPA server, the fake LLM.

Every request here has a client timeout: a request left hanging without a status fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastmcp import Client as McpClient
from fastmcp.exceptions import ToolError

import agentcluster
from agentcluster import errors
from agentcluster.client import Forbidden
from agentcluster.testing.fake_llm import FakeLLM, Reply, Rule
from tests.conftest import eventually
from tests.e2e.conftest import ADMIN_KEY, new_tenant, tenant_policy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PROBLEMS = "https://agentcluster.dev/problems/"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ANSWER_TIMEOUT_S = 20.0
"""Upper bound for any single answer: a request still without a status by then is a hang."""


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _cause(exc: BaseException) -> Any:
    """The replica's own exception: Ray raises a RayTaskError that is also an instance of the
    cause's class, with the cause's attributes on ``cause``."""
    return getattr(exc, "cause", exc)


@pytest.fixture
async def streams_http(gateway_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client with room for many concurrent streams and a bound on every answer."""
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=0)
    timeout = httpx.Timeout(ANSWER_TIMEOUT_S)
    async with httpx.AsyncClient(base_url=gateway_url, timeout=timeout, limits=limits) as client:
        yield client


async def _set_limits(http: httpx.AsyncClient, tenant_id: str, **limits: Any) -> dict[str, Any]:
    response = await http.put(f"/v1/tenants/{tenant_id}/limits", json=limits, headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


REPLICAS = 2
"""Gateway replicas of the e2e app (tests/e2e/conftest.py)."""


async def _set_limits_everywhere(
    http: httpx.AsyncClient, tenant_id: str, **limits: Any
) -> dict[str, Any]:
    """PUT the tenant's limits, then read them on every replica: a replica that answers the GET
    reads the overrides from the store and uses them at once (no wait for refresh_s)."""
    written = await _set_limits(http, tenant_id, **limits)
    seen: set[str] = set()

    async def read_on_every_replica() -> bool:
        response = await http.get(f"/v1/tenants/{tenant_id}/limits", headers=ADMIN)
        assert response.status_code == 200 and response.json()["overrides"] == written["overrides"]
        seen.add(response.headers["x-agentcluster-replica"])
        return len(seen) == REPLICAS

    await eventually(read_on_every_replica, timeout=30, message="every replica read the limits")
    return written


async def _session(http: httpx.AsyncClient, key: str) -> str:
    created = await http.post("/v1/sessions", json={"agent": "tester"}, headers=_auth(key))
    assert created.status_code == 201, created.text
    return str(created.json()["session_id"])


class OpenStreams:
    """Event streams held open (headers received) until closed."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http
        self._stack = contextlib.AsyncExitStack()
        self.held: list[httpx.Response] = []
        self.refused: list[httpx.Response] = []

    async def open(self, key: str, session_id: str) -> httpx.Response:
        """Open one stream; a 200 stays open in ``held``, anything else is read and kept in
        ``refused``."""
        request = self._http.build_request(
            "GET", f"/v1/sessions/{session_id}/events", headers=_auth(key)
        )
        response = await self._http.send(request, stream=True)
        if response.status_code == 200:
            self.held.append(response)
            self._stack.push_async_callback(response.aclose)
        else:
            await response.aread()
            await response.aclose()
            self.refused.append(response)
        return response

    async def close_one(self) -> None:
        await self.held.pop().aclose()

    async def aclose(self) -> None:
        await self._stack.aclose()


@contextlib.asynccontextmanager
async def open_streams(http: httpx.AsyncClient) -> AsyncIterator[OpenStreams]:
    streams = OpenStreams(http)
    try:
        yield streams
    finally:
        await streams.aclose()


def _assert_too_many_streams(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["retry-after"].isdigit() and int(response.headers["retry-after"]) >= 1
    problem = response.json()
    assert problem["type"] == PROBLEMS + "too-many-streams" and problem["status"] == 429
    assert "too many open streams" in problem["detail"]


async def _streamed_turn(http: httpx.AsyncClient, key: str, session_id: str, text: str) -> str:
    """POST a message with Accept: text/event-stream; the completed turn's content."""
    headers = {**_auth(key), "Accept": "text/event-stream"}
    url = f"/v1/sessions/{session_id}/messages"
    async with http.stream("POST", url, json={"content": text}, headers=headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                data = json.loads(line.removeprefix("data:").strip())
                if data.get("type") == "turn.completed":
                    return str(data["content"])
    raise AssertionError("the stream ended without turn.completed")


async def test_past_its_stream_limit_a_tenant_gets_429_at_once_while_others_stream(
    streams_http: httpx.AsyncClient, fake_llm: FakeLLM
) -> None:
    http = streams_http
    tenant_id, key = await new_tenant(http, "streams")
    _other_id, other_key = await new_tenant(http, "streams-other")
    limits = await _set_limits(http, tenant_id)  # the defaults, read back
    assert limits["defaults"]["max_open_streams"] == 16
    limit = limits["limits"]["max_open_streams"]
    session_id = await _session(http, key)
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content="still on")))

    async with open_streams(http) as streams:
        # Four times the limit at once, spread over both replicas: exactly the limit is served
        # (the count is shared through Redis), every other request gets its 429 without waiting.
        await asyncio.gather(*(streams.open(key, session_id) for _ in range(4 * limit)))
        assert len(streams.held) == limit
        assert len(streams.refused) == 3 * limit
        for refused in streams.refused:
            _assert_too_many_streams(refused)

        # Waits and streamed turns count too, and are refused before anything is committed.
        url = f"/v1/sessions/{session_id}/messages"
        waited = await http.post(f"{url}?wait=true", json={"content": "w"}, headers=_auth(key))
        _assert_too_many_streams(waited)
        sse = {**_auth(key), "Accept": "text/event-stream"}
        streamed = await http.post(url, json={"content": "s"}, headers=sse)
        _assert_too_many_streams(streamed)
        history = await http.get(url, headers=_auth(key))
        assert history.status_code == 200 and history.json()["items"] == []
        # Short requests of the same tenant are not streams: still answered.
        assert (await http.get(f"/v1/sessions/{session_id}", headers=_auth(key))).status_code == 200

        # Another tenant streams a whole turn meanwhile.
        other_session = await _session(http, other_key)
        answer = await _streamed_turn(http, other_key, other_session, f"hello {token}")
        assert answer == "still on"

        # Closing one stream frees one slot (the client's disconnect reaches the replica).
        await streams.close_one()

        async def reopened() -> bool:
            return (await streams.open(key, session_id)).status_code == 200

        await eventually(reopened, timeout=30, message="a closed stream's slot is free again")
        _assert_too_many_streams(await streams.open(key, session_id))

    # All closed: the tenant's slots are all free again. The probe holds slots itself while it
    # looks: it waits between looks for its own streams' slots to come back (each is released
    # once Serve cancels the closed request in its replica, which takes longer on a busy machine).
    async def all_free() -> bool:
        async with open_streams(http) as again:
            await asyncio.gather(*(again.open(key, session_id) for _ in range(limit)))
            return len(again.held) == limit

    await eventually(
        all_free, timeout=30, interval=2.0, message="every closed stream's slot is free"
    )


async def test_a_wait_holds_a_slot_and_mcp_send_message_is_refused_past_the_limit(
    streams_http: httpx.AsyncClient, gateway_url: str, fake_llm: FakeLLM
) -> None:
    http = streams_http
    tenant_id, key = await new_tenant(http, "streams-mcp")
    await _set_limits_everywhere(http, tenant_id, max_open_streams=1)
    session_id = await _session(http, key)
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content="waited")))

    # One slot: a wait that completes releases it for the next one.
    url = f"/v1/sessions/{session_id}/messages?wait=true"
    for n in range(2):
        done = await http.post(url, json={"content": f"{token} {n}"}, headers=_auth(key))
        assert done.status_code == 200 and done.json()["content"] == "waited", done.text

    async with open_streams(http) as streams:
        assert (await streams.open(key, session_id)).status_code == 200
        async with McpClient(f"{gateway_url}/mcp", auth=key) as mcp:
            with pytest.raises(ToolError, match="too many open streams"):
                await mcp.call_tool("send_message", {"session_id": session_id, "content": "m"})
            # Calls that do not wait are not limited by open streams.
            assert (await mcp.call_tool("get_messages", {"session_id": session_id})).content
    history = await http.get(f"/v1/sessions/{session_id}/messages", headers=_auth(key))
    assert [m["content"] for m in history.json()["items"] if m["role"] == "user"] == [
        f"{token} 0",
        f"{token} 1",
    ]


async def test_the_handle_goes_through_the_rate_limit_the_policy_and_the_stream_slots(
    http: httpx.AsyncClient, fake_llm: FakeLLM
) -> None:
    tenant_id, key = await new_tenant(http, "handle")
    client = agentcluster.connect(key)
    session = await client.create_session(agent="tester")

    # A stream over the handle holds one of the tenant's slots until it is closed.
    await _set_limits_everywhere(http, tenant_id, max_open_streams=1)
    first = asyncio.Event()

    async def follow() -> None:
        async for _item in client.events(session.session_id, after=0):
            first.set()

    fake_llm.script.add_rule(
        Rule(when_last_user_contains=session.session_id, reply=Reply(content="seen"))
    )
    await client.send_message(session.session_id, f"hello {session.session_id}")
    following = asyncio.create_task(follow())
    try:
        await asyncio.wait_for(first.wait(), ANSWER_TIMEOUT_S)
        url = f"/v1/sessions/{session.session_id}/events"
        async with http.stream("GET", url, headers=_auth(key)) as refused:
            assert refused.status_code == 429
            assert json.loads(await refused.aread())["type"] == PROBLEMS + "too-many-streams"
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following

    async def slot_free() -> bool:
        async with http.stream("GET", url, headers=_auth(key)) as response:
            return response.status_code == 200

    await eventually(slot_free, timeout=30, message="the handle's stream released its slot")

    # Policy (another tenant: the replicas remember decisions for a second): a denied
    # session.message is refused over the handle as over HTTP, and nothing is stored.
    denied_id, denied_key = await new_tenant(http, "handle-denied")
    denied_client = agentcluster.connect(denied_key)
    denied_session = await denied_client.create_session(agent="tester")
    async with tenant_policy(denied_id, {"deny_actions": ["session.message"]}):
        with pytest.raises(Forbidden, match="denied by policy") as denied:
            await denied_client.send_message(denied_session.session_id, "not allowed")
        assert isinstance(denied.value, errors.UserError) and _cause(denied.value).status == 403
        with pytest.raises(Forbidden):
            [item async for item in denied_client.stream_turn(denied_session.session_id, "no")]
    assert (await denied_client.messages(denied_session.session_id)).items == []

    # Rate: handle calls count against the tenant's requests per minute, like HTTP calls.
    await _set_limits_everywhere(http, tenant_id, requests_per_minute=3, max_open_streams=None)
    for _ in range(3):
        await client.agents()
    with pytest.raises(errors.RateLimited, match="3 requests per minute") as limited_call:
        await client.agents()
    retry_after = _cause(limited_call.value).retry_after
    assert retry_after is not None and retry_after >= 1
    limited = await http.get("/v1/agents", headers=_auth(key))
    assert limited.status_code == 429 and limited.json()["type"] == PROBLEMS + "rate-limited"


async def test_streams_past_the_replicas_capacity_are_refused_at_once_and_short_requests_go_on(
    streams_http: httpx.AsyncClient,
) -> None:
    """Many tenants each within their limit can together fill the replicas: each replica then
    refuses further streams with a 503 at once, keeping request slots free for short requests
    (without that, Serve's proxy queues requests past max_ongoing_requests with no answer)."""
    http = streams_http
    per_replica = 48  # SA01_LIMITS_REPLICA_MAX_OPEN_STREAMS, the e2e app's default
    tenants = [await new_tenant(http, "crowd") for _ in range(8)]
    sessions = [(key, await _session(http, key)) for _id, key in tenants]
    _idle_id, idle_key = await new_tenant(http, "crowd-idle")
    async with open_streams(http) as streams:
        attempts = [
            streams.open(key, session_id) for key, session_id in sessions for _ in range(16)
        ]
        await asyncio.gather(*attempts)  # every request answered: none hangs past the timeout
        assert len(streams.held) + len(streams.refused) == 128
        assert per_replica <= len(streams.held) <= REPLICAS * per_replica
        for refused in streams.refused:
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["type"] == PROBLEMS + "dependency-unavailable"
            assert "most open streams" in refused.json()["detail"]
        for _ in range(2 * REPLICAS):
            listed = await http.get("/v1/sessions", headers=_auth(idle_key))
            assert listed.status_code == 200
