"""The agent loop with in-memory fakes typed against its ports (no Ray, no services, no LLM)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from agentcluster.agent import AgentLoop, AgentProfile, TurnContext, TurnJournal
from agentcluster.domain import Approval, ApprovalStatus, Message
from agentcluster.errors import InfrastructureError
from agentcluster.events import Usage
from agentcluster.llm import (
    LLM,
    ChatMessage,
    DeltaSink,
    LlmRequest,
    LlmResult,
    ToolCallSpec,
    ToolSchema,
)
from agentcluster.runtime import history_from_messages, plan_host_count
from agentcluster.tools import (
    AllowAllPolicy,
    InProcessToolExecutor,
    PolicyDecision,
    StaticPolicy,
    ToolInvocation,
    ToolOutcome,
    builtin_registry,
)

pytestmark = pytest.mark.timeout(10)


class ScriptedLLM(LLM):
    """Answers each request with the next scripted result (or raises it)."""

    def __init__(self, *script: LlmResult | Exception) -> None:
        self.script = list(script)
        self.requests: list[LlmRequest] = []
        self.gate: asyncio.Event | None = None
        self.called = asyncio.Event()

    async def complete(self, request: LlmRequest, on_delta: DeltaSink | None = None) -> LlmResult:
        self.requests.append(request)
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        if on_delta and item.content:
            for word in item.content.split(" "):
                await on_delta(word)
        return item


class MemoryJournal(TurnJournal):
    def __init__(self) -> None:
        self.entries: list[tuple[str, Any]] = []

    async def turn_started(self, turn_id: str, attempt: int, *, resumed: bool = False) -> None:
        self.entries.append(("resumed" if resumed else "started", attempt))

    async def delta(self, turn_id: str, step: int, text: str) -> None:
        self.entries.append(("delta", text))

    async def llm_completed(self, turn_id: str, step: int, result: LlmResult) -> None:
        self.entries.append(("llm", step))

    async def tool_requested(
        self, turn_id: str, call: ToolCallSpec, arguments: dict[str, Any]
    ) -> None:
        self.entries.append(("requested", call.name))

    async def tool_decided(
        self, turn_id: str, call: ToolCallSpec, decision: PolicyDecision
    ) -> None:
        self.entries.append(("decided", decision.allowed))

    async def tool_completed(
        self, turn_id: str, call: ToolCallSpec, outcome: ToolOutcome, content: str
    ) -> None:
        self.entries.append(("completed", outcome.ok, outcome.error))

    async def approval_requested(
        self,
        turn_id: str,
        call: ToolCallSpec,
        arguments: dict[str, Any],
        reason: str,
        timeout_s: float,
    ) -> None:
        self.entries.append(("asked", call.id, reason, timeout_s))

    async def turn_paused(self, turn_id: str, tool_call_ids: list[str], usage: Usage) -> None:
        self.entries.append(("paused", tool_call_ids, usage.total_tokens))

    async def turn_completed(self, turn_id: str, content: str, usage: Usage) -> None:
        self.entries.append(("done", content, usage.total_tokens))

    async def turn_failed(
        self, turn_id: str, error_type: str, error: str, retryable: bool, usage: Usage
    ) -> None:
        self.entries.append(("failed", error_type, retryable))

    async def turn_cancelled(self, turn_id: str, reason: str, usage: Usage) -> None:
        self.entries.append(("cancelled", reason))

    def kinds(self) -> list[str]:
        return [entry[0] for entry in self.entries if entry[0] != "delta"]


PROFILE = AgentProfile(
    name="t",
    model="openai/a",
    fallback_models=["openai/b"],
    system_prompt="be brief",
    tools=["calculator", "current_time"],
    max_steps=3,
)
CONTEXT = TurnContext(tenant_id="t1", session_id="s1", turn_id="u1", agent="t")


def _keep(
    messages: list[ChatMessage], window: int, reserve: int, tools: list[ToolSchema]
) -> list[ChatMessage]:
    return messages


def _answer(text: str, tokens: int = 5) -> LlmResult:
    return LlmResult(model="openai/a", content=text, usage=Usage(total_tokens=tokens))


def _call(name: str, arguments: str, call_id: str = "c1") -> LlmResult:
    return LlmResult(
        model="openai/a",
        tool_calls=[ToolCallSpec(id=call_id, name=name, arguments=arguments)],
        usage=Usage(total_tokens=7),
    )


def _loop(llm: LLM, policy: Any = None, profile: AgentProfile = PROFILE) -> AgentLoop:
    executor = InProcessToolExecutor(builtin_registry())
    return AgentLoop(profile, llm, executor, policy or AllowAllPolicy(), _keep)


async def test_two_step_tool_turn_records_each_step_in_order() -> None:
    llm = ScriptedLLM(_call("calculator", '{"expression": "6*7"}'), _answer("it is 42"))
    journal = MemoryJournal()
    history = [ChatMessage(role="user", content="6 times 7?")]
    result = await _loop(llm).run_turn(CONTEXT, history, journal)
    assert result.status == "completed" and result.content == "it is 42"
    assert result.usage.total_tokens == 12
    assert journal.kinds() == ["started", "llm", "requested", "decided", "completed", "llm", "done"]
    assert ("completed", True, None) in journal.entries
    assert [m.role for m in history] == ["user", "assistant", "tool", "assistant"]
    assert '"value": 42' in (history[2].content or "")
    first = llm.requests[0]
    assert first.messages[0] == ChatMessage(role="system", content="be brief")
    assert [t.name for t in first.tools] == ["calculator", "current_time"]
    assert first.fallback_models == ["openai/b"]
    deltas = [entry[1] for entry in journal.entries if entry[0] == "delta"]
    assert deltas == ["it", "is", "42"]


async def test_denied_tool_reaches_the_model_as_an_error() -> None:
    llm = ScriptedLLM(_call("calculator", '{"expression": "1"}'), _answer("ok"))
    journal = MemoryJournal()
    history = [ChatMessage(role="user", content="x")]
    policy = StaticPolicy({"calculator": "maths is off today"})
    await _loop(llm, policy).run_turn(CONTEXT, history, journal)
    assert ("decided", False) in journal.entries
    assert "denied by policy: maths is off today" in (history[2].content or "")


async def test_a_tool_not_in_the_profile_is_denied_without_asking_policy() -> None:
    llm = ScriptedLLM(_call("rm_rf", "{}"), _answer("sorry"))
    history = [ChatMessage(role="user", content="x")]
    journal = MemoryJournal()
    await _loop(llm).run_turn(CONTEXT, history, journal)
    assert "not enabled for this agent" in (history[2].content or "")


async def test_bad_json_arguments_are_told_to_the_model() -> None:
    llm = ScriptedLLM(_call("calculator", "{not json"), _answer("retrying"))
    journal = MemoryJournal()
    history = [ChatMessage(role="user", content="x")]
    await _loop(llm).run_turn(CONTEXT, history, journal)
    assert "decided" not in journal.kinds()
    assert "not valid JSON" in (history[2].content or "")


async def test_running_out_of_steps_fails_the_turn() -> None:
    llm = ScriptedLLM(*[_call("current_time", "{}", f"c{i}") for i in range(3)])
    journal = MemoryJournal()
    result = await _loop(llm).run_turn(CONTEXT, [ChatMessage(role="user", content="x")], journal)
    assert result.status == "failed"
    assert journal.entries[-1] == ("failed", "MaxStepsExceeded", False)


async def test_llm_outage_fails_the_turn_as_retryable() -> None:
    llm = ScriptedLLM(InfrastructureError("llm", "all models failed"))
    journal = MemoryJournal()
    result = await _loop(llm).run_turn(CONTEXT, [ChatMessage(role="user", content="x")], journal)
    assert result.status == "failed"
    assert journal.entries[-1] == ("failed", "InfrastructureError", True)


async def test_resume_reports_a_tool_call_cut_by_a_crash() -> None:
    llm = ScriptedLLM(_answer("recovered"))
    journal = MemoryJournal()
    history = [
        ChatMessage(role="user", content="x"),
        ChatMessage(role="assistant", tool_calls=[ToolCallSpec(id="c9", name="calculator")]),
    ]
    result = await _loop(llm).run_turn(CONTEXT, history, journal, prior_steps=1)
    assert result.status == "completed"
    assert (
        journal.entries[1][0] == "completed" and "host running this turn" in journal.entries[1][2]
    )
    assert history[2].tool_call_id == "c9"


async def test_cancel_is_recorded_and_propagates() -> None:
    llm = ScriptedLLM(_answer("never"))
    llm.gate = asyncio.Event()
    journal = MemoryJournal()
    task = asyncio.create_task(
        _loop(llm).run_turn(CONTEXT, [ChatMessage(role="user", content="x")], journal)
    )
    await llm.called.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert journal.entries[-1] == ("cancelled", "cancelled by request")


def _message(position: int, role: str, turn: str, content: str = "") -> Message:
    return Message(
        message_id=f"m{position}",
        session_id="s",
        turn_id=turn,
        role=role,  # type: ignore[arg-type]
        content=content or f"{role}{position}",
        created_at=datetime.now(UTC),
    )


def test_history_groups_by_turn_and_leaves_queued_turns_out() -> None:
    # commit order: user of t1, user of t2 (queued while t1 ran), t1's answer, user of t3
    stored = [
        _message(1, "user", "t1"),
        _message(2, "user", "t2"),
        _message(3, "assistant", "t1"),
        _message(4, "user", "t3"),
    ]
    history = history_from_messages(stored, exclude_turns={"t3"})
    assert [m.content for m in history] == ["user1", "assistant3", "user2"]


class Bounds:
    min_hosts = 1
    max_hosts = 4
    sessions_per_host = 100
    target_utilization = 0.8


def test_host_count_grows_with_load_and_shrinks_one_at_a_time() -> None:
    assert plan_host_count([0], Bounds()) == 1
    assert plan_host_count([170], Bounds()) == 3
    assert plan_host_count([80, 80], Bounds()) == 2
    assert plan_host_count([400, 400], Bounds()) == 4
    assert plan_host_count([10, 10, 10], Bounds()) == 2
    assert plan_host_count([50, 40, 40], Bounds()) == 3


class AskPolicy:
    """Allows every call, asking a person first (what a tenant's approvals rule does)."""

    async def decide_tool(self, invocation: Any) -> PolicyDecision:
        return PolicyDecision(allowed=True, ask=True, reason="a person checks sums")


def _approval(status: ApprovalStatus, call_id: str = "c1", **more: Any) -> Approval:
    return Approval(
        tool_call_id=call_id,
        tenant_id="t1",
        session_id="s1",
        turn_id="u1",
        tool="calculator",
        arguments={"expression": "6*7"},
        reason="a person checks sums",
        status=status,
        created_at=datetime.now(UTC),
        decided_by="key:k1",
        **more,
    )


def _paused_history() -> list[ChatMessage]:
    calls = [
        ToolCallSpec(id="c1", name="calculator", arguments='{"expression": "6*7"}'),
        ToolCallSpec(id="c2", name="calculator", arguments='{"expression": "1+2"}'),
    ]
    return [
        ChatMessage(role="user", content="x"),
        ChatMessage(role="assistant", tool_calls=calls),
    ]


async def test_an_asked_call_pauses_the_turn_without_running() -> None:
    two_calls = LlmResult(
        model="openai/a",
        tool_calls=[
            ToolCallSpec(id="c1", name="calculator", arguments='{"expression": "6*7"}'),
            ToolCallSpec(id="c2", name="current_time", arguments="{}"),
        ],
        usage=Usage(total_tokens=7),
    )
    journal = MemoryJournal()
    history = [ChatMessage(role="user", content="x")]
    result = await _loop(ScriptedLLM(two_calls), AskPolicy()).run_turn(CONTEXT, history, journal)
    assert result.status == "awaiting_approval" and result.usage.total_tokens == 7
    assert journal.kinds() == [
        "started",
        "llm",
        "requested",
        "asked",
        "requested",
        "asked",
        "paused",
    ]
    assert ("asked", "c1", "a person checks sums", PROFILE.approval_timeout_s) in journal.entries
    assert journal.entries[-1] == ("paused", ["c1", "c2"], 7)
    assert [m.role for m in history] == ["user", "assistant"]  # nothing ran, nothing answered


async def test_a_resumed_turn_runs_approved_and_edited_calls_and_reports_rejected_ones() -> None:
    llm = ScriptedLLM(_answer("done"))
    journal = MemoryJournal()
    history = _paused_history()
    approvals = {
        "c1": _approval("edited", edited_arguments={"expression": "2*2"}),
        "c2": _approval("rejected", "c2", message="not that one"),
    }
    context = CONTEXT.model_copy(update={"resumed": True})
    result = await _loop(llm, AskPolicy()).run_turn(
        context,
        history,
        journal,
        prior_steps=1,
        approvals=approvals,
        prior_usage=Usage(total_tokens=7),
    )
    assert result.status == "completed" and result.usage.total_tokens == 12
    # The approved call is decided again (the policy still asks: the person's approval counts).
    assert journal.kinds() == ["resumed", "decided", "completed", "completed", "llm", "done"]
    assert ("decided", True) in journal.entries
    assert '"value": 4' in (history[2].content or "")  # ran with the edited arguments
    assert history[3].content == '{"error": "rejected by a person: not that one"}'
    assert ("completed", False, "rejected by a person: not that one") in journal.entries


async def test_a_resumed_turn_with_a_call_still_undecided_pauses_again() -> None:
    journal = MemoryJournal()
    history = _paused_history()
    approvals = {"c1": _approval("approved"), "c2": _approval("pending", "c2")}
    context = CONTEXT.model_copy(update={"resumed": True})
    result = await _loop(ScriptedLLM(), AskPolicy()).run_turn(
        context, history, journal, prior_steps=1, approvals=approvals
    )
    assert result.status == "awaiting_approval"
    assert journal.kinds() == ["resumed", "decided", "completed", "paused"]
    assert journal.entries[-1] == ("paused", ["c2"], 0)


async def test_an_approved_call_the_policy_now_denies_does_not_run() -> None:
    journal = MemoryJournal()
    only = ChatMessage(
        role="assistant", tool_calls=[ToolCallSpec(id="c1", name="calculator", arguments="{}")]
    )
    history = [ChatMessage(role="user", content="x"), only]
    policy = StaticPolicy({"calculator": "maths is off today"})
    context = CONTEXT.model_copy(update={"resumed": True})
    await _loop(ScriptedLLM(_answer("ok")), policy).run_turn(
        context, history, journal, prior_steps=1, approvals={"c1": _approval("approved")}
    )
    assert ("decided", False) in journal.entries
    assert "denied by policy: maths is off today" in (history[2].content or "")


class BatchRecordingPolicy(StaticPolicy):
    """The static deny list, answering a step's calls as one batch and recording each batch."""

    def __init__(self, deny: dict[str, str]) -> None:
        super().__init__(deny)
        self.batches: list[list[tuple[str, str, dict[str, Any]]]] = []

    async def decide_tools(self, invocations: Sequence[ToolInvocation]) -> list[PolicyDecision]:
        self.batches.append([(i.tool_call_id, i.tool, i.arguments) for i in invocations])
        return [await self.decide_tool(invocation) for invocation in invocations]


async def test_a_steps_calls_are_decided_in_one_batch_each_by_its_own_arguments() -> None:
    calls = [
        ToolCallSpec(id="c1", name="calculator", arguments='{"expression": "6*7"}'),
        ToolCallSpec(id="c2", name="current_time", arguments="{}"),
        ToolCallSpec(id="c3", name="calculator", arguments="{not json"),
        ToolCallSpec(id="c4", name="rm_rf", arguments="{}"),
        # A model may repeat an id: each call still gets the decision on its own arguments.
        ToolCallSpec(id="c1", name="calculator", arguments='{"expression": "1+2"}'),
    ]
    step = LlmResult(model="openai/a", tool_calls=calls, usage=Usage(total_tokens=7))
    llm = ScriptedLLM(step, _answer("done"))
    policy = BatchRecordingPolicy({"current_time": "no clocks here"})
    history = [ChatMessage(role="user", content="x")]
    journal = MemoryJournal()
    result = await _loop(llm, policy).run_turn(CONTEXT, history, journal)
    assert result.status == "completed"
    # One batch for the step: the calls the policy is asked about (bad JSON and a tool the
    # agent lacks are refused before it), in the model's order.
    assert policy.batches == [
        [
            ("c1", "calculator", {"expression": "6*7"}),
            ("c2", "current_time", {}),
            ("c1", "calculator", {"expression": "1+2"}),
        ]
    ]
    answers = [m.content or "" for m in history if m.role == "tool"]
    assert len(answers) == 5
    assert '"value": 42' in answers[0]
    assert "denied by policy: no clocks here" in answers[1]
    assert "not valid JSON" in answers[2]
    assert "not enabled for this agent" in answers[3]
    assert '"value": 3' in answers[4]
    # Each call's events stay in order: requested, decided, completed, call after call.
    assert journal.kinds()[2:] == ["requested", "decided", "completed"] * 2 + [
        "requested",
        "completed",
        "requested",
        "decided",
        "completed",
        "requested",
        "decided",
        "completed",
        "llm",
        "done",
    ]


class FailingBatchPolicy(AllowAllPolicy):
    async def decide_tools(self, invocations: Sequence[ToolInvocation]) -> list[PolicyDecision]:
        raise InfrastructureError("policy", "the service is down")


async def test_a_batch_that_fails_denies_every_call_of_the_step() -> None:
    calls = [
        ToolCallSpec(id="c1", name="calculator", arguments='{"expression": "6*7"}'),
        ToolCallSpec(id="c2", name="current_time", arguments="{}"),
    ]
    step = LlmResult(model="openai/a", tool_calls=calls, usage=Usage(total_tokens=7))
    history = [ChatMessage(role="user", content="x")]
    journal = MemoryJournal()
    await _loop(ScriptedLLM(step, _answer("ok")), FailingBatchPolicy()).run_turn(
        CONTEXT, history, journal
    )
    answers = [m.content or "" for m in history if m.role == "tool"]
    assert len(answers) == 2
    assert all("policy engine error: policy: the service is down" in a for a in answers)
    assert ("decided", False) in journal.entries and ("decided", True) not in journal.entries
