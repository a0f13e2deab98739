"""The in-cluster Python API: send a message to a session and stream its events.

The gateway (and any in-cluster code) calls this; it commits through the store first, so a message
is durable before anything is acknowledged, then tells the session's host to run its turns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from agentcluster import events as ev
from agentcluster.domain import (
    Approval,
    ApprovalDecision,
    MultitaskStrategy,
    QueuedTurn,
    Session,
    Submission,
    Turn,
)
from agentcluster.errors import DependencyUnavailable, TerminalFailure
from agentcluster.runtime._feed import StreamItem
from agentcluster.store import (
    ApprovalStore,
    ScheduleStore,
    SessionStore,
    SharedDatabase,
    TenantStore,
    WebhookStore,
)

__all__ = ["Runtime", "RuntimeStore", "SessionRouter"]

log = logging.getLogger(__name__)


class SessionRouter(Protocol):
    """Port: reaches the host of a session (Ray actors in production)."""

    async def notify(
        self, session_id: str, turn_id: str | None = None, queued: QueuedTurn | None = None
    ) -> None:
        """Wake the session's host to run its open turns (``turn_id``: the one just queued,
        whose trace the host continues when it runs; ``queued``: that turn as it was queued)."""
        ...

    async def cancel(self, tenant_id: str, session_id: str, turn_id: str | None) -> bool: ...

    async def wait_turn(
        self,
        tenant_id: str,
        session_id: str,
        turn_id: str,
        after_seq: int,
        timeout_s: float,
        queued: QueuedTurn | None = None,
    ) -> ev.TurnOutcome | None: ...

    def stream(
        self,
        tenant_id: str,
        session_id: str,
        after_seq: int = 0,
        until_turn: str | None = None,
        wake: bool = False,
    ) -> AsyncIterator[StreamItem]: ...


class RuntimeStore(
    SessionStore, ApprovalStore, TenantStore, ScheduleStore, WebhookStore, SharedDatabase, Protocol
):
    """The store roles a :class:`Runtime` is given: the sessions, messages and turns it reads and
    writes (:class:`~agentcluster.store.SessionStore`; ``close``), and the roles the API built on
    it takes from ``runtime.store``: tenants and keys (authentication, the admin routes), the
    sessions' schedules and webhook secrets, the database the settings tables and the readiness
    probe use; and a session's open turns (is it busy?). Not the session hosts' roles
    (activation, the journal) nor the relay's (the outbox)."""

    async def open_turns(self, session_id: str) -> list[Turn]: ...


class Runtime:
    """Sessions, messages and their event streams, scoped by tenant.

    The router is injected: in the cluster, ``actors.compose.connect_runtime`` builds the runtime
    with the Ray session router (the core never imports the Ray edge).

    Args:
        store: the state store, by the roles the runtime and the API use (:class:`RuntimeStore`).
        router: reaches the sessions' hosts.
        notify_timeout_s: how long accepting a message waits to wake its host (best effort:
            a message is accepted once committed; a session not woken then is woken by the
            host controller).
    """

    def __init__(
        self, store: RuntimeStore, router: SessionRouter, *, notify_timeout_s: float = 2.0
    ) -> None:
        self.store = store
        self.router = router
        self._notify_timeout_s = notify_timeout_s
        self._retries: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        await self.store.close()

    async def create_session(
        self,
        tenant_id: str,
        agent: str,
        metadata: dict[str, Any] | None = None,
        *,
        webhook: str | None = None,
    ) -> Session:
        return await self.store.create_session(tenant_id, agent, metadata, webhook=webhook)

    async def send_message(
        self,
        tenant_id: str,
        session_id: str,
        content: str,
        *,
        idempotency_key: str | None = None,
        notify: bool = True,
        strategy: MultitaskStrategy = "enqueue",
        webhook: str | None = None,
    ) -> Submission:
        """Commit the message (durable from here on), then wake the session's host (unless
        ``notify`` is False: the caller wakes it, e.g. through :meth:`wait_turn`).

        Waking is best effort: a host that cannot be reached within the notify timeout (none
        alive, a restart in progress) does not fail the accepted message; the host controller
        wakes the session on its next tick.

        A resend with the same idempotency key returns the first submission and starts nothing.
        ``strategy`` is the multitask strategy (:data:`agentcluster.domain.MultitaskStrategy`).

        Raises:
            TurnInProgress: ``reject`` while the session has a turn open.
        """
        submission = await self.store.submit_message(
            tenant_id,
            session_id,
            content,
            idempotency_key=idempotency_key,
            strategy=strategy,
            webhook=webhook,
        )
        if notify:
            await self._wake(session_id, submission.turn_id, submission.queued)
        return submission

    async def _wake(self, session_id: str, turn_id: str, queued: QueuedTurn | None = None) -> None:
        try:
            async with asyncio.timeout(self._notify_timeout_s):
                await self.router.notify(session_id, turn_id, queued)
        except (TimeoutError, DependencyUnavailable) as exc:
            log.warning(
                "turn %s of session %s accepted but its host not woken yet (%s); retrying",
                turn_id,
                session_id,
                exc if str(exc) else type(exc).__name__,
            )
            retry = asyncio.get_running_loop().create_task(self._wake_later(session_id, turn_id))
            self._retries.add(retry)
            retry.add_done_callback(self._retries.discard)

    async def _wake_later(self, session_id: str, turn_id: str) -> None:
        # Backed off over about a minute; past it the host controller's sweep wakes the
        # session (it only takes sessions nobody owns after a while: waking is this process's
        # job first).
        for delay_s in (1, 2, 4, 8, 15, 30):
            await asyncio.sleep(delay_s)
            try:
                async with asyncio.timeout(self._notify_timeout_s * 5):
                    await self.router.notify(session_id, turn_id)
                return
            except (TimeoutError, DependencyUnavailable):
                continue

    async def wait_turn(
        self, tenant_id: str, session_id: str, submission: Submission, timeout_s: float
    ) -> ev.TurnOutcome | None:
        """Wake the session's host and wait for the submission's turn to end (one host call);
        None if it did not end within ``timeout_s``."""
        return await self.router.wait_turn(
            tenant_id,
            session_id,
            submission.turn_id,
            max(submission.seq - 1, 0),
            timeout_s,
            submission.queued,
        )

    async def approvals(
        self, tenant_id: str, session_id: str, *, pending_only: bool = True
    ) -> list[Approval]:
        """The session's tool calls waiting for a person (``pending_only=False``: every one it
        had, decided or not).

        Raises:
            NotFoundError: no such session for this tenant.
        """
        return await self.store.list_approvals(tenant_id, session_id, pending_only=pending_only)

    async def decide_approval(
        self,
        tenant_id: str,
        session_id: str,
        tool_call_id: str,
        decision: ApprovalDecision,
        *,
        decided_by: str,
        arguments: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> Approval:
        """Decide a waiting tool call (committed with its ``tool.approval_decided`` event); the
        last decision of a paused turn wakes the session's host to resume it.

        Raises:
            NotFoundError: no such session for this tenant, or no such waiting call.
            ApprovalNotPending: it was decided already, expired, or its turn ended.
        """
        approval, resumed = await self.store.decide_approval(
            tenant_id,
            session_id,
            tool_call_id,
            decision,
            decided_by=decided_by,
            arguments=arguments,
            message=message,
        )
        if resumed:
            await self._wake(session_id, approval.turn_id)
        return approval

    def stream(
        self,
        tenant_id: str,
        session_id: str,
        *,
        after_seq: int = 0,
        until_turn: str | None = None,
        wake: bool = False,
    ) -> AsyncIterator[StreamItem]:
        """Events after ``after_seq`` (persisted, then live, with deltas), in order. ``wake``
        runs the session's open turns once the stream is subscribed, so none of a turn's deltas
        (live only) can pass before it: send with ``notify=False``, then stream with it."""
        return self.router.stream(tenant_id, session_id, after_seq, until_turn, wake)

    async def cancel(self, tenant_id: str, session_id: str, turn_id: str | None = None) -> bool:
        await self.store.get_session(tenant_id, session_id)  # tenant scoping: 404 otherwise
        return await self.router.cancel(tenant_id, session_id, turn_id)

    async def ask(
        self,
        tenant_id: str,
        session_id: str,
        content: str,
        *,
        idempotency_key: str | None = None,
        timeout_s: float = 300.0,
    ) -> ev.TurnOutcome:
        """Send a message and wait (up to ``timeout_s``) for its turn's outcome event."""
        submission = await self.send_message(
            tenant_id, session_id, content, idempotency_key=idempotency_key, notify=False
        )
        outcome = await self.wait_turn(tenant_id, session_id, submission, timeout_s)
        if outcome is None:
            raise TerminalFailure(
                f"turn {submission.turn_id} of session {session_id} did not end within "
                f"{timeout_s:g} s"
            )
        return outcome
