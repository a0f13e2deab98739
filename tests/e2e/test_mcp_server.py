"""The gateway's MCP server at /mcp, driven by fastmcp's own Client over streamable HTTP."""

from __future__ import annotations

import uuid

import httpx
import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError

from agentcluster import events as ev
from agentcluster.client import AsyncClient
from agentcluster.testing.fake_llm import FakeLLM, Reply, Rule
from tests.e2e.conftest import ADMIN_KEY

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
