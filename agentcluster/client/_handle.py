"""The in-cluster client: the same methods as AsyncClient, over the gateway's Serve
DeploymentHandle instead of HTTP (no proxy hop; for code running inside the Ray cluster)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from agentcluster import api
from agentcluster.api import StreamItem
from agentcluster.client._streams import ends_turn
from agentcluster.domain import ApprovalDecision, MultitaskStrategy

__all__ = ["HandleClient", "connect"]

APP_NAME = "agentcluster"
DEPLOYMENT = "Gateway"


async def _until_closed(stream: Any) -> AsyncGenerator[StreamItem, None]:
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


async def _until_turn_ends(
    items: AsyncGenerator[StreamItem, None], turn_id: str
) -> AsyncIterator[StreamItem]:
    """The items of ``turn_id`` (and the session's own, such as ``session.closed``) up to and
    including the turn's outcome or pause; stopping closes ``items``, which cancels the call."""
    try:
        async for item in items:
            if getattr(item, "turn_id", turn_id) != turn_id:
                continue
            yield item
            if ends_turn(item, turn_id) or item.type == "session.closed":
                return
    finally:
        await items.aclose()


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

    async def follow_turn(
        self, session_id: str, turn_id: str, *, after: int = 0
    ) -> AsyncIterator[StreamItem]:
        """``turn_id``'s items after seq ``after`` until its outcome or next pause (as
        ``AsyncClient.follow_turn``)."""
        stream = self._handle.options(stream=True).events.remote(self._api_key, session_id, after)
        async for item in _until_turn_ends(_until_closed(stream), turn_id):
            yield item

    async def approvals(self, session_id: str, *, all: bool = False) -> list[api.ApprovalOut]:
        result: api.ApprovalList = await self._handle.approvals.remote(
            self._api_key, session_id, all
        )
        return result.items

    async def decide(
        self,
        session_id: str,
        tool_call_id: str,
        decision: ApprovalDecision,
        *,
        arguments: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> api.ApprovalOut:
        body = api.ApprovalDecisionIn(decision=decision, arguments=arguments, message=message)
        result: api.ApprovalOut = await self._handle.decide_approval.remote(
            self._api_key, session_id, tool_call_id, body
        )
        return result

    async def approve(
        self, session_id: str, tool_call_id: str, *, message: str | None = None
    ) -> api.ApprovalOut:
        return await self.decide(session_id, tool_call_id, "approve", message=message)

    async def edit(
        self,
        session_id: str,
        tool_call_id: str,
        arguments: dict[str, Any],
        *,
        message: str | None = None,
    ) -> api.ApprovalOut:
        return await self.decide(
            session_id, tool_call_id, "edit", arguments=arguments, message=message
        )

    async def reject(
        self, session_id: str, tool_call_id: str, message: str | None = None
    ) -> api.ApprovalOut:
        return await self.decide(session_id, tool_call_id, "reject", message=message)

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
