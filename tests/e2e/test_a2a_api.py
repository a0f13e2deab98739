"""The A2A v1 facade (/a2a/{agent} and its agent cards), driven by the official ``a2a-sdk`` client
(card resolution, send, stream, get, list, cancel, subscribe) against the real gateway and the
fake LLM."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from a2a.client import (
    A2ACardResolver,
    A2AClientError,
    AuthInterceptor,
    Client,
    ClientConfig,
    CredentialService,
    create_client,
)
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    Task,
    TaskState,
)
from a2a.utils.errors import (
    ContentTypeNotSupportedError,
    InvalidParamsError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.struct_pb2 import Value

from agentcluster.testing.fake_llm import FakeLLM, Reply, Rule, ToolCall
from tests.e2e.conftest import ADMIN_KEY, new_tenant, script_tool_turn, tenant_policy

ASK_CALCULATOR = {"approvals": [{"tools": ["calculator"], "reason": "a person checks sums"}]}

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]


class _ApiKey(CredentialService):
    """An agentcluster API key for the card's bearer scheme (what AuthInterceptor asks for)."""

    def __init__(self, key: str) -> None:
        self.key = key

    async def get_credentials(self, security_scheme_name: str, context: object) -> str | None:
        return self.key if security_scheme_name == "bearer" else None


class _Clients:
    """Clients of the agent ``tester`` made by a test (closed at its end), each resolved from
    the agent's card, the key added per call by the SDK's AuthInterceptor from the card's
    security scheme."""

    def __init__(self, gateway_url: str) -> None:
        self.gateway_url = gateway_url
        self.made: list[tuple[Client, httpx.AsyncClient]] = []

    async def make(self, key: str, *, streaming: bool = True) -> Client:
        http = httpx.AsyncClient(timeout=180)
        client = await create_client(
            f"{self.gateway_url}/a2a/tester",
            client_config=ClientConfig(streaming=streaming, httpx_client=http),
            interceptors=[AuthInterceptor(_ApiKey(key))],
        )
        self.made.append((client, http))
        return client

    async def close(self) -> None:
        for client, http in self.made:
            await client.close()
            await http.aclose()


@pytest.fixture
async def clients(gateway_url: str) -> AsyncIterator[_Clients]:
    made = _Clients(gateway_url)
    yield made
    await made.close()


def _send(text: str, context_id: str = "", message_id: str = "") -> SendMessageRequest:
    message = Message(
        message_id=message_id or uuid.uuid4().hex,
        role=Role.ROLE_USER,
        parts=[Part(text=text)],
        context_id=context_id,
    )
    return SendMessageRequest(message=message)


async def _task(client: Client, request: SendMessageRequest) -> Task:
    """The task a non-streaming client's send answers."""
    responses = [response async for response in client.send_message(request)]
    assert len(responses) == 1 and responses[0].HasField("task")
    return responses[0].task


def _answer(task: Task) -> str:
    return "".join(part.text for artifact in task.artifacts for part in artifact.parts)


async def _event_types(http: httpx.AsyncClient, key: str, session_id: str, turns: int) -> list[str]:
    """The session's event types from GET /v1/sessions/{id}/events until ``turns`` turns have
    ended."""
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    types: list[str] = []
    ends = ("turn.completed", "turn.failed", "turn.cancelled")
    async with http.stream("GET", f"/v1/sessions/{session_id}/events", headers=headers) as events:
        assert events.status_code == 200
        async for line in events.aiter_lines():
            if line.startswith("event:"):
                types.append(line.split(":", 1)[1].strip())
            if sum(types.count(end) for end in ends) == turns:
                return types
    return types


async def test_cards_a_plain_turn_and_its_continuation_in_the_same_context(
    gateway_url: str, tenant_key: str, fake_llm: FakeLLM, http: httpx.AsyncClient, clients: _Clients
) -> None:
    resolver = A2ACardResolver(http, f"{gateway_url}/a2a/tester")
    card = await resolver.get_agent_card()
    assert card.name == "tester" and card.capabilities.streaming
    assert "tool:calculator" in [skill.id for skill in card.skills]
    assert card.security_schemes["bearer"].http_auth_security_scheme.scheme == "bearer"
    assert card.supported_interfaces[0].url == f"{gateway_url}/a2a/tester"
    default = await A2ACardResolver(http, gateway_url).get_agent_card()
    assert default.name in {"tester", "surfer", "coder", "hasty"}
    assert default.supported_interfaces[0].url == f"{gateway_url}/a2a/{default.name}"

    token = uuid.uuid4().hex
    fake_llm.script.add_rule(
        Rule(when_last_user_contains=f"first {token}", reply=Reply(content=f"one {token}"))
    )
    fake_llm.script.add_rule(
        Rule(
            when=lambda r: f"second {token}" in str(r.messages[-1])
            and f"one {token}" in str(r.messages),
            reply=Reply(content=f"two {token}"),
        )
    )
    client = await clients.make(tenant_key, streaming=False)
    first = await _task(client, _send(f"first {token}"))
    assert first.status.state == TaskState.TASK_STATE_COMPLETED
    assert _answer(first) == f"one {token}"
    assert first.history[0].parts[0].text == f"first {token}"
    second = await _task(client, _send(f"second {token}", context_id=first.context_id))
    assert (second.context_id, _answer(second)) == (first.context_id, f"two {token}")
    assert second.id != first.id

    got = await client.get_task(GetTaskRequest(id=first.id))
    assert (got.status.state, _answer(got)) == (TaskState.TASK_STATE_COMPLETED, f"one {token}")
    listed = await client.list_tasks(ListTasksRequest(context_id=first.context_id))
    assert [task.id for task in listed.tasks] == [first.id, second.id]
    # Both are ordinary turns of the session: its events show them.
    types = await _event_types(http, tenant_key, first.context_id, 2)
    assert types.count("turn.completed") == 2


async def test_a_streamed_turn_shows_its_tool_call_and_streams_the_answer(
    gateway_url: str, tenant_key: str, fake_llm: FakeLLM, http: httpx.AsyncClient, clients: _Clients
) -> None:
    token = uuid.uuid4().hex
    call = ToolCall(name="calculator", arguments={"expression": "6*7"})
    script_tool_turn(fake_llm, token, call, f"it is 42 {token}")
    client = await clients.make(tenant_key)
    events = [event async for event in client.send_message(_send(f"compute {token}"))]
    assert events[0].HasField("task")
    task = events[0].task
    assert task.status.state == TaskState.TASK_STATE_SUBMITTED
    updates = [e.status_update for e in events if e.HasField("status_update")]
    assert updates[-1].status.state == TaskState.TASK_STATE_COMPLETED
    tool_messages = [u.status.message for u in updates if u.status.message.metadata]
    kinds = [message.metadata["kind"] for message in tool_messages]
    assert kinds == ["tool_call", "tool_result"]
    assert MessageToDict(tool_messages[0].parts[0].data)["tool"] == "calculator"
    assert "42" in str(MessageToDict(tool_messages[1].parts[0].data)["result"])
    chunks = [e.artifact_update for e in events if e.HasField("artifact_update")]
    assert chunks[-1].last_chunk
    last_fresh = max(i for i, chunk in enumerate(chunks) if not chunk.append)
    text = "".join(p.text for chunk in chunks[last_fresh:] for p in chunk.artifact.parts)
    assert text == f"it is 42 {token}"

    stored = await client.get_task(GetTaskRequest(id=task.id))
    assert [m.metadata["kind"] for m in stored.history[1:]] == ["tool_call", "tool_result"]
    assert _answer(stored) == f"it is 42 {token}"
    types = await _event_types(http, tenant_key, task.context_id, 1)
    assert "tool.completed" in types and types[-1] == "turn.completed"


async def test_a_subscribed_task_is_cancelled_and_ended_tasks_refuse_both(
    gateway_url: str, tenant_key: str, fake_llm: FakeLLM, clients: _Clients
) -> None:
    token = uuid.uuid4().hex
    slow = Reply(content="too late", latency_s=60, ttft_s=60)
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=slow))
    client = await clients.make(tenant_key)
    request = _send(f"slow {token}")
    request.configuration.return_immediately = True
    polling = await clients.make(tenant_key, streaming=False)
    submitted = await _task(polling, request)
    assert submitted.status.state == TaskState.TASK_STATE_SUBMITTED

    subscribed = asyncio.Event()
    seen: list[StreamResponse] = []

    async def follow() -> None:
        async for event in client.subscribe(SubscribeToTaskRequest(id=submitted.id)):
            seen.append(event)
            subscribed.set()

    following = asyncio.create_task(follow())
    await asyncio.wait_for(subscribed.wait(), 30)
    assert seen[0].HasField("task") and seen[0].task.id == submitted.id
    cancelled = await client.cancel_task(CancelTaskRequest(id=submitted.id))
    assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
    await asyncio.wait_for(following, 30)
    assert seen[-1].status_update.status.state == TaskState.TASK_STATE_CANCELED
    got = await client.get_task(GetTaskRequest(id=submitted.id))
    assert got.status.state == TaskState.TASK_STATE_CANCELED
    with pytest.raises(TaskNotCancelableError):
        await client.cancel_task(CancelTaskRequest(id=submitted.id))
    with pytest.raises(UnsupportedOperationError):
        async for _ in client.subscribe(SubscribeToTaskRequest(id=submitted.id)):
            pass


async def test_errors_are_the_clients_typed_errors(
    gateway_url: str, tenant_key: str, fake_llm: FakeLLM, http: httpx.AsyncClient, clients: _Clients
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content="mine")))
    client = await clients.make(tenant_key, streaming=False)
    mine = await _task(client, _send(token))

    # A bad key: HTTP 401, which the client raises as its error with the response's status.
    stranger = await clients.make("not-a-key-" + uuid.uuid4().hex)
    with pytest.raises(A2AClientError) as refused:
        async for _ in stranger.send_message(_send("hi")):
            pass
    cause = refused.value.__cause__
    assert isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 401

    # Another tenant's task and context are not found.
    other = await clients.make((await new_tenant(http))[1], streaming=False)
    with pytest.raises(TaskNotFoundError):
        await other.get_task(GetTaskRequest(id=mine.id))
    with pytest.raises(TaskNotFoundError):
        await other.cancel_task(CancelTaskRequest(id=mine.id))
    with pytest.raises(TaskNotFoundError):
        await _task(other, _send("hi", context_id=mine.context_id))
    assert [t.id for t in (await other.list_tasks(ListTasksRequest())).tasks] == []

    # Malformed requests: a part the agent cannot take, an unknown task, bad JSON-RPC.
    with pytest.raises(ContentTypeNotSupportedError):
        message = Message(message_id="m", role=Role.ROLE_USER, parts=[Part(url="http://x/y")])
        await _task(client, SendMessageRequest(message=message))
    with pytest.raises(TaskNotFoundError):
        await client.get_task(GetTaskRequest(id=str(uuid.uuid4())))
    auth = {"Authorization": f"Bearer {tenant_key}", "A2A-Version": "1.0"}
    bad_json = await http.post("/a2a/tester", content=b"{not json", headers=auth)
    assert bad_json.json()["error"]["code"] == -32700
    unknown = {"jsonrpc": "2.0", "id": 1, "method": "NoSuchMethod", "params": {}}
    assert (await http.post("/a2a/tester", json=unknown, headers=auth)).json()["error"][
        "code"
    ] == -32601
    no_agent = await http.post("/a2a/no-such-agent", json=unknown, headers=auth)
    assert no_agent.status_code == 404


async def test_the_v03_method_names_and_idempotent_resends(
    gateway_url: str, tenant_key: str, fake_llm: FakeLLM, http: httpx.AsyncClient, clients: _Clients
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content="v03")))
    headers = {"Authorization": f"Bearer {tenant_key}"}  # no A2A-Version: v0.3
    message = {
        "kind": "message",
        "messageId": uuid.uuid4().hex,
        "role": "user",
        "parts": [{"kind": "text", "text": token}],
    }
    sent = await http.post(
        "/a2a/tester",
        json={
            "jsonrpc": "2.0",
            "id": "1",
            "method": "message/send",
            "params": {"message": message},
        },
        headers=headers,
    )
    task = sent.json()["result"]
    assert task["kind"] == "task" and task["status"]["state"] == "completed"
    got = await http.post(
        "/a2a/tester",
        json={"jsonrpc": "2.0", "id": "2", "method": "tasks/get", "params": {"id": task["id"]}},
        headers=headers,
    )
    assert got.json()["result"]["artifacts"][0]["parts"][0]["text"] == "v03"

    # The message id is the idempotency key: a resend to the context is the same task.
    again = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when_last_user_contains=again, reply=Reply(content="once")))
    client = await clients.make(tenant_key, streaming=False)
    request = _send(again, context_id=task["contextId"], message_id=f"m-{again}")
    tasks = [await _task(client, request) for _ in range(2)]
    assert tasks[0].id == tasks[1].id and _answer(tasks[1]) == "once"
    assert len([r for r in fake_llm.requests if again in str(r.messages)]) == 1


async def test_budgets_and_rate_limits_reach_the_client(
    fake_llm: FakeLLM, http: httpx.AsyncClient, clients: _Clients
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    # A spent daily token budget fails the turn: the task fails and says why.
    budget_tenant, budget_key = await new_tenant(http, "a2a-budget")
    limits = await http.put(
        f"/v1/tenants/{budget_tenant}/limits", json={"tokens_per_day": 1}, headers=admin
    )
    assert limits.status_code == 200, limits.text
    failed = await _task(await clients.make(budget_key, streaming=False), _send("over budget"))
    assert failed.status.state == TaskState.TASK_STATE_FAILED
    assert "budget" in failed.status.message.parts[0].text

    # Past the tenant's requests per minute: HTTP 429 with Retry-After.
    tenant_id, key = await new_tenant(http, "a2a-limits")
    client = await clients.make(key, streaming=False)
    limits = await http.put(
        f"/v1/tenants/{tenant_id}/limits", json={"requests_per_minute": 2}, headers=admin
    )
    assert limits.status_code == 200, limits.text
    with pytest.raises(A2AClientError) as limited:
        for _ in range(30):  # the other replica applies the new limit within its refresh
            await client.list_tasks(ListTasksRequest())
    cause = limited.value.__cause__
    assert isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 429
    assert int(cause.response.headers["retry-after"]) >= 1


def _to_task(task: Task, part: Part) -> SendMessageRequest:
    """A user's message to ``task`` (an answer to its input-required status)."""
    message = Message(
        message_id=uuid.uuid4().hex,
        role=Role.ROLE_USER,
        parts=[part],
        context_id=task.context_id,
        task_id=task.id,
    )
    return SendMessageRequest(message=message)


def _data(payload: dict[str, object]) -> Part:
    return Part(data=ParseDict(payload, Value()))


def _waiting(message: Message) -> list[dict[str, object]]:
    """The waiting calls an input-required status message lists in its data part."""
    [data] = [MessageToDict(part)["data"] for part in message.parts if part.HasField("data")]
    return list(data["approvals"])


async def test_a_paused_streamed_task_is_input_required_and_an_approval_resumes_it(
    gateway_url: str, fake_llm: FakeLLM, http: httpx.AsyncClient, clients: _Clients
) -> None:
    tenant_id, key = await new_tenant(http, "a2a-approve")
    token = uuid.uuid4().hex
    call = ToolCall(name="calculator", arguments={"expression": "6*7"})
    script_tool_turn(fake_llm, token, call, f"it is 42 {token}")
    client = await clients.make(key)
    async with tenant_policy(tenant_id, ASK_CALCULATOR):
        events = [event async for event in client.send_message(_send(f"compute {token}"))]
        task = events[0].task
        last = events[-1].status_update.status
        assert last.state == TaskState.TASK_STATE_INPUT_REQUIRED  # the stream ends there
        assert last.message.metadata["kind"] == "approval_request"
        [waiting] = _waiting(last.message)
        assert (waiting["tool"], waiting["arguments"]) == ("calculator", {"expression": "6*7"})
        assert waiting["reason"] == "a person checks sums"
        assert waiting["decisions"] == ["approve", "edit", "reject"]
        stored = await client.get_task(GetTaskRequest(id=task.id))
        assert stored.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
        assert _waiting(stored.status.message) == [waiting]

        decision = {"approvals": [{"tool_call_id": waiting["tool_call_id"], "decision": "approve"}]}
        resumed = [event async for event in client.send_message(_to_task(task, _data(decision)))]
        assert resumed[0].HasField("task") and resumed[0].task.id == task.id
        assert resumed[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
        results = [
            MessageToDict(e.status_update.status.message.parts[0].data)
            for e in resumed
            if e.HasField("status_update") and e.status_update.status.message.metadata
        ]
        assert [r["tool"] for r in results] == ["calculator"] and "42" in str(results[0])
        done = await client.get_task(GetTaskRequest(id=task.id))
        assert done.status.state == TaskState.TASK_STATE_COMPLETED
        assert _answer(done) == f"it is 42 {token}"
        # The task has ended: it takes no more messages.
        with pytest.raises(UnsupportedOperationError):
            async for _ in client.send_message(_to_task(task, _data(decision))):
                pass


async def test_a_waiting_task_is_rejected_with_a_plain_text_answer(
    gateway_url: str, fake_llm: FakeLLM, http: httpx.AsyncClient, clients: _Clients
) -> None:
    tenant_id, key = await new_tenant(http, "a2a-reject")
    token = uuid.uuid4().hex
    call = ToolCall(name="calculator", arguments={"expression": "6*7"})
    script_tool_turn(fake_llm, token, call, f"no sum then {token}")
    client = await clients.make(key, streaming=False)
    async with tenant_policy(tenant_id, ASK_CALCULATOR):
        paused = await _task(client, _send(f"compute {token}"))
        assert paused.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
        with pytest.raises(InvalidParamsError):  # not a decision
            await _task(client, _to_task(paused, Part(text="maybe later")))
        done = await _task(client, _to_task(paused, Part(text="reject: too risky")))
    assert done.id == paused.id and done.status.state == TaskState.TASK_STATE_COMPLETED
    assert _answer(done) == f"no sum then {token}"
    [result] = [m for m in done.history[1:] if m.metadata["kind"] == "tool_result"]
    assert "rejected by a person: too risky" in str(MessageToDict(result.parts[0].data))
    types = await _event_types(http, key, paused.context_id, 1)
    assert "tool.approval_decided" in types and types[-1] == "turn.completed"


async def _v03_stream(http: httpx.AsyncClient, key: str, message: dict[str, object]) -> list[dict]:
    """The results of a v0.3 ``message/stream`` (no A2A-Version header), in order."""
    request = {
        "jsonrpc": "2.0",
        "id": "s",
        "method": "message/stream",
        "params": {"message": message},
    }
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    results = []
    async with http.stream("POST", "/a2a/tester", json=request, headers=headers) as stream:
        assert stream.status_code == 200
        async for line in stream.aiter_lines():
            if line.startswith("data:"):
                results.append(json.loads(line[5:])["result"])
    return results


async def test_v03_message_stream_ends_input_required_and_message_send_answers_it(
    gateway_url: str, fake_llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    tenant_id, key = await new_tenant(http, "a2a-v03-approve")
    token = uuid.uuid4().hex
    call = ToolCall(name="calculator", arguments={"expression": "6*7"})
    script_tool_turn(fake_llm, token, call, f"v03 sum {token}")
    text = {"kind": "text", "text": f"compute {token}"}
    message = {"kind": "message", "messageId": uuid.uuid4().hex, "role": "user", "parts": [text]}
    async with tenant_policy(tenant_id, ASK_CALCULATOR):
        results = await _v03_stream(http, key, message)
        last = results[-1]
        assert last["kind"] == "status-update" and last["status"]["state"] == "input-required"
        [data] = [p["data"] for p in last["status"]["message"]["parts"] if p["kind"] == "data"]
        [waiting] = data["approvals"]
        answer = {
            "kind": "message",
            "messageId": uuid.uuid4().hex,
            "role": "user",
            "taskId": last["taskId"],
            "contextId": last["contextId"],
            "parts": [
                {
                    "kind": "data",
                    "data": {
                        "approvals": [
                            {"tool_call_id": waiting["tool_call_id"], "decision": "approve"}
                        ]
                    },
                }
            ],
        }
        sent = await http.post(
            "/a2a/tester",
            json={
                "jsonrpc": "2.0",
                "id": "1",
                "method": "message/send",
                "params": {"message": answer},
            },
            headers={"Authorization": f"Bearer {key}"},
        )
    task = sent.json()["result"]
    assert task["id"] == last["taskId"] and task["status"]["state"] == "completed"
    assert task["artifacts"][0]["parts"][0]["text"] == f"v03 sum {token}"


async def test_an_input_required_task_can_be_cancelled(
    gateway_url: str, fake_llm: FakeLLM, http: httpx.AsyncClient, clients: _Clients
) -> None:
    tenant_id, key = await new_tenant(http, "a2a-cancel-waiting")
    token = uuid.uuid4().hex
    call = ToolCall(name="calculator", arguments={"expression": "6*7"})
    script_tool_turn(fake_llm, token, call, f"never {token}")
    client = await clients.make(key, streaming=False)
    async with tenant_policy(tenant_id, ASK_CALCULATOR):
        paused = await _task(client, _send(f"compute {token}"))
        assert paused.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
        listed = await client.list_tasks(
            ListTasksRequest(
                status=TaskState.TASK_STATE_INPUT_REQUIRED, context_id=paused.context_id
            )
        )
        assert [task.id for task in listed.tasks] == [paused.id]
        cancelled = await client.cancel_task(CancelTaskRequest(id=paused.id))
    assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
    with pytest.raises(UnsupportedOperationError):  # ended: no more answers
        await _task(client, _to_task(paused, Part(text="approve")))


async def test_two_waiting_calls_are_answered_one_message_at_a_time(
    gateway_url: str, fake_llm: FakeLLM, http: httpx.AsyncClient, clients: _Clients
) -> None:
    tenant_id, key = await new_tenant(http, "a2a-two-calls")
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
    client = await clients.make(key, streaming=False)
    async with tenant_policy(tenant_id, ASK_CALCULATOR):
        paused = await _task(client, _send(f"compute {token}"))
        first, second = _waiting(paused.status.message)
        one = {"approvals": [{"tool_call_id": first["tool_call_id"], "decision": "approve"}]}
        still = await _task(client, _to_task(paused, _data(one)))
        assert still.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
        assert _waiting(still.status.message) == [second]
        edit = {"tool_call_id": second["tool_call_id"], "decision": "edit"}
        edit["arguments"] = {"expression": "3+3"}
        done = await _task(client, _to_task(paused, _data({"approvals": [edit]})))
    assert done.status.state == TaskState.TASK_STATE_COMPLETED
    results = [MessageToDict(m.parts[0].data) for m in done.history[1:]]
    outputs = [str(r["result"]) for r in results if "result" in r and r.get("ok")]
    assert len(outputs) == 2 and "6" in outputs[1]  # the edited 3+3 ran, not 2+2
    assert not any("4" in output for output in outputs)
