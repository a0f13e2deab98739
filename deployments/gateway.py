"""The gateway as a Ray Serve deployment: the FastAPI app of agentcluster.gateway as ingress.

``serve.deployment`` and ``serve.ingress`` are applied here and nowhere else; autoscaling, health
checks and limits come from ``configs/serve.yaml`` (or the defaults below for ``serve run``).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import Any, ParamSpec, TypeVar

from ray import serve
from ray.serve import Application

from actors.compose import connect_runtime
from actors.console_probe import ray_cluster_probe
from agentcluster import api
from agentcluster.client import ApiError, error_from_problem
from agentcluster.config import Settings, load_settings
from agentcluster.errors import ConfigError
from agentcluster.gateway import (
    Caller,
    GatewayService,
    ProblemError,
    create_app,
    current_service,
)
from agentcluster.logs import configure_logging
from agentcluster.runtime import StreamItem
from agentcluster.tracing import configure_tracing

__all__ = [
    "DEFAULT_OPTIONS",
    "HandleMethods",
    "build_gateway",
    "check_stream_capacity",
    "start_proxy",
]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_OPTIONS: dict[str, Any] = {
    "name": "Gateway",
    "autoscaling_config": {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 8,
        "upscale_delay_s": 5,
        "downscale_delay_s": 30,
    },
    "max_ongoing_requests": 64,
    "health_check_period_s": 10,
    "health_check_timeout_s": 30,
    "ray_actor_options": {"num_cpus": 0},
}


def _api_error(exc: ProblemError) -> ApiError:
    """A gateway problem as the client's typed error: ProblemError does not pickle, and handle
    callers catch the same classes as HTTP callers (``Forbidden``, ``Unauthorized``, ...)."""
    title = HTTPStatus(exc.status).phrase
    return error_from_problem(exc.status, title, exc.problem_type, exc.detail)


def _problems_as_errors(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(method)
    async def translated(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except ProblemError as exc:
            raise _api_error(exc) from None

    return translated


def _stream_problems_as_errors(
    method: Callable[P, AsyncIterator[R]],
) -> Callable[P, AsyncIterator[R]]:
    @functools.wraps(method)
    async def translated(*args: P.args, **kwargs: P.kwargs) -> AsyncIterator[R]:
        try:
            async for item in method(*args, **kwargs):
                yield item
        except ProblemError as exc:
            raise _api_error(exc) from None

    return translated


class HandleMethods:
    """What in-cluster callers reach through the DeploymentHandle (``agentcluster.connect()``):
    the same operations as the HTTP API, authenticated by the same API keys and going through
    the same checks: the tenant's request rate on every call, the policy decision of each
    action, a stream slot for each stream or wait. Errors are the client's typed errors."""

    def _service(self) -> GatewayService:
        raise NotImplementedError

    async def _caller(self, api_key: str) -> Caller:
        service = self._service()
        caller = await service.authenticate(api_key)
        await service.admit(caller)  # the tenant's requests per minute, as over HTTP
        return caller

    async def check_health(self) -> None:
        # Serve calls this periodically; the replica is healthy while its event loop runs
        # (dependencies are reported by /v1/ready, not by restarting replicas).
        return None

    @_problems_as_errors
    async def create_session(self, api_key: str, body: api.SessionCreateIn) -> api.SessionOut:
        return await self._service().create_session(await self._caller(api_key), body)

    @_problems_as_errors
    async def list_sessions(
        self, api_key: str, limit: int = 50, cursor: str | None = None
    ) -> api.SessionList:
        return await self._service().list_sessions(await self._caller(api_key), limit, cursor)

    @_problems_as_errors
    async def get_session(self, api_key: str, session_id: str) -> api.SessionOut:
        return await self._service().get_session(await self._caller(api_key), session_id)

    @_problems_as_errors
    async def close_session(self, api_key: str, session_id: str) -> api.SessionOut:
        return await self._service().close_session(await self._caller(api_key), session_id)

    @_problems_as_errors
    async def send_message(
        self, api_key: str, session_id: str, body: api.MessageIn, idempotency_key: str
    ) -> api.MessageAccepted:
        caller = await self._caller(api_key)
        return await self._service().send_message(caller, session_id, body, idempotency_key)

    @_problems_as_errors
    async def ask(
        self, api_key: str, session_id: str, body: api.MessageIn, idempotency_key: str
    ) -> api.TurnOut:
        caller = await self._caller(api_key)
        return await self._service().ask(caller, session_id, body, idempotency_key)

    @_stream_problems_as_errors
    async def stream_turn(
        self, api_key: str, session_id: str, body: api.MessageIn, idempotency_key: str
    ) -> AsyncIterator[StreamItem]:
        caller = await self._caller(api_key)
        service = self._service()
        async with await service.open_stream(caller):
            submission = await service.submit(
                caller, session_id, body, idempotency_key, notify=False
            )
            async for item in service.turn_items(caller, session_id, submission):
                yield item

    @_problems_as_errors
    async def messages(self, api_key: str, session_id: str) -> api.MessageList:
        return await self._service().messages(await self._caller(api_key), session_id)

    @_stream_problems_as_errors
    async def events(
        self, api_key: str, session_id: str, after: int = 0
    ) -> AsyncIterator[StreamItem]:
        caller = await self._caller(api_key)
        service = self._service()
        items = await service.events(caller, session_id, after)
        async with await service.open_stream(caller):
            async for item in items:
                yield item

    @_problems_as_errors
    async def cancel(
        self, api_key: str, session_id: str, turn_id: str | None = None
    ) -> api.CancelOut:
        return await self._service().cancel(await self._caller(api_key), session_id, turn_id)

    @_problems_as_errors
    async def approvals(
        self, api_key: str, session_id: str, all_: bool = False
    ) -> api.ApprovalList:
        return await self._service().approvals(await self._caller(api_key), session_id, all_)

    @_problems_as_errors
    async def decide_approval(
        self, api_key: str, session_id: str, tool_call_id: str, body: api.ApprovalDecisionIn
    ) -> api.ApprovalOut:
        caller = await self._caller(api_key)
        return await self._service().decide_approval(caller, session_id, tool_call_id, body)

    @_problems_as_errors
    async def agents(self, api_key: str) -> api.AgentList:
        return self._service().agents(await self._caller(api_key))

    @_problems_as_errors
    async def agent(self, api_key: str, name: str) -> api.AgentOut:
        return self._service().agent(await self._caller(api_key), name)


def check_stream_capacity(settings: Settings, max_ongoing_requests: int) -> None:
    """Refuse a replica stream limit that leaves no request slot for short requests: streams
    would then fill a replica and Serve's proxy would queue every later request unanswered.

    Raises:
        ConfigError: ``SA01_LIMITS_REPLICA_MAX_OPEN_STREAMS`` is not below
            ``max_ongoing_requests``.
    """
    cap = settings.limits.replica_max_open_streams
    if cap >= max_ongoing_requests:
        raise ConfigError(
            f"SA01_LIMITS_REPLICA_MAX_OPEN_STREAMS={cap} must be below the gateway's "
            f"max_ongoing_requests ({max_ongoing_requests}): open streams must leave request "
            "slots for short requests"
        )


def build_gateway(settings: Settings | None = None, **options: Any) -> Application:
    """The Serve application of the gateway (options override DEFAULT_OPTIONS).

    Raises:
        ConfigError: the replica stream limit does not fit ``max_ongoing_requests``.
    """
    resolved = settings or load_settings()
    merged = DEFAULT_OPTIONS | {"logging_config": _logging(resolved)} | options
    check_stream_capacity(resolved, int(merged["max_ongoing_requests"]))
    app = create_app(resolved, connect_runtime, ray_cluster_probe)

    class Gateway(HandleMethods):
        """One gateway replica; FastAPI's lifespan connects it to the runtime."""

        def __init__(self) -> None:
            configure_logging(resolved)
            configure_tracing(resolved.tracing, "gateway")

        def _service(self) -> GatewayService:
            return current_service()

    ingress = serve.ingress(app)(Gateway)
    deployment = serve.deployment(**merged)(ingress)
    return deployment.bind()


def start_proxy(settings: Settings, host: str, port: int) -> None:
    """Start Serve with its HTTP proxy on ``host:port`` (before :func:`build_gateway` runs)."""
    serve.start(http_options={"host": host, "port": port}, logging_config=_logging(settings))


def _logging(settings: Settings) -> dict[str, Any]:
    # Serve's access log, on the proxy and on the replicas alike (SA01_GATEWAY_ACCESS_LOG).
    return {"enable_access_log": settings.gateway.access_log}
