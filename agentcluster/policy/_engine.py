"""What both policy engines share: the typed requests built on one generic ``decide``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from agentcluster.policy._inputs import (
    ApiAction,
    NetworkCategory,
    api_input,
    decision_from_result,
    network_input,
    tool_input,
)
from agentcluster.tools import PolicyDecision, ToolInvocation

__all__ = ["RegoPolicyEngine"]


class RegoPolicyEngine(ABC):
    """A :class:`~agentcluster.tools.PolicyEngine` evaluating ``data.agentcluster.authz.decision``.

    Subclasses implement :meth:`decide`; it never raises for engine failures: an engine that
    cannot answer denies, with a reason that names it (fail closed).
    """

    engine: str
    _source: str
    """The engine as a denial's reason names it, e.g. ``"OPA at http://..."``."""

    @abstractmethod
    async def decide(self, policy_input: Mapping[str, Any]) -> PolicyDecision:
        """Evaluate the policy for one input document (see ``policies/README.md``)."""

    @abstractmethod
    async def _evaluate_batch(self, batch: dict[str, Any]) -> object:
        """The value of ``data.agentcluster.authz.decisions`` for ``batch`` (None when the
        policy does not define it), or a denial naming why the engine gave none."""

    @abstractmethod
    def _failure(self, problem: str) -> PolicyDecision:
        """A denial saying the engine could not decide (``problem``)."""

    async def decide_many(self, policy_inputs: Sequence[Mapping[str, Any]]) -> list[PolicyDecision]:
        """Evaluate the policy for each input, in order: two or more in one evaluation of
        ``data.agentcluster.authz.decisions`` (one at a time where the policy predates it).
        Every input is denied when the batch cannot be evaluated or its answer does not have one
        decision per input."""
        count = len(policy_inputs)
        if count < 2:
            return [await self.decide(policy_input) for policy_input in policy_inputs]
        result = await self._evaluate_batch({"batch": [dict(i) for i in policy_inputs]})
        if isinstance(result, PolicyDecision):
            return [result] * count
        if result is None:  # a policy without `decisions` (an older bundle): one at a time
            return [await self.decide(policy_input) for policy_input in policy_inputs]
        answers = result if isinstance(result, list) else []
        if len(answers) != count:
            short = self._failure(
                f"answered {len(answers)} decision(s) for a batch of {count} "
                "(is the agentcluster.authz policy with `decisions` loaded?)"
            )
            return [short] * count
        return [
            decision_from_result(answer, engine=self.engine, source=self._source)
            for answer in answers
        ]

    async def decide_tool(self, invocation: ToolInvocation) -> PolicyDecision:
        """Decide one tool call (the PolicyEngine port)."""
        return await self.decide(tool_input(invocation))

    async def decide_tools(self, invocations: Sequence[ToolInvocation]) -> list[PolicyDecision]:
        """Decide the tool calls of one step (the BatchPolicyEngine port)."""
        return await self.decide_many([tool_input(invocation) for invocation in invocations])

    async def decide_network(
        self,
        *,
        tenant_id: str,
        agent: str,
        scheme: str,
        host: str,
        ip: str,
        port: int,
        category: NetworkCategory,
        tool: str = "http_fetch",
    ) -> PolicyDecision:
        """Decide one network target of a tool, after DNS resolution (every redirect hop too).

        Args:
            host: the name as written in the URL; ``ip`` the address it resolved to.
            category: the address's class, e.g. from :func:`classify_address`.
        """
        return await self.decide(
            network_input(
                tenant_id=tenant_id,
                agent=agent,
                scheme=scheme,
                host=host,
                ip=ip,
                port=port,
                category=category,
                tool=tool,
            )
        )

    async def decide_action(
        self,
        tenant_id: str,
        action: ApiAction,
        *,
        agent: str | None = None,
        admin: bool = False,
        roles: Sequence[str] = (),
    ) -> PolicyDecision:
        """Decide one API action of a tenant (``agent`` names the agent involved, if any;
        ``roles`` are the calling key's)."""
        return await self.decide(
            api_input(tenant_id, action, agent=agent, admin=admin, roles=roles)
        )

    @abstractmethod
    async def aclose(self) -> None:
        """Release the engine's resources (connections, Wasm instances)."""
