"""The event log: typed events leave the state store's outbox for Kafka through the relay."""

from agentcluster.eventlog._kafka import KafkaPublisher, ensure_topics
from agentcluster.eventlog._relay import (
    EventPublisher,
    OutboxRelay,
    OutboxSource,
    acknowledged_prefix,
)
from agentcluster.eventlog._topics import Topics, TopicSpec, load_topics

__all__ = [
    "EventPublisher",
    "KafkaPublisher",
    "OutboxRelay",
    "OutboxSource",
    "TopicSpec",
    "Topics",
    "acknowledged_prefix",
    "ensure_topics",
    "load_topics",
]
