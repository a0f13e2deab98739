"""The durable state store: small role ports and their SQLAlchemy adapter (PostgreSQL or
embedded SQLite).

Callers type against the role they use (:class:`SessionStore`, :class:`ActivationStore`, ...);
:class:`SqlStateStore` implements them all and :func:`open_store` opens it. :class:`StateStore`
is the union of the roles.
"""

from agentcluster.store._migrate import current_revision, head_revision, upgrade
from agentcluster.store._ports import (
    ActivationStore,
    ApprovalStore,
    AttachmentStore,
    HistoryReader,
    JournalWriter,
    OutboxBacklog,
    OutboxSource,
    ScheduleStore,
    SessionStore,
    SharedDatabase,
    StateStore,
    StoreHealth,
    TenantStore,
    WebhookStore,
)
from agentcluster.store._sql import SqlStateStore, open_store
from agentcluster.store._sql_tenants import hash_api_key
from agentcluster.store._sql_writer import SessionWriter

__all__ = [
    "ActivationStore",
    "ApprovalStore",
    "AttachmentStore",
    "HistoryReader",
    "JournalWriter",
    "OutboxBacklog",
    "OutboxSource",
    "ScheduleStore",
    "SessionStore",
    "SessionWriter",
    "SharedDatabase",
    "SqlStateStore",
    "StateStore",
    "StoreHealth",
    "TenantStore",
    "WebhookStore",
    "current_revision",
    "hash_api_key",
    "head_revision",
    "open_store",
    "upgrade",
]
