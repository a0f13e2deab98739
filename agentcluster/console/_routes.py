"""The console's API routes: ``GET /v1/whoami`` (which key this is) and the admin key's
``GET /v1/cluster``. Imported only when the routes are built (:func:`include_console`), so the
console package can be imported by the gateway's app module without an import cycle.
"""

# No ``from __future__ import annotations``: see _assets.py.
from collections.abc import Callable

from fastapi import APIRouter

from agentcluster.console._models import ClusterOut, WhoAmI
from agentcluster.console._probe import ClusterProbe, NoClusterProbe, read_cluster
from agentcluster.gateway import CallerDep, GatewayService, ServiceDep

__all__ = ["ProbeFactory", "cluster_router"]


ProbeFactory = Callable[[GatewayService], ClusterProbe]


def _no_probe(service: GatewayService) -> ClusterProbe:
    del service  # nothing to read without the Ray edge
    return NoClusterProbe()


def cluster_router(probe: ProbeFactory = _no_probe) -> APIRouter:
    """``GET /v1/whoami`` and the admin key's ``GET /v1/cluster`` (read through ``probe``)."""
    router = APIRouter(tags=["console"])

    @router.get("/v1/whoami", response_model=WhoAmI)
    async def whoami(caller: CallerDep) -> WhoAmI:
        """Which key this is: the admin key, or a tenant's key (and its tenant)."""
        return WhoAmI(admin=caller.admin, tenant_id=caller.tenant_id, key_id=caller.key_id)

    @router.get("/v1/cluster", response_model=ClusterOut)
    async def cluster(caller: CallerDep, service: ServiceDep) -> ClusterOut:
        """Admin key only: session hosts, actor pools and LLM breakers."""
        caller.require_admin()
        return await read_cluster(probe(service))

    return router
