"""Test support that ships with the package, so users can test their own agents offline.

:mod:`agentcluster.testing.fake_llm` is a scripted OpenAI-compatible server: point LiteLLM (or any
OpenAI client) at :attr:`FakeLLM.base_url` and the real network path runs.
"""

from agentcluster.testing.fake_llm import (
    Action,
    Failure,
    FakeLLM,
    FinishReason,
    RecordedRequest,
    Reply,
    Rule,
    Script,
    Timeout,
    Timing,
    ToolCall,
    demo_reply,
    example_from_schema,
)

__all__ = [
    "Action",
    "Failure",
    "FakeLLM",
    "FinishReason",
    "RecordedRequest",
    "Reply",
    "Rule",
    "Script",
    "Timeout",
    "Timing",
    "ToolCall",
    "demo_reply",
    "example_from_schema",
]
