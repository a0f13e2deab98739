"""The gateway as a Ray Serve deployment: the FastAPI app of agentcluster.gateway as ingress.

``serve.deployment`` and ``serve.ingress`` are applied here and nowhere else; autoscaling, health
checks and limits come from ``configs/serve.yaml`` (or the defaults below for ``serve run``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.serve import Application

from agentcluster import api
from agentcluster.config import Settings, load_settings
from agentcluster.gateway import Caller, GatewayService, create_app, current_service
from agentcluster.logs import configure_logging
from agentcluster.runtime import StreamItem
from agentcluster.tracing import configure_tracing

__all__ = ["DEFAULT_OPTIONS", "HandleMethods", "build_gateway"]

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


class HandleMethods:
    """What in-cluster callers reach through the DeploymentHandle (``agentcluster.connect()``):
    the same operations as the HTTP API, authenticated by the same API keys."""

    def _service(self) -> GatewayService:
        raise NotImplementedError

    async def _caller(self, api_key: str) -> Caller:
        return await self._service().authenticate(api_key)

    async def check_health(self) -> None:
        # Serve calls this periodically; the replica is healthy while its event loop runs
        # (dependencies are reported by /v1/ready, not by restarting replicas).
        return None

    async def create_session(self, api_key: str, body: api.SessionCreateIn) -> api.SessionOut:
        return await self._service().create_session(await self._caller(api_key), body)

    async def list_sessions(
        self, api_key: str, limit: int = 50, cursor: str | None = None
    ) -> api.SessionList:
        return await self._service().list_sessions(await self._caller(api_key), limit, cursor)

    async def get_session(self, api_key: str, session_id: str) -> api.SessionOut:
        return await self._service().get_session(await self._caller(api_key), session_id)

    async def close_session(self, api_key: str, session_id: str) -> api.SessionOut:
        return await self._service().close_session(await self._caller(api_key), session_id)

    async def send_message(
        self, api_key: str, session_id: str, body: api.MessageIn, idempotency_key: str
    ) -> api.MessageAccepted:
        caller = await self._caller(api_key)
        return await self._service().send_message(caller, session_id, body, idempotency_key)

    async def ask(
        self, api_key: str, session_id: str, body: api.MessageIn, idempotency_key: str
    ) -> api.TurnOut:
        caller = await self._caller(api_key)
        return await self._service().ask(caller, session_id, body, idempotency_key)

    async def stream_turn(
        self, api_key: str, session_id: str, body: api.MessageIn, idempotency_key: str
    ) -> AsyncIterator[StreamItem]:
        caller = await self._caller(api_key)
        service = self._service()
        submission = await service.submit(caller, session_id, body, idempotency_key, notify=False)
        async for item in service.turn_items(caller, session_id, submission):
            yield item

    async def messages(self, api_key: str, session_id: str) -> api.MessageList:
        return await self._service().messages(await self._caller(api_key), session_id)

    async def events(
        self, api_key: str, session_id: str, after: int = 0
    ) -> AsyncIterator[StreamItem]:
        items = await self._service().events(await self._caller(api_key), session_id, after)
        async for item in items:
            yield item

    async def cancel(
        self, api_key: str, session_id: str, turn_id: str | None = None
    ) -> api.CancelOut:
        return await self._service().cancel(await self._caller(api_key), session_id, turn_id)

    async def agents(self, api_key: str) -> api.AgentList:
        return self._service().agents(await self._caller(api_key))

    async def agent(self, api_key: str, name: str) -> api.AgentOut:
        return self._service().agent(await self._caller(api_key), name)


def build_gateway(settings: Settings | None = None, **options: Any) -> Application:
    """The Serve application of the gateway (options override DEFAULT_OPTIONS)."""
    resolved = settings or load_settings()
    app = create_app(resolved)

    class Gateway(HandleMethods):
        """One gateway replica; FastAPI's lifespan connects it to the runtime."""

        def __init__(self) -> None:
            configure_logging(resolved)
            configure_tracing(resolved.tracing, "gateway")

        def _service(self) -> GatewayService:
            return current_service()

    ingress = serve.ingress(app)(Gateway)
    deployment = serve.deployment(**(DEFAULT_OPTIONS | options))(ingress)
    return deployment.bind()
