"""The in-cluster client: the same methods as AsyncClient, over the gateway's Serve
DeploymentHandle instead of HTTP (no proxy hop; for code running inside the Ray cluster)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

from agentcluster import api
from agentcluster.api import StreamItem
from agentcluster.domain import MultitaskStrategy

__all__ = ["HandleClient", "connect"]

APP_NAME = "agentcluster"
DEPLOYMENT = "Gateway"


async def _until_closed(stream: Any) -> AsyncIterator[StreamItem]:
    """The items of a streaming handle call; when the caller stops early (a break, a cancelled
    task, the iterator closed) the call is cancelled in the replica, which then closes the
    stream and frees the tenant's stream slot (a stream nobody reads would hold it open)."""
    finished = False
    try:
        async for item in stream:
            yield item
        finished = True
    finally:
        if not finished:
            stream.cancel()


class HandleClient:
    """Talks to the gateway deployment through a DeploymentHandle, authenticated by an API key."""

    def __init__(self, handle: Any, api_key: str) -> None:
        self._handle = handle
        self._api_key = api_key

    async def create_session(
        self, agent: str = "default", metadata: dict[str, Any] | None = None
    ) -> api.SessionOut:
        body = api.SessionCreateIn(agent=agent, metadata=metadata or {})
        result: api.SessionOut = await self._handle.create_session.remote(self._api_key, body)
        return result

    async def list_sessions(self, limit: int = 50, cursor: str | None = None) -> api.SessionList:
        result: api.SessionList = await self._handle.list_sessions.remote(
            self._api_key, limit, cursor
        )
        return result

    async def get_session(self, session_id: str) -> api.SessionOut:
        result: api.SessionOut = await self._handle.get_session.remote(self._api_key, session_id)
        return result

    async def close_session(self, session_id: str) -> api.SessionOut:
        result: api.SessionOut = await self._handle.close_session.remote(self._api_key, session_id)
        return result

    async def send_message(
        self,
        session_id: str,
        content: str,
        *,
        idempotency_key: str | None = None,
        multitask_strategy: MultitaskStrategy = "enqueue",
    ) -> api.MessageAccepted:
        body = api.MessageIn(content=content, multitask_strategy=multitask_strategy)
        key = idempotency_key or str(uuid.uuid4())
        result: api.MessageAccepted = await self._handle.send_message.remote(
            self._api_key, session_id, body, key
        )
        return result

    async def ask(
        self,
        session_id: str,
        content: str,
        *,
        idempotency_key: str | None = None,
        multitask_strategy: MultitaskStrategy = "enqueue",
    ) -> api.TurnOut:
        body = api.MessageIn(content=content, multitask_strategy=multitask_strategy)
        key = idempotency_key or str(uuid.uuid4())
        result: api.TurnOut = await self._handle.ask.remote(self._api_key, session_id, body, key)
        return result

    async def stream_turn(
        self, session_id: str, content: str, *, idempotency_key: str | None = None
    ) -> AsyncIterator[StreamItem]:
        body = api.MessageIn(content=content)
        key = idempotency_key or str(uuid.uuid4())
        stream = self._handle.options(stream=True).stream_turn.remote(
            self._api_key, session_id, body, key
        )
        async for item in _until_closed(stream):
            yield item

    async def messages(self, session_id: str) -> api.MessageList:
        result: api.MessageList = await self._handle.messages.remote(self._api_key, session_id)
        return result

    async def events(self, session_id: str, *, after: int = 0) -> AsyncIterator[StreamItem]:
        stream = self._handle.options(stream=True).events.remote(self._api_key, session_id, after)
        async for item in _until_closed(stream):
            yield item

    async def cancel(self, session_id: str, turn_id: str | None = None) -> api.CancelOut:
        result: api.CancelOut = await self._handle.cancel.remote(self._api_key, session_id, turn_id)
        return result

    async def agents(self) -> api.AgentList:
        result: api.AgentList = await self._handle.agents.remote(self._api_key)
        return result

    async def agent(self, name: str) -> api.AgentOut:
        result: api.AgentOut = await self._handle.agent.remote(self._api_key, name)
        return result


def connect(
    api_key: str, *, app_name: str = APP_NAME, deployment: str = DEPLOYMENT
) -> HandleClient:
    """A client over the running gateway's DeploymentHandle (call inside the Ray cluster)."""
    from ray import serve

    return HandleClient(serve.get_deployment_handle(deployment, app_name=app_name), api_key)
