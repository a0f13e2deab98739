"""Approvals through the clients against the running Serve app: the tenant's policy sends every
calculator call to a person; the async and sync HTTP clients and the DeploymentHandle client see
the turn pause, approve, edit or reject the call, and read the resumed turn to its answer; the
``agentcluster chat`` command asks y/n/e on a pipe and does the same."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import agentcluster
from agentcluster import events as ev
from agentcluster.api import MessageList
from agentcluster.client import AsyncClient, Client, Conflict
from agentcluster.errors import NotFoundError
from agentcluster.testing.fake_llm import FakeLLM, Reply, Rule, ToolCall
from tests.e2e.conftest import new_tenant, tenant_policy
from tests.e2e.test_cli import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REASON = "a person checks every calculation"
POLICY = {"approvals": [{"tools": ["calculator"], "reason": REASON}]}


def script_approval_turn(
    fake_llm: FakeLLM, prompt: str, arguments: dict[str, Any], answer: str
) -> None:
    """For a user message containing ``prompt``, the fake model calls the calculator with
    ``arguments``, then answers ``answer`` once the tool's result (or refusal) is back. Both
    rules look at the last user message only, so turns of one session do not mix."""
    fake_llm.script.add_rule(
        Rule(
            when_last_user_contains=prompt,
            when=lambda r: r.messages[-1]["role"] == "tool",
            reply=Reply(content=answer),
        )
    )
    call = ToolCall(name="calculator", arguments=arguments)
    fake_llm.script.add_rule(Rule(when_last_user_contains=prompt, reply=Reply(tool_calls=[call])))


@pytest.fixture
async def approving_key(http: httpx.AsyncClient) -> AsyncIterator[str]:
    """A tenant whose calculator calls wait for a person."""
    tenant_id, key = await new_tenant(http, "approvals")
    async with tenant_policy(tenant_id, POLICY):
        yield key


def _tool_message(history: MessageList) -> str:
    return [m.content for m in history.items if m.role == "tool"][-1]


async def test_async_client_approves_and_rejects(
    gateway_url: str, approving_key: str, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    script_approval_turn(fake_llm, f"{token} a", {"expression": "6*7"}, f"it is 42 {token}")
    script_approval_turn(fake_llm, f"{token} r", {"expression": "6*7"}, f"no tool {token}")
    async with AsyncClient(gateway_url, api_key=approving_key) as client:
        session = await client.create_session(agent="tester")
        sid = session.session_id

        items = [item async for item in client.stream_turn(sid, f"{token} a")]
        pause = items[-1]
        assert isinstance(pause, ev.TurnAwaitingApproval)
        asked = [i for i in items if isinstance(i, ev.ToolApprovalRequested)]
        assert [(a.tool, a.arguments, a.reason) for a in asked] == [
            ("calculator", {"expression": "6*7"}, REASON)
        ]
        assert pause.tool_call_ids == [asked[0].tool_call_id]
        assert not any(isinstance(i, ev.ToolCompleted) for i in items)  # nothing ran
        assert (await client.get_session(sid)).status == "awaiting_approval"
        waiting = await client.approvals(sid)
        assert [(a.tool_call_id, a.status, a.tool) for a in waiting] == [
            (pause.tool_call_ids[0], "pending", "calculator")
        ]

        approved = await client.approve(sid, pause.tool_call_ids[0])
        assert approved.status == "approved"
        resumed = [i async for i in client.follow_turn(sid, pause.turn_id, after=pause.seq)]
        assert isinstance(resumed[-1], ev.TurnCompleted)
        assert resumed[-1].content == f"it is 42 {token}"
        ran = [i for i in resumed if isinstance(i, ev.ToolCompleted)]
        assert [(t.ok, t.result["value"]) for t in ran] == [(True, 42)]
        with pytest.raises(Conflict) as again:
            await client.approve(sid, pause.tool_call_ids[0])
        assert again.value.type.endswith("/approval-not-pending")

        turn = await client.ask(sid, f"{token} r")
        assert turn.status == "awaiting_approval" and turn.awaiting_approval
        after = (await client.get_session(sid)).last_seq  # read before deciding
        rejected = await client.reject(sid, turn.awaiting_approval[0], "not now")
        assert (rejected.status, rejected.message) == ("rejected", "not now")
        ended = [i async for i in client.follow_turn(sid, turn.turn_id, after=after)]
        assert isinstance(ended[-1], ev.TurnCompleted)
        assert ended[-1].content == f"no tool {token}"
        # What the model read instead of a result.
        assert "rejected by a person: not now" in _tool_message(await client.messages(sid))
        decided = await client.approvals(sid, all=True)
        assert sorted(a.status for a in decided) == ["approved", "rejected"]
        assert await client.approvals(sid) == []


def test_sync_client_edits_and_rejects(
    gateway_url: str, approving_key: str, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    script_approval_turn(fake_llm, f"{token} e", {"expression": "6*7"}, f"edited {token}")
    script_approval_turn(fake_llm, f"{token} r", {"expression": "1+1"}, f"refused {token}")
    with Client(gateway_url, api_key=approving_key) as client:
        sid = client.create_session(agent="tester").session_id

        turn = client.ask(sid, f"{token} e")
        assert turn.status == "awaiting_approval" and turn.awaiting_approval
        after = client.get_session(sid).last_seq
        edited = client.edit(sid, turn.awaiting_approval[0], {"expression": "6*8"})
        assert (edited.status, edited.edited_arguments) == ("edited", {"expression": "6*8"})
        resumed = list(client.follow_turn(sid, turn.turn_id, after=after))
        ran = [i for i in resumed if isinstance(i, ev.ToolCompleted)]
        assert [(t.ok, t.result["value"]) for t in ran] == [(True, 48)]
        assert isinstance(resumed[-1], ev.TurnCompleted)
        assert resumed[-1].content == f"edited {token}"

        items = list(client.stream_turn(sid, f"{token} r"))
        pause = items[-1]
        assert isinstance(pause, ev.TurnAwaitingApproval)
        client.reject(sid, pause.tool_call_ids[0])
        ended = list(client.follow_turn(sid, pause.turn_id, after=pause.seq))
        assert isinstance(ended[-1], ev.TurnCompleted)
        assert ended[-1].content == f"refused {token}"
        assert "rejected by a person" in _tool_message(client.messages(sid))


async def test_handle_client_approves_and_rejects(approving_key: str, fake_llm: FakeLLM) -> None:
    token = uuid.uuid4().hex
    script_approval_turn(fake_llm, f"{token} a", {"expression": "2*21"}, f"handled {token}")
    script_approval_turn(fake_llm, f"{token} r", {"expression": "2*21"}, f"dropped {token}")
    client = agentcluster.connect(approving_key)
    sid = (await client.create_session(agent="tester")).session_id

    turn = await client.ask(sid, f"{token} a")
    assert turn.status == "awaiting_approval" and turn.awaiting_approval
    waiting = await client.approvals(sid)
    assert [a.tool_call_id for a in waiting] == turn.awaiting_approval
    after = (await client.get_session(sid)).last_seq
    assert (await client.approve(sid, waiting[0].tool_call_id)).status == "approved"
    resumed = [i async for i in client.follow_turn(sid, turn.turn_id, after=after)]
    assert isinstance(resumed[-1], ev.TurnCompleted)
    assert resumed[-1].content == f"handled {token}"

    streamed = [i async for i in client.stream_turn(sid, f"{token} r")]
    pause = streamed[-1]
    assert isinstance(pause, ev.TurnAwaitingApproval)
    rejected = await client.reject(sid, pause.tool_call_ids[0], "no")
    assert rejected.status == "rejected"
    ended = [i async for i in client.follow_turn(sid, pause.turn_id, after=pause.seq)]
    assert isinstance(ended[-1], ev.TurnCompleted)
    assert ended[-1].content == f"dropped {token}"
    with pytest.raises(NotFoundError):  # ours, as over the handle (Ray wraps it)
        await client.approve(sid, "no-such-call")


def test_chat_asks_y_n_e(gateway_url: str, approving_key: str, fake_llm: FakeLLM) -> None:
    token = uuid.uuid4().hex
    script_approval_turn(fake_llm, f"{token} a", {"expression": "6*7"}, f"yes 42 {token}")
    script_approval_turn(fake_llm, f"{token} r", {"expression": "6*7"}, f"ok, none {token}")
    script_approval_turn(fake_llm, f"{token} e", {"expression": "6*7"}, f"now 48 {token}")
    lines = [
        f"{token} a",
        "y",
        f"{token} r",
        "n",
        "not now",
        f"{token} e",
        "e",
        "{bad",
        json.dumps({"expression": "6*8"}),
    ]

    done = run_cli(
        "chat", "--url", gateway_url, "--key", approving_key, "--agent", "tester",
        stdin="\n".join(lines) + "\n",
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    shown = f'  [approval needed: calculator {{"expression": "6*7"}}: {REASON}]\n'
    assert done.stdout == (
        f"{shown}approve? [y/n/e] y\n"
        '  [tool calculator {"expression": "6*7"} -> 42]\n'
        f"tester> yes 42 {token}\n"
        f"{shown}approve? [y/n/e] n\n"
        "message for the model (optional): not now\n"
        '  [tool calculator {"expression": "6*7"} -> error: rejected by a person: not now]\n'
        f"tester> ok, none {token}\n"
        f"{shown}approve? [y/n/e] e\n"
        "arguments (JSON object): {bad\n"
        "  [not JSON: Expecting property name enclosed in double quotes at column 2]\n"
        'arguments (JSON object): {"expression": "6*8"}\n'
        '  [tool calculator {"expression": "6*8"} -> 48]\n'
        f"tester> now 48 {token}\n"
    )
