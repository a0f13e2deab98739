"""The agent loop: plain Python, no Ray. A turn alternates LLM steps and tool calls until the model
answers without tools or the step budget runs out.

Every step is recorded through a :class:`TurnJournal` (durable, fenced store writes plus the live
feed) *before* the next step begins, so a crash loses at most the step in flight. The loop appends
what it does to the ``history`` list it is given, which the caller keeps as the session's memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from agentcluster import tracing
from agentcluster.agent._profiles import AgentProfile
from agentcluster.domain import Approval
from agentcluster.errors import AgentClusterError, InfrastructureError, StaleEpochError
from agentcluster.events import Usage
from agentcluster.llm import (
    LLM,
    ChatMessage,
    LlmRequest,
    LlmResult,
    ToolCallSpec,
    ToolSchema,
)
from agentcluster.tools import (
    PolicyDecision,
    PolicyEngine,
    ToolExecutor,
    ToolInvocation,
    ToolOutcome,
    decide_tools,
)

__all__ = [
    "TURN_HANDOVER",
    "AgentLoop",
    "Budget",
    "BudgetHold",
    "Trimmer",
    "TurnContext",
    "TurnJournal",
    "TurnNotOpen",
    "TurnResult",
    "add_usage",
    "dangling_calls",
]

Trimmer = Callable[[list[ChatMessage], int, int, list[ToolSchema]], list[ChatMessage]]

TURN_HANDOVER = "agentcluster: the host is stopping; the turn is handed over"
"""The message a turn's task is cancelled with when its host stops (drain, shutdown): the turn
is not recorded as cancelled but stays open, and the session's next host resumes it."""
"""(messages, context_window, reserved_output_tokens, tools) -> the messages that fit."""

log = logging.getLogger(__name__)

INTERRUPTED = "not executed: the host running this turn stopped before the tool finished"


class TurnContext(BaseModel):
    """Who and what a turn is."""

    model_config = ConfigDict(frozen=True)

    tenant_id: str
    session_id: str
    turn_id: str
    agent: str
    attempt: int = 1
    resumed: bool = False
    """It goes on after its tool calls were decided by a person."""


class TurnResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: Literal["completed", "failed", "cancelled", "awaiting_approval"]
    content: str = ""
    error: str | None = None
    usage: Usage = Usage()
    steps: int = 0


class TurnNotOpen(Exception):
    """Raised by :meth:`TurnJournal.turn_started`: the turn ended before it could start (it was
    cancelled or superseded meanwhile); nothing was written and the turn must not run."""


class TurnJournal(Protocol):
    """Port: durable record of a turn's steps (each call commits before returning)."""

    async def turn_started(self, turn_id: str, attempt: int, *, resumed: bool = False) -> None:
        """Record the turn running (a new attempt, or the same one ``resumed`` after its
        approvals).

        Raises:
            TurnNotOpen: it ended meanwhile (cancelled, superseded).
        """

    def watched(self) -> bool:
        """Whether anyone watches the turn's live output now (an LLM call streams its deltas
        only then)."""
        return True

    async def delta(self, turn_id: str, step: int, text: str) -> None: ...

    async def llm_completed(self, turn_id: str, step: int, result: LlmResult) -> None: ...

    async def tool_requested(
        self, turn_id: str, call: ToolCallSpec, arguments: dict[str, Any]
    ) -> None: ...

    async def tool_decided(
        self, turn_id: str, call: ToolCallSpec, decision: PolicyDecision
    ) -> None: ...

    async def tool_completed(
        self, turn_id: str, call: ToolCallSpec, outcome: ToolOutcome, content: str
    ) -> None: ...

    async def approval_requested(
        self,
        turn_id: str,
        call: ToolCallSpec,
        arguments: dict[str, Any],
        reason: str,
        timeout_s: float,
    ) -> None:
        """The policy sends the call to a person: it waits, unrun, for ``timeout_s`` at most."""

    async def turn_paused(self, turn_id: str, tool_call_ids: list[str], usage: Usage) -> None:
        """The step's calls ``tool_call_ids`` wait for a person: the turn pauses (or, when all
        were decided meanwhile, is queued to resume at once)."""

    async def turn_completed(self, turn_id: str, content: str, usage: Usage) -> None: ...

    async def turn_answered(self, turn_id: str, step: int, result: LlmResult, usage: Usage) -> None:
        """The step's answer ends the turn (no tool calls): ``llm_completed`` then
        ``turn_completed``, which a journal may record as one commit."""
        await self.llm_completed(turn_id, step, result)
        await self.turn_completed(turn_id, result.content or "", usage)

    async def turn_failed(
        self, turn_id: str, error_type: str, error: str, retryable: bool, usage: Usage
    ) -> None: ...

    async def turn_cancelled(self, turn_id: str, reason: str, usage: Usage) -> None: ...


@dataclass(frozen=True)
class BudgetHold:
    """What a :class:`Budget` set aside for one LLM call: the tenant, the budget period it counts
    in, and the tokens reserved (the call's estimated prompt)."""

    tenant_id: str
    period: str
    tokens: int = 0


class Budget(Protocol):
    """Port: the tenant's LLM budget, asked before each LLM call and told its usage after it."""

    async def reserve(self, tenant_id: str, request: LlmRequest) -> BudgetHold:
        """Set aside what the call needs, or raise.

        Raises:
            BudgetExceeded: the budget does not allow the call (the turn fails without it).
            InfrastructureError: the budget cannot be checked (the turn fails: no call is made
                unchecked).
        """
        ...

    async def settle(self, hold: BudgetHold, usage: Usage) -> None:
        """Count the call's real usage in place of what ``hold`` reserved."""
        ...


@dataclass
class _Tally:
    """Usage so far in a turn (kept outside the steps so failures can still report it)."""

    usage: Usage = field(default_factory=Usage)


def add_usage(total: Usage, more: Usage) -> Usage:
    return Usage(
        prompt_tokens=total.prompt_tokens + more.prompt_tokens,
        completion_tokens=total.completion_tokens + more.completion_tokens,
        total_tokens=total.total_tokens + more.total_tokens,
        cost_usd=total.cost_usd + more.cost_usd,
    )


def _parse_arguments(call: ToolCallSpec) -> dict[str, Any] | str:
    """The call's arguments as a dict, or an error message for the model."""
    try:
        parsed = json.loads(call.arguments or "{}")
    except json.JSONDecodeError as exc:
        return f"arguments are not valid JSON: {exc.msg} at position {exc.pos}"
    if not isinstance(parsed, dict):
        return "arguments must be a JSON object"
    return parsed


def _render(outcome: ToolOutcome) -> str:
    """What the model reads as the tool's result."""
    if outcome.ok:
        result = outcome.result
        return result if isinstance(result, str) else json.dumps(result, default=str)
    return json.dumps({"error": outcome.error or "tool failed"})


def dangling_calls(history: list[ChatMessage]) -> list[ToolCallSpec]:
    """Tool calls of the last assistant message that have no tool result yet (cut by a crash)."""
    answered: set[str] = set()
    for message in reversed(history):
        if message.role == "tool" and message.tool_call_id:
            answered.add(message.tool_call_id)
        elif message.role == "assistant":
            return [call for call in message.tool_calls or [] if call.id not in answered]
        else:
            return []
    return []


class AgentLoop:
    """Runs turns for one agent profile against the LLM, policy and tool ports."""

    def __init__(
        self,
        profile: AgentProfile,
        llm: LLM,
        tools: ToolExecutor,
        policy: PolicyEngine,
        trim: Trimmer,
        budget: Budget | None = None,
    ) -> None:
        self.profile = profile
        self._llm = llm
        self._tools = tools
        self._policy = policy
        self._trim = trim
        self._budget = budget
        self._schemas = tools.schemas(list(profile.tools))

    async def run_turn(
        self,
        context: TurnContext,
        history: list[ChatMessage],
        journal: TurnJournal,
        *,
        prior_steps: int = 0,
        approvals: dict[str, Approval] | None = None,
        prior_usage: Usage | None = None,
    ) -> TurnResult:
        """Run (or resume) one turn; ``history`` must already end with the turn's user message.

        A resumed turn's unanswered calls (the last step's) run as ``approvals`` decided them,
        wait again while undecided, or are reported interrupted (cut by a crash); the usage so
        far counts from ``prior_usage``. A turn whose calls wait for a person returns
        ``awaiting_approval``: it is paused in the store and resumed by a later call.

        Raises:
            StaleEpochError: this host lost the session; nothing more may be written.
            asyncio.CancelledError: after recording ``turn.cancelled``.
        """
        tally = _Tally(usage=prior_usage or Usage())
        await journal.turn_started(context.turn_id, context.attempt, resumed=context.resumed)
        try:
            waiting = await self._close_dangling(context, history, journal, approvals or {})
            if waiting:
                return await self._pause(context, waiting, journal, tally, prior_steps)
            return await self._steps(context, history, journal, prior_steps, tally)
        except StaleEpochError:
            raise
        except asyncio.CancelledError as exc:
            if TURN_HANDOVER not in exc.args:
                await asyncio.shield(
                    journal.turn_cancelled(context.turn_id, "cancelled by request", tally.usage)
                )
            raise
        except AgentClusterError as exc:
            retryable = isinstance(exc, InfrastructureError) and exc.retryable
            await journal.turn_failed(
                context.turn_id, type(exc).__name__, exc.message, retryable, tally.usage
            )
            return TurnResult(status="failed", error=exc.message, usage=tally.usage)
        finally:
            await self._end_turn(context)

    async def _end_turn(self, context: TurnContext) -> None:
        # Best effort: what the turn held (a browser lease) also idles out by itself.
        try:
            await asyncio.shield(self._tools.end_turn(context.session_id))
        except Exception:
            log.warning("session %s: releasing the turn's tools failed", context.session_id)

    async def _close_dangling(
        self,
        context: TurnContext,
        history: list[ChatMessage],
        journal: TurnJournal,
        approvals: dict[str, Approval],
    ) -> list[str]:
        """Answer the last step's unanswered calls; returns those still waiting for a person."""
        waiting: list[str] = []
        for call in dangling_calls(history):
            approval = approvals.get(call.id)
            if approval is not None and approval.status == "pending":
                waiting.append(call.id)
            elif approval is not None:
                await self._tool_call(context, call, history, journal, approval)
            else:
                # Tools may have side effects: a call cut by a crash is reported, not re-run.
                outcome = ToolOutcome(ok=False, error=INTERRUPTED)
                content = _render(outcome)
                history.append(ChatMessage(role="tool", tool_call_id=call.id, content=content))
                await journal.tool_completed(context.turn_id, call, outcome, content)
        return waiting

    async def _pause(
        self,
        context: TurnContext,
        waiting: list[str],
        journal: TurnJournal,
        tally: _Tally,
        step: int,
    ) -> TurnResult:
        await journal.turn_paused(context.turn_id, waiting, tally.usage)
        return TurnResult(status="awaiting_approval", usage=tally.usage, steps=step)

    async def _steps(
        self,
        context: TurnContext,
        history: list[ChatMessage],
        journal: TurnJournal,
        prior_steps: int,
        tally: _Tally,
    ) -> TurnResult:
        for step in range(prior_steps + 1, self.profile.max_steps + 1):
            result = await self._llm_step(context, history, journal, step)
            tally.usage = add_usage(tally.usage, result.usage)
            if not result.tool_calls:
                # The step and the turn's end in one commit.
                await journal.turn_answered(context.turn_id, step, result, tally.usage)
                content = result.content or ""
                return TurnResult(
                    status="completed", content=content, usage=tally.usage, steps=step
                )
            await journal.llm_completed(context.turn_id, step, result)
            decisions = await self._decide_step(context, result.tool_calls)
            waiting = [
                call.id
                for call, decided in zip(result.tool_calls, decisions, strict=True)
                if not await self._tool_call(context, call, history, journal, decided=decided)
            ]
            if waiting:
                return await self._pause(context, waiting, journal, tally, step)
        error = f"the agent used all {self.profile.max_steps} steps without a final answer"
        await journal.turn_failed(context.turn_id, "MaxStepsExceeded", error, False, tally.usage)
        return TurnResult(status="failed", error=error, usage=tally.usage)

    async def _llm_step(
        self, context: TurnContext, history: list[ChatMessage], journal: TurnJournal, step: int
    ) -> LlmResult:
        messages = list(history)
        if self.profile.system_prompt:
            messages.insert(0, ChatMessage(role="system", content=self.profile.system_prompt))
        messages = self._trim(
            messages, self.profile.context_window, self.profile.max_output_tokens, self._schemas
        )
        request = LlmRequest(
            model=self.profile.model,
            fallback_models=list(self.profile.fallback_models),
            messages=messages,
            tools=self._schemas,
            max_output_tokens=self.profile.max_output_tokens,
            temperature=self.profile.temperature,
        )

        async def on_delta(text: str) -> None:
            await journal.delta(context.turn_id, step, text)

        budget = self._budget
        hold = await budget.reserve(context.tenant_id, request) if budget is not None else None
        result = await self._llm.complete(request, on_delta if journal.watched() else None)
        if budget is not None and hold is not None:
            await _settle(budget, hold, result.usage)
        history.append(
            ChatMessage(
                role="assistant", content=result.content, tool_calls=result.tool_calls or None
            )
        )
        return result

    async def _tool_call(
        self,
        context: TurnContext,
        call: ToolCallSpec,
        history: list[ChatMessage],
        journal: TurnJournal,
        approval: Approval | None = None,
        *,
        decided: PolicyDecision | None = None,
    ) -> bool:
        """Decide and run one call (``approval``: as a person decided it; ``decided``: the
        policy's decision, already asked with the rest of its step); False when it waits for a
        person instead."""
        parsed = _parse_arguments(call)
        arguments = parsed if isinstance(parsed, dict) else {}
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": call.name,
            "gen_ai.tool.call.id": call.id,
        }
        with tracing.span(f"execute_tool {call.name}", attributes=attributes) as span:
            if approval is None:  # a resumed call was recorded when it was asked for
                await journal.tool_requested(context.turn_id, call, arguments)
            if isinstance(parsed, str):
                outcome: ToolOutcome | None = ToolOutcome(ok=False, error=parsed)
            else:
                outcome = await self._decide_and_run(
                    context, call, arguments, journal, approval, decided
                )
            if outcome is None:
                span.set_attribute("agentcluster.tool.awaiting_approval", True)
                return False
            span.set_attribute("agentcluster.tool.ok", outcome.ok)
            if not outcome.ok:
                tracing.mark_error(span, outcome.error or "tool failed")
        content = _render(outcome)
        history.append(ChatMessage(role="tool", tool_call_id=call.id, content=content))
        await journal.tool_completed(context.turn_id, call, outcome, content)
        return True

    async def _decide_and_run(
        self,
        context: TurnContext,
        call: ToolCallSpec,
        arguments: dict[str, Any],
        journal: TurnJournal,
        approval: Approval | None,
        decided: PolicyDecision | None = None,
    ) -> ToolOutcome | None:
        """The call's outcome, or None when the policy sends it to a person (``approval`` is
        their decision once made: a rejected call is not run; an approved one is decided
        again, with the edited arguments if any, and a policy that still asks counts as
        approved)."""
        if approval is not None and approval.status in {"rejected", "expired"}:
            if approval.status == "expired":
                return ToolOutcome(ok=False, error=f"not run: {approval.message}")
            note = approval.message or "no reason given"
            return ToolOutcome(ok=False, error=f"rejected by a person: {note}")
        if approval is not None:
            arguments = approval.run_arguments
        invocation = _invocation(context, call, arguments)
        if call.name not in self.profile.tools:
            decision = PolicyDecision(
                allowed=False, reason=f"tool {call.name!r} is not enabled for this agent"
            )
        elif decided is not None and approval is None:
            decision = decided
        else:
            (decision,) = await self._decide([invocation])
        if decision.ask and approval is None:
            _trace_decision(decision)
            timeout_s = self.profile.approval_timeout_s
            await journal.approval_requested(
                context.turn_id, call, arguments, decision.reason, timeout_s
            )
            return None
        if decision.ask and approval is not None:
            reason = f"approved by {approval.decided_by}: {decision.reason}"
            decision = decision.model_copy(update={"ask": False, "reason": reason})
        _trace_decision(decision)
        await journal.tool_decided(context.turn_id, call, decision)
        if not decision.allowed:
            return ToolOutcome(ok=False, error=f"denied by policy: {decision.reason}")
        return await self._tools.execute(invocation)

    async def _decide_step(
        self, context: TurnContext, calls: list[ToolCallSpec]
    ) -> list[PolicyDecision | None]:
        """The policy's decisions on a step's calls, asked together (one round trip to an OPA
        server); None for a call the policy is not asked about (arguments that are not an
        object, a tool the agent does not have)."""
        asked: list[int] = []
        invocations: list[ToolInvocation] = []
        for index, call in enumerate(calls):
            parsed = _parse_arguments(call)
            if isinstance(parsed, dict) and call.name in self.profile.tools:
                asked.append(index)
                invocations.append(_invocation(context, call, parsed))
        decisions: list[PolicyDecision | None] = [None] * len(calls)
        if not invocations:
            return decisions
        for index, answer in zip(asked, await self._decide(invocations), strict=True):
            decisions[index] = answer
        return decisions

    async def _decide(self, invocations: list[ToolInvocation]) -> list[PolicyDecision]:
        try:
            return await decide_tools(self._policy, invocations)
        except AgentClusterError as exc:
            # Fail closed: no decision means no tool call.
            denial = PolicyDecision(allowed=False, reason=f"policy engine error: {exc.message}")
            return [denial] * len(invocations)


def _invocation(
    context: TurnContext, call: ToolCallSpec, arguments: dict[str, Any]
) -> ToolInvocation:
    return ToolInvocation(
        tenant_id=context.tenant_id,
        session_id=context.session_id,
        turn_id=context.turn_id,
        agent=context.agent,
        tool_call_id=call.id,
        tool=call.name,
        arguments=arguments,
    )


async def _settle(budget: Budget, hold: BudgetHold, usage: Usage) -> None:
    try:
        await budget.settle(hold, usage)
    except AgentClusterError as exc:
        # The call is made and its answer is good: failing the turn would not take the usage
        # back. The next call's reserve fails closed if the counters stay unreachable.
        log.warning(
            "tenant %s: the usage of an LLM call was not counted (%d tokens, $%.6f): %s",
            hold.tenant_id,
            usage.total_tokens,
            usage.cost_usd,
            exc,
        )


def _trace_decision(decision: PolicyDecision) -> None:
    """The policy's answer on the tool call's span."""
    span = tracing.current_span()
    verdict = "ask" if decision.ask else "allowed" if decision.allowed else "denied"
    span.set_attribute("agentcluster.tool.decision", verdict)
    if decision.reason:
        span.set_attribute("agentcluster.tool.decision.reason", decision.reason)
    if decision.engine:
        span.set_attribute("agentcluster.policy.engine", decision.engine)
