"""The metrics facade without Ray: names, labels, bounds, error isolation, and what the breaker
registry and the relay record (into a MemorySink installed for the test)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping, Sequence

import pytest

from agentcluster import metrics
from agentcluster.config import RelaySettings
from agentcluster.domain import OutboxRecord
from agentcluster.eventlog import EventPublisher, OutboxRelay, OutboxSource
from agentcluster.llm._litellm import BreakerRegistry


@pytest.fixture
def sink() -> Iterator[metrics.MemorySink]:
    with metrics.install_sink(metrics.MemorySink()) as installed:
        assert isinstance(installed, metrics.MemorySink)
        yield installed


def test_every_metric_is_named_for_prometheus_and_has_bounded_labels() -> None:
    forbidden = {"session", "session_id", "tenant", "tenant_id", "turn_id"}
    for name, spec in metrics.METRICS.items():
        assert name == spec.name and name.startswith("agentcluster_")
        assert not name.endswith("_total"), "Ray and Prometheus add _total to counters"
        assert not forbidden & set(spec.labels), name
        assert bool(spec.boundaries) == (spec.kind == "histogram"), name


def test_a_turn_counts_by_agent_and_outcome_and_observes_its_latency(
    sink: metrics.MemorySink,
) -> None:
    metrics.record_turn("tester", "completed", 1.5)
    metrics.record_turn("tester", "completed", 0.5)
    metrics.record_turn("tester", "cancelled", None)
    assert sink.value("agentcluster_turns", agent="tester", outcome="completed") == 2
    assert sink.value("agentcluster_turns", agent="tester", outcome="cancelled") == 1
    completed = sink.observed("agentcluster_turn_seconds", agent="tester", outcome="completed")
    assert completed == [1.5, 0.5]
    assert sink.observed("agentcluster_turn_seconds", agent="tester", outcome="cancelled") == []


def test_an_llm_call_records_latency_tokens_and_cost_by_model(sink: metrics.MemorySink) -> None:
    metrics.record_llm_call(
        "gpt-x", "ok", 0.2, prompt_tokens=30, completion_tokens=5, cost_usd=0.01
    )
    metrics.record_llm_call("gpt-x", "error", 3.0)
    assert sink.value("agentcluster_llm_calls", model="gpt-x", outcome="ok") == 1
    assert sink.value("agentcluster_llm_calls", model="gpt-x", outcome="error") == 1
    assert sink.value("agentcluster_llm_tokens", model="gpt-x", kind="prompt") == 30
    assert sink.value("agentcluster_llm_tokens", model="gpt-x", kind="completion") == 5
    assert sink.value("agentcluster_llm_cost_usd", model="gpt-x") == pytest.approx(0.01)
    assert sink.observed("agentcluster_llm_call_seconds", model="gpt-x") == [0.2, 3.0]


def test_tool_calls_count_by_decision_and_outcome(sink: metrics.MemorySink) -> None:
    metrics.record_tool_call("calculator", "allowed", True, 0.003)
    metrics.record_tool_call("http_fetch", "denied", False, None)
    metrics.record_tool_call("nonsense", "none", False, None)
    assert (
        sink.value("agentcluster_tool_calls", tool="calculator", decision="allowed", outcome="ok")
        == 1
    )
    assert (
        sink.value("agentcluster_tool_calls", tool="http_fetch", decision="denied", outcome="error")
        == 1
    )
    assert sink.value("agentcluster_tool_calls", tool="nonsense", decision="none", outcome="error")
    assert sink.observed("agentcluster_tool_call_seconds", tool="calculator") == [0.003]
    assert sink.observed("agentcluster_tool_call_seconds", tool="http_fetch") == []


def test_sessions_and_http_requests(sink: metrics.MemorySink) -> None:
    metrics.record_session_activated("host-1")
    metrics.record_sessions_active("host-1", 3)
    metrics.record_sessions_active("host-1", 2)
    metrics.record_session_passivated("host-1")
    metrics.record_http_request("/v1/health", 200, 0.001)
    assert sink.value("agentcluster_session_activations", host="host-1") == 1
    assert sink.value("agentcluster_session_passivations", host="host-1") == 1
    assert sink.value("agentcluster_sessions_active", host="host-1") == 2
    assert sink.value("agentcluster_http_requests", route="/v1/health", status="200") == 1
    assert sink.observed("agentcluster_http_request_seconds", route="/v1/health") == [0.001]


def test_a_label_that_keeps_growing_records_the_rest_as_other(sink: metrics.MemorySink) -> None:
    # Tool names come from the model: a model inventing names must not grow the series forever.
    names = [f"invented-{i}" for i in range(metrics.MAX_LABEL_VALUES + 5)]
    for name in names:
        metrics.record_tool_call(name, "none", False, None)
    tags = {"decision": "none", "outcome": "error"}
    other = sink.value("agentcluster_tool_calls", tool="other", **tags)
    kept = [n for n in names if sink.value("agentcluster_tool_calls", tool=n, **tags)]
    assert other >= 5
    assert len(kept) + other == len(names)
    assert len(kept) <= metrics.MAX_LABEL_VALUES


class BrokenSink:
    def record(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        raise RuntimeError(f"sink down while recording {name}")


def test_a_failing_sink_never_reaches_the_caller_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with metrics.install_sink(BrokenSink()), caplog.at_level(logging.WARNING):
        for _ in range(3):
            metrics.record_sessions_active("host-broken", 1)
    warnings = [r for r in caplog.records if "agentcluster_sessions_active" in r.getMessage()]
    assert len(warnings) == 1


def test_without_ray_or_a_sink_recording_does_nothing() -> None:
    with metrics.install_sink(None):
        metrics.record_turn("tester", "completed", 0.1)  # no Ray here: nowhere to go, no error


def test_unknown_breaker_states_are_not_recorded(sink: metrics.MemorySink) -> None:
    metrics.record_breaker_state("m", "ajar")
    assert not sink.values


def test_the_breaker_gauge_follows_the_breaker(sink: metrics.MemorySink) -> None:
    registry = BreakerRegistry(fail_max=1, reset_timeout_s=60)
    breaker = registry.breaker("model-a")
    assert sink.values[("agentcluster_llm_breaker_state", (("model", "model-a"),))] == 0
    breaker.open()
    assert sink.value("agentcluster_llm_breaker_state", model="model-a") == 2
    breaker.half_open()
    assert sink.value("agentcluster_llm_breaker_state", model="model-a") == 1
    breaker.close()
    assert sink.value("agentcluster_llm_breaker_state", model="model-a") == 0


async def test_the_agent_label_follows_the_context_into_tasks_started_after_binding() -> None:
    assert metrics.current_agent() == "unknown"

    async def bound_then_started() -> str:
        metrics.bind_agent("tester")
        return await asyncio.create_task(_agent_in_task())

    assert await asyncio.create_task(bound_then_started()) == "tester"
    assert metrics.current_agent() == "unknown"  # binding in a task stays in that task


async def _agent_in_task() -> str:
    return metrics.current_agent()


# --- the relay's lag gauge ----------------------------------------------------------------


def _record(position: int) -> OutboxRecord:
    return OutboxRecord(
        position=position, event_id=f"e{position}", session_id="s", seq=position, payload=b"{}"
    )


class Outbox(OutboxSource):
    def __init__(self, count: int) -> None:
        self.pending = [_record(i) for i in range(1, count + 1)]

    async def fetch_unpublished(self, limit: int) -> list[OutboxRecord]:
        return self.pending[:limit]

    async def mark_published(self, positions: Sequence[int]) -> None:
        done = set(positions)
        self.pending = [r for r in self.pending if r.position not in done]


class CountingOutbox(Outbox):
    async def outbox_lag(self) -> int:
        return len(self.pending)


class Publisher(EventPublisher):
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def publish(self, records: Sequence[OutboxRecord]) -> list[bool]:
        return [True] * len(records)


async def test_a_partial_batch_tells_the_exact_lag(sink: metrics.MemorySink) -> None:
    relay = OutboxRelay(Outbox(3), Publisher(), RelaySettings(batch_size=10))
    assert await relay.run_once() == 3
    assert sink.value("agentcluster_outbox_unpublished") == 0
    assert sink.value("agentcluster_outbox_published") == 3


async def test_a_full_batch_counts_the_backlog_where_the_source_can(
    sink: metrics.MemorySink,
) -> None:
    relay = OutboxRelay(CountingOutbox(25), Publisher(), RelaySettings(batch_size=10))
    await relay.run_once()
    assert sink.value("agentcluster_outbox_unpublished") == 15
    assert sink.value("agentcluster_outbox_published") == 10


async def test_a_full_batch_leaves_the_lag_alone_where_the_source_cannot_count(
    sink: metrics.MemorySink,
) -> None:
    relay = OutboxRelay(Outbox(25), Publisher(), RelaySettings(batch_size=10))
    await relay.run_once()
    assert ("agentcluster_outbox_unpublished", ()) not in sink.values
    assert sink.value("agentcluster_outbox_published") == 10
