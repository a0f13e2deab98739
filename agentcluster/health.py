"""Dependency probes: each configured service answers, or we say which one does not.

A :class:`ReadinessProbe` keeps its connections (the state store's pool, one Redis client, one
Kafka admin client, one HTTP client for OPA) between probes and serves a result younger than
``max_age_s`` without probing again; concurrent callers share the probe that is running. So a flood
of ``/v1/ready`` costs at most one probe per ``max_age_s`` per gateway replica and opens no
connection per request. Details name each dependency by its URL with the password masked
(:func:`agentcluster.redact.mask_url`) and errors are scrubbed of secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Literal

import httpx
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import BaseModel, ConfigDict

from agentcluster.config import Settings
from agentcluster.errors import AgentClusterError, DependencyUnavailable
from agentcluster.eventlog import KAFKA_ERRORS, KafkaConnection
from agentcluster.redact import mask_url, scrub
from agentcluster.redisconn import Redis, open_redis, redis_errors

if TYPE_CHECKING:
    from agentcluster.store import SharedDatabase, StoreHealth

__all__ = ["DependencyStatus", "Readiness", "ReadinessProbe", "probe_all", "require_all"]

State = Literal["up", "down", "embedded"]
DEFAULT_MAX_AGE_S = 1.0
DEFAULT_TIMEOUT_S = 3.0


class DependencyStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    state: State
    detail: str = ""
    latency_ms: float = 0.0


@dataclass(frozen=True)
class Readiness:
    """One probe's answer: every dependency's status, when it ran, and which probe it was."""

    statuses: list[DependencyStatus]
    checked_at: datetime
    probe: int
    """This probe's number in its :class:`ReadinessProbe` (1, 2, ...)."""
    monotonic: float

    @property
    def degraded(self) -> bool:
        return any(status.state == "down" for status in self.statuses)


def _down(name: str, url: str, exc: BaseException) -> DependencyUnavailable:
    return DependencyUnavailable(name, scrub(f"cannot reach {mask_url(url)}: {exc!r}"))


class _Clients:
    """The probe's long-lived clients, opened on first use and reopened after a failure."""

    def __init__(self, settings: Settings, timeout_s: float, store: StoreHealth | None) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.shared_store = store
        self.own_store: SharedDatabase | None = None
        self.redis: Redis | None = None
        self.kafka: AIOKafkaAdminClient | None = None
        self.http: httpx.AsyncClient | None = None

    async def database(self) -> str:
        store = self.shared_store or self.own_store
        if store is None:
            from agentcluster.store import open_store

            store = self.own_store = await open_store(
                self.settings.db_dsn, pool_size=1, connect_timeout_s=self.timeout_s, migrate=False
            )
        await asyncio.wait_for(store.ping(), self.timeout_s)
        return store.description

    async def redis_ping(self, url: str) -> str:
        if self.redis is None:
            self.redis = open_redis(url, timeout_s=self.timeout_s)
        async with redis_errors(f"cannot reach {mask_url(url)}"):
            await self.redis.ping()
        return mask_url(url)

    async def kafka_metadata(self, servers: str) -> str:
        connection = KafkaConnection(servers, request_timeout_ms=int(self.timeout_s * 1000))
        try:
            if self.kafka is None:
                admin = connection.admin()
                await asyncio.wait_for(admin.start(), self.timeout_s)
                self.kafka = admin
            await asyncio.wait_for(self.kafka.list_topics(), self.timeout_s)
        except KAFKA_ERRORS as exc:
            await self._drop_kafka()
            raise connection.unavailable(exc) from exc
        return servers

    async def _drop_kafka(self) -> None:
        admin, self.kafka = self.kafka, None
        if admin is not None:
            with contextlib.suppress(*KAFKA_ERRORS):
                await admin.close()

    async def policy_health(self, url: str) -> str:
        if self.http is None:
            self.http = httpx.AsyncClient(timeout=self.timeout_s)
        try:
            response = await self.http.get(f"{url}/health")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise _down("opa", url, exc) from exc
        return mask_url(url)

    async def aclose(self) -> None:
        await self._drop_kafka()
        if self.redis is not None:
            await self.redis.aclose()
        if self.http is not None:
            await self.http.aclose()
        if self.own_store is not None:
            await self.own_store.close()


async def _timed(name: str, probe: Callable[[], Awaitable[str]]) -> DependencyStatus:
    started = time.perf_counter()
    try:
        detail = await probe()
        state: State = "up"
    except TimeoutError:
        detail, state = f"{name}: no answer in time", "down"
    except AgentClusterError as exc:
        detail, state = scrub(exc.message), "down"
    return DependencyStatus(
        name=name, state=state, detail=detail, latency_ms=(time.perf_counter() - started) * 1000
    )


class ReadinessProbe:
    """Probes every configured dependency over long-lived connections, at most once per
    ``max_age_s`` (0: on every call); callers arriving while a probe runs share its answer.

    Args:
        settings: which dependencies are configured.
        store: the state store to ping (the gateway's own, so its pool is reused); None opens
            one of its own on first use.
        max_age_s: how long a result is served again.
        timeout_s: each dependency's connect and answer timeout.
        clock: monotonic seconds (tests may pass their own).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: StoreHealth | None = None,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._clients = _Clients(settings, timeout_s, store)
        self._max_age_s = max_age_s
        self._clock = clock
        self._last: Readiness | None = None
        self._running: asyncio.Future[Readiness] | None = None
        self.probes = 0
        """How many probes ran (each probes every dependency once)."""

    async def __aenter__(self) -> ReadinessProbe:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def check(self) -> Readiness:
        """The latest result younger than ``max_age_s``, else a fresh probe's."""
        last = self._last
        if last is not None and self._clock() - last.monotonic < self._max_age_s:
            return last
        if self._running is None:
            self._running = asyncio.ensure_future(self._probe())
            self._running.add_done_callback(self._finished)
        # Shielded: a caller that goes away does not cancel the probe the others wait for.
        return await asyncio.shield(self._running)

    def _finished(self, future: asyncio.Future[Readiness]) -> None:
        if self._running is future:
            self._running = None

    async def _probe(self) -> Readiness:
        self.probes += 1
        number = self.probes
        statuses = await self._probe_all()
        readiness = Readiness(
            statuses=statuses, checked_at=datetime.now(UTC), probe=number, monotonic=self._clock()
        )
        self._last = readiness
        return readiness

    async def _probe_all(self) -> list[DependencyStatus]:
        settings, clients = self._settings, self._clients
        embedded: list[DependencyStatus] = []
        probes: list[Awaitable[DependencyStatus]] = []
        db_name = "postgresql" if settings.db.dsn and "postgresql" in settings.db.dsn else "sqlite"
        probes.append(_timed(db_name, clients.database))
        if (servers := settings.kafka.bootstrap_servers) is not None:
            probes.append(_timed("kafka", lambda: clients.kafka_metadata(servers)))
        else:
            embedded.append(
                DependencyStatus(name="kafka", state="embedded", detail="events in store")
            )
        if (redis_url := settings.redis.url) is not None:
            probes.append(_timed("redis", lambda: clients.redis_ping(redis_url)))
        else:
            embedded.append(DependencyStatus(name="redis", state="embedded", detail="in-process"))
        if (policy_url := settings.policy.url) is not None:
            probes.append(_timed("opa", lambda: clients.policy_health(policy_url)))
        else:
            embedded.append(
                DependencyStatus(name="opa", state="embedded", detail="in-process Rego")
            )
        return [*await asyncio.gather(*probes), *embedded]

    async def aclose(self) -> None:
        """Close the connections the probe opened (not a store it was given)."""
        if self._running is not None:
            with contextlib.suppress(asyncio.CancelledError, AgentClusterError):
                await self._running
        await self._clients.aclose()


async def probe_all(
    settings: Settings, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> list[DependencyStatus]:
    """Probe every dependency once, concurrently; unconfigured ones report their embedded
    stand-in (``agentcluster check``)."""
    async with ReadinessProbe(settings, max_age_s=0, timeout_s=timeout_s) as probe:
        return (await probe.check()).statuses


async def require_all(
    settings: Settings, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> list[DependencyStatus]:
    """Probe everything and fail fast naming the first dependency that is down.

    Raises:
        DependencyUnavailable: a configured dependency is unreachable.
    """
    statuses = await probe_all(settings, timeout_s=timeout_s)
    for status in statuses:
        if status.state == "down":
            raise DependencyUnavailable(status.name, status.detail.removeprefix(f"{status.name}: "))
    return statuses
