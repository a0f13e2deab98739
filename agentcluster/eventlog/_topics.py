"""Kafka topic names and partition counts, read from ``configs/topics.yaml``."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentcluster.errors import ConfigError

__all__ = ["TopicSpec", "Topics", "load_topics"]


class TopicSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(default=3, ge=1, le=1000)
    replication_factor: int = Field(default=1, ge=1, le=10)


class Topics(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    events: TopicSpec = TopicSpec(name="agent.events", partitions=6)
    inbound: TopicSpec = TopicSpec(name="agent.inbound", partitions=3)


def load_topics(path: Path) -> Topics:
    """Read the topics file; a missing file means the defaults.

    Raises:
        ConfigError: the file is not valid (names SA01_KAFKA_TOPICS_FILE and the field).
    """
    if not path.exists():
        return Topics()
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return Topics.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"SA01_KAFKA_TOPICS_FILE: {path}: {first}") from None
