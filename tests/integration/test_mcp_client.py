"""MCP client tools against a real fastmcp server, over stdio (a subprocess) and streamable HTTP
(a subprocess listening on 127.0.0.1)."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agentcluster.errors import ConfigError
from agentcluster.tools import InProcessToolExecutor, ToolInvocation, ToolRegistry
from agentcluster.tools._mcp import (
    HttpServerConfig,
    McpConfig,
    McpToolset,
    StdioServerConfig,
    load_mcp_config,
)
from tests.support.servers import MCP_SERVER_SCRIPT, free_port, mcp_http_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

QUIET = {"FASTMCP_LOG_LEVEL": "WARNING", "FASTMCP_SHOW_SERVER_BANNER": "false"}


def _stdio(name: str) -> StdioServerConfig:
    return StdioServerConfig(
        name=name,
        transport="stdio",
        command=sys.executable,
        args=[str(MCP_SERVER_SCRIPT), "stdio"],
        env=QUIET,
    )


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    with mcp_http_server() as url:
        yield url


@pytest.fixture(params=["stdio", "http"])
async def toolset(request: pytest.FixtureRequest) -> AsyncIterator[McpToolset]:
    """A toolset with one server named after the transport, so tool names differ per case."""
    transport = request.param
    server: StdioServerConfig | HttpServerConfig
    if transport == "stdio":
        server = _stdio("stdio")
    else:
        url = request.getfixturevalue("http_url")
        server = HttpServerConfig(name="http", transport="http", url=url)
    toolset = McpToolset(McpConfig(servers=[server]), call_timeout_s=10, ping_after_idle_s=0)
    yield toolset
    await toolset.close()


def _invocation(tool: str, arguments: dict[str, object]) -> ToolInvocation:
    return ToolInvocation(
        tenant_id="t1",
        session_id=f"s-{uuid.uuid4().hex[:8]}",
        turn_id="turn-1",
        agent="tester",
        tool_call_id=uuid.uuid4().hex,
        tool=tool,
        arguments=arguments,
    )


async def _executor(toolset: McpToolset) -> tuple[InProcessToolExecutor, str]:
    tools = await toolset.start()
    (server,) = toolset.health()
    return InProcessToolExecutor(ToolRegistry(tools)), server


async def test_lists_the_servers_tools_with_their_schemas(toolset: McpToolset) -> None:
    executor, server = await _executor(toolset)
    (add,) = executor.schemas([f"mcp.{server}.add"])
    assert add.description == "Add two integers."
    assert add.parameters["properties"] == {"a": {"type": "integer"}, "b": {"type": "integer"}}
    assert add.parameters["required"] == ["a", "b"]
    assert toolset.health()[server] == {
        "transport": server,
        "connected": True,
        "tools": 5,
        "error": None,
    }


async def test_calls_a_tool(toolset: McpToolset) -> None:
    executor, server = await _executor(toolset)
    outcome = await executor.execute(_invocation(f"mcp.{server}.add", {"a": 2, "b": 40}))
    assert outcome.ok, outcome.error
    assert outcome.result == {"text": "42", "structured": {"result": 42}}


async def test_a_tool_error_reaches_the_model(toolset: McpToolset) -> None:
    executor, server = await _executor(toolset)
    outcome = await executor.execute(_invocation(f"mcp.{server}.fail", {"reason": "testing"}))
    assert not outcome.ok
    assert outcome.error == f"MCP tool {server}.fail failed: failed on purpose: testing"


async def test_arguments_are_checked_against_the_servers_schema(toolset: McpToolset) -> None:
    executor, server = await _executor(toolset)
    outcome = await executor.execute(_invocation(f"mcp.{server}.add", {"a": "two"}))
    assert not outcome.ok
    assert "argument 'b' is required" in (outcome.error or "")


async def test_a_slow_call_times_out_as_a_tool_error(toolset: McpToolset) -> None:
    servers = [connection.config for connection in toolset.connections]
    slow = McpToolset(McpConfig(servers=servers), call_timeout_s=0.5, connect_timeout_s=30)
    try:
        executor = InProcessToolExecutor(ToolRegistry(await slow.start()))
        (server,) = slow.health()
        outcome = await executor.execute(_invocation(f"mcp.{server}.sleep", {"seconds": 5}))
        assert not outcome.ok
        assert outcome.error == f"MCP tool {server}.sleep timed out after 0.5 s"
    finally:
        await slow.close()


async def test_a_stdio_server_that_died_is_restarted() -> None:
    toolset = McpToolset(
        McpConfig(servers=[_stdio("dies")]), call_timeout_s=10, ping_after_idle_s=0
    )
    try:
        executor = InProcessToolExecutor(ToolRegistry(await toolset.start()))
        first = await executor.execute(_invocation("mcp.dies.server_pid", {}))
        pid = first.result["structured"]["result"]
        os.kill(pid, signal.SIGKILL)

        again = await executor.execute(_invocation("mcp.dies.server_pid", {}))
        assert again.ok, again.error
        assert again.result["structured"]["result"] != pid
    finally:
        await toolset.close()


async def test_an_http_server_that_restarted_is_reconnected() -> None:
    port = free_port()
    with mcp_http_server(port) as url:
        server = HttpServerConfig(name="restarts", transport="http", url=url)
        toolset = McpToolset(McpConfig(servers=[server]), call_timeout_s=10, ping_after_idle_s=0)
        executor = InProcessToolExecutor(ToolRegistry(await toolset.start()))
        first = await executor.execute(_invocation("mcp.restarts.server_pid", {}))
        assert first.ok, first.error
    try:
        with mcp_http_server(port):
            again = await executor.execute(_invocation("mcp.restarts.server_pid", {}))
            assert again.ok, again.error
            assert again.result["structured"]["result"] != first.result["structured"]["result"]
    finally:
        await toolset.close()


async def test_an_unreachable_server_is_left_out_and_reported() -> None:
    dead = HttpServerConfig(
        name="dead", transport="http", url=f"http://127.0.0.1:{free_port()}/mcp"
    )
    toolset = McpToolset(McpConfig(servers=[dead, _stdio("alive")]), call_timeout_s=5)
    try:
        tools = await toolset.start()
        assert {tool.schema.name for tool in tools} >= {"mcp.alive.add"}
        assert all(not tool.schema.name.startswith("mcp.dead.") for tool in tools)
        health = toolset.health()
        assert health["dead"]["connected"] is False and health["dead"]["error"]
        assert health["alive"]["connected"] is True
    finally:
        await toolset.close()


def test_the_committed_config_has_no_servers() -> None:
    assert load_mcp_config(Path(__file__).parents[2] / "configs" / "mcp.yaml") == McpConfig()


def test_config_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mcp.yaml"
    path.write_text("servers:\n  - {name: a.b, transport: stdio, command: x}\n")
    with pytest.raises(ConfigError, match=r"SA01_TOOLS_MCP_CONFIG: .*mcp.yaml"):
        load_mcp_config(path)
    path.write_text(
        "servers:\n  - {name: a, transport: stdio, command: x}\n"
        "  - {name: a, transport: http, url: 'http://127.0.0.1:1/mcp'}\n"
    )
    with pytest.raises(ConfigError, match="unique: a"):
        load_mcp_config(path)
