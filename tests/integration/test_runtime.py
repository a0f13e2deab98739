"""The agent runtime on a real local Ray and PostgreSQL, LiteLLM against the fake LLM server."""

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

from actors.compose import build_runtime_deps
from actors.session import RaySessionRouter
from agentcluster import events as ev
from agentcluster.config import Settings, load_settings
from agentcluster.domain import QueuedTurn
from agentcluster.policy import WasmPolicy
from agentcluster.runtime import Delta, Runtime, SessionHostCore
from agentcluster.store import SqlStateStore, open_store
from agentcluster.testing.fake_llm import FakeLLM, RecordedRequest, Reply, Rule, ToolCall
from tests.conftest import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PROFILE = {
    "name": "tester",
    "model": "fake-a",
    "fallback_models": ["fake-b"],
    "system_prompt": "You are a test agent.",
    "tools": ["calculator", "current_time"],
    "max_steps": 4,
    "max_output_tokens": 256,
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
            "llm": {
                "api_base": fake_llm.base_url,
                "api_key": "test",
                "max_retries": 1,
                "retry_backoff_s": 0.01,
            },
            "runtime": {
                "agents_dir": agents,
                "host_prefix": f"t{uuid.uuid4().hex[:6]}",
                "min_hosts": 2,
                "max_hosts": 4,
                "idle_passivate_s": 3600,
                "reconcile_interval_s": 1,
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
    await router.ensure_hosts()  # a running cluster: hosts are up before traffic
    return router


@pytest.fixture
def runtime(store: SqlStateStore, router: RaySessionRouter) -> Runtime:
    return Runtime(store, router)


async def _session(runtime: Runtime) -> tuple[str, str]:
    tenant = await runtime.store.create_tenant("runtime-tests")
    session = await runtime.create_session(tenant.tenant_id, "tester")
    return tenant.tenant_id, session.session_id


def _last_is_tool(request: RecordedRequest) -> bool:
    return request.messages[-1]["role"] == "tool"


def _mentions(token: str) -> Any:
    def check(request: RecordedRequest) -> bool:
        return any(token in str(m.get("content")) for m in request.messages)

    return check


async def _turn_outcome(runtime: Runtime, tenant_id: str, turn_id: str) -> str:
    async def done() -> str | None:
        turn = await runtime.store.get_turn(tenant_id, turn_id)
        return turn.status if turn.status in {"completed", "failed", "cancelled"} else None

    return await eventually(done, timeout=90, message=f"turn {turn_id} finished")


async def test_a_two_step_tool_turn_streams_its_events_in_order(
    runtime: Runtime, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(
        Rule(
            when=lambda r: _mentions(token)(r) and _last_is_tool(r),
            reply=Reply(content="The answer is 42 exactly"),
        )
    )
    fake_llm.script.add_rule(
        Rule(
            when=_mentions(token),
            reply=Reply(tool_calls=[ToolCall("calculator", {"expression": "6*7"})]),
            times=1,
        )
    )
    tenant_id, session_id = await _session(runtime)
    submission = await runtime.send_message(tenant_id, session_id, f"six times seven {token}")
    items = [
        item async for item in runtime.stream(tenant_id, session_id, until_turn=submission.turn_id)
    ]
    events = [item for item in items if isinstance(item, ev.EventBase)]
    assert [e.type for e in events] == [
        "session.created",
        "message.received",
        "turn.started",
        "llm.completed",
        "tool.requested",
        "tool.decided",
        "tool.completed",
        "llm.completed",
        "turn.completed",
    ]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    completed = events[-1]
    assert isinstance(completed, ev.TurnCompleted)
    assert completed.content == "The answer is 42 exactly"
    tool_done = next(e for e in events if isinstance(e, ev.ToolCompleted))
    assert tool_done.ok and tool_done.result["value"] == 42

    deltas = [item.text for item in items if isinstance(item, Delta)]
    assert "".join(deltas).split() == ["The", "answer", "is", "42", "exactly"]
    indexes = [item.index for item in items if isinstance(item, Delta)]
    assert indexes == sorted(indexes)
    turn = await runtime.store.get_turn(tenant_id, submission.turn_id)
    assert turn.usage["total_tokens"] > 0 and turn.usage["prompt_tokens"] > 0
    history = await runtime.store.list_messages(tenant_id, session_id)
    assert [m.role for m in history] == ["user", "assistant", "tool", "assistant"]


async def test_a_turn_streams_from_the_llm_only_while_someone_watches(
    runtime: Runtime, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when=_mentions(token), reply=Reply(content="one two three")))
    tenant_id, session_id = await _session(runtime)
    # Nobody watches a waited-for turn: its answer is asked for whole, and is the same.
    waited = await runtime.send_message(tenant_id, session_id, f"{token} a", notify=False)
    outcome = await runtime.wait_turn(tenant_id, session_id, waited, 60)
    assert isinstance(outcome, ev.TurnCompleted) and outcome.content == "one two three"
    # A streamed turn: subscribed first, so every fragment reaches the stream.
    watched = await runtime.send_message(tenant_id, session_id, f"{token} b", notify=False)
    items = [
        item
        async for item in runtime.stream(
            tenant_id,
            session_id,
            after_seq=watched.seq - 1,
            until_turn=watched.turn_id,
            wake=True,
        )
    ]
    assert "".join(item.text for item in items if isinstance(item, Delta)) == "one two three"
    assert isinstance(items[-1], ev.TurnCompleted) and items[-1].content == "one two three"
    streamed = [r.stream for r in fake_llm.requests if _mentions(token)(r)]
    assert streamed == [False, True]


async def test_twenty_concurrent_messages_run_one_turn_at_a_time_in_order(
    runtime: Runtime, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when=_mentions(token), reply=Reply(content="noted", ttft_s=0.02)))
    tenant_id, session_id = await _session(runtime)
    submissions = await asyncio.gather(
        *(runtime.send_message(tenant_id, session_id, f"{token} n{i}") for i in range(20))
    )
    for submission in submissions:
        assert await _turn_outcome(runtime, tenant_id, submission.turn_id) == "completed"
    events = await runtime.store.list_events(tenant_id, session_id)
    arrival = [e.turn_id for e in events if isinstance(e, ev.MessageReceived)]
    lifecycle = [
        (e.type, e.turn_id) for e in events if isinstance(e, ev.TurnStarted | ev.TurnCompleted)
    ]
    expected: list[tuple[str, str]] = []
    for turn_id in arrival:
        expected += [("turn.started", turn_id), ("turn.completed", turn_id)]
    assert lifecycle == expected
    seen = [
        r.messages[-1]["content"]
        for r in fake_llm.requests
        if token in str(r.messages[-1].get("content"))
    ]
    contents = {e.turn_id: e.content for e in events if isinstance(e, ev.MessageReceived)}
    assert seen == [contents[turn_id] for turn_id in arrival]


async def test_waiting_for_a_turn_answers_whenever_and_wherever_it_ended(
    runtime: Runtime, router: RaySessionRouter, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(
        Rule(when=_mentions(token), reply=Reply(content=f"seen {token}", ttft_s=0.05))
    )
    tenant_id, session_id = await _session(runtime)
    # Three queued turns waited for at once: each waiter gets its own turn's outcome.
    submissions = [
        await runtime.send_message(tenant_id, session_id, f"{token} q{i}", notify=False)
        for i in range(3)
    ]
    outcomes = await asyncio.gather(
        *(runtime.wait_turn(tenant_id, session_id, s, 60) for s in submissions)
    )
    assert [o.turn_id if o else None for o in outcomes] == [s.turn_id for s in submissions]
    assert all(isinstance(o, ev.TurnCompleted) for o in outcomes)
    # Ended earlier on this host: answered from the activation's memory.
    again = await runtime.wait_turn(tenant_id, session_id, submissions[0], 60)
    assert again == outcomes[0]
    # Ended before the session was passivated: answered from the store by the new activation.
    assert await router.actor(session_id).passivate.remote(session_id)
    after = await runtime.wait_turn(tenant_id, session_id, submissions[1], 60)
    assert isinstance(after, ev.TurnCompleted)
    assert (after.turn_id, after.seq) == (outcomes[1].turn_id, outcomes[1].seq)
    # A turn that cannot end in time: None, not an error.
    slow = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when=_mentions(slow), reply=Reply(content="late", ttft_s=3)))
    tenant_id, session_id = await _session(runtime)  # a history without the first token
    pending = await runtime.send_message(tenant_id, session_id, slow, notify=False)
    assert await runtime.wait_turn(tenant_id, session_id, pending, 0.5) is None
    assert await _turn_outcome(runtime, tenant_id, pending.turn_id) == "completed"


async def test_passivation_then_reactivation_keeps_the_whole_history(
    runtime: Runtime, router: RaySessionRouter, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when=_mentions(token), reply=Reply(content="ack")))
    tenant_id, session_id = await _session(runtime)
    for index in range(2):
        done = await runtime.ask(tenant_id, session_id, f"{token} before {index}")
        assert isinstance(done, ev.TurnCompleted)
    host = router.actor(session_id)
    assert await host.passivate.remote(session_id)
    session = await runtime.store.get_session(tenant_id, session_id)
    assert session.owner_host is None
    done = await runtime.ask(tenant_id, session_id, f"{token} after")
    assert isinstance(done, ev.TurnCompleted)
    last = [r for r in fake_llm.requests if _mentions(f"{token} after")(r)][-1]
    assert [m["role"] for m in last.messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert (await host.stats.remote()).passivations >= 1


async def test_kill_9_of_a_host_mid_turn_loses_no_message(
    runtime: Runtime, router: RaySessionRouter, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    slow = Rule(when=_mentions(f"{token} slow"), reply=Reply(content="late", ttft_s=30), times=1)
    fake_llm.script.add_rule(slow)
    fake_llm.script.add_rule(Rule(when=_mentions(token), reply=Reply(content="recovered")))
    tenant_id, session_id = await _session(runtime)
    first = await runtime.send_message(tenant_id, session_id, f"{token} slow")

    async def running() -> bool:
        turn = await runtime.store.get_turn(tenant_id, first.turn_id)
        return turn.status == "running"

    await eventually(running, timeout=60, message="the first turn started")
    host = router.actor(session_id)
    os.kill(await host.pid.remote(), signal.SIGKILL)

    second = await runtime.send_message(tenant_id, session_id, f"{token} next")
    assert await _turn_outcome(runtime, tenant_id, second.turn_id) == "completed"
    first_turn = await runtime.store.get_turn(tenant_id, first.turn_id)
    assert first_turn.status in {"completed", "failed"}
    assert first_turn.attempt == 2 or first_turn.error
    messages = await runtime.store.list_messages(tenant_id, session_id)
    users = [m.content for m in messages if m.role == "user"]
    assert users == [f"{token} slow", f"{token} next"]
    events = await runtime.store.list_events(tenant_id, session_id)
    outcomes = {
        e.turn_id: e.type for e in events if isinstance(e, ev.TurnCompleted | ev.TurnFailed)
    }
    assert set(outcomes) == {first.turn_id, second.turn_id}


async def test_two_hosts_claiming_one_session_only_one_can_write(
    settings: Settings, fake_llm: FakeLLM, store: SqlStateStore
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when=_mentions(token), reply=Reply(content="from the owner")))
    tenant = await store.create_tenant("fencing")
    session = await store.create_session(tenant.tenant_id, "tester")
    deps = await build_runtime_deps(settings)
    host_a = SessionHostCore("host-a", lambda: asyncio.sleep(0, deps))
    host_b = SessionHostCore("host-b", lambda: asyncio.sleep(0, deps))
    try:
        await host_a.notify(session.session_id)  # A activates (epoch 1)
        await host_b.notify(session.session_id)  # B claims it (epoch 2): A is fenced off
        submission = await store.submit_message(tenant.tenant_id, session.session_id, token)
        await host_a.notify(session.session_id)  # A tries to run the turn: its writes fail
        await host_b.notify(session.session_id)
        assert await _wait_status(store, tenant.tenant_id, submission.turn_id) == "completed"
        final = await store.get_session(tenant.tenant_id, session.session_id)
        assert final.owner_host == host_b.owner_id  # "host-b~<incarnation>"
        started = [
            e
            for e in await store.list_events(tenant.tenant_id, session.session_id)
            if isinstance(e, ev.TurnStarted)
        ]
        assert len(started) == 1
        assert await host_a.passivate_idle(0) == 1  # its stale activation is dropped...
        assert (await store.get_session(tenant.tenant_id, session.session_id)).owner_host == (
            host_b.owner_id  # ...without releasing B's ownership
        )
    finally:
        await host_a.stop()
        await host_b.stop()
        await deps.store.close()


async def test_a_host_keeps_sessions_by_last_use_and_counts_without_walking_them(
    settings: Settings, fake_llm: FakeLLM, store: SqlStateStore
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when=_mentions(token), reply=Reply(content="late", ttft_s=60)))
    tenant = await store.create_tenant("lru")
    one, two, three = [
        (await store.create_session(tenant.tenant_id, "tester")).session_id for _ in range(3)
    ]
    deps = await build_runtime_deps(settings)
    host = SessionHostCore("lru-host", lambda: asyncio.sleep(0, deps))
    try:

        async def settled() -> bool:  # its worker looked for turns (a use too) and stopped
            return not host.busy_session_ids()

        for session_id in (one, two, three, one):  # one is used again: the most recent
            await host.notify(session_id)
            await eventually(settled, timeout=30, message="the session's worker done")
        assert host.active_session_ids() == [two, three, one]
        submission = await store.submit_message(tenant.tenant_id, three, token)
        await host.notify(three)
        assert host.active_session_ids() == [two, one, three]

        async def running() -> bool:
            return host.stats().running_turns == 1

        await eventually(running, timeout=30, message="the slow turn running")
        assert host.stats().active_sessions == 3
        # Everything is idle but the session whose turn runs: it stays.
        assert await host.passivate_idle(0) == 2
        assert host.active_session_ids() == [three]
        assert await host.cancel(tenant.tenant_id, three, submission.turn_id)
        assert host.stats().running_turns == 0
        assert await host.passivate_idle(0) == 1
        assert host.stats().active_sessions == 0
    finally:
        await host.stop()
        await deps.store.close()


async def _wait_status(store: SqlStateStore, tenant_id: str, turn_id: str) -> str:
    async def done() -> str | None:
        turn = await store.get_turn(tenant_id, turn_id)
        return turn.status if turn.status in {"completed", "failed", "cancelled"} else None

    return await eventually(done, timeout=60, message=f"turn {turn_id} finished")


async def test_isolation_mode_runs_one_actor_per_session(
    ray_cluster: None, settings: Settings, store: SqlStateStore, fake_llm: FakeLLM
) -> None:
    isolated = settings.model_copy(
        update={"runtime": settings.runtime.model_copy(update={"sessions_per_host": 1})}
    )
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when=_mentions(token), reply=Reply(content="alone")))
    runtime = Runtime(store, RaySessionRouter(isolated))
    tenant_id = (await store.create_tenant("isolation")).tenant_id
    one = (await runtime.create_session(tenant_id, "tester")).session_id
    two = (await runtime.create_session(tenant_id, "tester")).session_id
    for session_id in (one, two):
        done = await runtime.ask(tenant_id, session_id, token)
        assert isinstance(done, ev.TurnCompleted) and done.content == "alone"
    router = RaySessionRouter(isolated)
    pids = {await router.actor(one).pid.remote(), await router.actor(two).pid.remote()}
    assert len(pids) == 2


async def test_the_host_set_reconciles_to_load_between_min_and_max(
    ray_cluster: None, settings: Settings, store: SqlStateStore
) -> None:
    small = settings.model_copy(
        update={
            "runtime": settings.runtime.model_copy(
                update={
                    "host_prefix": f"s{uuid.uuid4().hex[:6]}",
                    "sessions_per_host": 2,
                    "target_utilization": 1.0,
                    "min_hosts": 1,
                    "max_hosts": 3,
                    "reconcile_interval_s": 3600,  # only the explicit reconcile calls below
                }
            )
        }
    )
    router = RaySessionRouter(small)
    assert await router.set_host_count(1) == 1
    tenant_id = (await store.create_tenant("scaling")).tenant_id
    sessions = [(await store.create_session(tenant_id, "tester")).session_id for _ in range(5)]
    for session_id in sessions:
        await router.notify(session_id)  # all on the single host
    assert await router.reconcile() == 3  # needs ceil(5 / 2) = 3, capped at max_hosts
    assert len(await router.host_loads()) == 3 + small.runtime.standby_hosts
    for stats in await router.host_loads():
        host = ray.get_actor(stats.host_id, namespace=small.runtime.namespace)
        await host.passivate_idle.remote(0)
    assert await router.reconcile() == 2  # idle: shrink one host at a time
    assert await router.reconcile() == 1
    assert await router.reconcile() == 1  # never below min_hosts


async def test_cancel_stops_a_running_turn_and_a_queued_one(
    runtime: Runtime, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(
        Rule(when_last_user_contains=f"{token} slow", reply=Reply(content="too late", ttft_s=60))
    )
    fake_llm.script.add_rule(Rule(when=_mentions(token), reply=Reply(content="fine")))
    tenant_id, session_id = await _session(runtime)
    running = await runtime.send_message(tenant_id, session_id, f"{token} slow")
    queued = await runtime.send_message(tenant_id, session_id, f"{token} queued")

    async def started() -> bool:
        return (await runtime.store.get_turn(tenant_id, running.turn_id)).status == "running"

    await eventually(started, timeout=60, message="the slow turn started")
    assert await runtime.cancel(tenant_id, session_id, queued.turn_id)
    assert await runtime.cancel(tenant_id, session_id)  # the running one
    assert await _turn_outcome(runtime, tenant_id, running.turn_id) == "cancelled"
    assert await _turn_outcome(runtime, tenant_id, queued.turn_id) == "cancelled"
    done = await runtime.ask(tenant_id, session_id, f"{token} after")
    assert isinstance(done, ev.TurnCompleted) and done.content == "fine"
    cancelled = [
        e.turn_id
        for e in await runtime.store.list_events(tenant_id, session_id)
        if isinstance(e, ev.TurnCancelled)
    ]
    assert sorted(cancelled) == sorted([running.turn_id, queued.turn_id])


async def test_a_subscriber_that_leaves_early_releases_the_session(
    runtime: Runtime, router: RaySessionRouter, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when=_mentions(token), reply=Reply(content="bye")))
    tenant_id, session_id = await _session(runtime)
    done = await runtime.ask(tenant_id, session_id, token)
    assert isinstance(done, ev.TurnCompleted)
    host = router.actor(session_id)
    stream = runtime.stream(tenant_id, session_id, after_seq=0)
    first = await anext(stream)
    assert first.seq == 1  # type: ignore[union-attr]
    assert (await host.stats.remote()).subscribers >= 1
    await stream.aclose()  # type: ignore[attr-defined]

    async def released() -> bool:
        return bool((await host.stats.remote()).subscribers == 0)

    await eventually(released, timeout=30, message="the host dropped the subscription")


async def test_a_woken_turn_runs_without_a_read_only_while_it_is_the_only_one_open(
    settings: Settings, fake_llm: FakeLLM, store: SqlStateStore
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when=_mentions(token), reply=Reply(content=f"ok {token}")))
    tenant = await store.create_tenant("queued-wake")
    session_id = (await store.create_session(tenant.tenant_id, "tester")).session_id
    deps = await build_runtime_deps(settings)
    reads: list[str] = []
    read_open_turns = deps.store.open_turns_with_prompts

    async def counted(session: str) -> Any:  # the real read, counted
        reads.append(session)
        return await read_open_turns(session)

    deps.store.open_turns_with_prompts = counted  # type: ignore[method-assign,assignment]
    host = SessionHostCore("queued-wake-host", lambda: asyncio.sleep(0, deps))

    async def ask(content: str) -> ev.TurnOutcome | None:
        submission = await store.submit_message(tenant.tenant_id, session_id, content)
        assert submission.queued is not None and submission.queued.seq == submission.seq
        return await host.wait_turn(
            tenant.tenant_id,
            session_id,
            submission.turn_id,
            submission.seq - 1,
            60,
            submission.queued,
        )

    try:
        await host.notify(session_id)  # activated with no turn open: quiet as loaded
        await eventually(lambda: _idle(host), timeout=30, message="the first look done")
        reads.clear()
        # Turn after turn, each the only one open when its wake comes: no read at all.
        for index in range(3):
            outcome = await ask(f"{token} q{index}")
            assert isinstance(outcome, ev.TurnCompleted) and outcome.content == f"ok {token}"
        assert reads == []
        # A message committed without its wake is open when the next one comes: the next
        # wake's turn is not the only one, so the worker reads and runs both, in order.
        unwoken = await store.submit_message(tenant.tenant_id, session_id, f"{token} silent")
        outcome = await ask(f"{token} after")
        assert isinstance(outcome, ev.TurnCompleted)
        assert reads and set(reads) == {session_id}
        assert (await store.get_turn(tenant.tenant_id, unwoken.turn_id)).status == "completed"
        events = await store.list_events(tenant.tenant_id, session_id)
        arrival = [e.turn_id for e in events if isinstance(e, ev.MessageReceived)]
        started = [e.turn_id for e in events if isinstance(e, ev.TurnStarted)]
        assert started == arrival  # every turn ran once, in the order the messages came
        # The model saw the whole conversation, each question once, in order.
        last = [r for r in fake_llm.requests if _mentions(token)(r)][-1]
        asked = [m["content"] for m in last.messages if m["role"] == "user"]
        assert asked == [
            f"{token} q0",
            f"{token} q1",
            f"{token} q2",
            f"{token} silent",
            f"{token} after",
        ]
        # A wake that brings back a turn that already ran (a retried call) runs nothing again.
        requests = len(fake_llm.requests)
        first = next(e for e in events if isinstance(e, ev.MessageReceived))
        stale = first.model_copy()
        replay = await host.wait_turn(
            tenant.tenant_id,
            session_id,
            stale.turn_id,
            stale.seq - 1,
            30,
            QueuedTurn(
                turn_id=stale.turn_id,
                message_id=stale.message_id,
                seq=stale.seq,
                prompt=stale.content,
            ),
        )
        assert isinstance(replay, ev.TurnCompleted) and replay.turn_id == stale.turn_id
        assert len(fake_llm.requests) == requests
    finally:
        await host.stop()
        await deps.store.close()


async def _idle(host: SessionHostCore) -> bool:
    return not host.busy_session_ids()


async def test_a_woken_turn_waits_behind_a_turn_paused_for_approval(
    settings: Settings, fake_llm: FakeLLM, store: SqlStateStore
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(
        Rule(
            when=lambda r: _mentions(token)(r) and _last_is_tool(r),
            reply=Reply(content=f"summed {token}"),
        )
    )
    fake_llm.script.add_rule(
        Rule(
            when=_mentions(f"{token} sum"),
            reply=Reply(tool_calls=[ToolCall("calculator", {"expression": "6*7"})]),
            times=1,
        )
    )
    fake_llm.script.add_rule(Rule(when=_mentions(token), reply=Reply(content=f"later {token}")))
    tenant = await store.create_tenant("queued-wake-paused")
    session_id = (await store.create_session(tenant.tenant_id, "tester")).session_id
    # The real Rego policy, in-process, with the tenant's rule sending calculator calls to a person.
    asks = {"approvals": [{"tools": ["calculator"], "reason": "sums need a second look"}]}
    policy = WasmPolicy({"agentcluster": {"tenants": {tenant.tenant_id: asks}}})
    deps = await build_runtime_deps(settings, policy=policy)
    host = SessionHostCore("queued-wake-paused-host", lambda: asyncio.sleep(0, deps))

    async def ask(content: str, timeout_s: float) -> tuple[str, ev.TurnOutcome | None]:
        submission = await store.submit_message(tenant.tenant_id, session_id, content)
        outcome = await host.wait_turn(
            tenant.tenant_id,
            session_id,
            submission.turn_id,
            submission.seq - 1,
            timeout_s,
            submission.queued,
        )
        return submission.turn_id, outcome

    try:
        paused_id, paused = await ask(f"{token} sum", 60)
        assert isinstance(paused, ev.TurnAwaitingApproval)
        # The next message's wake brings its turn, but a turn waits for a person before it: the
        # later one must not run (the pause is an outcome, yet the session is not quiet).
        later_id, later = await ask(f"{token} next", 2)
        assert later is None
        assert (await store.get_turn(tenant.tenant_id, later_id)).status == "queued"
        assert not [r for r in fake_llm.requests if _mentions(f"{token} next")(r)]
        # Approved: the paused turn resumes and ends, then the later one runs.
        (call,) = await store.list_approvals(tenant.tenant_id, session_id)
        _approval, ready = await store.decide_approval(
            tenant.tenant_id, session_id, call.tool_call_id, "approve", decided_by="test"
        )
        assert ready
        await host.notify(session_id)
        assert await _wait_status(store, tenant.tenant_id, paused_id) == "completed"
        assert await _wait_status(store, tenant.tenant_id, later_id) == "completed"
        events = await store.list_events(tenant.tenant_id, session_id)
        ended = [e.turn_id for e in events if isinstance(e, ev.TurnCompleted)]
        assert ended == [paused_id, later_id]
    finally:
        await host.stop()
        policy.close()
        await deps.store.close()
