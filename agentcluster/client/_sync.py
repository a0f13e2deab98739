"""The blocking client: executes the shared :class:`~agentcluster.client._calls.Call` specs with
``httpx.Client``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from agentcluster.api import (
    AgentList,
    AgentOut,
    ApprovalOut,
    CancelOut,
    Health,
    KeyCreated,
    KeyList,
    MessageAccepted,
    MessageList,
    Ready,
    SessionList,
    SessionOut,
    TurnOut,
)
from agentcluster.client import _calls as calls
from agentcluster.client._calls import Call, RetryPolicy, new_idempotency_key
from agentcluster.client._sse import StreamItem
from agentcluster.client._streams import EventTail, TurnEventTail, TurnTail
from agentcluster.domain import ApprovalDecision, MultitaskStrategy

__all__ = ["Client"]

T = TypeVar("T")


class Client:
    """Blocking client of the agentcluster HTTP API v1.

    Args:
        base_url: the gateway, e.g. ``http://127.0.0.1:21016``.
        api_key: sent as ``Authorization: Bearer <key>`` (an admin key for the key routes).
        timeout: seconds per request (connect, read, write, pool); event streams need the server's
            heartbeats to come more often than this.
        transport: an ``httpx`` transport (tests pass ``httpx.MockTransport``).
        retries: resends after a retryable failure (see :class:`RetryPolicy`); session and key
            creation are resent only when the request certainly did not reach the gateway.
        backoff: first backoff in seconds, doubled per attempt.
        max_retry_after: longest ``Retry-After`` honoured; longer raises ``RateLimited``.
        sleep: how to wait between attempts (tests pass a recorder).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        retries: int = 2,
        backoff: float = 0.5,
        max_retry_after: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._policy = RetryPolicy(
            retries=retries, backoff=backoff, max_retry_after=max_retry_after
        )
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=base_url,
            headers=calls.default_headers(api_key),
            timeout=timeout,
            transport=transport,
        )

    @classmethod
    def from_env(cls, **options: Any) -> Self:
        """A client for ``AGENTCLUSTER_URL`` (default ``http://127.0.0.1:21016``) with
        ``AGENTCLUSTER_API_KEY``; ``options`` are the constructor's keyword arguments."""
        base_url, api_key = calls.connection_from_env()
        return cls(base_url, api_key, **options)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- execution ----------------------------------------------------------------------------

    def _run(self, call: Call[T]) -> T:
        return call.parse(self._send(call, stream=False))

    def _send(self, call: Call[Any], *, stream: bool) -> httpx.Response:
        attempt = 0
        while True:
            request = calls.build_request(self._http, call)
            delay: float | None
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                delay = self._policy.after_error(call, exc, attempt)
            else:
                delay = self._policy.after_response(call, response, attempt)
                if delay is None:
                    return response
                response.close()
            self._sleep(delay)
            attempt += 1

    @contextmanager
    def _open(self, call: Call[Any]) -> Iterator[httpx.Response]:
        response = self._send(call, stream=True)
        try:
            if response.status_code != 200:
                response.read()
            calls.check_stream(response)
            yield response
        finally:
            response.close()

    def _follow(self, tail: EventTail) -> Iterator[StreamItem]:
        while True:
            error: httpx.TransportError | None = None
            try:
                with self._open(tail.next_call()) as response:
                    for line in response.iter_lines():
                        item = tail.feed(line)
                        if item is not None:
                            yield item
                        if tail.interrupted:
                            break
            except httpx.TransportError as exc:
                error = exc
            delay = tail.reconnect_delay(error)
            if delay is None:
                return
            self._sleep(delay)

    # --- sessions -----------------------------------------------------------------------------

    def create_session(
        self, agent: str = "default", metadata: dict[str, Any] | None = None
    ) -> SessionOut:
        """Start a session with ``agent``. Not resent after an ambiguous failure (a lost answer
        would otherwise create a second session); a ``ConnectionFailed`` may mean it exists."""
        return self._run(calls.create_session(agent, metadata))

    def list_sessions(self, limit: int = 50, cursor: str | None = None) -> SessionList:
        """One page of this tenant's sessions; pass ``next_cursor`` back for the next page."""
        return self._run(calls.list_sessions(limit, cursor))

    def iter_sessions(self, limit: int = 50) -> Iterator[SessionOut]:
        """Every session, fetching pages of ``limit`` as the iteration needs them."""
        cursor: str | None = None
        while True:
            page = self.list_sessions(limit, cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def get_session(self, session_id: str) -> SessionOut:
        """One session."""
        return self._run(calls.get_session(session_id))

    def close_session(self, session_id: str) -> SessionOut:
        """Close a session; returns it closed."""
        return self._run(calls.close_session(session_id))

    # --- messages and turns -------------------------------------------------------------------

    def send_message(
        self,
        session_id: str,
        content: str,
        *,
        idempotency_key: str | None = None,
        multitask_strategy: MultitaskStrategy = "enqueue",
    ) -> MessageAccepted:
        """Commit a user message and return at once; its turn runs in the background.

        Without ``idempotency_key`` one is generated per call and reused across this call's
        retries, so a resend after a lost answer never starts a second turn.
        ``multitask_strategy`` says what the message does to a turn still open: ``enqueue``,
        ``reject`` (:class:`ApiError` 409 ``turn-in-progress``), ``interrupt`` or ``rollback``.
        """
        key = idempotency_key or new_idempotency_key()
        return self._run(calls.send_message(session_id, content, key, multitask_strategy))

    def ask(
        self,
        session_id: str,
        content: str,
        *,
        idempotency_key: str | None = None,
        turn_timeout: float | None = 330.0,
        multitask_strategy: MultitaskStrategy = "enqueue",
    ) -> TurnOut:
        """Send a message and wait for its turn to finish (``?wait=true``), or to pause: a turn
        whose tool calls wait for a person answers ``status="awaiting_approval"`` with their ids
        in ``awaiting_approval`` (decide them, then :meth:`follow_turn`).

        The gateway waits up to 5 minutes, then answers with the turn still ``running``;
        ``turn_timeout`` bounds the request in seconds (None: the client's timeout). Idempotency
        keys work as in :meth:`send_message`.
        """
        key = idempotency_key or new_idempotency_key()
        return self._run(calls.ask(session_id, content, key, turn_timeout, multitask_strategy))

    def stream_turn(
        self, session_id: str, content: str, *, idempotency_key: str | None = None
    ) -> Iterator[StreamItem]:
        """Send a message and yield its turn's events and text deltas until the turn's
        ``turn.completed``/``turn.failed``/``turn.cancelled``, or its ``turn.awaiting_approval``
        (decide its calls, then :meth:`follow_turn` after that event's seq). A broken stream is
        resumed."""
        key = idempotency_key or new_idempotency_key()
        return self._follow(TurnTail(session_id, content, key, self._policy))

    def messages(self, session_id: str) -> MessageList:
        """The session's conversation."""
        return self._run(calls.messages(session_id))

    def events(
        self, session_id: str, *, after: int = 0, follow: bool = True
    ) -> Iterator[StreamItem]:
        """Yield the session's events with ``seq > after`` and live deltas.

        With ``follow`` the stream is reconnected after the last seen seq whenever the server
        ends it, and iteration stops only at ``session.closed`` (or when you stop). Events are
        never yielded twice.
        """
        return self._follow(EventTail(session_id, after=after, follow=follow, policy=self._policy))

    def cancel(self, session_id: str, turn_id: str | None = None) -> CancelOut:
        """Cancel ``turn_id``, or the session's running turn when None."""
        return self._run(calls.cancel(session_id, turn_id))

    def follow_turn(self, session_id: str, turn_id: str, *, after: int = 0) -> Iterator[StreamItem]:
        """Yield ``turn_id``'s events and deltas with ``seq > after`` from the session's event
        stream, until the turn's outcome or its next ``turn.awaiting_approval``.

        After deciding a paused turn's calls, pass the pause's seq (the ``turn.awaiting_approval``
        that :meth:`stream_turn` ended with, or the session's ``last_seq`` read before deciding)
        to read the resumed turn to its end.
        """
        return self._follow(TurnEventTail(session_id, turn_id, after=after, policy=self._policy))

    # --- approvals ----------------------------------------------------------------------------

    def approvals(self, session_id: str, *, all: bool = False) -> list[ApprovalOut]:
        """The session's tool calls waiting for a person (``all``: decided ones too)."""
        return (self._run(calls.approvals(session_id, all))).items

    def decide(
        self,
        session_id: str,
        tool_call_id: str,
        decision: ApprovalDecision,
        *,
        arguments: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> ApprovalOut:
        """Decide a waiting tool call: ``approve``, ``edit`` (run it with ``arguments``) or
        ``reject`` (the model reads ``message`` as the tool's error). The turn resumes once all
        of its waiting calls are decided.

        Raises:
            Conflict: ``approval-not-pending``: already decided or expired (after a retried
                request, possibly by this very call: see :meth:`approvals` with ``all``).
            NotFound: no such session or waiting call for this key's tenant.
        """
        return self._run(calls.decide(session_id, tool_call_id, decision, arguments, message))

    def approve(
        self, session_id: str, tool_call_id: str, *, message: str | None = None
    ) -> ApprovalOut:
        """Run the waiting call as the model asked."""
        return self.decide(session_id, tool_call_id, "approve", message=message)

    def edit(
        self,
        session_id: str,
        tool_call_id: str,
        arguments: dict[str, Any],
        *,
        message: str | None = None,
    ) -> ApprovalOut:
        """Run the waiting call with ``arguments`` instead (the policy decides them again)."""
        return self.decide(session_id, tool_call_id, "edit", arguments=arguments, message=message)

    def reject(self, session_id: str, tool_call_id: str, message: str | None = None) -> ApprovalOut:
        """Do not run the call; the model reads ``message`` as the tool's error."""
        return self.decide(session_id, tool_call_id, "reject", message=message)

    # --- agents, health -----------------------------------------------------------------------

    def agents(self) -> AgentList:
        """The agent profiles sessions can use."""
        return self._run(calls.agents())

    def agent(self, name: str) -> AgentOut:
        """One agent profile."""
        return self._run(calls.agent(name))

    def health(self) -> Health:
        """Liveness of the gateway."""
        return self._run(calls.health())

    def ready(self) -> Ready:
        """Readiness and each dependency's state; a degraded gateway is returned, not raised."""
        return self._run(calls.ready())

    # --- keys (admin key) ---------------------------------------------------------------------

    def create_key(
        self,
        name: str,
        tenant_id: str | None = None,
        tenant_name: str | None = None,
        roles: Sequence[str] = (),
    ) -> KeyCreated:
        """Create an API key for ``tenant_id`` (or a new tenant ``tenant_name``), with
        ``roles`` (what the tenant's policy may require for an action). The secret is only in
        this answer. Not resent after an ambiguous failure."""
        return self._run(calls.create_key(name, tenant_id, tenant_name, roles))

    def list_keys(self, tenant_id: str | None = None) -> KeyList:
        """API keys, of one tenant or all."""
        return self._run(calls.list_keys(tenant_id))

    def revoke_key(self, key_id: str) -> None:
        """Revoke an API key."""
        self._run(calls.revoke_key(key_id))
