"""Domain records returned by the state store: immutable, typed, safe to send across actors."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "SUPERSEDING",
    "Activated",
    "ApiKey",
    "Approval",
    "ApprovalDecision",
    "ApprovalStatus",
    "Message",
    "MessageRole",
    "MissedTicks",
    "MultitaskStrategy",
    "OutboxRecord",
    "Page",
    "QueuedTurn",
    "Session",
    "SessionStatus",
    "Submission",
    "Tenant",
    "Turn",
    "TurnStatus",
    "WebhookDelivery",
]

SessionStatus = Literal["active", "awaiting_approval", "closed"]
"""``awaiting_approval``: a turn of the session waits for a person to decide its tool calls."""
TurnStatus = Literal["queued", "running", "awaiting_approval", "completed", "failed", "cancelled"]
"""``awaiting_approval``: paused until each of its waiting tool calls is decided (then queued
again, to resume where it stopped)."""
ApprovalDecision = Literal["approve", "edit", "reject"]
"""What a person may answer a tool call that waits for approval."""
ApprovalStatus = Literal["pending", "approved", "edited", "rejected", "expired", "cancelled"]
"""``cancelled``: its turn ended (cancelled, superseded) before anyone decided."""
MultitaskStrategy = Literal["enqueue", "reject", "interrupt", "rollback"]
"""What a message does when the session has a turn open (double-texting): ``enqueue`` waits its
turn; ``reject`` is refused (409); ``interrupt`` cancels the open turns, keeping what they wrote;
``rollback`` cancels them and hides their messages from the model."""
SUPERSEDING: frozenset[str] = frozenset({"interrupt", "rollback"})
MessageRole = Literal["system", "user", "assistant", "tool"]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Tenant(_Record):
    tenant_id: str
    name: str
    created_at: datetime


class ApiKey(_Record):
    """An API key's public face; the secret itself is shown once, at creation, and stored hashed."""

    key_id: str
    tenant_id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None
    roles: list[str] = Field(default_factory=list)
    """What the tenant's policy may require of a caller for an action (``action_roles``)."""


class Session(_Record):
    session_id: str
    tenant_id: str
    agent: str
    status: SessionStatus
    metadata: dict[str, Any] = Field(default_factory=dict)
    owner_host: str | None = None
    owner_epoch: int = 0
    last_seq: int = 0
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None = None
    webhook: str | None = None
    """Where each turn's outcome is POSTed (a message may name its own)."""


class Message(_Record):
    message_id: str
    session_id: str
    turn_id: str | None
    role: MessageRole
    content: str
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    created_at: datetime
    rolled_back: bool = False
    """A later message rolled its turn back: kept for the record, never shown to the model."""


class Turn(_Record):
    turn_id: str
    session_id: str
    tenant_id: str
    message_id: str
    status: TurnStatus
    attempt: int
    usage: dict[str, Any] = Field(default_factory=dict)
    answer_message_id: str | None = None
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    strategy: MultitaskStrategy = "enqueue"
    """The multitask strategy its message was sent with."""


class Approval(_Record):
    """A tool call a policy sent to a person (``ask``), and what they decided."""

    tool_call_id: str
    tenant_id: str
    session_id: str
    turn_id: str
    tool: str
    arguments: dict[str, Any]
    """What the model asked for."""
    reason: str
    """Why the policy asks (its rule's reason)."""
    status: ApprovalStatus
    decisions: tuple[ApprovalDecision, ...] = ("approve", "edit", "reject")
    expires_at: datetime | None = None
    """Unanswered by then, it counts as rejected."""
    created_at: datetime
    decided_at: datetime | None = None
    decided_by: str | None = None
    """The API key that decided (``expiry`` for an expired request)."""
    edited_arguments: dict[str, Any] | None = None
    """What the tool runs with instead (``edit``)."""
    message: str | None = None
    """The person's note; the model reads it as the tool's error when rejected."""

    @property
    def run_arguments(self) -> dict[str, Any]:
        """The arguments the tool runs with once approved."""
        return self.arguments if self.edited_arguments is None else self.edited_arguments


MissedTicks = Literal["once", "skip"]
"""What a schedule does with ticks missed while no ticker ran: run ``once`` for all of them, or
``skip`` them and wait for the next."""


class Schedule(_Record):
    """A message a session gets at each tick of a cron expression."""

    schedule_id: str
    tenant_id: str
    session_id: str
    cron: str
    timezone: str
    content: str
    missed: MissedTicks
    next_fire_at: datetime
    last_fired_at: datetime | None = None
    created_at: datetime


class WebhookDelivery(_Record):
    """A turn outcome to POST to a webhook, until it is delivered or given up."""

    delivery_id: str
    tenant_id: str
    session_id: str
    turn_id: str
    url: str
    payload: str
    attempts: int
    next_attempt_at: datetime
    created_at: datetime


class QueuedTurn(_Record):
    """A turn as it was queued, what its host needs to run it without reading it back: the
    host does so only while it knows the session had no other open turn when the turn's
    ``message.received`` (``seq``) was written."""

    turn_id: str
    message_id: str
    seq: int
    prompt: str
    strategy: MultitaskStrategy = "enqueue"


class Submission(_Record):
    """The answer to a submitted user message; ``created`` is False for an idempotent resend."""

    message_id: str
    turn_id: str
    created: bool
    seq: int = 0
    """The seq of its ``message.received`` event (0 for an idempotent resend)."""
    queued: QueuedTurn | None = None
    """The turn it queued, for the wake of its host (None for an idempotent resend)."""


class Page(_Record):
    """One page of a listing and the opaque cursor of the next, if any."""

    items: list[Any]
    next_cursor: str | None = None


class OutboxRecord(_Record):
    """An event waiting in the outbox for the relay."""

    position: int
    event_id: str
    session_id: str
    seq: int
    payload: bytes


class Activated(_Record):
    """What a host loads when it activates a session (one transaction, see activate_session)."""

    session: Session
    messages: list[Message]
    open_turns: list[Turn]
    next_seq: int = 0
    """The seq the session's next event takes, as of this load (0: not known)."""
