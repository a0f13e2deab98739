"""Dependency probes: each configured service answers, or we say which one does not."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import httpx
import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict
from redis.exceptions import RedisError

from agentcluster.config import Settings
from agentcluster.errors import AgentClusterError, DependencyUnavailable
from agentcluster.eventlog import ensure_topics

__all__ = ["DependencyStatus", "probe_all", "require_all"]

State = Literal["up", "down", "embedded"]


class DependencyStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    state: State
    detail: str = ""
    latency_ms: float = 0.0


async def _probe_db(settings: Settings, timeout_s: float) -> str:
    from agentcluster.store import open_store

    store = await open_store(
        settings.db_dsn, pool_size=1, connect_timeout_s=timeout_s, migrate=False
    )
    try:
        await store.ping()
    finally:
        await store.close()
    return store.description


async def _probe_kafka(servers: str, timeout_s: float) -> str:
    await ensure_topics(servers, [], timeout_s=timeout_s)
    return servers


async def _probe_redis(url: str, timeout_s: float) -> str:
    client = aioredis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        raise DependencyUnavailable("redis", f"cannot reach {url}: {exc}") from exc
    finally:
        await client.aclose()
    return url


async def _probe_policy(url: str, timeout_s: float) -> str:
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.get(f"{url}/health")
            response.raise_for_status()
    except httpx.HTTPError as exc:
        raise DependencyUnavailable("opa", f"cannot reach {url}: {exc!r}") from exc
    return url


async def _timed(name: str, probe: Callable[[], Awaitable[str]]) -> DependencyStatus:
    started = time.perf_counter()
    try:
        detail = await probe()
        state: State = "up"
    except AgentClusterError as exc:
        detail, state = exc.message, "down"
    return DependencyStatus(
        name=name, state=state, detail=detail, latency_ms=(time.perf_counter() - started) * 1000
    )


async def probe_all(settings: Settings, *, timeout_s: float = 3.0) -> list[DependencyStatus]:
    """Probe every dependency concurrently; unconfigured ones report their embedded stand-in."""
    embedded: list[DependencyStatus] = []
    probes: list[Awaitable[DependencyStatus]] = []
    db_name = "postgresql" if settings.db.dsn and "postgresql" in settings.db.dsn else "sqlite"
    probes.append(_timed(db_name, lambda: _probe_db(settings, timeout_s)))
    if (servers := settings.kafka.bootstrap_servers) is not None:
        probes.append(_timed("kafka", lambda: _probe_kafka(servers, timeout_s)))
    else:
        embedded.append(DependencyStatus(name="kafka", state="embedded", detail="events in store"))
    if (redis_url := settings.redis.url) is not None:
        probes.append(_timed("redis", lambda: _probe_redis(redis_url, timeout_s)))
    else:
        embedded.append(DependencyStatus(name="redis", state="embedded", detail="in-process"))
    if (policy_url := settings.policy.url) is not None:
        probes.append(_timed("opa", lambda: _probe_policy(policy_url, timeout_s)))
    else:
        embedded.append(DependencyStatus(name="opa", state="embedded", detail="in-process Rego"))
    return [*await asyncio.gather(*probes), *embedded]


async def require_all(settings: Settings, *, timeout_s: float = 3.0) -> list[DependencyStatus]:
    """Probe everything and fail fast naming the first dependency that is down.

    Raises:
        DependencyUnavailable: a configured dependency is unreachable.
    """
    statuses = await probe_all(settings, timeout_s=timeout_s)
    for status in statuses:
        if status.state == "down":
            raise DependencyUnavailable(status.name, status.detail.removeprefix(f"{status.name}: "))
    return statuses
