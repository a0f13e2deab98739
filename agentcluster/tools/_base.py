"""The tools seam: the typed :class:`Tool` protocol and the two ports every call goes through.

A call is first decided by a :class:`PolicyEngine` (in production the Rego policy of
``agentcluster.policy``: an OPA server or the same policy compiled to Wasm in-process), then run by
a :class:`ToolExecutor`. The agent loop only sees these ports; where tools actually run is the
executor's business: pooled tool and browser actors in the cluster (``actors/executor.py``), or
the caller's event loop (``InProcessToolExecutor`` in ``_registry.py``: inside each tool actor,
and in unit tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from agentcluster.llm import ToolSchema

__all__ = [
    "BatchPolicyEngine",
    "PolicyDecision",
    "PolicyEngine",
    "Tool",
    "ToolExecutor",
    "ToolInvocation",
    "ToolOutcome",
    "decide_tools",
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ToolInvocation(_Model):
    """One tool call in context: who asks, for what, with which (parsed) arguments."""

    tenant_id: str
    session_id: str
    turn_id: str
    agent: str
    tool_call_id: str
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolOutcome(_Model):
    """What a tool call produced; ``error`` is told to the model when ``ok`` is False."""

    ok: bool
    result: Any = None
    error: str | None = None
    latency_ms: float = 0.0


class PolicyDecision(_Model):
    """A policy's answer. ``failed`` marks a denial because the engine could not decide (down,
    timed out, malformed answer): fail closed, but callers may report it as an outage."""

    allowed: bool
    reason: str = ""
    engine: str = ""
    failed: bool = False
    ask: bool = False
    """An allowed tool call a person decides first (the tenant's ``approvals`` rules)."""


class Tool(Protocol):
    """A tool: its schema and how to run it. Raise ToolError for failures the model should see."""

    @property
    def schema(self) -> ToolSchema: ...

    async def run(self, arguments: dict[str, Any], invocation: ToolInvocation) -> Any: ...


class ToolExecutor(Protocol):
    """Port: runs tool calls (pooled tool and browser actors in the cluster, or in-process)."""

    def schemas(self, names: list[str]) -> list[ToolSchema]:
        """The schemas of the named tools (unknown names raise ConfigError)."""
        ...

    async def execute(self, invocation: ToolInvocation) -> ToolOutcome:
        """Run one call; tool failures come back as ``ok=False`` outcomes, never raise."""
        ...

    async def end_turn(self, session_id: str) -> None:
        """The session's turn ended: give back what it held for the turn (e.g. its browser)."""
        ...


class PolicyEngine(Protocol):
    """Port: decides whether a tool call may run (the Rego policy engines of
    ``agentcluster.policy``; the fixed adapters of ``_policy.py`` in tests)."""

    async def decide_tool(self, invocation: ToolInvocation) -> PolicyDecision: ...


@runtime_checkable
class BatchPolicyEngine(PolicyEngine, Protocol):
    """A policy engine that decides several calls at once (the calls of one LLM step, in one
    round trip to an OPA server); each decision is the one :meth:`decide_tool` would give."""

    async def decide_tools(self, invocations: Sequence[ToolInvocation]) -> list[PolicyDecision]:
        """One decision per invocation, in order; never fewer (a missing one is a denial)."""
        ...


async def decide_tools(
    engine: PolicyEngine, invocations: Sequence[ToolInvocation]
) -> list[PolicyDecision]:
    """The decisions on ``invocations`` in order: in one batch where ``engine`` can, else one at
    a time."""
    if isinstance(engine, BatchPolicyEngine):
        return await engine.decide_tools(invocations)
    return [await engine.decide_tool(invocation) for invocation in invocations]
