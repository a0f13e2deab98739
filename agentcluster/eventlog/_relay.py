"""The outbox relay: moves committed events from the state store to the event log.

Delivery is at least once and in per-session order:

* the store hands out unpublished events ordered by position, and a session's events are committed
  in seq order (its row lock serializes writers), so each session's events arrive here in seq order;
* after a send, only each session's *acknowledged prefix* is marked published; the first
  failure in a session holds back that session's later events, which are sent again next round;
* on any failure the producer is recreated and the relay backs off exponentially; nothing is
  dropped, so a broker outage only delays events. Consumers dedupe by ``event_id``.

Run exactly one relay per database (the production deployment runs it as a single Ray actor).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Protocol

from agentcluster import metrics
from agentcluster.config import RelaySettings
from agentcluster.domain import OutboxRecord
from agentcluster.errors import InfrastructureError
from agentcluster.store import OutboxBacklog, OutboxSource

__all__ = [
    "LAG_PROBE_INTERVAL_S",
    "EventPublisher",
    "OutboxBacklog",
    "OutboxRelay",
    "OutboxSource",
    "acknowledged_prefix",
]

log = logging.getLogger(__name__)

LAG_PROBE_INTERVAL_S = 5.0
"""How often a relay that reads full batches counts the whole backlog (for the lag gauge)."""


class EventPublisher(Protocol):
    """Port: somewhere events go (Kafka in production).

    ``publish`` reports per record whether it was acknowledged. Contract: a session's records never
    land out of order; after one of them fails, its later records in the same call are not written
    (Kafka's idempotent producer rejects sequence gaps within a partition).
    """

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, records: Sequence[OutboxRecord]) -> list[bool]: ...


def acknowledged_prefix(records: Sequence[OutboxRecord], sent: Sequence[bool]) -> list[int]:
    """Positions safe to mark published: per session, the records before its first failure."""
    blocked: set[str] = set()
    positions: list[int] = []
    for record, ok in zip(records, sent, strict=True):
        if record.session_id in blocked:
            continue
        if ok:
            positions.append(record.position)
        else:
            blocked.add(record.session_id)
    return positions


class OutboxRelay:
    """Relays the outbox to an :class:`EventPublisher` until stopped."""

    def __init__(
        self,
        source: OutboxSource,
        publisher: EventPublisher,
        settings: RelaySettings,
    ) -> None:
        self._source = source
        self._publisher = publisher
        self._settings = settings
        self._started = False
        self.published = 0
        self.failures = 0
        self._lag_probed_at = float("-inf")

    async def _ensure_started(self) -> None:
        if not self._started:
            await self._publisher.start()
            self._started = True

    async def _restart_publisher(self) -> None:
        self._started = False
        await self._publisher.stop()

    async def run_once(self) -> int:
        """Relay one batch; returns how many events were marked published.

        Raises:
            InfrastructureError: the publisher or the store failed; part of the batch may be done.
        """
        await self._ensure_started()
        records = await self._source.fetch_unpublished(self._settings.batch_size)
        if not records:
            metrics.record_outbox(0, 0)
            return 0
        sent = await self._publisher.publish(records)
        positions = acknowledged_prefix(records, sent)
        await self._source.mark_published(positions)
        self.published += len(positions)
        metrics.record_outbox(await self._unpublished(records, positions), len(positions))
        if len(positions) < len(records):
            raise InfrastructureError(
                "kafka",
                f"{len(records) - len(positions)} of {len(records)} events not acknowledged",
            )
        return len(positions)

    async def _unpublished(self, records: Sequence[object], positions: Sequence[int]) -> int | None:
        """Events still waiting after this round: exact from a partial batch, counted by the
        source (at most every LAG_PROBE_INTERVAL_S) after a full one, else None (unknown)."""
        if len(records) < self._settings.batch_size:
            return len(records) - len(positions)
        now = time.monotonic()
        if not isinstance(self._source, OutboxBacklog) or now - self._lag_probed_at < (
            LAG_PROBE_INTERVAL_S
        ):
            return None
        self._lag_probed_at = now
        # Why broad: the count is only for a gauge; it must not fail a round that worked.
        try:
            return await self._source.outbox_lag()
        except Exception as exc:
            log.debug("counting the outbox backlog failed: %s", exc)
            return None

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set, riding out failures with capped exponential backoff."""
        backoff = self._settings.backoff_initial_s
        try:
            while not stop.is_set():
                try:
                    count = await self.run_once()
                    backoff = self._settings.backoff_initial_s
                    if count < self._settings.batch_size:
                        await self._wait(stop, self._settings.poll_interval_s)
                # The relay is the only way events leave the outbox: whatever goes wrong in one
                # round (broker down, database blip, a bug in a dependency) must not end the loop.
                except Exception as exc:
                    self.failures += 1
                    log.warning("outbox relay round failed, retrying in %.1fs: %s", backoff, exc)
                    await self._safe_restart()
                    await self._wait(stop, backoff)
                    backoff = min(backoff * 2, self._settings.backoff_max_s)
        finally:
            await self._safe_restart()

    async def _safe_restart(self) -> None:
        try:
            await self._restart_publisher()
        except Exception as exc:
            log.debug("closing the publisher failed: %s", exc)

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
