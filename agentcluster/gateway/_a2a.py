"""The A2A v1 facade: an agent card and a JSON-RPC endpoint per agent, a thin adapter over
:class:`GatewayService` (same keys, tenants, policy, limits, idempotency and events as the
native API; no session model of its own).

- ``GET /a2a/{agent}/.well-known/agent-card.json``: the agent's card (public, like any A2A card:
  it names the bearer scheme the endpoint wants); ``GET /.well-known/agent-card.json``: the card
  of the default agent (``default``, else the first by name).
- ``POST /a2a/{agent}``: JSON-RPC 2.0, a2a-sdk's dispatcher over
  :class:`~agentcluster.gateway._a2a_handler.GatewayRequestHandler`: ``SendMessage``,
  ``SendStreamingMessage`` (SSE), ``GetTask``, ``CancelTask``, ``SubscribeToTask``,
  ``ListTasks`` (``A2A-Version: 1.0``) and the v0.3 names (``message/send``,
  ``message/stream``, ``tasks/get``, ``tasks/cancel``, ``tasks/resubscribe``; no header or
  ``A2A-Version: 0.3``).

``contextId`` is a session id, a task id a turn id (see :mod:`._a2a_tasks`). The bearer key is
checked before the dispatcher runs: a missing or bad key is HTTP 401 (problem+json), as are a
policy denial (403), the tenant's limits (429) and an outage (503); everything else is a
JSON-RPC error with A2A's codes.
"""

from __future__ import annotations

from typing import Annotated, Any

from a2a.extensions.common import HTTP_EXTENSION_HEADER, get_requested_extensions
from a2a.server.context import ServerCallContext
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes.common import ServerCallContextBuilder
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from agentcluster.errors import NotFoundError
from agentcluster.gateway._a2a_cards import A2A_PREFIX, agent_card, default_agent
from agentcluster.gateway._a2a_handler import CALL_KEY, A2ACall, GatewayRequestHandler
from agentcluster.gateway._callers import CallerDep, ServiceDep
from agentcluster.gateway._service import GatewayService
from agentcluster.gateway._streams import release_shielded

__all__ = ["A2A_PREFIX", "a2a_router"]

CARD_PATH = "/.well-known/agent-card.json"
_STATE_KEY = "a2a_call"

AgentName = Annotated[
    str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="an agent of this cluster")
]

a2a_router = APIRouter(tags=["a2a"])

_JSONRPC_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": 'A JSON-RPC 2.0 request (`jsonrpc: "2.0"`, `method`, `params`, `id`). '
        "Any JSON is accepted: what is no JSON-RPC request is answered 200 with a JSON-RPC error "
        "(-32700 parse error, -32600 invalid request), as JSON-RPC over HTTP does and a2a-sdk "
        "clients expect",
        "content": {
            "application/json": {
                "schema": {
                    "description": "any JSON; a JSON-RPC 2.0 request to be answered with a result",
                    "examples": [
                        {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "t"}}
                    ],
                }
            }
        },
    }
}
_RPC_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A JSON-RPC response: a result, or an error (also for a body that is no "
        "JSON-RPC request); for the streaming methods their events (text/event-stream)",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["jsonrpc"],
                    "properties": {
                        "jsonrpc": {"const": "2.0"},
                        "id": {},
                        "result": {},
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "integer"},
                                "message": {"type": "string"},
                                "data": {},
                            },
                        },
                    },
                }
            },
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {"type": "string", "description": "a JSON-RPC response"},
                        "event": {"type": "string"},
                        "id": {"type": "string"},
                        "retry": {"type": "integer"},
                    },
                }
            },
        },
    },
    404: {"description": "No such agent (problem+json)"},
}


class _CallContexts(ServerCallContextBuilder):
    """The SDK's call context of a request, carrying the :class:`A2ACall` the route made."""

    def build(self, request: Request) -> ServerCallContext:
        return ServerCallContext(
            state={"headers": dict(request.headers), CALL_KEY: getattr(request.state, _STATE_KEY)},
            requested_extensions=get_requested_extensions(
                request.headers.getlist(HTTP_EXTENSION_HEADER)
            ),
        )


_DISPATCHER = JsonRpcDispatcher(
    GatewayRequestHandler(), context_builder=_CallContexts(), enable_v0_3_compat=True
)


class _ReleasingResponse(Response):
    """``inner``, then the call's open-stream slot released (a stream's lease is taken while
    the response runs, by the v0.3 streams even after this route returned)."""

    def __init__(self, inner: Response, call: A2ACall) -> None:
        super().__init__(status_code=inner.status_code)
        self.raw_headers = inner.raw_headers
        self.inner = inner
        self.call = call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.inner(scope, receive, send)
        finally:
            await _release(self.call)


async def _release(call: A2ACall) -> None:
    if call.lease is not None:
        await release_shielded(call.lease)


def _card_response(service: GatewayService, agent: str, request: Request) -> JSONResponse:
    profile = service.profiles.get(agent)
    if profile is None:
        raise NotFoundError(f"agent {agent!r} not found")
    rpc_url = str(request.base_url).rstrip("/") + f"{A2A_PREFIX}/{agent}"
    return JSONResponse(agent_card_to_dict(agent_card(profile, rpc_url)))


@a2a_router.get(CARD_PATH, responses={404: {"description": "This cluster has no agents"}})
async def get_default_agent_card(request: Request, service: ServiceDep) -> JSONResponse:
    """The A2A agent card of the default agent (``default``, else the first by name)."""
    agent = default_agent(sorted(service.profiles))
    if agent is None:
        raise NotFoundError("this cluster has no agents")
    return _card_response(service, agent, request)


@a2a_router.get(
    A2A_PREFIX + "/{agent}" + CARD_PATH, responses={404: {"description": "No such agent"}}
)
async def get_agent_card(agent: AgentName, request: Request, service: ServiceDep) -> JSONResponse:
    """The A2A agent card of ``agent``: its skills, its JSON-RPC endpoint, the bearer scheme."""
    return _card_response(service, agent, request)


@a2a_router.post(A2A_PREFIX + "/{agent}", openapi_extra=_JSONRPC_BODY, responses=_RPC_RESPONSES)
async def a2a_jsonrpc(
    agent: AgentName, request: Request, caller: CallerDep, service: ServiceDep
) -> Response:
    """The A2A JSON-RPC endpoint of ``agent`` (methods of A2A 1.0 and 0.3)."""
    service.agent(caller, agent)  # 404 for an unknown agent
    call = A2ACall(service=service, caller=caller, agent=agent)
    setattr(request.state, _STATE_KEY, call)
    try:
        response = await _DISPATCHER.handle_requests(request)
    except BaseException:
        await _release(call)
        raise
    if call.http_error is not None:
        await _release(call)
        raise call.http_error
    return _ReleasingResponse(response, call)
