"""Tenants and their API keys on SQLAlchemy (the :class:`~agentcluster.store.TenantStore` role)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, select, update

from agentcluster.domain import ApiKey, Tenant
from agentcluster.errors import NotFoundError
from agentcluster.store._sql_base import SqlStoreBase, new_id, require_tenant
from agentcluster.store.models import ApiKeyRow, TenantRow, utcnow

__all__ = ["SqlTenants", "hash_api_key"]

KEY_PREFIX = "ac_"


def hash_api_key(secret: str) -> str:
    """SHA-256 of an API key. Keys are 256-bit random, so a fast hash is enough (no brute force)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _api_key(row: Any) -> ApiKey:
    return ApiKey(
        key_id=row.key_id,
        tenant_id=row.tenant_id,
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        roles=list(row.roles or []),
    )


class SqlTenants(SqlStoreBase):
    """Tenants and API keys (stored hashed)."""

    async def create_tenant(self, name: str, tenant_id: str | None = None) -> Tenant:
        tenant = TenantRow(tenant_id=tenant_id or new_id(), name=name, created_at=utcnow())
        async with self.transaction() as connection:
            await connection.execute(
                insert(TenantRow).values(
                    tenant_id=tenant.tenant_id, name=name, created_at=tenant.created_at
                )
            )
        return Tenant(tenant_id=tenant.tenant_id, name=name, created_at=tenant.created_at)

    async def get_tenant(self, tenant_id: str) -> Tenant:
        async with self.transaction() as connection:
            row = (
                await connection.execute(select(TenantRow).where(TenantRow.tenant_id == tenant_id))
            ).one_or_none()
        if row is None:
            raise NotFoundError(f"tenant {tenant_id} not found")
        return Tenant(tenant_id=row.tenant_id, name=row.name, created_at=row.created_at)

    async def create_api_key(
        self, tenant_id: str, name: str, roles: Sequence[str] = ()
    ) -> tuple[ApiKey, str]:
        """Create a key (with ``roles``); returns its record and the secret (stored hashed,
        never shown again)."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKeyRow(
            key_id=new_id(),
            tenant_id=tenant_id,
            name=name,
            prefix=secret[:10],
            key_hash=hash_api_key(secret),
            created_at=utcnow(),
            roles=sorted(set(roles)) or None,
        )
        async with self.transaction() as connection:
            await require_tenant(connection, tenant_id)
            await connection.execute(
                insert(ApiKeyRow).values(
                    key_id=row.key_id,
                    tenant_id=tenant_id,
                    name=name,
                    prefix=row.prefix,
                    key_hash=row.key_hash,
                    created_at=row.created_at,
                    roles=row.roles,
                )
            )
        return _api_key(row), secret

    async def authenticate(self, secret: str) -> ApiKey | None:
        """The live key whose secret this is, or None."""
        async with self.transaction() as connection:
            row = (
                await connection.execute(
                    select(ApiKeyRow).where(
                        ApiKeyRow.key_hash == hash_api_key(secret), ApiKeyRow.revoked_at.is_(None)
                    )
                )
            ).one_or_none()
        return None if row is None else _api_key(row)

    async def list_api_keys(self, tenant_id: str | None) -> list[ApiKey]:
        """Keys of a tenant (of every tenant when None, for an admin), oldest first."""
        query = select(ApiKeyRow).order_by(ApiKeyRow.created_at)
        if tenant_id is not None:
            query = query.where(ApiKeyRow.tenant_id == tenant_id)
        async with self.transaction() as connection:
            rows = (await connection.execute(query)).all()
        return [_api_key(row) for row in rows]

    async def revoke_api_key(self, tenant_id: str | None, key_id: str) -> None:
        """Revoke a live key (of ``tenant_id`` when given; any tenant's for an admin)."""
        conditions = [ApiKeyRow.key_id == key_id, ApiKeyRow.revoked_at.is_(None)]
        if tenant_id is not None:
            conditions.append(ApiKeyRow.tenant_id == tenant_id)
        async with self.transaction() as connection:
            result = await connection.execute(
                update(ApiKeyRow).where(*conditions).values(revoked_at=utcnow())
            )
        if result.rowcount == 0:
            raise NotFoundError(f"api key {key_id} not found")
