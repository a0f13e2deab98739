"""HTTP API v1 bodies: what the gateway accepts and returns, and what the Python client parses.

Request bodies reject unknown fields; every response model is the single source for both the
OpenAPI schema and the client.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentcluster.domain import ApiKey, Message, MultitaskStrategy, Session
from agentcluster.events import Usage

__all__ = [
    "CURSOR_PATTERN",
    "IDEMPOTENCY_KEY_PATTERN",
    "ID_PATTERN",
    "MAX_CONTENT_CHARS",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "AgentList",
    "AgentOut",
    "CancelIn",
    "CancelOut",
    "Health",
    "KeyCreateIn",
    "KeyCreated",
    "KeyList",
    "KeyOut",
    "MessageAccepted",
    "MessageIn",
    "MessageList",
    "MessageOut",
    "Problem",
    "Ready",
    "ReadyDependency",
    "SessionCreateIn",
    "SessionList",
    "SessionOut",
    "TurnOut",
    "check_metadata",
    "json_depth",
]

MAX_CONTENT_CHARS = 32_000
CURSOR_PATTERN = r"^[0-9]{1,17}\.[0-9a-f-]{1,36}$"
"""A page's ``next_cursor``: ``<created_at in microseconds since 1970 UTC>.<session id>``; any
string of this form is a valid position (a page starts after it)."""
IDEMPOTENCY_KEY_PATTERN = r"^[\x20-\x7e]{1,200}$"
"""1-200 printable ASCII characters."""
ROLE_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
"""An API key's role: lowercase letters, digits, ``_ . -``, at most 64 characters."""
ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
"""Ids of sessions, messages, turns and keys: lowercase UUIDs (any other is unknown)."""
MAX_METADATA_DEPTH = 16
"""Nesting levels of session metadata (the object itself is level 1)."""
MAX_METADATA_BYTES = 16 * 1024
"""Session metadata serialized as compact UTF-8 JSON."""


def json_depth(value: Any) -> int:
    """How deeply ``value`` nests (a scalar is 0, ``{}`` and ``[]`` are 1); iterative, so any
    depth is measured without recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict | list | tuple):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, level + 1) for child in children)
    return deepest


def check_metadata(metadata: dict[str, Any]) -> None:
    """Raise ValueError naming the limit when ``metadata`` is too deep, too large or holds a
    number JSON cannot carry (NaN, Infinity)."""
    depth = json_depth(metadata)
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(f"nested {depth} levels deep; the limit is {MAX_METADATA_DEPTH} levels")
    try:
        encoded = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise ValueError("NaN and Infinity are not JSON numbers") from None
    size = len(encoded.encode())
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"{size} bytes serialized; the limit is {MAX_METADATA_BYTES} bytes")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class Problem(_Out):
    """RFC 9457 problem details; ``type`` is stable, e.g. ``https://agentcluster.dev/problems/not-found``."""

    type: str
    title: str
    status: int
    detail: str = ""
    instance: str | None = None


WEBHOOK_DESCRIPTION = (
    "an absolute http(s) URL each turn's outcome is POSTed to, signed (Standard Webhooks); "
    "the tenant's network policy must allow its host"
)


def _check_webhook(url: str | None) -> str | None:
    if url is None:
        return None
    from agentcluster.tools import web_url_problem  # the URL parser the SSRF guard uses

    problem = web_url_problem(url)
    if problem is not None:
        raise ValueError(problem)
    return url


class SessionCreateIn(_In):
    agent: str = Field(default="default", min_length=1, max_length=200)
    webhook: str | None = Field(
        default=None, min_length=1, max_length=2000, description=WEBHOOK_DESCRIPTION
    )

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, url: str | None) -> str | None:
        return _check_webhook(url)

    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description=f"free-form JSON, at most {MAX_METADATA_DEPTH} levels deep and "
        f"{MAX_METADATA_BYTES} bytes serialized",
    )

    @field_validator("metadata")
    @classmethod
    def _bounded(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        check_metadata(metadata)
        return metadata


class SessionOut(_Out):
    session_id: str
    agent: str
    status: Literal["active", "awaiting_approval", "closed"]
    metadata: dict[str, Any]
    last_seq: int
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None = None
    webhook: str | None = None

    @classmethod
    def of(cls, session: Session) -> SessionOut:
        return cls(
            session_id=session.session_id,
            agent=session.agent,
            status=session.status,
            metadata=session.metadata,
            last_seq=session.last_seq,
            created_at=session.created_at,
            updated_at=session.updated_at,
            closed_at=session.closed_at,
            webhook=session.webhook,
        )


class SessionList(_Out):
    items: list[SessionOut]
    next_cursor: str | None = Field(
        default=None,
        description="pass as ?cursor= for the next page; null on the last page",
        json_schema_extra={"pattern": CURSOR_PATTERN},  # documented; clients keep it opaque
    )


class MessageIn(_In):
    content: str = Field(min_length=1, max_length=MAX_CONTENT_CHARS)
    webhook: str | None = Field(
        default=None,
        min_length=1,
        max_length=2000,
        description=WEBHOOK_DESCRIPTION + " (for this message's turn, instead of the session's)",
    )

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, url: str | None) -> str | None:
        return _check_webhook(url)

    multitask_strategy: MultitaskStrategy = Field(
        default="enqueue",
        description=(
            "What the message does when the session has a turn open (double-texting): "
            "`enqueue` runs it after them; `reject` refuses it with 409 `turn-in-progress` "
            "(nothing is stored); `interrupt` cancels the open turns at once, keeping what they "
            "wrote, then runs it; `rollback` cancels them and hides their messages from the "
            "model (the events and `GET /messages` keep them, marked `rolled_back`)."
        ),
    )


class MessageAccepted(_Out):
    """202: the message is committed; its turn runs in the background."""

    session_id: str
    message_id: str
    turn_id: str


class TurnOut(_Out):
    """The outcome of a turn (``?wait=true``)."""

    session_id: str
    message_id: str
    turn_id: str
    status: Literal["queued", "running", "awaiting_approval", "completed", "failed", "cancelled"]
    content: str | None = None
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    awaiting_approval: list[str] | None = None
    """``awaiting_approval``: the tool calls that wait for a person
    (``GET /v1/sessions/{id}/approvals``)."""


class MessageOut(_Out):
    message_id: str
    turn_id: str | None
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    created_at: datetime
    rolled_back: bool = False

    @classmethod
    def of(cls, message: Message) -> MessageOut:
        return cls(
            message_id=message.message_id,
            turn_id=message.turn_id,
            role=message.role,
            content=message.content,
            tool_calls=message.tool_calls,
            tool_call_id=message.tool_call_id,
            created_at=message.created_at,
            rolled_back=message.rolled_back,
        )


class MessageList(_Out):
    items: list[MessageOut]


class CancelIn(_In):
    turn_id: str | None = None


class CancelOut(_Out):
    cancelled: bool


class AgentOut(_Out):
    name: str
    description: str
    model: str
    fallback_models: list[str]
    tools: list[str]


class AgentList(_Out):
    items: list[AgentOut]


class KeyCreateIn(_In):
    """Admin only. Without ``tenant_id`` a new tenant named ``tenant_name`` is created."""

    name: str = Field(min_length=1, max_length=200)
    tenant_id: str | None = Field(default=None, max_length=64)
    tenant_name: str | None = Field(default=None, min_length=1, max_length=200)
    roles: list[Annotated[str, Field(pattern=ROLE_PATTERN)]] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "roles the tenant's policy may require for an action (its `action_roles`, e.g. "
            "who may decide approvals)"
        ),
    )


class KeyOut(_Out):
    key_id: str
    tenant_id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None
    roles: list[str] = Field(default_factory=list)

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls(**key.model_dump())


class KeyCreated(KeyOut):
    """Returned once: ``secret`` is the key itself and is never shown again."""

    secret: str


class KeyList(_Out):
    items: list[KeyOut]


class ReadyDependency(_Out):
    """One dependency's state; ``detail`` (its URL, password masked, or why it is down) and
    ``latency_ms`` are shown to the admin key only."""

    name: str
    state: Literal["up", "down", "embedded"]
    detail: str | None = None
    latency_ms: float | None = None


class Ready(_Out):
    """``checked_at``: when the probe answered ran (a result is reused for up to a second)."""

    status: Literal["ready", "degraded"]
    dependencies: list[ReadyDependency]
    checked_at: datetime | None = None


class Health(_Out):
    status: Literal["ok"] = "ok"
