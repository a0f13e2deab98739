"""Test support that ships with the package, so users can test their own agents offline.

:mod:`agentcluster.testing.fake_llm` is a scripted OpenAI-compatible server: point LiteLLM (or any
OpenAI client) at :attr:`FakeLLM.base_url` and the real network path runs.
"""

# Imported from the private modules, not from fake_llm, so that `python -m
# agentcluster.testing.fake_llm` does not find its own module already imported.
from agentcluster.testing._script import (
    Action,
    BrokenStream,
    Failure,
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
from agentcluster.testing._server import FakeLLM

__all__ = [
    "Action",
    "BrokenStream",
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
