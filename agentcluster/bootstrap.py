"""Builds the adapters for each port from the settings: the one place that chooses embedded vs
production implementations (SQLite or PostgreSQL, relay on or off, ...)."""

from __future__ import annotations

from agentcluster.config import Settings
from agentcluster.eventlog import KafkaPublisher, OutboxRelay, ensure_topics, load_topics
from agentcluster.store import OutboxSource, SqlStateStore, open_store

__all__ = ["build_relay", "open_state_store"]


async def open_state_store(settings: Settings, *, migrate: bool = True) -> SqlStateStore:
    """The state store for these settings (embedded SQLite when SA01_DB_DSN is unset)."""
    return await open_store(
        settings.db_dsn,
        pool_size=settings.db.pool_size,
        max_overflow=settings.db.max_overflow,
        connect_timeout_s=settings.db.connect_timeout_s,
        command_timeout_s=settings.db.command_timeout_s,
        migrate=migrate,
        echo=settings.db.echo,
    )


async def build_relay(settings: Settings, store: OutboxSource) -> OutboxRelay | None:
    """The outbox relay to Kafka, or None when SA01_KAFKA_BOOTSTRAP_SERVERS is unset.

    Creates missing topics first.

    Raises:
        DependencyUnavailable: Kafka is configured but cannot be reached.
    """
    servers = settings.kafka.bootstrap_servers
    if servers is None:
        return None
    topics = load_topics(settings.kafka.topics_file)
    await ensure_topics(
        servers, [topics.events, topics.inbound], timeout_s=settings.kafka.request_timeout_ms / 1000
    )
    publisher = KafkaPublisher(
        servers,
        topics.events.name,
        client_id=settings.kafka.client_id,
        request_timeout_ms=settings.kafka.request_timeout_ms,
    )
    return OutboxRelay(store, publisher, settings.relay)
