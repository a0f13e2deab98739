"""The LLM port, its LiteLLM adapter, and token counting.

The port types and the token helpers import quickly. :class:`LiteLLMClient` and
:class:`BreakerRegistry` are loaded on first access, because importing LiteLLM takes seconds and
~200 MB: code that only needs the port (the agent loop, its unit tests with a fake ``LLM``) should
not pay for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from agentcluster.llm._tokens import (
    CL100K_BASE,
    O200K_BASE,
    count_message,
    count_messages,
    count_text,
    count_tools,
    encoding_name_for,
    trim_history,
    trim_to_window,
)
from agentcluster.llm._types import (
    LLM,
    ChatMessage,
    DeltaSink,
    LlmRequest,
    LlmResult,
    ModelRoute,
    ModelRoutes,
    ResponseSchema,
    StaticRoutes,
    ToolCallSpec,
    ToolSchema,
)

if TYPE_CHECKING:
    from agentcluster.llm._litellm import RETRY_AFTER_CAP_S, BreakerRegistry, LiteLLMClient, Sleep

__all__ = [
    "CL100K_BASE",
    "LLM",
    "O200K_BASE",
    "RETRY_AFTER_CAP_S",
    "BreakerRegistry",
    "ChatMessage",
    "DeltaSink",
    "LiteLLMClient",
    "LlmRequest",
    "LlmResult",
    "ModelRoute",
    "ModelRoutes",
    "ResponseSchema",
    "Sleep",
    "StaticRoutes",
    "ToolCallSpec",
    "ToolSchema",
    "count_message",
    "count_messages",
    "count_text",
    "count_tools",
    "encoding_name_for",
    "trim_history",
    "trim_to_window",
]

_LAZY = frozenset({"RETRY_AFTER_CAP_S", "BreakerRegistry", "LiteLLMClient", "Sleep"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("agentcluster.llm._litellm"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
