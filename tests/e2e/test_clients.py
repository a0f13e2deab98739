"""The Python clients against the running Serve app: HTTP (sync and async) and the handle."""

from __future__ import annotations

import asyncio
import uuid

import pytest

import agentcluster
from agentcluster import events as ev
from agentcluster.client import AsyncClient, Client, Conflict, NotFound
from agentcluster.errors import ConflictError
from agentcluster.runtime import Delta
from agentcluster.testing.fake_llm import FakeLLM, Reply, Rule

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _answer(fake_llm: FakeLLM, token: str, text: str) -> None:
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content=text)))


async def test_async_http_client_round_trip(
    gateway_url: str, tenant_key: str, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    _answer(fake_llm, token, "async answer here")
    async with AsyncClient(gateway_url, api_key=tenant_key) as client:
        session = await client.create_session(agent="tester")
        turn = await client.ask(session.session_id, f"q {token}")
        assert (turn.status, turn.content) == ("completed", "async answer here")
        items = [item async for item in client.stream_turn(session.session_id, f"again {token}")]
        assert isinstance(items[-1], ev.TurnCompleted)
        assert "".join(i.text for i in items if isinstance(i, Delta)).split() == [
            "async",
            "answer",
            "here",
        ]
        history = await client.messages(session.session_id)
        assert [m.role for m in history.items] == ["user", "assistant"] * 2
        with pytest.raises(NotFound):
            await client.get_session("no-such-session")


def test_sync_http_client_round_trip(gateway_url: str, tenant_key: str, fake_llm: FakeLLM) -> None:
    token = uuid.uuid4().hex
    _answer(fake_llm, token, "sync answer")
    with Client(gateway_url, api_key=tenant_key) as client:
        session = client.create_session(agent="tester")
        accepted = client.send_message(session.session_id, f"q {token}")
        for item in client.events(session.session_id, after=0):
            if isinstance(item, ev.TurnCompleted) and item.turn_id == accepted.turn_id:
                assert item.content == "sync answer"
                break
        assert [a.name for a in client.agents().items] == ["coder", "hasty", "surfer", "tester"]
        assert client.ready().status == "ready"


async def test_handle_client_has_the_same_methods(
    gateway_url: str, tenant_key: str, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    _answer(fake_llm, token, "over the handle")
    client = agentcluster.connect(tenant_key)
    session = await client.create_session(agent="tester")
    turn = await client.ask(session.session_id, f"q {token}")
    assert (turn.status, turn.content) == ("completed", "over the handle")
    streamed = [item async for item in client.stream_turn(session.session_id, f"more {token}")]
    assert isinstance(streamed[-1], ev.TurnCompleted)
    assert any(isinstance(item, Delta) for item in streamed)
    seen: list[int] = []

    async def first_events() -> None:
        async for item in client.events(session.session_id, after=0):
            if isinstance(item, ev.EventBase):
                seen.append(item.seq)
                if item.seq >= 4:
                    return

    await asyncio.wait_for(first_events(), 60)
    assert seen == [1, 2, 3, 4]
    assert [a.name for a in (await client.agents()).items] == ["coder", "hasty", "surfer", "tester"]
    page = await client.list_sessions()
    assert session.session_id in [s.session_id for s in page.items]


async def _slow_turn_running(client: AsyncClient, fake_llm: FakeLLM, token: str) -> tuple[str, str]:
    fake_llm.script.add_rule(
        Rule(when_last_user_contains=f"{token} slow", reply=Reply(content="late", ttft_s=60))
    )
    session = await client.create_session(agent="tester")
    accepted = await client.send_message(session.session_id, f"{token} slow")
    async for item in client.events(session.session_id):
        if isinstance(item, ev.TurnStarted) and item.turn_id == accepted.turn_id:
            break
    return session.session_id, accepted.turn_id


async def test_clients_send_with_a_multitask_strategy(
    gateway_url: str, tenant_key: str, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    _answer(fake_llm, f"{token} now", "interrupted it")
    async with AsyncClient(gateway_url, api_key=tenant_key) as client:
        session_id, slow = await _slow_turn_running(client, fake_llm, token)
        with pytest.raises(Conflict) as refused:
            await client.send_message(session_id, f"{token} no", multitask_strategy="reject")
        assert refused.value.type.endswith("/turn-in-progress")
        handle = agentcluster.connect(tenant_key)
        with pytest.raises(ConflictError):
            await handle.send_message(session_id, f"{token} no", multitask_strategy="reject")
        turn = await handle.ask(session_id, f"{token} now", multitask_strategy="interrupt")
        assert (turn.status, turn.content) == ("completed", "interrupted it")
        history = await client.messages(session_id)
        assert [m.content for m in history.items if m.role == "user"] == [
            f"{token} slow",
            f"{token} now",
        ]
    with Client(gateway_url, api_key=tenant_key) as sync:
        again = sync.ask(session_id, f"{token} now again", multitask_strategy="rollback")
        assert again.status == "completed"
    assert slow != turn.turn_id
