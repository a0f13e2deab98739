"""Open-stream limits without services: the settings' bounds, the in-process slots with a clock
of their own, a lease's release, the 429 problem, and the gateway's capacity check."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from agentcluster.config import load_settings
from agentcluster.errors import ConfigError, TooManyStreams
from agentcluster.gateway._problems import install_problem_handlers
from agentcluster.limits import (
    STREAM_RETRY_AFTER_S,
    LimitOverrides,
    MemoryStreamSlots,
    StreamLease,
    TenantLimits,
    open_stream_lease,
)
from deployments.gateway import DEFAULT_OPTIONS, build_gateway, check_stream_capacity

pytestmark = pytest.mark.timeout(10)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stream_settings_defaults_and_bounds() -> None:
    limits = load_settings({}).limits
    assert (limits.max_open_streams, limits.replica_max_open_streams) == (16, 48)
    assert TenantLimits.defaults(limits).max_open_streams == 16
    with pytest.raises(ConfigError, match="SA01_LIMITS_MAX_OPEN_STREAMS must not be larger"):
        load_settings({"limits": {"max_open_streams": 49}})
    with pytest.raises(ConfigError, match="SA01_LIMITS_"):
        load_settings({"limits": {"replica_max_open_streams": 0}})
    overridden = TenantLimits(max_open_streams=16).merged(LimitOverrides(max_open_streams=2))
    assert overridden.max_open_streams == 2


def test_the_gateway_refuses_a_replica_limit_that_fills_its_request_slots() -> None:
    settings = load_settings({})
    check_stream_capacity(settings, int(DEFAULT_OPTIONS["max_ongoing_requests"]))
    with pytest.raises(ConfigError, match="must be below the gateway's max_ongoing_requests"):
        check_stream_capacity(settings, 48)


async def test_memory_slots_count_release_and_expire() -> None:
    clock = Clock()
    slots = MemoryStreamSlots(clock=clock)
    assert (await slots.acquire("t", "a", 2, 10.0)).acquired
    assert (await slots.acquire("t", "b", 2, 10.0)).acquired
    refused = await slots.acquire("t", "c", 2, 10.0)
    assert (refused.acquired, refused.open_streams) == (False, 2)
    assert (await slots.acquire("other", "c", 2, 10.0)).acquired
    await slots.release("t", "a")
    assert (await slots.acquire("t", "c", 2, 10.0)).acquired
    clock.now += 5
    await slots.renew("t", "b", 10.0)  # b now expires at 115, c at 110
    clock.now += 6
    assert (await slots.acquire("t", "d", 2, 10.0)).open_streams == 2  # c expired
    assert not (await slots.acquire("t", "e", 2, 10.0)).acquired


async def test_a_lease_releases_once_and_runs_its_callbacks_once() -> None:
    slots = MemoryStreamSlots()
    released: list[str] = []
    lease = await open_stream_lease(slots, "t", 1, 30.0)
    lease.on_release(lambda: released.append("once"))
    assert lease.held
    with pytest.raises(TooManyStreams) as refused:
        await open_stream_lease(slots, "t", 1, 30.0)
    assert refused.value.retry_after == STREAM_RETRY_AFTER_S
    await lease.release()
    await lease.release()
    assert released == ["once"] and not lease.held
    async with await open_stream_lease(slots, "t", 1, 30.0) as again:
        assert again.held
    unlimited = await open_stream_lease(slots, "t", 0, 30.0)
    unlimited.on_release(lambda: released.append("unlimited"))
    assert not unlimited.held
    await unlimited.release()
    assert released == ["once", "unlimited"]
    assert not StreamLease.unlimited("t").held


async def test_too_many_streams_is_a_429_problem_with_retry_after_and_no_rate_headers() -> None:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/stream")
    async def stream() -> None:
        raise TooManyStreams(
            "too many open streams", retry_after=5, max_open_streams=16, open_streams=16
        )

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/stream")
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "5"
    assert "ratelimit-limit" not in response.headers
    assert response.json()["type"] == "https://agentcluster.dev/problems/too-many-streams"


def test_serve_access_log_follows_the_setting() -> None:
    # Off by default (a tenth of the gateway's CPU per request); the replicas' deployment options
    # carry the setting, and start_proxy gives the proxy the same.
    assert load_settings({}).gateway.access_log is False
    for enabled in (False, True):
        settings = load_settings({"gateway": {"access_log": enabled}})
        options = build_gateway(settings)._bound_deployment._deployment_config.logging_config
        assert options is not None and options["enable_access_log"] is enabled
