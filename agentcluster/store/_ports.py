"""The state store's ports: small role protocols, each what one kind of caller uses.

``SqlStateStore`` (SQLAlchemy: PostgreSQL or embedded SQLite) implements all of them; a caller
types its parameter or attribute with the role it uses, so a test can hand it a small fake and a
reader sees what it touches:

==================  ==========================================================================
role                callers
==================  ==========================================================================
TenantStore         the gateway's admin routes and authentication, ``agentcluster init``
SessionStore        the API (Runtime, the gateway service): sessions, messages, turns, events,
                    attachments as the API reads and writes them
ApprovalStore       the API (tool calls waiting for a person), the host controller (expiry)
AttachmentStore     the tool executor (files a tool produced), the attachments route
HistoryReader       reads of a session's history (the API, and an activation reloading it)
ActivationStore     session hosts: activate/claim with a fencing epoch, journal writes under
                    the epoch (``writer``), release, the open-turn sweeps
OutboxSource        the relay (``OutboxBacklog``: its lag gauge)
StoreHealth         the readiness probe
SharedDatabase      adapters keeping their own rows in the same database (the ``settings``
                    table: provider settings, limit overrides, usage counters)
StateStore          the union, for the composition root that opens one store for everything
==================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from agentcluster import events as ev
from agentcluster.domain import (
    Activated,
    ApiKey,
    Approval,
    ApprovalDecision,
    Message,
    MessageRole,
    MissedTicks,
    MultitaskStrategy,
    OutboxRecord,
    Page,
    Schedule,
    Session,
    Submission,
    Tenant,
    Turn,
    TurnStatus,
    WebhookDelivery,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "ActivationStore",
    "AttachmentStore",
    "HistoryReader",
    "JournalWriter",
    "OutboxBacklog",
    "OutboxSource",
    "SessionStore",
    "SharedDatabase",
    "StateStore",
    "StoreHealth",
    "TenantStore",
]


class TenantStore(Protocol):
    """Tenants and their API keys (stored hashed)."""

    async def create_tenant(self, name: str, tenant_id: str | None = None) -> Tenant: ...

    async def get_tenant(self, tenant_id: str) -> Tenant: ...

    async def create_api_key(
        self, tenant_id: str, name: str, roles: Sequence[str] = ()
    ) -> tuple[ApiKey, str]: ...

    async def authenticate(self, secret: str) -> ApiKey | None: ...

    async def list_api_keys(self, tenant_id: str | None) -> list[ApiKey]: ...

    async def revoke_api_key(self, tenant_id: str | None, key_id: str) -> None: ...


class HistoryReader(Protocol):
    """A session's history as committed: its messages and its events."""

    async def list_messages(
        self, tenant_id: str, session_id: str, *, limit: int | None = None
    ) -> list[Message]: ...

    async def list_events(
        self, tenant_id: str, session_id: str, *, after_seq: int = 0, limit: int = 1000
    ) -> list[ev.Event]: ...


class AttachmentStore(Protocol):
    """Files tools produced for a session's turns."""

    async def add_attachment(
        self, tenant_id: str, session_id: str, turn_id: str, media_type: str, data: bytes
    ) -> str: ...

    async def get_attachment(
        self, tenant_id: str, session_id: str, attachment_id: str
    ) -> tuple[str, bytes]: ...


class SessionStore(HistoryReader, AttachmentStore, Protocol):
    """Sessions, messages, turns, events and attachments as the API reads and writes them
    (every call scoped to the caller's tenant)."""

    async def create_session(
        self,
        tenant_id: str,
        agent: str,
        metadata: dict[str, Any] | None = None,
        *,
        webhook: str | None = None,
    ) -> Session: ...

    async def get_session(self, tenant_id: str, session_id: str) -> Session: ...

    async def list_sessions(
        self, tenant_id: str, *, limit: int = 50, cursor: str | None = None
    ) -> Page: ...

    async def submit_message(
        self,
        tenant_id: str,
        session_id: str,
        content: str,
        *,
        idempotency_key: str | None = None,
        strategy: MultitaskStrategy = "enqueue",
        webhook: str | None = None,
    ) -> Submission: ...

    async def close_session(self, tenant_id: str, session_id: str, reason: str = "") -> Session: ...

    async def get_turn(self, tenant_id: str, turn_id: str) -> Turn: ...

    async def get_message(self, tenant_id: str, message_id: str) -> Message: ...


class JournalWriter(Protocol):
    """A fenced unit of work on one session (what :meth:`ActivationStore.writer` yields)."""

    tenant_id: str
    session_id: str
    status: str
    emitted: list[ev.Event]

    @property
    def next_seq(self) -> int: ...

    async def emit(self, event: ev.Event) -> ev.Event: ...

    async def add_message(
        self,
        role: MessageRole,
        content: str,
        *,
        turn_id: str | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
        tool_call_id: str | None = None,
        idempotency_key: str | None = None,
        message_id: str | None = None,
    ) -> str: ...

    async def add_turn(
        self,
        turn_id: str,
        message_id: str,
        strategy: MultitaskStrategy = "enqueue",
        *,
        webhook: str | None = None,
    ) -> None: ...

    async def start_turn(self, turn_id: str, *, resumed: bool = False) -> int | None: ...

    async def has_open_turns(self) -> bool:
        """Whether the session has an open turn, this unit of work's changes included."""
        ...

    async def pause_turn(self, turn_id: str, usage: dict[str, Any]) -> str | None: ...

    async def request_approval(
        self, turn_id: str, tool_call_id: str, reason: str, expires_at: datetime
    ) -> None: ...

    async def finish_turn(
        self,
        turn_id: str,
        status: TurnStatus,
        *,
        usage: dict[str, Any] | None = None,
        answer_message_id: str | None = None,
        error: str | None = None,
    ) -> str | None: ...

    async def add_webhook_delivery(self, turn_id: str, url: str, payload: str) -> None: ...

    async def roll_back_messages(self, turn_id: str) -> None: ...

    async def record_tool_call(
        self, tool_call_id: str, turn_id: str, tool: str, arguments: dict[str, Any]
    ) -> None: ...

    async def finish_tool_call(
        self,
        turn_id: str,
        tool_call_id: str,
        *,
        status: str,
        decision: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None: ...


class ActivationStore(HistoryReader, Protocol):
    """What a session host needs: ownership under a fencing epoch, journal writes under that
    epoch, the open turns to run, and the sweeps that find sessions nobody runs."""

    async def activate_session(self, session_id: str, host_id: str) -> Activated: ...

    async def claim_session(self, session_id: str, host_id: str) -> int: ...

    async def release_session(self, session_id: str, epoch: int) -> bool: ...

    def writer(
        self,
        session_id: str,
        *,
        epoch: int | None = None,
        tenant_id: str | None = None,
        events: int = 0,
    ) -> AbstractAsyncContextManager[JournalWriter]: ...

    async def open_turns(self, session_id: str) -> list[Turn]: ...

    async def open_turns_with_prompts(self, session_id: str) -> list[tuple[Turn, str]]: ...

    async def turn_approvals(self, session_id: str, turn_id: str) -> dict[str, Approval]: ...

    async def sessions_with_open_turns(
        self, owner_host: str, *, prefix: bool = False
    ) -> list[str]: ...

    async def sessions_to_wake(
        self,
        owner_prefix: str,
        live_owners: Collection[str] | None,
        *,
        unowned_after_s: float = 10.0,
        excluding: str | None = None,
        limit: int = 500,
    ) -> list[str]: ...


class OutboxSource(Protocol):
    """The part of the state store the relay reads and marks."""

    async def fetch_unpublished(self, limit: int) -> list[OutboxRecord]: ...

    async def mark_published(self, positions: Sequence[int]) -> None: ...


@runtime_checkable
class OutboxBacklog(Protocol):
    """Optional role of an outbox source: the size of the whole backlog (for metrics)."""

    async def outbox_lag(self) -> int: ...


class StoreHealth(Protocol):
    """Whether the database answers (the readiness probe)."""

    @property
    def description(self) -> str: ...

    async def ping(self) -> None: ...


class SharedDatabase(StoreHealth, Protocol):
    """The store's database for adapters that keep their own rows in it (the ``settings``
    table); ``transaction`` converts driver errors into ours naming ``dependency``."""

    @property
    def dependency(self) -> str: ...

    def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]: ...

    async def close(self) -> None: ...


class ScheduleStore(Protocol):
    """Sessions' schedules (the API) and the due ones with the ticker's lease (the ticker)."""

    async def create_schedule(
        self,
        tenant_id: str,
        session_id: str,
        *,
        cron: str,
        timezone: str,
        content: str,
        missed: MissedTicks,
        next_fire_at: datetime,
        max_per_session: int,
    ) -> Schedule: ...

    async def list_schedules(self, tenant_id: str, session_id: str) -> list[Schedule]: ...

    async def delete_schedule(self, tenant_id: str, session_id: str, schedule_id: str) -> None: ...

    async def due_schedules(self, now: datetime, *, limit: int = 100) -> list[Schedule]: ...

    async def advance_schedule(
        self, schedule: Schedule, *, fired_at: datetime | None, next_fire_at: datetime
    ) -> bool: ...

    async def drop_schedule(self, schedule_id: str) -> None: ...

    async def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool: ...


class ApprovalStore(Protocol):
    """Tool calls waiting for a person: the API lists and decides them (tenant-scoped); the
    host controller expires the unanswered ones."""

    async def list_approvals(
        self, tenant_id: str, session_id: str, *, pending_only: bool = True
    ) -> list[Approval]: ...

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
    ) -> tuple[Approval, bool]: ...

    async def expire_approvals(
        self, *, owner_prefix: str | None = None, limit: int = 100
    ) -> list[str]: ...


class WebhookStore(Protocol):
    """Turn outcomes waiting for their webhook, and each tenant's signing secret."""

    async def due_webhook_deliveries(
        self, now: datetime, *, limit: int = 50
    ) -> list[WebhookDelivery]: ...

    async def record_webhook_attempt(
        self,
        delivery: WebhookDelivery,
        *,
        status_code: int | None,
        error: str | None,
        retry_at: datetime | None,
    ) -> None: ...

    async def webhook_secret(self, tenant_id: str) -> str: ...

    async def rotate_webhook_secret(self, tenant_id: str) -> str: ...


class StateStore(
    TenantStore,
    SessionStore,
    ActivationStore,
    ApprovalStore,
    ScheduleStore,
    WebhookStore,
    OutboxSource,
    OutboxBacklog,
    SharedDatabase,
    Protocol,
):
    """Every role at once: what the composition root opens and hands out by role."""
