"""Untrusted input bounds: event ids, JSON nesting of bodies, session metadata limits, and the
readiness probe that answers a flood of /v1/ready from one probe a second."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from agentcluster import api
from agentcluster.config import load_settings
from agentcluster.gateway._inputs import MAX_EVENT_ID, json_nesting, parse_event_id
from agentcluster.gateway._problems import ProblemError
from agentcluster.gateway._ready import ready_body
from agentcluster.health import DependencyStatus, Readiness, ReadinessProbe


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("0", 0), ("42", 42), (" 7 ", 7), (str(MAX_EVENT_ID), MAX_EVENT_ID)],
)
def test_event_ids_that_are_seqs(value: str | None, expected: int | None) -> None:
    assert parse_event_id(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "²",  # "²".isdigit() is True
        "١٢",  # Arabic-Indic digits: isdigit() and int() accept them
        "-1",
        "+1",
        "1.0",
        "0x10",
        "1_000",
        "abc",
        str(MAX_EVENT_ID + 1),
        "9" * 19,
        "1" * 20,
        "1" * 5000,
        str(10**30),
    ],
)
def test_anything_else_is_invalid_last_event_id(value: str) -> None:
    with pytest.raises(ProblemError) as caught:
        parse_event_id(value, "?after=")
    assert (caught.value.status, caught.value.problem_type) == (400, "invalid-last-event-id")
    assert caught.value.detail.startswith("?after= must be an event seq")


@pytest.mark.parametrize(
    ("body", "depth"),
    [
        (b"", 0),
        (b'"text"', 0),
        (b"{}", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'{"a": "[[[[[[[[[[ {{{{ not nesting"}', 1),
        (b'{"a": "quote \\" then [[[[ still a string"}', 1),
        (b'{"a": "backslash \\\\"}', 1),
        (b"[]" * 1000, 1),
    ],
)
def test_json_nesting_counts_brackets_outside_strings(body: bytes, depth: int) -> None:
    assert json_nesting(body) == depth


def test_json_nesting_stops_past_the_limit() -> None:
    assert json_nesting(b"[" * 100_000, limit=32) == 33
    assert json_nesting(json.dumps(_nested(40)).encode(), limit=64) == 40


def _nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def test_json_depth_is_measured_without_recursion() -> None:
    assert api.json_depth({}) == 1
    assert api.json_depth({"a": [1, {"b": "x"}]}) == 3
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    assert api.json_depth(deep) == 5001


def test_metadata_within_the_limits_is_accepted() -> None:
    body = api.SessionCreateIn(metadata=_nested(api.MAX_METADATA_DEPTH))
    assert api.json_depth(body.metadata) == api.MAX_METADATA_DEPTH


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (_nested(api.MAX_METADATA_DEPTH + 1), "the limit is 16 levels"),
        ({"blob": "x" * api.MAX_METADATA_BYTES}, "the limit is 16384 bytes"),
        ({"n": float("nan")}, "NaN and Infinity are not JSON numbers"),
    ],
)
def test_metadata_past_a_limit_is_refused_naming_it(
    metadata: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        api.SessionCreateIn(metadata=metadata)


def _embedded(tmp_path: Path) -> ReadinessProbe:
    settings = load_settings(
        {
            "db": {"dsn": f"sqlite:///{tmp_path}/ready.db"},
            "kafka": {"bootstrap_servers": None},
            "redis": {"url": None},
            "policy": {"url": None},
        }
    )
    clock = _Clock()
    probe = ReadinessProbe(settings, max_age_s=1.0, clock=clock)
    probe.clock = clock  # type: ignore[attr-defined]  # the test's handle on time
    return probe


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_flood_of_checks_costs_one_probe_per_second(tmp_path: Path) -> None:
    async with _embedded(tmp_path) as probe:
        clock: _Clock = probe.clock  # type: ignore[attr-defined]
        answers = await asyncio.gather(*(probe.check() for _ in range(50)))
        assert probe.probes == 1
        assert {a.probe for a in answers} == {1}
        for _ in range(50):
            await probe.check()
        assert probe.probes == 1
        clock.now += 0.99
        await probe.check()
        assert probe.probes == 1
        clock.now += 0.02  # now older than a second
        latest = await probe.check()
        assert probe.probes == 2 and latest.probe == 2
        assert {s.name: s.state for s in latest.statuses}["sqlite"] == "up"


async def test_a_caller_that_leaves_does_not_cancel_the_shared_probe(tmp_path: Path) -> None:
    async with _embedded(tmp_path) as probe:
        first = asyncio.ensure_future(probe.check())
        second = asyncio.ensure_future(probe.check())
        await asyncio.sleep(0)
        first.cancel()
        answer = await second
        assert answer.probe == 1 and probe.probes == 1


def test_ready_body_tells_strangers_names_and_states_only() -> None:
    down = DependencyStatus(
        name="redis",
        state="down",
        detail="redis: cannot reach redis://:***@127.0.0.1:1/0: ConnectionError(...)",
        latency_ms=2.5,
    )
    up = DependencyStatus(name="postgresql", state="up", detail="postgresql at h:5432/db")
    readiness = Readiness(statuses=[up, down], checked_at=datetime.now(UTC), probe=1, monotonic=0.0)
    public = ready_body(readiness, details=False).model_dump(mode="json", exclude_none=True)
    assert public["status"] == "degraded"
    assert public["dependencies"] == [
        {"name": "postgresql", "state": "up"},
        {"name": "redis", "state": "down"},
    ]
    admin = ready_body(readiness, details=True)
    assert admin.dependencies[1].detail == down.detail and admin.dependencies[1].latency_ms == 2.5
