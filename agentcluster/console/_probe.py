"""The cluster view's port and its Ray adapter: session hosts through the runtime's session
router, actor pools through their manager actors, LLM breakers from this node's Ray metrics.

A part that cannot be read is left empty and named in ``problems``, so one slow pool does not hide
the hosts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from agentcluster import metrics
from agentcluster.config import Settings
from agentcluster.console._models import (
    BreakerOut,
    BreakerState,
    ClusterOut,
    HostOut,
    PoolOut,
)
from agentcluster.errors import AgentClusterError
from agentcluster.runtime import HostStats

__all__ = ["ClusterProbe", "RayClusterProbe", "breakers_from_metrics", "read_cluster"]

PART_TIMEOUT_S = 5.0
BREAKER_METRIC = "ray_agentcluster_llm_breaker_state"
T = TypeVar("T")


class ClusterProbe(Protocol):
    """Port: reads the cluster's parts (each may raise an :class:`AgentClusterError`)."""

    async def hosts(self) -> list[HostOut]: ...

    async def pools(self) -> list[PoolOut]: ...

    async def breakers(self) -> list[BreakerOut]: ...


@runtime_checkable
class _HostLoads(Protocol):
    """What the Ray session router offers beyond the runtime's SessionRouter port."""

    async def host_loads(self) -> list[HostStats]: ...


async def _part(
    name: str, read: Callable[[], Awaitable[list[T]]], problems: list[str], timeout_s: float
) -> list[T]:
    try:
        async with asyncio.timeout(timeout_s):
            return await read()
    except TimeoutError:
        problems.append(f"{name}: no answer within {timeout_s:g} s")
    except AgentClusterError as exc:
        problems.append(f"{name}: {exc}")
    return []


async def read_cluster(probe: ClusterProbe, timeout_s: float = PART_TIMEOUT_S) -> ClusterOut:
    """Every part of the cluster, read concurrently; a part that fails or takes longer than
    ``timeout_s`` is left empty and named in problems."""
    problems: list[str] = []
    hosts, pools, breakers = await asyncio.gather(
        _part("hosts", probe.hosts, problems, timeout_s),
        _part("pools", probe.pools, problems, timeout_s),
        _part("breakers", probe.breakers, problems, timeout_s),
    )
    return ClusterOut(
        hosts=sorted(hosts, key=lambda h: h.host_id),
        pools=sorted(pools, key=lambda p: p.pool),
        breakers=sorted(breakers, key=lambda b: b.model),
        problems=problems,
    )


_STATES: tuple[BreakerState, ...] = ("closed", "half-open", "open")
_STATE_BY_VALUE = {metrics.BREAKER_STATES[state]: state for state in _STATES}


def breakers_from_metrics(text: str) -> list[BreakerOut]:
    """Each model's breaker state from a Prometheus text exposition of Ray's metrics; when
    several processes report a model, the worst state wins."""
    worst: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            model = sample.labels.get("model")
            if sample.name != BREAKER_METRIC or model is None:
                continue
            worst[model] = max(worst.get(model, 0.0), sample.value)
    return [
        BreakerOut(model=model, state=_STATE_BY_VALUE.get(value, "open"))
        for model, value in worst.items()
    ]


class RayClusterProbe:
    """The cluster as Ray sees it. All Ray calls of the console are made here."""

    def __init__(self, settings: Settings, router: object) -> None:
        self._namespace = settings.runtime.namespace
        self._router = router

    async def hosts(self) -> list[HostOut]:
        if not isinstance(self._router, _HostLoads):
            return []  # not a Ray router (e.g. an in-process runtime): no hosts to show
        loads = await self._router.host_loads()
        return list(loads)

    async def pools(self) -> list[PoolOut]:
        from actors.pool import ActorPool  # the Ray edge, imported when used

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
        import ray

        from actors import names  # the one module that knows how actors are named

        listed: list[dict[str, str]] = ray.util.list_named_actors(all_namespaces=True)
        named = [a["name"] for a in listed if a.get("namespace") == self._namespace]
        found = []
        for name, pool in names.pool_managers(named).items():
            try:
                found.append((pool, ray.get_actor(name, namespace=self._namespace)))
            except ValueError:  # gone since it was listed
                continue
        return found


def _pick(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    return {name: values[name] for name in model.model_fields if name in values}
