"""The outbox relay against a real Kafka broker: per-session order, and a broker outage mid-run."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import ray
from aiokafka import AIOKafkaConsumer

from actors.relay import start_relay
from agentcluster import events as ev
from agentcluster.config import RelaySettings, load_settings
from agentcluster.eventlog import KafkaPublisher, OutboxRelay, TopicSpec, ensure_topics
from agentcluster.store import SqlStateStore, open_store
from tests.conftest import ROOT, eventually, service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SESSIONS = 50
EVENTS_PER_SESSION = 20  # session.created + 19 message.received


@pytest.fixture
async def pg_store(postgres_dsn: str) -> AsyncIterator[SqlStateStore]:
    store = await open_store(postgres_dsn)
    yield store
    await store.close()


@pytest.fixture
async def topic() -> str:
    name = f"test.events.{uuid.uuid4().hex[:8]}"
    await ensure_topics(
        service("SA01_KAFKA_BOOTSTRAP_SERVERS"), [TopicSpec(name=name, partitions=6)]
    )
    return name


def _relay(store: SqlStateStore, topic: str) -> OutboxRelay:
    publisher = KafkaPublisher(
        service("SA01_KAFKA_BOOTSTRAP_SERVERS"),
        topic,
        client_id="relay-test",
        request_timeout_ms=5_000,
    )
    settings = RelaySettings(batch_size=200, poll_interval_s=0.05, backoff_max_s=1.0)
    return OutboxRelay(store, publisher, settings)


async def _write_session(store: SqlStateStore, tenant_id: str, messages: int) -> str:
    session = await store.create_session(tenant_id, "default")
    for index in range(messages):
        await store.submit_message(tenant_id, session.session_id, f"m{index}")
    return session.session_id


async def _consume(topic: str, wanted: set[str], expected: int) -> list[ev.Event]:
    """Read the topic from the start until ``expected`` distinct events of ``wanted`` arrived."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=service("SA01_KAFKA_BOOTSTRAP_SERVERS"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received: list[ev.Event] = []
    distinct: set[str] = set()
    try:

        async def more() -> bool:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    event = ev.load_event(record.value)
                    assert record.key == event.session_id.encode()
                    if event.session_id in wanted:
                        received.append(event)
                        distinct.add(event.event_id)
            return len(distinct) >= expected

        await eventually(more, timeout=120, message=f"{expected} events on {topic}")
    finally:
        await consumer.stop()
    return received


def _check_order(received: list[ev.Event], sessions: list[str], per_session: int) -> None:
    """After dedupe by event id, each session's events are exactly seq 1..n, in order."""
    seen: set[str] = set()
    by_session: dict[str, list[int]] = defaultdict(list)
    for event in received:
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        by_session[event.session_id].append(event.seq)
    for session_id in sessions:
        assert by_session[session_id] == list(range(1, per_session + 1)), session_id


async def _run_relay(relay: OutboxRelay) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    return stop, asyncio.create_task(relay.run(stop))


async def test_thousand_events_over_fifty_sessions_arrive_in_order(
    pg_store: SqlStateStore, topic: str
) -> None:
    tenant_id = (await pg_store.create_tenant("relay")).tenant_id
    sessions = list(
        await asyncio.gather(
            *(_write_session(pg_store, tenant_id, EVENTS_PER_SESSION - 1) for _ in range(SESSIONS))
        )
    )
    stop, task = await _run_relay(_relay(pg_store, topic))
    try:
        received = await _consume(topic, set(sessions), SESSIONS * EVENTS_PER_SESSION)
    finally:
        stop.set()
        await task
    _check_order(received, sessions, EVENTS_PER_SESSION)
    assert len({e.event_id for e in received}) == SESSIONS * EVENTS_PER_SESSION


def _broker(action: str) -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "cluster" / "services" / "deps.sh"), f"kafka-{action}"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, f"kafka-{action} failed: {done.stderr}{done.stdout}"


async def test_broker_outage_mid_run_loses_and_reorders_nothing(
    pg_store: SqlStateStore, topic: str
) -> None:
    tenant_id = (await pg_store.create_tenant("outage")).tenant_id
    sessions = [(await pg_store.create_session(tenant_id, "default")).session_id for _ in range(10)]
    relay = _relay(pg_store, topic)
    stop, task = await _run_relay(relay)
    rounds = 30

    async def write_round(index: int) -> None:
        for session_id in sessions:
            await pg_store.submit_message(tenant_id, session_id, f"r{index}")

    broker_stopped = False
    producer_tasks = _producer_tasks()
    try:
        for index in range(10):
            await write_round(index)
        await eventually(
            lambda: _published_at_least(relay, 50), timeout=60, message="relay started publishing"
        )
        await asyncio.to_thread(_broker, "stop")
        broker_stopped = True
        for index in range(10, 20):  # written while the broker is down
            await write_round(index)
        # Keep the broker down until the relay has felt it (its producer's requests time out),
        # so the failure path (mark only acknowledged prefixes, recreate, back off) really runs.
        await eventually(
            lambda: _failed_at_least(relay, 1), timeout=90, message="relay noticed the outage"
        )
        await asyncio.to_thread(_broker, "start")
        broker_stopped = False
        for index in range(20, rounds):
            await write_round(index)
        received = await _consume(topic, set(sessions), len(sessions) * (rounds + 1))
    finally:
        if broker_stopped:  # never leave the shared broker down for the tests after this one
            await asyncio.to_thread(_broker, "start")
        stop.set()
        await task
    _check_order(received, sessions, rounds + 1)
    # The producers recreated during the outage could not flush: none left a task running.
    assert _producer_tasks() <= producer_tasks


def _producer_tasks() -> set[asyncio.Task[object]]:
    """This loop's unfinished tasks running aiokafka producer code (senders, their flushes)."""
    pending = set()
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if not task.done() and code is not None and "aiokafka/producer" in code.co_filename:
            pending.add(task)
    return pending


async def _published_at_least(relay: OutboxRelay, count: int) -> bool:
    return relay.published >= count


async def _failed_at_least(relay: OutboxRelay, count: int) -> bool:
    return relay.failures >= count


async def test_the_relay_actor_publishes_the_clusters_events(
    ray_cluster: None, pg_store: SqlStateStore, postgres_dsn: str, tmp_path: Path
) -> None:
    topics = tmp_path / "topics.yaml"
    name = f"test.events.{uuid.uuid4().hex[:8]}"
    topics.write_text(f"events: {{name: {name}, partitions: 3}}\n")
    settings = load_settings(
        {
            "db": {"dsn": postgres_dsn},
            "kafka": {
                "bootstrap_servers": service("SA01_KAFKA_BOOTSTRAP_SERVERS"),
                "topics_file": topics,
            },
            "runtime": {"host_prefix": f"r{uuid.uuid4().hex[:6]}"},
        }
    )
    tenant_id = (await pg_store.create_tenant("relay-actor")).tenant_id
    session_id = (await pg_store.create_session(tenant_id, "default")).session_id
    actor = start_relay(settings)
    try:
        received = await _consume(name, {session_id}, 1)
        assert received[0].type == "session.created"
    finally:
        await actor.stop.remote()
        ray.kill(actor, no_restart=True)
