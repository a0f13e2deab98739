"""One trace per turn across the cluster: a message sent over HTTP to the real Serve gateway,
the turn on a SessionHost actor, its LLM calls (fake LLM on loopback) and a calculator call on a
tool actor, each process exporting its spans over OTLP/HTTP to a loopback receiver.

The turn is reached three ways: accepted (202, the host runs it later in its worker), waited
for (``?wait=true``) and streamed (``Accept: text/event-stream``). In every case the spans form
one tree, linked across the gateway replica, the host and the tool actor processes."""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider

from agentcluster import tracing
from agentcluster.testing.fake_llm import FakeLLM, ToolCall
from tests.conftest import eventually
from tests.e2e.conftest import new_tenant, script_tool_turn
from tests.e2e.test_api import _sse
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

Mode = Literal["accepted", "wait", "stream"]
HOST_CALL: dict[Mode, str] = {
    "accepted": "SessionHost/notify",
    "wait": "SessionHost/wait_turn",
    "stream": "SessionHost/stream",
}
ROUTE = "POST /v1/sessions/{session_id}/messages"


def _one(spans: list[ReceivedSpan], name: str, kind: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name and s.kind == kind]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    return found[0]


def _component(span: ReceivedSpan) -> str:
    return str(span.resource["agentcluster.component"])


async def _send(
    http: httpx.AsyncClient, mode: Mode, session_id: str, token: str, headers: dict[str, str]
) -> str:
    """Send the message the way ``mode`` says; returns its turn id once the turn completed."""
    path = f"/v1/sessions/{session_id}/messages"
    body = {"content": f"what is 6*7? {token}"}
    if mode == "stream":
        response = await http.post(
            path, json=body, headers=headers | {"Accept": "text/event-stream"}
        )
        assert response.status_code == 200, response.text
        items = _sse(response.text)
        assert items[-1]["event"] == "turn.completed"
        return str(json.loads(items[-1]["data"])["turn_id"])
    response = await http.post(path, json=body, headers=headers, params={"wait": mode == "wait"})
    assert response.status_code == (200 if mode == "wait" else 202), response.text
    turn_id = str(response.json()["turn_id"])
    if mode == "accepted":

        async def completed() -> bool:
            listed = await http.get(path, headers=headers)
            return any(
                m["role"] == "assistant" and token in m["content"] for m in listed.json()["items"]
            )

        await eventually(completed, timeout=60, message="the accepted turn's answer")
    return turn_id


async def _events(http: httpx.AsyncClient, session_id: str, key: str) -> list[dict[str, Any]]:
    """The session's persisted events, up to its turn's outcome."""
    headers = {"Authorization": f"Bearer {key}"}
    async with http.stream("GET", f"/v1/sessions/{session_id}/events", headers=headers) as response:
        buffer = ""
        async for chunk in response.aiter_text():
            buffer += chunk
            events = [e for e in _sse(buffer) if "id" in e]
            if events and events[-1]["event"] == "turn.completed":
                return [json.loads(e["data"]) for e in events]
    pytest.fail("the event stream ended before the turn's outcome")


@pytest.mark.parametrize("mode", ["accepted", "wait", "stream"])
async def test_one_trace_holds_the_gateway_host_llm_and_tool_actor_spans(
    http: httpx.AsyncClient, fake_llm: FakeLLM, otlp_receiver: OtlpReceiver, mode: Mode
) -> None:
    tenant_id, key = await new_tenant(http, "trace")
    token = uuid.uuid4().hex
    calculate = ToolCall(name="calculator", arguments={"expression": "6*7"})
    script_tool_turn(fake_llm, token, calculate, f"it is 42 {token}")
    auth = {"Authorization": f"Bearer {key}"}
    created = await http.post("/v1/sessions", json={"agent": "tester"}, headers=auth)
    assert created.status_code == 201, created.text
    session_id = str(created.json()["session_id"])

    # The client's own span: the gateway continues its trace (W3C traceparent header).
    client = TracerProvider().get_tracer("e2e").start_span("e2e client")
    carrier = tracing.carrier(client)
    trace_id = format(client.get_span_context().trace_id, "032x")
    turn_id = await _send(http, mode, session_id, token, auth | carrier)
    client.end()

    expected = {
        (ROUTE, "server"),
        (HOST_CALL[mode], "client"),
        (HOST_CALL[mode], "server"),
        ("invoke_agent tester", "internal"),
        ("execute_tool calculator", "internal"),
        ("ToolActor/execute", "client"),
        ("ToolActor/execute", "server"),
    }

    async def whole_trace() -> list[ReceivedSpan]:
        spans = otlp_receiver.spans(trace_id)
        seen = {(s.name, s.kind) for s in spans}
        chats = [s for s in spans if s.name == "chat fake-a"]
        return spans if expected <= seen and len(chats) == 2 else []

    spans = await eventually(whole_trace, timeout=60, message=f"the {mode} turn's whole trace")

    gateway = _one(spans, ROUTE, "server")
    routed = _one(spans, HOST_CALL[mode], "client")
    hosted = _one(spans, HOST_CALL[mode], "server")
    turn = _one(spans, "invoke_agent tester", "internal")
    chats = [s for s in spans if s.name == "chat fake-a"]
    tool = _one(spans, "execute_tool calculator", "internal")
    leased = _one(spans, "ToolActor/execute", "client")
    executed = _one(spans, "ToolActor/execute", "server")

    # The tree, hop by hop: client -> gateway replica -> session host -> tool actor.
    assert gateway.parent_id == format(client.get_span_context().span_id, "016x")
    assert routed.parent_id == gateway.span_id
    assert hosted.parent_id == routed.span_id
    assert turn.parent_id == hosted.span_id
    assert all(chat.parent_id == turn.span_id for chat in chats)
    assert tool.parent_id == turn.span_id
    assert leased.parent_id == tool.span_id
    assert executed.parent_id == leased.span_id

    # ... made in three processes.
    assert {_component(s) for s in (gateway, routed)} == {"gateway"}
    assert {_component(s) for s in (hosted, turn, *chats, tool, leased)} == {"session-host"}
    assert _component(executed) == "tool-actor"
    pids = {s.resource["process.pid"] for s in (gateway, turn, executed)}
    assert len(pids) == 3
    assert {s.resource["service.name"] for s in spans} == {"agentcluster-e2e"}

    # What each span says.
    assert gateway.attributes["http.route"] == "/v1/sessions/{session_id}/messages"
    assert gateway.attributes["http.request.method"] == "POST"
    assert gateway.attributes["http.response.status_code"] == (202 if mode == "accepted" else 200)
    assert turn.attributes["agentcluster.tenant_id"] == tenant_id
    assert turn.attributes["agentcluster.session_id"] == session_id
    assert turn.attributes["agentcluster.turn_id"] == turn_id
    assert turn.attributes["agentcluster.turn.status"] == "completed"
    assert all(chat.attributes["gen_ai.request.model"] == "fake-a" for chat in chats)
    assert all(chat.attributes["gen_ai.usage.output_tokens"] > 0 for chat in chats)
    assert tool.attributes["agentcluster.tool.decision"] == "allowed"
    assert executed.attributes["gen_ai.tool.name"] == "calculator"
    assert executed.attributes["agentcluster.tool.ok"] is True
    assert not any(s.error for s in spans)

    # The turn's events carry the same trace.
    events = [e for e in await _events(http, session_id, key) if e.get("turn_id") == turn_id]
    assert {e["type"] for e in events} >= {"message.received", "tool.completed", "turn.completed"}
    assert all(trace_id in e["trace"]["traceparent"] for e in events)
