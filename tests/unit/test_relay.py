"""The relay's bookkeeping, with in-memory fakes typed against its ports (no Kafka here)."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Sequence

import pytest

from agentcluster.config import RelaySettings
from agentcluster.domain import OutboxRecord
from agentcluster.errors import DependencyUnavailable, InfrastructureError, StaleEpochError
from agentcluster.eventlog import EventPublisher, OutboxRelay, OutboxSource, acknowledged_prefix


def _record(position: int, session_id: str, seq: int) -> OutboxRecord:
    return OutboxRecord(
        position=position, event_id=f"e{position}", session_id=session_id, seq=seq, payload=b"{}"
    )


class MemoryOutbox(OutboxSource):
    def __init__(self, records: list[OutboxRecord]) -> None:
        self.pending = list(records)

    async def fetch_unpublished(self, limit: int) -> list[OutboxRecord]:
        return self.pending[:limit]

    async def mark_published(self, positions: Sequence[int]) -> None:
        done = set(positions)
        self.pending = [r for r in self.pending if r.position not in done]


class FlakyPublisher(EventPublisher):
    """Fails the records whose positions are in ``fail_once`` (the first time only).

    Like Kafka's idempotent producer, a failure leaves no gap in a partition: the session's later
    records in the same call fail too (the port's contract).
    """

    def __init__(self, fail_once: set[int], down_rounds: int = 0) -> None:
        self.fail_once = set(fail_once)
        self.down_rounds = down_rounds
        self.delivered: list[OutboxRecord] = []
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        if self.down_rounds > 0:
            self.down_rounds -= 1
            raise DependencyUnavailable("kafka", "connection refused")

    async def stop(self) -> None:
        return None

    async def publish(self, records: Sequence[OutboxRecord]) -> list[bool]:
        sent = []
        broken: set[str] = set()
        for record in records:
            ok = record.position not in self.fail_once and record.session_id not in broken
            self.fail_once.discard(record.position)
            if not ok:
                broken.add(record.session_id)
            if ok:
                self.delivered.append(record)
            sent.append(ok)
        return sent


def test_acknowledged_prefix_holds_back_a_session_after_its_first_failure() -> None:
    records = [_record(1, "a", 1), _record(2, "b", 1), _record(3, "a", 2), _record(4, "a", 3)]
    assert acknowledged_prefix(records, [True, True, False, True]) == [1, 2]
    assert acknowledged_prefix(records, [False, True, True, True]) == [2]
    assert acknowledged_prefix(records, [True] * 4) == [1, 2, 3, 4]


async def test_a_failed_record_is_resent_and_nothing_is_lost() -> None:
    # positions 1..10 alternate between sessions a and b, each numbered 1..5
    records = [_record(i, "ab"[(i - 1) % 2], (i + 1) // 2) for i in range(1, 11)]
    outbox = MemoryOutbox(records)
    publisher = FlakyPublisher(fail_once={4})
    relay = OutboxRelay(outbox, publisher, RelaySettings(batch_size=100))
    with pytest.raises(InfrastructureError, match="not acknowledged"):
        await relay.run_once()
    assert await relay.run_once() > 0
    assert outbox.pending == []
    first_seen: dict[str, list[int]] = {"a": [], "b": []}
    seen: set[str] = set()
    for record in publisher.delivered:
        if record.event_id not in seen:
            seen.add(record.event_id)
            first_seen[record.session_id].append(record.seq)
    assert first_seen == {"a": [1, 2, 3, 4, 5], "b": [1, 2, 3, 4, 5]}


async def test_run_rides_out_an_outage_with_backoff() -> None:
    outbox = MemoryOutbox([_record(i, "s", i) for i in range(1, 6)])
    publisher = FlakyPublisher(fail_once=set(), down_rounds=3)
    settings = RelaySettings(poll_interval_s=0.01, backoff_initial_s=0.01, backoff_max_s=0.02)
    relay = OutboxRelay(outbox, publisher, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    for _ in range(500):
        if not outbox.pending:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert outbox.pending == []
    assert relay.failures == 3 and publisher.starts == 4


def test_errors_pickle_across_actors() -> None:
    error = pickle.loads(pickle.dumps(DependencyUnavailable("kafka", "down")))
    assert isinstance(error, DependencyUnavailable)
    assert (error.dependency, error.message, error.retryable) == ("kafka", "kafka: down", True)
    stale = pickle.loads(pickle.dumps(StaleEpochError("s1", 3)))
    assert (stale.session_id, stale.epoch, str(stale)) == ("s1", 3, str(StaleEpochError("s1", 3)))
