"""Per-tenant policy data in the OPA server of ``make deps-up``, for a block of a test."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tests.conftest import service

__all__ = ["tenant_policy"]


@contextlib.asynccontextmanager
async def tenant_policy(tenant_id: str, data: dict[str, Any]) -> AsyncIterator[None]:
    """Per-tenant policy data in the OPA server for the block (removed afterwards)."""
    async with httpx.AsyncClient(base_url=service("SA01_POLICY_URL")) as opa:
        put = await opa.put(f"/v1/data/agentcluster/tenants/{tenant_id}", json=data)
        assert put.status_code == 204, put.text
        try:
            yield
        finally:
            await opa.delete(f"/v1/data/agentcluster/tenants/{tenant_id}")
