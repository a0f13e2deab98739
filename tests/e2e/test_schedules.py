"""Schedules through the real gateway (two replicas): a session gets a message at every tick,
once per tick, across a session host kill; bad schedules are refused; tenants are apart."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import ray

from agentcluster.config import Settings
from agentcluster.testing.fake_llm import FakeLLM, Reply, Rule
from tests.conftest import eventually
from tests.e2e.conftest import new_tenant

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PROBLEMS = "https://agentcluster.dev/problems/"


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _session(http: httpx.AsyncClient, key: str) -> str:
    response = await http.post("/v1/sessions", json={"agent": "tester"}, headers=_auth(key))
    assert response.status_code == 201, response.text
    return str(response.json()["session_id"])


async def _schedules(http: httpx.AsyncClient, key: str, session_id: str) -> list[dict[str, Any]]:
    response = await http.get(f"/v1/sessions/{session_id}/schedules", headers=_auth(key))
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def _ticks(http: httpx.AsyncClient, key: str, session_id: str, content: str) -> int:
    response = await http.get(f"/v1/sessions/{session_id}/messages", headers=_auth(key))
    return sum(1 for m in response.json()["items"] if m["content"] == content)


async def _consistent_count(
    http: httpx.AsyncClient, key: str, session_id: str, content: str
) -> tuple[int, datetime]:
    """The messages the schedule sent and its next tick, read with no tick in between."""
    while True:
        before = (await _schedules(http, key, session_id))[0]["next_fire_at"]
        count = await _ticks(http, key, session_id, content)
        after = (await _schedules(http, key, session_id))[0]["next_fire_at"]
        if before == after:
            return count, datetime.fromisoformat(after)


async def test_a_schedule_sends_one_message_per_tick_across_a_host_kill(
    http: httpx.AsyncClient, tenant_key: str, fake_llm: FakeLLM, e2e_settings: Settings
) -> None:
    token = uuid.uuid4().hex
    content = f"scheduled {token}"
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content="tock")))
    session_id = await _session(http, tenant_key)
    created = await http.post(
        f"/v1/sessions/{session_id}/schedules",
        json={"cron": "*/2 * * * * *", "content": content},
        headers=_auth(tenant_key),
    )
    assert created.status_code == 201, created.text
    schedule = created.json()
    first = datetime.fromisoformat(schedule["next_fire_at"])
    assert (schedule["timezone"], schedule["missed"]) == ("UTC", "once")

    async def ticked(times: int) -> bool:
        return await _ticks(http, tenant_key, session_id, content) >= times

    await eventually(lambda: ticked(2), timeout=60, message="two ticks")
    runtime = e2e_settings.runtime
    host = ray.get_actor(f"{runtime.host_prefix}-0", namespace=runtime.namespace)
    os.kill(int(await host.pid.remote()), signal.SIGKILL)
    await eventually(lambda: ticked(5), timeout=60, message="ticks after the host kill")

    count, following = await _consistent_count(http, tenant_key, session_id, content)
    # At most one message per tick from the first up to the next one: none twice (a ticker
    # running late, as while the host was replaced, sends one message for the ticks it missed).
    assert 5 <= count <= (following - first) // timedelta(seconds=2)
    deleted = await http.delete(
        f"/v1/sessions/{session_id}/schedules/{schedule['schedule_id']}",
        headers=_auth(tenant_key),
    )
    assert deleted.status_code == 204
    assert await _schedules(http, tenant_key, session_id) == []
    settled = await _ticks(http, tenant_key, session_id, content)
    await asyncio.sleep(3)  # a deleted schedule sends nothing more
    assert await _ticks(http, tenant_key, session_id, content) == settled

    async def answered() -> bool:
        response = await http.get(f"/v1/sessions/{session_id}/messages", headers=_auth(tenant_key))
        replies = [m for m in response.json()["items"] if m["role"] == "assistant"]
        return len(replies) == settled

    await eventually(answered, timeout=90, message="every scheduled message answered")


@pytest.mark.parametrize(
    ("body", "status", "problem"),
    [
        ({"cron": "every day", "content": "x"}, 422, "validation-failed"),
        ({"cron": "0 9 * * *", "content": "x", "timezone": "Nowhere/Land"}, 422, None),
        ({"cron": "* * * * * *", "content": "x"}, 201, None),  # 1 s apart: the e2e minimum
        ({"cron": "0 0 30 2 *", "content": "x"}, 422, None),  # never fires
        ({"cron": "0 9 * * *", "content": ""}, 422, None),
        ({"cron": "0 9 * * *", "content": "x", "missed": "all"}, 422, None),
    ],
)
async def test_bad_schedules_are_refused_and_leave_nothing(
    http: httpx.AsyncClient,
    tenant_key: str,
    body: dict[str, Any],
    status: int,
    problem: str | None,
) -> None:
    session_id = await _session(http, tenant_key)
    response = await http.post(
        f"/v1/sessions/{session_id}/schedules", json=body, headers=_auth(tenant_key)
    )
    assert response.status_code == status, response.text
    if status == 201:
        await http.delete(
            f"/v1/sessions/{session_id}/schedules/{response.json()['schedule_id']}",
            headers=_auth(tenant_key),
        )
        return
    assert response.headers["content-type"].startswith("application/problem+json")
    if problem:
        assert response.json()["type"] == PROBLEMS + problem
    assert await _schedules(http, tenant_key, session_id) == []


async def test_another_tenants_schedules_are_not_found(
    http: httpx.AsyncClient, tenant_key: str
) -> None:
    session_id = await _session(http, tenant_key)
    created = await http.post(
        f"/v1/sessions/{session_id}/schedules",
        json={"cron": "0 9 * * 1-5", "content": "standup", "timezone": "Europe/Berlin"},
        headers=_auth(tenant_key),
    )
    assert created.status_code == 201, created.text
    _, other_key = await new_tenant(http, "schedules-other")
    path = f"/v1/sessions/{session_id}/schedules"
    assert (await http.get(path, headers=_auth(other_key))).status_code == 404
    again = await http.post(
        path, json={"cron": "0 9 * * *", "content": "x"}, headers=_auth(other_key)
    )
    assert again.status_code == 404
    schedule_id = created.json()["schedule_id"]
    gone = await http.delete(f"{path}/{schedule_id}", headers=_auth(other_key))
    assert gone.status_code == 404
    assert [s["schedule_id"] for s in await _schedules(http, tenant_key, session_id)] == [
        schedule_id
    ]
