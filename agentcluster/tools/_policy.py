"""Fixed :class:`PolicyEngine` adapters for tests: allow everything, or deny a set of tools.

The cluster never uses them: its engine is always the Rego policy (``agentcluster.policy``,
an OPA server or the in-process Wasm build), which fails closed.
"""

from __future__ import annotations

from collections.abc import Mapping

from agentcluster.tools._base import PolicyDecision, ToolInvocation

__all__ = ["AllowAllPolicy", "StaticPolicy"]


class AllowAllPolicy:
    """Allows every call (agent loop tests that are not about policy)."""

    _decision = PolicyDecision(allowed=True, reason="no policy configured", engine="allow-all")

    async def decide_tool(self, invocation: ToolInvocation) -> PolicyDecision:
        """Allow the call."""
        return self._decision


class StaticPolicy:
    """Denies the listed tools, allows the rest (tests of how a denial reaches the model).

    Args:
        deny: tool name -> the reason given when a call to it is denied.
    """

    def __init__(self, deny: Mapping[str, str]) -> None:
        # A copy, so later edits to the caller's mapping do not change decisions.
        self._deny = dict(deny)

    async def decide_tool(self, invocation: ToolInvocation) -> PolicyDecision:
        """Deny the call if its tool is listed, with the configured reason; else allow it."""
        reason = self._deny.get(invocation.tool)
        if reason is not None:
            return PolicyDecision(allowed=False, reason=reason, engine="static")
        return PolicyDecision(allowed=True, reason="not in the deny list", engine="static")
