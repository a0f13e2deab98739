"""The console's API: who is calling (``GET /v1/whoami``) and, for the admin key, what the
cluster looks like (``GET /v1/cluster``: session hosts, actor pools, LLM circuit breakers).

The cluster view is read through one port, :class:`ClusterProbe`; :class:`RayClusterProbe` is
the thin wrapper that asks Ray (hosts through the runtime's session router, pools through their
manager actors, breakers from this node's Ray metrics). A part that cannot be read is left empty
and named in ``problems``, so one slow pool does not hide the hosts.
"""

# No ``from __future__ import annotations``: the routes are nested functions that Serve pickles
# by value, and FastAPI reads their annotations again in the replica, where only real objects
# (not names to look up in the module) survive the trip.

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, Protocol, TypeVar, runtime_checkable

import httpx
from fastapi import APIRouter, Depends, Header, Request
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict

from agentcluster import metrics
from agentcluster.config import Settings
from agentcluster.errors import AgentClusterError
from agentcluster.gateway._problems import ProblemError
from agentcluster.gateway._service import Caller, GatewayService
from agentcluster.runtime import HostStats

__all__ = [
    "BreakerOut",
    "ClusterOut",
    "ClusterProbe",
    "HostOut",
    "PoolOut",
    "RayClusterProbe",
    "WhoAmI",
    "breakers_from_metrics",
    "cluster_router",
    "read_cluster",
]

PART_TIMEOUT_S = 5.0
BREAKER_METRIC = "ray_agentcluster_llm_breaker_state"
BreakerState = Literal["closed", "half-open", "open"]
T = TypeVar("T")


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class WhoAmI(_Out):
    """The caller behind the API key: the admin key (no tenant) or a tenant's key."""

    admin: bool
    tenant_id: str | None = None
    key_id: str | None = None


class HostOut(_Out):
    host_id: str
    active_sessions: int
    running_turns: int
    subscribers: int
    activations: int
    passivations: int


class PoolOut(_Out):
    pool: str
    min_size: int
    max_size: int
    size: int
    starting: int
    idle: int
    leased: int
    waiters: int
    leases_granted: int
    exhausted: int
    members_failed: int


class BreakerOut(_Out):
    model: str
    state: BreakerState


class ClusterOut(_Out):
    """A snapshot of the cluster. ``breakers`` are this gateway node's view (the Ray metrics of
    the session hosts on its node); ``problems`` names each part that could not be read."""

    hosts: list[HostOut]
    pools: list[PoolOut]
    breakers: list[BreakerOut]
    problems: list[str]


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


_MEMBER_SUFFIX = re.compile(r"-[0-9a-f]{6}-\d+$")
"""Pool members are named ``pool-<pool>-<incarnation>-<n>`` beside their manager."""


class RayClusterProbe:
    """The cluster as Ray sees it. All Ray calls of the console are made here."""

    def __init__(self, settings: Settings, router: object) -> None:
        self._namespace = settings.runtime.namespace
        self._router = router

    async def hosts(self) -> list[HostOut]:
        if not isinstance(self._router, _HostLoads):
            return []  # not a Ray router (e.g. an in-process runtime): no hosts to show
        loads = await self._router.host_loads()
        return [HostOut(**stats.model_dump()) for stats in loads]

    async def pools(self) -> list[PoolOut]:
        from actors.pool import ActorPool  # the Ray edge, imported when used

        # Listing and looking up actors ask the GCS and block: keep them off the event loop.
        managers = await asyncio.to_thread(self._pool_managers)
        clients = [ActorPool(handle, name) for name, handle in managers]
        stats = await asyncio.gather(*(client.stats() for client in clients))
        return [PoolOut.model_validate(_pick(PoolOut, s)) for s in stats]

    async def breakers(self) -> list[BreakerOut]:
        port = await metrics.node_metrics_port()
        async with httpx.AsyncClient(timeout=PART_TIMEOUT_S) as client:
            text = await metrics.scrape_node_metrics(client, port)
        return breakers_from_metrics(text)

    def _pool_managers(self) -> list[tuple[str, Any]]:
        """(pool name, manager handle) of every pool in the namespace (blocking)."""
        import ray

        from actors.pool import manager_name

        prefix = manager_name("")
        listed: list[dict[str, str]] = ray.util.list_named_actors(all_namespaces=True)
        names = {a["name"] for a in listed if a.get("namespace") == self._namespace}
        found = []
        for name in sorted(n for n in names if n.startswith(prefix)):
            if _is_member(name, names):
                continue
            try:
                found.append((name[len(prefix) :], ray.get_actor(name, namespace=self._namespace)))
            except ValueError:  # gone since it was listed
                continue
        return found


def _is_member(name: str, names: set[str]) -> bool:
    stem = _MEMBER_SUFFIX.sub("", name)
    return stem != name and stem in names


def _pick(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    return {name: values[name] for name in model.model_fields if name in values}


# -- routes -----------------------------------------------------------------------------------


def _service(request: Request) -> GatewayService:
    service: GatewayService = request.app.state.service
    return service


ServiceDep = Annotated[GatewayService, Depends(_service)]


async def _caller(
    service: ServiceDep, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    scheme, _, token = (authorization or "").partition(" ")
    if authorization and (scheme.lower() != "bearer" or not token.strip()):
        raise ProblemError(
            401,
            "unauthorized",
            "use Authorization: Bearer <api key>",
            {"WWW-Authenticate": "Bearer"},
        )
    return await service.authenticate(token.strip() or None)


CallerDep = Annotated[Caller, Depends(_caller)]
ProbeFactory = Callable[[GatewayService], ClusterProbe]


def _ray_probe(service: GatewayService) -> ClusterProbe:
    return RayClusterProbe(service.settings, service.runtime.router)


def cluster_router(probe: ProbeFactory = _ray_probe) -> APIRouter:
    """``GET /v1/whoami`` and the admin key's ``GET /v1/cluster``."""
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
