"""Provider settings through the running gateway: a PUT reaches the session hosts without a restart
(the next turn of an agent goes to the provider, model and key the settings name), and the key is
only ever answered masked."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from agentcluster.testing.fake_llm import FakeLLM, Reply, Rule
from tests.conftest import eventually
from tests.e2e.conftest import ADMIN_KEY, new_tenant

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
async def clean_settings(http: httpx.AsyncClient) -> AsyncIterator[None]:
    """Provider settings are shared by the e2e session: leave none behind."""
    yield
    cleared = await http.put(
        "/v1/settings/providers", json={"providers": [], "agents": {}}, headers=ADMIN
    )
    assert cleared.status_code == 200, cleared.text


@pytest.mark.usefixtures("clean_settings")
async def test_a_provider_put_routes_the_next_turn_through_it(
    http: httpx.AsyncClient, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex[:10]
    secret = f"sk-e2e-{token}-wxyz"
    fake_llm.script.add_rule(
        Rule(when_last_user_contains=token, model="fake-b", reply=Reply(content=f"via alt {token}"))
    )
    put = await http.put(
        "/v1/settings/providers",
        json={
            "providers": [
                {
                    "name": "alt",
                    "kind": "openai",
                    "api_base": fake_llm.base_url,
                    "api_key": secret,
                    "models": ["fake-b"],
                }
            ],
            "agents": {"tester": {"model": "alt/fake-b"}},
        },
        headers=ADMIN,
    )
    assert put.status_code == 200, put.text
    assert secret not in put.text
    shown = (await http.get("/v1/settings/providers", headers=ADMIN)).json()
    assert shown["providers"][0]["api_key"] != secret
    assert shown["providers"][0]["api_key"].endswith("wxyz")

    _tenant, key = await new_tenant(http)
    auth = {"Authorization": f"Bearer {key}"}
    session = await http.post("/v1/sessions", json={"agent": "tester"}, headers=auth)
    assert session.status_code == 201, session.text
    session_id = session.json()["session_id"]

    async def turn_via_alt() -> bool:
        # Hosts pick the change up within SA01_LLM_SETTINGS_REFRESH_S: retry with new messages.
        answer = await http.post(
            f"/v1/sessions/{session_id}/messages?wait=true",
            json={"content": f"route me {token} {uuid.uuid4().hex[:6]}"},
            headers=auth,
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        return bool(answer.json()["content"] == f"via alt {token}")

    await eventually(turn_via_alt, timeout=30, interval=0.5, message="turn routed via alt")
    routed = [r for r in fake_llm.requests if token in str(r.messages) and r.model == "fake-b"]
    assert routed, "no request reached the fake LLM as model fake-b"
    assert routed[-1].headers.get("authorization") == f"Bearer {secret}"


async def test_settings_are_admin_only(http: httpx.AsyncClient) -> None:
    _tenant, key = await new_tenant(http)
    denied = await http.get("/v1/settings/providers", headers={"Authorization": f"Bearer {key}"})
    assert denied.status_code == 403, denied.text
    assert denied.headers["content-type"].startswith("application/problem+json")
