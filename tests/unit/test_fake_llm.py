"""The fake LLM, driven through LiteLLM's real network path over loopback."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

# Before litellm is imported: no cost-map download at import time.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
import openai

from agentcluster.testing import (
    Failure,
    FakeLLM,
    Reply,
    Rule,
    Script,
    Timeout,
    Timing,
    ToolCall,
    example_from_schema,
)

litellm.suppress_debug_info = True

pytestmark = [
    pytest.mark.timeout(30),
    # LiteLLM declares TypedDicts with ReadOnly items; pydantic warns when it builds their schema.
    pytest.mark.filterwarnings(
        r"ignore:Items? .* on TypedDict class '\w+' (is|are) using the `ReadOnly` qualifier"
        ":UserWarning"
    ),
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(Script()) as server:
        yield server


async def ask(server: FakeLLM, text: str, model: str = "fake-a", **kwargs: Any) -> Any:
    return await litellm.acompletion(
        model=f"openai/{model}",
        api_base=server.base_url,
        api_key="x",
        messages=[{"role": "user", "content": text}],
        num_retries=0,
        **kwargs,
    )


async def stream(server: FakeLLM, text: str, **kwargs: Any) -> list[Any]:
    response = await ask(server, text, stream=True, **kwargs)
    return [chunk async for chunk in response]


async def test_non_streaming_text_with_usage(llm: FakeLLM) -> None:
    llm.script.push(Reply("Hello from the fake model."))

    response = await ask(llm, "hi there")

    choice = response.choices[0]
    assert choice.message.content == "Hello from the fake model."
    assert choice.finish_reason == "stop"
    assert response.model.endswith("fake-a")
    assert response.usage.prompt_tokens > 0
    assert response.usage.completion_tokens == 7  # ceil(26 chars / 4)
    assert response.usage.total_tokens == response.usage.prompt_tokens + 7


async def test_streaming_text_arrives_in_order_and_reassembles(llm: FakeLLM) -> None:
    text = "one two three four five six"
    llm.script.push(Reply(text))

    chunks = await stream(llm, "count", stream_options={"include_usage": True})

    pieces = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices]
    pieces = [piece for piece in pieces if piece]
    assert len(pieces) == 6
    assert "".join(pieces) == text
    rebuilt = litellm.stream_chunk_builder(chunks)
    assert rebuilt is not None
    assert rebuilt.choices[0].message.content == text
    assert rebuilt.choices[0].finish_reason == "stop"
    assert rebuilt.usage.completion_tokens == 7
    assert rebuilt.usage.prompt_tokens > 0


async def test_streamed_tool_call_with_fragmented_arguments(llm: FakeLLM) -> None:
    arguments = {"city": "Paris", "unit": "celsius"}
    llm.script.push(Reply(tool_calls=[ToolCall("get_weather", arguments, id="call_1")]))

    chunks = await stream(llm, "weather?", tools=[WEATHER_TOOL])

    fragments = [
        call.function.arguments
        for chunk in chunks
        if chunk.choices and chunk.choices[0].delta.tool_calls
        for call in chunk.choices[0].delta.tool_calls
        if call.function.arguments
    ]
    assert len(fragments) > 2
    rebuilt = litellm.stream_chunk_builder(chunks)
    assert rebuilt is not None
    (call,) = rebuilt.choices[0].message.tool_calls
    assert call.id == "call_1"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == arguments
    assert rebuilt.choices[0].finish_reason == "tool_calls"
    assert llm.requests[0].tool_names == ["get_weather"]


async def test_non_streaming_tool_call(llm: FakeLLM) -> None:
    llm.script.push(Reply(tool_calls=[ToolCall("get_weather", {"city": "Oslo"})]))

    response = await ask(llm, "weather?", tools=[WEATHER_TOOL])

    (call,) = response.choices[0].message.tool_calls
    assert call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    assert response.choices[0].finish_reason == "tool_calls"


async def test_rate_limit_surfaces_as_rate_limit_error(llm: FakeLLM) -> None:
    llm.script.push(Failure(429, retry_after=7, message="slow down"))

    with pytest.raises(litellm.RateLimitError, match="slow down"):
        await ask(llm, "hi")

    assert len(llm.requests) == 1  # num_retries=0: no hidden retry by LiteLLM or the openai SDK


async def test_server_error_surfaces_as_internal_server_error(llm: FakeLLM) -> None:
    llm.script.push(Failure(500))

    with pytest.raises(litellm.InternalServerError):
        await ask(llm, "hi")


async def test_unavailable_surfaces_as_service_unavailable(llm: FakeLLM) -> None:
    llm.script.push(Failure(503))

    with pytest.raises(litellm.ServiceUnavailableError):
        await ask(llm, "hi")


async def test_rule_on_model_fails_one_model_while_another_answers(llm: FakeLLM) -> None:
    llm.script.add_rule(Rule(model="fake-a", reply=Failure(500)))
    llm.script.push(Reply("B answers"))

    with pytest.raises(litellm.InternalServerError):
        await ask(llm, "hi", model="fake-a")
    response = await ask(llm, "hi", model="fake-b")

    assert response.choices[0].message.content == "B answers"
    assert [request.model for request in llm.requests] == ["fake-a", "fake-b"]
    assert llm.script.remaining == 0


async def test_rule_on_user_text_with_times_falls_through(llm: FakeLLM) -> None:
    llm.script.add_rule(Rule(when_last_user_contains="WEATHER", reply="sunny", times=1))

    first = await ask(llm, "what is the weather?")
    second = await ask(llm, "what is the weather?")

    assert first.choices[0].message.content == "sunny"
    assert second.choices[0].message.content == "[demo] You said: what is the weather?"


async def test_structured_output_returns_scripted_json(llm: FakeLLM) -> None:
    answer = {"city": "Paris", "temperature": 21}
    llm.script.push(Reply(content=answer))
    response_format = {
        "type": "json_schema",
        "json_schema": {
            "name": "weather",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "temperature": {"type": "number"}},
                "required": ["city", "temperature"],
                "additionalProperties": False,
            },
        },
    }

    response = await ask(llm, "weather as JSON", response_format=response_format)

    assert json.loads(response.choices[0].message.content) == answer
    assert llm.requests[0].structured
    assert llm.requests[0].json_schema == response_format["json_schema"]["schema"]  # type: ignore[index]


async def test_demo_answers_structured_output_from_the_schema(llm: FakeLLM) -> None:
    schema = {
        "type": "object",
        "properties": {
            "mode": {"enum": ["fast", "slow"]},
            "step": {"$ref": "#/$defs/Step"},
            "notes": {"type": "array", "items": {"type": "string"}},
        },
        "$defs": {"Step": {"type": "object", "properties": {"n": {"type": "integer"}}}},
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}

    response = await ask(llm, "plan", response_format=response_format)

    expected = {"mode": "fast", "step": {"n": 0}, "notes": []}
    assert json.loads(response.choices[0].message.content) == expected
    assert example_from_schema(schema) == expected


async def test_requests_are_recorded(llm: FakeLLM) -> None:
    await ask(llm, "first", extra_headers={"x-session-id": "s-1"}, max_tokens=50)
    await stream(llm, "second", tools=[WEATHER_TOOL], stream_options={"include_usage": True})

    first, second = llm.requests
    assert first.model == "fake-a"
    assert first.messages == [{"role": "user", "content": "first"}]
    assert first.headers["x-session-id"] == "s-1"
    assert first.headers["authorization"] == "Bearer x"
    assert (first.stream, first.max_tokens, first.tools) == (False, 50, [])
    assert first.path == "/v1/chat/completions"
    assert (second.stream, second.include_usage) == (True, True)
    assert second.last_user_text == "second"
    assert second.tools == [WEATHER_TOOL]


async def test_demo_default_calls_a_time_tool_then_reports_its_result(llm: FakeLLM) -> None:
    time_tool = {"type": "function", "function": {"name": "get_time", "parameters": {}}}

    asked = await ask(llm, "What time is it?", tools=[time_tool])
    (call,) = asked.choices[0].message.tool_calls
    followup = await litellm.acompletion(
        model="openai/fake-a",
        api_base=llm.base_url,
        api_key="x",
        num_retries=0,
        tools=[time_tool],
        messages=[
            {"role": "user", "content": "What time is it?"},
            asked.choices[0].message.model_dump(),
            {"role": "tool", "tool_call_id": call.id, "content": "12:00"},
        ],
    )

    assert call.function.name == "get_time"
    assert followup.choices[0].message.content == "[demo] The tool returned: 12:00"


async def test_max_tokens_cuts_the_text_with_finish_reason_length(llm: FakeLLM) -> None:
    llm.script.push(Reply("x" * 100))

    response = await ask(llm, "long please", max_tokens=5)

    assert response.choices[0].message.content == "x" * 20
    assert response.choices[0].finish_reason == "length"


async def test_timeout_surfaces_as_litellm_timeout(llm: FakeLLM) -> None:
    llm.script.push(Timeout(seconds=20))

    started = time.monotonic()
    with pytest.raises(litellm.Timeout):
        await ask(llm, "hi", timeout=0.3)

    assert time.monotonic() - started < 5


async def test_ttft_and_inter_chunk_delays_pace_the_stream() -> None:
    timing = Timing(ttft_s=0.2, inter_chunk_s=0.02)
    async with FakeLLM(Script([Reply("a b c d e")]), timing=timing) as server:
        started = time.monotonic()
        response = await ask(server, "go", stream=True)
        arrivals = [time.monotonic() - started async for _chunk in response]

    assert arrivals[0] >= 0.2
    assert arrivals[-1] >= 0.2 + 0.02 * (len(arrivals) - 1)


async def test_stop_cuts_a_hanging_request_short() -> None:
    server = await FakeLLM(Script([Timeout(seconds=60)])).start()
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        pending = asyncio.create_task(
            client.post("/chat/completions", json={"model": "m", "messages": []})
        )
        await server.wait_for_requests(1)  # the request reached the handler; it now hangs
        started = time.monotonic()
        await server.stop()
        response = await pending

    assert response.status_code == 504
    assert time.monotonic() - started < 3


async def test_models_and_raw_wire_format(llm: FakeLLM) -> None:
    llm.script.push(Reply("ab cd"))
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with httpx.AsyncClient(base_url=llm.base_url) as client:
        raw = (await client.post("/chat/completions", json=body)).text
        models = (await client.get("/models")).json()
        bad = await client.post("/chat/completions", content=b"not json")

    assert {"fake-llm", "m"} <= {model["id"] for model in models["data"]}
    events = [line.removeprefix("data: ") for line in raw.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 2
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"


def test_thread_mode_from_sync_code() -> None:
    script = Script(["from a thread"])
    # Our own client, closed here: LiteLLM caches the sync clients it makes and never closes them,
    # which leaves a socket for the garbage collector (a ResourceWarning at exit).
    with FakeLLM(script) as server, openai.OpenAI(base_url=server.base_url, api_key="x") as client:
        response = litellm.completion(
            model="openai/fake-sync",
            api_base=server.base_url,
            api_key="x",
            messages=[{"role": "user", "content": "hello"}],
            num_retries=0,
            client=client,
        )
        assert response.choices[0].message.content == "from a thread"
        assert server.requests[0].model == "fake-sync"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.base_url}/models", timeout=2)


def test_thread_mode_explicit_start_and_stop() -> None:
    server = FakeLLM().start_in_thread()
    try:
        reply = httpx.post(
            f"{server.base_url}/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "ping"}]},
            timeout=5,
        ).json()
    finally:
        server.stop()

    assert reply["choices"][0]["message"]["content"] == "[demo] You said: ping"
    assert reply["usage"]["total_tokens"] > 0


def test_start_twice_and_busy_port_are_errors() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError):
            FakeLLM(port=busy.getsockname()[1]).start_in_thread()
    with FakeLLM() as server, pytest.raises(RuntimeError, match="already started"):
        server.start_in_thread()


def test_script_file_yaml(tmp_path: Path) -> None:
    path = tmp_path / "script.yaml"
    path.write_text(
        """
replies:
  - Hello!
  - content: {"answer": 42}
  - tool_calls: [{name: get_weather, arguments: {city: Paris}}]
  - {type: failure, status: 429, retry_after: 1}
  - {seconds: 30}
rules:
  - {model: gpt-x, reply: {status: 500}}
  - {when_last_user_contains: weather, reply: It is sunny., times: 2}
default: nothing scripted
""",
        encoding="utf-8",
    )

    script = Script.from_file(path)

    assert script.remaining == 5
    assert script.rules[0] == Rule(model="gpt-x", reply=Failure(500))
    assert script.rules[1] == Rule(when_last_user_contains="weather", reply="It is sunny.", times=2)


def test_script_file_json_list_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "script.json"
    good.write_text(json.dumps(["a", {"type": "timeout", "seconds": 1}]), encoding="utf-8")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"replies": [{"type": "nope"}]}), encoding="utf-8")
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("replies: [{type: failure, status: 200}]", encoding="utf-8")

    assert Script.from_file(good).remaining == 2
    with pytest.raises(ValueError, match=r"bad\.json: unknown reply type 'nope'"):
        Script.from_file(bad)
    with pytest.raises(ValueError, match=r"400\.\.599"):
        Script.from_file(invalid)


async def test_wait_for_requests_across_threads() -> None:
    server = FakeLLM(Script([Timeout(seconds=30)])).start_in_thread()
    try:
        with pytest.raises(TimeoutError, match="got 0 of 1 requests"):
            await server.wait_for_requests(1, timeout_s=0.05)
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            pending = asyncio.create_task(
                client.post("/chat/completions", json={"model": "m", "messages": []})
            )
            (request,) = await server.wait_for_requests(1)
            assert request.model == "m"
            server.stop()
            assert (await pending).status_code == 504
    finally:
        server.stop()


async def test_standalone_cli_serves_a_script_file(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"replies": ["scripted hello"]}), encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentcluster.testing.fake_llm",
        "--port",
        "0",
        "--script",
        str(script),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        banner = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        base_url = banner.split()[-1]
        response = await litellm.acompletion(
            model="openai/demo",
            api_base=base_url,
            api_key="x",
            messages=[{"role": "user", "content": "hi"}],
            num_retries=0,
        )
        assert response.choices[0].message.content == "scripted hello"
    finally:
        process.terminate()
        await process.wait()
