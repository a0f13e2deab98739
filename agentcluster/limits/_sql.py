"""Limits in the state store's ``settings`` table: every tenant's overrides (in every mode) and,
in the embedded default, the daily usage counters.

Why the state store for the embedded counters: the gateway replicas and the session hosts are
separate Ray processes, so counters in one process's memory would let each host spend a tenant's
whole budget again. The SQLite file (or PostgreSQL) is what every process of the machine already
shares, and its transactions make the check and the reservation one step.

Rows (``tenant_id`` is the tenant's):

* ``limits.overrides``: the tenant's :class:`~agentcluster.limits.LimitOverrides` (JSON);
* ``limits.usage/<YYYY-MM-DD>``: ``{"tokens": ..., "cost_nano_usd": ...}`` for one UTC day; the
  first write of a day deletes the tenant's rows older than yesterday.

Each counter write starts with an ``UPDATE`` of the row, which takes the row's lock (PostgreSQL)
or the database's write lock (SQLite) before anything is read, so concurrent writers queue instead
of losing increments. A missing row is inserted; two processes inserting the same day collide on
the primary key and the loser tries again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from agentcluster.errors import InfrastructureError
from agentcluster.limits._math import budget_verdict
from agentcluster.limits._models import DailyUsage, LimitOverrides, TenantLimits
from agentcluster.limits._ports import Admission
from agentcluster.store import SharedDatabase, TenantStore
from agentcluster.store.models import SettingRow, utcnow

__all__ = ["LimitsDatabase", "SqlOverridesStore", "SqlUsageCounter"]

OVERRIDES_KEY = "limits.overrides"
USAGE_PREFIX = "limits.usage/"
_INSERT_ATTEMPTS = 3
T = TypeVar("T")


class LimitsDatabase(SharedDatabase, TenantStore, Protocol):
    """What the limits keep in the state store: rows of its ``settings`` table, and the tenant
    an override is written for (which must exist)."""


def usage_key(day: str) -> str:
    return f"{USAGE_PREFIX}{day}"


class _SettingsRows:
    """Transactions on the ``settings`` table whose driver errors become ours."""

    def __init__(self, store: SharedDatabase) -> None:
        self._store = store
        self._dependency = store.dependency
        self.description = f"settings table of {store.description}"

    async def _locked(self, connection: AsyncConnection, tenant_id: str, key: str) -> Any:
        """Lock the row (see the module docstring) and return its value, or None when absent."""
        return await connection.scalar(
            update(SettingRow)
            .where(SettingRow.tenant_id == tenant_id, SettingRow.key == key)
            .values(updated_at=utcnow())
            .returning(SettingRow.value)
        )

    async def _store_value(
        self, connection: AsyncConnection, tenant_id: str, key: str, value: dict[str, Any]
    ) -> None:
        await connection.execute(
            update(SettingRow)
            .where(SettingRow.tenant_id == tenant_id, SettingRow.key == key)
            .values(value=value, updated_at=utcnow())
        )

    async def _insert(
        self, connection: AsyncConnection, tenant_id: str, key: str, value: dict[str, Any]
    ) -> None:
        await connection.execute(
            insert(SettingRow).values(
                tenant_id=tenant_id, key=key, value=value, updated_at=utcnow()
            )
        )

    async def _retrying_inserts(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work`` in a transaction, again when it lost a race to insert the same row."""
        for attempt in range(_INSERT_ATTEMPTS):
            try:
                async with self._store.transaction() as connection:
                    return await work(connection)
            except IntegrityError as exc:
                if attempt == _INSERT_ATTEMPTS - 1:
                    raise InfrastructureError(
                        self._dependency, f"{self.description}: {exc.orig}"
                    ) from exc
        raise AssertionError("unreachable")  # the loop returns or raises


def _usage_of(value: dict[str, Any] | None) -> DailyUsage:
    value = value or {}
    return DailyUsage(
        tokens=int(value.get("tokens", 0)), cost_nano_usd=int(value.get("cost_nano_usd", 0))
    )


def _value_of(usage: DailyUsage) -> dict[str, Any]:
    return {"tokens": usage.tokens, "cost_nano_usd": usage.cost_nano_usd}


class SqlUsageCounter(_SettingsRows):
    """The embedded :class:`~agentcluster.limits.UsageCounter` (see the module docstring)."""

    async def _day_row(self, connection: AsyncConnection, tenant_id: str, day: str) -> DailyUsage:
        """The day's usage with its row locked; creates the row (and drops old days) if new."""
        value = await self._locked(connection, tenant_id, usage_key(day))
        if value is not None:
            return _usage_of(value)
        await self._insert(connection, tenant_id, usage_key(day), _value_of(DailyUsage()))
        yesterday = (date.fromisoformat(day) - timedelta(days=1)).isoformat()
        await connection.execute(
            delete(SettingRow).where(
                SettingRow.tenant_id == tenant_id,
                SettingRow.key.like(f"{USAGE_PREFIX}%"),
                SettingRow.key < usage_key(yesterday),
            )
        )
        return DailyUsage()

    async def reserve(
        self, tenant_id: str, day: str, tokens: int, limits: TenantLimits
    ) -> Admission:
        async def work(connection: AsyncConnection) -> Admission:
            used = await self._day_row(connection, tenant_id, day)
            refused = budget_verdict(limits, used, tokens)
            if refused is None and tokens:
                after = DailyUsage(used.tokens + tokens, used.cost_nano_usd)
                await self._store_value(connection, tenant_id, usage_key(day), _value_of(after))
            return Admission(refused=refused, used=used)

        return await self._retrying_inserts(work)

    async def add(self, tenant_id: str, day: str, tokens: int, cost_nano_usd: int) -> None:
        async def work(connection: AsyncConnection) -> None:
            used = await self._day_row(connection, tenant_id, day)
            after = DailyUsage(used.tokens + tokens, used.cost_nano_usd + cost_nano_usd)
            await self._store_value(connection, tenant_id, usage_key(day), _value_of(after))

        await self._retrying_inserts(work)

    async def read(self, tenant_id: str, day: str) -> DailyUsage:
        query = select(SettingRow.value).where(
            SettingRow.tenant_id == tenant_id, SettingRow.key == usage_key(day)
        )
        async with self._store.transaction() as connection:
            return _usage_of(await connection.scalar(query))

    async def aclose(self) -> None:
        """Nothing to release: the state store belongs to the process."""


class SqlOverridesStore(_SettingsRows):
    """Every tenant's :class:`~agentcluster.limits.LimitOverrides`, in every mode: they are
    configuration (durable, like the tenant), not counters."""

    def __init__(self, store: LimitsDatabase) -> None:
        super().__init__(store)
        self._tenants = store

    async def read(self, tenant_id: str) -> LimitOverrides:
        query = select(SettingRow.value).where(
            SettingRow.tenant_id == tenant_id, SettingRow.key == OVERRIDES_KEY
        )
        async with self._store.transaction() as connection:
            value = await connection.scalar(query) or {}
        # Fields this version does not know (written by a newer one) are left out, not an error.
        known = {name: value[name] for name in LimitOverrides.model_fields if name in value}
        return LimitOverrides.model_validate(known)

    async def write(self, tenant_id: str, overrides: LimitOverrides) -> None:
        await self._tenants.get_tenant(tenant_id)  # NotFoundError for an unknown tenant
        value = overrides.model_dump(exclude_none=True)

        async def work(connection: AsyncConnection) -> None:
            if await self._locked(connection, tenant_id, OVERRIDES_KEY) is None:
                await self._insert(connection, tenant_id, OVERRIDES_KEY, value)
            else:
                await self._store_value(connection, tenant_id, OVERRIDES_KEY, value)

        await self._retrying_inserts(work)
