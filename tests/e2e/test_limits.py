"""Budgets and rate limits end to end: real Serve HTTP on loopback (two gateway replicas), session
hosts on real Ray, PostgreSQL, Redis, the fake LLM.

The e2e app's defaults stay unlimited; each test gives its own fresh tenant tight limits through
the admin API (``PUT /v1/tenants/{id}/limits``), so no other test is affected.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError

from agentcluster.testing.fake_llm import FakeLLM, Reply, Rule
from tests.conftest import eventually
from tests.e2e.conftest import ADMIN_KEY, new_tenant

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PROBLEMS = "https://agentcluster.dev/problems/"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
LONG_ANSWER = " ".join(f"w{i:03d}" for i in range(200))
"""About 250 tokens as the fake LLM counts them (distinct words: LiteLLM stops a stream that
repeats one chunk)."""


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _set_limits(http: httpx.AsyncClient, tenant_id: str, **limits: Any) -> dict[str, Any]:
    response = await http.put(f"/v1/tenants/{tenant_id}/limits", json=limits, headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _events_until_outcome(
    http: httpx.AsyncClient, key: str, session_id: str, turn_id: str
) -> list[dict[str, Any]]:
    """The session's events up to ``turn_id``'s outcome, read from the SSE event stream."""
    url = f"/v1/sessions/{session_id}/events"
    events: list[dict[str, Any]] = []
    async with http.stream("GET", url, headers=_auth(key)) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = json.loads(line.removeprefix("data:").strip())
            if "seq" not in data:
                continue  # a delta
            events.append(data)
            if (
                data.get("turn_id") == turn_id
                and data["type"].startswith("turn.")
                and (data["type"] != "turn.started")
            ):
                return events
    return events


async def test_over_the_rate_is_429_with_retry_after_and_other_tenants_go_on(
    http: httpx.AsyncClient,
) -> None:
    tenant_id, key = await new_tenant(http, "rate")
    _other_id, other_key = await new_tenant(http, "rate-other")
    limits = await _set_limits(http, tenant_id, requests_per_minute=5)
    assert limits["limits"]["requests_per_minute"] == 5
    assert limits["overrides"] == {
        "requests_per_minute": 5,
        "tokens_per_day": None,
        "cost_per_day_usd": None,
        "max_open_streams": None,
    }

    answers = [await http.get("/v1/sessions", headers=_auth(key)) for _ in range(6)]
    assert [r.status_code for r in answers] == [200] * 5 + [429]
    refused = answers[-1]
    assert refused.headers["content-type"].startswith("application/problem+json")
    retry_after = refused.headers["retry-after"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 60
    assert refused.headers["ratelimit-limit"] == "5"
    assert refused.headers["ratelimit-remaining"] == "0"
    problem = refused.json()
    assert problem["type"] == PROBLEMS + "rate-limited" and problem["status"] == 429
    assert "5 requests per minute" in problem["detail"]
    # The limit is one for the whole gateway (Redis), whichever replica answers; every tenant
    # route counts, and other tenants are not affected.
    assert (
        await http.post("/v1/sessions", json={"agent": "tester"}, headers=_auth(key))
    ).status_code == 429
    assert [
        (await http.get("/v1/sessions", headers=_auth(other_key))).status_code for _ in range(8)
    ] == [200] * 8
    # The admin key belongs to no tenant: not limited.
    assert (await http.get(f"/v1/tenants/{tenant_id}/limits", headers=ADMIN)).status_code == 200

    # An operator lifts the limit without a restart: at once on the replica that took the PUT,
    # within SA01_LIMITS_REFRESH_S on the other.
    await _set_limits(http, tenant_id, requests_per_minute=0)

    async def admitted_everywhere() -> bool:
        codes = [(await http.get("/v1/sessions", headers=_auth(key))).status_code for _ in range(4)]
        return codes == [200] * 4

    await eventually(admitted_everywhere, timeout=20, message="the lifted limit applies")


async def test_a_spent_token_budget_stops_the_next_turn_with_a_clear_event(
    http: httpx.AsyncClient, fake_llm: FakeLLM
) -> None:
    tenant_id, key = await new_tenant(http, "budget")
    # The first call's prompt (system prompt, tools, message: ~190 tokens by tiktoken) fits;
    # its answer (~250 tokens) uses the rest and more.
    await _set_limits(http, tenant_id, tokens_per_day=300)
    first_token, second_token = uuid.uuid4().hex, uuid.uuid4().hex
    fake_llm.script.add_rule(
        Rule(when_last_user_contains=first_token, reply=Reply(content=LONG_ANSWER))
    )
    fake_llm.script.add_rule(
        Rule(when_last_user_contains=second_token, reply=Reply(content="must not be asked"))
    )
    created = await http.post("/v1/sessions", json={"agent": "tester"}, headers=_auth(key))
    session_id = created.json()["session_id"]
    url = f"/v1/sessions/{session_id}/messages?wait=true"

    first = await http.post(url, json={"content": first_token}, headers=_auth(key))
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "completed", first.json()["error"]
    usage = first.json()["usage"]
    spent = await http.get(f"/v1/tenants/{tenant_id}/limits", headers=ADMIN)
    today = spent.json()["usage_today"]
    assert today["tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] >= 300

    second = await http.post(url, json={"content": second_token}, headers=_auth(key))
    assert second.status_code == 200, second.text
    outcome = second.json()
    assert outcome["status"] == "failed"
    assert outcome["error"].startswith("daily token budget exceeded")
    assert f"used {today['tokens']} of 300 tokens today" in outcome["error"]
    assert f"resets at {today['resets_at'][:10]}T00:00:00Z" in outcome["error"]
    assert not [r for r in fake_llm.requests if second_token in str(r.messages)]

    events = await _events_until_outcome(http, key, session_id, outcome["turn_id"])
    failed = events[-1]
    assert failed["type"] == "turn.failed" and failed["turn_id"] == outcome["turn_id"]
    assert failed["error_type"] == "BudgetExceeded" and failed["retryable"] is False
    assert failed["error"] == outcome["error"]
    kinds = [e["type"] for e in events if e.get("turn_id") == outcome["turn_id"]]
    assert kinds == ["message.received", "turn.started", "turn.failed"]  # no llm.completed


async def test_the_limits_api_is_admin_only_and_validated(http: httpx.AsyncClient) -> None:
    tenant_id, key = await new_tenant(http, "limits-api")
    url = f"/v1/tenants/{tenant_id}/limits"
    assert (await http.get(url)).status_code == 401
    forbidden = await http.put(url, json={"tokens_per_day": -1}, headers=_auth(key))
    assert forbidden.status_code == 403  # before any complaint about the body
    invalid = await http.put(url, json={"tokens_per_day": -1}, headers=ADMIN)
    assert invalid.status_code == 422
    assert invalid.json()["type"] == PROBLEMS + "validation-failed"
    unknown = await http.put(url, json={"requests_per_second": 5}, headers=ADMIN)
    assert unknown.status_code == 422
    missing = await http.get(f"/v1/tenants/{uuid.uuid4()}/limits", headers=ADMIN)
    assert missing.status_code == 404 and missing.json()["type"] == PROBLEMS + "not-found"
    got = (await http.get(url, headers=ADMIN)).json()
    assert got["tenant_id"] == tenant_id
    assert got["limits"] == got["defaults"]  # the e2e defaults: unlimited
    assert got["usage_today"]["tokens"] == 0


async def test_mcp_tool_calls_count_against_the_same_rate(
    http: httpx.AsyncClient, gateway_url: str
) -> None:
    tenant_id, key = await new_tenant(http, "rate-mcp")
    await _set_limits(http, tenant_id, requests_per_minute=3)
    assert (await http.get("/v1/agents", headers=_auth(key))).status_code == 200
    async with Client(f"{gateway_url}/mcp", auth=key) as client:
        for _ in range(2):
            assert "tester" in str((await client.call_tool("list_agents")).structured_content)
        with pytest.raises(ToolError, match=r"rate limit of 3 requests per minute reached"):
            await client.call_tool("list_agents")
    refused = await http.get("/v1/agents", headers=_auth(key))
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
