"""The cluster view's port (session hosts, actor pools, LLM breakers) and how it is read.

Its Ray adapter lives at the edge (``actors/console_probe.py``) and is injected where the app is
built (``deployments/gateway.py``). A part that cannot be read is left empty and named in
``problems``, so one slow pool does not hide the hosts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from agentcluster import metrics
from agentcluster.console._models import (
    BreakerOut,
    BreakerState,
    ClusterOut,
    HostOut,
    PoolOut,
)
from agentcluster.errors import AgentClusterError, ConfigError

__all__ = [
    "PART_TIMEOUT_S",
    "ClusterProbe",
    "NoClusterProbe",
    "breakers_from_metrics",
    "read_cluster",
]

PART_TIMEOUT_S = 5.0
BREAKER_METRIC = "ray_agentcluster_llm_breaker_state"
T = TypeVar("T")


class ClusterProbe(Protocol):
    """Port: reads the cluster's parts (each may raise an :class:`AgentClusterError`)."""

    async def hosts(self) -> list[HostOut]: ...

    async def pools(self) -> list[PoolOut]: ...

    async def breakers(self) -> list[BreakerOut]: ...


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


class NoClusterProbe:
    """The probe of an app given none (a bare app in tests, the core without the Ray edge):
    there is nothing to read, so each part is named in ``problems``."""

    async def hosts(self) -> list[HostOut]:
        raise ConfigError("no cluster probe in this app (the Ray edge injects one)")

    async def pools(self) -> list[PoolOut]:
        raise ConfigError("no cluster probe in this app (the Ray edge injects one)")

    async def breakers(self) -> list[BreakerOut]:
        raise ConfigError("no cluster probe in this app (the Ray edge injects one)")
