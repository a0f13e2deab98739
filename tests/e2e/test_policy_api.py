"""OPA policies on the API and on tool calls, end to end: the real OPA server decides per tenant."""

from __future__ import annotations

import uuid

import httpx
import pytest

from agentcluster.testing.fake_llm import FakeLLM, ToolCall
from tests.e2e.conftest import new_tenant, script_tool_turn, tenant_policy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PROBLEMS = "https://agentcluster.dev/problems/"


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def tenant(http: httpx.AsyncClient) -> tuple[str, str]:
    """A fresh tenant (id, key)."""
    return await new_tenant(http, "p")


async def test_a_denied_api_action_is_403_with_the_policy_reason(
    http: httpx.AsyncClient, tenant: tuple[str, str]
) -> None:
    tenant_id, key = tenant
    async with tenant_policy(tenant_id, {"deny_actions": ["session.create"]}):
        refused = await http.post("/v1/sessions", json={"agent": "tester"}, headers=_auth(key))
        listed = await http.get("/v1/sessions", headers=_auth(key))
    assert refused.status_code == 403, refused.text
    body = refused.json()
    assert body["type"] == PROBLEMS + "forbidden"
    assert "denied by policy" in body["detail"] and "session.create" in body["detail"]
    # Other actions stay allowed, and nothing was created.
    assert listed.status_code == 200 and listed.json()["items"] == []


async def test_a_denied_tool_call_reaches_the_model_and_the_events(
    http: httpx.AsyncClient, tenant: tuple[str, str], fake_llm: FakeLLM
) -> None:
    tenant_id, key = tenant
    token = uuid.uuid4().hex
    calculate = ToolCall(name="calculator", arguments={"expression": "2+2"})
    script_tool_turn(fake_llm, token, calculate, f"could not calculate {token}")
    async with tenant_policy(tenant_id, {"tools": {"allow": ["*"], "deny": ["calculator"]}}):
        created = await http.post("/v1/sessions", json={"agent": "tester"}, headers=_auth(key))
        session_id = created.json()["session_id"]
        answer = await http.post(
            f"/v1/sessions/{session_id}/messages?wait=true",
            json={"content": f"what is 2+2? {token}"},
            headers=_auth(key),
        )
    assert answer.json()["content"] == f"could not calculate {token}", answer.text
    decided: list[str] = []
    async with http.stream(
        "GET", f"/v1/sessions/{session_id}/events?after=0", headers=_auth(key)
    ) as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data:") and '"tool.decided"' in line:
                decided.append(line)
            if line.startswith("data:") and '"turn.completed"' in line:
                break
    assert len(decided) == 1
    assert '"allowed":false' in decided[0] and "calculator" in decided[0]
    tool_message = [
        m
        for m in fake_llm.requests
        if token in str(m.messages) and m.messages[-1]["role"] == "tool"
    ][-1].messages[-1]
    assert "denied by policy" in tool_message["content"]
    assert "calculator" in tool_message["content"]
