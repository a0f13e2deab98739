"""Request and response bodies of the LangGraph-compatible API (what ``langgraph-sdk`` 0.4 sends
and reads). Requests refuse unknown fields; fields the SDK sends that mean nothing here are
accepted and ignored (``config``, ``context``, ``stream_subgraphs``, ``durability``, ...), those
asking for what agentcluster does not do (interrupts, webhooks, checkpoints, delays) are refused
when set. ``multitask_strategy`` is the native API's (enqueue, reject, interrupt, rollback)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentcluster.gateway._langgraph_messages import RunStatus, ThreadStatus
from agentcluster.gateway._langgraph_stream import StreamMode

__all__ = [
    "AssistantOut",
    "AssistantSearchIn",
    "GraphSchemaOut",
    "HistoryIn",
    "InfoOut",
    "LangGraphError",
    "RunCreateIn",
    "RunOut",
    "ThreadCreateIn",
    "ThreadOut",
    "ThreadSearchIn",
    "ThreadStateOut",
]

Json = dict[str, Any]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LangGraphError(BaseModel):
    """An error, as LangGraph servers answer them."""

    detail: str


class InfoOut(BaseModel):
    version: str
    flags: dict[str, bool]
    metadata: Json = Field(default_factory=dict)


class AssistantOut(BaseModel):
    assistant_id: str
    graph_id: str
    name: str
    description: str | None = None
    config: Json = Field(default_factory=dict)
    context: Json = Field(default_factory=dict)
    metadata: Json = Field(default_factory=dict)
    version: int = 1
    created_at: str
    updated_at: str


class AssistantSearchIn(_In):
    metadata: Json | None = None
    graph_id: str | None = Field(default=None, max_length=200)
    name: str | None = Field(default=None, max_length=200)
    limit: int = Field(default=10, ge=1, le=1000)
    offset: int = Field(default=0, ge=0)
    sort_by: Literal["assistant_id", "graph_id", "name", "created_at", "updated_at"] | None = None
    sort_order: Literal["asc", "desc"] | None = None
    select: list[str] | None = None


class GraphSchemaOut(BaseModel):
    graph_id: str
    input_schema: Json | None
    output_schema: Json | None
    state_schema: Json | None
    config_schema: Json | None
    context_schema: Json | None


class ThreadCreateIn(_In):
    thread_id: str | None = Field(default=None, max_length=200)
    metadata: Json | None = None
    if_exists: Literal["raise", "do_nothing"] = "raise"
    supersteps: list[Json] | None = None
    ttl: Json | None = None


class ThreadOut(BaseModel):
    thread_id: str
    created_at: str
    updated_at: str
    metadata: Json
    status: ThreadStatus
    values: Json | None
    interrupts: dict[str, list[Json]] = Field(default_factory=dict)


class ThreadSearchIn(_In):
    metadata: Json | None = None
    values: Json | None = None
    ids: list[str] | None = Field(default=None, max_length=1000)
    status: ThreadStatus | None = None
    limit: int = Field(default=10, ge=1, le=1000)
    offset: int = Field(default=0, ge=0)
    sort_by: Literal["thread_id", "status", "created_at", "updated_at"] | None = None
    sort_order: Literal["asc", "desc"] | None = None
    select: list[str] | None = None
    extract: dict[str, str] | None = None


class Checkpoint(BaseModel):
    thread_id: str
    checkpoint_ns: str = ""
    checkpoint_id: str | None = None
    checkpoint_map: Json | None = None


class ThreadStateOut(BaseModel):
    values: Json
    next: list[str] = Field(default_factory=list)
    checkpoint: Checkpoint
    metadata: Json
    created_at: str | None
    parent_checkpoint: Checkpoint | None = None
    tasks: list[Json] = Field(default_factory=list)
    interrupts: list[Json] = Field(default_factory=list)


class HistoryIn(_In):
    limit: int = Field(default=10, ge=1, le=1000)
    before: Json | str | None = None
    metadata: Json | None = None
    checkpoint: Json | None = None
    select: list[str] | None = None


class RunCreateIn(_In):
    """A run: one turn of the thread's session with the input's last human message."""

    assistant_id: str = Field(max_length=200)
    input: Json | None = None
    command: Json | None = None
    stream_mode: StreamMode | list[StreamMode] = "values"
    stream_subgraphs: bool = False
    stream_resumable: bool = False
    metadata: Json | None = None
    config: Json | None = None
    context: Json | None = None
    checkpoint: Json | None = None
    checkpoint_id: str | None = None
    checkpoint_during: bool | None = None
    interrupt_before: Literal["*"] | list[str] | None = None
    interrupt_after: Literal["*"] | list[str] | None = None
    feedback_keys: list[str] | None = None
    webhook: str | None = None
    multitask_strategy: Literal["reject", "interrupt", "rollback", "enqueue"] = "enqueue"
    if_not_exists: Literal["create", "reject"] = "reject"
    on_disconnect: Literal["cancel", "continue"] = "continue"
    on_completion: Literal["delete", "keep"] = "keep"
    after_seconds: float | None = None
    durability: Literal["sync", "async", "exit"] | None = None
    strict_resume: bool | None = None
    langsmith_tracer: Json | None = None

    def modes(self) -> frozenset[str]:
        modes = [self.stream_mode] if isinstance(self.stream_mode, str) else self.stream_mode
        return frozenset(modes or ["values"])

    def unsupported(self) -> str | None:
        """What of the request this server cannot do, if anything."""
        asked = {
            "command (resuming an interrupt)": self.command,
            "checkpoint": self.checkpoint or self.checkpoint_id,
            "interrupt_before": self.interrupt_before,
            "interrupt_after": self.interrupt_after,
            "webhook": self.webhook,
            "after_seconds": self.after_seconds,
        }
        named = [name for name, value in asked.items() if value]
        return ", ".join(named) or None


class RunOut(BaseModel):
    run_id: str
    thread_id: str
    assistant_id: str
    created_at: str
    updated_at: str
    status: RunStatus
    metadata: Json = Field(default_factory=dict)
    multitask_strategy: Literal["reject", "interrupt", "rollback", "enqueue"] = "enqueue"
