"""The event log and everything else that talks to Kafka: typed events leave the state store's
outbox for Kafka through the relay, and user messages on the inbound topic become committed
messages through the inbound consumer. ``_kafka`` is the one module that builds aiokafka clients
and converts their errors."""

from agentcluster.eventlog._inbound import (
    DEFAULT_GROUP_ID,
    MAX_CONTENT_CHARS,
    CheckedSubmit,
    InboundConsumer,
    InboundMessage,
    InboundStats,
    Submit,
    derived_idempotency_key,
    parse_record,
)
from agentcluster.eventlog._kafka import (
    KAFKA_ERRORS,
    KafkaConnection,
    KafkaPublisher,
    ensure_topics,
    kafka_errors,
)
from agentcluster.eventlog._relay import (
    EventPublisher,
    OutboxRelay,
    OutboxSource,
    acknowledged_prefix,
)
from agentcluster.eventlog._topics import Topics, TopicSpec, load_topics

__all__ = [
    "DEFAULT_GROUP_ID",
    "KAFKA_ERRORS",
    "MAX_CONTENT_CHARS",
    "CheckedSubmit",
    "EventPublisher",
    "InboundConsumer",
    "InboundMessage",
    "InboundStats",
    "KafkaConnection",
    "KafkaPublisher",
    "OutboxRelay",
    "OutboxSource",
    "Submit",
    "TopicSpec",
    "Topics",
    "acknowledged_prefix",
    "derived_idempotency_key",
    "ensure_topics",
    "kafka_errors",
    "load_topics",
    "parse_record",
]
