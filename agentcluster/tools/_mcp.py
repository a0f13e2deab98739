"""MCP client tools: the tools of the MCP servers in ``configs/mcp.yaml``, as our Tool protocol.

Each configured server gets one long-lived fastmcp ``Client`` session (stdio subprocess or
streamable HTTP). Its tools are listed when the session opens and exposed as
``mcp.<server>.<tool>`` with the server's input schema. A dead session is replaced: before a call
after some idle time the session is pinged, and a session that failed is reconnected before the
next call. A call that was cut off mid-way is *not* retried (the server may have acted on it);
the model hears that the connection was lost and may call again.

Config (YAML)::

    servers:
      - name: files                  # [A-Za-z0-9_-]+, unique
        transport: stdio
        command: /usr/bin/python3
        args: [-m, my_mcp_server]
        env: {LOG_LEVEL: warning}     # added to the few safe variables the MCP SDK passes
        cwd: /srv/mcp
      - name: search
        transport: http               # streamable HTTP
        url: http://127.0.0.1:9000/mcp
        headers: {Authorization: Bearer ...}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agentcluster.errors import ConfigError, ToolError
from agentcluster.llm import ToolSchema
from agentcluster.tools._base import ToolInvocation

__all__ = [
    "HttpServerConfig",
    "McpConfig",
    "McpServerConnection",
    "McpTool",
    "McpToolset",
    "StdioServerConfig",
    "load_mcp_config",
]

log = logging.getLogger(__name__)

_NAME = r"^[A-Za-z0-9_-]+$"
# JSON-RPC error code of a closed MCP connection (mcp_types.CONNECTION_CLOSED).
_CONNECTION_CLOSED = -32000
_REQUEST_TIMEOUT = -32001


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StdioServerConfig(_Config):
    """A server started as a subprocess, spoken to over its stdin/stdout."""

    name: str = Field(pattern=_NAME)
    transport: Literal["stdio"]
    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: Path | None = None


class HttpServerConfig(_Config):
    """A server reached over streamable HTTP."""

    name: str = Field(pattern=_NAME)
    transport: Literal["http"]
    url: str = Field(pattern=r"^https?://")
    headers: dict[str, str] = Field(default_factory=dict)


ServerConfig = Annotated[StdioServerConfig | HttpServerConfig, Field(discriminator="transport")]


class McpConfig(_Config):
    """The MCP servers whose tools the tool actors offer."""

    servers: list[ServerConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> McpConfig:
        names = [server.name for server in self.servers]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"server names must be unique: {', '.join(duplicates)}")
        return self


def load_mcp_config(path: Path) -> McpConfig:
    """Read the MCP server list; a missing file means no servers.

    Raises:
        ConfigError: the file is not valid YAML or does not match the schema (names the file).
    """
    if not path.exists():
        return McpConfig()
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return McpConfig.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        first = str(exc).splitlines()
        raise ConfigError(f"SA01_TOOLS_MCP_CONFIG: {path}: {' '.join(first[:3])}") from None


def _client(
    config: StdioServerConfig | HttpServerConfig, timeout_s: float, connect_timeout_s: float
) -> Any:
    # Imported here: fastmcp is heavy, and only actors with MCP servers need it.
    from fastmcp import Client
    from fastmcp.client.transports import StdioTransport, StreamableHttpTransport

    transport: Any
    if isinstance(config, StdioServerConfig):
        env = dict(config.env)
        cwd = str(config.cwd) if config.cwd else None
        transport = StdioTransport(
            config.command, list(config.args), env=env, cwd=cwd, keep_alive=False
        )
    else:
        transport = StreamableHttpTransport(config.url, headers=dict(config.headers))
    # The client's default request timeout covers listing tools while connecting (a server
    # starting on a busy node may take seconds); each call passes the call timeout itself.
    return Client(
        transport, timeout=max(timeout_s, connect_timeout_s), init_timeout=connect_timeout_s
    )


class McpServerConnection:
    """One server's session: connect, list tools, call, reconnect after a failure.

    Args:
        config: how to reach the server.
        call_timeout_s: limit for each call.
        connect_timeout_s: limit for starting or reaching the server and listing its tools.
        ping_after_idle_s: ping the session before a call if it was idle this long (0: always),
            so a server that died while idle is reconnected instead of failing the call.
    """

    def __init__(
        self,
        config: StdioServerConfig | HttpServerConfig,
        *,
        call_timeout_s: float,
        connect_timeout_s: float = 30.0,
        ping_after_idle_s: float = 5.0,
    ) -> None:
        self.config = config
        self._timeout_s = call_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._ping_after_idle_s = ping_after_idle_s
        self._client: Any = None
        self._healthy = False
        self._last_used = 0.0
        self._lock = asyncio.Lock()
        self.tools: list[Any] = []
        self.last_error: str | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def connected(self) -> bool:
        return self._client is not None and self._healthy

    async def connect(self) -> None:
        """Open the session and list the server's tools (closing any previous session).

        Raises:
            ToolError: the server could not be started, reached or listed.
        """
        async with self._lock:
            await self._reconnect()

    async def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        """Call one tool; see :func:`_result` for the shape of the answer.

        Raises:
            ToolError: the tool reported an error, the call timed out, the server rejected the
                request, or the connection was lost (the message says which).
        """
        async with self._lock:
            # Only connecting is serialized; calls on a healthy session run concurrently.
            client = await self._ensure_session()
        try:
            result = await client.call_tool_mcp(tool, arguments, timeout=self._timeout_s)
        except Exception as exc:
            raise self._call_failed(client, tool, exc) from None
        finally:
            self._last_used = time.monotonic()
        if result.is_error:
            raise ToolError(f"MCP tool {self.name}.{tool} failed: {_text(result) or 'no details'}")
        return _result(result)

    async def close(self) -> None:
        """Close the session (and stop a stdio server)."""
        async with self._lock:
            await self._close()

    async def _ensure_session(self) -> Any:
        if not self.connected:
            await self._reconnect()
        elif time.monotonic() - self._last_used >= self._ping_after_idle_s:
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._client.ping()
            except Exception as exc:
                # Why broad: a dead transport surfaces as MCPError, httpx, OS or runtime errors.
                log.info("MCP server %s did not answer a ping (%s); reconnecting", self.name, exc)
                await self._reconnect()
        return self._client

    async def _reconnect(self) -> None:
        await self._close()
        client = _client(self.config, self._timeout_s, self._connect_timeout_s)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await client.__aenter__()
                self.tools = list(await client.list_tools())
        except Exception as exc:
            # Why broad: starting a server can fail in any layer (spawn, HTTP, protocol).
            self.last_error = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                await client.close()
            raise ToolError(f"MCP server {self.name} is unavailable: {self.last_error}") from None
        self._client, self._healthy = client, True
        self._last_used = time.monotonic()
        self.last_error = None

    async def _close(self) -> None:
        client, self._client, self._healthy = self._client, None, False
        if client is not None:
            # A session that already failed re-raises its failure on close; it is gone anyway.
            with contextlib.suppress(Exception):
                await client.close()

    def _call_failed(self, client: Any, tool: str, exc: Exception) -> ToolError:
        code = getattr(exc, "code", None)
        if code == _REQUEST_TIMEOUT or isinstance(exc, TimeoutError):
            return ToolError(f"MCP tool {self.name}.{tool} timed out after {self._timeout_s:g} s")
        if isinstance(code, int) and code != _CONNECTION_CLOSED:
            return ToolError(f"MCP server {self.name} rejected {tool}: {exc}")
        if client is self._client:
            self._healthy = False
            self.last_error = f"{type(exc).__name__}: {exc}"
        return ToolError(
            f"lost the connection to MCP server {self.name} during {tool} ({exc}); the call "
            "may or may not have run; the server is reconnected on the next call"
        )


def _text(result: Any) -> str:
    return "\n".join(block.text for block in result.content if getattr(block, "type", "") == "text")


def _result(result: Any) -> Any:
    """``{"text", "structured"?, "other_content"?}``: text blocks joined, the rest summarized."""
    answer: dict[str, Any] = {"text": _text(result)}
    if result.structured_content is not None:
        answer["structured"] = result.structured_content
    others = [
        {"type": block.type, "mime_type": getattr(block, "mime_type", None)}
        for block in result.content
        if getattr(block, "type", "") != "text"
    ]
    if others:
        answer["other_content"] = others
    return answer


class McpTool:
    """One MCP server tool as our Tool: ``mcp.<server>.<tool>`` with the server's schema."""

    def __init__(self, connection: McpServerConnection, listed: Any) -> None:
        self._connection = connection
        self._tool_name: str = listed.name
        parameters = dict(listed.input_schema or {})
        parameters.setdefault("type", "object")
        self._schema = ToolSchema(
            name=f"mcp.{connection.name}.{listed.name}",
            description=listed.description or f"{listed.name} on MCP server {connection.name}",
            parameters=parameters,
        )

    @property
    def schema(self) -> ToolSchema:
        return self._schema

    async def run(self, arguments: dict[str, Any], invocation: ToolInvocation) -> Any:
        """Call the tool on its server (errors come back as ToolError)."""
        return await self._connection.call(self._tool_name, arguments)


class McpToolset:
    """The sessions to every configured MCP server, and their tools.

    Args:
        config: the servers.
        call_timeout_s, connect_timeout_s, ping_after_idle_s: see
            :class:`McpServerConnection`.
    """

    def __init__(
        self,
        config: McpConfig,
        *,
        call_timeout_s: float,
        connect_timeout_s: float = 30.0,
        ping_after_idle_s: float = 5.0,
    ) -> None:
        self._connections = [
            McpServerConnection(
                server,
                call_timeout_s=call_timeout_s,
                connect_timeout_s=connect_timeout_s,
                ping_after_idle_s=ping_after_idle_s,
            )
            for server in config.servers
        ]

    @property
    def connections(self) -> Sequence[McpServerConnection]:
        return tuple(self._connections)

    async def start(self) -> list[McpTool]:
        """Connect to every server at once and return the tools of those that answered.

        A server that cannot be reached is logged and left out (its error is in
        :meth:`health`); the other servers' tools are still offered.
        """
        results = await asyncio.gather(
            *(connection.connect() for connection in self._connections), return_exceptions=True
        )
        tools: list[McpTool] = []
        for connection, outcome in zip(self._connections, results, strict=True):
            if isinstance(outcome, ToolError):
                log.warning("MCP server %s left out: %s", connection.name, outcome.message)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                tools.extend(McpTool(connection, listed) for listed in connection.tools)
        return tools

    def health(self) -> dict[str, dict[str, Any]]:
        """Per server: transport, whether connected, how many tools, the last error."""
        return {
            connection.name: {
                "transport": connection.config.transport,
                "connected": connection.connected,
                "tools": len(connection.tools),
                "error": connection.last_error,
            }
            for connection in self._connections
        }

    async def close(self) -> None:
        """Close every session."""
        await asyncio.gather(*(connection.close() for connection in self._connections))
