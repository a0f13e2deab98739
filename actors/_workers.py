"""What the cluster's detached background workers (the outbox relay, the Kafka inbound consumer)
share: the options of their one named actor, and starting until the dependencies answer.

Each worker is one named, detached, restartable actor per cluster (``<host_prefix>-<role>`` in the
runtime namespace, ``num_cpus=0``). Its ``__init__`` runs on the actor's event loop, so it starts
its work there by itself: on the first start and again after Ray restarts the actor, when nobody
else would call it. Dependencies that are down at that moment (Kafka, the database) are waited
for by :func:`start_until_up`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from actors import names
from agentcluster.config import Settings
from agentcluster.errors import InfrastructureError

__all__ = ["WorkerRole", "start_until_up", "worker_name", "worker_options"]

log = logging.getLogger(__name__)

T = TypeVar("T")
WorkerRole = names.WorkerRole

RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 10.0


def worker_name(settings: Settings, role: WorkerRole) -> str:
    """The actor name of the cluster's ``role`` worker (in ``settings.runtime.namespace``)."""
    return names.worker(settings.runtime, role)


def worker_options(settings: Settings, role: WorkerRole) -> dict[str, Any]:
    """``.options(...)`` of the cluster's ``role`` worker: named, detached, got if it exists
    (one per cluster), restarted by Ray for ever, no CPU reserved (it mostly waits on I/O)."""
    return {
        "name": worker_name(settings, role),
        "namespace": settings.runtime.namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "num_cpus": 0,
    }


async def start_until_up(
    start: Callable[[], Awaitable[T]],
    stop: asyncio.Event,
    *,
    role: WorkerRole,
    initial_s: float = RETRY_INITIAL_S,
    max_s: float = RETRY_MAX_S,
) -> T | None:
    """Call ``start`` until it succeeds, waiting a capped exponential backoff after each
    :class:`~agentcluster.errors.InfrastructureError` (a dependency down); None once ``stop`` is
    set first. Other errors (a bad configuration, a bug) end the attempt and are raised."""
    delay = initial_s
    while not stop.is_set():
        try:
            return await start()
        except InfrastructureError as exc:
            log.warning("%s worker: cannot start yet, retrying in %.1fs: %s", role, delay, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, max_s)
    return None
