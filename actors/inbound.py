"""The Kafka inbound worker as a Ray actor: consumes ``agent.inbound`` into the runtime, each
record through the HTTP API's checks (the tenant's request rate, the ``session.message`` policy).

``ray.remote`` is applied here once; :func:`start_inbound` starts it with the options every
detached worker shares (:mod:`actors._workers`). A restarted actor starts consuming again by
itself (its ``__init__`` runs on the actor's event loop), resuming at the group's committed offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import ray
from ray.actor import ActorHandle

from actors._workers import start_until_up, worker_options
from actors.compose import connect_runtime
from agentcluster.config import Settings
from agentcluster.errors import ConfigError
from agentcluster.eventlog import (
    DEFAULT_GROUP_ID,
    CheckedSubmit,
    InboundConsumer,
    InboundStats,
    ensure_topics,
    load_topics,
)
from agentcluster.limits import TenantLimitsService, open_tenant_limits
from agentcluster.logs import configure_logging
from agentcluster.policy import RegoPolicyEngine, build_policy_engine
from agentcluster.runtime import Runtime

__all__ = ["InboundWorker", "InboundWorkerActor", "start_inbound"]


class InboundWorker:
    """Owns one :class:`InboundConsumer` and the :class:`Runtime` it submits to."""

    def __init__(self, settings: Settings, group_id: str = DEFAULT_GROUP_ID) -> None:
        configure_logging(settings)
        if settings.kafka.bootstrap_servers is None:
            raise ConfigError("SA01_KAFKA_BOOTSTRAP_SERVERS: the inbound worker needs Kafka")
        self._settings = settings
        self._servers = settings.kafka.bootstrap_servers
        self._group_id = group_id
        self._stop_timeout_s = 2 * settings.kafka.request_timeout_ms / 1000
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._runtime: Runtime | None = None
        self._policy: RegoPolicyEngine | None = None
        self._limits: TenantLimitsService | None = None
        self._consumer: InboundConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._resume: asyncio.Task[None] | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # built outside an event loop: the caller starts it explicitly
        # In an actor (first start or a restart after a crash) nobody else may call start().
        self._resume = asyncio.create_task(self._start_until_up())

    async def _start_until_up(self) -> None:
        """Start, retrying while Kafka or the database is unreachable (after an actor restart)."""
        await start_until_up(self.start, self._stop, role="inbound")

    async def start(self) -> InboundStats:
        """Connect the runtime and start consuming in the background (idempotent).

        Raises:
            DependencyUnavailable: Kafka or the database cannot be reached.
        """
        async with self._lock:
            if self._task is None and not self._stop.is_set():
                await self._open()
        return await self.stats()

    async def _open(self) -> None:
        kafka = self._settings.kafka
        runtime = await connect_runtime(self._settings)
        # The checks of the HTTP API: the same policy and the same per-tenant rate counters.
        policy = build_policy_engine(self._settings)
        limits = open_tenant_limits(self._settings, runtime.store)
        submit = CheckedSubmit(runtime.send_message, policy=policy, limits=limits)
        try:
            inbound = load_topics(kafka.topics_file).inbound
            await ensure_topics(self._servers, [inbound], timeout_s=kafka.request_timeout_ms / 1000)
            consumer = InboundConsumer(
                self._servers,
                inbound.name,
                submit,
                group_id=self._group_id,
                client_id=f"{kafka.client_id}-inbound",
                request_timeout_ms=kafka.request_timeout_ms,
            )
            await consumer.start()
        except BaseException:
            await limits.aclose()
            await policy.aclose()
            await runtime.close()
            raise
        self._runtime, self._consumer = runtime, consumer
        self._policy, self._limits = policy, limits
        self._task = asyncio.create_task(consumer.run(self._stop))

    async def stats(self) -> InboundStats:
        return self._consumer.stats() if self._consumer is not None else InboundStats()

    async def stop(self) -> InboundStats:
        """Finish the record in hand, commit, leave the group and close the runtime."""
        self._stop.set()
        async with self._lock:
            if self._task is not None:
                # Bounded: a submit stuck on a dead dependency is cancelled, which commits what
                # the store took and leaves the rest to be read again.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._task, self._stop_timeout_s)
            stats = await self.stats()
            if self._consumer is not None:
                await self._consumer.stop()
            if self._limits is not None:
                await self._limits.aclose()
            if self._policy is not None:
                await self._policy.aclose()
            if self._runtime is not None:
                await self._runtime.close()
            self._task = self._consumer = self._runtime = None
            self._policy = self._limits = None
        return stats


InboundWorkerActor = ray.remote(InboundWorker)


async def start_inbound(
    settings: Settings, *, group_id: str = DEFAULT_GROUP_ID
) -> ActorHandle | None:
    """The inbound worker of this cluster, created if needed and started; None without Kafka.

    Call it with Ray initialized. Raises DependencyUnavailable when Kafka or the database cannot be
    reached (the actor stays and keeps trying to start).
    """
    if settings.kafka.bootstrap_servers is None:
        return None
    options = worker_options(settings, "inbound")
    handle: Any = InboundWorkerActor.options(**options).remote(settings, group_id)
    await handle.start.remote()
    return handle
