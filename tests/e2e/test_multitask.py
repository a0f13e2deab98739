"""Double-texting through the real gateway: what a message sent while a turn runs does to it,
for each ``multitask_strategy``, checked in what the model sees, the history and the events."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from agentcluster.testing.fake_llm import FakeLLM, RecordedRequest, Reply, Rule

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PROBLEMS = "https://agentcluster.dev/problems/"


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _seen_by_model(request: RecordedRequest) -> Reply:
    """Answers with the user messages the model was given, in order."""
    users = [str(m.get("content")) for m in request.messages if m.get("role") == "user"]
    return Reply(content=" | ".join(users))


async def _session(http: httpx.AsyncClient, key: str) -> str:
    response = await http.post("/v1/sessions", json={"agent": "tester"}, headers=_auth(key))
    assert response.status_code == 201, response.text
    return str(response.json()["session_id"])


async def _events_until(
    http: httpx.AsyncClient, key: str, session_id: str, last_turn: str
) -> list[dict[str, Any]]:
    """The session's events, read from its stream up to ``last_turn``'s outcome."""
    events: list[dict[str, Any]] = []
    async with http.stream(
        "GET", f"/v1/sessions/{session_id}/events", headers=_auth(key)
    ) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                event = json.loads(line.removeprefix("data:"))
                events.append(event)
                if event.get("turn_id") == last_turn and event["type"] in _OUTCOMES:
                    return events
    raise AssertionError(f"the stream ended before turn {last_turn} ended")


_OUTCOMES = {"turn.completed", "turn.failed", "turn.cancelled"}


async def _start_slow_turn(
    http: httpx.AsyncClient, key: str, fake_llm: FakeLLM, session_id: str, token: str
) -> str:
    """Sends a message whose turn waits a minute for its model and returns once it runs."""
    fake_llm.script.add_rule(
        Rule(when_last_user_contains=f"{token} slow", reply=Reply(content="late", ttft_s=60))
    )
    accepted = await http.post(
        f"/v1/sessions/{session_id}/messages",
        json={"content": f"{token} slow"},
        headers=_auth(key),
    )
    assert accepted.status_code == 202, accepted.text
    turn_id = str(accepted.json()["turn_id"])
    async with http.stream(
        "GET", f"/v1/sessions/{session_id}/events", headers=_auth(key)
    ) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:") and '"turn.started"' in line and turn_id in line:
                break
    return turn_id


async def _ask(
    http: httpx.AsyncClient, key: str, session_id: str, content: str, strategy: str
) -> httpx.Response:
    return await http.post(
        f"/v1/sessions/{session_id}/messages",
        params={"wait": "true"},
        json={"content": content, "multitask_strategy": strategy},
        headers=_auth(key),
    )


def _of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == kind]


async def test_reject_refuses_a_message_while_a_turn_runs_and_leaves_nothing(
    http: httpx.AsyncClient, tenant_key: str, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    session_id = await _session(http, tenant_key)
    slow = await _start_slow_turn(http, tenant_key, fake_llm, session_id, token)
    refused = await http.post(
        f"/v1/sessions/{session_id}/messages",
        json={"content": f"{token} second", "multitask_strategy": "reject"},
        headers={**_auth(tenant_key), "Idempotency-Key": f"k-{token}"},
    )
    assert refused.status_code == 409, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["type"] == PROBLEMS + "turn-in-progress"
    messages = await http.get(f"/v1/sessions/{session_id}/messages", headers=_auth(tenant_key))
    assert [m["content"] for m in messages.json()["items"]] == [f"{token} slow"]
    cancelled = await http.post(
        f"/v1/sessions/{session_id}/cancel", json={"turn_id": slow}, headers=_auth(tenant_key)
    )
    assert cancelled.json() == {"cancelled": True}
    fake_llm.script.add_rule(Rule(when_last_user_contains=f"{token} second", reply=_seen_by_model))
    # Once no turn is open, the same message (same key: nothing was stored under it) is taken.
    accepted = await http.post(
        f"/v1/sessions/{session_id}/messages",
        params={"wait": "true"},
        json={"content": f"{token} second", "multitask_strategy": "reject"},
        headers={**_auth(tenant_key), "Idempotency-Key": f"k-{token}"},
    )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["status"] == "completed"
    events = await _events_until(http, tenant_key, session_id, accepted.json()["turn_id"])
    received = _of_type(events, "message.received")
    assert [e["content"] for e in received] == [f"{token} slow", f"{token} second"]
    assert received[1]["multitask_strategy"] == "enqueue"  # nothing was open any more


@pytest.mark.parametrize("strategy", ["interrupt", "rollback"])
async def test_interrupt_and_rollback_cancel_the_running_turn_and_run_the_new_message(
    http: httpx.AsyncClient, tenant_key: str, fake_llm: FakeLLM, strategy: str
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when_last_user_contains=f"{token} first", reply=_seen_by_model))
    fake_llm.script.add_rule(Rule(when_last_user_contains=f"{token} instead", reply=_seen_by_model))
    session_id = await _session(http, tenant_key)
    first = await _ask(http, tenant_key, session_id, f"{token} first", "enqueue")
    assert first.json()["content"] == f"{token} first"
    slow = await _start_slow_turn(http, tenant_key, fake_llm, session_id, token)

    answer = await _ask(http, tenant_key, session_id, f"{token} instead", strategy)

    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "completed"
    rolled_back = strategy == "rollback"
    # What the model saw for the new message: the interrupted message stays in its history
    # (interrupt) or is gone from it (rollback); the earlier, finished turn is always there.
    seen = [f"{token} first"] + ([] if rolled_back else [f"{token} slow"]) + [f"{token} instead"]
    assert answer.json()["content"] == " | ".join(seen)
    events = await _events_until(http, tenant_key, session_id, answer.json()["turn_id"])
    cancelled = [e for e in _of_type(events, "turn.cancelled") if e["turn_id"] == slow]
    assert len(cancelled) == 1
    assert cancelled[0]["superseded_by"] == answer.json()["turn_id"]
    assert cancelled[0]["rolled_back"] is rolled_back
    received = _of_type(events, "message.received")
    assert [e["content"] for e in received][-2:] == [f"{token} slow", f"{token} instead"]
    assert received[-1]["multitask_strategy"] == strategy
    assert slow not in [e["turn_id"] for e in _of_type(events, "turn.completed")]
    messages = (
        await http.get(f"/v1/sessions/{session_id}/messages", headers=_auth(tenant_key))
    ).json()["items"]
    by_content = {m["content"]: m for m in messages if m["role"] == "user"}
    assert by_content[f"{token} slow"]["rolled_back"] is rolled_back  # kept, marked
    assert not by_content[f"{token} first"]["rolled_back"]
    # The next message sees the same history as the one that interrupted.
    fake_llm.script.add_rule(Rule(when_last_user_contains=f"{token} next", reply=_seen_by_model))
    following = await _ask(http, tenant_key, session_id, f"{token} next", "enqueue")
    assert following.json()["content"] == " | ".join([*seen, f"{token} next"])


async def test_interrupt_also_cancels_the_queued_turns_before_it(
    http: httpx.AsyncClient, tenant_key: str, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when_last_user_contains=f"{token} now", reply=_seen_by_model))
    session_id = await _session(http, tenant_key)
    slow = await _start_slow_turn(http, tenant_key, fake_llm, session_id, token)
    queued = await http.post(
        f"/v1/sessions/{session_id}/messages",
        json={"content": f"{token} queued"},
        headers=_auth(tenant_key),
    )
    assert queued.status_code == 202
    answer = await _ask(http, tenant_key, session_id, f"{token} now", "interrupt")
    assert answer.json()["status"] == "completed"
    events = await _events_until(http, tenant_key, session_id, answer.json()["turn_id"])
    cancelled = {e["turn_id"]: e for e in _of_type(events, "turn.cancelled")}
    assert set(cancelled) == {slow, queued.json()["turn_id"]}
    assert {e["superseded_by"] for e in cancelled.values()} == {answer.json()["turn_id"]}
    # The queued message never ran; the interrupted one is history (it had started).
    assert answer.json()["content"] == f"{token} slow | {token} now"


async def test_enqueue_runs_the_second_message_after_the_first(
    http: httpx.AsyncClient, tenant_key: str, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(
        Rule(when_last_user_contains=f"{token} one", reply=Reply(content="first answer", ttft_s=1))
    )
    fake_llm.script.add_rule(Rule(when_last_user_contains=f"{token} two", reply=_seen_by_model))
    session_id = await _session(http, tenant_key)
    one = await http.post(
        f"/v1/sessions/{session_id}/messages",
        json={"content": f"{token} one"},
        headers=_auth(tenant_key),
    )
    two = await _ask(http, tenant_key, session_id, f"{token} two", "enqueue")
    assert two.json()["content"] == f"{token} one | {token} two"
    events = await _events_until(http, tenant_key, session_id, two.json()["turn_id"])
    completed = [e["turn_id"] for e in _of_type(events, "turn.completed")]
    assert completed == [one.json()["turn_id"], two.json()["turn_id"]]
    assert not _of_type(events, "turn.cancelled")


async def test_an_unknown_strategy_is_a_422(http: httpx.AsyncClient, tenant_key: str) -> None:
    session_id = await _session(http, tenant_key)
    response = await http.post(
        f"/v1/sessions/{session_id}/messages",
        json={"content": "hello", "multitask_strategy": "drop"},
        headers=_auth(tenant_key),
    )
    assert response.status_code == 422, response.text
    messages = await http.get(f"/v1/sessions/{session_id}/messages", headers=_auth(tenant_key))
    assert messages.json()["items"] == []
