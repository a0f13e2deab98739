"""Human approval of tool calls through the real gateway: a tenant's policy asks a person before
the calculator runs; the turn pauses durably, a person approves, edits or rejects it (or the
request expires), and the turn goes on, also after its host was killed. Tenants are apart."""

from __future__ import annotations

import json
import os
import signal
import uuid
from typing import Any

import httpx
import pytest
import ray

from agentcluster.config import Settings
from agentcluster.testing.fake_llm import FakeLLM, RecordedRequest, Reply, Rule, ToolCall
from tests.conftest import eventually
from tests.e2e.conftest import ADMIN_KEY, new_tenant, tenant_policy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PROBLEMS = "https://agentcluster.dev/problems/"
ASK_CALCULATOR = {"approvals": [{"tools": ["calculator"], "reason": "sums need a second look"}]}
_OUTCOMES = {"turn.completed", "turn.failed", "turn.cancelled", "turn.awaiting_approval"}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _tool_results(request: RecordedRequest) -> Reply:
    """Answers with what the tools returned, as the model saw it."""
    results = [str(m.get("content")) for m in request.messages if m.get("role") == "tool"]
    return Reply(content="tools said: " + " | ".join(results))


def _script(fake_llm: FakeLLM, token: str, *calls: ToolCall) -> None:
    """For a message with ``token`` the model calls ``calls``, then answers with their results."""
    fake_llm.script.add_rule(
        Rule(
            when=lambda r: token in str(r.messages) and r.messages[-1]["role"] == "tool",
            reply=_tool_results,
        )
    )
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(tool_calls=calls)))


def _call(expression: str) -> ToolCall:
    return ToolCall(name="calculator", arguments={"expression": expression})


async def _session(http: httpx.AsyncClient, key: str, agent: str = "tester") -> str:
    response = await http.post("/v1/sessions", json={"agent": agent}, headers=_auth(key))
    assert response.status_code == 201, response.text
    return str(response.json()["session_id"])


async def _ask(http: httpx.AsyncClient, key: str, session_id: str, content: str) -> dict[str, Any]:
    response = await http.post(
        f"/v1/sessions/{session_id}/messages",
        params={"wait": "true"},
        json={"content": content},
        headers=_auth(key),
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _pending(http: httpx.AsyncClient, key: str, session_id: str) -> list[dict[str, Any]]:
    response = await http.get(f"/v1/sessions/{session_id}/approvals", headers=_auth(key))
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def _decide(
    http: httpx.AsyncClient, key: str, session_id: str, call_id: str, **body: Any
) -> httpx.Response:
    return await http.post(
        f"/v1/sessions/{session_id}/approvals/{call_id}", json=body, headers=_auth(key)
    )


async def _events_until_end(
    http: httpx.AsyncClient, key: str, session_id: str, turn_id: str, after: int = 0
) -> list[dict[str, Any]]:
    """The session's events after ``after``, up to the turn's next end (or pause)."""
    events: list[dict[str, Any]] = []
    async with http.stream(
        "GET", f"/v1/sessions/{session_id}/events", params={"after": after}, headers=_auth(key)
    ) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                event = json.loads(line.removeprefix("data:"))
                if "seq" not in event:
                    continue  # a delta
                events.append(event)
                if event.get("turn_id") == turn_id and event["type"] in _OUTCOMES:
                    return events
    raise AssertionError(f"the stream ended before turn {turn_id} ended")


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


async def _paused_turn(
    http: httpx.AsyncClient, fake_llm: FakeLLM, key: str, session_id: str, *calls: ToolCall
) -> tuple[dict[str, Any], str]:
    """Sends a message whose model calls ``calls`` and returns the paused turn and the token."""
    token = uuid.uuid4().hex
    _script(fake_llm, token, *calls)
    turn = await _ask(http, key, session_id, f"compute {token}")
    assert turn["status"] == "awaiting_approval", turn
    return turn, token


async def test_an_approved_call_runs_and_the_turn_completes(
    http: httpx.AsyncClient, fake_llm: FakeLLM
) -> None:
    tenant_id, key = await new_tenant(http)
    async with tenant_policy(tenant_id, ASK_CALCULATOR):
        session_id = await _session(http, key)
        turn, _token = await _paused_turn(http, fake_llm, key, session_id, _call("6*7"))
        (call_id,) = turn["awaiting_approval"]
        session = await http.get(f"/v1/sessions/{session_id}", headers=_auth(key))
        assert session.json()["status"] == "awaiting_approval"
        (pending,) = await _pending(http, key, session_id)
        assert pending["tool_call_id"] == call_id and pending["status"] == "pending"
        assert (pending["tool"], pending["arguments"]) == ("calculator", {"expression": "6*7"})
        assert pending["reason"] == "sums need a second look"
        assert pending["decisions"] == ["approve", "edit", "reject"]
        assert pending["expires_at"] is not None
        paused = await _events_until_end(http, key, session_id, turn["turn_id"])
        # Nothing ran: the call was asked for, then the turn paused.
        assert _types(paused)[-3:] == [
            "tool.requested",
            "tool.approval_requested",
            "turn.awaiting_approval",
        ]
        assert "tool.completed" not in _types(paused)

        decided = await _decide(http, key, session_id, call_id, decision="approve")
        assert decided.status_code == 200, decided.text
        assert decided.json()["status"] == "approved"
        assert decided.json()["decided_by"].startswith("key:")
        rest = await _events_until_end(
            http, key, session_id, turn["turn_id"], after=paused[-1]["seq"]
        )
        assert _types(rest) == [
            "tool.approval_decided",
            "turn.started",
            "tool.decided",
            "tool.completed",
            "llm.completed",
            "turn.completed",
        ]
        assert rest[1]["resumed"] is True and rest[1]["attempt"] == 1  # the same attempt
        assert rest[3]["ok"] is True and rest[3]["result"]["value"] == 42
        assert rest[-1]["content"] == 'tools said: {"expression": "6*7", "value": 42}'
        session = await http.get(f"/v1/sessions/{session_id}", headers=_auth(key))
        assert session.json()["status"] == "active"
        assert await _pending(http, key, session_id) == []
        again = await _decide(http, key, session_id, call_id, decision="reject")
        assert again.status_code == 409
        assert again.json()["type"] == PROBLEMS + "approval-not-pending"


async def test_an_edited_call_runs_with_the_new_arguments(
    http: httpx.AsyncClient, fake_llm: FakeLLM
) -> None:
    tenant_id, key = await new_tenant(http)
    async with tenant_policy(tenant_id, ASK_CALCULATOR):
        session_id = await _session(http, key)
        turn, _token = await _paused_turn(http, fake_llm, key, session_id, _call("6*7"))
        (call_id,) = turn["awaiting_approval"]
        missing = await _decide(http, key, session_id, call_id, decision="edit")
        assert missing.status_code == 422  # edit needs the arguments; nothing decided
        assert (await _pending(http, key, session_id))[0]["status"] == "pending"
        edited = await _decide(
            http, key, session_id, call_id, decision="edit", arguments={"expression": "1+1"}
        )
        assert edited.status_code == 200, edited.text
        assert edited.json()["status"] == "edited"
        assert edited.json()["edited_arguments"] == {"expression": "1+1"}
        events = await _events_until_end(http, key, session_id, turn["turn_id"], after=0)
        while events[-1]["type"] != "turn.completed":
            events += await _events_until_end(
                http, key, session_id, turn["turn_id"], after=events[-1]["seq"]
            )
        decided = [e for e in events if e["type"] == "tool.approval_decided"]
        assert decided[0]["decision"] == "edit"
        assert decided[0]["arguments"] == {"expression": "1+1"}
        assert events[-1]["content"] == 'tools said: {"expression": "1+1", "value": 2}'


async def test_a_rejected_call_does_not_run_and_the_model_reads_why(
    http: httpx.AsyncClient, fake_llm: FakeLLM
) -> None:
    tenant_id, key = await new_tenant(http)
    async with tenant_policy(tenant_id, ASK_CALCULATOR):
        session_id = await _session(http, key)
        turn, _token = await _paused_turn(http, fake_llm, key, session_id, _call("6*7"))
        (call_id,) = turn["awaiting_approval"]
        rejected = await _decide(
            http, key, session_id, call_id, decision="reject", message="not today"
        )
        assert rejected.status_code == 200, rejected.text
        assert rejected.json()["status"] == "rejected"
        paused = await _events_until_end(http, key, session_id, turn["turn_id"])
        rest = await _events_until_end(
            http, key, session_id, turn["turn_id"], after=paused[-1]["seq"]
        )
        completed = [e for e in rest if e["type"] == "tool.completed"]
        assert completed[0]["ok"] is False
        assert completed[0]["error"] == "rejected by a person: not today"
        assert "tool.decided" not in _types(rest)  # never sent to the policy, never run
        assert rest[-1]["content"] == 'tools said: {"error": "rejected by a person: not today"}'


async def test_an_unanswered_call_expires_as_a_reject(
    http: httpx.AsyncClient, fake_llm: FakeLLM
) -> None:
    tenant_id, key = await new_tenant(http)
    async with tenant_policy(tenant_id, ASK_CALCULATOR):
        session_id = await _session(http, key, agent="hasty")  # approvals expire after 2 s
        turn, _token = await _paused_turn(http, fake_llm, key, session_id, _call("6*7"))
        paused = await _events_until_end(http, key, session_id, turn["turn_id"])
        rest = await _events_until_end(
            http, key, session_id, turn["turn_id"], after=paused[-1]["seq"]
        )
        decided = rest[0]
        assert decided["type"] == "tool.approval_decided"
        assert (decided["decision"], decided["expired"]) == ("reject", True)
        assert decided["decided_by"] == "expiry"
        assert rest[-1]["type"] == "turn.completed"
        assert "the approval request expired" in rest[-1]["content"]
        (expired,) = [
            a
            for a in (
                await http.get(
                    f"/v1/sessions/{session_id}/approvals",
                    params={"all": "true"},
                    headers=_auth(key),
                )
            ).json()["items"]
        ]
        assert expired["status"] == "expired"
        late = await _decide(http, key, session_id, expired["tool_call_id"], decision="approve")
        assert late.status_code == 409


async def test_two_calls_of_one_step_wait_together(
    http: httpx.AsyncClient, fake_llm: FakeLLM
) -> None:
    tenant_id, key = await new_tenant(http)
    async with tenant_policy(tenant_id, ASK_CALCULATOR):
        session_id = await _session(http, key)
        turn, _token = await _paused_turn(
            http, fake_llm, key, session_id, _call("1+2"), _call("3+4")
        )
        first, second = turn["awaiting_approval"]
        assert {a["tool_call_id"] for a in await _pending(http, key, session_id)} == {
            first,
            second,
        }
        assert (await _decide(http, key, session_id, first, decision="approve")).status_code == 200
        # One still waits: the turn stays paused.
        (left,) = await _pending(http, key, session_id)
        assert left["tool_call_id"] == second
        session = await http.get(f"/v1/sessions/{session_id}", headers=_auth(key))
        assert session.json()["status"] == "awaiting_approval"
        rejected = await _decide(http, key, session_id, second, decision="reject", message="no")
        assert rejected.status_code == 200
        paused = await _events_until_end(http, key, session_id, turn["turn_id"])
        rest = await _events_until_end(
            http, key, session_id, turn["turn_id"], after=paused[-1]["seq"]
        )
        assert rest[-1]["type"] == "turn.completed"
        assert rest[-1]["content"] == (
            'tools said: {"expression": "1+2", "value": 3} | {"error": "rejected by a person: no"}'
        )


async def test_a_pause_survives_passivation_and_a_host_kill(
    http: httpx.AsyncClient, fake_llm: FakeLLM, e2e_settings: Settings
) -> None:
    tenant_id, key = await new_tenant(http)
    async with tenant_policy(tenant_id, ASK_CALCULATOR):
        session_id = await _session(http, key)
        turn, _token = await _paused_turn(http, fake_llm, key, session_id, _call("6*7"))
        (call_id,) = turn["awaiting_approval"]
        runtime = e2e_settings.runtime
        host = ray.get_actor(f"{runtime.host_prefix}-0", namespace=runtime.namespace)
        # Nothing of the paused turn stays in the host's memory: it lets the session go...
        assert await host.passivate.remote(session_id) is True
        # ...and a killed host loses nothing of it.
        os.kill(int(await host.pid.remote()), signal.SIGKILL)
        (pending,) = await _pending(http, key, session_id)
        assert pending["tool_call_id"] == call_id

        async def decided() -> bool:
            response = await _decide(http, key, session_id, call_id, decision="approve")
            assert response.status_code in {200, 503}, response.text  # 503: host restarting
            return response.status_code == 200

        await eventually(decided, timeout=60, message="the approval accepted")
        paused = await _events_until_end(http, key, session_id, turn["turn_id"])
        rest = await _events_until_end(
            http, key, session_id, turn["turn_id"], after=paused[-1]["seq"]
        )
        assert rest[-1]["type"] == "turn.completed"
        assert rest[-1]["content"] == 'tools said: {"expression": "6*7", "value": 42}'


async def test_another_tenant_can_neither_see_nor_decide_an_approval(
    http: httpx.AsyncClient, fake_llm: FakeLLM
) -> None:
    tenant_id, key = await new_tenant(http)
    _other_tenant, other_key = await new_tenant(http)
    async with tenant_policy(tenant_id, ASK_CALCULATOR):
        session_id = await _session(http, key)
        turn, _token = await _paused_turn(http, fake_llm, key, session_id, _call("6*7"))
        (call_id,) = turn["awaiting_approval"]
        listed = await http.get(f"/v1/sessions/{session_id}/approvals", headers=_auth(other_key))
        assert listed.status_code == 404
        stolen = await _decide(http, other_key, session_id, call_id, decision="approve")
        assert stolen.status_code == 404
        assert stolen.json()["type"] == PROBLEMS + "not-found"
        unknown = await _decide(http, key, session_id, "call_nothing", decision="approve")
        assert unknown.status_code == 404
        (still,) = await _pending(http, key, session_id)
        assert still["status"] == "pending"
        # A message sent with reject is refused while the turn waits; a cancel ends the pause.
        refused = await http.post(
            f"/v1/sessions/{session_id}/messages",
            json={"content": "again", "multitask_strategy": "reject"},
            headers=_auth(key),
        )
        assert refused.status_code == 409
        cancel = await http.post(f"/v1/sessions/{session_id}/cancel", headers=_auth(key))
        assert cancel.json() == {"cancelled": True}
        all_items = await http.get(
            f"/v1/sessions/{session_id}/approvals", params={"all": "true"}, headers=_auth(key)
        )
        assert [a["status"] for a in all_items.json()["items"]] == ["cancelled"]
        late = await _decide(http, key, session_id, call_id, decision="approve")
        assert late.status_code == 409


async def test_a_tenant_may_leave_approvals_to_keys_with_a_role(
    http: httpx.AsyncClient, fake_llm: FakeLLM
) -> None:
    tenant_id, key = await new_tenant(http)
    created = await http.post(
        "/v1/keys",
        json={"name": "approver", "tenant_id": tenant_id, "roles": ["approver"]},
        headers=_auth(ADMIN_KEY),
    )
    assert created.status_code == 201, created.text
    assert created.json()["roles"] == ["approver"]
    approver_key = created.json()["secret"]
    bad_role = await http.post(
        "/v1/keys",
        json={"name": "x", "tenant_id": tenant_id, "roles": ["Not A Role!"]},
        headers=_auth(ADMIN_KEY),
    )
    assert bad_role.status_code == 422
    policy = {**ASK_CALCULATOR, "action_roles": {"session.approve": ["approver"]}}
    async with tenant_policy(tenant_id, policy):
        session_id = await _session(http, key)
        turn, _token = await _paused_turn(http, fake_llm, key, session_id, _call("6*7"))
        (call_id,) = turn["awaiting_approval"]
        refused = await _decide(http, key, session_id, call_id, decision="approve")
        assert refused.status_code == 403
        assert "needs a key with the role approver" in refused.json()["detail"]
        assert (await _pending(http, key, session_id))[0]["status"] == "pending"
        decided = await _decide(http, approver_key, session_id, call_id, decision="approve")
        assert decided.status_code == 200, decided.text
        assert decided.json()["decided_by"] == f"key:{created.json()['key_id']}"
