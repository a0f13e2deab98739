"""Failover on a real local Ray: a dead host's sessions move to a live host at once (a standby
when the host set is small), messages are accepted while hosts are down, streams go on from the
next host, and retiring a host hands its running turns over. What each test checks is where
things ended up (owners in the store, outcomes, event sequences), never how long they took."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import ray
import yaml

from actors.session import RaySessionRouter
from agentcluster import events as ev
from agentcluster.config import Settings, load_settings
from agentcluster.runtime import Runtime
from agentcluster.store import SqlStateStore, open_store
from agentcluster.testing.fake_llm import FakeLLM, RecordedRequest, Reply, Rule
from tests.conftest import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PROFILE = {
    "name": "tester",
    "model": "fake-a",
    "system_prompt": "You are a test agent.",
    "tools": [],
    "max_steps": 2,
    "max_output_tokens": 64,
    "context_window": 4096,
    "turn_retry": {"on_interrupt": "resume", "max_attempts": 3},
}


@pytest.fixture(scope="module")
def settings(
    postgres_dsn: str, fake_llm: FakeLLM, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    agents = tmp_path_factory.mktemp("agents")
    (agents / "tester.yaml").write_text(yaml.safe_dump(PROFILE))
    return load_settings(
        {
            "db": {"dsn": postgres_dsn},
            "llm": {"api_base": fake_llm.base_url, "api_key": "test", "max_retries": 1},
            "runtime": {
                "agents_dir": agents,
                "host_prefix": f"f{uuid.uuid4().hex[:6]}",
                "min_hosts": 1,
                "max_hosts": 3,
                "standby_hosts": 1,
                "idle_passivate_s": 3600,
                "reconcile_interval_s": 1,
                "notify_timeout_s": 1,
            },
        }
    )


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[SqlStateStore]:
    opened = await open_store(settings.db_dsn)
    yield opened
    await opened.close()


@pytest.fixture
async def router(ray_cluster: None, settings: Settings) -> RaySessionRouter:
    router = RaySessionRouter(settings)
    await router.set_host_count(1)  # one placed host and one standby
    return router


@pytest.fixture
def runtime(store: SqlStateStore, router: RaySessionRouter, settings: Settings) -> Runtime:
    return Runtime(store, router, notify_timeout_s=settings.runtime.notify_timeout_s)


async def _session(runtime: Runtime) -> tuple[str, str]:
    tenant = await runtime.store.create_tenant("failover-tests")
    session = await runtime.create_session(tenant.tenant_id, "tester")
    return tenant.tenant_id, session.session_id


def _mentions(token: str) -> Any:
    def check(request: RecordedRequest) -> bool:
        return any(token in str(m.get("content")) for m in request.messages)

    return check


async def _owner(store: SqlStateStore, tenant_id: str, session_id: str) -> str | None:
    """The name of the host that owns the session (its owner id is name~incarnation)."""
    owner = (await store.get_session(tenant_id, session_id)).owner_host
    return owner.split("~", 1)[0] if owner else None


async def _outcome(runtime: Runtime, tenant_id: str, turn_id: str) -> str:
    async def done() -> str | None:
        turn = await runtime.store.get_turn(tenant_id, turn_id)
        return turn.status if turn.status in {"completed", "failed", "cancelled"} else None

    return await eventually(done, timeout=120, message=f"turn {turn_id} ended")


async def _until_running(runtime: Runtime, tenant_id: str, turn_id: str) -> None:
    async def running() -> bool:
        return (await runtime.store.get_turn(tenant_id, turn_id)).status == "running"

    await eventually(running, timeout=60, message="the turn started")


async def _kill(host: Any) -> int:
    pid = int(await host.pid.remote())
    os.kill(pid, signal.SIGKILL)
    return pid


async def test_a_dead_hosts_session_answers_from_the_standby(
    runtime: Runtime, router: RaySessionRouter, fake_llm: FakeLLM, settings: Settings
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when=_mentions(token), reply=Reply(content=f"ok {token}")))
    tenant_id, session_id = await _session(runtime)
    first = await runtime.ask(tenant_id, session_id, f"{token} one", timeout_s=60)
    assert isinstance(first, ev.TurnCompleted)
    home = await _owner(runtime.store, tenant_id, session_id)
    assert home == f"{settings.runtime.host_prefix}-0"

    await _kill(router.actor(session_id))
    second = await runtime.ask(tenant_id, session_id, f"{token} two", timeout_s=60)
    assert isinstance(second, ev.TurnCompleted)
    # Answered by the standby under a new epoch, not by the dead host's restart.
    assert await _owner(runtime.store, tenant_id, session_id) == (
        f"{settings.runtime.host_prefix}-1"
    )
    users = [m.content for m in await runtime.store.list_messages(tenant_id, session_id)]
    assert users.count(f"{token} two") == 1


async def test_a_turn_running_on_a_dead_host_resumes_elsewhere_without_a_call(
    runtime: Runtime, router: RaySessionRouter, fake_llm: FakeLLM, settings: Settings
) -> None:
    tenant_id, session_id, turn_id = await _slow_turn(runtime, fake_llm, "resumed")
    await _kill(router.actor(session_id))
    # Nobody calls the session again: the host controller wakes it on a live host.
    assert await _outcome(runtime, tenant_id, turn_id) == "completed"
    turn = await runtime.store.get_turn(tenant_id, turn_id)
    events = await runtime.store.list_events(tenant_id, session_id)
    assert turn.attempt == 2, [(e.type, getattr(e, "attempt", None)) for e in events]


async def test_messages_are_accepted_while_every_host_is_down(
    runtime: Runtime, router: RaySessionRouter, fake_llm: FakeLLM, settings: Settings
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when=_mentions(token), reply=Reply(content=f"ok {token}")))
    tenant_id, session_id = await _session(runtime)
    names = [f"{settings.runtime.host_prefix}-{i}" for i in range(2)]
    hosts = [ray.get_actor(name, namespace=settings.runtime.namespace) for name in names]
    await asyncio.gather(*(_kill(host) for host in hosts))
    submission = await runtime.send_message(tenant_id, session_id, f"{token} while down")
    assert submission.turn_id  # committed and acknowledged with no host to run it
    assert await _outcome(runtime, tenant_id, submission.turn_id) == "completed"


async def test_a_stream_goes_on_from_the_next_host_without_gap_or_duplicate(
    runtime: Runtime, router: RaySessionRouter, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    slow = Rule(when=_mentions(f"{token} slow"), reply=Reply(content="late", ttft_s=60), times=1)
    fake_llm.script.add_rule(slow)
    fake_llm.script.add_rule(Rule(when=_mentions(token), reply=Reply(content="streamed")))
    tenant_id, session_id = await _session(runtime)
    submission = await runtime.send_message(tenant_id, session_id, f"{token} slow", notify=False)
    seqs: list[int] = []
    outcome: ev.EventBase | None = None

    async def consume() -> None:
        nonlocal outcome
        stream = runtime.stream(tenant_id, session_id, until_turn=submission.turn_id, wake=True)
        async for item in stream:
            if isinstance(item, ev.EventBase):
                seqs.append(item.seq)
                if isinstance(item, ev.TurnCompleted | ev.TurnFailed):
                    outcome = item

    consumer = asyncio.create_task(consume())

    await _until_running(runtime, tenant_id, submission.turn_id)
    await _kill(router.actor(session_id))
    await asyncio.wait_for(consumer, timeout=120)
    assert isinstance(outcome, ev.TurnCompleted)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # contiguous, no duplicate


async def test_retiring_a_host_hands_its_running_turn_over(
    runtime: Runtime, router: RaySessionRouter, fake_llm: FakeLLM, settings: Settings
) -> None:
    tenant_id, session_id, turn_id = await _slow_turn(runtime, fake_llm, "handed over")
    owner = await _owner(runtime.store, tenant_id, session_id)
    assert owner is not None
    index = int(owner.rsplit("-", 1)[1])
    await router.retire(index)
    # Handed over, not cancelled: resumed with no further call from us. (Retired here by
    # hand, beside the controller's own ticks, which may claim it once more: attempt >= 2.)
    assert await _outcome(runtime, tenant_id, turn_id) == "completed"
    assert (await runtime.store.get_turn(tenant_id, turn_id)).attempt >= 2


async def _slow_turn(runtime: Runtime, fake_llm: FakeLLM, reply: str) -> tuple[str, str, str]:
    """A session whose turn is running (its first LLM answer takes a minute); its ids."""
    token = uuid.uuid4().hex
    slow = Rule(when=_mentions(f"{token} slow"), reply=Reply(content="late", ttft_s=60), times=1)
    fake_llm.script.add_rule(slow)
    fake_llm.script.add_rule(Rule(when=_mentions(token), reply=Reply(content=reply)))
    tenant_id, session_id = await _session(runtime)
    submission = await runtime.send_message(tenant_id, session_id, f"{token} slow")
    await _until_running(runtime, tenant_id, submission.turn_id)
    return tenant_id, session_id, submission.turn_id


async def _types(runtime: Runtime, tenant_id: str, session_id: str) -> list[str]:
    return [e.type for e in await runtime.store.list_events(tenant_id, session_id)]


async def test_a_sigtermed_host_hands_its_running_turn_over_and_exits(
    runtime: Runtime, router: RaySessionRouter, fake_llm: FakeLLM, settings: Settings
) -> None:
    tenant_id, session_id, turn_id = await _slow_turn(runtime, fake_llm, "after sigterm")
    owner_id = (await runtime.store.get_session(tenant_id, session_id)).owner_host
    owner = await _owner(runtime.store, tenant_id, session_id)
    assert owner is not None
    host = ray.get_actor(owner, namespace=settings.runtime.namespace)
    os.kill(int(await host.pid.remote()), signal.SIGTERM)  # what stopping its node does
    # Resumed on another host with no call from us, never recorded cancelled.
    assert await _outcome(runtime, tenant_id, turn_id) == "completed"
    assert "turn.cancelled" not in await _types(runtime, tenant_id, session_id)
    # Another process (another host, or this one's replacement) owns it now.
    assert (await runtime.store.get_session(tenant_id, session_id)).owner_host != owner_id

    async def exited() -> bool:
        try:
            await host.pid.remote()
        except ray.exceptions.RayActorError:
            return True
        return False

    await eventually(exited, timeout=60, message="the drained host exited")


async def test_drain_all_leaves_running_turns_to_the_next_start(
    runtime: Runtime, router: RaySessionRouter, fake_llm: FakeLLM, settings: Settings
) -> None:
    tenant_id, session_id, turn_id = await _slow_turn(runtime, fake_llm, "after restart")
    owner_id = (await runtime.store.get_session(tenant_id, session_id)).owner_host
    assert await router.drain_all() >= 1  # what `agentcluster down` does before Ray stops
    turn = await runtime.store.get_turn(tenant_id, turn_id)
    assert turn.status == "running"  # handed over: left open, not cancelled
    assert (await runtime.store.get_session(tenant_id, session_id)).owner_host == owner_id
    # The cluster stops (its hosts gone) and starts again: the host controller resumes the turn.
    for name in router.named_actors():
        ray.kill(ray.get_actor(name, namespace=settings.runtime.namespace), no_restart=True)
    assert await _outcome(runtime, tenant_id, turn_id) == "completed"
    assert "turn.cancelled" not in await _types(runtime, tenant_id, session_id)


async def test_a_sigtermed_session_actor_resumes_its_turn_when_restarted(
    store: SqlStateStore, fake_llm: FakeLLM, settings: Settings, ray_cluster: None
) -> None:
    isolated = settings.model_copy(
        update={
            "runtime": settings.runtime.model_copy(
                update={"sessions_per_host": 1, "host_prefix": f"i{uuid.uuid4().hex[:6]}"}
            )
        }
    )
    router = RaySessionRouter(isolated)
    runtime = Runtime(store, router, notify_timeout_s=isolated.runtime.notify_timeout_s)
    tenant_id, session_id, turn_id = await _slow_turn(runtime, fake_llm, "isolated again")
    actor = router.actor(session_id)
    pid = int(await actor.pid.remote())
    os.kill(pid, signal.SIGTERM)
    assert await _outcome(runtime, tenant_id, turn_id) == "completed"
    assert "turn.cancelled" not in await _types(runtime, tenant_id, session_id)
    assert int(await actor.pid.remote()) != pid  # Ray restarted the session's own actor


async def test_a_rollback_committed_while_its_host_dies_still_supersedes_the_running_turn(
    runtime: Runtime, router: RaySessionRouter, fake_llm: FakeLLM
) -> None:
    # The message is committed without waking anyone (as when its host is down); the host
    # running the turn it supersedes then dies. The session's next host applies the strategy
    # from the store: the running turn is cancelled and rolled back, the new one runs.
    tenant_id, session_id, slow = await _slow_turn(runtime, fake_llm, "after the rollback")
    instead = await runtime.send_message(
        tenant_id, session_id, "instead", notify=False, strategy="rollback"
    )
    await _kill(router.actor(session_id))
    assert await _outcome(runtime, tenant_id, instead.turn_id) == "completed"
    assert await _outcome(runtime, tenant_id, slow) == "cancelled"
    cancelled = [
        e
        for e in await runtime.store.list_events(tenant_id, session_id)
        if isinstance(e, ev.TurnCancelled)
    ]
    assert [(e.turn_id, e.superseded_by, e.rolled_back) for e in cancelled] == [
        (slow, instead.turn_id, True)
    ]
    hidden = [m for m in await runtime.store.list_messages(tenant_id, session_id) if m.rolled_back]
    assert [m.turn_id for m in hidden] == [slow]
