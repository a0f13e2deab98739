"""The durable state store port and its SQLAlchemy adapter (PostgreSQL or embedded SQLite)."""

from agentcluster.store._migrate import current_revision, head_revision, upgrade
from agentcluster.store._sql import SessionWriter, SqlStateStore, hash_api_key, open_store

StateStore = SqlStateStore

__all__ = [
    "SessionWriter",
    "SqlStateStore",
    "StateStore",
    "current_revision",
    "hash_api_key",
    "head_revision",
    "open_store",
    "upgrade",
]
