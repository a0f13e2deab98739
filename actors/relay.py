"""The outbox relay as one named, detached, restartable Ray actor per cluster.

Exactly one relay per database keeps per-session order simple (see agentcluster.eventlog); the
named actor is that one. ``ray.remote`` is applied here once; :func:`start_relay` starts it with
the options every detached worker shares (:mod:`actors._workers`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

import ray
from ray.actor import ActorHandle

from actors._workers import start_until_up, worker_options
from agentcluster.bootstrap import build_relay, open_state_store
from agentcluster.config import Settings
from agentcluster.errors import ConfigError, InfrastructureError
from agentcluster.eventlog import OutboxRelay
from agentcluster.logs import configure_logging
from agentcluster.store import OutboxBacklog, OutboxSource

__all__ = ["RelayStore", "RelayWorker", "RelayWorkerActor", "start_relay"]


class RelayStore(OutboxSource, OutboxBacklog, Protocol):
    """The store roles the relay worker holds: the outbox it relays, its backlog (the lag in
    :meth:`RelayWorker.stats`) and closing it."""

    async def close(self) -> None: ...


class RelayWorker:
    """Runs the relay loop in the background of its actor, starting again after a restart."""

    def __init__(self, settings: Settings) -> None:
        configure_logging(settings)
        if settings.kafka.bootstrap_servers is None:
            raise ConfigError("SA01_KAFKA_BOOTSTRAP_SERVERS: the relay needs Kafka")
        self._settings = settings
        self._stop = asyncio.Event()
        self._store: RelayStore | None = None
        self._relay: OutboxRelay | None = None
        # Built inside the actor's event loop: start at once, and again after a restart.
        self._task: asyncio.Task[None] = asyncio.get_running_loop().create_task(self._run())

    async def _open(self) -> OutboxRelay:
        """Open the state store and the relay once (the store is closed again on failure)."""
        store = await open_state_store(self._settings)
        try:
            relay = await build_relay(self._settings, store)
            assert relay is not None  # Kafka is configured (checked in __init__)
        except BaseException:
            await store.close()
            raise
        self._store = store
        return relay

    async def _run(self) -> None:
        self._relay = await start_until_up(self._open, self._stop, role="relay")
        if self._relay is not None:
            await self._relay.run(self._stop)

    async def stats(self) -> dict[str, int]:
        lag = await self._store.outbox_lag() if self._store is not None else 0
        relay = self._relay
        return {
            "published": relay.published if relay else 0,
            "failures": relay.failures if relay else 0,
            "lag": lag,
        }

    async def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(asyncio.CancelledError, InfrastructureError):
            await self._task
        if self._store is not None:
            await self._store.close()


RelayWorkerActor = ray.remote(RelayWorker)


def start_relay(settings: Settings) -> ActorHandle | None:
    """The cluster's relay actor, created if needed; None when Kafka is not configured."""
    if settings.kafka.bootstrap_servers is None:
        return None
    handle: Any = RelayWorkerActor.options(**worker_options(settings, "relay")).remote(settings)
    return handle
