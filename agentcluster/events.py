"""Typed session events: a discriminated union on ``type``, serialized through one TypeAdapter.

Every event carries ``event_id`` (UUID), ``tenant_id``, ``session_id``, the per-session ``seq``
(assigned by the state store inside the transaction that records the state change), ``ts`` and
``trace`` (a W3C trace-context carrier). Events are written to the outbox in the same transaction as
the change they describe and relayed to Kafka keyed by ``session_id``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from opentelemetry import propagate
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

__all__ = [
    "EVENTS",
    "TURN_OUTCOMES",
    "Event",
    "EventBase",
    "LlmCompleted",
    "MessageReceived",
    "SessionClosed",
    "SessionCreated",
    "ToolApprovalDecided",
    "ToolApprovalRequested",
    "ToolCompleted",
    "ToolDecided",
    "ToolRequested",
    "TurnAwaitingApproval",
    "TurnCancelled",
    "TurnCompleted",
    "TurnFailed",
    "TurnOutcome",
    "TurnStarted",
    "Usage",
    "WebhookDelivered",
    "WebhookFailed",
    "current_trace_context",
    "dump_event",
    "load_event",
]


def current_trace_context() -> dict[str, str]:
    """The active OpenTelemetry context as a W3C carrier (empty when no span is active)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return str(uuid.uuid4())


class EventBase(BaseModel):
    """Fields every event has."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(default_factory=_new_id)
    tenant_id: str
    session_id: str
    seq: int = 0
    ts: datetime = Field(default_factory=_now)
    trace: dict[str, str] = Field(default_factory=current_trace_context)


class Usage(BaseModel):
    """Token usage and cost of one or more LLM calls."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0


class SessionCreated(EventBase):
    type: Literal["session.created"] = "session.created"
    agent: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class MessageReceived(EventBase):
    type: Literal["message.received"] = "message.received"
    message_id: str
    turn_id: str
    content: str
    multitask_strategy: Literal["enqueue", "interrupt", "rollback"] = "enqueue"
    """What the message does to turns open when it arrived (``interrupt`` and ``rollback``
    cancel them; a ``reject`` message that was accepted found none open and is ``enqueue``)."""


class TurnStarted(EventBase):
    type: Literal["turn.started"] = "turn.started"
    turn_id: str
    attempt: int = 1
    resumed: bool = False
    """It continues after its tool calls were decided (``turn.awaiting_approval`` before)."""


class LlmCompleted(EventBase):
    type: Literal["llm.completed"] = "llm.completed"
    turn_id: str
    step: int
    model: str
    content: str | None = None
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    latency_ms: float = 0.0


class ToolRequested(EventBase):
    type: Literal["tool.requested"] = "tool.requested"
    turn_id: str
    tool_call_id: str
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolDecided(EventBase):
    type: Literal["tool.decided"] = "tool.decided"
    turn_id: str
    tool_call_id: str
    tool: str
    allowed: bool
    reason: str = ""
    engine: str = ""


Decision = Literal["approve", "edit", "reject"]
DECISIONS: tuple[Decision, ...] = ("approve", "edit", "reject")


class ToolApprovalRequested(EventBase):
    """The policy asks a person before this tool call runs: it waits, nothing executed, until
    ``POST /v1/sessions/{id}/approvals/{tool_call_id}`` decides it or it expires (a reject)."""

    type: Literal["tool.approval_requested"] = "tool.approval_requested"
    turn_id: str
    tool_call_id: str
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    reason: str = ""
    decisions: list[Decision] = Field(default_factory=lambda: list(DECISIONS))
    expires_at: datetime | None = None


class ToolApprovalDecided(EventBase):
    """A person (``decided_by``: their API key) or the expiry decided a waiting tool call."""

    type: Literal["tool.approval_decided"] = "tool.approval_decided"
    turn_id: str
    tool_call_id: str
    tool: str
    decision: Decision
    arguments: dict[str, Any] | None = None
    """The arguments the tool runs with (``edit``)."""
    message: str | None = None
    decided_by: str
    expired: bool = False


class ToolCompleted(EventBase):
    type: Literal["tool.completed"] = "tool.completed"
    turn_id: str
    tool_call_id: str
    tool: str
    ok: bool
    result: Any = None
    error: str | None = None
    latency_ms: float = 0.0


class TurnAwaitingApproval(EventBase):
    """The turn paused: ``tool_call_ids`` wait for a person (each has its
    ``tool.approval_requested``). It resumes, under the same turn id, once all are decided; it
    is not an outcome, but ends the turn's stream and ``?wait=true`` for now."""

    type: Literal["turn.awaiting_approval"] = "turn.awaiting_approval"
    turn_id: str
    tool_call_ids: list[str]


class TurnCompleted(EventBase):
    type: Literal["turn.completed"] = "turn.completed"
    turn_id: str
    message_id: str
    content: str
    usage: Usage = Field(default_factory=Usage)


class TurnFailed(EventBase):
    type: Literal["turn.failed"] = "turn.failed"
    turn_id: str
    error_type: str
    error: str
    retryable: bool = False


class TurnCancelled(EventBase):
    type: Literal["turn.cancelled"] = "turn.cancelled"
    turn_id: str
    reason: str = ""
    superseded_by: str | None = None
    """The turn of the ``interrupt`` or ``rollback`` message that cancelled this one."""
    rolled_back: bool = False
    """The turn's messages are hidden from the model from now on (``rollback``); the events keep
    them."""


class WebhookDelivered(EventBase):
    """A turn's outcome reached its webhook (a 2xx answer)."""

    type: Literal["webhook.delivered"] = "webhook.delivered"
    turn_id: str
    url: str
    status_code: int
    attempts: int


class WebhookFailed(EventBase):
    """One delivery attempt of a turn's outcome failed; ``final`` when no retry follows."""

    type: Literal["webhook.failed"] = "webhook.failed"
    turn_id: str
    url: str
    error: str
    attempts: int
    final: bool = False


class SessionClosed(EventBase):
    type: Literal["session.closed"] = "session.closed"
    reason: str = ""


Event = Annotated[
    SessionCreated
    | MessageReceived
    | TurnStarted
    | LlmCompleted
    | ToolRequested
    | ToolDecided
    | ToolApprovalRequested
    | ToolApprovalDecided
    | ToolCompleted
    | TurnAwaitingApproval
    | TurnCompleted
    | TurnFailed
    | TurnCancelled
    | WebhookDelivered
    | WebhookFailed
    | SessionClosed,
    Field(discriminator="type"),
]

EVENTS: TypeAdapter[Event] = TypeAdapter(Event)

TURN_OUTCOMES = (TurnCompleted, TurnFailed, TurnCancelled, TurnAwaitingApproval)
"""The events that end a turn, for now or for good (for ``isinstance``): what a waiter or a turn's
stream stops at. ``turn.awaiting_approval`` is a pause: the turn resumes after its approvals."""

TurnOutcome = TurnCompleted | TurnFailed | TurnCancelled | TurnAwaitingApproval
"""The event that ends a turn, for now or for good (for annotations)."""


def dump_event(event: Event) -> bytes:
    """Serialize an event to JSON bytes (the Kafka value and the outbox payload)."""
    return EVENTS.dump_json(event)


def load_event(data: bytes | str) -> Event:
    """Parse JSON bytes into the right event class."""
    return EVENTS.validate_json(data)
