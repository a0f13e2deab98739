"""The console's cluster view as Ray sees it: the adapter of the core's
:class:`~agentcluster.console.ClusterProbe` port. All Ray calls of the console are made here.

Session hosts come through the runtime's session router, actor pools through their manager actors
(found by name, :mod:`actors.names`), LLM breakers from this node's Ray metrics. The gateway
deployment (``deployments/gateway.py``) injects :func:`ray_cluster_probe` into the app.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, runtime_checkable

import httpx
import ray
from pydantic import BaseModel

from actors import names
from actors.pool import ActorPool
from agentcluster import metrics
from agentcluster.config import Settings
from agentcluster.console import (
    PART_TIMEOUT_S,
    BreakerOut,
    ClusterProbe,
    HostOut,
    PoolOut,
    breakers_from_metrics,
)
from agentcluster.gateway import GatewayService
from agentcluster.runtime import HostStats

__all__ = ["RayClusterProbe", "ray_cluster_probe"]


@runtime_checkable
class _HostLoads(Protocol):
    """What the Ray session router offers beyond the runtime's SessionRouter port."""

    async def host_loads(self) -> list[HostStats]: ...


class RayClusterProbe:
    """The cluster as Ray sees it (the :class:`ClusterProbe` port)."""

    def __init__(self, settings: Settings, router: object) -> None:
        self._namespace = settings.runtime.namespace
        self._router = router

    async def hosts(self) -> list[HostOut]:
        if not isinstance(self._router, _HostLoads):
            return []  # not a Ray router (e.g. an in-process runtime): no hosts to show
        loads = await self._router.host_loads()
        return list(loads)

    async def pools(self) -> list[PoolOut]:
        # Listing and looking up actors ask the GCS and block: keep them off the event loop.
        managers = await asyncio.to_thread(self._pool_managers)
        clients = [ActorPool(handle, name) for name, handle in managers]
        stats = await asyncio.gather(*(client.stats() for client in clients))
        return [PoolOut.model_validate(_pick(PoolOut, s.model_dump())) for s in stats]

    async def breakers(self) -> list[BreakerOut]:
        port = await metrics.node_metrics_port()
        async with httpx.AsyncClient(timeout=PART_TIMEOUT_S) as client:
            text = await metrics.scrape_node_metrics(client, port)
        return breakers_from_metrics(text)

    def _pool_managers(self) -> list[tuple[str, Any]]:
        """(pool name, manager handle) of every pool in the namespace (blocking)."""
        listed: list[dict[str, str]] = ray.util.list_named_actors(all_namespaces=True)
        named = [a["name"] for a in listed if a.get("namespace") == self._namespace]
        found = []
        for name, pool in names.pool_managers(named).items():
            try:
                found.append((pool, ray.get_actor(name, namespace=self._namespace)))
            except ValueError:  # gone since it was listed
                continue
        return found


def ray_cluster_probe(service: GatewayService) -> ClusterProbe:
    """The console's probe factory for a gateway replica: the cluster its runtime routes to."""
    return RayClusterProbe(service.settings, service.runtime.router)


def _pick(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    return {name: values[name] for name in model.model_fields if name in values}
