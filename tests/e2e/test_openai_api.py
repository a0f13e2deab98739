"""The OpenAI-compatible API (/v1/models, /v1/chat/completions, /v1/responses), driven by the
official ``openai`` SDK (sync, async, streaming) against the real gateway and the fake LLM."""

from __future__ import annotations

import json
import uuid

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from agentcluster.testing.fake_llm import FakeLLM, Reply, Rule, ToolCall
from tests.e2e.conftest import ADMIN_KEY, new_tenant, script_tool_turn, tenant_policy

ASK_CALCULATOR = {"approvals": [{"tools": ["calculator"], "reason": "a person checks sums"}]}

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _sync(gateway_url: str, key: str) -> OpenAI:
    return OpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0, timeout=60)


def _async(gateway_url: str, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0, timeout=60)


def _answer(fake_llm: FakeLLM, token: str, text: str) -> None:
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content=text)))


async def _event_types(
    http: httpx.AsyncClient, key: str, session_id: str, turns: int = 1
) -> list[str]:
    """The session's event types, read from GET /v1/sessions/{id}/events until ``turns`` turns
    have completed."""
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    types: list[str] = []
    async with http.stream("GET", f"/v1/sessions/{session_id}/events", headers=headers) as events:
        assert events.status_code == 200
        async for line in events.aiter_lines():
            if line.startswith("event:"):
                types.append(line.split(":", 1)[1].strip())
            if types.count("turn.completed") == turns:
                return types
    return types


async def test_models_are_the_agents_and_errors_are_the_sdks_typed_exceptions(
    gateway_url: str, tenant_key: str
) -> None:
    client = _sync(gateway_url, tenant_key)
    models = client.models.list()
    assert {"tester", "surfer", "coder"} <= {model.id for model in models.data}
    assert client.models.retrieve("tester").id == "tester"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(
            model="no-such-agent", messages=[{"role": "user", "content": "hi"}]
        )
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-agent")
    with pytest.raises(openai.AuthenticationError):
        _sync(gateway_url, "not-a-key-" + uuid.uuid4().hex).models.list()
    with pytest.raises(openai.BadRequestError) as malformed:
        client.chat.completions.create(model="tester", messages=[])
    assert malformed.value.body is not None and "messages" in str(malformed.value.body)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="tester", messages=[{"role": "assistant", "content": "not the user's"}]
        )


async def test_a_chat_completion_carries_the_requests_history_and_continues_by_header(
    gateway_url: str, tenant_key: str, fake_llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(
        Rule(
            when=lambda r: f"first {token}" in str(r.messages[-1])
            and "Earlier messages" in str(r.messages),
            reply=Reply(content=f"saw the history {token}"),
        )
    )
    fake_llm.script.add_rule(
        Rule(
            when=lambda r: f"again {token}" in str(r.messages[-1])
            and f"saw the history {token}" in str(r.messages),
            reply=Reply(content=f"remembered {token}"),
        )
    )
    client = _sync(gateway_url, tenant_key)
    raw = client.chat.completions.with_raw_response.create(
        model="tester",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "an earlier question"},
            {"role": "assistant", "content": "an earlier answer"},
            {"role": "user", "content": f"first {token}"},
        ],
    )
    completion = raw.parse()
    session_id = raw.headers["x-session-id"]
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == f"saw the history {token}"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    again = client.chat.completions.create(
        model="tester",
        messages=[{"role": "user", "content": f"again {token}"}],
        extra_headers={"X-Session-Id": session_id},
    )
    assert again.choices[0].message.content == f"remembered {token}"
    # Both turns are ordinary turns of the session: its events show them.
    assert (await _event_types(http, tenant_key, session_id, 2)).count("turn.completed") == 2
    # Another tenant's key cannot reach the session.
    other_key = (await new_tenant(http))[1]
    with pytest.raises(openai.NotFoundError):
        _sync(gateway_url, other_key).chat.completions.create(
            model="tester",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Session-Id": session_id},
        )


async def test_a_streamed_chat_completion_runs_the_agents_tool_and_ends_with_usage(
    gateway_url: str, tenant_key: str, fake_llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    token = uuid.uuid4().hex
    call = ToolCall(name="calculator", arguments={"expression": "6*7"})
    script_tool_turn(fake_llm, token, call, f"it is 42 {token}")
    client = _async(gateway_url, tenant_key)
    stream = await client.chat.completions.create(
        model="tester",
        messages=[{"role": "user", "content": f"compute {token}"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    session_id = stream.response.headers["x-session-id"]
    chunks = [chunk async for chunk in stream]
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"it is 42 {token}"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens > 0
    types = await _event_types(http, tenant_key, session_id)
    assert "tool.completed" in types and types[-1] == "turn.completed"


async def test_responses_create_retrieve_continue_and_stream(
    gateway_url: str, tenant_key: str, fake_llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    token = uuid.uuid4().hex
    later = uuid.uuid4().hex
    call = ToolCall(name="calculator", arguments={"expression": "6*7"})
    script_tool_turn(fake_llm, token, call, f"the answer is 42 {token}")
    client = _sync(gateway_url, tenant_key)
    response = client.responses.create(model="tester", input=f"compute {token}")
    assert response.status == "completed"
    assert [item.type for item in response.output] == [
        "function_call",
        "function_call_output",
        "message",
    ]
    function_call = response.output[0]
    assert function_call.type == "function_call" and function_call.name == "calculator"
    output = response.output[1]
    assert output.type == "function_call_output" and "42" in str(output.output)
    assert output.call_id == function_call.call_id
    assert response.output_text == f"the answer is 42 {token}"
    assert response.usage is not None and response.usage.total_tokens > 0
    retrieved = client.responses.retrieve(response.id)
    assert (retrieved.id, retrieved.output_text) == (response.id, response.output_text)
    assert [item.type for item in retrieved.output] == [item.type for item in response.output]

    fake_llm.script.add_rule(
        Rule(
            when=lambda r: f"next {later}" in str(r.messages[-1])
            and f"the answer is 42 {token}" in str(r.messages)
            and token not in str(r.messages[-1]),
            reply=Reply(content=f"continued {token}"),
        )
    )
    async_client = _async(gateway_url, tenant_key)
    stream = await async_client.responses.create(
        model="tester", input=f"next {later}", previous_response_id=response.id, stream=True
    )
    events = [event async for event in stream]
    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert types.index("response.output_item.added") < types.index("response.content_part.added")
    for expected in (
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert expected in types
    assert [event.sequence_number for event in events] == list(range(len(events)))
    delta = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert delta == f"continued {token}"
    completed = events[-1].response  # type: ignore[union-attr]
    assert completed.output_text == f"continued {token}"
    assert completed.previous_response_id == response.id
    # The continuation is a turn of the same session.
    again = await async_client.responses.retrieve(completed.id)
    assert again.previous_response_id == response.id


async def test_a_background_response_is_cancelled_and_other_tenants_get_404(
    gateway_url: str, tenant_key: str, fake_llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(
        Rule(
            when_last_user_contains=token, reply=Reply(content="too late", latency_s=60, ttft_s=60)
        )
    )
    client = _sync(gateway_url, tenant_key)
    response = client.responses.create(model="tester", input=f"slow {token}", background=True)
    assert response.status in ("queued", "in_progress")
    cancelled = client.responses.cancel(response.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(response.id).status == "cancelled"

    other = _sync(gateway_url, (await new_tenant(http))[1])
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.cancel(response.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model="tester", input="hi", previous_response_id=response.id)

    unstored_token = uuid.uuid4().hex
    _answer(fake_llm, unstored_token, "not kept")
    unstored = client.responses.create(model="tester", input=unstored_token, store=False)
    assert unstored.output_text == "not kept" and unstored.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="tester", input=[])


async def test_a_streamed_response_shows_the_tool_calls_as_output_items(
    gateway_url: str, tenant_key: str, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    call = ToolCall(name="calculator", arguments={"expression": "6*7"})
    script_tool_turn(fake_llm, token, call, f"streamed 42 {token}")
    client = _sync(gateway_url, tenant_key)
    with client.responses.create(model="tester", input=f"compute {token}", stream=True) as stream:
        events = list(stream)
    added = [e.item.type for e in events if e.type == "response.output_item.added"]
    assert added == ["function_call", "function_call_output", "message"]
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert done[0].type == "function_call" and done[0].name == "calculator"
    assert done[1].type == "function_call_output" and "42" in str(done[1].output)
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.output_text == f"streamed 42 {token}"
    assert [item.type for item in final.response.output] == added


async def test_idempotency_rate_limits_and_budgets_reach_the_sdk(
    gateway_url: str, fake_llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    # A spent daily token budget fails the turn: a 500 the SDK does not retry.
    budget_tenant, budget_key = await new_tenant(http, "openai-budget")
    limits = await http.put(
        f"/v1/tenants/{budget_tenant}/limits", json={"tokens_per_day": 1}, headers=admin
    )
    assert limits.status_code == 200, limits.text
    with pytest.raises(openai.InternalServerError) as failed:  # the prompt alone is over it
        _sync(gateway_url, budget_key).chat.completions.create(
            model="tester", messages=[{"role": "user", "content": "over budget"}]
        )
    assert failed.value.code == "turn_failed" and "budget" in failed.value.message
    stream = _sync(gateway_url, budget_key).chat.completions.create(
        model="tester", messages=[{"role": "user", "content": "over budget"}], stream=True
    )
    with pytest.raises(openai.APIError, match="budget"):  # an error event inside the stream
        list(stream)

    tenant_id, key = await new_tenant(http, "openai-limits")
    client = _sync(gateway_url, key)
    token = uuid.uuid4().hex
    _answer(fake_llm, token, f"once {token}")
    session = await http.post(
        "/v1/sessions", json={"agent": "tester"}, headers={"Authorization": f"Bearer {key}"}
    )
    session_id = session.json()["session_id"]
    sent = [
        client.chat.completions.create(
            model="tester",
            messages=[{"role": "user", "content": token}],
            extra_headers={"X-Session-Id": session_id, "Idempotency-Key": f"k-{token}"},
        )
        for _ in range(2)
    ]
    assert sent[0].id == sent[1].id  # the resend is the same turn
    assert len([r for r in fake_llm.requests if token in str(r.messages)]) == 1

    limits = await http.put(
        f"/v1/tenants/{tenant_id}/limits", json={"requests_per_minute": 2}, headers=admin
    )
    assert limits.status_code == 200, limits.text
    with pytest.raises(openai.RateLimitError) as limited:
        for _ in range(30):  # the other replica applies the new limit within its refresh
            client.models.list()
    assert int(limited.value.response.headers["retry-after"]) >= 1


async def test_a_paused_response_asks_for_approval_and_an_approval_response_continues_it(
    gateway_url: str, fake_llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    tenant_id, key = await new_tenant(http, "openai-approve")
    token = uuid.uuid4().hex
    call = ToolCall(name="calculator", arguments={"expression": "6*7"})
    script_tool_turn(fake_llm, token, call, f"approved 42 {token}")
    client = _sync(gateway_url, key)
    async with tenant_policy(tenant_id, ASK_CALCULATOR):
        paused = client.responses.create(model="tester", input=f"compute {token}")
        assert paused.status == "completed" and paused.output_text == ""
        assert [item.type for item in paused.output] == ["function_call", "mcp_approval_request"]
        request = paused.output[1]
        assert request.type == "mcp_approval_request" and request.server_label == "agentcluster"
        assert request.name == "calculator" and json.loads(request.arguments) == {
            "expression": "6*7"
        }
        assert request.id == paused.output[0].call_id  # type: ignore[union-attr]
        assert client.responses.retrieve(paused.id).output[1].type == "mcp_approval_request"

        with pytest.raises(openai.BadRequestError):  # approvals answer a previous response
            client.responses.create(
                model="tester",
                input=[
                    {
                        "type": "mcp_approval_response",
                        "approval_request_id": request.id,
                        "approve": True,
                    }
                ],
            )
        resumed = client.responses.create(
            model="tester",
            previous_response_id=paused.id,
            input=[
                {
                    "type": "mcp_approval_response",
                    "approval_request_id": request.id,
                    "approve": True,
                }
            ],
        )
        assert resumed.id == paused.id and resumed.status == "completed"
        assert [item.type for item in resumed.output] == ["function_call_output", "message"]
        assert "42" in str(resumed.output[0].output)  # type: ignore[union-attr]
        assert resumed.output_text == f"approved 42 {token}"
        with pytest.raises(openai.ConflictError):  # decided already
            client.responses.create(
                model="tester",
                previous_response_id=paused.id,
                input=[
                    {
                        "type": "mcp_approval_response",
                        "approval_request_id": request.id,
                        "approve": False,
                    }
                ],
            )
    retrieved = client.responses.retrieve(paused.id)
    assert [item.type for item in retrieved.output] == [
        "function_call",
        "function_call_output",
        "message",
    ]


async def test_a_streamed_response_asks_and_a_streamed_rejection_continues_it(
    gateway_url: str, fake_llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    tenant_id, key = await new_tenant(http, "openai-reject")
    token = uuid.uuid4().hex
    call = ToolCall(name="calculator", arguments={"expression": "6*7"})
    script_tool_turn(fake_llm, token, call, f"no sum {token}")
    client = _async(gateway_url, key)
    async with tenant_policy(tenant_id, ASK_CALCULATOR):
        stream = await client.responses.create(
            model="tester", input=f"compute {token}", stream=True
        )
        events = [event async for event in stream]
        added = [e.item.type for e in events if e.type == "response.output_item.added"]
        assert added == ["function_call", "mcp_approval_request"]
        assert events[-1].type == "response.completed"
        paused = events[-1].response  # type: ignore[union-attr]
        request = paused.output[-1]
        assert request.type == "mcp_approval_request"

        answer = {
            "type": "mcp_approval_response",
            "approval_request_id": request.id,
            "approve": False,
            "reason": "not today",
        }
        stream = await client.responses.create(
            model="tester", previous_response_id=paused.id, input=[answer], stream=True
        )
        events = [event async for event in stream]
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert done[0].type == "function_call_output"
    assert "rejected by a person: not today" in done[0].output  # type: ignore[union-attr]
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.output_text == f"no sum {token}"  # type: ignore[union-attr]


async def test_a_paused_response_can_be_cancelled(
    gateway_url: str, fake_llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    tenant_id, key = await new_tenant(http, "openai-cancel-paused")
    token = uuid.uuid4().hex
    call = ToolCall(name="calculator", arguments={"expression": "6*7"})
    script_tool_turn(fake_llm, token, call, f"never {token}")
    client = _sync(gateway_url, key)
    async with tenant_policy(tenant_id, ASK_CALCULATOR):
        paused = client.responses.create(model="tester", input=f"compute {token}")
        assert paused.output[-1].type == "mcp_approval_request"
        cancelled = client.responses.cancel(paused.id)
    assert cancelled.status == "cancelled"
    assert [item.type for item in cancelled.output] == ["function_call"]  # nothing asks any more
