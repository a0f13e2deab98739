"""A tenant's limits over HTTP, admin key only.

``GET /v1/tenants/{tenant_id}/limits``: the limits in force (the ``SA01_LIMITS_*`` defaults with
the tenant's overrides), both parts, and today's usage. ``PUT`` replaces the tenant's overrides
(``null`` or absent: the default; ``0``: unlimited); the answering replica applies them at once,
the other replicas and the session hosts within ``SA01_LIMITS_REFRESH_S``. An unknown tenant is
404; the admin key's own calls are not rate limited (they belong to no tenant).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Path

from agentcluster.errors import DependencyUnavailable
from agentcluster.gateway._callers import AdminDep, ServiceDep
from agentcluster.gateway._responses import problem_responses
from agentcluster.gateway._service import GatewayService
from agentcluster.limits import LimitOverrides, TenantLimitsOut, TenantLimitsService

__all__ = ["include_limits_api", "limits_router"]

TenantId = Annotated[str, Path(min_length=1, max_length=64)]


async def _limits(service: ServiceDep) -> TenantLimitsService:
    if service.limits is None:
        raise DependencyUnavailable("gateway", "tenant limits are not started on this replica")
    return service.limits


LimitsDep = Annotated[TenantLimitsService, Depends(_limits)]

limits_router = APIRouter(prefix="/v1/tenants/{tenant_id}/limits", tags=["limits"])


async def _known_tenant(service: GatewayService, tenant_id: str) -> None:
    await service.runtime.store.get_tenant(tenant_id)  # 404 for an unknown tenant


@limits_router.get("", response_model=TenantLimitsOut, responses=problem_responses(404))
async def get_limits(
    tenant_id: TenantId, _admin: AdminDep, service: ServiceDep, limits: LimitsDep
) -> TenantLimitsOut:
    await _known_tenant(service, tenant_id)
    return await limits.read(tenant_id)


@limits_router.put("", response_model=TenantLimitsOut, responses=problem_responses(404))
async def put_limits(
    tenant_id: TenantId,
    body: LimitOverrides,
    _admin: AdminDep,
    limits: LimitsDep,
) -> TenantLimitsOut:
    return await limits.write(tenant_id, body)


def include_limits_api(app: FastAPI) -> None:
    """Add the tenant limits routes to ``app``."""
    app.include_router(limits_router)
