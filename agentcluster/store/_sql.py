"""The state store's SQLAlchemy adapter: one class implementing every role of
:mod:`agentcluster.store._ports`, composed of one mixin per role over :class:`SqlStoreBase`.

==================  ======================  =====================================================
module              mixin                   role
==================  ======================  =====================================================
``_sql_base``       ``SqlStoreBase``        engine, ``transaction``, error mapping, ``ping``
``_sql_writer``     ``SqlWriting``          ``writer``: the fenced unit of work on a session
``_sql_tenants``    ``SqlTenants``          TenantStore
``_sql_sessions``   ``SqlSessions``         SessionStore (with HistoryReader, AttachmentStore)
``_sql_activation`` ``SqlActivation``       ActivationStore
``_sql_outbox``     ``SqlOutbox``           OutboxSource, OutboxBacklog
``_sql_approvals``  ``SqlApprovals``        ApprovalStore (and a resuming host's decisions)
==================  ======================  =====================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentcluster.config import normalize_dsn
from agentcluster.errors import ConfigError
from agentcluster.store import _migrate
from agentcluster.store._sql_activation import SqlActivation
from agentcluster.store._sql_approvals import SqlApprovals
from agentcluster.store._sql_base import describe_dsn, make_engine
from agentcluster.store._sql_outbox import SqlOutbox
from agentcluster.store._sql_schedules import SqlSchedules
from agentcluster.store._sql_sessions import SqlSessions
from agentcluster.store._sql_tenants import SqlTenants
from agentcluster.store._sql_webhooks import SqlWebhooks

if TYPE_CHECKING:
    from agentcluster.store._ports import StateStore

__all__ = ["SqlStateStore", "open_store"]


class SqlStateStore(
    SqlTenants, SqlSessions, SqlActivation, SqlApprovals, SqlOutbox, SqlSchedules, SqlWebhooks
):
    """The durable state store on PostgreSQL or embedded SQLite: every role of
    :mod:`agentcluster.store._ports` (see module docstring)."""


async def open_store(
    dsn: str,
    *,
    pool_size: int = 10,
    max_overflow: int | None = None,
    connect_timeout_s: float = 5.0,
    command_timeout_s: float = 30.0,
    migrate: bool = True,
    echo: bool = False,
) -> SqlStateStore:
    """Connect to the database (failing fast with the dependency named) and run migrations.

    ``max_overflow`` (default: ``pool_size``) more connections may open under a burst.
    ``command_timeout_s`` bounds each PostgreSQL statement and the wait for a pooled connection.

    Raises:
        DependencyUnavailable: the database cannot be reached.
    """
    try:
        dsn = normalize_dsn(dsn)
    except ValueError as exc:
        raise ConfigError(f"SA01_DB_DSN: {exc}") from None
    overflow = pool_size if max_overflow is None else max_overflow
    engine = make_engine(dsn, (pool_size, overflow), connect_timeout_s, command_timeout_s, echo)
    store = SqlStateStore(engine, description=describe_dsn(dsn))
    try:
        await store.ping()
        if migrate:
            await _migrate.upgrade(engine)
    except BaseException:
        await engine.dispose()
        raise
    return store


if TYPE_CHECKING:
    # mypy proves the adapter satisfies every role (StateStore is their union).
    def _implements_every_role(store: SqlStateStore) -> StateStore:
        return store
