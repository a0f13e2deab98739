"""PortChatModel: browser-use's chat model protocol over the LLM port, under a tenant budget.

The LLM and the budget are fakes typed against their ports (passed through the constructor)."""

from __future__ import annotations

from typing import Any

import pytest
from browser_use.llm.exceptions import ModelProviderError
from browser_use.llm.messages import SystemMessage, UserMessage
from pydantic import BaseModel

from agentcluster.browser import BrowserLlm, PortChatModel
from agentcluster.errors import BudgetExceeded, LlmUnavailable
from agentcluster.events import Usage
from agentcluster.llm import DeltaSink, LlmRequest, LlmResult


class Answer(BaseModel):
    text: str
    done: bool


class ScriptedLlm:
    """The LLM port answering one fixed text (or failing), recording each request."""

    def __init__(self, content: str | None = None, failure: Exception | None = None) -> None:
        self.content = content
        self.failure = failure
        self.requests: list[LlmRequest] = []

    async def complete(self, request: LlmRequest, on_delta: DeltaSink | None = None) -> LlmResult:
        self.requests.append(request)
        if self.failure is not None:
            raise self.failure
        usage = Usage(prompt_tokens=7, completion_tokens=3, total_tokens=10)
        return LlmResult(model=request.model, content=self.content, usage=usage)


class CountingBudget:
    """A budget that allows ``calls`` calls, then refuses; it records what was settled."""

    def __init__(self, calls: int) -> None:
        self.calls = calls
        self.settled: list[Usage] = []

    async def reserve(self, tenant_id: str, request: LlmRequest) -> str:
        if self.calls == 0:
            raise BudgetExceeded(
                f"daily token budget exceeded: tenant {tenant_id}",
                tenant_id=tenant_id,
                budget="tokens_per_day",
                used=10,
                limit=10,
                resets_at="2030-01-01T00:00:00Z",
            )
        self.calls -= 1
        return tenant_id

    async def settle(self, hold: Any, usage: Usage) -> None:
        self.settled.append(usage)


ROUTE = BrowserLlm(model="m1", api_base="http://127.0.0.1:9/v1", fallback_models=("m2",))
MESSAGES = [SystemMessage(content="be brief"), UserMessage(content="hi")]


async def test_structured_output_goes_through_the_port_and_is_charged() -> None:
    llm = ScriptedLlm('{"text": "ok", "done": true}')
    budget = CountingBudget(calls=1)
    chat = PortChatModel(llm, ROUTE, tenant_id="t-1", budget=budget)
    answer = await chat.ainvoke(MESSAGES, output_format=Answer)
    assert answer.completion == Answer(text="ok", done=True)
    assert answer.usage is not None and answer.usage.total_tokens == 10
    (request,) = llm.requests
    assert (request.model, request.fallback_models) == ("m1", ["m2"])
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "be brief"),
        ("user", "hi"),
    ]
    assert request.response_schema is not None and request.response_schema.name == "agent_output"
    assert "text" in request.response_schema.json_schema["properties"]
    assert budget.settled == [Usage(prompt_tokens=7, completion_tokens=3, total_tokens=10)]


async def test_a_spent_budget_makes_no_call_and_is_remembered() -> None:
    llm = ScriptedLlm("never")
    stopped: list[bool] = []
    chat = PortChatModel(llm, ROUTE, tenant_id="t-2", budget=CountingBudget(calls=0))
    chat.on_refused = lambda: stopped.append(True)
    with pytest.raises(ModelProviderError, match="daily token budget exceeded"):
        await chat.ainvoke(MESSAGES)
    assert llm.requests == [] and stopped == [True]
    assert chat.refusal is not None and chat.refusal.tenant_id == "t-2"


async def test_port_failures_and_bad_json_are_provider_errors() -> None:
    down = PortChatModel(
        ScriptedLlm(failure=LlmUnavailable("all models failed")), ROUTE, tenant_id="t"
    )
    with pytest.raises(ModelProviderError) as unavailable:
        await down.ainvoke(MESSAGES)
    assert unavailable.value.status_code == 503 and down.refusal is None
    garbled = PortChatModel(ScriptedLlm("not json"), ROUTE, tenant_id="t")
    with pytest.raises(ModelProviderError, match="Failed to parse structured output"):
        await garbled.ainvoke(MESSAGES, output_format=Answer)
    plain = await PortChatModel(ScriptedLlm("hello"), ROUTE, tenant_id="t").ainvoke(MESSAGES)
    assert plain.completion == "hello"
