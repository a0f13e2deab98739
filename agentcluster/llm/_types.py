"""The LLM port: typed requests and results, independent of any provider library."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from agentcluster.events import Usage

__all__ = [
    "LLM",
    "ChatMessage",
    "DeltaSink",
    "LlmRequest",
    "LlmResult",
    "ModelRoute",
    "ModelRoutes",
    "ResponseSchema",
    "StaticRoutes",
    "ToolCallSpec",
    "ToolSchema",
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ToolCallSpec(_Model):
    """A tool call the model asked for; ``arguments`` is the raw JSON text the model produced."""

    id: str
    name: str
    arguments: str = "{}"


class ChatMessage(_Model):
    """One message of the conversation in OpenAI chat format."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCallSpec] | None = None
    tool_call_id: str | None = None

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI wire form LiteLLM takes."""
        message: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.tool_calls
            ]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class ToolSchema(_Model):
    """A tool offered to the model: name, description and JSON-schema parameters."""

    name: str
    description: str
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    def to_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


class ResponseSchema(_Model):
    """Structured output: the answer must be JSON matching ``json_schema`` (OpenAI's
    ``response_format`` of type ``json_schema``).

    Attributes:
        name: the schema's name on the wire (e.g. ``agent_output``).
        json_schema: the JSON schema of the answer.
        strict: whether the provider must follow the schema exactly.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    json_schema: dict[str, Any]
    strict: bool = True

    def to_openai(self) -> dict[str, Any]:
        """The ``response_format`` LiteLLM takes."""
        return {
            "type": "json_schema",
            "json_schema": {"name": self.name, "strict": self.strict, "schema": self.json_schema},
        }


class LlmRequest(_Model):
    """One completion request: the model chain (primary then fallbacks) and the conversation."""

    model: str
    fallback_models: list[str] = Field(default_factory=list)
    messages: list[ChatMessage]
    tools: list[ToolSchema] = Field(default_factory=list)
    max_output_tokens: int | None = None
    temperature: float | None = None
    response_schema: ResponseSchema | None = None


class LlmResult(_Model):
    """The assembled answer of one completion (after streaming)."""

    model: str
    content: str | None = None
    tool_calls: list[ToolCallSpec] = Field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    latency_ms: float = 0.0
    attempts: int = 1


@dataclass(frozen=True)
class ModelRoute:
    """Where one model reference goes: LiteLLM's model name, the base URL and the key.

    Attributes:
        reference: the model as agents name it (``local/demo``).
        litellm_model: the model as LiteLLM takes it (``openai/demo``).
        api_base: the provider's base URL (None: LiteLLM's default for the kind).
        api_key: the provider's key in clear (None: none); never in ``repr``.
    """

    reference: str
    litellm_model: str
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)


class ModelRoutes(Protocol):
    """Port: where a model goes (the provider settings, or a fixed route); None lets the LLM
    client's own settings apply."""

    async def route(self, model: str) -> ModelRoute | None:
        """The route of ``model``, or None."""
        ...


class StaticRoutes:
    """:class:`ModelRoutes` over a fixed set of routes, keyed by their reference."""

    def __init__(self, *routes: ModelRoute) -> None:
        self._routes = {route.reference: route for route in routes}

    async def route(self, model: str) -> ModelRoute | None:
        return self._routes.get(model)


DeltaSink = Callable[[str], Awaitable[None]]
"""Receives streamed content fragments as they arrive, in order."""


class LLM(Protocol):
    """Port: a chat-completion model (LiteLLM in production, the fake LLM server in tests)."""

    async def complete(self, request: LlmRequest, on_delta: DeltaSink | None = None) -> LlmResult:
        """One completion; streamed, feeding content fragments to ``on_delta``, when one is given
        (without, the answer may be asked for whole). Returns the result.

        Raises:
            InfrastructureError: every model in the chain failed (retryable data on the error).
            TerminalFailure: the request itself is invalid for the provider (no retry helps).
        """
        ...
