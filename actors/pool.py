"""Pools of Ray actors: leases with backpressure, sticky keys, health checks and scaling.

Three layers (plain classes, Ray at the edge):

* :class:`~agentcluster.pools.PoolCore` (the core package's :mod:`agentcluster.pools`) keeps the
  books in plain Python: members, leases, waiters. It talks to its members only through a
  :class:`MemberFactory` port, so it runs (and is unit-tested) without Ray. This module is its
  Ray shell: members as Ray actors, Ray metrics, the manager actor and its client.
* :class:`PoolManager` is the async Ray actor around one core: one named, detached manager per
  pool kind (named by :func:`actors.names.pool_manager`). It creates the members itself, so they
  share its fate: when the manager is gone, its members are too, and no browser outlives its pool.
* :class:`ActorPool` is the thin client any process uses (the session hosts lease through it).

A member is any actor class with an async ``health()``; an async ``reset()`` is called between
leases when the class has one, and an async ``stop()`` before the actor is killed.

Member life: ``starting -> idle <-> leased`` (``resetting`` in between when the class resets).
A member whose health check fails or times out, whose reset fails, or that a client reports dead,
is removed and killed; its lease is invalidated (using it raises :class:`LeaseLost`, which says
why) and a replacement starts. The reconcile loop grows the pool at once when callers wait and
shrinks members idle for ``scale_down_after_s`` (the hysteresis) down to ``min_size``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError, RayTaskError
from ray.util.metrics import Gauge, Histogram

from actors import names
from agentcluster.errors import AgentClusterError, DependencyUnavailable
from agentcluster.pools import (
    Lease,
    LeaseLost,
    MemberFactory,
    PoolConfig,
    PoolCore,
    PoolExhausted,
    PoolMetrics,
    PoolStats,
    describe_error,
)

__all__ = [
    "ActorPool",
    "Lease",
    "LeaseLost",
    "MemberFactory",
    "PoolConfig",
    "PoolCore",
    "PoolExhausted",
    "PoolManager",
    "PoolMetrics",
    "PoolSpec",
    "PoolStats",
    "RayMemberFactory",
]

log = logging.getLogger(__name__)

_STOP_TIMEOUT_S = 15.0  # for a member to stop before it is killed

# --- Ray: members, metrics, the manager actor and its client --------------------------------


@dataclass(frozen=True)
class PoolSpec:
    """What a pool manager needs: its config and how to build its members.

    Attributes:
        config: sizes and timings.
        actor_class: a plain class with an async ``health()`` (``ray.remote`` is applied here).
        args: positional arguments of the class.
        kwargs: keyword arguments of the class.
        namespace: the Ray namespace of the manager and its members.
        num_cpus: CPUs reserved per member.
        resources: custom resources per member (e.g. ``{"browser": 1}``: only nodes that offer
            it run members, and demand for it makes the autoscaler add such nodes).
        max_concurrency: concurrent calls per member (health checks run beside long calls).
    """

    config: PoolConfig
    actor_class: type
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    namespace: str = "agentcluster"
    num_cpus: float = 0.0
    resources: Mapping[str, float] = field(default_factory=dict)
    max_concurrency: int = 32


class RayMemberFactory:
    """Members as Ray actors owned by the calling actor (they die with it)."""

    def __init__(self, spec: PoolSpec) -> None:
        self._spec = spec
        self._remote: Any = ray.remote(spec.actor_class)
        self._has_reset = callable(getattr(spec.actor_class, "reset", None))
        self._has_stop = callable(getattr(spec.actor_class, "stop", None))

    @property
    def needs_reset(self) -> bool:
        return self._has_reset

    async def create(self, member_id: str) -> ActorHandle:
        spec = self._spec
        handle: ActorHandle = self._remote.options(
            name=member_id,
            namespace=spec.namespace,
            max_restarts=0,
            num_cpus=spec.num_cpus,
            resources=dict(spec.resources),
            max_concurrency=spec.max_concurrency,
        ).remote(*spec.args, **dict(spec.kwargs))
        try:
            await handle.health.remote()
        except BaseException:
            # Cancelled by the start timeout, or broken: never leave a half-started actor.
            ray.kill(handle, no_restart=True)
            raise
        return handle

    async def check(self, member: ActorHandle) -> Mapping[str, Any] | None:
        health = await member.health.remote()
        return health if isinstance(health, Mapping) else None

    async def reset(self, member: ActorHandle) -> None:
        await member.reset.remote()

    async def destroy(self, member: ActorHandle) -> None:
        if self._has_stop:
            # Why broad: stop is a courtesy (it lets a browser close Chromium and remove its
            # temp dir); the kill below happens whatever it did.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_STOP_TIMEOUT_S):
                    await member.stop.remote()
        with contextlib.suppress(Exception):
            ray.kill(member, no_restart=True)


class RayPoolMetrics:
    """Gauges (size, leased, idle, waiters) and the lease wait histogram, tagged by pool."""

    def __init__(self, pool: str) -> None:
        tags = ("pool",)
        self._tags = {"pool": pool}
        self._size = Gauge("agentcluster_pool_size", "Members of the pool.", tag_keys=tags)
        self._leased = Gauge("agentcluster_pool_leased", "Members leased.", tag_keys=tags)
        self._idle = Gauge("agentcluster_pool_idle", "Members free to lease.", tag_keys=tags)
        self._waiters = Gauge("agentcluster_pool_waiters", "Callers waiting.", tag_keys=tags)
        self._wait = Histogram(
            "agentcluster_pool_lease_wait_seconds",
            "Time from asking for a lease to getting one.",
            boundaries=[0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0],
            tag_keys=tags,
        )

    def record(self, stats: PoolStats) -> None:
        self._size.set(stats.size, self._tags)
        self._leased.set(stats.leased, self._tags)
        self._idle.set(stats.idle, self._tags)
        self._waiters.set(stats.waiters, self._tags)

    def observe_wait(self, seconds: float) -> None:
        self._wait.observe(seconds, self._tags)


class PoolManager:
    """The async Ray actor that owns one pool (named by :func:`actors.names.pool_manager`);
    its answers are typed (:class:`Lease`, :class:`PoolStats`), never dicts."""

    def __init__(self, spec: PoolSpec) -> None:
        self._core: PoolCore[ActorHandle] = PoolCore(
            spec.config,
            RayMemberFactory(spec),
            metrics=RayPoolMetrics(spec.config.name),
            member_names=names.pool_members(spec.config.name),
        )
        # An async actor builds itself inside its event loop: start the loops right away.
        self._core.start()

    async def lease(self, key: str | None, timeout_s: float) -> Lease[ActorHandle]:
        return await self._core.lease(key, timeout_s)

    async def release(self, lease_id: str) -> bool:
        return await self._core.release(lease_id)

    async def release_key(self, key: str) -> bool:
        return await self._core.release_key(key)

    async def touch(self, lease_id: str) -> None:
        self._core.touch(lease_id)

    async def report_failure(self, lease_id: str, reason: str) -> bool:
        return await self._core.report_failure(lease_id, reason)

    async def stats(self) -> PoolStats:
        return self._core.stats()

    async def reconcile(self) -> PoolStats:
        return await self._core.reconcile()

    async def shutdown(self) -> int:
        return await self._core.stop()


_PoolManagerActor: Any = ray.remote(PoolManager)


class ActorPool:
    """Client of a pool manager; usable from async code in any process connected to Ray.

    Args:
        manager: the manager actor's handle.
        name: the pool's name.
        lease_timeout_s: the default lease timeout.
    """

    def __init__(self, manager: ActorHandle, name: str, *, lease_timeout_s: float = 10.0) -> None:
        self._manager: Any = manager
        self.name = name
        self._lease_timeout_s = lease_timeout_s

    @classmethod
    def start(cls, spec: PoolSpec, *, lease_timeout_s: float = 10.0) -> ActorPool:
        """The pool's manager, created if it does not exist yet (an existing one keeps its
        spec)."""
        handle = _PoolManagerActor.options(
            name=names.pool_manager(spec.config.name),
            namespace=spec.namespace,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            num_cpus=0,
            max_concurrency=10_000,
        ).remote(spec)
        return cls(handle, spec.config.name, lease_timeout_s=lease_timeout_s)

    @classmethod
    def connect(
        cls, name: str, namespace: str = "agentcluster", *, lease_timeout_s: float = 10.0
    ) -> ActorPool:
        """The client of a running pool (a blocking lookup: call it once, at startup).

        Raises:
            DependencyUnavailable: no such pool is running.
        """
        try:
            handle = ray.get_actor(names.pool_manager(name), namespace=namespace)
        except ValueError:
            raise DependencyUnavailable(f"pool {name}", "no such pool is running") from None
        return cls(handle, name, lease_timeout_s=lease_timeout_s)

    async def _call(self, ref: Any) -> Any:
        try:
            return await ref
        except RayTaskError as exc:
            if isinstance(exc.cause, AgentClusterError):
                raise exc.cause from None
            raise
        except RayActorError as exc:
            raise DependencyUnavailable(
                f"pool {self.name}", f"the pool manager is unavailable: {describe_error(exc)}"
            ) from None

    async def lease(
        self, key: str | None = None, timeout_s: float | None = None
    ) -> Lease[ActorHandle]:
        """A member (the same lease again while ``key``'s lease is held).

        Raises:
            PoolExhausted: no member became free in time.
        """
        timeout = self._lease_timeout_s if timeout_s is None else timeout_s
        lease: Lease[ActorHandle] = await self._call(self._manager.lease.remote(key, timeout))
        return lease

    async def release(self, lease: Lease[Any] | str) -> bool:
        """Give the member back; False when the lease was not held any more."""
        released: bool = await self._call(self._manager.release.remote(_lease_id(lease)))
        return released

    async def release_key(self, key: str) -> bool:
        """Release the lease held for ``key``, if any (e.g. when a session's turn ends)."""
        released: bool = await self._call(self._manager.release_key.remote(key))
        return released

    async def touch(self, lease: Lease[Any] | str) -> None:
        """Keep the lease from idling out.

        Raises:
            LeaseLost: it is not valid any more (the message says why).
        """
        await self._call(self._manager.touch.remote(_lease_id(lease)))

    async def report_failure(self, lease: Lease[Any] | str, reason: str) -> bool:
        """Tell the pool the leased member died, so it is replaced now."""
        reported: bool = await self._call(
            self._manager.report_failure.remote(_lease_id(lease), reason)
        )
        return reported

    async def stats(self) -> PoolStats:
        """A snapshot of the pool's sizes, counters and lease waits."""
        stats: PoolStats = await self._call(self._manager.stats.remote())
        return stats

    async def shutdown(self) -> int:
        """Stop every member, then the manager; returns how many members were stopped."""
        stopped: int = await self._call(self._manager.shutdown.remote())
        ray.kill(self._manager, no_restart=True)
        return stopped

    @contextlib.asynccontextmanager
    async def leased(
        self, key: str | None = None, timeout_s: float | None = None
    ) -> AsyncIterator[Lease[ActorHandle]]:
        """Lease for the duration of a block, released at its end."""
        lease = await self.lease(key, timeout_s)
        try:
            yield lease
        finally:
            await self.release(lease)


def _lease_id(lease: Lease[Any] | str) -> str:
    return lease if isinstance(lease, str) else lease.lease_id
