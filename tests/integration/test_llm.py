"""The LiteLLM adapter against the fake OpenAI-compatible server, over loopback HTTP.

Real LiteLLM code runs (streaming, tool-call fragments, error mapping); only the model is fake.
Waits between attempts go through a recording ``sleep``, so the tests are fast and can check the
delays chosen without timing anything.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from agentcluster.config import LlmSettings
from agentcluster.errors import InfrastructureError, TerminalFailure
from agentcluster.llm import (
    BreakerRegistry,
    ChatMessage,
    LiteLLMClient,
    LlmRequest,
    ToolCallSpec,
    ToolSchema,
)
from agentcluster.llm._litellm import wire_tool_name
from agentcluster.testing import Failure, FakeLLM, Reply, Rule, Script, Timeout, Timing, ToolCall

pytestmark = [
    pytest.mark.integration,
    # LiteLLM imports some modules lazily on the first call (the GitHub Copilot authenticator, the
    # thinking-block types); pydantic warns that ReadOnly items of their TypedDicts are not
    # enforced. Third-party and harmless: filtered by that message from pydantic's module only.
    pytest.mark.filterwarnings(
        "ignore:Items? .* on TypedDict class .* using the `ReadOnly` qualifier"
        ":UserWarning:pydantic._internal._generate_schema"
    ),
]


class RecordingSleep:
    """Stands in for asyncio.sleep: remembers each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(Script()) as server:
        yield server


def settings_for(fake: FakeLLM, **overrides: object) -> LlmSettings:
    values: dict[str, object] = {
        "api_base": fake.base_url,
        "timeout_s": 10.0,
        "max_retries": 2,
        "retry_backoff_s": 0.01,
    }
    values.update(overrides)
    return LlmSettings.model_validate(values)


def ask(text: str = "Hello there", model: str = "model-a", *fallbacks: str) -> LlmRequest:
    return LlmRequest(
        model=model,
        fallback_models=list(fallbacks),
        messages=[
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content=text),
        ],
    )


def requests_for(fake: FakeLLM, model: str) -> int:
    return sum(1 for request in fake.requests if request.model == model)


async def test_streamed_deltas_arrive_in_order_and_make_the_content(fake: FakeLLM) -> None:
    fake.script.push(Reply("one two three four five"))
    deltas: list[str] = []

    async def on_delta(text: str) -> None:
        deltas.append(text)

    client = LiteLLMClient(settings_for(fake))
    result = await client.complete(ask(), on_delta)
    assert deltas == ["one ", "two ", "three ", "four ", "five"]
    assert result.content == "".join(deltas)
    assert result.model == "model-a"
    assert result.finish_reason == "stop"
    assert result.attempts == 1
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert result.usage.cost_usd == 0.0  # an unpriced model costs nothing, and does not fail
    assert result.latency_ms > 0
    (request,) = fake.requests
    assert request.stream and request.include_usage
    assert [m["role"] for m in request.messages] == ["system", "user"]


async def test_tool_calls_are_assembled_from_fragments(fake: FakeLLM) -> None:
    weather = {"city": "Paris", "unit": "celsius", "days": [1, 2, 3]}
    fake.script.push(
        Reply(
            tool_calls=[
                ToolCall("get_weather", weather, id="call_w"),
                ToolCall("get_time", {"zone": "Europe/Paris"}, id="call_t"),
            ]
        )
    )
    deltas: list[str] = []

    async def on_delta(text: str) -> None:
        deltas.append(text)

    tools = [ToolSchema(name=name, description=name) for name in ("get_weather", "get_time")]
    request = ask("weather and time?").model_copy(update={"tools": tools})
    result = await LiteLLMClient(settings_for(fake)).complete(request, on_delta)
    assert deltas == []
    assert result.finish_reason == "tool_calls"
    assert [(c.id, c.name) for c in result.tool_calls] == [
        ("call_w", "get_weather"),
        ("call_t", "get_time"),
    ]
    assert json.loads(result.tool_calls[0].arguments) == weather
    assert json.loads(result.tool_calls[1].arguments) == {"zone": "Europe/Paris"}
    assert fake.requests[0].tool_names == ["get_weather", "get_time"]


async def test_without_a_sink_the_answer_is_asked_for_whole(fake: FakeLLM) -> None:
    fake.script.push(Reply("one two three"))
    weather = {"city": "Paris", "days": [1, 2]}
    fake.script.push(
        Reply(
            tool_calls=[
                ToolCall("get_weather", weather, id="call_w"),
                ToolCall("get_time", {"zone": "UTC"}, id="call_t"),
            ]
        )
    )
    client = LiteLLMClient(settings_for(fake))
    plain = await client.complete(ask())
    tools = [ToolSchema(name=name, description=name) for name in ("get_weather", "get_time")]
    called = await client.complete(ask("weather?").model_copy(update={"tools": tools}))
    assert [request.stream for request in fake.requests] == [False, False]
    assert plain.content == "one two three" and plain.finish_reason == "stop"
    assert plain.usage.prompt_tokens > 0 and plain.usage.completion_tokens > 0
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens
    assert called.content is None and called.finish_reason == "tool_calls"
    assert [(c.id, c.name) for c in called.tool_calls] == [
        ("call_w", "get_weather"),
        ("call_t", "get_time"),
    ]
    assert json.loads(called.tool_calls[0].arguments) == weather


async def test_streaming_always_streams_without_a_sink(fake: FakeLLM) -> None:
    fake.script.push(Reply("one two three"))
    result = await LiteLLMClient(settings_for(fake, stream="always")).complete(ask())
    assert result.content == "one two three"
    (request,) = fake.requests
    assert request.stream and request.include_usage


async def test_a_whole_answer_failing_is_retried_like_a_stream(fake: FakeLLM) -> None:
    fake.script.push(Failure(503), Reply("after the outage"))
    sleep = RecordingSleep()
    result = await LiteLLMClient(settings_for(fake), sleep=sleep).complete(ask())
    assert result.content == "after the outage" and result.attempts == 2
    assert len(sleep.delays) == 1
    assert [request.stream for request in fake.requests] == [False, False]


async def test_a_provider_test_of_a_silent_model_ends_within_its_timeout(fake: FakeLLM) -> None:
    from agentcluster.llm import ModelRoute
    from agentcluster.providers import probe_with_litellm

    fake.script.push(Timeout(seconds=30))
    route = ModelRoute(
        reference="local/silent", litellm_model="openai/silent", api_base=fake.base_url
    )
    outcome = await probe_with_litellm(route, 0.3)
    assert not outcome.ok
    assert "no answer within 0.3 s" in outcome.detail or "Timeout" in outcome.detail
    (request,) = fake.requests
    assert not request.stream and request.max_tokens == 1


async def test_rate_limit_is_retried_honouring_retry_after(fake: FakeLLM) -> None:
    fake.script.push(Failure(429, retry_after=2), Reply("finally"))
    sleep = RecordingSleep()
    client = LiteLLMClient(settings_for(fake), sleep=sleep)
    result = await client.complete(ask())
    assert result.content == "finally"
    assert result.attempts == 2
    assert len(fake.requests) == 2
    assert len(sleep.delays) == 1 and sleep.delays[0] >= 2.0  # Retry-After beats the backoff


async def test_long_retry_after_moves_on_to_the_fallback(fake: FakeLLM) -> None:
    fake.script.push(Failure(429, retry_after=3600), Reply("from b"))
    sleep = RecordingSleep()
    result = await LiteLLMClient(settings_for(fake), sleep=sleep).complete(
        ask("hi", "model-a", "model-b")
    )
    assert (result.model, result.content, result.attempts) == ("model-b", "from b", 2)
    assert sleep.delays == []


async def test_server_errors_back_off_exponentially(fake: FakeLLM) -> None:
    fake.script.push(Failure(503), Failure(500), Reply("ok"))
    sleep = RecordingSleep()
    client = LiteLLMClient(settings_for(fake, retry_backoff_s=1.0), sleep=sleep)
    result = await client.complete(ask())
    assert (result.content, result.attempts) == ("ok", 3)
    first, second = sleep.delays
    assert 1.0 <= first <= 1.2 and 2.0 <= second <= 2.4  # base * 2**n, plus up to 20% jitter


async def test_bad_request_is_terminal_and_not_retried(fake: FakeLLM) -> None:
    fake.script.push(Failure(400, message="unknown parameter 'foo'"))
    client = LiteLLMClient(settings_for(fake), sleep=RecordingSleep())
    with pytest.raises(TerminalFailure) as caught:
        await client.complete(ask("hi", "model-a", "model-b"))
    message = str(caught.value)
    assert "model-a" in message and "400" in message and "unknown parameter" in message
    assert len(fake.requests) == 1  # no retry, no fallback
    assert client.breakers.states() == {"model-a": "closed"}


@pytest.mark.parametrize("status", [401, 403, 404, 422])
async def test_other_client_errors_are_terminal(fake: FakeLLM, status: int) -> None:
    fake.script.push(Failure(status))
    client = LiteLLMClient(settings_for(fake), sleep=RecordingSleep())
    with pytest.raises(TerminalFailure, match=f"model-a rejected the request \\(HTTP {status} "):
        await client.complete(ask())
    assert len(fake.requests) == 1


async def test_context_window_exceeded_is_terminal(fake: FakeLLM) -> None:
    fake.script.push(Failure(400, message="This model's maximum context length is 8192 tokens"))
    with pytest.raises(TerminalFailure, match="ContextWindowExceededError"):
        await LiteLLMClient(settings_for(fake)).complete(ask())


async def test_breaker_opens_and_the_fallback_answers(fake: FakeLLM) -> None:
    fake.script.add_rule(Rule(model="model-a", reply=Failure(500)))
    fake.script.add_rule(Rule(model="model-b", reply=Reply("b answers")))
    registry = BreakerRegistry(fail_max=3, reset_timeout_s=3600)
    client = LiteLLMClient(settings_for(fake, max_retries=0), registry, sleep=RecordingSleep())

    for _ in range(3):  # three failures of model-a, each answered by model-b
        result = await client.complete(ask("hi", "model-a", "model-b"))
        assert (result.model, result.content, result.attempts) == ("model-b", "b answers", 2)
    assert registry.states() == {"model-a": "open", "model-b": "closed"}
    assert requests_for(fake, "model-a") == 3

    for _ in range(3):  # open: model-a is skipped without a call
        result = await client.complete(ask("hi", "model-a", "model-b"))
        assert (result.model, result.attempts) == ("model-b", 1)
    assert requests_for(fake, "model-a") == 3
    assert requests_for(fake, "model-b") == 6


async def test_terminal_errors_do_not_open_the_breaker(fake: FakeLLM) -> None:
    fake.script.add_rule(Rule(model="model-a", reply=Failure(400)))
    registry = BreakerRegistry(fail_max=2, reset_timeout_s=3600)
    client = LiteLLMClient(settings_for(fake), registry)
    for _ in range(4):
        with pytest.raises(TerminalFailure):
            await client.complete(ask())
    assert registry.states() == {"model-a": "closed"}
    assert len(fake.requests) == 4


async def test_all_models_failing_names_each_of_them(fake: FakeLLM) -> None:
    fake.script.add_rule(Rule(model="model-a", reply=Failure(503)))
    fake.script.add_rule(Rule(model="model-b", reply=Failure(429)))
    sleep = RecordingSleep()
    client = LiteLLMClient(settings_for(fake, max_retries=1), sleep=sleep)
    with pytest.raises(InfrastructureError) as caught:
        await client.complete(ask("hi", "model-a", "model-b"))
    error = caught.value
    assert error.retryable and error.dependency == "llm"
    assert "all models failed" in error.message
    assert "model-a: HTTP 503" in error.message and "model-b: HTTP 429" in error.message
    assert requests_for(fake, "model-a") == 2 and requests_for(fake, "model-b") == 2
    assert len(sleep.delays) == 2


async def test_open_breaker_is_named_when_all_fail(fake: FakeLLM) -> None:
    fake.script.add_rule(Rule(model="model-a", reply=Failure(500)))
    registry = BreakerRegistry(fail_max=1, reset_timeout_s=3600)
    client = LiteLLMClient(settings_for(fake, max_retries=3), registry, sleep=RecordingSleep())
    with pytest.raises(InfrastructureError, match=r"model-a: HTTP 500 .*; circuit open"):
        await client.complete(ask())
    with pytest.raises(InfrastructureError, match="model-a: circuit open, not called"):
        await client.complete(ask())
    assert len(fake.requests) == 1


async def test_timeout_is_retried(fake: FakeLLM) -> None:
    fake.script.push(Timeout(seconds=30), Reply("after the timeout"))
    client = LiteLLMClient(settings_for(fake, timeout_s=0.3), sleep=RecordingSleep())
    deltas: list[str] = []

    async def on_delta(text: str) -> None:
        deltas.append(text)

    result = await client.complete(ask(), on_delta)
    assert (result.content, result.attempts) == ("after the timeout", 2)
    assert "".join(deltas) == "after the timeout"


async def test_a_silent_whole_answer_is_cut_by_the_call_timeout_and_retried(
    fake: FakeLLM,
) -> None:
    # A whole answer sends nothing until it is done, so its one wait is the call's bound.
    fake.script.push(Timeout(seconds=30), Reply("after the timeout"))
    settings = settings_for(fake, timeout_s=0.2, call_timeout_s=0.6)
    result = await LiteLLMClient(settings, sleep=RecordingSleep()).complete(ask())
    assert (result.content, result.attempts) == ("after the timeout", 2)


async def test_connection_refused_is_retryable_infrastructure_error() -> None:
    async with FakeLLM() as closed:
        base_url = closed.base_url
    settings = LlmSettings(api_base=base_url, max_retries=1, retry_backoff_s=0.0)
    client = LiteLLMClient(settings, sleep=RecordingSleep())
    with pytest.raises(InfrastructureError) as caught:
        await client.complete(ask())
    assert caught.value.retryable
    assert "model-a:" in caught.value.message and "Connection error" in caught.value.message
    assert client.breakers.states() == {"model-a": "closed"}  # 2 failures < fail_max 5


async def test_stream_broken_after_deltas_is_not_retried() -> None:
    script = Script([Reply("one two three four five six seven eight")])
    server = FakeLLM(script, timing=Timing(inter_chunk_s=0.5))
    await server.start()
    deltas: list[str] = []
    stopping: list[asyncio.Future[None]] = []

    async def on_delta(text: str) -> None:
        deltas.append(text)
        if not stopping:  # cut the stream after the first fragment
            stopping.append(asyncio.ensure_future(server.stop()))

    client = LiteLLMClient(settings_for(server), sleep=RecordingSleep())
    try:
        with pytest.raises(InfrastructureError, match="broke after 1 content fragment") as caught:
            await client.complete(ask("hi", "model-a", "model-b"), on_delta)
    finally:
        await server.stop()
    assert caught.value.retryable
    assert deltas == ["one "]  # nothing repeated, nothing from a fallback
    assert len(server.requests) == 1


async def test_a_failing_delta_sink_is_not_a_model_failure(fake: FakeLLM) -> None:
    fake.script.push(Reply("one two three"))

    async def on_delta(text: str) -> None:
        raise RuntimeError("the client went away")

    registry = BreakerRegistry(fail_max=1, reset_timeout_s=3600)
    client = LiteLLMClient(settings_for(fake), registry, sleep=RecordingSleep())
    with pytest.raises(RuntimeError, match="the client went away"):
        await client.complete(ask("hi", "model-a", "model-b"), on_delta)
    assert len(fake.requests) == 1
    assert registry.states() == {"model-a": "closed"}


async def test_tool_names_providers_reject_are_mapped_on_the_wire_and_back(
    fake: FakeLLM,
) -> None:
    wire = wire_tool_name("mcp.files.read")
    assert wire != "mcp.files.read" and wire.startswith("mcp_files_read_")
    assert wire != wire_tool_name("mcp_files_read") == "mcp_files_read"
    fake.script.push(Reply(tool_calls=[ToolCall(name=wire, arguments={"path": "a.txt"})]))
    client = LiteLLMClient(settings_for(fake), BreakerRegistry.from_settings(settings_for(fake)))
    earlier = ToolCallSpec(id="call_0", name="mcp.files.read", arguments="{}")
    request = ask().model_copy(
        update={
            "tools": [ToolSchema(name="mcp.files.read", description="Read a file")],
            "messages": [
                *ask().messages,
                ChatMessage(role="assistant", content=None, tool_calls=[earlier]),
                ChatMessage(role="tool", content="old", tool_call_id="call_0"),
            ],
        }
    )
    result = await client.complete(request)
    sent = fake.requests[-1]
    assert [tool["function"]["name"] for tool in sent.tools] == [wire]
    assert sent.messages[2]["tool_calls"][0]["function"]["name"] == wire
    assert [call.name for call in result.tool_calls] == ["mcp.files.read"]
