"""Request and response bodies of the OpenAI-compatible API (``/v1/models``,
``/v1/chat/completions``, ``/v1/responses``), in the shapes the ``openai`` SDK parses.

Only what agentcluster honours is declared strictly; sampling parameters a client may send
(``temperature``, ``top_p``, ...) are accepted and ignored, because the agent's profile decides
its model and settings. Content is text only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentcluster.api import MAX_CONTENT_CHARS

__all__ = [
    "ChatChoice",
    "ChatChunkChoice",
    "ChatChunkDelta",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionIn",
    "ChatMessageIn",
    "ChatMessageOut",
    "CompletionUsage",
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "InputMessage",
    "ItemEvent",
    "McpApprovalRequestItem",
    "McpApprovalResponseIn",
    "ModelList",
    "ModelOut",
    "OpenAIError",
    "OpenAIErrorBody",
    "OutputItem",
    "OutputMessage",
    "OutputText",
    "PartEvent",
    "ResponseCreateIn",
    "ResponseError",
    "ResponseEvent",
    "ResponseObject",
    "ResponseStatus",
    "ResponseUsage",
    "StreamOptions",
    "TextDeltaEvent",
    "TextDoneEvent",
    "TextPart",
]

AGENT_NAME = Field(min_length=1, max_length=200, description="the agent's name (GET /v1/models)")


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors -----------------------------------------------------------------------------------


class OpenAIError(_Out):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, ...")
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(_Out):
    """Every error of the OpenAI-compatible routes (never problem+json there)."""

    error: OpenAIError


# -- models -----------------------------------------------------------------------------------


class ModelOut(_Out):
    id: str = Field(description="the agent's name; use it as ``model``")
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "agentcluster"


class ModelList(_Out):
    object: Literal["list"] = "list"
    data: list[ModelOut]


# -- chat completions -------------------------------------------------------------------------


class TextPart(_In):
    type: Literal["text", "input_text", "output_text"]
    text: str = Field(max_length=MAX_CONTENT_CHARS)


class ChatMessageIn(_In):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None


class StreamOptions(_In):
    include_usage: bool = False


class ChatCompletionIn(_In):
    model: Annotated[str, AGENT_NAME]
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=1000)
    stream: bool = False
    stream_options: StreamOptions | None = None


class CompletionUsage(_Out):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatMessageOut(_Out):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None


class ChatChoice(_Out):
    index: int = 0
    message: ChatMessageOut
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class ChatCompletion(_Out):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage


class ChatChunkDelta(_Out):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(_Out):
    index: int = 0
    delta: ChatChunkDelta
    finish_reason: Literal["stop"] | None = None
    logprobs: None = None


class ChatCompletionChunk(_Out):
    """One ``data:`` line of a streamed chat completion (then ``data: [DONE]``)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: CompletionUsage | None = None


# -- responses --------------------------------------------------------------------------------


class InputMessage(_In):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[TextPart]


class McpApprovalResponseIn(_In):
    """A decision on a tool call that waits for a person (an ``mcp_approval_request`` of the
    response named by ``previous_response_id``)."""

    type: Literal["mcp_approval_response"]
    approval_request_id: str = Field(
        min_length=1, max_length=200, description="the request's id (the tool call's id)"
    )
    approve: bool
    reason: str | None = Field(
        default=None,
        max_length=MAX_CONTENT_CHARS,
        description="recorded with the decision; on a reject, what the agent reads as the error",
    )
    id: str | None = Field(default=None, max_length=200)


class ResponseCreateIn(_In):
    model: Annotated[str, AGENT_NAME]
    input: str | list[InputMessage | McpApprovalResponseIn] = Field(
        description="text, or messages (text only; the last one is the user's), or only "
        "mcp_approval_response items deciding the waiting tool calls of previous_response_id "
        "(the response then continues that turn)"
    )
    instructions: str | None = Field(default=None, max_length=MAX_CONTENT_CHARS)
    previous_response_id: str | None = Field(
        default=None, max_length=200, description="continue that response's session"
    )
    store: bool = Field(
        default=True, description="false: the response cannot be retrieved nor continued"
    )
    stream: bool = False
    background: bool = Field(default=False, description="answer at once; poll or cancel it")
    metadata: dict[str, str] | None = Field(default=None, max_length=16)


ResponseStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]


class OutputText(_Out):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)


class OutputMessage(_Out):
    type: Literal["message"] = "message"
    id: str
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    content: list[OutputText]


class FunctionCallItem(_Out):
    """A tool call the agent made (it ran server side)."""

    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str = Field(description="the arguments as JSON text")
    status: Literal["in_progress", "completed", "incomplete"] = "completed"


class FunctionCallOutputItem(_Out):
    """A server-side tool call's result (JSON text) or error."""

    type: Literal["function_call_output"] = "function_call_output"
    id: str
    call_id: str
    output: str
    status: Literal["in_progress", "completed", "incomplete"] = "completed"


class McpApprovalRequestItem(_Out):
    """A tool call that waits for a person (the policy asked): answer it with an
    ``mcp_approval_response`` input item in a request continuing this response."""

    type: Literal["mcp_approval_request"] = "mcp_approval_request"
    id: str = Field(description="the tool call's id")
    name: str
    arguments: str = Field(description="the arguments as JSON text")
    server_label: Literal["agentcluster"] = "agentcluster"


OutputItem = Annotated[
    OutputMessage | FunctionCallItem | FunctionCallOutputItem | McpApprovalRequestItem,
    Field(discriminator="type"),
]


class InputTokensDetails(_Out):
    cached_tokens: int = 0


class OutputTokensDetails(_Out):
    reasoning_tokens: int = 0


class ResponseUsage(_Out):
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int = 0


class ResponseError(_Out):
    code: str
    message: str


class ResponseObject(_Out):
    """A response: one turn of an agent session (``id`` names the turn)."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    model: str
    output: list[OutputItem]
    usage: ResponseUsage | None = None
    error: ResponseError | None = None
    incomplete_details: None = None
    instructions: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    previous_response_id: str | None = None
    store: bool = True
    background: bool = False
    parallel_tool_calls: bool = False
    tool_choice: Literal["auto"] = "auto"
    tools: list[Any] = Field(default_factory=list)


class ResponseEvent(_Out):
    """``response.created``, ``response.in_progress``, ``response.completed`` and
    ``response.failed``: the response as it stands."""

    type: str
    sequence_number: int
    response: ResponseObject


class ItemEvent(_Out):
    """``response.output_item.added`` and ``response.output_item.done``."""

    type: str
    sequence_number: int
    output_index: int
    item: OutputItem


class PartEvent(_Out):
    """``response.content_part.added`` and ``response.content_part.done``."""

    type: str
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int = 0
    part: OutputText


class TextDeltaEvent(_Out):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int = 0
    delta: str
    logprobs: list[Any] = Field(default_factory=list)


class TextDoneEvent(_Out):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int = 0
    text: str
    logprobs: list[Any] = Field(default_factory=list)
