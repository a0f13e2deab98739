"""The LangGraph-compatible API (/langgraph), driven by the official ``langgraph-sdk`` (async and
sync clients) against the real gateway and the fake LLM."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client, get_sync_client
from langgraph_sdk.client import LangGraphClient, SyncLangGraphClient
from langgraph_sdk.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    RateLimitError,
    UnprocessableEntityError,
)

from agentcluster.gateway._langgraph_messages import assistant_id
from agentcluster.testing.fake_llm import FakeLLM, Reply, Rule, ToolCall
from tests.e2e.conftest import ADMIN_KEY, new_tenant, script_tool_turn, tenant_policy

ASK_CALCULATOR = {"approvals": [{"tools": ["calculator"], "reason": "a person checks sums"}]}

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _async(gateway_url: str, key: str) -> LangGraphClient:
    return get_client(url=f"{gateway_url}/langgraph", api_key=key, timeout=120)


def _sync(gateway_url: str, key: str) -> SyncLangGraphClient:
    return get_sync_client(url=f"{gateway_url}/langgraph", api_key=key, timeout=120)


def _answer(fake_llm: FakeLLM, token: str, text: str) -> None:
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content=text)))


def _human(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


async def _event_types(
    http: httpx.AsyncClient, key: str, session_id: str, turns: int = 1
) -> list[str]:
    """The session's event types from GET /v1/sessions/{id}/events, until ``turns`` turns
    have ended."""
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    types: list[str] = []
    ends = ("turn.completed", "turn.cancelled", "turn.failed")
    async with http.stream("GET", f"/v1/sessions/{session_id}/events", headers=headers) as events:
        assert events.status_code == 200
        async for line in events.aiter_lines():
            if line.startswith("event:"):
                types.append(line.split(":", 1)[1].strip())
            if sum(types.count(end) for end in ends) == turns:
                return types
    return types


async def test_assistants_threads_and_turns_continued_in_the_same_thread(
    gateway_url: str, tenant_key: str, fake_llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    token = uuid.uuid4().hex
    _answer(fake_llm, f"first {token}", f"hello {token}")
    fake_llm.script.add_rule(
        Rule(
            when=lambda r: f"again {token}" in str(r.messages[-1])
            and f"hello {token}" in str(r.messages),
            reply=Reply(content=f"remembered {token}"),
        )
    )
    client = _async(gateway_url, tenant_key)
    assistants = await client.assistants.search(limit=100)
    tester = next(a for a in assistants if a["graph_id"] == "tester")
    assert tester["assistant_id"] == assistant_id("tester")
    assert (await client.assistants.get(tester["assistant_id"]))["name"] == "tester"
    schemas = await client.assistants.get_schemas("tester")
    assert "messages" in schemas["input_schema"]["properties"]
    graph = await client.assistants.get_graph(tester["assistant_id"])
    assert {node["id"] for node in graph["nodes"]} >= {"agent", "tools"}

    thread = await client.threads.create(graph_id="tester", metadata={"suite": token})
    thread_id = thread["thread_id"]
    first = await client.runs.wait(
        thread_id, tester["assistant_id"], input=_human(f"first {token}")
    )
    assert isinstance(first, dict) and first["messages"][-1]["content"] == f"hello {token}"
    assert [m["type"] for m in first["messages"]] == ["human", "ai"]
    again = await client.runs.wait(thread_id, "tester", input=_human(f"again {token}"))
    assert isinstance(again, dict) and again["messages"][-1]["content"] == f"remembered {token}"

    fetched = await client.threads.get(thread_id)
    assert fetched["status"] == "idle" and fetched["metadata"]["suite"] == token
    assert fetched["values"] is not None and fetched["values"]["messages"] == again["messages"]
    state = await client.threads.get_state(thread_id)
    assert state["values"]["messages"] == again["messages"]
    history = await client.threads.get_history(thread_id, limit=10)
    assert [len(h["values"]["messages"]) for h in history] == [4, 2]  # newest first
    found = await client.threads.search(metadata={"suite": token})
    assert [t["thread_id"] for t in found] == [thread_id]
    runs = await client.runs.list(thread_id)
    assert [run["status"] for run in runs] == ["success", "success"]
    assert (await client.runs.get(thread_id, runs[0]["run_id"]))["status"] == "success"
    # The facade's turns are ordinary turns of the session: its events show them.
    types = await _event_types(http, tenant_key, thread_id, turns=2)
    assert types.count("turn.completed") == 2
    stateless = await client.runs.wait(None, "tester", input=_human(f"first {token}"))
    assert isinstance(stateless, dict) and stateless["messages"][-1]["content"] == f"hello {token}"
    sync_client = _sync(gateway_url, tenant_key)  # the sync client: a plain turn, stateless
    synced = sync_client.runs.wait(None, tester["assistant_id"], input=_human(f"first {token}"))
    assert isinstance(synced, dict) and synced["messages"][-1]["content"] == f"hello {token}"
    sync_client.close()

    await client.threads.delete(thread_id)
    with pytest.raises(NotFoundError):
        await client.threads.get(thread_id)
    await client.aclose()


async def test_a_streamed_tool_turn_in_each_stream_mode_resumable_by_event_id(
    gateway_url: str, tenant_key: str, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    call = ToolCall(name="calculator", arguments={"expression": "6*7"})
    script_tool_turn(fake_llm, token, call, f"it is 42 {token}")
    client = _sync(gateway_url, tenant_key)
    thread = client.threads.create(graph_id="tester")
    thread_id = thread["thread_id"]
    modes = ["values", "updates", "messages-tuple", "messages", "events"]
    parts = list(
        client.runs.stream(thread_id, "tester", input=_human(f"compute {token}"), stream_mode=modes)
    )
    assert parts[0].event == "metadata"
    run_id = parts[0].data["run_id"]
    assert all(part.id for part in parts[1:])  # every event but the first has an id
    tuples = [part.data for part in parts if part.event == "messages"]
    ai_text = "".join(message["content"] for message, _meta in tuples if message["type"] != "tool")
    assert ai_text.endswith(f"it is 42 {token}")
    tool = next(message for message, _meta in tuples if message["type"] == "tool")
    assert "42" in tool["content"]
    calls = [tc for message, _ in tuples for tc in message.get("tool_calls", [])]
    assert calls[0]["name"] == "calculator" and calls[0]["id"] == tool["tool_call_id"]
    updates = [list(part.data) for part in parts if part.event == "updates"]
    assert updates == [["agent"], ["tools"], ["agent"]]
    values = [part.data for part in parts if part.event == "values"]
    assert [m["type"] for m in values[-1]["messages"]] == ["human", "ai", "tool", "ai"]
    assert values[-1]["messages"] == client.threads.get_state(thread_id)["values"]["messages"]
    kinds = [part.data["event"] for part in parts if part.event == "events"]
    assert kinds[0] == "on_chain_start" and "on_tool_end" in kinds
    assert any(part.event == "messages/complete" for part in parts)

    # Joining the run's stream after an event id replays the rest of it from the store.
    value_ids = [part.id for part in parts if part.event == "values"]
    rest = list(
        client.runs.join_stream(thread_id, run_id, stream_mode="values", last_event_id=value_ids[1])
    )
    replayed = [part for part in rest if part.event == "values"]
    assert [part.id for part in replayed] == value_ids[2:]
    assert replayed[-1].data == values[-1]
    assert client.runs.join(thread_id, run_id) == values[-1]
    client.close()

    # The async client streams the next turn of the same thread, token by token.
    later = uuid.uuid4().hex
    _answer(fake_llm, later, f"streamed again {later}")
    async_client = _async(gateway_url, tenant_key)
    chunks = [
        part.data[0]["content"]
        async for part in async_client.runs.stream(
            thread_id, "tester", input=_human(later), stream_mode="messages-tuple"
        )
        if part.event == "messages"
    ]
    assert "".join(chunks) == f"streamed again {later}"
    state = await async_client.threads.get_state(thread_id)
    assert len(state["values"]["messages"]) == 6  # both turns' messages
    await async_client.aclose()


async def test_a_cancel_and_multitask_reject_and_enqueue(
    gateway_url: str, tenant_key: str, fake_llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(
        Rule(
            when_last_user_contains=f"slow {token}",
            reply=Reply(content="too late", latency_s=60, ttft_s=60),
        )
    )
    _answer(fake_llm, f"queued {token}", f"after the cancel {token}")
    client = _async(gateway_url, tenant_key)
    thread_id = (await client.threads.create(graph_id="tester"))["thread_id"]
    slow = await client.runs.create(thread_id, "tester", input=_human(f"slow {token}"))
    assert slow["status"] == "pending" and slow["thread_id"] == thread_id
    with pytest.raises(ConflictError):
        await client.runs.create(
            thread_id, "tester", input=_human("rejected"), multitask_strategy="reject"
        )
    assert (await client.threads.get(thread_id))["status"] == "busy"
    queued = await client.runs.create(thread_id, "tester", input=_human(f"queued {token}"))
    await client.runs.cancel(thread_id, slow["run_id"], wait=True)
    assert (await client.runs.get(thread_id, slow["run_id"]))["status"] == "interrupted"
    values = await client.runs.join(thread_id, queued["run_id"])
    assert values["messages"][-1]["content"] == f"after the cancel {token}"
    types = await _event_types(http, tenant_key, thread_id, turns=2)
    assert "turn.cancelled" in types and "turn.completed" in types
    # interrupt: the open turn is cancelled at once and the new one runs.
    _answer(fake_llm, f"interrupting {token}", f"interrupted it {token}")
    slower = await client.runs.create(thread_id, "tester", input=_human(f"slow {token}"))
    interrupting = await client.runs.wait(
        thread_id, "tester", input=_human(f"interrupting {token}"), multitask_strategy="interrupt"
    )
    assert isinstance(interrupting, dict)
    assert interrupting["messages"][-1]["content"] == f"interrupted it {token}"
    assert (await client.runs.get(thread_id, slower["run_id"]))["status"] == "interrupted"
    await client.aclose()


async def test_errors_are_the_sdks_typed_exceptions(
    gateway_url: str, tenant_key: str, fake_llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    token = uuid.uuid4().hex
    _answer(fake_llm, token, f"mine {token}")
    client = _async(gateway_url, tenant_key)
    thread_id = (await client.threads.create(graph_id="tester"))["thread_id"]
    await client.runs.wait(thread_id, "tester", input=_human(token))

    with pytest.raises(AuthenticationError):
        await _async(gateway_url, "not-a-key-" + uuid.uuid4().hex).threads.search()
    bearer = await http.post(
        "/langgraph/threads/search", json={}, headers={"Authorization": f"Bearer {tenant_key}"}
    )
    assert bearer.status_code == 200  # the native API's bearer header works here too

    other = _async(gateway_url, (await new_tenant(http))[1])
    with pytest.raises(NotFoundError):
        await other.threads.get(thread_id)
    with pytest.raises(NotFoundError):
        await other.runs.create(thread_id, "tester", input=_human("not yours"))
    # runs.wait reads its answer as a stream: the SDK raises httpx's HTTPStatusError there.
    with pytest.raises(httpx.HTTPStatusError) as not_yours:
        await other.runs.wait(thread_id, "tester", input=_human("not yours"))
    assert not_yours.value.response.status_code == 404
    assert thread_id not in [t["thread_id"] for t in await other.threads.search(limit=100)]

    with pytest.raises(UnprocessableEntityError):
        await client.runs.create(thread_id, "tester", input={"messages": []})
    with pytest.raises(UnprocessableEntityError):
        await client.runs.create(thread_id, "tester", input=_human("x"), interrupt_before=["tools"])
    with pytest.raises(NotFoundError):
        await client.runs.create(thread_id, "no-such-agent", input=_human("x"))
    with pytest.raises(httpx.HTTPStatusError) as malformed_wait:
        await client.runs.wait(thread_id, "tester", input={"messages": []})
    assert malformed_wait.value.response.status_code == 422
    malformed = await http.post(
        "/langgraph/threads", json={"nonsense": 1}, headers={"x-api-key": tenant_key}
    )
    assert malformed.status_code == 422 and "nonsense" in malformed.json()["detail"]
    await client.aclose()
    await other.aclose()


async def test_the_tenants_rate_limit_is_the_sdks_rate_limit_error(
    gateway_url: str, http: httpx.AsyncClient
) -> None:
    tenant_id, key = await new_tenant(http, "langgraph-limits")
    limits = await http.put(
        f"/v1/tenants/{tenant_id}/limits",
        json={"requests_per_minute": 2},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert limits.status_code == 200, limits.text
    client = _async(gateway_url, key)
    with pytest.raises(RateLimitError) as limited:
        for _ in range(30):  # the other replica applies the new limit within its refresh
            await client.assistants.search()
    assert int(limited.value.response.headers["retry-after"]) >= 1
    await client.aclose()


async def test_an_interrupted_run_is_shown_as_langgraph_shows_it_and_resumed_by_command(
    gateway_url: str, fake_llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    tenant_id, key = await new_tenant(http, "langgraph-approve")
    token = uuid.uuid4().hex
    call = ToolCall(name="calculator", arguments={"expression": "6*7"})
    script_tool_turn(fake_llm, token, call, f"approved 42 {token}")
    client = _async(gateway_url, key)
    async with tenant_policy(tenant_id, ASK_CALCULATOR):
        thread_id = (await client.threads.create(graph_id="tester"))["thread_id"]
        paused = await client.runs.wait(thread_id, "tester", input=_human(f"compute {token}"))
        assert isinstance(paused, dict)
        [interrupt] = paused["__interrupt__"]
        asked = interrupt["value"]
        assert (asked["tool"], asked["arguments"]) == ("calculator", {"expression": "6*7"})
        assert (
            asked["reason"] == "a person checks sums" and interrupt["id"] == asked["tool_call_id"]
        )
        assert [m["type"] for m in paused["messages"]] == ["human", "ai"]

        thread = await client.threads.get(thread_id)
        [run] = await client.runs.list(thread_id)
        assert thread["status"] == "interrupted" and run["status"] == "interrupted"
        assert thread["interrupts"] == {run["run_id"]: [interrupt]}
        state = await client.threads.get_state(thread_id)
        assert state["interrupts"] == [interrupt] and state["next"] == ["tools"]
        assert state["tasks"][0]["interrupts"] == [interrupt]
        joined = await client.runs.join(thread_id, run["run_id"])  # at once: it waits for a person
        assert isinstance(joined, dict) and joined["__interrupt__"] == [interrupt]
        assert [t["thread_id"] for t in await client.threads.search(status="interrupted")] == [
            thread_id
        ]

        resumed = await client.runs.wait(
            thread_id, "tester", command={"resume": {interrupt["id"]: "approve"}}
        )
        assert isinstance(resumed, dict) and "__interrupt__" not in resumed
        assert [m["type"] for m in resumed["messages"]] == ["human", "ai", "tool", "ai"]
        assert resumed["messages"][-1]["content"] == f"approved 42 {token}"
        assert "42" in str(resumed["messages"][2]["content"])
        thread = await client.threads.get(thread_id)
        assert thread["status"] == "idle" and thread["interrupts"] == {}
        assert [r["status"] for r in await client.runs.list(thread_id)] == ["success"]
        with pytest.raises(ConflictError):  # nothing waits any more
            await client.runs.create(thread_id, "tester", command={"resume": "approve"})
    await client.aclose()


async def test_a_streamed_run_ends_with_its_interrupt_and_a_streamed_resume_rejects(
    gateway_url: str, fake_llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    tenant_id, key = await new_tenant(http, "langgraph-reject")
    token = uuid.uuid4().hex
    call = ToolCall(name="calculator", arguments={"expression": "6*7"})
    script_tool_turn(fake_llm, token, call, f"no sum {token}")
    client = _async(gateway_url, key)
    modes: list[Any] = ["values", "updates"]
    async with tenant_policy(tenant_id, ASK_CALCULATOR):
        thread_id = (await client.threads.create(graph_id="tester"))["thread_id"]
        parts = [
            part
            async for part in client.runs.stream(
                thread_id, "tester", input=_human(f"compute {token}"), stream_mode=modes
            )
        ]
        updates = [p.data for p in parts if p.event == "updates"]
        values = [p.data for p in parts if p.event == "values"]
        [interrupt] = updates[-1]["__interrupt__"]
        assert values[-1]["__interrupt__"] == [interrupt]
        assert interrupt["value"]["tool"] == "calculator"

        resume = {"resume": {"type": "reject", "message": "not today"}}
        parts = [
            part
            async for part in client.runs.stream(
                thread_id, "tester", command=resume, stream_mode=modes
            )
        ]
    assert parts[0].event == "metadata"
    final = [p.data for p in parts if p.event == "values"][-1]
    assert "__interrupt__" not in final
    assert [m["type"] for m in final["messages"]] == ["human", "ai", "tool", "ai"]
    assert "rejected by a person: not today" in str(final["messages"][2]["content"])
    assert final["messages"][-1]["content"] == f"no sum {token}"
    ids = [m["id"] for m in final["messages"]]
    assert len(set(ids)) == len(ids)
    # The thread's state says the same as the stream.
    state = await client.threads.get_state(thread_id)
    assert [m["id"] for m in state["values"]["messages"]] == ids
    await client.aclose()


async def test_two_interrupts_resumed_one_at_a_time(
    gateway_url: str, fake_llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    tenant_id, key = await new_tenant(http, "langgraph-two-calls")
    token = uuid.uuid4().hex
    calls = [
        ToolCall(name="calculator", arguments={"expression": "1+1"}),
        ToolCall(name="calculator", arguments={"expression": "2+2"}),
    ]
    fake_llm.script.add_rule(
        Rule(
            when=lambda r: token in str(r.messages) and r.messages[-1]["role"] == "tool",
            reply=Reply(content=f"both done {token}"),
        )
    )
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(tool_calls=calls)))
    client = _async(gateway_url, key)
    async with tenant_policy(tenant_id, ASK_CALCULATOR):
        thread_id = (await client.threads.create(graph_id="tester"))["thread_id"]
        paused = await client.runs.wait(thread_id, "tester", input=_human(f"compute {token}"))
        assert isinstance(paused, dict)
        first, second = paused["__interrupt__"]
        parts = [
            part
            async for part in client.runs.stream(
                thread_id,
                "tester",
                command={"resume": {first["id"]: "approve"}},
                stream_mode=["values", "updates"],
            )
        ]
        assert [p.event for p in parts] == ["metadata", "updates", "values"]
        assert parts[-1].data["__interrupt__"] == [second]  # still interrupted by the other
        done = await client.runs.wait(
            thread_id, "tester", command={"resume": {"decisions": [{"type": "reject"}]}}
        )
    assert isinstance(done, dict) and "__interrupt__" not in done
    assert [m["type"] for m in done["messages"]] == ["human", "ai", "tool", "tool", "ai"]
    assert "rejected by a person" in str(done["messages"][3]["content"])
    assert done["messages"][-1]["content"] == f"both done {token}"
    await client.aclose()
