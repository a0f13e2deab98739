"""The one place that talks to aiokafka: building clients, starting and stopping them within the
request timeout, and converting Kafka's errors into ours.

:class:`KafkaConnection` holds what every client shares (bootstrap servers, client id, request
timeout, from ``SA01_KAFKA_*``) and builds the producers, consumers and admin clients of the relay
(:class:`KafkaPublisher`), the inbound worker (:mod:`agentcluster.eventlog._inbound`), topic
bootstrap (:func:`ensure_topics`) and the readiness probe. aiokafka's errors are converted to
:class:`~agentcluster.errors.InfrastructureError` naming ``kafka`` at this boundary: brokers that
cannot be reached are :class:`~agentcluster.errors.DependencyUnavailable`
(:meth:`KafkaConnection.unavailable`), a failed operation on a started client an
``InfrastructureError`` saying what failed (:func:`kafka_errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

from agentcluster.config import KafkaSettings
from agentcluster.domain import OutboxRecord
from agentcluster.errors import ConfigError, DependencyUnavailable, InfrastructureError
from agentcluster.eventlog._topics import TopicSpec

__all__ = [
    "DEPENDENCY",
    "KAFKA_ERRORS",
    "KafkaConnection",
    "KafkaPublisher",
    "ensure_topics",
    "kafka_errors",
]

DEPENDENCY = "kafka"
"""The name our errors give Kafka (``InfrastructureError.dependency``)."""

KAFKA_ERRORS = (TimeoutError, KafkaError, OSError)
"""What a Kafka call may raise when the brokers fail: aiokafka's errors, sockets, our timeouts."""


class _Client(Protocol):
    """What aiokafka's producer, consumer and admin client have in common here."""

    async def start(self) -> Any: ...


@contextlib.asynccontextmanager
async def kafka_errors(action: str) -> AsyncIterator[None]:
    """Convert the Kafka errors raised inside the block into ``InfrastructureError("kafka",
    f"{action}: ...")``."""
    try:
        yield
    except KAFKA_ERRORS as exc:
        raise InfrastructureError(DEPENDENCY, f"{action}: {exc!r}") from exc


@dataclass(frozen=True)
class KafkaConnection:
    """Where the brokers are and how long to wait for them; builds every aiokafka client.

    Args:
        bootstrap_servers: ``host:port[,host:port]``.
        client_id: the clients' id prefix (each client appends its role).
        request_timeout_ms: every request's timeout, and the bound on starting and stopping.
    """

    bootstrap_servers: str
    client_id: str = "agentcluster"
    request_timeout_ms: int = 15_000

    @classmethod
    def from_settings(cls, kafka: KafkaSettings) -> KafkaConnection:
        """The connection ``SA01_KAFKA_*`` describes.

        Raises:
            ConfigError: ``SA01_KAFKA_BOOTSTRAP_SERVERS`` is unset.
        """
        if kafka.bootstrap_servers is None:
            raise ConfigError("SA01_KAFKA_BOOTSTRAP_SERVERS: Kafka is not configured")
        return cls(kafka.bootstrap_servers, kafka.client_id, kafka.request_timeout_ms)

    @property
    def timeout_s(self) -> float:
        return self.request_timeout_ms / 1000

    def producer(self, *, client_id: str | None = None, **tuning: Any) -> AIOKafkaProducer:
        """An idempotent producer with ``acks=all`` (per-partition order, no duplicates)."""
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=client_id or self.client_id,
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=self.request_timeout_ms,
            **tuning,
        )

    def consumer(
        self, *topics: str, group_id: str, client_id: str | None = None, **tuning: Any
    ) -> AIOKafkaConsumer:
        """A group member that commits its offsets itself and reads committed records only."""
        return AIOKafkaConsumer(
            *topics,
            bootstrap_servers=self.bootstrap_servers,
            group_id=group_id,
            client_id=client_id or self.client_id,
            enable_auto_commit=False,
            isolation_level="read_committed",
            request_timeout_ms=self.request_timeout_ms,
            **tuning,
        )

    def admin(self) -> AIOKafkaAdminClient:
        """An admin client (topic listing and creation)."""
        return AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers, request_timeout_ms=self.request_timeout_ms
        )

    def unavailable(self, exc: BaseException) -> DependencyUnavailable:
        """The error for brokers that cannot be reached."""
        return DependencyUnavailable(
            DEPENDENCY, f"cannot reach brokers at {self.bootstrap_servers}: {exc!r}"
        )

    async def start(self, *clients: _Client) -> None:
        """Start ``clients`` in order, each within the request timeout; on failure stop them all.

        Raises:
            DependencyUnavailable: the brokers cannot be reached.
        """
        try:
            for client in clients:
                await asyncio.wait_for(client.start(), self.timeout_s)
        except KAFKA_ERRORS as exc:
            await self.stop(*clients)
            raise self.unavailable(exc) from exc

    async def stop(self, *clients: AIOKafkaConsumer | AIOKafkaProducer | None) -> None:
        """Stop ``clients`` (None skipped), each within the request timeout: a dead broker must
        not hang shutdown. A producer that cannot flush in time is abandoned: no task or socket
        of it outlives the call."""
        for client in clients:
            if client is None:
                continue
            try:
                await asyncio.wait_for(client.stop(), self.timeout_s)
            except KAFKA_ERRORS:
                if isinstance(client, AIOKafkaProducer):
                    await _abandon(client)


def _ignore_outcome(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()


async def _abandon(producer: AIOKafkaProducer) -> None:
    """End a producer whose stop could not flush in time, leaving no task or socket behind.

    aiokafka has no public abort: its stop waits for the unsent batches and, once cancelled,
    leaves the sender task running and that wait pending forever (each a leak per recreated
    producer while the brokers are down). So cancel the sender, fail what it never sent (the
    outbox keeps those records unpublished), then drop the connections.
    """
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        with contextlib.suppress(*KAFKA_ERRORS):
            # Cancelling it waits for its in-flight requests; bounded like the rest.
            await asyncio.wait_for(sender.close(), 5)
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is not None:
        batches = [*accumulator._batches.values(), [*accumulator._pending_batches]]
        accumulator.fail_all(KafkaTimeoutError("the producer stopped before the brokers answered"))
        for batch in (b for group in batches for b in group):  # nobody waits for these now
            for outcome in (batch.future, batch._drain_waiter):
                outcome.add_done_callback(_ignore_outcome)
    with contextlib.suppress(*KAFKA_ERRORS):
        await asyncio.wait_for(producer.client.close(), 5)


async def ensure_topics(
    bootstrap_servers: str, topics: Sequence[TopicSpec], *, timeout_s: float = 15.0
) -> None:
    """Create the topics that do not exist yet.

    Raises:
        DependencyUnavailable: the brokers cannot be reached within ``timeout_s``.
    """
    connection = KafkaConnection(bootstrap_servers, request_timeout_ms=int(timeout_s * 1000))
    admin = connection.admin()
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
    except KAFKA_ERRORS as exc:
        raise connection.unavailable(exc) from exc
    finally:
        await admin.close()


class KafkaPublisher:
    """Publishes outbox records to one topic, keyed by session id (so per-session order holds)."""

    def __init__(
        self, bootstrap_servers: str, topic: str, *, client_id: str, request_timeout_ms: int
    ) -> None:
        self._connection = KafkaConnection(bootstrap_servers, client_id, request_timeout_ms)
        self._topic = topic
        self._producer: AIOKafkaProducer | None = None

    @property
    def topic(self) -> str:
        return self._topic

    async def start(self) -> None:
        """Connect the producer.

        Raises:
            DependencyUnavailable: the brokers cannot be reached.
        """
        producer = self._connection.producer(linger_ms=2, max_batch_size=256 * 1024)
        await self._connection.start(producer)
        self._producer = producer

    async def stop(self) -> None:
        """Flush and close; bounded, because a dead broker must not hang shutdown."""
        producer, self._producer = self._producer, None
        # Nothing to save on failure: unacknowledged records stay unpublished in the outbox.
        await self._connection.stop(producer)

    async def publish(self, records: Sequence[OutboxRecord]) -> list[bool]:
        """Send records in order; returns, per record, whether the broker acknowledged it.

        Bounded: aiokafka keeps retrying a batch while a known broker is unreachable, so records
        not acknowledged within the request timeout count as not sent (the relay then recreates
        the producer, which abandons them, and sends them again later).

        Raises:
            InfrastructureError: the producer is not started or could not enqueue at all.
        """
        if self._producer is None:
            raise InfrastructureError(DEPENDENCY, "publisher is not started")
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
                raise InfrastructureError(DEPENDENCY, f"send failed: {exc!r}") from exc
        if futures:
            await asyncio.wait(futures, timeout=self._connection.timeout_s)
        sent = [f.done() and not f.cancelled() and f.exception() is None for f in futures]
        for future in futures:
            if not future.done():  # given up on: it fails when the producer is recreated
                future.add_done_callback(_ignore_outcome)
        return sent + [False] * (len(records) - len(sent))
