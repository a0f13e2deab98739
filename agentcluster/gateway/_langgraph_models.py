"""Request and response bodies of the LangGraph-compatible API (what ``langgraph-sdk`` 0.4 sends
and reads). Requests refuse unknown fields; fields the SDK sends that mean nothing here are
accepted and ignored (``config``, ``context``, ``stream_subgraphs``, ``durability``, ...), those
asking for what agentcluster does not do (interrupt_before/after, webhooks, checkpoints, delays,
supersteps, searching by values) are declared as null (or empty) only, so any other value is a
422 (the SDK leaves out what its caller did not set). ``multitask_strategy`` is the native
API's (enqueue, reject, interrupt, rollback). Integers and booleans are strict: ``true`` is no
``limit``. A run's ``command`` resumes an interrupt (tool calls waiting for a person)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, model_validator

from agentcluster.api import MAX_CONTENT_CHARS
from agentcluster.gateway._langgraph_messages import RunStatus, ThreadStatus
from agentcluster.gateway._langgraph_stream import StreamMode

__all__ = [
    "AssistantOut",
    "AssistantSearchIn",
    "CommandIn",
    "GraphSchemaOut",
    "HistoryIn",
    "InfoOut",
    "LangGraphError",
    "RunCreateIn",
    "RunInput",
    "RunOut",
    "ThreadCreateIn",
    "ThreadOut",
    "ThreadSearchIn",
    "ThreadStateOut",
]

Json = dict[str, Any]
Empty = Annotated[Json, Field(max_length=0)]
"""An object with no property: what a field this server does not do accepts beside null."""


def _json_integer(value: Any) -> Any:
    """What JSON Schema calls an integer: a number with no fraction (``10.0`` too), no boolean
    and no numeric string (pydantic's lax ``int`` takes ``true`` and ``"10"``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("Input should be a valid integer")
    return value


Limit = Annotated[int, Field(ge=1, le=1000), BeforeValidator(_json_integer)]
Offset = Annotated[int, Field(ge=0, le=2**31 - 1), BeforeValidator(_json_integer)]
UNSUPPORTED = "not supported by this server: null (or absent) only"


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
    limit: Limit = 10
    offset: Offset = 0
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
    supersteps: Annotated[list[Json], Field(max_length=0)] | None = Field(
        default=None, description=UNSUPPORTED + " (or empty)"
    )
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
    values: Empty | None = Field(default=None, description=UNSUPPORTED + " (or empty)")
    ids: list[str] | None = Field(default=None, max_length=1000)
    status: ThreadStatus | None = None
    limit: Limit = 10
    offset: Offset = 0
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
    limit: Limit = 10
    before: Json | str | None = None
    metadata: Json | None = None
    checkpoint: Json | None = None
    select: list[str] | None = None


Role = Literal["human", "user", "ai", "assistant", "system", "tool"]
Text = Annotated[str, Field(min_length=1, max_length=MAX_CONTENT_CHARS)]


class TextPart(BaseModel):
    """A text part of a message's content (other keys are kept and ignored)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text"] = "text"
    text: Text


Content = Text | Annotated[list[Text | TextPart], Field(min_length=1)]


class RoleMessage(BaseModel):
    """A message as OpenAI names its author (other keys are kept and ignored)."""

    model_config = ConfigDict(extra="allow")

    role: Role
    content: Content


class TypedMessage(BaseModel):
    """A message as LangChain names its kind (other keys are kept and ignored)."""

    model_config = ConfigDict(extra="allow")

    type: Role
    content: Content


InputMessage = Text | tuple[Role, Text] | RoleMessage | TypedMessage
"""A human message's text, a ``(role, text)`` pair, or an object with ``role`` or ``type``."""


class RunInput(BaseModel):
    """A run's input: the messages it sends (other keys of the graph's state are ignored)."""

    model_config = ConfigDict(extra="allow")

    messages: Annotated[list[InputMessage], Field(min_length=1)] | InputMessage = Field(
        description="the last message is the run's (whatever its role); earlier ones go before "
        "it as a transcript, the oldest left out past the native API's content length"
    )


class CommandIn(_In):
    """``Command(resume=...)``: the decisions on the thread's interrupts (tool calls that wait
    for a person). ``resume`` is one decision for the one waiting call (``"approve"``,
    ``"reject"``, or ``{"decision" | "type": "approve" | "edit" | "reject", "arguments"?,
    "message"?}``), a map of interrupt id (the tool call's id) to decision, or
    ``{"decisions": [...]}`` in the order of the interrupts."""

    resume: Any = Field(
        description="a decision, or interrupt id -> decision",
        json_schema_extra={"not": {"type": "null"}},
    )
    goto: None = Field(default=None, description=UNSUPPORTED)
    update: None = Field(default=None, description=UNSUPPORTED)

    @model_validator(mode="after")
    def _resume_given(self) -> CommandIn:
        if self.resume is None:
            raise ValueError("command.resume is required: the decisions on the interrupts")
        return self


_NOT_NULL: dict[str, Any] = {"not": {"type": "null"}}
_INPUT_OR_COMMAND: dict[str, Any] = {
    "oneOf": [
        {"required": ["input"], "properties": {"input": _NOT_NULL, "command": {"type": "null"}}},
        {"required": ["command"], "properties": {"command": _NOT_NULL, "input": {"type": "null"}}},
    ]
}
"""A run's body has ``input`` or ``command`` (not null), not both."""


class RunCreateIn(_In):
    """A run: one turn of the thread's session with the input's last message, or (``command``)
    the thread's interrupted run resumed with decisions."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_INPUT_OR_COMMAND)

    assistant_id: str = Field(min_length=1, max_length=200)
    input: RunInput | None = Field(
        default=None, description="required, unless command resumes the interrupted run"
    )
    command: CommandIn | None = Field(
        default=None, description="resume the thread's interrupted run (then no input)"
    )
    stream_mode: StreamMode | list[StreamMode] = "values"
    stream_subgraphs: StrictBool = False
    stream_resumable: StrictBool = False
    metadata: Json | None = None
    config: Json | None = None
    context: Json | None = None
    checkpoint: None = Field(default=None, description=UNSUPPORTED)
    checkpoint_id: None = Field(default=None, description=UNSUPPORTED)
    checkpoint_during: StrictBool | None = None
    interrupt_before: None = Field(default=None, description=UNSUPPORTED)
    interrupt_after: None = Field(default=None, description=UNSUPPORTED)
    feedback_keys: list[str] | None = None
    webhook: None = Field(default=None, description=UNSUPPORTED)
    multitask_strategy: Literal["reject", "interrupt", "rollback", "enqueue"] = "enqueue"
    if_not_exists: Literal["create", "reject"] = "reject"
    on_disconnect: Literal["cancel", "continue"] = "continue"
    on_completion: Literal["delete", "keep"] = "keep"
    after_seconds: None = Field(default=None, description=UNSUPPORTED)
    durability: Literal["sync", "async", "exit"] | None = None
    strict_resume: StrictBool | None = None
    langsmith_tracer: Json | None = None

    @model_validator(mode="after")
    def _input_or_command(self) -> RunCreateIn:
        if (self.input is None) == (self.command is None):
            raise ValueError("a run takes input, or command to resume an interrupt (not both)")
        return self

    def modes(self) -> frozenset[str]:
        modes = [self.stream_mode] if isinstance(self.stream_mode, str) else self.stream_mode
        return frozenset(modes or ["values"])


class RunOut(BaseModel):
    run_id: str
    thread_id: str
    assistant_id: str
    created_at: str
    updated_at: str
    status: RunStatus
    metadata: Json = Field(default_factory=dict)
    multitask_strategy: Literal["reject", "interrupt", "rollback", "enqueue"] = "enqueue"
