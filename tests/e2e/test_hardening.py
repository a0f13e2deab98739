"""Hardened edges end to end (issue 12): through the real gateway (Serve HTTP on loopback,
two replicas, PostgreSQL, OPA, the fake LLM), bad input gets its 4xx and leaves nothing behind,
/v1/ready tells strangers names and states only and reuses its probe, and error texts stored in
events carry no keys."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections import defaultdict
from typing import Any

import httpx
import pytest

from agentcluster.config import Settings
from agentcluster.redact import mask_url
from agentcluster.testing.fake_llm import Failure, FakeLLM, Reply, Rule
from tests.e2e.conftest import ADMIN_KEY, new_tenant

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PROBLEMS = "https://agentcluster.dev/problems/"
MAX_SEQ = 2**63 - 1


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _problem(response: httpx.Response, status: int, problem_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == PROBLEMS + problem_type, body
    return body


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def _sse(text: str) -> list[dict[str, str]]:
    events, current = [], {}
    for line in text.splitlines():
        if not line:
            if current:
                events.append(current)
            current = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            current[field] = value.removeprefix(" ")
    if current:
        events.append(current)
    return events


async def _session(http: httpx.AsyncClient, key: str, **body: Any) -> dict[str, Any]:
    response = await http.post("/v1/sessions", json={"agent": "tester", **body}, headers=_auth(key))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def _events_until(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], last: str
) -> list[dict[str, str]]:
    """The stream's events (with ids) up to the first of type ``last``."""
    async with http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        buffer, seen = "", []
        async for chunk in response.aiter_text():
            buffer += chunk
            seen = [e for e in _sse(buffer) if "id" in e]
            if seen and seen[-1]["event"] == last:
                break
        return seen


# -- /v1/ready ----------------------------------------------------------------------------------


async def test_ready_shows_strangers_names_and_states_only(
    http: httpx.AsyncClient, tenant_key: str, e2e_settings: Settings
) -> None:
    configured = [e2e_settings.db.dsn, e2e_settings.redis.url, e2e_settings.policy.url]
    for headers in ({}, _auth(tenant_key), _auth("ac_wrong"), {"Authorization": "Basic eDp5"}):
        response = await http.get("/v1/ready", headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "ready"
        assert {d["name"] for d in body["dependencies"]} >= {"postgresql", "opa"}
        for dependency in body["dependencies"]:
            assert set(dependency) == {"name", "state"}, dependency
        for url in filter(None, configured):
            assert mask_url(url) not in response.text and url not in response.text
        assert "://" not in response.text


async def test_ready_shows_the_admin_key_details_with_passwords_masked(
    http: httpx.AsyncClient, e2e_settings: Settings
) -> None:
    response = await http.get("/v1/ready", headers=_auth(ADMIN_KEY))
    assert response.status_code == 200, response.text
    details = {d["name"]: d for d in response.json()["dependencies"]}
    assert details["postgresql"]["detail"].startswith("postgresql at 127.0.0.1:")
    assert details["opa"]["detail"] == e2e_settings.policy.url
    assert all(d["latency_ms"] >= 0 for d in details.values() if d["state"] == "up")
    if (redis_url := e2e_settings.redis.url) is not None:
        assert details["redis"]["detail"] == mask_url(redis_url)
    for url in filter(None, [e2e_settings.db.dsn, e2e_settings.redis.url]):
        password = httpx.URL(url).password
        assert not password or password not in response.text


async def test_a_flood_of_ready_calls_costs_about_one_probe_a_second(
    http: httpx.AsyncClient,
) -> None:
    started = time.monotonic()
    answers = list(await asyncio.gather(*(http.get("/v1/ready") for _ in range(30))))
    answers += [await http.get("/v1/ready") for _ in range(30)]
    elapsed = time.monotonic() - started
    probes: dict[str, set[str]] = defaultdict(set)
    for answer in answers:
        assert answer.status_code == 200, answer.text
        probes[answer.headers["x-agentcluster-replica"]].add(answer.json()["checked_at"])
    # Each replica probes at most once per second of the flood, plus the one it may have cached
    # from before it; every other answer reuses a probe.
    allowed = math.ceil(elapsed) + 1
    assert all(len(seen) <= allowed for seen in probes.values()), (probes, elapsed)
    assert sum(len(seen) for seen in probes.values()) < len(answers)


# -- Last-Event-ID and ?after= ------------------------------------------------------------------

BAD_EVENT_IDS: list[bytes] = [
    b"\xb2",  # "²" in latin-1, as the header is read: "²".isdigit() is True
    "²".encode(),
    "١٢".encode(),  # Arabic-Indic digits
    b"-1",
    b"1.5",
    b"0x10",
    b"1" * 5000,
    str(10**30).encode(),
    str(MAX_SEQ + 1).encode(),
    b"abc",
]


@pytest.mark.parametrize("value", BAD_EVENT_IDS, ids=lambda v: v[:12].decode("latin-1"))
async def test_a_bad_last_event_id_is_a_400_problem(
    http: httpx.AsyncClient, tenant_key: str, value: bytes
) -> None:
    session_id = (await _session(http, tenant_key))["session_id"]
    url = f"/v1/sessions/{session_id}/events"
    raw = [(b"Authorization", f"Bearer {tenant_key}".encode()), (b"Last-Event-ID", value)]
    header = await http.get(url, headers=raw)
    body = _problem(header, 400, "invalid-last-event-id")
    assert body["detail"].startswith("Last-Event-ID must be an event seq")
    query = await http.get(
        url, headers=_auth(tenant_key), params={"after": value.decode("latin-1")}
    )
    assert _problem(query, 400, "invalid-last-event-id")["detail"].startswith("?after=")


@pytest.mark.parametrize(
    "resume",
    [{"headers": {"Last-Event-ID": str(MAX_SEQ)}}, {"params": {"after": str(10**18)}}],
    ids=["header-max-int64", "query-1e18"],
)
async def test_a_seq_past_the_end_gives_an_empty_stream_that_follows_new_events(
    http: httpx.AsyncClient, tenant_key: str, fake_llm: FakeLLM, resume: dict[str, Any]
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content="later")))
    session_id = (await _session(http, tenant_key))["session_id"]  # last_seq 1
    url = f"/v1/sessions/{session_id}/events"
    headers = _auth(tenant_key) | resume.get("headers", {})
    async with http.stream("GET", url, headers=headers, params=resume.get("params")) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        sent = await http.post(
            f"/v1/sessions/{session_id}/messages",
            json={"content": token},
            headers=_auth(tenant_key),
        )
        assert sent.status_code == 202, sent.text
        buffer, seen = "", []
        async for chunk in response.aiter_text():
            buffer += chunk
            seen = [e for e in _sse(buffer) if "id" in e]
            if seen and seen[-1]["event"] == "turn.completed":
                break
    # Nothing from before (session.created is seq 1), then the new turn's events in order. (Not
    # asserting seq 2 first: message.received is written by the gateway, not the host, and a
    # stream whose store read ran before that commit sees only the host's live events.)
    seqs = [int(e["id"]) for e in seen]
    assert seqs[0] >= 2 and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert seen[-1]["event"] == "turn.completed"


# -- metadata and deep JSON ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "problem_type", "says"),
    [
        ({"metadata": _nested(17)}, "validation-failed", "the limit is 16 levels"),
        ({"metadata": _nested(200)}, "validation-failed", "nested deeper than 32 levels"),
        ({"metadata": _nested(300)}, "validation-failed", "nested deeper than 32 levels"),
        ({"metadata": {"blob": "x" * 17_000}}, "validation-failed", "the limit is 16384 bytes"),
    ],
    ids=["17-deep", "200-deep", "300-deep", "17-KB"],
)
async def test_metadata_past_its_limits_is_refused_and_nothing_is_stored(
    http: httpx.AsyncClient, body: dict[str, Any], problem_type: str, says: str
) -> None:
    _, key = await new_tenant(http, "meta")
    response = await http.post("/v1/sessions", json={"agent": "tester", **body}, headers=_auth(key))
    assert says in _problem(response, 422, problem_type)["detail"]
    listed = await http.get("/v1/sessions", headers=_auth(key))
    assert listed.status_code == 200 and listed.json()["items"] == []


async def test_nan_in_metadata_is_refused(http: httpx.AsyncClient) -> None:
    _, key = await new_tenant(http, "nan")
    response = await http.post(
        "/v1/sessions",
        content=b'{"agent": "tester", "metadata": {"x": NaN}}',
        headers=_auth(key) | {"Content-Type": "application/json"},
    )
    assert "NaN" in _problem(response, 422, "validation-failed")["detail"]
    assert (await http.get("/v1/sessions", headers=_auth(key))).json()["items"] == []


async def test_metadata_at_the_limit_is_stored_and_its_stream_stays_readable(
    http: httpx.AsyncClient, tenant_key: str
) -> None:
    metadata = _nested(16)
    created = await _session(http, tenant_key, metadata=metadata)
    assert created["metadata"] == metadata
    url = f"/v1/sessions/{created['session_id']}/events"
    seen = await _events_until(http, url, _auth(tenant_key), "session.created")
    assert json.loads(seen[0]["data"])["metadata"] == metadata


def _deep_body(depth: int) -> bytes:
    return b'{"a": ' + b"[" * depth + b"]" * depth + b"}"


async def test_over_deep_json_is_refused_on_every_route_before_anything_is_written(
    http: httpx.AsyncClient,
) -> None:
    tenant_id, key = await new_tenant(http, "deep")
    session_id = (await _session(http, key))["session_id"]
    json_type = {"Content-Type": "application/json"}
    attempts = [
        ("POST", f"/v1/sessions/{session_id}/messages", _auth(key)),
        ("POST", "/v1/sessions", _auth(key)),
        ("POST", f"/v1/sessions/{session_id}/cancel", _auth(key)),
        ("POST", "/v1/keys", _auth(ADMIN_KEY)),
        ("PUT", "/v1/settings/providers", _auth(ADMIN_KEY)),
        ("PUT", f"/v1/tenants/{tenant_id}/limits", _auth(ADMIN_KEY)),
        ("POST", "/mcp", _auth(key) | {"Accept": "application/json, text/event-stream"}),
    ]
    for depth in (33, 300, 100_000):
        for method, url, headers in attempts:
            response = await http.request(
                method, url, content=_deep_body(depth), headers=headers | json_type
            )
            body = _problem(response, 422, "validation-failed")
            assert "nested deeper than 32 levels" in body["detail"], (url, body)
    unclosed = await http.post(
        f"/v1/sessions/{session_id}/messages",
        content=b"[" * 200_000,
        headers=_auth(key) | json_type,
    )
    _problem(unclosed, 422, "validation-failed")
    messages = await http.get(f"/v1/sessions/{session_id}/messages", headers=_auth(key))
    assert messages.json()["items"] == []
    sessions = (await http.get("/v1/sessions", headers=_auth(key))).json()["items"]
    assert [s["session_id"] for s in sessions] == [session_id]
    assert sessions[0]["last_seq"] == 1  # only session.created
    limits = await http.get(f"/v1/tenants/{tenant_id}/limits", headers=_auth(ADMIN_KEY))
    assert limits.status_code == 200, limits.text


async def test_brackets_inside_strings_are_not_nesting(
    http: httpx.AsyncClient, tenant_key: str, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content="ok")))
    session_id = (await _session(http, tenant_key))["session_id"]
    content = f"{token} " + "[{" * 500 + ' \\" ' + "}]" * 500
    response = await http.post(
        f"/v1/sessions/{session_id}/messages?wait=true",
        json={"content": content},
        headers=_auth(tenant_key),
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"


# -- error texts in events ----------------------------------------------------------------------


async def test_a_provider_error_quoting_keys_is_stored_scrubbed(
    http: httpx.AsyncClient, tenant_key: str, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    provider_key = "sk-proj-" + uuid.uuid4().hex + uuid.uuid4().hex
    bearer = uuid.uuid4().hex
    message = (
        f"Incorrect API key provided: {provider_key}. Request headers were "
        f"{{'Authorization': 'Bearer {bearer}', 'X-Admin': '{ADMIN_KEY}'}}"
    )
    fake_llm.script.add_rule(
        Rule(when_last_user_contains=token, reply=Failure(status=401, message=message))
    )
    session_id = (await _session(http, tenant_key))["session_id"]
    waited = await http.post(
        f"/v1/sessions/{session_id}/messages?wait=true",
        json={"content": token},
        headers=_auth(tenant_key),
    )
    assert waited.status_code == 200, waited.text
    outcome = waited.json()
    assert outcome["status"] == "failed"
    assert "Incorrect API key provided: ***" in outcome["error"]
    url = f"/v1/sessions/{session_id}/events"
    events = await _events_until(http, url, _auth(tenant_key), "turn.failed")
    stored = json.dumps([json.loads(e["data"]) for e in events])
    assert "turn.failed" in stored
    for secret in (provider_key, bearer, ADMIN_KEY):
        assert secret not in stored and secret not in waited.text
