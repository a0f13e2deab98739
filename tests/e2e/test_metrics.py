"""After a turn with a tool call through the HTTP API, the gateway's /metrics shows the cluster's
metrics (scraped from the node's Ray metrics agent) with sane values."""

from __future__ import annotations

import uuid
from collections import defaultdict

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentcluster.testing.fake_llm import FakeLLM, ToolCall
from tests.conftest import eventually
from tests.e2e.conftest import script_tool_turn

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

MESSAGES_ROUTE = "/v1/sessions/{session_id}/messages"
MODEL = "fake-a"  # the tester profile's model (tests/e2e/conftest.py)

Samples = dict[str, list[tuple[dict[str, str], float]]]


def _parse(text: str) -> Samples:
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((dict(sample.labels), sample.value))
    return samples


def _values(samples: Samples, name: str, **labels: str) -> list[float]:
    """Every series of ``name`` (one per worker process) whose labels include ``labels``."""
    return [
        value
        for series, value in samples.get(name, [])
        if all(series.get(key) == wanted for key, wanted in labels.items())
    ]


def _total(samples: Samples, name: str, **labels: str) -> float:
    return sum(_values(samples, name, **labels))


async def _scrape(http: httpx.AsyncClient) -> tuple[str, Samples]:
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text, _parse(response.text)


def _counters(samples: Samples) -> dict[str, float]:
    return {
        "turns": _total(
            samples, "ray_agentcluster_turns_total", agent="tester", outcome="completed"
        ),
        "tool_calls": _total(
            samples,
            "ray_agentcluster_tool_calls_total",
            tool="calculator",
            decision="allowed",
            outcome="ok",
        ),
        "messages": _total(
            samples, "ray_agentcluster_http_requests_total", route=MESSAGES_ROUTE, status="200"
        ),
    }


def _turn_with_a_calculator_call(fake_llm: FakeLLM, token: str) -> None:
    calculate = ToolCall(name="calculator", arguments={"expression": "2+2"})
    script_tool_turn(fake_llm, token, calculate, f"it is 4 {token}")


async def test_after_a_turn_the_cluster_metrics_are_present_with_sane_values(
    http: httpx.AsyncClient, tenant_key: str, fake_llm: FakeLLM
) -> None:
    auth = {"Authorization": f"Bearer {tenant_key}"}
    _, before_samples = await _scrape(http)
    before = _counters(before_samples)
    token = uuid.uuid4().hex
    _turn_with_a_calculator_call(fake_llm, token)
    created = await http.post("/v1/sessions", json={"agent": "tester"}, headers=auth)
    assert created.status_code == 201, created.text
    answer = await http.post(
        f"/v1/sessions/{created.json()['session_id']}/messages?wait=true",
        json={"content": f"what is 2+2? {token}"},
        headers=auth,
    )
    assert answer.status_code == 200 and answer.json()["content"] == f"it is 4 {token}"

    async def exported() -> Samples | None:
        # Ray's metrics agent exports what the workers recorded every few seconds.
        _, samples = await _scrape(http)
        after = _counters(samples)
        return samples if all(after[key] > before[key] for key in before) else None

    found = await eventually(exported, timeout=90, interval=1, message="counters increased")
    assert found is not None
    samples = found
    assert _total(samples, "ray_agentcluster_llm_tokens_total", model=MODEL, kind="prompt") > 0
    assert _total(samples, "ray_agentcluster_llm_calls_total", model=MODEL, outcome="ok") >= 2
    assert _total(samples, "ray_agentcluster_turn_seconds_count", agent="tester") >= 1
    assert _total(samples, "ray_agentcluster_tool_call_seconds_count", tool="calculator") >= 1
    assert _total(samples, "ray_agentcluster_sessions_active") >= 1
    assert _total(samples, "ray_agentcluster_session_activations_total") >= 1
    assert max(_values(samples, "ray_agentcluster_pool_size"), default=0) >= 1
    breaker = _values(samples, "ray_agentcluster_llm_breaker_state", model=MODEL)
    assert breaker and max(breaker) == 0, "the model's breaker is closed in every host"
    # The replica's own registry still answers the unprefixed series the dashboard charts.
    assert _values(samples, "agentcluster_http_requests_total")


async def test_metrics_is_one_valid_exposition(http: httpx.AsyncClient) -> None:
    text, _ = await _scrape(http)
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    duplicated = {name for name in families if families.count(name) > 1}
    assert not duplicated, f"families defined twice: {sorted(duplicated)}"
    assert "ray_" in text and "agentcluster_http_requests_total" in text
