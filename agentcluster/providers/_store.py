"""Where provider settings are kept: the :class:`SettingsStore` port and its two adapters.

The settings are one JSON document with a version. Writes are compare-and-set on the version
(a writer that read version N writes N+1 or gets :class:`~agentcluster.errors.ConflictError`), so a
PUT or a key rotation is all-or-nothing and never overwrites a change it did not see. Reading the
version alone is cheap: that is what every process polls to notice changes.

* :class:`RedisSettingsStore` (production, ``SA01_REDIS_URL``): one hash per document, fields
  ``version`` and ``document``; the write is ``WATCH``/``MULTI`` on it.
* :class:`SqlSettingsStore` (embedded default): the state store's ``settings`` table, which every
  process of the machine opens anyway: the gateway replicas and the session hosts are different
  Ray processes, so an in-process dict would never show a change to a host. Each version is a row
  keyed ``llm.providers/<version, zero-padded>``; a write inserts the next row (the primary key
  makes two writers of the same version collide) and deletes the older ones in the same
  transaction, so no stale copy of a secret stays behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from redis.exceptions import WatchError
from sqlalchemy import and_, delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from agentcluster.errors import ConflictError
from agentcluster.redisconn import open_redis, redis_errors
from agentcluster.store import SharedDatabase
from agentcluster.store.models import SettingRow, utcnow

__all__ = ["RedisSettingsStore", "SettingsStore", "SqlSettingsStore", "StoredDocument"]

DOCUMENT = "llm.providers"
"""The name of the provider settings document (a Redis key suffix, a ``settings`` row prefix)."""


@dataclass(frozen=True)
class StoredDocument:
    """A document as stored: its version (0: never written), data and time of writing."""

    version: int
    data: dict[str, Any]
    updated_at: datetime | None = None


class SettingsStore(Protocol):
    """Port: a versioned JSON document, written by compare-and-set."""

    description: str

    async def version(self) -> int:
        """The current version (0 when nothing was ever written); cheap."""
        ...

    async def read(self) -> StoredDocument:
        """The current document (version 0 and empty data when nothing was written)."""
        ...

    async def write(self, data: dict[str, Any], expected_version: int) -> int:
        """Store ``data`` as version ``expected_version + 1``.

        Raises:
            ConflictError: the stored version is no longer ``expected_version``.
            InfrastructureError: the backend failed.
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def _conflict(expected: int) -> ConflictError:
    return ConflictError(
        f"the provider settings changed since version {expected}; read them again and retry"
    )


class RedisSettingsStore:
    """The production adapter (see the module docstring).

    Args:
        url: ``redis://host:port/db``.
        prefix: the key prefix (the runtime namespace), so clusters sharing a Redis stay apart.
        timeout_s: connect and command timeout.
    """

    def __init__(self, url: str, *, prefix: str = "agentcluster", timeout_s: float = 5.0) -> None:
        self._client = open_redis(url, timeout_s=timeout_s)
        self.key = f"{prefix}:settings:{DOCUMENT}"
        self.description = f"redis key {self.key}"

    async def version(self) -> int:
        async with redis_errors(self.description):
            raw = await self._client.hget(self.key, "version")
        return int(raw or 0)

    async def read(self) -> StoredDocument:
        async with redis_errors(self.description):
            version, document, updated = await self._client.hmget(
                self.key, ["version", "document", "updated_at"]
            )
        if version is None:
            return StoredDocument(version=0, data={})
        at = datetime.fromisoformat(str(updated)) if updated else None
        return StoredDocument(
            version=int(version), data=json.loads(document or "{}"), updated_at=at
        )

    async def write(self, data: dict[str, Any], expected_version: int) -> int:
        document = json.dumps(data, separators=(",", ":"))
        updated_at = datetime.now(UTC).isoformat()
        try:
            async with (
                redis_errors(self.description),
                self._client.pipeline(transaction=True) as pipe,
            ):
                await pipe.watch(self.key)
                if int(await pipe.hget(self.key, "version") or 0) != expected_version:
                    raise _conflict(expected_version)
                pipe.multi()
                pipe.hset(
                    self.key,
                    mapping={
                        "version": expected_version + 1,
                        "document": document,
                        "updated_at": updated_at,
                    },
                )
                await pipe.execute()
        except WatchError:
            raise _conflict(expected_version) from None
        return expected_version + 1

    async def aclose(self) -> None:
        await self._client.aclose()


_SCOPE = "(cluster)"
"""The ``tenant_id`` of cluster-wide settings rows (no tenant owns them)."""
_VERSION_DIGITS = 12


def _row_key(version: int) -> str:
    return f"{DOCUMENT}/{version:0{_VERSION_DIGITS}d}"


def _version_of(key: str) -> int:
    return int(key.rpartition("/")[2])


_IN_DOCUMENT = and_(SettingRow.tenant_id == _SCOPE, SettingRow.key.like(f"{DOCUMENT}/%"))


class SqlSettingsStore:
    """The embedded adapter over the state store's ``settings`` table (see the module docstring).

    Args:
        store: the process's state store, whose engine is shared.
        owns_store: close ``store`` with this one (it was opened for it).
    """

    def __init__(self, store: SharedDatabase, *, owns_store: bool = False) -> None:
        self._store = store
        self._owns_store = owns_store
        self._dependency = store.dependency
        self.description = f"settings table of {store.description}"

    async def _newest(self, connection: AsyncConnection) -> Any:
        query = (
            select(SettingRow.key, SettingRow.value, SettingRow.updated_at)
            .where(_IN_DOCUMENT)
            .order_by(SettingRow.key.desc())
            .limit(1)
        )
        return (await connection.execute(query)).first()

    async def version(self) -> int:
        query = select(SettingRow.key).where(_IN_DOCUMENT).order_by(SettingRow.key.desc()).limit(1)
        async with self._store.transaction() as connection:
            key = (await connection.execute(query)).scalar()
        return _version_of(key) if key else 0

    async def read(self) -> StoredDocument:
        async with self._store.transaction() as connection:
            row = await self._newest(connection)
        if row is None:
            return StoredDocument(version=0, data={})
        return StoredDocument(
            version=_version_of(row.key), data=dict(row.value), updated_at=row.updated_at
        )

    async def write(self, data: dict[str, Any], expected_version: int) -> int:
        version = expected_version + 1
        try:
            async with self._store.transaction() as connection:
                newest = await self._newest(connection)
                if (_version_of(newest.key) if newest else 0) != expected_version:
                    raise _conflict(expected_version)
                # A concurrent writer of the same version collides on the primary key.
                await connection.execute(
                    insert(SettingRow).values(
                        tenant_id=_SCOPE, key=_row_key(version), value=data, updated_at=utcnow()
                    )
                )
                await connection.execute(
                    delete(SettingRow).where(_IN_DOCUMENT, SettingRow.key < _row_key(version))
                )
        except IntegrityError:
            raise _conflict(expected_version) from None
        return version

    async def aclose(self) -> None:
        """Close the state store if it was opened for this store (else its owner does)."""
        if self._owns_store:
            await self._store.close()
