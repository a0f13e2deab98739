"""Load and the ledger of a chaos scenario, and the check of every acknowledged message afterwards.

Clients send messages with an Idempotency-Key and retry on 5xx, 429, timeouts and transport
errors with the same key; every request and its answer is written to a :class:`Ledger`. After the
scenario :func:`verify` checks the store (each acked message exactly once in its session's
history, each acked turn ended) and the Kafka topic (each session's events, deduplicated by event
id, are exactly seq 1..n of the store, in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
from aiokafka import AIOKafkaConsumer

from agentcluster import events as ev
from agentcluster.errors import AgentClusterError
from agentcluster.store import SqlStateStore

__all__ = [
    "Ledger",
    "LoadConfig",
    "Send",
    "Verdict",
    "create_sessions",
    "probe_stored_turn",
    "probe_turn",
    "run_clients",
    "verify",
]

ENDED = {"completed", "failed", "cancelled"}
RETRY_STATUSES = {429, 500, 502, 503, 504}
TIMEOUT = 0  # the status recorded for a request without an answer


@dataclass
class Send:
    """One message a client meant to send, and what became of it."""

    session_id: str
    key: str
    content: str
    started: float
    acked_at: float | None = None
    message_id: str | None = None
    turn_id: str | None = None
    statuses: list[int] = field(default_factory=list)


@dataclass
class Ledger:
    """Every message sent and every answer (monotonic time, status; 0 for no answer)."""

    sends: list[Send] = field(default_factory=list)
    answers: list[tuple[float, int]] = field(default_factory=list)
    problems: Counter[str] = field(default_factory=Counter)

    def acked(self) -> list[Send]:
        return [send for send in self.sends if send.message_id is not None]

    def first_success_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` to the first 2xx answered after it."""
        times = [at for at, status in self.answers if 200 <= status < 300 and at >= moment]
        return min(times) - moment if times else None

    def count(self, low: int, high: int) -> int:
        return sum(1 for _, status in self.answers if low <= status < high)


@dataclass(frozen=True)
class LoadConfig:
    """Per client: one message every ``interval_s``; a message is given up after ``give_up_s``."""

    interval_s: float = 1.0
    request_timeout_s: float = 10.0
    give_up_s: float = 90.0


async def create_sessions(client: httpx.AsyncClient, agent: str, count: int) -> list[str]:
    """``count`` new sessions of ``agent``."""
    session_ids = []
    for _ in range(count):
        response = await client.post("/v1/sessions", json={"agent": agent})
        if response.status_code != 201:
            raise RuntimeError(f"create session: {response.status_code} {response.text}")
        session_ids.append(str(response.json()["session_id"]))
    return session_ids


async def _post(client: httpx.AsyncClient, send: Send, timeout_s: float) -> httpx.Response | None:
    try:
        return await client.post(
            f"/v1/sessions/{send.session_id}/messages",
            json={"content": send.content},
            headers={"Idempotency-Key": send.key},
            timeout=timeout_s,
        )
    except httpx.HTTPError:
        return None


def _problem(response: httpx.Response) -> str:
    """``<status> <problem type>`` of an error answer (its body may not be problem+json)."""
    try:
        body = response.json()
        kind = str(body.get("type", "?")).rsplit("/", 1)[-1]
    except ValueError:
        return f"{response.status_code} not json"
    if response.status_code != 503:
        return f"{response.status_code} {kind}"
    # What a client needs to wait well: the dependency named first in the detail, Retry-After.
    named = str(body.get("detail", "")).split(":", 1)[0] or "?"
    retry = response.headers.get("Retry-After")
    return f"503 {kind} ({named}, " + (f"Retry-After {retry})" if retry else "no Retry-After)")


async def deliver(
    client: httpx.AsyncClient, send: Send, ledger: Ledger, config: LoadConfig
) -> None:
    """POST until 202 (same key every time) or until ``give_up_s`` passed or a 4xx said no."""
    while time.monotonic() - send.started < config.give_up_s:
        response = await _post(client, send, config.request_timeout_s)
        status = TIMEOUT if response is None else response.status_code
        now = time.monotonic()
        send.statuses.append(status)
        ledger.answers.append((now, status))
        if response is not None and status >= 400:
            ledger.problems[_problem(response)] += 1
        if response is not None and status == 202:
            body = response.json()
            send.acked_at, send.message_id, send.turn_id = now, body["message_id"], body["turn_id"]
            return
        if response is not None and status not in RETRY_STATUSES:
            return  # a client error: retrying the same request cannot help
        await asyncio.sleep(0.25)


async def _client(
    client: httpx.AsyncClient,
    session_id: str,
    ledger: Ledger,
    stop: asyncio.Event,
    config: LoadConfig,
) -> None:
    number = 0
    while not stop.is_set():
        number += 1
        tag = uuid.uuid4().hex[:10]
        send = Send(
            session_id, f"k-{tag}", f"chaos {number} {tag}: use the calculator", time.monotonic()
        )
        ledger.sends.append(send)
        await deliver(client, send, ledger, config)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), config.interval_s)


async def run_clients(
    client: httpx.AsyncClient,
    session_ids: Sequence[str],
    ledger: Ledger,
    stop: asyncio.Event,
    config: LoadConfig,
) -> None:
    """One closed-loop client per session until ``stop`` is set (each finishes its message)."""
    await asyncio.gather(*(_client(client, sid, ledger, stop, config) for sid in session_ids))


async def probe_turn(
    client: httpx.AsyncClient, session_id: str, since: float, deadline_s: float = 120.0
) -> float | None:
    """Ask ``?wait=true`` (same key on retries) until a turn completes; seconds from ``since``."""
    key = f"probe-{uuid.uuid4().hex[:10]}"
    body = {"content": f"probe {key}: what is 2 + 2?"}
    while time.monotonic() - since < deadline_s:
        with contextlib.suppress(httpx.HTTPError):
            response = await client.post(
                f"/v1/sessions/{session_id}/messages",
                params={"wait": "true"},
                json=body,
                headers={"Idempotency-Key": key},
                timeout=15,
            )
            if response.status_code == 200 and response.json().get("status") == "completed":
                return time.monotonic() - since
        await asyncio.sleep(0.1)
    return None


async def probe_stored_turn(
    client: httpx.AsyncClient,
    store: SqlStateStore,
    tenant_id: str,
    session_id: str,
    since: float,
    deadline_s: float = 120.0,
) -> float | None:
    """Send a message (202, same key on retries), then watch its turn in the store until it
    completes; seconds from ``since`` to when the store says so (polled every 50 ms).

    Unlike ``?wait=true`` this does not depend on how a waiting request learns of a new host.
    """
    key = f"probe-{uuid.uuid4().hex[:10]}"
    send = Send(session_id, key, f"probe {key}: what is 2 + 2?", time.monotonic())
    config = LoadConfig(request_timeout_s=5.0, give_up_s=deadline_s)
    await deliver(client, send, Ledger(), config)
    while send.turn_id is not None and time.monotonic() - since < deadline_s:
        if await _turn_status(store, tenant_id, send.turn_id) == "completed":
            return time.monotonic() - since
        await asyncio.sleep(0.05)
    return None


# -- the check ----------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What the store and the topic hold for the acked messages of a scenario."""

    sent: int = 0
    acked: int = 0
    lost: int = 0
    duplicated: int = 0
    unended: int = 0
    failed_turns: int = 0
    stored_unacked: int = 0
    kafka_missing: int = 0
    kafka_disordered: int = 0
    kafka_redelivered: int = 0
    kafka_checked: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No acked message lost or doubled, every acked turn ended, the topic complete."""
        kafka_ok = self.kafka_missing == 0 and self.kafka_disordered == 0
        return self.lost == 0 and self.duplicated == 0 and self.unended == 0 and kafka_ok


async def _turn_status(store: SqlStateStore, tenant_id: str, turn_id: str) -> str:
    try:
        return (await store.get_turn(tenant_id, turn_id)).status
    except AgentClusterError:
        return "unknown"


async def _wait_turns_ended(
    store: SqlStateStore, tenant_id: str, sends: Sequence[Send], timeout_s: float
) -> dict[str, str]:
    statuses: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    pending = [send.turn_id for send in sends if send.turn_id]
    while pending:
        for turn_id in pending:
            statuses[turn_id] = await _turn_status(store, tenant_id, turn_id)
        pending = [turn_id for turn_id in pending if statuses[turn_id] not in ENDED]
        if not pending or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    return statuses


async def _check_history(
    store: SqlStateStore, tenant_id: str, ledger: Ledger, verdict: Verdict
) -> None:
    by_session: dict[str, list[Send]] = defaultdict(list)
    for send in ledger.sends:
        by_session[send.session_id].append(send)
    for session_id, sends in by_session.items():
        history = await store.list_messages(tenant_id, session_id)
        users = Counter(m.content for m in history if m.role == "user")
        for send in sends:
            copies = users.get(send.content, 0)
            verdict.duplicated += max(copies - 1, 0)
            if send.message_id is not None and copies == 0:
                verdict.lost += 1
            if send.message_id is None and copies:
                verdict.stored_unacked += 1


async def _store_seqs(store: SqlStateStore, tenant_id: str, session_id: str) -> int:
    last = 0
    while batch := await store.list_events(tenant_id, session_id, after_seq=last, limit=1000):
        last = batch[-1].seq
    return last


async def _check_kafka(
    store: SqlStateStore,
    tenant_id: str,
    session_ids: Sequence[str],
    bootstrap: str,
    topic: str,
    timeout_s: float,
) -> tuple[int, int, int]:
    """(missing, disordered sessions, redelivered) for the sessions' events on the topic."""
    wanted = {sid: await _store_seqs(store, tenant_id, sid) for sid in session_ids}
    seqs: dict[str, list[int]] = defaultdict(list)
    seen: Counter[str] = Counter()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    event = ev.load_event(record.value)
                    seen[event.event_id] += 1
                    if event.session_id in wanted and seen[event.event_id] == 1:
                        seqs[event.session_id].append(event.seq)
            if all(len(seqs[sid]) >= last for sid, last in wanted.items()):
                break
    finally:
        await consumer.stop()
    missing = sum(max(last - len(set(seqs[sid])), 0) for sid, last in wanted.items())
    disordered = sum(
        1 for sid, last in wanted.items() if seqs[sid][:last] != list(range(1, last + 1))
    )
    redelivered = sum(count - 1 for count in seen.values() if count > 1)
    return missing, disordered, redelivered


async def verify(
    store: SqlStateStore,
    tenant_id: str,
    ledger: Ledger,
    *,
    kafka: tuple[str, str] | None,
    timeout_s: float = 120.0,
) -> Verdict:
    """Check every send of ``ledger`` in the store and (``kafka``: bootstrap, topic) the topic.

    Waits up to ``timeout_s`` for acked turns to end and for the relay to catch up.
    """
    acked = ledger.acked()
    verdict = Verdict(sent=len(ledger.sends), acked=len(acked))
    statuses = await _wait_turns_ended(store, tenant_id, acked, timeout_s)
    verdict.unended = sum(1 for status in statuses.values() if status not in ENDED)
    verdict.failed_turns = sum(1 for status in statuses.values() if status == "failed")
    await _check_history(store, tenant_id, ledger, verdict)
    if kafka is not None:
        sessions = sorted({send.session_id for send in ledger.sends})
        missing, disordered, redelivered = await _check_kafka(
            store, tenant_id, sessions, *kafka, timeout_s
        )
        verdict.kafka_missing, verdict.kafka_disordered = missing, disordered
        verdict.kafka_redelivered, verdict.kafka_checked = redelivered, True
    return verdict
