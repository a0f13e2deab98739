"""Gateway replicas scale with load between min and max: a second app in the e2e Serve instance,
with a low target of ongoing requests and short delays, under slow turns from the fake LLM."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest
from ray import serve

from agentcluster.config import Settings
from agentcluster.testing.fake_llm import FakeLLM, Reply, Rule
from deployments.gateway import build_gateway
from tests.conftest import eventually
from tests.e2e.conftest import ADMIN_KEY

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

APP = "scaling"
PREFIX = "/scaling"


@pytest.fixture(scope="module")
def scaling_url(gateway_url: str, e2e_settings: Settings) -> Iterator[str]:
    """A gateway app autoscaled 1..2 on one ongoing request per replica, deployed beside the
    shared one (same Serve proxy, its own route prefix and session hosts)."""
    settings = e2e_settings.model_copy(
        update={
            "runtime": e2e_settings.runtime.model_copy(
                update={"host_prefix": f"s{uuid.uuid4().hex[:6]}"}
            )
        }
    )
    autoscaling = {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 1,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 2,
        "upscale_delay_s": 1,
        "downscale_delay_s": 3,
    }
    serve.run(
        build_gateway(settings, autoscaling_config=autoscaling), name=APP, route_prefix=PREFIX
    )
    yield gateway_url + PREFIX
    serve.delete(APP)


def _running_replicas() -> int:
    deployment = serve.status().applications[APP].deployments["Gateway"]
    return int(deployment.replica_states.get("RUNNING", 0))


def _replicas_are(count: int) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return await asyncio.to_thread(_running_replicas) == count

    return probe


async def test_gateway_replicas_scale_up_under_load_and_back_down(
    scaling_url: str, fake_llm: FakeLLM
) -> None:
    assert _running_replicas() == 1
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(
        Rule(when_last_user_contains=token, reply=Reply(content="slow answer", ttft_s=1.5))
    )
    async with httpx.AsyncClient(base_url=scaling_url, timeout=120) as http:
        created = await http.post(
            "/v1/keys",
            json={"name": "scale", "tenant_name": f"s-{uuid.uuid4().hex[:8]}"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        key = {"Authorization": f"Bearer {created.json()['secret']}"}
        sessions = [
            (await http.post("/v1/sessions", json={"agent": "tester"}, headers=key)).json()[
                "session_id"
            ]
            for _ in range(6)
        ]
        stop = asyncio.Event()

        async def keep_busy(session_id: str) -> None:
            while not stop.is_set():
                answer = await http.post(
                    f"/v1/sessions/{session_id}/messages?wait=true",
                    json={"content": f"think slowly {token}"},
                    headers=key,
                )
                assert answer.json()["status"] == "completed", answer.text

        load = [asyncio.create_task(keep_busy(s)) for s in sessions]
        try:
            await eventually(
                _replicas_are(2),
                timeout=90,
                message="a second gateway replica under load",
            )
        finally:
            stop.set()
            await asyncio.gather(*load)
    await eventually(
        _replicas_are(1),
        timeout=90,
        message="back to one gateway replica once idle",
    )
