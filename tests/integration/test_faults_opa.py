"""The OPA server stopped under the policy port, then back (a private ``opa run --server``).

While it is gone every decision fails closed: a tool call is denied with a reason naming the
policy engine (the model reads it and the turn goes on), an API action is a failed decision the
gateway answers with 503 naming it. The same engine object decides again once OPA is back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from agentcluster.agent import AgentLoop, AgentProfile, TurnContext
from agentcluster.config import LlmSettings
from agentcluster.llm import ChatMessage, LiteLLMClient
from agentcluster.policy import OpaServerPolicy
from agentcluster.testing import FakeLLM, Reply, Rule, Script, ToolCall
from agentcluster.tools import InProcessToolExecutor, ToolInvocation, builtin_registry
from tests.integration.test_faults_llm import RecordingJournal
from tests.support.private_services import PrivateOpa

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings(
        "ignore:Items? .* on TypedDict class .* using the `ReadOnly` qualifier"
        ":UserWarning:pydantic._internal._generate_schema"
    ),
]


@pytest.fixture(scope="module")
def opa_server() -> Iterator[PrivateOpa]:
    with PrivateOpa() as server:
        yield server


@pytest.fixture
async def opa(opa_server: PrivateOpa) -> AsyncIterator[PrivateOpa]:
    await asyncio.to_thread(opa_server.start)
    yield opa_server
    await asyncio.to_thread(opa_server.start)


def _invocation(tenant_id: str) -> ToolInvocation:
    return ToolInvocation(
        tenant_id=tenant_id,
        session_id="s",
        turn_id="t",
        agent="support",
        tool_call_id="c",
        tool="calculator",
        arguments={"expression": "6*7"},
    )


async def test_decisions_fail_closed_naming_the_engine_and_recover(opa: PrivateOpa) -> None:
    engine = OpaServerPolicy(opa.url, timeout_s=1.0)
    tenant = f"faults-{uuid.uuid4().hex[:8]}"
    try:
        assert (await engine.decide_tool(_invocation(tenant))).allowed
        assert (await engine.decide_action(tenant, "session.create")).allowed
        await asyncio.to_thread(opa.stop)
        tool = await engine.decide_tool(_invocation(tenant))
        action = await engine.decide_action(tenant, "session.create")
        for decision in (tool, action):
            assert not decision.allowed and decision.failed
            assert decision.reason == f"policy engine (OPA at {opa.url}) unreachable: ConnectError"
        await asyncio.to_thread(opa.start)
        assert (await engine.decide_tool(_invocation(tenant))).allowed
        assert (await engine.decide_action(tenant, "session.create")).allowed
    finally:
        await engine.aclose()


async def test_a_silent_engine_denies_in_bounded_time(opa: PrivateOpa) -> None:
    engine = OpaServerPolicy(opa.url, timeout_s=0.5)
    try:
        assert (await engine.decide_tool(_invocation("t"))).allowed
        opa.pause()
        try:
            decision = await asyncio.wait_for(engine.decide_tool(_invocation("t")), 30)
        finally:
            opa.resume()
        assert not decision.allowed and decision.failed
        assert decision.reason.startswith(f"policy engine (OPA at {opa.url}) did not answer")
        assert (await engine.decide_tool(_invocation("t"))).allowed
    finally:
        await engine.aclose()


async def test_a_turn_goes_on_with_the_tool_denied_by_the_engine_outage(opa: PrivateOpa) -> None:
    token = uuid.uuid4().hex
    async with FakeLLM(Script()) as fake:
        fake.script.add_rule(
            Rule(
                when=lambda r: token in str(r.messages) and r.last_role == "tool",
                reply=Reply(content="the tool was refused"),
            )
        )
        call = ToolCall("calculator", {"expression": "6*7"})
        fake.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(tool_calls=[call])))
        engine = OpaServerPolicy(opa.url, timeout_s=1.0)
        await asyncio.to_thread(opa.stop)
        try:
            journal = await _turn(fake, engine, token)
        finally:
            await engine.aclose()
    assert journal.ending == ("completed", "the tool was refused")
    tool_result = next(r for r in fake.requests if r.last_role == "tool").messages[-1]
    assert "denied by policy: policy engine (OPA at" in str(tool_result["content"])


async def _turn(fake: FakeLLM, engine: OpaServerPolicy, text: str) -> RecordingJournal:
    settings = LlmSettings(api_base=fake.base_url, api_key="x", timeout_s=5, max_retries=0)
    profile = AgentProfile(name="support", model="m", tools=["calculator"], max_steps=3)
    tools = InProcessToolExecutor(builtin_registry())
    loop = AgentLoop(profile, LiteLLMClient(settings), tools, engine, _keep_all)
    journal = RecordingJournal()
    context = TurnContext(tenant_id="t", session_id="s", turn_id="t1", agent="support")
    history = [ChatMessage(role="user", content=text)]
    await asyncio.wait_for(loop.run_turn(context, history, journal), 60)
    return journal


def _keep_all(messages: list[ChatMessage], *_: Any) -> list[ChatMessage]:
    return messages
