"""Kafka inbound on a real broker, PostgreSQL and local Ray, LiteLLM against the fake LLM server.

Each test gets its own inbound topic and consumer group. The consumer runs in-process with
``submit=runtime.send_message``; the last test runs it as the detached Ray actor instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import ray
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from actors.inbound import start_inbound
from actors.session import RaySessionRouter
from agentcluster import events as ev
from agentcluster.config import RelaySettings, Settings, load_settings
from agentcluster.domain import MultitaskStrategy, Submission
from agentcluster.errors import DependencyUnavailable
from agentcluster.eventlog import (
    CheckedSubmit,
    InboundConsumer,
    InboundMessage,
    InboundStats,
    KafkaPublisher,
    OutboxRelay,
    Submit,
    TopicSpec,
    ensure_topics,
)
from agentcluster.limits import LimitOverrides, open_tenant_limits
from agentcluster.policy import OpaServerPolicy, build_policy_engine
from agentcluster.runtime import Runtime
from agentcluster.store import SqlStateStore, open_store
from agentcluster.testing.fake_llm import FakeLLM, Reply, Rule
from tests.conftest import eventually, service
from tests.support.opa import tenant_policy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PARTITIONS = 2

PROFILE = {
    "name": "tester",
    "model": "fake-a",
    "system_prompt": "You are a test agent.",
    "tools": [],
    "max_steps": 2,
    "max_output_tokens": 256,
    "context_window": 4096,
}


def _servers() -> str:
    return service("SA01_KAFKA_BOOTSTRAP_SERVERS")


def _unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def settings(
    postgres_dsn: str, fake_llm: FakeLLM, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    folder = tmp_path_factory.mktemp("inbound")
    agents = folder / "agents"
    agents.mkdir()
    (agents / "tester.yaml").write_text(yaml.safe_dump(PROFILE))
    topics: Path = folder / "topics.yaml"
    topics.write_text(
        yaml.safe_dump(
            {
                "events": {"name": _unique("test.events"), "partitions": PARTITIONS},
                "inbound": {"name": _unique("test.inbound"), "partitions": PARTITIONS},
            }
        )
    )
    return load_settings(
        {
            "db": {"dsn": postgres_dsn},
            "kafka": {
                "bootstrap_servers": _servers(),
                "topics_file": topics,
                "request_timeout_ms": 10_000,
            },
            "llm": {"api_base": fake_llm.base_url, "api_key": "test", "max_retries": 0},
            "runtime": {
                "agents_dir": agents,
                "host_prefix": f"i{uuid.uuid4().hex[:6]}",
                "min_hosts": 1,
                "max_hosts": 2,
                "idle_passivate_s": 3600,
            },
        }
    )


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[SqlStateStore]:
    opened = await open_store(settings.db_dsn)
    yield opened
    await opened.close()


@pytest.fixture
def runtime(ray_cluster: None, store: SqlStateStore, settings: Settings) -> Runtime:
    return Runtime(store, RaySessionRouter(settings))


@pytest.fixture
async def inbound_topic() -> str:
    name = _unique("test.inbound")
    await ensure_topics(_servers(), [TopicSpec(name=name, partitions=PARTITIONS)])
    return name


@pytest.fixture
async def events_topic(store: SqlStateStore) -> AsyncIterator[str]:
    """A fresh events topic with the outbox relay running into it."""
    name = _unique("test.events")
    await ensure_topics(_servers(), [TopicSpec(name=name, partitions=PARTITIONS)])
    publisher = KafkaPublisher(
        _servers(), name, client_id="inbound-test-relay", request_timeout_ms=10_000
    )
    relay = OutboxRelay(store, publisher, RelaySettings(poll_interval_s=0.05, backoff_max_s=1.0))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    yield name
    stop.set()
    await task


@contextlib.asynccontextmanager
async def running_consumer(
    topic: str, submit: Submit, group_id: str | None = None
) -> AsyncIterator[InboundConsumer]:
    consumer = InboundConsumer(
        _servers(),
        topic,
        submit,
        group_id=group_id or _unique("test-group"),
        request_timeout_ms=10_000,
        poll_timeout_ms=200,
        backoff_initial_s=0.05,
        backoff_max_s=0.5,
    )
    await consumer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield consumer
    finally:
        stop.set()
        await task
        await consumer.stop()


def _message(
    tenant_id: str,
    session_id: str,
    content: str,
    idempotency_key: str | None = None,
    strategy: MultitaskStrategy = "enqueue",
) -> bytes:
    message = InboundMessage(
        tenant_id=tenant_id,
        session_id=session_id,
        content=content,
        idempotency_key=idempotency_key,
        multitask_strategy=strategy,
    )
    return message.model_dump_json(exclude_none=True).encode()


async def produce(topic: str, key: str, values: list[bytes]) -> None:
    """Send values in order, all with one key (so all land in one partition, in order)."""
    producer = AIOKafkaProducer(bootstrap_servers=_servers(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value=value, key=key.encode())
    finally:
        await producer.stop()


async def read_topic(
    topic: str, done: Callable[[list[ConsumerRecord[bytes, bytes]]], bool]
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``topic`` from the start until ``done(records so far)``."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=_servers(), auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:

        async def more() -> bool:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                records.extend(batch)
            return done(records)

        await eventually(more, timeout=90, message=f"the expected records on {topic}")
    finally:
        await consumer.stop()
    return records


async def committed_offsets(group_id: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=_servers())
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group_id)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


async def end_offsets(topic: str) -> dict[int, int]:
    """Per partition holding records, the offset after its last record."""
    consumer = AIOKafkaConsumer(bootstrap_servers=_servers())
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items() if offset > 0}


async def wait_all_committed(group_id: str, topic: str) -> None:
    ends = await end_offsets(topic)
    assert ends, "nothing was produced"

    async def caught_up() -> dict[int, int]:
        committed = await committed_offsets(group_id, topic)
        return committed if all(committed.get(p) == o for p, o in ends.items()) else {}

    await eventually(caught_up, timeout=30, message=f"offsets {ends} committed by {group_id}")


async def _session(runtime: Runtime) -> tuple[str, str]:
    tenant = await runtime.store.create_tenant("inbound-tests")
    session = await runtime.create_session(tenant.tenant_id, "tester")
    return tenant.tenant_id, session.session_id


async def _events(runtime: Runtime, tenant_id: str, session_id: str) -> list[ev.Event]:
    return list(await runtime.store.list_events(tenant_id, session_id))


async def wait_turns_completed(
    runtime: Runtime, tenant_id: str, session_id: str, count: int
) -> list[ev.TurnCompleted]:
    async def completed() -> list[ev.TurnCompleted]:
        events = await _events(runtime, tenant_id, session_id)
        done = [e for e in events if isinstance(e, ev.TurnCompleted)]
        return done if len(done) >= count else []

    return await eventually(completed, timeout=90, message=f"{count} turns of {session_id} done")


def _user_messages(events: list[ev.Event]) -> list[str]:
    return [e.content for e in events if isinstance(e, ev.MessageReceived)]


async def test_an_inbound_record_runs_a_turn_whose_reply_reaches_the_event_topic(
    runtime: Runtime, fake_llm: FakeLLM, inbound_topic: str, events_topic: str
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(
        Rule(when_last_user_contains=token, reply=Reply(content=f"hello back {token}"))
    )
    tenant_id, session_id = await _session(runtime)
    group_id = _unique("test-group")
    async with running_consumer(inbound_topic, runtime.send_message, group_id) as consumer:
        await produce(inbound_topic, session_id, [_message(tenant_id, session_id, f"hi {token}")])

        def replied(records: list[ConsumerRecord[bytes, bytes]]) -> bool:
            events = [ev.load_event(r.value) for r in records if r.value is not None]
            return any(
                isinstance(e, ev.TurnCompleted) and e.session_id == session_id for e in events
            )

        records = await read_topic(events_topic, replied)
        await wait_all_committed(group_id, inbound_topic)
        assert consumer.stats() == InboundStats(received=1, submitted=1)
    events = [ev.load_event(r.value) for r in records if r.value is not None]
    mine = [e for e in events if e.session_id == session_id]
    completed = [e for e in mine if isinstance(e, ev.TurnCompleted)]
    assert [e.content for e in completed] == [f"hello back {token}"]
    assert _user_messages(mine) == [f"hi {token}"]
    keys = {r.key for r in records if r.value and ev.load_event(r.value).session_id == session_id}
    assert keys == {session_id.encode()}


async def test_a_record_sent_twice_with_one_idempotency_key_starts_one_turn(
    runtime: Runtime, fake_llm: FakeLLM, inbound_topic: str
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content="once")))
    tenant_id, session_id = await _session(runtime)
    record = _message(tenant_id, session_id, f"only once {token}", idempotency_key=token)
    group_id = _unique("test-group")
    async with running_consumer(inbound_topic, runtime.send_message, group_id) as consumer:
        await produce(inbound_topic, session_id, [record, record])
        await eventually(
            lambda: _at_least(lambda: consumer.submitted, 2), message="both records submitted"
        )
        await wait_turns_completed(runtime, tenant_id, session_id, 1)
        await wait_all_committed(group_id, inbound_topic)
        assert consumer.stats() == InboundStats(received=2, submitted=2, duplicates=1)
    events = await _events(runtime, tenant_id, session_id)
    assert _user_messages(events) == [f"only once {token}"]
    assert len([e for e in events if isinstance(e, ev.TurnStarted)]) == 1


async def test_a_redelivered_record_without_a_key_is_not_a_second_turn(
    runtime: Runtime, fake_llm: FakeLLM, inbound_topic: str
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content="first")))
    tenant_id, session_id = await _session(runtime)
    await produce(inbound_topic, session_id, [_message(tenant_id, session_id, f"keyless {token}")])
    async with running_consumer(inbound_topic, runtime.send_message) as first:
        await eventually(lambda: _at_least(lambda: first.submitted, 1), message="submitted")
    await wait_turns_completed(runtime, tenant_id, session_id, 1)
    # Another group reads the same record at the same position: what a consumer that crashed
    # between the store commit and the offset commit gets after its restart.
    async with running_consumer(inbound_topic, runtime.send_message) as again:
        await eventually(lambda: _at_least(lambda: again.submitted, 1), message="resubmitted")
        assert again.stats() == InboundStats(received=1, submitted=1, duplicates=1)
    events = await _events(runtime, tenant_id, session_id)
    assert _user_messages(events) == [f"keyless {token}"]
    assert len([e for e in events if isinstance(e, ev.TurnStarted)]) == 1


async def test_bad_records_go_to_the_dlq_and_do_not_block_the_next_one(
    runtime: Runtime,
    fake_llm: FakeLLM,
    inbound_topic: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="agentcluster.inbound")
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content="valid")))
    tenant_id, session_id = await _session(runtime)
    other_tenant, _ = await _session(runtime)
    secret = f"secret-{token}"
    bad = [
        f"not json {secret}".encode(),
        (
            f'{{"tenant_id": "{tenant_id}", "session_id": "{session_id}", '
            f'"content": "{secret}", "priority": 1}}'
        ).encode(),
        _message(tenant_id, str(uuid.uuid4()), secret),  # no such session
        _message(other_tenant, session_id, secret),  # someone else's session
    ]
    group_id = _unique("test-group")
    async with running_consumer(inbound_topic, runtime.send_message, group_id) as consumer:
        await produce(
            inbound_topic, session_id, [*bad, _message(tenant_id, session_id, f"{token} ok")]
        )
        await wait_turns_completed(runtime, tenant_id, session_id, 1)
        await wait_all_committed(group_id, inbound_topic)
        assert consumer.stats() == InboundStats(received=5, submitted=1, rejected=4)
    assert _user_messages(await _events(runtime, tenant_id, session_id)) == [f"{token} ok"]

    dead = await read_topic(f"{inbound_topic}.dlq", lambda records: len(records) >= len(bad))
    assert [r.value for r in dead] == bad  # unchanged, in order
    headers = [dict(r.headers) for r in dead]
    assert [h["dlq.error.type"] for h in headers] == [
        b"validation-failed",
        b"validation-failed",
        b"not-found",
        b"not-found",
    ]
    assert {h["dlq.source.topic"] for h in headers} == {inbound_topic.encode()}
    offsets = [int(h["dlq.source.offset"]) for h in headers]
    assert offsets == sorted(offsets) and len(set(offsets)) == 4
    assert b"priority" in headers[1]["dlq.error.message"]
    rejected = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 4
    assert secret not in caplog.text  # the user's content never reaches the logs


async def test_an_infrastructure_error_commits_nothing_past_it_and_retries_the_record(
    runtime: Runtime, fake_llm: FakeLLM, inbound_topic: str
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content="later")))
    tenant_id, session_id = await _session(runtime)
    outage = asyncio.Event()
    outage.set()
    attempts: list[str | None] = []

    async def submit_with_outage(
        tenant_id: str,
        session_id: str,
        content: str,
        *,
        idempotency_key: str | None = None,
        strategy: MultitaskStrategy = "enqueue",
    ) -> Submission:
        # The database "fails" for the second message only, so the first shows what is committed.
        if "second" in content and outage.is_set():
            attempts.append(idempotency_key)
            raise DependencyUnavailable("postgresql", "connection refused (injected)")
        return await runtime.send_message(
            tenant_id, session_id, content, idempotency_key=idempotency_key, strategy=strategy
        )

    group_id = _unique("test-group")
    async with running_consumer(inbound_topic, submit_with_outage, group_id) as consumer:
        await produce(
            inbound_topic,
            session_id,
            [
                _message(tenant_id, session_id, f"{token} first"),
                _message(tenant_id, session_id, f"{token} second"),
            ],
        )
        await eventually(lambda: _at_least(lambda: consumer.retries, 3), message="retried")
        (partition, end), *_ = (await end_offsets(inbound_topic)).items()
        committed = await committed_offsets(group_id, inbound_topic)
        assert committed == {partition: end - 1}  # past the first record, not the second
        assert len(set(attempts)) == 1 and len(attempts) >= 3  # the same record, again
        assert consumer.submitted == 1

        outage.clear()
        await wait_turns_completed(runtime, tenant_id, session_id, 2)
        await wait_all_committed(group_id, inbound_topic)
        assert consumer.submitted == 2 and consumer.rejected == 0
    events = await _events(runtime, tenant_id, session_id)
    assert _user_messages(events) == [f"{token} first", f"{token} second"]


async def test_the_inbound_worker_actor_consumes_the_configured_topic(
    ray_cluster: None, settings: Settings, runtime: Runtime, fake_llm: FakeLLM
) -> None:
    assert await start_inbound(settings.model_copy(update={"kafka": _no_kafka(settings)})) is None
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content="actor")))
    tenant_id, session_id = await _session(runtime)
    handle = await start_inbound(settings, group_id=_unique("test-group"))
    assert handle is not None
    try:
        topic = yaml.safe_load(settings.kafka.topics_file.read_text())["inbound"]["name"]
        await produce(topic, session_id, [_message(tenant_id, session_id, f"via actor {token}")])
        done = await wait_turns_completed(runtime, tenant_id, session_id, 1)
        assert done[0].content == "actor"

        async def submitted() -> bool:
            stats: InboundStats = await handle.stats.remote()
            return stats.submitted == 1

        await eventually(submitted, message="the actor counted the submission")
        assert (await handle.stop.remote()).submitted == 1
    finally:
        ray.kill(handle)


async def test_records_go_through_the_policy_and_the_rate_limit_like_http_requests(
    runtime: Runtime,
    store: SqlStateStore,
    settings: Settings,
    fake_llm: FakeLLM,
    inbound_topic: str,
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content="checked")))
    checked = settings.model_copy(
        update={
            "redis": settings.redis.model_copy(update={"url": service("SA01_REDIS_URL")}),
            "policy": settings.policy.model_copy(update={"url": service("SA01_POLICY_URL")}),
            "runtime": settings.runtime.model_copy(update={"namespace": _unique("inbound")}),
        }
    )
    limits = open_tenant_limits(checked, store)
    policy = build_policy_engine(checked)
    submit = CheckedSubmit(runtime.send_message, policy=policy, limits=limits)
    limited_tenant, limited_session = await _session(runtime)
    denied_tenant, denied_session = await _session(runtime)
    await limits.write(limited_tenant, LimitOverrides(requests_per_minute=2))
    limited = [_message(limited_tenant, limited_session, f"{token} {n}") for n in range(3)]
    denied = _message(denied_tenant, denied_session, f"{token} denied")
    group_id = _unique("test-group")
    try:
        async with (
            tenant_policy(denied_tenant, {"deny_actions": ["session.message"]}),
            running_consumer(inbound_topic, submit, group_id) as consumer,
        ):
            await produce(inbound_topic, limited_session, limited)
            await produce(inbound_topic, denied_session, [denied])
            await wait_turns_completed(runtime, limited_tenant, limited_session, 2)
            await wait_all_committed(group_id, inbound_topic)
            assert consumer.stats() == InboundStats(received=4, submitted=2, rejected=2)
    finally:
        await policy.aclose()
        await limits.aclose()
    # Nothing refused ran; what was refused is on the dead-letter topic with the reason.
    limited_events = await _events(runtime, limited_tenant, limited_session)
    assert _user_messages(limited_events) == [f"{token} 0", f"{token} 1"]
    assert _user_messages(await _events(runtime, denied_tenant, denied_session)) == []
    dead = await read_topic(f"{inbound_topic}.dlq", lambda records: len(records) >= 2)
    by_value = {r.value: dict(r.headers) for r in dead}
    assert set(by_value) == {limited[2], denied}
    assert by_value[limited[2]]["dlq.error.type"] == b"rate-limited"
    assert float(by_value[limited[2]]["dlq.error.retry_after"]) >= 1
    assert by_value[denied]["dlq.error.type"] == b"forbidden"
    assert b"denied by policy" in by_value[denied]["dlq.error.message"]


async def test_a_policy_that_cannot_decide_submits_nothing_and_commits_nothing(
    runtime: Runtime, inbound_topic: str
) -> None:
    tenant_id, session_id = await _session(runtime)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    policy = OpaServerPolicy(closed, 0.5)
    submit = CheckedSubmit(runtime.send_message, policy=policy, limits=None)
    group_id = _unique("test-group")
    try:
        async with running_consumer(inbound_topic, submit, group_id) as consumer:
            await produce(inbound_topic, session_id, [_message(tenant_id, session_id, "unchecked")])
            await eventually(lambda: _at_least(lambda: consumer.retries, 2), message="retried")
            assert consumer.submitted == 0 and consumer.rejected == 0
            assert "policy" in (consumer.last_error or "")
            assert await committed_offsets(group_id, inbound_topic) == {}
    finally:
        await policy.aclose()
    assert _user_messages(await _events(runtime, tenant_id, session_id)) == []


def _no_kafka(settings: Settings) -> object:
    return settings.kafka.model_copy(update={"bootstrap_servers": None})


async def _at_least(value: Callable[[], int], count: int) -> bool:
    return value() >= count


async def test_a_records_multitask_strategy_acts_like_the_http_apis(
    runtime: Runtime, fake_llm: FakeLLM, inbound_topic: str
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(
        Rule(when_last_user_contains=f"{token} slow", reply=Reply(content="late", ttft_s=60))
    )
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content="instead")))
    tenant_id, session_id = await _session(runtime)
    slow = await runtime.send_message(tenant_id, session_id, f"{token} slow")

    async def running() -> bool:
        return (await runtime.store.get_turn(tenant_id, slow.turn_id)).status == "running"

    await eventually(running, timeout=60, message="the slow turn started")
    refused = _message(tenant_id, session_id, f"{token} refused", strategy="reject")
    interrupting = _message(tenant_id, session_id, f"{token} now", strategy="interrupt")
    group_id = _unique("test-group")
    async with running_consumer(inbound_topic, runtime.send_message, group_id) as consumer:
        await produce(inbound_topic, session_id, [refused, interrupting])
        done = await wait_turns_completed(runtime, tenant_id, session_id, 1)
        await wait_all_committed(group_id, inbound_topic)
        assert consumer.stats() == InboundStats(received=2, submitted=1, rejected=1)
    assert [e.content for e in done] == ["instead"]
    events = await _events(runtime, tenant_id, session_id)
    assert _user_messages(events) == [f"{token} slow", f"{token} now"]
    cancelled = [e for e in events if isinstance(e, ev.TurnCancelled)]
    assert [(e.turn_id, e.superseded_by) for e in cancelled] == [(slow.turn_id, done[0].turn_id)]
    dead = await read_topic(f"{inbound_topic}.dlq", lambda records: len(records) >= 1)
    assert [(r.value, dict(r.headers)["dlq.error.type"]) for r in dead] == [
        (refused, b"turn-in-progress")
    ]
