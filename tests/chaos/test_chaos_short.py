"""The short chaos suite: a SessionHost killed twice and PostgreSQL stopped and started, with
clients sending, against a stack of its own (benchmarks/chaos.py); every acked message must be in
its session's history exactly once, every acked turn must end, and ``agent.events`` must hold
each session's events in order. Timings are the benchmark's business (``make chaos``), not this.

The suite runs in a child process: it starts and shuts down its own Ray and Serve, which must not
meet the Ray cluster this test session shares.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out: Path = tmp_path_factory.mktemp("chaos") / "figures.json"
    argv = [sys.executable, "-m", "benchmarks.chaos", "--only", "host-kill-short,postgres-short"]
    argv += ["--out", "-", "--bench-out", "-", "--json", str(out)]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=840)
    assert out.exists(), f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return {figures["scenario"]: figures for figures in json.loads(out.read_text())}


def _assert_nothing_lost(figures: dict[str, Any]) -> None:
    verdict = figures["verdict"]
    assert verdict["acked"] > 0, json.dumps(
        figures
    )  # the load ran: the checks below checked something
    assert verdict["lost"] == 0, json.dumps(figures)
    assert verdict["duplicated"] == 0, json.dumps(figures)
    assert verdict["unended"] == 0, json.dumps(figures)
    assert verdict["kafka_checked"], json.dumps(figures)
    assert verdict["kafka_missing"] == 0, json.dumps(figures)
    assert verdict["kafka_disordered"] == 0, json.dumps(figures)


def test_host_kills_lose_and_double_nothing(short_run: dict[str, dict[str, Any]]) -> None:
    figures = short_run["host-kill-short"]
    assert figures["faults"] == 2
    _assert_nothing_lost(figures)
    # a killed host's session answered again, both times
    assert figures["recovered_turns"] == 2, json.dumps(figures)


def test_a_postgres_restart_loses_and_doubles_nothing(
    short_run: dict[str, dict[str, Any]],
) -> None:
    figures = short_run["postgres-short"]
    assert figures["faults"] == 1
    _assert_nothing_lost(figures)
    assert figures["recovered_turns"] == 1, json.dumps(figures)
    # While it was down: 503 problem+json naming the database with Retry-After, never a 500.
    problems = figures["problems"]
    assert problems, json.dumps(figures)  # the outage was seen
    assert set(problems) == {"503 dependency-unavailable (postgresql, Retry-After 1)"}, problems
