"""The LLM failing under a turn: 500s, silence past the timeout, a stream that never ends, and
malformed stream chunks, sent for real by the fake LLM over loopback HTTP.

The turn runs in the real agent loop over the real LiteLLM client; the journal records what the
loop reports through its port. What must hold: retries absorb a passing fault, the breaker opens
and the fallback model answers, or the turn fails with ``error_type: LlmUnavailable``; never a
hung turn (each turn runs under a guard that would fail the test).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from agentcluster.agent import AgentLoop, AgentProfile, TurnContext, TurnJournal
from agentcluster.config import LlmSettings
from agentcluster.events import Usage
from agentcluster.llm import BreakerRegistry, ChatMessage, LiteLLMClient, LlmResult, ToolCallSpec
from agentcluster.testing import Failure, FakeLLM, Reply, Rule, Script, Timeout
from agentcluster.testing.fake_llm import BrokenStream
from agentcluster.tools import AllowAllPolicy, InProcessToolExecutor, ToolOutcome, builtin_registry
from agentcluster.tools._base import PolicyDecision

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings(
        "ignore:Items? .* on TypedDict class .* using the `ReadOnly` qualifier"
        ":UserWarning:pydantic._internal._generate_schema"
    ),
]

HANG_GUARD_S = 60  # a turn still running after this is a hung turn: the test fails


class RecordingJournal(TurnJournal):
    """The turn's reports through the journal port, in order."""

    def __init__(self) -> None:
        self.deltas: list[str] = []
        self.ending: tuple[str, ...] = ()

    async def turn_started(self, turn_id: str, attempt: int, *, resumed: bool = False) -> None:
        pass

    async def delta(self, turn_id: str, step: int, text: str) -> None:
        self.deltas.append(text)

    async def llm_completed(self, turn_id: str, step: int, result: LlmResult) -> None:
        pass

    async def tool_requested(
        self, turn_id: str, call: ToolCallSpec, arguments: dict[str, Any]
    ) -> None:
        pass

    async def tool_decided(
        self, turn_id: str, call: ToolCallSpec, decision: PolicyDecision
    ) -> None:
        pass

    async def tool_completed(
        self, turn_id: str, call: ToolCallSpec, outcome: ToolOutcome, content: str
    ) -> None:
        pass

    async def turn_completed(self, turn_id: str, content: str, usage: Usage) -> None:
        self.ending = ("completed", content)

    async def turn_failed(
        self, turn_id: str, error_type: str, error: str, retryable: bool, usage: Usage
    ) -> None:
        self.ending = ("failed", error_type, error, str(retryable))

    async def turn_cancelled(self, turn_id: str, reason: str, usage: Usage) -> None:
        self.ending = ("cancelled", reason)


@pytest.fixture
async def fake() -> Any:
    async with FakeLLM(Script()) as server:
        yield server


def _client(fake: FakeLLM, **overrides: Any) -> LiteLLMClient:
    values: dict[str, Any] = {
        "api_base": fake.base_url,
        "timeout_s": 1.0,
        "call_timeout_s": 3.0,
        "max_retries": 1,
        "retry_backoff_s": 0.01,
        "breaker_fail_max": 2,
        "breaker_reset_s": 600,
    }
    values.update(overrides)
    settings = LlmSettings.model_validate(values)
    return LiteLLMClient(settings, BreakerRegistry.from_settings(settings))


def _loop(client: LiteLLMClient, model: str, *fallbacks: str) -> AgentLoop:
    profile = AgentProfile(
        name="faults", model=model, fallback_models=list(fallbacks), tools=[], max_steps=2
    )
    tools = InProcessToolExecutor(builtin_registry())
    return AgentLoop(profile, client, tools, AllowAllPolicy(), _keep_all)


def _keep_all(messages: list[ChatMessage], *_: Any) -> list[ChatMessage]:
    return messages


async def _turn(loop: AgentLoop, text: str) -> RecordingJournal:
    journal = RecordingJournal()
    context = TurnContext(
        tenant_id="t", session_id=str(uuid.uuid4()), turn_id=str(uuid.uuid4()), agent="faults"
    )
    history = [ChatMessage(role="user", content=text)]
    await asyncio.wait_for(loop.run_turn(context, history, journal), HANG_GUARD_S)
    return journal


def _model() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"  # own model names: own breakers, own rules


async def test_a_passing_500_is_retried_and_the_turn_completes(fake: FakeLLM) -> None:
    model = _model()
    fake.script.add_rule(Rule(model=model, reply=Failure(500), times=1))
    fake.script.add_rule(Rule(model=model, reply=Reply(content="recovered")))
    journal = await _turn(_loop(_client(fake), model), "hello")
    assert journal.ending == ("completed", "recovered")
    assert [r.model for r in fake.requests if r.model == model] == [model, model]


async def test_repeated_500s_open_the_breaker_and_the_fallback_answers(fake: FakeLLM) -> None:
    primary, fallback = _model(), _model()
    fake.script.add_rule(Rule(model=primary, reply=Failure(503)))
    fake.script.add_rule(Rule(model=fallback, reply=Reply(content="from the fallback")))
    client = _client(fake)
    loop = _loop(client, primary, fallback)
    for _ in range(3):
        assert (await _turn(loop, "hello")).ending == ("completed", "from the fallback")
    assert client.breakers.states()[primary] == "open"
    # Two failed attempts opened it; the later turns went straight to the fallback.
    assert sum(1 for r in fake.requests if r.model == primary) == 2


async def test_every_model_failing_fails_the_turn_as_llm_unavailable(fake: FakeLLM) -> None:
    primary, fallback = _model(), _model()
    fake.script.add_rule(Rule(model=primary, reply=Failure(500)))
    fake.script.add_rule(Rule(model=fallback, reply=Failure(502)))
    journal = await _turn(_loop(_client(fake), primary, fallback), "hello")
    status, error_type, error, retryable = journal.ending
    assert (status, error_type, retryable) == ("failed", "LlmUnavailable", "True")
    assert primary in error and fallback in error and "HTTP 500" in error


async def test_silence_past_the_timeout_fails_the_turn_not_hangs_it(fake: FakeLLM) -> None:
    model = _model()
    fake.script.add_rule(Rule(model=model, reply=Timeout(seconds=30)))
    journal = await _turn(_loop(_client(fake), model), "hello")
    status, error_type, error, _ = journal.ending
    assert (status, error_type) == ("failed", "LlmUnavailable")
    assert "Timeout" in error


async def test_a_stream_that_never_ends_is_cut_by_the_call_timeout(fake: FakeLLM) -> None:
    # Each chunk arrives within the per-read timeout (1 s), so only the whole-call limit (3 s)
    # can end it: without it this turn would run for 600 s.
    model = _model()
    endless = Reply(content="word " * 1200, ttft_s=0.0, inter_chunk_s=0.5)
    fake.script.add_rule(Rule(model=model, reply=endless))
    journal = await _turn(_loop(_client(fake), model), "hello")
    status, error_type, error, retryable = journal.ending
    assert (status, error_type, retryable) == ("failed", "LlmUnavailable", "True")
    assert "SA01_LLM_CALL_TIMEOUT_S" in error


@pytest.mark.parametrize("chunk", ["bad_json", "not_sse", "wrong_shape"])
async def test_a_malformed_chunk_is_retried_and_the_turn_completes(
    fake: FakeLLM, chunk: Any
) -> None:
    model = _model()
    fake.script.add_rule(Rule(model=model, reply=BrokenStream(chunk=chunk), times=1))
    fake.script.add_rule(Rule(model=model, reply=Reply(content="clean answer")))
    journal = await _turn(_loop(_client(fake), model), "hello")
    assert journal.ending == ("completed", "clean answer")


async def test_a_stream_broken_after_content_fails_the_turn_without_duplicates(
    fake: FakeLLM,
) -> None:
    model = _model()
    fake.script.add_rule(Rule(model=model, reply=BrokenStream(content="half an", then="done")))
    journal = await _turn(_loop(_client(fake), model), "hello")
    status, error_type, error, retryable = journal.ending
    assert (status, error_type, retryable) == ("failed", "LlmUnavailable", "True")
    assert "broke after 2 content fragment(s)" in error
    assert journal.deltas == ["half ", "an"]  # shown once, never repeated by a retry
