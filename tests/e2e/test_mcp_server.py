"""The gateway's MCP server at /mcp, driven by fastmcp's own Client over streamable HTTP."""

from __future__ import annotations

import uuid

import httpx
import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError

from agentcluster import events as ev
from agentcluster.client import AsyncClient
from agentcluster.testing.fake_llm import FakeLLM, Reply, Rule, ToolCall
from tests.e2e.conftest import ADMIN_KEY, new_tenant, script_tool_turn, tenant_policy

ASK_CALCULATOR = {"approvals": [{"tools": ["calculator"], "reason": "a person checks sums"}]}

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def test_an_mcp_client_lists_agents_creates_a_session_and_gets_an_answer(
    gateway_url: str, tenant_key: str, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(
        Rule(when_last_user_contains=token, reply=Reply(content=f"mcp answer {token}"))
    )
    async with Client(f"{gateway_url}/mcp", auth=tenant_key) as client:
        tools = {tool.name for tool in await client.list_tools()}
        assert {"list_agents", "create_session", "send_message", "get_messages"} <= tools
        agents = (await client.call_tool("list_agents")).structured_content
        assert agents is not None and "tester" in str(agents)
        session = (await client.call_tool("create_session", {"agent": "tester"})).data
        turn = (
            await client.call_tool(
                "send_message",
                {
                    "session_id": session["session_id"],
                    "content": f"hello {token}",
                    "idempotency_key": f"mcp-{token}",
                },
            )
        ).data
        assert (turn["status"], turn["content"]) == ("completed", f"mcp answer {token}")
        # A retry with the same idempotency key gets the same turn, not a second one.
        again = (
            await client.call_tool(
                "send_message",
                {
                    "session_id": session["session_id"],
                    "content": f"hello {token}",
                    "idempotency_key": f"mcp-{token}",
                },
            )
        ).data
        assert again["turn_id"] == turn["turn_id"]
        history = (
            await client.call_tool("get_messages", {"session_id": session["session_id"]})
        ).structured_content
        assert [m["role"] for m in history["result"]] == ["user", "assistant"]
        with pytest.raises(ToolError, match="unknown agent"):
            await client.call_tool("create_session", {"agent": "no-such-agent"})
        with pytest.raises(ToolError, match="not found"):
            await client.call_tool(
                "send_message", {"session_id": str(uuid.uuid4()), "content": "x"}
            )


async def test_mcp_needs_a_valid_api_key(gateway_url: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{gateway_url}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Accept": "application/json, text/event-stream"},
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    with pytest.raises(Exception, match="error response"):  # fastmcp's wording for the 401
        async with Client(f"{gateway_url}/mcp", auth="not-a-key-" + uuid.uuid4().hex) as client:
            await client.list_tools()
    # The admin key authenticates, but sessions belong to tenants.
    async with Client(f"{gateway_url}/mcp", auth=ADMIN_KEY) as client:
        with pytest.raises(ToolError, match="tenant key"):
            await client.call_tool("create_session", {"agent": "tester"})


async def test_mcp_send_message_takes_a_multitask_strategy(
    gateway_url: str, tenant_key: str, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(
        Rule(when_last_user_contains=f"{token} slow", reply=Reply(content="late", ttft_s=60))
    )
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content="now")))
    async with AsyncClient(gateway_url, api_key=tenant_key) as http:
        session = await http.create_session(agent="tester")
        slow = await http.send_message(session.session_id, f"{token} slow")
        async for item in http.events(session.session_id):
            if isinstance(item, ev.TurnStarted) and item.turn_id == slow.turn_id:
                break
    async with Client(f"{gateway_url}/mcp", auth=tenant_key) as client:
        message = {"session_id": session.session_id, "content": f"{token} again"}
        with pytest.raises(ToolError, match="open"):
            await client.call_tool("send_message", {**message, "multitask_strategy": "reject"})
        turn = (
            await client.call_tool("send_message", {**message, "multitask_strategy": "interrupt"})
        ).data
        assert (turn["status"], turn["content"]) == ("completed", "now")


async def test_mcp_a_turn_awaiting_approval_is_listed_approved_and_rejected(
    gateway_url: str, http: httpx.AsyncClient, fake_llm: FakeLLM
) -> None:
    tenant_id, key = await new_tenant(http)
    token = uuid.uuid4().hex
    call = ToolCall(name="calculator", arguments={"expression": "6*7"})
    script_tool_turn(fake_llm, token, call, f"the sum is done {token}")
    async with (
        tenant_policy(tenant_id, ASK_CALCULATOR),
        Client(f"{gateway_url}/mcp", auth=key) as client,
    ):
        tools = {tool.name for tool in await client.list_tools()}
        assert {"list_approvals", "decide_approval"} <= tools
        session_id = (await client.call_tool("create_session", {"agent": "tester"})).data[
            "session_id"
        ]
        message = {"session_id": session_id, "content": f"compute {token}"}
        paused = (await client.call_tool("send_message", message)).data
        assert paused["status"] == "awaiting_approval"
        [asked] = paused["approvals"]
        assert (asked["tool"], asked["arguments"]) == ("calculator", {"expression": "6*7"})
        assert asked["reason"] == "a person checks sums" and asked["status"] == "pending"
        assert paused["awaiting_approval"] == [asked["tool_call_id"]]
        listed = (await client.call_tool("list_approvals", {"session_id": session_id})).data
        assert [a["tool_call_id"] for a in listed] == [asked["tool_call_id"]]

        decision = {"session_id": session_id, "tool_call_id": asked["tool_call_id"]}
        approved = await client.call_tool("decide_approval", {**decision, "decision": "approve"})
        assert approved.data["approval"]["status"] == "approved"
        turn = approved.data["turn"]
        assert (turn["status"], turn["content"]) == ("completed", f"the sum is done {token}")
        assert turn["turn_id"] == paused["turn_id"]
        with pytest.raises(ToolError, match="no longer awaiting"):
            await client.call_tool("decide_approval", {**decision, "decision": "reject"})
        assert (await client.call_tool("list_approvals", {"session_id": session_id})).data == []

        paused = (await client.call_tool("send_message", message)).data
        [asked] = paused["approvals"]
        rejected = await client.call_tool(
            "decide_approval",
            {
                "session_id": session_id,
                "tool_call_id": asked["tool_call_id"],
                "decision": "reject",
                "message": "not today",
            },
        )
        assert rejected.data["approval"]["status"] == "rejected"
        assert rejected.data["turn"]["status"] == "completed"
        history = (await client.call_tool("get_messages", {"session_id": session_id})).data
        tools_said = [m["content"] for m in history if m["role"] == "tool"]
        assert "42" in tools_said[0] and "rejected by a person: not today" in tools_said[1]
        decided = (
            await client.call_tool(
                "list_approvals", {"session_id": session_id, "include_decided": True}
            )
        ).data
        assert sorted(a["status"] for a in decided) == ["approved", "rejected"]
