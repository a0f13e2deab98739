"""The tool actor on real Ray: schemas, builtins, python_exec in the session workspace, workspace
files, http_fetch to an allowlisted loopback server and a denied target, and an MCP server."""

from __future__ import annotations

import functools
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from actors.tools import ToolActor, start_tool_actor
from agentcluster.config import load_settings
from agentcluster.tools import ToolInvocation, ToolOutcome
from agentcluster.tools._mcp import McpConfig, StdioServerConfig
from agentcluster.tools._ssrf import DefaultNetworkPolicy
from tests.support.http_server import http_server
from tests.support.servers import MCP_SERVER_SCRIPT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with http_server() as port:
        yield port


@pytest.fixture(scope="module")
def workspace_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workspaces")


@pytest.fixture(scope="module")
async def actor(ray_cluster: None, workspace_root: Path) -> AsyncIterator[Any]:
    settings = load_settings(
        {"tools": {"workspace_root": workspace_root, "python_cpu_s": 2, "python_wall_s": 20}}
    )
    mcp = McpConfig(
        servers=[
            StdioServerConfig(
                name="test",
                transport="stdio",
                command=sys.executable,
                args=[str(MCP_SERVER_SCRIPT), "stdio"],
                env={"FASTMCP_LOG_LEVEL": "WARNING"},
            )
        ]
    )
    handle = start_tool_actor(
        settings,
        network_policy_factory=functools.partial(
            DefaultNetworkPolicy, allow_cidrs=["127.0.0.1/32"]
        ),
        mcp_config=mcp,
    )
    yield handle
    await handle.stop.remote()
    ray.kill(handle)


async def _call(actor: Any, tool: str, arguments: dict[str, Any], session: str) -> ToolOutcome:
    invocation = ToolInvocation(
        tenant_id="tenant-a",
        session_id=session,
        turn_id="turn-1",
        agent="tester",
        tool_call_id=uuid.uuid4().hex,
        tool=tool,
        arguments=arguments,
    )
    return ToolOutcome.model_validate(await actor.execute.remote(invocation))


def _session() -> str:
    return f"s-{uuid.uuid4().hex[:12]}"


async def test_schemas_list_every_tool(actor: Any) -> None:
    names = [schema.name for schema in await actor.schemas.remote()]
    assert names == sorted(names)
    assert set(names) >= {
        "calculator",
        "current_time",
        "http_fetch",
        "python_exec",
        "file_read",
        "file_write",
        "file_list",
        "file_delete",
        "file_copy",
        "file_move",
        "file_search",
        "mcp.test.add",
        "mcp.test.fail",
    }


async def test_health_reports_tools_isolation_and_mcp(actor: Any) -> None:
    health = await actor.health.remote()
    assert health["sandbox"]["isolation"] == "bwrap", health["sandbox"]
    assert health["sandbox"]["uid"] != 0
    assert health["mcp"]["test"]["connected"] is True
    assert health["tools"] == len(await actor.schemas.remote())


async def test_calculator(actor: Any) -> None:
    outcome = await _call(actor, "calculator", {"expression": "6 * 7"}, _session())
    assert (outcome.ok, outcome.result) == (True, {"expression": "6 * 7", "value": 42})


async def test_python_exec_writes_into_the_session_workspace(
    actor: Any, workspace_root: Path
) -> None:
    session = _session()
    code = "open('note.txt', 'w').write('from python'); print('done')"
    ran = await _call(actor, "python_exec", {"code": code}, session)
    assert ran.ok, ran.error
    assert (ran.result["stopped"], ran.result["stdout"]) == ("ok", "done\n")
    assert (workspace_root / "tenant-a" / session / "note.txt").read_text() == "from python"
    read = await _call(actor, "file_read", {"path": "note.txt"}, session)
    assert read.ok and read.result["text"] == "from python"


async def test_python_exec_limits_hold_in_the_actor(actor: Any) -> None:
    outcome = await _call(actor, "python_exec", {"code": "while True: pass"}, _session())
    assert outcome.ok and outcome.result["stopped"] == "cpu"


async def test_http_fetch_to_an_allowlisted_loopback_server(actor: Any, port: int) -> None:
    url = f"http://127.0.0.1:{port}/redirect/1"
    outcome = await _call(actor, "http_fetch", {"url": url}, _session())
    assert outcome.ok, outcome.error
    assert (outcome.result["status"], outcome.result["text"]) == (200, "hello")


async def test_http_fetch_to_a_target_outside_the_allowlist_is_denied(
    actor: Any, port: int
) -> None:
    # 127.0.0.2 is loopback but outside the allowlisted 127.0.0.1/32; 10.0.0.1 is private.
    # Both are denied before any connection is attempted.
    for url, category in (
        (f"http://127.0.0.2:{port}/hello", "127.0.0.2 (loopback)"),
        ("http://10.0.0.1/", "10.0.0.1 (private)"),
    ):
        outcome = await _call(actor, "http_fetch", {"url": url}, _session())
        assert not outcome.ok
        assert category in (outcome.error or "")
        assert "not allowlisted" in (outcome.error or "")


async def test_mcp_tools_run_through_the_actor(actor: Any) -> None:
    added = await _call(actor, "mcp.test.add", {"a": 1, "b": 2}, _session())
    assert added.ok and added.result["structured"] == {"result": 3}
    failed = await _call(actor, "mcp.test.fail", {"reason": "x"}, _session())
    assert (failed.ok, failed.error) == (False, "MCP tool test.fail failed: failed on purpose: x")


async def test_unknown_tools_and_bad_arguments_are_failed_outcomes(actor: Any) -> None:
    unknown = await _call(actor, "no_such_tool", {}, _session())
    assert (unknown.ok, unknown.error) == (False, "unknown tool 'no_such_tool'")
    bad = await _call(actor, "python_exec", {"code": 1}, _session())
    assert not bad.ok and "must be of type string" in (bad.error or "")


async def test_the_plain_class_works_without_ray(workspace_root: Path) -> None:
    settings = load_settings({"tools": {"workspace_root": workspace_root}})
    host = ToolActor(
        settings,
        network_policy_factory=DefaultNetworkPolicy,
        mcp_config=McpConfig(),
    )
    names = [schema.name for schema in await host.schemas()]
    assert "http_fetch" in names and not any(name.startswith("mcp.") for name in names)
    await host.stop()
