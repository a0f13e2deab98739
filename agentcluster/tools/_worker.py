"""The tool worker: the builtins, http_fetch, python_exec, workspace files and MCP tools, off the
session host.

:class:`ToolWorker` is plain Python; the tool pool's Ray shell (``actors/tools.py``) makes it a
pool member (``ToolActor``: ``ray.remote`` is applied by the pool, as for browser actors).
Pydantic models cross the actor boundary: a :class:`~agentcluster.tools.ToolInvocation` in, a
:class:`~agentcluster.tools.ToolOutcome` out (and :class:`~agentcluster.llm.ToolSchema` s), with
the in-process executor's semantics (tool failures are ``ok=False`` outcomes, never exceptions).
No tool runs inside a SessionHost.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from agentcluster import tracing
from agentcluster.config import Settings, load_settings
from agentcluster.llm import ToolSchema
from agentcluster.logs import configure_logging
from agentcluster.tools._base import Tool, ToolInvocation, ToolOutcome
from agentcluster.tools._builtins import builtin_registry as _builtin_registry
from agentcluster.tools._files import SessionWorkspaces, file_tools
from agentcluster.tools._http import HttpFetchTool
from agentcluster.tools._mcp import McpConfig, McpToolset, load_mcp_config
from agentcluster.tools._registry import InProcessToolExecutor, ToolRegistry
from agentcluster.tools._sandbox import PythonExecTool, PythonSandbox, SandboxLimits, SandboxRuntime
from agentcluster.tools._ssrf import NetworkPolicy, Resolver, SsrfGuard
from agentcluster.tracing import Carrier, SpanKind

__all__ = ["NetworkPolicyFactory", "ToolWorker"]

log = logging.getLogger(__name__)

NetworkPolicyFactory = Callable[[], NetworkPolicy]
"""Builds a tool worker's network policy in its process (must pickle, e.g. a
``functools.partial``)."""


def _engine_from_settings(settings: Settings) -> NetworkPolicy:
    # The Rego engine (OPA server, or the same policy in-process); imported here because it
    # loads the Wasm runtime, which only tool actors that fetch need.
    from agentcluster.policy import build_policy_engine

    return build_policy_engine(settings)


class ToolWorker:
    """Hosts a tool registry and runs calls on it (a tool pool member once the Ray shell applies
    ``ray.remote``).

    Args:
        settings: the settings tree; loaded from the environment if omitted. ``settings.tools``
            gives the limits, ``settings.workspace_root`` the workspaces.
        network_policy_factory: builds the policy http_fetch asks for every address (called in
            the actor; must pickle, e.g. ``functools.partial(DefaultNetworkPolicy, ...)``). By
            default the Rego policy engine chosen by the settings.
        mcp_config: the MCP servers; by default read from ``settings.tools.mcp_config``.
        resolver: DNS for http_fetch; the system resolver by default.
        mcp_ping_after_idle_s: see :class:`~agentcluster.tools._mcp.McpServerConnection`.

    Raises:
        ConfigError: the MCP config file or a limit is invalid.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        network_policy_factory: NetworkPolicyFactory | None = None,
        mcp_config: McpConfig | None = None,
        resolver: Resolver | None = None,
        mcp_ping_after_idle_s: float = 5.0,
    ) -> None:
        self._settings = settings or load_settings()
        configure_logging(self._settings)
        tracing.configure_tracing(self._settings.tracing, "tool-actor")
        tools = self._settings.tools
        policy = (
            network_policy_factory()
            if network_policy_factory
            else _engine_from_settings(self._settings)
        )
        # Whatever the tools create (workspace files, sandbox scratch) is the actor user's alone.
        os.umask(0o077)
        limits = SandboxLimits.from_settings(tools)
        workspaces = SessionWorkspaces(
            self._settings.workspace_root, limits.quota, tools.workspace_retention_s
        )
        self._workspaces = workspaces
        self._sweeper: asyncio.Task[None] | None = None
        self._sandbox = PythonSandbox(limits, SandboxRuntime.from_settings(tools))
        self._registry: ToolRegistry = _builtin_registry()
        hosted: list[Tool] = [
            HttpFetchTool.from_settings(tools, SsrfGuard(policy, resolver)),
            PythonExecTool(self._sandbox, workspaces),
            *file_tools(workspaces),
        ]
        for tool in hosted:
            self._registry.register(tool)
        self._mcp = McpToolset(
            mcp_config if mcp_config is not None else load_mcp_config(tools.mcp_config),
            call_timeout_s=tools.call_timeout_s,
            ping_after_idle_s=mcp_ping_after_idle_s,
        )
        self._executor = InProcessToolExecutor(self._registry, timeout_s=tools.call_timeout_s)
        self._started: asyncio.Task[None] | None = None
        self._calls = 0

    async def _ready(self) -> None:
        # MCP servers are connected once, on the first call of any kind (health included, so
        # pool members come up warm); every caller waits for that same start.
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        # Probe the sandbox at start, so the actor's log says which isolation this node has.
        await self._sandbox.status()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_workspaces())
        for tool in await self._mcp.start():
            self._registry.register(tool)

    async def schemas(self) -> list[ToolSchema]:
        """Every tool's schema, sorted by name."""
        await self._ready()
        return self._registry.schemas(self._registry.names())

    async def execute(self, call: ToolInvocation, trace: Carrier | None = None) -> ToolOutcome:
        """Run one call; tool failures come back as ``ok=False`` outcomes.

        Args:
            call: the call.
            trace: the caller's trace carrier; this call's span continues it.
        """
        attributes = tracing.rpc_attributes(
            "ToolActor", "execute", tracing.tool_attributes(call.tool, call.tool_call_id)
        )
        with tracing.span(
            "ToolActor/execute", kind=SpanKind.SERVER, attributes=attributes, parent=trace or {}
        ) as span:
            await self._ready()
            self._calls += 1
            outcome = await self._executor.execute(call)
            span.set_attribute("agentcluster.tool.ok", outcome.ok)
            if not outcome.ok:
                tracing.mark_error(span, outcome.error or "tool failed")
        return outcome

    async def health(self) -> dict[str, Any]:
        """Liveness and what this actor offers: tools, sandbox isolation, MCP servers."""
        await self._ready()
        status = await self._sandbox.status()
        return {
            "actor_pid": os.getpid(),
            "tools": len(self._registry.names()),
            "calls": self._calls,
            "sandbox": status.to_dict(),
            "isolation": {"python_exec": status.summary()},
            "mcp": self._mcp.health(),
        }

    async def _sweep_workspaces(self) -> None:
        # Unused workspaces go after the retention period; every tool actor of a node sweeps
        # the same root, which is harmless (removal ignores what another one removed first).
        interval = min(self._settings.tools.workspace_retention_s / 10, 3600.0)
        while True:
            try:
                removed = await asyncio.to_thread(self._workspaces.sweep)
            except OSError as exc:
                log.warning("workspace sweep failed: %s", exc)
            else:
                if removed:
                    log.info("removed %d workspaces unused for the retention period", removed)
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        """Close the MCP sessions (stdio servers stop) and send the spans still batched; called
        before the actor is killed."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self._mcp.close()
        await tracing.flush_tracing()
