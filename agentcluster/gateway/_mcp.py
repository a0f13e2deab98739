"""The gateway's MCP server: agents over the Model Context Protocol (streamable HTTP at ``/mcp``).

MCP clients (IDEs, other agents) list agents, create sessions and send messages with the same API
keys and the same policy decisions as the HTTP API: every tool call goes through the
:class:`GatewayService`. A turn whose tool calls wait for a person answers ``send_message`` with
status ``awaiting_approval`` and the waiting calls (``approvals``); ``list_approvals`` and
``decide_approval`` answer them, the last decision waiting for the resumed turn's outcome.

The transport is stateless JSON, so any gateway replica can answer any request (Serve spreads
requests over replicas; a stateful MCP session would be pinned to one).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastmcp import FastMCP
from fastmcp.exceptions import ToolError
from fastmcp.server.auth import AccessToken, TokenVerifier
from fastmcp.server.dependencies import get_access_token
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from agentcluster import api
from agentcluster.domain import ApprovalDecision, MultitaskStrategy
from agentcluster.errors import AgentClusterError, DependencyUnavailable
from agentcluster.gateway._approval_turns import decide, wait_resumed
from agentcluster.gateway._problems import ProblemError
from agentcluster.gateway._service import Caller, GatewayService

__all__ = ["MCP_PATH", "McpEndpoint", "build_mcp"]

MCP_PATH = "/mcp"

ServiceGetter = Callable[[], GatewayService]


class ApiKeyVerifier(TokenVerifier):
    """Bearer tokens are agentcluster API keys, checked like the HTTP API checks them."""

    def __init__(self, service: ServiceGetter) -> None:
        super().__init__()
        self._service = service

    async def verify_token(self, token: str) -> AccessToken | None:
        """The key's tenant as the MCP principal, or None (401) for an unknown key."""
        try:
            caller = await self._service().authenticate(token)
        except ProblemError:
            return None
        return AccessToken(
            token=token,
            client_id=caller.key_id or "admin",
            scopes=[],
            claims={"tenant_id": caller.tenant_id, "admin": caller.admin},
        )


async def _caller(service: GatewayService) -> Caller:
    token = get_access_token()
    if token is None:  # the auth middleware runs first; this is a misconfiguration
        raise ToolError("unauthorized: no API key on this request")
    try:
        caller = await service.authenticate(token.token)
    except ProblemError as exc:
        raise ToolError(f"unauthorized: {exc.detail}") from None
    try:
        await service.admit(caller)  # the tenant's requests per minute, as over HTTP
    except AgentClusterError as exc:
        raise _tool_error(exc) from None
    return caller


def _tool_error(exc: ProblemError | AgentClusterError | ValidationError) -> ToolError:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error.get("loc", ())) or "arguments"
        return ToolError(f"invalid {where}: {error.get('msg')}")
    return ToolError(exc.detail if isinstance(exc, ProblemError) else exc.message)


async def _with_approvals(
    gateway: GatewayService, caller: Caller, turn: api.TurnOut
) -> dict[str, Any]:
    """The turn as a tool result; a paused turn lists its waiting calls (``approvals``)."""
    result = turn.model_dump(mode="json")
    if turn.status == "awaiting_approval":
        pending = await gateway.approvals(caller, turn.session_id)
        waiting = [a for a in pending.items if a.turn_id == turn.turn_id]
        result["approvals"] = [approval.model_dump(mode="json") for approval in waiting]
    return result


def _check_idempotency_key(value: str | None) -> None:
    if value is not None and (not 1 <= len(value) <= 200 or not value.isprintable()):
        raise ToolError("idempotency_key must be 1-200 printable characters")


def build_mcp(service: ServiceGetter) -> FastMCP:
    """The MCP server; ``service`` returns this replica's GatewayService when a call arrives."""
    mcp: FastMCP = FastMCP(
        name="agentcluster",
        instructions=(
            "Agent sessions on an agentcluster. List the agents, create a session with one, then "
            "send messages to it: send_message waits for the agent's answer. A turn with status "
            "awaiting_approval waits for a person: decide its approvals with decide_approval."
        ),
        auth=ApiKeyVerifier(service),
    )

    @mcp.tool
    async def list_agents() -> list[dict[str, Any]]:
        """The agents you can start sessions with: name, description, model and tools."""
        gateway = service()
        listed = gateway.agents(await _caller(gateway))
        return [agent.model_dump(mode="json") for agent in listed.items]

    @mcp.tool
    async def create_session(agent: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """Start a session with an agent; returns it (keep its session_id)."""
        gateway = service()
        caller = await _caller(gateway)
        try:
            body = api.SessionCreateIn(agent=agent, metadata=metadata or {})
            session = await gateway.create_session(caller, body)
        except (ProblemError, AgentClusterError, ValidationError) as exc:
            raise _tool_error(exc) from None
        return session.model_dump(mode="json")

    @mcp.tool
    async def send_message(
        session_id: str,
        content: str,
        idempotency_key: str | None = None,
        multitask_strategy: MultitaskStrategy = "enqueue",
    ) -> dict[str, Any]:
        """Send a message to a session and wait for the turn's outcome (status, content, usage).

        Pass the same idempotency_key when retrying, so a retry never starts a second turn.
        multitask_strategy, when a turn of the session is still open: enqueue (wait for it),
        reject (fail), interrupt (cancel it, keep what it wrote) or rollback (cancel it and
        hide its messages from the agent).
        """
        _check_idempotency_key(idempotency_key)
        gateway = service()
        caller = await _caller(gateway)
        try:
            turn = await gateway.ask(
                caller,
                session_id,
                api.MessageIn(content=content, multitask_strategy=multitask_strategy),
                idempotency_key,
            )
            return await _with_approvals(gateway, caller, turn)
        except (ProblemError, AgentClusterError, ValidationError) as exc:
            raise _tool_error(exc) from None

    @mcp.tool
    async def get_messages(session_id: str) -> list[dict[str, Any]]:
        """A session's conversation so far, oldest first."""
        gateway = service()
        caller = await _caller(gateway)
        try:
            messages = await gateway.messages(caller, session_id)
        except (ProblemError, AgentClusterError, ValidationError) as exc:
            raise _tool_error(exc) from None
        return [message.model_dump(mode="json") for message in messages.items]

    @mcp.tool
    async def list_approvals(
        session_id: str, include_decided: bool = False
    ) -> list[dict[str, Any]]:
        """The session's tool calls that wait for a person (with include_decided, the decided
        ones too): tool_call_id, tool, arguments, reason, the decisions allowed, expires_at."""
        gateway = service()
        caller = await _caller(gateway)
        try:
            listed = await gateway.approvals(caller, session_id, all_=include_decided)
        except (ProblemError, AgentClusterError, ValidationError) as exc:
            raise _tool_error(exc) from None
        return [approval.model_dump(mode="json") for approval in listed.items]

    @mcp.tool
    async def decide_approval(
        session_id: str,
        tool_call_id: str,
        decision: ApprovalDecision,
        arguments: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> dict[str, Any]:
        """Decide a tool call that waits for a person: approve (it runs), edit (it runs with
        arguments instead) or reject (the agent reads message as the tool's error). Returns the
        approval and, once no call of its turn waits any more, the resumed turn's outcome."""
        gateway = service()
        caller = await _caller(gateway)
        try:
            body = api.ApprovalDecisionIn(decision=decision, arguments=arguments, message=message)
            resumption = await decide(gateway, caller, session_id, [(tool_call_id, body)])
            turn = await wait_resumed(gateway, caller, resumption)
            result = {"approval": resumption.decided[0].model_dump(mode="json")}
            result["turn"] = await _with_approvals(gateway, caller, turn)
        except (ProblemError, AgentClusterError, ValidationError) as exc:
            raise _tool_error(exc) from None
        return result

    return mcp


class McpEndpoint:
    """The ``/mcp`` ASGI endpoint, built in the process that serves it: Serve pickles the gateway
    app into each replica, and a FastMCP server cannot be pickled. :meth:`running` (entered by the
    app's lifespan) builds it and runs its session manager."""

    def __init__(self, service: ServiceGetter) -> None:
        self._service = service
        self._app: Any = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        app = build_mcp(self._service).http_app(
            path=MCP_PATH, stateless_http=True, json_response=True
        )
        async with app.router.lifespan_context(app):
            self._app = app
            try:
                yield
            finally:
                self._app = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            raise DependencyUnavailable("gateway", "the MCP server has not started in this process")
        await self._app(scope, receive, send)

    def __getstate__(self) -> dict[str, Any]:
        return {"_service": self._service, "_app": None}
