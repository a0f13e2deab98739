"""The HTTP API end to end: real Serve HTTP on loopback, real Ray, PostgreSQL, the fake LLM."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest

from agentcluster.testing.fake_llm import FakeLLM, Reply, Rule
from tests.e2e.conftest import ADMIN_KEY, AUTH_CACHE_S

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PROBLEMS = "https://agentcluster.dev/problems/"


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _answer(fake_llm: FakeLLM, token: str, text: str) -> None:
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content=text)))


def _problem(response: httpx.Response, status: int, problem_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == PROBLEMS + problem_type, body
    assert body["status"] == status and body["title"] and body["detail"]
    return body


async def _session(http: httpx.AsyncClient, key: str) -> str:
    response = await http.post("/v1/sessions", json={"agent": "tester"}, headers=_auth(key))
    assert response.status_code == 201, response.text
    return str(response.json()["session_id"])


def _sse(text: str) -> list[dict[str, str]]:
    """Parse an SSE body into events (id/event/data), ignoring comments."""
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


async def test_session_lifecycle(
    http: httpx.AsyncClient, tenant_key: str, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    _answer(fake_llm, token, "hello from the cluster")
    session_id = await _session(http, tenant_key)
    listed = (await http.get("/v1/sessions", headers=_auth(tenant_key))).json()
    assert [s["session_id"] for s in listed["items"]] == [session_id]
    got = await http.get(f"/v1/sessions/{session_id}", headers=_auth(tenant_key))
    assert got.json()["status"] == "active"

    answer = await http.post(
        f"/v1/sessions/{session_id}/messages?wait=true",
        json={"content": f"hi {token}"},
        headers=_auth(tenant_key),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "completed"
    assert answer.json()["content"] == "hello from the cluster"
    history = await http.get(f"/v1/sessions/{session_id}/messages", headers=_auth(tenant_key))
    assert [m["role"] for m in history.json()["items"]] == ["user", "assistant"]

    closed = await http.delete(f"/v1/sessions/{session_id}", headers=_auth(tenant_key))
    assert closed.json()["status"] == "closed"
    refused = await http.post(
        f"/v1/sessions/{session_id}/messages", json={"content": "x"}, headers=_auth(tenant_key)
    )
    _problem(refused, 409, "conflict")


async def test_idempotent_resend_returns_the_same_body_and_one_turn(
    http: httpx.AsyncClient, tenant_key: str, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    _answer(fake_llm, token, "once")
    session_id = await _session(http, tenant_key)
    headers = _auth(tenant_key) | {"Idempotency-Key": f"key-{token}"}
    first = await http.post(
        f"/v1/sessions/{session_id}/messages", json={"content": token}, headers=headers
    )
    again = await http.post(
        f"/v1/sessions/{session_id}/messages", json={"content": token}, headers=headers
    )
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    done = await http.post(
        f"/v1/sessions/{session_id}/messages?wait=true",
        json={"content": token},
        headers=headers,
    )
    assert done.json()["turn_id"] == first.json()["turn_id"]
    assert done.json()["content"] == "once"
    users = [
        m
        for m in (
            await http.get(f"/v1/sessions/{session_id}/messages", headers=_auth(tenant_key))
        ).json()["items"]
        if m["role"] == "user"
    ]
    assert len(users) == 1


async def test_event_stream_resumes_without_gap_or_duplicate(
    http: httpx.AsyncClient, tenant_key: str, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    _answer(fake_llm, token, "streamed words arrive in order")
    session_id = await _session(http, tenant_key)
    streamed = await http.post(
        f"/v1/sessions/{session_id}/messages",
        json={"content": token},
        headers=_auth(tenant_key) | {"Accept": "text/event-stream"},
    )
    assert streamed.status_code == 200
    items = _sse(streamed.text)
    kinds = [item["event"] for item in items]
    assert kinds[0] == "message.received" and kinds[-1] == "turn.completed"
    deltas = "".join(json.loads(i["data"])["text"] for i in items if i["event"] == "delta")
    assert deltas.split() == ["streamed", "words", "arrive", "in", "order"]

    # Resume: everything after seq 2 from a stream that was cut after seq 2.
    async def events(**kwargs: Any) -> list[dict[str, str]]:
        async with http.stream("GET", f"/v1/sessions/{session_id}/events", **kwargs) as response:
            assert response.status_code == 200
            seen: list[dict[str, str]] = []
            buffer = ""
            async for chunk in response.aiter_text():
                buffer += chunk
                seen = [e for e in _sse(buffer) if "id" in e]
                if seen and seen[-1]["event"] == "turn.completed":
                    return seen
            return seen

    whole = await events(headers=_auth(tenant_key))
    resumed = await events(headers=_auth(tenant_key) | {"Last-Event-ID": "2"})
    by_query = await events(headers=_auth(tenant_key), params={"after": 2})
    seqs = [int(e["id"]) for e in whole]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [int(e["id"]) for e in resumed] == seqs[2:]
    assert resumed == by_query


async def test_a_stream_resumes_on_another_replica(
    http: httpx.AsyncClient, tenant_key: str, fake_llm: FakeLLM, gateway_url: str
) -> None:
    token = uuid.uuid4().hex
    _answer(fake_llm, token, "replicated")
    session_id = await _session(http, tenant_key)
    await http.post(
        f"/v1/sessions/{session_id}/messages?wait=true",
        json={"content": token},
        headers=_auth(tenant_key),
    )
    url = f"/v1/sessions/{session_id}/events"
    # A stream held open keeps its replica busy, so Serve routes the resumed stream to the other.
    async with http.stream("GET", url, headers=_auth(tenant_key)) as held:
        first = held.headers["x-agentcluster-replica"]
        async with httpx.AsyncClient(base_url=gateway_url, timeout=60) as other:
            for _ in range(20):
                headers = _auth(tenant_key) | {"Last-Event-ID": "2"}
                async with other.stream("GET", url, headers=headers) as response:
                    if response.headers["x-agentcluster-replica"] == first:
                        continue
                    seen: list[dict[str, str]] = []
                    buffer = ""
                    async for chunk in response.aiter_text():
                        buffer += chunk
                        seen = [e for e in _sse(buffer) if "id" in e]
                        if seen and seen[-1]["event"] == "turn.completed":
                            break
                    assert [int(e["id"]) for e in seen] == list(range(3, 3 + len(seen)))
                    assert seen[-1]["event"] == "turn.completed"
                    return
    pytest.fail("every resumed stream landed on the first replica; is min_replicas 2?")


async def test_auth_and_tenant_isolation(http: httpx.AsyncClient, tenant_key: str) -> None:
    session_id = await _session(http, tenant_key)
    _problem(await http.get(f"/v1/sessions/{session_id}"), 401, "unauthorized")
    _problem(
        await http.get(f"/v1/sessions/{session_id}", headers=_auth("ac_not-a-key")),
        401,
        "unauthorized",
    )
    other = await http.post(
        "/v1/keys",
        json={"name": "other", "tenant_name": "other"},
        headers=_auth(ADMIN_KEY),
    )
    other_key = other.json()["secret"]
    _problem(
        await http.get(f"/v1/sessions/{session_id}", headers=_auth(other_key)), 404, "not-found"
    )
    _problem(
        await http.get(f"/v1/sessions/{session_id}/events", headers=_auth(other_key)),
        404,
        "not-found",
    )
    assert (await http.get("/v1/sessions", headers=_auth(other_key))).json()["items"] == []
    _problem(await http.get("/v1/keys", headers=_auth(tenant_key)), 403, "forbidden")
    _problem(await http.get("/v1/sessions", headers=_auth(ADMIN_KEY)), 403, "forbidden")
    revoked = await http.delete(f"/v1/keys/{other.json()['key_id']}", headers=_auth(ADMIN_KEY))
    assert revoked.status_code == 204
    # Replicas trust a checked key for auth.cache_s; after that, none accepts it.
    await asyncio.sleep(AUTH_CACHE_S + 0.2)
    for _ in range(4):  # requests spread over both replicas
        _problem(await http.get("/v1/sessions", headers=_auth(other_key)), 401, "unauthorized")


async def test_bad_input_gets_the_right_problem_and_leaves_nothing(
    http: httpx.AsyncClient, tenant_key: str
) -> None:
    headers = _auth(tenant_key)
    session_id = await _session(http, tenant_key)
    url = f"/v1/sessions/{session_id}/messages"
    json_headers = headers | {"Content-Type": "application/json"}
    _problem(
        await http.post(url, content=b"{not json", headers=json_headers), 400, "malformed-json"
    )
    _problem(await http.post(url, json={"content": 42}, headers=headers), 422, "validation-failed")
    _problem(
        await http.post(url, json={"content": "x", "extra": 1}, headers=headers),
        422,
        "validation-failed",
    )
    _problem(await http.post(url, json={"content": ""}, headers=headers), 422, "validation-failed")
    huge = {"content": "x" * (300 * 1024)}
    _problem(await http.post(url, json=huge, headers=headers), 413, "payload-too-large")
    _problem(
        await http.post(
            "/v1/sessions/no-such-session/messages", json={"content": "x"}, headers=headers
        ),
        404,
        "not-found",
    )
    _problem(
        await http.get(
            f"/v1/sessions/{session_id}/events", headers=headers | {"Last-Event-ID": "abc"}
        ),
        400,
        "invalid-last-event-id",
    )
    _problem(
        await http.post("/v1/sessions", json={"agent": "nobody"}, headers=headers),
        422,
        "validation-failed",
    )
    history = await http.get(url, headers=headers)
    assert history.json()["items"] == []
    sessions = (await http.get("/v1/sessions", headers=headers)).json()["items"]
    assert [s["session_id"] for s in sessions] == [session_id]
    assert sessions[0]["last_seq"] == 1  # only session.created: no event from a rejection


async def test_health_ready_metrics_and_openapi(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1/health")).json() == {"status": "ok"}
    ready = await http.get("/v1/ready")
    assert ready.status_code == 200, ready.text
    assert {d["name"] for d in ready.json()["dependencies"]} >= {"postgresql"}
    metrics = await http.get("/metrics")
    assert "agentcluster_http_requests_total" in metrics.text
    spec = (await http.get("/openapi.json")).json()
    assert "/v1/sessions/{session_id}/messages" in spec["paths"]
    assert (await http.get("/docs")).status_code == 200


async def test_cancel_over_http(
    http: httpx.AsyncClient, tenant_key: str, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(
        Rule(when_last_user_contains=token, reply=Reply(content="late", ttft_s=60))
    )
    session_id = await _session(http, tenant_key)
    accepted = await http.post(
        f"/v1/sessions/{session_id}/messages", json={"content": token}, headers=_auth(tenant_key)
    )
    turn_id = accepted.json()["turn_id"]
    async with http.stream(
        "GET", f"/v1/sessions/{session_id}/events", headers=_auth(tenant_key)
    ) as response:
        async for line in response.aiter_lines():
            if line == "event: turn.started":
                break
    cancelled = await http.post(
        f"/v1/sessions/{session_id}/cancel", json={"turn_id": turn_id}, headers=_auth(tenant_key)
    )
    assert cancelled.json() == {"cancelled": True}
    async with http.stream(
        "GET", f"/v1/sessions/{session_id}/events", headers=_auth(tenant_key)
    ) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:") and '"turn.cancelled"' in line:
                assert turn_id in line
                break
