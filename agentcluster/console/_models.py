"""The console API's bodies: who is calling, and the cluster as the admin key sees it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from agentcluster.runtime import HostStats

__all__ = ["BreakerOut", "BreakerState", "ClusterOut", "HostOut", "PoolOut", "WhoAmI"]

BreakerState = Literal["closed", "half-open", "open"]


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class WhoAmI(_Out):
    """The caller behind the API key: the admin key (no tenant) or a tenant's key."""

    admin: bool
    tenant_id: str | None = None
    key_id: str | None = None


HostOut = HostStats
"""A session host as the console shows it: its own stats, as they are."""


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
    isolation: list[dict[str, Any]] = []
    """Each member's isolation layers as it last reported them (``member``, ``node``,
    ``layers``: e.g. ``{"python_exec": "bwrap; cgroup v1; uid 65534"}``)."""


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
