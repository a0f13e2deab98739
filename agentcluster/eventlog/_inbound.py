"""Kafka inbound: user messages on a topic become committed messages in the state store.

Offsets follow the durability contract: a record's offset is committed only after ``submit``
returned, i.e. after the store committed its message. Per batch, in partition order:

* a record that parses and is accepted counts as *submitted*;
* a bad record (not JSON, wrong schema, unknown tenant or session, closed session: any
  :class:`~agentcluster.errors.UserError`) cannot succeed later, so it is copied to the dead-letter
  topic ``<topic>.dlq`` with the error in its headers, counted as *rejected* and committed past;
  so is a record the HTTP API would refuse (:class:`CheckedSubmit`: the policy denies
  ``session.message`` for its tenant, ``forbidden``; the tenant is over its requests per minute,
  ``rate-limited`` with a ``dlq.error.retry_after`` header): nothing denied runs, and the record
  stays on the DLQ for its producer to send again;
* any other failure (database or broker down, a session host restarting, a bug) commits only the
  records handled before it, rewinds each partition to its first unhandled record and retries
  after a capped exponential backoff. Nothing acknowledged is lost; a record may be submitted twice.

Submitting twice starts one turn: every submission carries an idempotency key, the record's own or
one derived from its position (``kafka:<topic>:<partition>:<offset>``), so a redelivered record
gets the first submission back. A derived key is only as unique as the position: recreating the
topic restarts its offsets, so producers that may do that should set ``idempotency_key``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentcluster.domain import MultitaskStrategy, Submission
from agentcluster.errors import (
    AgentClusterError,
    DependencyUnavailable,
    Forbidden,
    InfrastructureError,
    RateLimited,
    UserError,
    ValidationFailed,
)
from agentcluster.eventlog._kafka import DEPENDENCY, KafkaConnection, ensure_topics, kafka_errors
from agentcluster.eventlog._topics import TopicSpec

if TYPE_CHECKING:
    # Types only: the checks are handed in, so the event log does not import what they need.
    from agentcluster.limits import TenantLimitsService
    from agentcluster.policy import RegoPolicyEngine

__all__ = [
    "DEFAULT_GROUP_ID",
    "MAX_CONTENT_CHARS",
    "CheckedSubmit",
    "InboundConsumer",
    "InboundMessage",
    "InboundStats",
    "Submit",
    "derived_idempotency_key",
    "parse_record",
]

# The logger keeps the name it had before the module moved under eventlog/ (log filters use it).
log = logging.getLogger("agentcluster.inbound")

DEFAULT_GROUP_ID = "agentcluster-inbound"
MAX_CONTENT_CHARS = 32_000
MAX_KEY_CHARS = 200  # the store's idempotency key column
_MAX_ERROR_CHARS = 1_000

Record: TypeAlias = ConsumerRecord[bytes, bytes]


class InboundMessage(BaseModel):
    """One user message on the inbound topic (the record's value, as JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant_id: str = Field(min_length=1, max_length=64)
    session_id: str = Field(min_length=1, max_length=64)
    content: str = Field(min_length=1, max_length=MAX_CONTENT_CHARS)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=MAX_KEY_CHARS)
    multitask_strategy: MultitaskStrategy = "enqueue"
    """As on ``POST /messages``; a ``reject`` refused while a turn is open is dead-lettered with
    ``turn-in-progress``."""


class InboundStats(BaseModel):
    """Counters since the consumer was built (a record read again after a retry counts again)."""

    model_config = ConfigDict(frozen=True)

    received: int = 0
    submitted: int = 0
    duplicates: int = 0
    """Submissions the store answered with an earlier one (same idempotency key)."""
    rejected: int = 0
    retries: int = 0
    """Rounds that failed and were retried after a backoff."""


class Submit(Protocol):
    """Port: commits a user message (``Runtime.send_message``)."""

    async def __call__(
        self,
        tenant_id: str,
        session_id: str,
        content: str,
        *,
        idempotency_key: str | None = None,
        strategy: MultitaskStrategy = "enqueue",
    ) -> Submission: ...


class CheckedSubmit:
    """``submit`` behind the checks of the HTTP API, in its order: the tenant's request rate,
    then the policy's decision on ``session.message`` (asked for every record).

    Args:
        submit: what commits the message (``Runtime.send_message``).
        policy: the policy engine (None: no policy configured, as in the gateway).
        limits: the tenants' limits (None: unlimited, as in the gateway).
    """

    def __init__(
        self,
        submit: Submit,
        *,
        policy: RegoPolicyEngine | None,
        limits: TenantLimitsService | None,
    ) -> None:
        self._submit = submit
        self._policy = policy
        self._limits = limits

    async def __call__(
        self,
        tenant_id: str,
        session_id: str,
        content: str,
        *,
        idempotency_key: str | None = None,
        strategy: MultitaskStrategy = "enqueue",
    ) -> Submission:
        """Check, then submit.

        Raises:
            RateLimited: the tenant is over its requests per minute (dead-lettered).
            Forbidden: the policy denies the tenant ``session.message`` (dead-lettered).
            DependencyUnavailable: the policy engine or the rate counters cannot answer
                (retried: never submitted unchecked).
        """
        if self._limits is not None:
            await self._limits.admit(tenant_id)
        if self._policy is not None:
            decision = await self._policy.decide_action(tenant_id, "session.message")
            if decision.failed:
                raise DependencyUnavailable("policy", decision.reason)
            if not decision.allowed:
                raise Forbidden(f"denied by policy: {decision.reason}")
        return await self._submit(
            tenant_id, session_id, content, idempotency_key=idempotency_key, strategy=strategy
        )


def derived_idempotency_key(topic: str, partition: int, offset: int) -> str:
    """The idempotency key of a record that carries none: its position, which redelivery keeps."""
    key = f"kafka:{topic}:{partition}:{offset}"
    if len(key) <= MAX_KEY_CHARS:
        return key
    return f"kafka:sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def parse_record(value: bytes | None) -> InboundMessage:
    """Parse a record's value.

    Raises:
        ValidationFailed: not JSON or not an :class:`InboundMessage`; the message names the fields
            and never quotes the input (it may hold the user's content).
    """
    if value is None:
        raise ValidationFailed("the record has no value")
    try:
        return InboundMessage.model_validate_json(value)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(part) for part in error['loc']) or 'value'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        raise ValidationFailed("; ".join(problems)[:_MAX_ERROR_CHARS]) from None


def _describe(exc: BaseException) -> str:
    """One line for the logs. Foreign exceptions give only their type: their text may quote the
    user's content (SQLAlchemy errors carry the statement's parameters, for one)."""
    if isinstance(exc, AgentClusterError):
        return f"{type(exc).__name__}: {exc.message}"[:_MAX_ERROR_CHARS]
    return type(exc).__name__


class _DeadLetters:
    """Copies rejected records, unchanged, to the dead-letter topic; the error goes in headers."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, timeout_s: float) -> None:
        self._producer = producer
        self.topic = topic
        self._timeout_s = timeout_s

    async def publish(self, record: Record, error: UserError) -> None:
        """Raises InfrastructureError when the broker does not acknowledge in time."""
        headers = [
            *record.headers,
            ("dlq.error.type", error.problem_type.encode()),
            ("dlq.error.class", type(error).__name__.encode()),
            ("dlq.error.message", error.message[:_MAX_ERROR_CHARS].encode()),
            ("dlq.source.topic", record.topic.encode()),
            ("dlq.source.partition", str(record.partition).encode()),
            ("dlq.source.offset", str(record.offset).encode()),
        ]
        if isinstance(error, RateLimited) and error.retry_after is not None:
            headers.append(("dlq.error.retry_after", str(error.retry_after).encode()))
        send = self._producer.send_and_wait(
            self.topic, value=record.value, key=record.key, headers=headers
        )
        # On failure the record is not committed past, so it comes back; the DLQ may get it twice.
        async with kafka_errors("dead-letter send failed"):
            await asyncio.wait_for(send, self._timeout_s)


class InboundConsumer:
    """Consumes the inbound topic into ``submit``, one partition's records in order.

    Run one or more per topic with the same group id; Kafka spreads the partitions over them.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        submit: Submit,
        *,
        group_id: str = DEFAULT_GROUP_ID,
        client_id: str = "agentcluster-inbound",
        request_timeout_ms: int = 15_000,
        max_batch: int = 100,
        poll_timeout_ms: int = 500,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
    ) -> None:
        self.topic = topic
        self.dlq_topic = f"{topic}.dlq"
        self.group_id = group_id
        self._connection = KafkaConnection(bootstrap_servers, client_id, request_timeout_ms)
        self._submit = submit
        self._max_batch = max_batch
        self._poll_timeout_ms = poll_timeout_ms
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = max(backoff_initial_s, backoff_max_s)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._dead_letters: _DeadLetters | None = None
        self.received = 0
        self.submitted = 0
        self.duplicates = 0
        self.rejected = 0
        self.retries = 0
        self.last_error: str | None = None

    @property
    def _timeout_s(self) -> float:
        return self._connection.timeout_s

    def stats(self) -> InboundStats:
        return InboundStats(
            received=self.received,
            submitted=self.submitted,
            duplicates=self.duplicates,
            rejected=self.rejected,
            retries=self.retries,
        )

    async def start(self) -> None:
        """Create the dead-letter topic if missing, join the group and connect the DLQ producer.

        Raises:
            DependencyUnavailable: the brokers cannot be reached.
        """
        connection = self._connection
        await ensure_topics(
            connection.bootstrap_servers,
            [TopicSpec(name=self.dlq_topic)],
            timeout_s=self._timeout_s,
        )
        consumer = connection.consumer(
            self.topic,
            group_id=self.group_id,
            auto_offset_reset="earliest",
            max_poll_records=self._max_batch,
        )
        producer = connection.producer(client_id=f"{connection.client_id}-dlq")
        await connection.start(consumer, producer)
        self._consumer, self._producer = consumer, producer
        self._dead_letters = _DeadLetters(producer, self.dlq_topic, self._timeout_s)

    async def stop(self) -> None:
        """Leave the group and close the clients (bounded: a dead broker must not hang shutdown).

        Offsets not committed yet are read again by whoever gets the partition next.
        """
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = self._dead_letters = None
        await self._connection.stop(consumer, producer)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, riding out failures with capped exponential backoff.

        The consumer must be started; ``stop()`` it afterwards.
        """
        backoff = self._backoff_initial_s
        while not stop.is_set():
            try:
                await self.run_once()
                backoff = self._backoff_initial_s
            # This loop is the only way inbound records reach the store: whatever fails in one
            # round (database or broker down, a host restarting, a bug on one record) must not end
            # it. A failed round committed only what the store had committed and rewound the
            # rest, so retrying loses nothing and, thanks to idempotency keys, doubles nothing.
            except Exception as exc:
                self.retries += 1
                self.last_error = _describe(exc)
                log.warning(
                    "inbound: round failed, retrying in %.1fs: %s", backoff, self.last_error
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, self._backoff_max_s)

    async def run_once(self) -> int:
        """Fetch one batch, submit its records and commit their offsets; returns how many.

        Raises:
            InfrastructureError: a dependency failed; the batch was committed up to the failed
                record and every partition rewound to its first unhandled record.
        """
        consumer = self._require_consumer()
        async with kafka_errors("fetch failed"):
            batch = await consumer.getmany(
                timeout_ms=self._poll_timeout_ms, max_records=self._max_batch
            )
        progress: dict[TopicPartition, int] = {}  # partition -> offset of its next record
        try:
            for partition, records in batch.items():
                for record in records:
                    await self._handle(record)
                    progress[partition] = record.offset + 1
        except BaseException:
            self._rewind(consumer, batch, progress)
            raise
        finally:
            await self._commit(consumer, progress)
        return sum(len(records) for records in batch.values())

    def _require_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise InfrastructureError(DEPENDENCY, "inbound consumer is not started")
        return self._consumer

    async def _handle(self, record: Record) -> None:
        """Submit one record, or dead-letter it when it can never succeed."""
        self.received += 1
        try:
            message = parse_record(record.value)
            submission = await self._submit(
                message.tenant_id,
                message.session_id,
                message.content,
                idempotency_key=message.idempotency_key
                or derived_idempotency_key(record.topic, record.partition, record.offset),
                strategy=message.multitask_strategy,
            )
        except UserError as exc:
            await self._reject(record, exc)
            return
        self.submitted += 1
        if not submission.created:
            self.duplicates += 1

    async def _reject(self, record: Record, error: UserError) -> None:
        if self._dead_letters is None:
            raise InfrastructureError(DEPENDENCY, "inbound consumer is not started")
        await self._dead_letters.publish(record, error)
        self.rejected += 1
        log.warning(
            "inbound: rejected %s[%d]@%d to %s: %s",
            record.topic,
            record.partition,
            record.offset,
            self._dead_letters.topic,
            _describe(error),
        )

    def _rewind(
        self,
        consumer: AIOKafkaConsumer,
        batch: dict[TopicPartition, list[Record]],
        progress: dict[TopicPartition, int],
    ) -> None:
        """Seek each partition of the batch back to its first unhandled record."""
        assigned = consumer.assignment()
        for partition, records in batch.items():
            next_offset = progress.get(partition, records[0].offset)
            if partition in assigned and next_offset <= records[-1].offset:
                consumer.seek(partition, next_offset)

    async def _commit(
        self, consumer: AIOKafkaConsumer, progress: dict[TopicPartition, int]
    ) -> None:
        """Commit what the store has committed.

        Raises:
            InfrastructureError: the broker did not take the commit (the records come back later
                and their idempotency keys make them no-ops).
        """
        offsets: dict[TopicPartition, Any] = {
            partition: offset
            for partition, offset in progress.items()
            if partition in consumer.assignment()
        }
        if not offsets:
            return
        async with kafka_errors("offset commit failed"):
            try:
                await asyncio.wait_for(consumer.commit(offsets), self._timeout_s)
            except (CommitFailedError, IllegalStateError) as exc:
                # A rebalance moved the partition during the batch; its new owner reads these
                # records again and gets their first submissions back.
                log.info("inbound: commit skipped after a rebalance: %s", type(exc).__name__)
