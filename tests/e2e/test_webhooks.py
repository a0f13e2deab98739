"""Webhooks through the real gateway: a listener on 127.0.0.1 (which the tenant's policy allows)
receives each turn's outcome signed with the tenant's secret (and its pause for a person's
approval), retried until it answers 2xx; a target the policy denies is never connected to."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentcluster.testing.fake_llm import FakeLLM, Reply, Rule, ToolCall
from agentcluster.webhooks import verify
from tests.conftest import eventually
from tests.e2e.conftest import new_tenant, script_tool_turn
from tests.support.opa import tenant_policy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

LOOPBACK_ALLOWED = {"network": {"allow_cidrs": ["127.0.0.1/32"]}}


@dataclass
class Listener:
    """Records what it receives; answers from ``answers`` first, then 200."""

    url: str = ""
    answers: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def endpoint(self, request: Request) -> Response:
        self.received.append((dict(request.headers), await request.body()))
        return Response(status_code=self.answers.pop(0) if self.answers else 200)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    found = Listener()
    port = _free_port()
    app = Starlette(routes=[Route("/hook", found.endpoint, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        return bool(server.started)

    await eventually(started, timeout=30, message="the webhook listener started")
    found.url = f"http://127.0.0.1:{port}/hook"
    yield found
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _session(http: httpx.AsyncClient, key: str, webhook: str | None = None) -> str:
    body: dict[str, Any] = {"agent": "tester"} | ({"webhook": webhook} if webhook else {})
    response = await http.post("/v1/sessions", json=body, headers=_auth(key))
    assert response.status_code == 201, response.text
    assert response.json()["webhook"] == webhook
    return str(response.json()["session_id"])


async def _ask(http: httpx.AsyncClient, key: str, session_id: str, body: dict[str, Any]) -> str:
    answer = await http.post(
        f"/v1/sessions/{session_id}/messages",
        params={"wait": "true"},
        json=body,
        headers=_auth(key),
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["turn_id"])


async def _webhook_events(
    http: httpx.AsyncClient, key: str, session_id: str, done: str
) -> list[dict[str, Any]]:
    """The session's webhook events, read from its stream until one of type ``done``."""
    found: list[dict[str, Any]] = []
    async with http.stream(
        "GET", f"/v1/sessions/{session_id}/events", headers=_auth(key)
    ) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                event = json.loads(line.removeprefix("data:"))
                if event["type"].startswith("webhook."):
                    found.append(event)
                    if event["type"] == done and event.get("final", True):
                        return found
    raise AssertionError("the stream ended first")


async def test_a_turns_outcome_reaches_the_webhook_signed_with_the_tenants_secret(
    http: httpx.AsyncClient, fake_llm: FakeLLM, listener: Listener
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content="hooked")))
    tenant_id, key = await new_tenant(http, "webhooks")
    async with tenant_policy(tenant_id, LOOPBACK_ALLOWED):
        session_id = await _session(http, key, listener.url)
        turn_id = await _ask(http, key, session_id, {"content": token})
        events = await asyncio.wait_for(
            _webhook_events(http, key, session_id, "webhook.delivered"), 60
        )
    assert [(e["type"], e["turn_id"], e["attempts"]) for e in events] == [
        ("webhook.delivered", turn_id, 1)
    ]
    [(headers, body)] = listener.received
    outcome = json.loads(body)
    assert (outcome["type"], outcome["turn_id"], outcome["content"]) == (
        "turn.completed",
        turn_id,
        "hooked",
    )
    secret = (await http.get("/v1/webhooks/secret", headers=_auth(key))).json()["secret"]
    assert verify(secret, headers, body)
    _, other_key = await new_tenant(http, "webhooks-other")
    others = (await http.get("/v1/webhooks/secret", headers=_auth(other_key))).json()["secret"]
    assert others != secret and not verify(others, headers, body)


async def test_a_failing_webhook_is_retried_until_it_answers_and_a_message_may_name_its_own(
    http: httpx.AsyncClient, fake_llm: FakeLLM, listener: Listener
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content="again")))
    tenant_id, key = await new_tenant(http, "webhooks")
    listener.answers = [500, 500]
    async with tenant_policy(tenant_id, LOOPBACK_ALLOWED):
        session_id = await _session(http, key)  # no session webhook: the message names one
        rotated = (await http.post("/v1/webhooks/secret/rotate", headers=_auth(key))).json()
        turn_id = await _ask(http, key, session_id, {"content": token, "webhook": listener.url})
        events = await asyncio.wait_for(
            _webhook_events(http, key, session_id, "webhook.delivered"), 90
        )
    assert [(e["type"], e["attempts"], e.get("final")) for e in events] == [
        ("webhook.failed", 1, False),
        ("webhook.failed", 2, False),
        ("webhook.delivered", 3, None),
    ]
    assert "500" in events[0]["error"]
    assert len(listener.received) == 3
    ids = {headers["webhook-id"] for headers, _ in listener.received}
    assert len(ids) == 1  # one delivery, retried: the receiver can deduplicate on it
    headers, body = listener.received[-1]
    assert json.loads(body)["turn_id"] == turn_id
    assert verify(rotated["secret"], headers, body)
    current = (await http.get("/v1/webhooks/secret", headers=_auth(key))).json()["secret"]
    assert current == rotated["secret"]


async def test_a_webhook_the_policy_denies_is_never_connected_to(
    http: httpx.AsyncClient, fake_llm: FakeLLM, listener: Listener
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content="nope")))
    _tenant_id, key = await new_tenant(http, "webhooks-denied")  # no loopback in its policy
    session_id = await _session(http, key, listener.url)
    await _ask(http, key, session_id, {"content": token})
    events = await asyncio.wait_for(_webhook_events(http, key, session_id, "webhook.failed"), 60)
    assert [(e["type"], e["final"]) for e in events] == [("webhook.failed", True)]
    assert "denied" in events[0]["error"] and "127.0.0.1" in events[0]["error"]

    async def still_nothing() -> bool:
        return not listener.received

    assert await eventually(still_nothing, timeout=5, message="nothing received")


async def test_a_turn_waiting_for_approval_calls_the_webhook_then_again_when_it_ends(
    http: httpx.AsyncClient, fake_llm: FakeLLM, listener: Listener
) -> None:
    token = uuid.uuid4().hex
    calculate = ToolCall(name="calculator", arguments={"expression": "6*7"})
    script_tool_turn(fake_llm, token, calculate, "forty-two")
    tenant_id, key = await new_tenant(http, "webhooks-approval")
    policy = {**LOOPBACK_ALLOWED, "approvals": [{"tools": ["calculator"]}]}
    async with tenant_policy(tenant_id, policy):
        session_id = await _session(http, key, listener.url)
        turn_id = await _ask(http, key, session_id, {"content": token})

        async def received(count: int) -> bool:
            return len(listener.received) >= count

        await eventually(lambda: received(1), timeout=60, message="the pause's webhook")
        paused = json.loads(listener.received[0][1])
        assert (paused["type"], paused["turn_id"]) == ("turn.awaiting_approval", turn_id)
        [call_id] = paused["tool_call_ids"]
        decided = await http.post(
            f"/v1/sessions/{session_id}/approvals/{call_id}",
            json={"decision": "approve"},
            headers=_auth(key),
        )
        assert decided.status_code == 200, decided.text
        await eventually(lambda: received(2), timeout=60, message="the outcome's webhook")
    done = json.loads(listener.received[1][1])
    assert (done["type"], done["turn_id"], done["content"]) == (
        "turn.completed",
        turn_id,
        "forty-two",
    )
