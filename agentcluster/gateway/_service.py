"""What the gateway does, independent of the transport: the HTTP routes and the in-cluster
DeploymentHandle methods both call this, so the two clients get the same behaviour."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from agentcluster import api
from agentcluster import events as ev
from agentcluster.agent import AgentProfile
from agentcluster.config import Settings
from agentcluster.domain import Submission
from agentcluster.errors import DependencyUnavailable, NotFoundError, ValidationFailed
from agentcluster.gateway._problems import ProblemError
from agentcluster.gateway._streams import release_shielded
from agentcluster.limits import RateDecision, StreamLease, TenantLimitsService
from agentcluster.logs import bind_for_task
from agentcluster.policy import ApiAction, RegoPolicyEngine
from agentcluster.runtime import Runtime, StreamItem
from agentcluster.schedules import check_schedule
from agentcluster.tools import PolicyDecision

__all__ = ["Caller", "GatewayService"]

WAIT_TIMEOUT_S = 300.0
AUTH_CACHE_SIZE = 10_000
K = TypeVar("K")
V = TypeVar("V")
_ADMIN_TENANT = "(admin)"
"""The tenant the policy sees for the admin key, which belongs to no tenant."""


@dataclass(frozen=True)
class Caller:
    """Who is calling: a tenant's key, or the admin key (no tenant)."""

    tenant_id: str | None
    key_id: str | None
    admin: bool = False
    roles: tuple[str, ...] = ()
    """The key's roles, which the tenant's policy may require for an action."""

    def tenant(self) -> str:
        if self.tenant_id is None:
            raise ProblemError(
                403, "forbidden", "the admin key manages keys; use a tenant key for sessions"
            )
        return self.tenant_id

    def require_admin(self) -> None:
        if not self.admin:
            raise ProblemError(403, "forbidden", "this endpoint needs the admin key")


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, "unauthorized", detail, {"WWW-Authenticate": "Bearer"})


def _agent_out(profile: AgentProfile) -> api.AgentOut:
    return api.AgentOut(
        name=profile.name,
        description=profile.description,
        model=profile.model,
        fallback_models=list(profile.fallback_models),
        tools=list(profile.tools),
    )


def _turn_out(
    session_id: str,
    submission: Submission,
    event: ev.TurnOutcome,
) -> api.TurnOut:
    fields = {
        "session_id": session_id,
        "message_id": submission.message_id,
        "turn_id": submission.turn_id,
    }
    if isinstance(event, ev.TurnCompleted):
        return api.TurnOut(**fields, status="completed", content=event.content, usage=event.usage)
    if isinstance(event, ev.TurnFailed):
        return api.TurnOut(**fields, status="failed", error=event.error)
    if isinstance(event, ev.TurnAwaitingApproval):
        return api.TurnOut(
            **fields, status="awaiting_approval", awaiting_approval=event.tool_call_ids
        )
    return api.TurnOut(**fields, status="cancelled", error=event.reason)


def _retrieved(task: asyncio.Future[Any]) -> None:
    # Every waiter may have gone: the outcome is still looked at (no "never retrieved").
    if not task.cancelled():
        task.exception()


class _Recent(Generic[K, V]):
    """What this replica checked lately: values reused for ``ttl_s`` seconds (0: never), at most
    AUTH_CACHE_SIZE of them (all forgotten when full). Concurrent lookups of one key share one
    load (a burst of streams opened by one tenant asks the store and the policy once)."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._items: dict[K, tuple[V, float]] = {}
        self._loading: dict[K, asyncio.Future[V]] = {}

    def get(self, key: K) -> V | None:
        found = self._items.get(key)
        return found[0] if found is not None and found[1] > time.monotonic() else None

    async def load(self, key: K, load: Callable[[], Awaitable[V]], keep: Callable[[V], bool]) -> V:
        """The value of ``key``: remembered, or loaded once for all concurrent callers (a
        value ``keep`` refuses, such as an outage, is shared by those callers only). The load
        runs as its own task: a caller that goes away does not cancel it for the others."""
        found = self.get(key)
        if found is not None:
            return found
        task = self._loading.get(key)
        if task is None:
            task = asyncio.ensure_future(self._load(key, load, keep))
            task.add_done_callback(_retrieved)
            self._loading[key] = task
        return await asyncio.shield(task)

    async def _load(self, key: K, load: Callable[[], Awaitable[V]], keep: Callable[[V], bool]) -> V:
        try:
            value = await load()
            if keep(value):
                self.put(key, value)
            return value
        finally:
            del self._loading[key]

    def put(self, key: K, value: V) -> None:
        if self._ttl_s <= 0:
            return
        if len(self._items) >= AUTH_CACHE_SIZE:
            self._items.clear()
        self._items[key] = (value, time.monotonic() + self._ttl_s)

    def forget(self, key: K | None = None) -> None:
        """Forget ``key``, or everything."""
        if key is None:
            self._items.clear()
        else:
            self._items.pop(key, None)


class GatewayService:
    """The API's operations on the runtime, scoped by the caller's tenant."""

    def __init__(
        self,
        runtime: Runtime,
        settings: Settings,
        profiles: dict[str, AgentProfile],
        policy: RegoPolicyEngine | None = None,
        limits: TenantLimitsService | None = None,
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.profiles = profiles
        self.policy = policy
        self.limits = limits
        # (tenant, action, agent, admin) -> the policy's decision; SHA-256 of a key -> its caller.
        cache_s = settings.auth.cache_s
        self._decisions: _Recent[tuple[str, str, str | None, bool, tuple[str, ...]], PolicyDecision]
        self._decisions = _Recent(cache_s)
        self._callers: _Recent[bytes, Caller | None] = _Recent(cache_s)
        self._open_streams = 0  # streams and waits this replica serves now, all tenants

    async def authenticate(self, token: str | None) -> Caller:
        """The caller behind a bearer token (the admin key or a tenant's API key).

        A tenant key found in the store is trusted for ``auth.cache_s`` seconds on this replica.
        """
        if not token:
            raise _unauthorized("missing API key")
        admin_key = self.settings.auth.admin_key
        if admin_key and hmac.compare_digest(token.encode(), admin_key.encode()):
            return Caller(tenant_id=None, key_id=None, admin=True)
        digest = hashlib.sha256(token.encode()).digest()

        async def lookup() -> Caller | None:
            key = await self.runtime.store.authenticate(token)
            if key is None:
                return None
            return Caller(tenant_id=key.tenant_id, key_id=key.key_id, roles=tuple(key.roles))

        caller = await self._callers.load(digest, lookup, keep=lambda found: found is not None)
        if caller is None:
            raise _unauthorized("invalid API key")
        return caller

    async def admit(self, caller: Caller) -> RateDecision | None:
        """Count a tenant's request against its rate (after authentication); None when nothing
        was counted (the admin key, no rate limit, no limits configured).

        Raises:
            RateLimited: over the tenant's requests per minute (429 with Retry-After).
            InfrastructureError: the rate counters cannot be reached (503).
        """
        if caller.tenant_id is None or self.limits is None:
            return None
        return await self.limits.admit(caller.tenant_id)

    async def open_stream(self, caller: Caller) -> StreamLease:
        """One of the tenant's open-stream slots, for a stream or a wait (SSE, streamed turns,
        ``?wait=true``, MCP ``send_message``, the handle's streams); release it when it closes.

        This replica also counts the streams it serves, all tenants together: past
        ``replica_max_open_streams`` it refuses at once (503), so streams never take the request
        slots short requests need (past Serve's ``max_ongoing_requests`` they would queue in the
        proxy with no answer).

        Raises:
            TooManyStreams: the tenant holds its ``max_open_streams`` (429 with Retry-After).
            DependencyUnavailable: this replica serves its ``replica_max_open_streams`` (503).
            InfrastructureError: the slots cannot be counted (503).
        """
        tenant_id = caller.tenant()
        cap = self.settings.limits.replica_max_open_streams
        if cap and self._open_streams >= cap:
            raise DependencyUnavailable(
                "gateway",
                f"this gateway replica serves its most open streams ({cap}); retry in a moment",
            )
        self._open_streams += 1  # before the await: concurrent openers see it
        try:
            if self.limits is None:
                lease = StreamLease.unlimited(tenant_id)
            else:
                lease = await self.limits.open_stream(tenant_id)
        except BaseException:
            self._open_streams -= 1
            raise
        lease.on_release(self._stream_closed)
        return lease

    def _stream_closed(self) -> None:
        self._open_streams -= 1

    async def authorize(self, caller: Caller, action: ApiAction, agent: str | None = None) -> str:
        """Ask the policy whether the caller may do ``action``; returns the caller's tenant.

        Decisions are reused for ``auth.cache_s`` on this replica (API actions have few distinct
        inputs); a policy engine that cannot decide is an outage (503), a denial is 403.
        """
        # Sessions belong to tenants: the admin key (no tenant) gets 403 here for them.
        tenant_id = _ADMIN_TENANT if action == "keys.manage" else caller.tenant()
        bind_for_task(tenant_id=tenant_id)  # this request's log lines carry the tenant
        if self.policy is None:
            return tenant_id
        key = (tenant_id, action, agent, caller.admin, caller.roles)
        policy = self.policy
        decision = await self._decisions.load(
            key,
            lambda: policy.decide_action(
                tenant_id, action, agent=agent, admin=caller.admin, roles=caller.roles
            ),
            keep=lambda found: not found.failed,  # an outage is asked about again
        )
        if decision.failed:
            raise DependencyUnavailable("policy", decision.reason)
        if not decision.allowed:
            raise ProblemError(403, "forbidden", f"denied by policy: {decision.reason}")
        return tenant_id

    # -- sessions ---------------------------------------------------------------------------

    async def create_session(self, caller: Caller, body: api.SessionCreateIn) -> api.SessionOut:
        caller.tenant()  # the admin key has no sessions: 403 before asking the policy
        if body.agent not in self.profiles:
            known = ", ".join(sorted(self.profiles))
            raise ValidationFailed(f"unknown agent {body.agent!r}; known agents: {known}")
        tenant_id = await self.authorize(caller, "session.create", body.agent)
        session = await self.runtime.create_session(
            tenant_id, body.agent, body.metadata, webhook=body.webhook
        )
        return api.SessionOut.of(session)

    async def list_sessions(
        self, caller: Caller, limit: int = 50, cursor: str | None = None
    ) -> api.SessionList:
        tenant_id = await self.authorize(caller, "session.read")
        page = await self.runtime.store.list_sessions(tenant_id, limit=limit, cursor=cursor)
        return api.SessionList(
            items=[api.SessionOut.of(s) for s in page.items], next_cursor=page.next_cursor
        )

    async def get_session(self, caller: Caller, session_id: str) -> api.SessionOut:
        tenant_id = await self.authorize(caller, "session.read")
        return api.SessionOut.of(await self.runtime.store.get_session(tenant_id, session_id))

    async def close_session(self, caller: Caller, session_id: str) -> api.SessionOut:
        tenant_id = await self.authorize(caller, "session.delete")
        closed = await self.runtime.store.close_session(tenant_id, session_id, "closed by the API")
        return api.SessionOut.of(closed)

    # -- messages, turns, events ------------------------------------------------------------

    async def submit(
        self,
        caller: Caller,
        session_id: str,
        body: api.MessageIn,
        idempotency_key: str | None,
        *,
        notify: bool = True,
    ) -> Submission:
        """Commit the message (durable before anything is acknowledged) and wake its host
        (unless ``notify`` is False because :meth:`wait` follows, which wakes it)."""
        return await self.runtime.send_message(
            await self.authorize(caller, "session.message"),
            session_id,
            body.content,
            idempotency_key=idempotency_key,
            notify=notify,
            strategy=body.multitask_strategy,
            webhook=body.webhook,
        )

    async def send_message(
        self, caller: Caller, session_id: str, body: api.MessageIn, idempotency_key: str | None
    ) -> api.MessageAccepted:
        submission = await self.submit(caller, session_id, body, idempotency_key)
        return api.MessageAccepted(
            session_id=session_id, message_id=submission.message_id, turn_id=submission.turn_id
        )

    async def ask(
        self, caller: Caller, session_id: str, body: api.MessageIn, idempotency_key: str | None
    ) -> api.TurnOut:
        """Send and wait (up to WAIT_TIMEOUT_S) for the turn's outcome, holding one of the
        tenant's open-stream slots meanwhile (taken before the message is committed: a refused
        wait leaves nothing behind)."""
        lease = await self.open_stream(caller)
        try:
            submission = await self.submit(caller, session_id, body, idempotency_key, notify=False)
            return await self.wait(caller, session_id, submission)
        finally:
            await release_shielded(lease)

    def turn_items(
        self, caller: Caller, session_id: str, submission: Submission
    ) -> AsyncIterator[StreamItem]:
        """The turn's events and deltas, from its ``message.received`` to its outcome (submit
        with ``notify=False``: the stream wakes the session once it is subscribed)."""
        return self._turn_items(caller.tenant(), session_id, submission)

    async def _turn_items(
        self, tenant_id: str, session_id: str, submission: Submission
    ) -> AsyncIterator[StreamItem]:
        items = self.runtime.stream(
            tenant_id,
            session_id,
            after_seq=max(submission.seq - 1, 0),
            until_turn=submission.turn_id,
            wake=True,  # submitted with notify=False: the turn starts once we listen
        )
        async for item in items:
            if getattr(item, "turn_id", submission.turn_id) == submission.turn_id:
                yield item

    async def wait(self, caller: Caller, session_id: str, submission: Submission) -> api.TurnOut:
        """The turn's outcome, from its terminal event when it arrives in time (the host is woken
        and answers with that event alone); otherwise the turn as the store has it (e.g. still
        running)."""
        tenant_id = caller.tenant()
        outcome = await self.runtime.wait_turn(tenant_id, session_id, submission, WAIT_TIMEOUT_S)
        if outcome is not None:
            return _turn_out(session_id, submission, outcome)
        store = self.runtime.store
        turn = await store.get_turn(tenant_id, submission.turn_id)
        content = None
        if turn.answer_message_id:
            content = (await store.get_message(tenant_id, turn.answer_message_id)).content
        return api.TurnOut(
            session_id=session_id,
            message_id=submission.message_id,
            turn_id=turn.turn_id,
            status=turn.status,
            content=content,
            error=turn.error,
            usage=ev.Usage.model_validate(turn.usage or {}),
        )

    async def messages(self, caller: Caller, session_id: str) -> api.MessageList:
        tenant_id = await self.authorize(caller, "session.read")
        await self.runtime.store.get_session(tenant_id, session_id)
        messages = await self.runtime.store.list_messages(tenant_id, session_id)
        return api.MessageList(items=[api.MessageOut.of(m) for m in messages])

    async def attachment(
        self, caller: Caller, session_id: str, attachment_id: str
    ) -> tuple[str, bytes]:
        """A file a tool produced in the session (media type, bytes)."""
        tenant_id = await self.authorize(caller, "session.read")
        return await self.runtime.store.get_attachment(tenant_id, session_id, attachment_id)

    async def events(
        self, caller: Caller, session_id: str, after: int = 0
    ) -> AsyncIterator[StreamItem]:
        """Checks the session (404 before any streaming), then returns its event stream. A seq
        past the session's last event resumes at that event: an empty stream that follows new
        events (a seq no event can have never reaches the store's queries)."""
        tenant_id = await self.authorize(caller, "session.read")
        session = await self.runtime.store.get_session(tenant_id, session_id)
        after_seq = min(max(after, 0), session.last_seq)
        return self.runtime.stream(tenant_id, session_id, after_seq=after_seq)

    async def cancel(
        self, caller: Caller, session_id: str, turn_id: str | None = None
    ) -> api.CancelOut:
        tenant_id = await self.authorize(caller, "session.cancel")
        cancelled = await self.runtime.cancel(tenant_id, session_id, turn_id)
        return api.CancelOut(cancelled=cancelled)

    # -- approvals --------------------------------------------------------------------------

    async def approvals(
        self, caller: Caller, session_id: str, all_: bool = False
    ) -> api.ApprovalList:
        """The session's tool calls waiting for a person (``all_``: decided ones too)."""
        tenant_id = await self.authorize(caller, "session.read")
        items = await self.runtime.approvals(tenant_id, session_id, pending_only=not all_)
        return api.ApprovalList(items=[api.ApprovalOut.of(item) for item in items])

    async def decide_approval(
        self, caller: Caller, session_id: str, tool_call_id: str, body: api.ApprovalDecisionIn
    ) -> api.ApprovalOut:
        """Approve, edit or reject a waiting tool call (the ``session.approve`` action); the
        decision names the caller's key.

        Raises:
            NotFoundError: no such session of the caller's tenant, or no such waiting call.
            ApprovalNotPending: decided already, expired, or its turn ended.
        """
        tenant_id = await self.authorize(caller, "session.approve")
        approval = await self.runtime.decide_approval(
            tenant_id,
            session_id,
            tool_call_id,
            body.decision,
            decided_by=f"key:{caller.key_id}",
            arguments=body.arguments,
            message=body.message,
        )
        return api.ApprovalOut.of(approval)

    # -- schedules --------------------------------------------------------------------------

    async def create_schedule(
        self, caller: Caller, session_id: str, body: api.ScheduleIn
    ) -> api.ScheduleOut:
        """Add a schedule (the ``session.message`` action: its ticks are the tenant's messages).

        Raises:
            ValidationFailed: an invalid cron expression or time zone, or ticks too close.
        """
        tenant_id = await self.authorize(caller, "session.message")
        settings = self.settings.schedules
        now = datetime.now(UTC)
        first = check_schedule(body.cron, body.timezone, settings.min_interval_s, now)
        schedule = await self.runtime.store.create_schedule(
            tenant_id,
            session_id,
            cron=body.cron,
            timezone=body.timezone,
            content=body.content,
            missed=body.missed,
            next_fire_at=first,
            max_per_session=settings.max_per_session,
        )
        return api.ScheduleOut.of(schedule)

    async def schedules(self, caller: Caller, session_id: str) -> api.ScheduleList:
        tenant_id = await self.authorize(caller, "session.read")
        items = await self.runtime.store.list_schedules(tenant_id, session_id)
        return api.ScheduleList(items=[api.ScheduleOut.of(item) for item in items])

    async def delete_schedule(self, caller: Caller, session_id: str, schedule_id: str) -> None:
        tenant_id = await self.authorize(caller, "session.message")
        await self.runtime.store.delete_schedule(tenant_id, session_id, schedule_id)

    # -- agents and keys --------------------------------------------------------------------

    def agents(self, caller: Caller) -> api.AgentList:
        return api.AgentList(items=[_agent_out(p) for p in self.profiles.values()])

    def agent(self, caller: Caller, name: str) -> api.AgentOut:
        profile = self.profiles.get(name)
        if profile is None:
            raise NotFoundError(f"agent {name!r} not found")
        return _agent_out(profile)

    async def create_key(self, caller: Caller, body: api.KeyCreateIn) -> api.KeyCreated:
        caller.require_admin()
        await self.authorize(caller, "keys.manage")
        store = self.runtime.store
        if body.tenant_id is not None:
            tenant_id = (await store.get_tenant(body.tenant_id)).tenant_id
        else:
            tenant_id = (await store.create_tenant(body.tenant_name or body.name)).tenant_id
        key, secret = await store.create_api_key(tenant_id, body.name, body.roles)
        return api.KeyCreated(**api.KeyOut.of(key).model_dump(), secret=secret)

    async def list_keys(self, caller: Caller, tenant_id: str | None = None) -> api.KeyList:
        caller.require_admin()
        await self.authorize(caller, "keys.manage")
        keys = await self.runtime.store.list_api_keys(tenant_id)
        return api.KeyList(items=[api.KeyOut.of(k) for k in keys])

    async def revoke_key(self, caller: Caller, key_id: str) -> None:
        caller.require_admin()
        await self.authorize(caller, "keys.manage")
        await self.runtime.store.revoke_api_key(None, key_id)
        self._callers.forget()  # at once here; other replicas within auth.cache_s
