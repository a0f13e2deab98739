"""The Kafka adapter of the event log: an idempotent aiokafka producer and topic bootstrap.

aiokafka's errors are converted to :class:`~agentcluster.errors.InfrastructureError` naming
``kafka`` at this boundary, so the relay only deals with our errors.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from agentcluster.domain import OutboxRecord
from agentcluster.errors import DependencyUnavailable, InfrastructureError
from agentcluster.eventlog._topics import TopicSpec

__all__ = ["KafkaPublisher", "ensure_topics"]

_DEPENDENCY = "kafka"


async def ensure_topics(
    bootstrap_servers: str, topics: Sequence[TopicSpec], *, timeout_s: float = 15.0
) -> None:
    """Create the topics that do not exist yet.

    Raises:
        DependencyUnavailable: the brokers cannot be reached within ``timeout_s``.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(spec.name, spec.partitions, spec.replication_factor)
            for spec in topics
            if spec.name not in existing
        ]
        if missing:
            # Another process may create one between list and create.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    except (TimeoutError, KafkaError, OSError) as exc:
        raise DependencyUnavailable(
            _DEPENDENCY, f"cannot reach brokers at {bootstrap_servers}: {exc!r}"
        ) from exc
    finally:
        await admin.close()


class KafkaPublisher:
    """Publishes outbox records to one topic, keyed by session id (so per-session order holds)."""

    def __init__(
        self, bootstrap_servers: str, topic: str, *, client_id: str, request_timeout_ms: int
    ) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._topic = topic
        self._client_id = client_id
        self._request_timeout_ms = request_timeout_ms
        self._producer: AIOKafkaProducer | None = None

    @property
    def topic(self) -> str:
        return self._topic

    async def start(self) -> None:
        """Connect the producer.

        Raises:
            DependencyUnavailable: the brokers cannot be reached.
        """
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap_servers,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=self._request_timeout_ms,
            linger_ms=2,
            max_batch_size=256 * 1024,
        )
        try:
            await asyncio.wait_for(producer.start(), self._request_timeout_ms / 1000)
        except (TimeoutError, KafkaError, OSError) as exc:
            await self._close(producer)
            raise DependencyUnavailable(
                _DEPENDENCY, f"cannot reach brokers at {self._bootstrap_servers}: {exc!r}"
            ) from exc
        self._producer = producer

    async def stop(self) -> None:
        """Flush and close; bounded, because a dead broker must not hang shutdown."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._close(producer)

    async def _close(self, producer: AIOKafkaProducer) -> None:
        # Nothing to save on failure: unacknowledged records stay unpublished in the outbox.
        try:
            await asyncio.wait_for(producer.stop(), self._request_timeout_ms / 1000)
        except (TimeoutError, KafkaError, OSError):
            # stop() flushes first, which never ends while the broker is down: drop the
            # connections ourselves so no socket outlives the producer.
            with contextlib.suppress(TimeoutError, KafkaError, OSError):
                await asyncio.wait_for(producer.client.close(), 5)

    async def publish(self, records: Sequence[OutboxRecord]) -> list[bool]:
        """Send records in order; returns, per record, whether the broker acknowledged it.

        Bounded: aiokafka keeps retrying a batch while a known broker is unreachable, so records
        not acknowledged within the request timeout count as not sent (the relay then recreates
        the producer, which abandons them, and sends them again later).

        Raises:
            InfrastructureError: the producer is not started or could not enqueue at all.
        """
        if self._producer is None:
            raise InfrastructureError(_DEPENDENCY, "publisher is not started")
        futures: list[asyncio.Future[object]] = []
        try:
            for record in records:
                futures.append(
                    await self._producer.send(
                        self._topic, value=record.payload, key=record.session_id.encode()
                    )
                )
        except (KafkaError, OSError) as exc:
            if not futures:
                raise InfrastructureError(_DEPENDENCY, f"send failed: {exc!r}") from exc
        if futures:
            await asyncio.wait(futures, timeout=self._request_timeout_ms / 1000)
        sent = [f.done() and not f.cancelled() and f.exception() is None for f in futures]
        return sent + [False] * (len(records) - len(sent))
