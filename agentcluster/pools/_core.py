"""The bookkeeping of actor pools in plain Python (no Ray): members, leases, waiters, scaling.

:class:`PoolCore` talks to its members only through a :class:`MemberFactory` port and is told
their names by its caller, so it runs (and is unit-tested) without Ray; the Ray shell
(``actors/pool.py``) puts it inside the pool manager actor, with Ray actors as members named by
``actors/names.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agentcluster.errors import DependencyUnavailable, InfrastructureError

__all__ = [
    "Lease",
    "LeaseLost",
    "MemberFactory",
    "MemberIsolation",
    "PoolConfig",
    "PoolCore",
    "PoolExhausted",
    "PoolMetrics",
    "PoolStats",
    "describe_error",
]

log = logging.getLogger(__name__)

M = TypeVar("M")
MemberState = Literal["starting", "idle", "leased", "resetting"]

_LOST_LEASES_KEPT = 10_000
_WAIT_SAMPLES_KEPT = 2048


# --- errors ---------------------------------------------------------------------------------


class PoolExhausted(DependencyUnavailable):
    """Backpressure: no member became free within the lease timeout (retry later).

    The message names the pool, its size and how long the caller waited.
    """

    def __init__(self, pool: str, message: str) -> None:
        super().__init__(f"pool {pool}", message, retryable=True)
        self.pool = pool


class LeaseLost(InfrastructureError):
    """A lease is no longer valid (its member died, it idled out, the pool restarted): lease
    again to get a fresh member."""

    def __init__(self, pool: str, lease_id: str, reason: str) -> None:
        super().__init__(
            f"pool {pool}", f"lease {lease_id} is no longer valid: {reason}", retryable=True
        )
        self.pool = pool
        self.lease_id = lease_id
        self.reason = reason


# --- configuration and value types ----------------------------------------------------------


class PoolConfig(BaseModel):
    """Sizes and timings of one pool."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    min_size: int = Field(default=0, ge=0, le=1000)
    max_size: int = Field(default=4, ge=1, le=1000)
    idle_release_s: float = Field(default=120.0, gt=0)
    health_interval_s: float = Field(default=5.0, gt=0)
    health_timeout_s: float = Field(default=5.0, gt=0)
    start_timeout_s: float = Field(default=60.0, gt=0)
    reset_timeout_s: float = Field(default=30.0, gt=0)
    reconcile_interval_s: float = Field(default=1.0, gt=0)
    scale_down_after_s: float = Field(default=30.0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> PoolConfig:
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) must be <= max_size ({self.max_size})")
        return self


@dataclass(frozen=True)
class Lease(Generic[M]):
    """A member lent to one caller until released.

    Attributes:
        lease_id: pass it to release/touch.
        pool: the pool's name.
        member_id: the member's id, which is also its Ray actor name in Ray pools.
        key: the sticky key it was leased under (a session id), if any.
        member: the member itself; a Ray ``ActorHandle`` in Ray pools.
    """

    lease_id: str
    pool: str
    member_id: str
    key: str | None
    member: M


class MemberIsolation(BaseModel):
    """What a member last said (in its health answer) about how it isolates untrusted work,
    e.g. ``{"python_exec": "bwrap; cgroup v1; uid 65534"}``, and the node it runs on."""

    model_config = ConfigDict(frozen=True)

    member: str
    node: str | None = None
    layers: dict[str, str]


class PoolStats(BaseModel):
    """A snapshot of a pool (also exported as Ray metrics)."""

    model_config = ConfigDict(frozen=True)

    pool: str
    min_size: int
    max_size: int
    size: int
    starting: int
    idle: int
    leased: int
    resetting: int
    waiters: int
    leases_granted: int
    exhausted: int
    members_started: int
    start_failures: int
    members_failed: int
    leases_idle_released: int
    members_scaled_down: int
    wait_ms_p50: float
    wait_ms_p99: float
    isolation: list[MemberIsolation] = []


class MemberFactory(Protocol[M]):
    """Port: how a pool starts, checks, resets and ends its members."""

    @property
    def needs_reset(self) -> bool:
        """Whether :meth:`reset` must run between leases."""
        ...

    async def create(self, member_id: str) -> M:
        """Start a member and return it once it answers ``health()``."""
        ...

    async def check(self, member: M) -> Mapping[str, Any] | None:
        """Raise if the member is unhealthy; else its health answer (or None)."""
        ...

    async def reset(self, member: M) -> None:
        """Bring the member back to a fresh state between leases."""
        ...

    async def destroy(self, member: M) -> None:
        """Stop the member for good (best effort, never raises)."""
        ...


class PoolMetrics(Protocol):
    """Port: where pool metrics go."""

    def record(self, stats: PoolStats) -> None: ...

    def observe_wait(self, seconds: float) -> None: ...


class _NoMetrics:
    def record(self, stats: PoolStats) -> None:
        return None

    def observe_wait(self, seconds: float) -> None:
        return None


@dataclass
class _Member(Generic[M]):
    member_id: str
    state: MemberState
    since: float
    ref: M | None = None
    lease_id: str | None = None
    isolation: MemberIsolation | None = None


@dataclass
class _LeaseRecord(Generic[M]):
    lease: Lease[M]
    last_used: float


@dataclass
class _Waiter(Generic[M]):
    key: str | None
    since: float
    future: asyncio.Future[Lease[M]]


@dataclass
class _Counters:
    granted: int = 0
    exhausted: int = 0
    started: int = 0
    start_failures: int = 0
    failed: int = 0
    idle_released: int = 0
    scaled_down: int = 0


# --- the core -------------------------------------------------------------------------------


class PoolCore(Generic[M]):
    """The bookkeeping of one pool; every coroutine is safe to call concurrently (one loop).

    Args:
        config: sizes and timings.
        factory: starts, checks, resets and ends members.
        metrics: where gauges and the wait histogram go (none by default).
        clock: monotonic seconds; tests pass a fake one to drive idle and shrink timeouts.
        member_names: the id of the ``n``-th member this core starts (``n`` from 1): the Ray
            shell passes actor names; by default ``<pool>-<n>``.
    """

    def __init__(
        self,
        config: PoolConfig,
        factory: MemberFactory[M],
        *,
        metrics: PoolMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        member_names: Callable[[int], str] | None = None,
    ) -> None:
        self.config = config
        self._factory = factory
        self._metrics: PoolMetrics = metrics or _NoMetrics()
        self._clock = clock
        self._members: dict[str, _Member[M]] = {}
        self._leases: dict[str, _LeaseRecord[M]] = {}
        self._by_key: dict[str, str] = {}
        self._waiters: deque[_Waiter[M]] = deque()
        self._lost: OrderedDict[str, str] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._ids = itertools.count(1)
        self._member_names = member_names or (lambda number: f"{config.name}-{number}")
        self._counters = _Counters()
        self._waits_ms: deque[float] = deque(maxlen=_WAIT_SAMPLES_KEPT)
        self._last_start_error: str | None = None
        self._closed = False

    # -- leasing -------------------------------------------------------------------------------

    async def lease(self, key: str | None = None, timeout_s: float = 10.0) -> Lease[M]:
        """A member for the caller; the same lease again while ``key``'s lease is held.

        Raises:
            PoolExhausted: no member became free within ``timeout_s``.
            DependencyUnavailable: the pool is shutting down.
        """
        self._check_open()
        since = self._clock()
        held = self._held(key)
        if held is not None:
            return held
        member = self._free_member()
        if member is not None:
            return self._grant(member, key, since)
        waiter = _Waiter[M](key, since, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._scale_up()
        try:
            return await self._await_grant(waiter, timeout_s)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    async def _await_grant(self, waiter: _Waiter[M], timeout_s: float) -> Lease[M]:
        with contextlib.suppress(TimeoutError):
            # shield: a timeout must not cancel a future a grant may be completing.
            return await asyncio.wait_for(asyncio.shield(waiter.future), timeout_s)
        if waiter.future.done():
            return waiter.future.result()
        waiter.future.cancel()
        raise self._exhausted(timeout_s)

    def touch(self, lease_id: str) -> Lease[M]:
        """Mark the lease as used now (it idles out ``idle_release_s`` after its last use).

        Raises:
            LeaseLost: the lease is not valid any more; the message says why.
        """
        record = self._leases.get(lease_id)
        if record is None:
            reason = self._lost.get(lease_id, "unknown lease (released, or the pool restarted)")
            raise LeaseLost(self.config.name, lease_id, reason)
        record.last_used = self._clock()
        return record.lease

    async def release(self, lease_id: str) -> bool:
        """Give the member back; False when the lease was not held (already released or lost)."""
        record = self._leases.pop(lease_id, None)
        if record is None:
            return False
        self._forget_key(record.lease)
        member = self._members.get(record.lease.member_id)
        if member is not None:
            self._recycle(member)
        return True

    async def release_key(self, key: str) -> bool:
        """Release the lease held for ``key`` (a session's turn ended); False if none is held."""
        lease_id = self._by_key.get(key)
        return lease_id is not None and await self.release(lease_id)

    async def report_failure(self, lease_id: str, reason: str) -> bool:
        """A caller saw the leased member die: replace it now instead of at the next check."""
        record = self._leases.get(lease_id)
        member = self._members.get(record.lease.member_id) if record else None
        if member is None:
            return False
        self._member_failed(member, reason)
        return True

    # -- grants --------------------------------------------------------------------------------

    def _held(self, key: str | None) -> Lease[M] | None:
        if key is None or key not in self._by_key:
            return None
        return self.touch(self._by_key[key])

    def _free_member(self) -> _Member[M] | None:
        idle = [member for member in self._members.values() if member.state == "idle"]
        # The most recently used one: the others stay idle long enough to be scaled down.
        return max(idle, key=lambda member: member.since, default=None)

    def _grant(self, member: _Member[M], key: str | None, since: float) -> Lease[M]:
        assert member.ref is not None  # idle members are started
        now = self._clock()
        lease = Lease(uuid.uuid4().hex, self.config.name, member.member_id, key, member.ref)
        member.state, member.since, member.lease_id = "leased", now, lease.lease_id
        self._leases[lease.lease_id] = _LeaseRecord(lease, now)
        if key is not None:
            self._by_key[key] = lease.lease_id
        self._counters.granted += 1
        self._waits_ms.append((now - since) * 1000.0)
        self._metrics.observe_wait(now - since)
        return lease

    def _dispatch(self) -> None:
        """Hand free members (and held sticky leases) to waiters, first come first served."""
        for waiter in list(self._waiters):
            if waiter.future.done():
                continue
            lease = self._held(waiter.key)
            if lease is None:
                member = self._free_member()
                if member is None:
                    # Only waiters for keys already held may still be served.
                    continue
                lease = self._grant(member, waiter.key, waiter.since)
            waiter.future.set_result(lease)
        self._waiters = deque(waiter for waiter in self._waiters if not waiter.future.done())

    def _forget_key(self, lease: Lease[M]) -> None:
        if lease.key is not None and self._by_key.get(lease.key) == lease.lease_id:
            del self._by_key[lease.key]

    def _remember_lost(self, lease_id: str, reason: str) -> None:
        self._lost[lease_id] = reason
        while len(self._lost) > _LOST_LEASES_KEPT:
            self._lost.popitem(last=False)

    # -- member lifecycle ----------------------------------------------------------------------

    def _recycle(self, member: _Member[M]) -> None:
        member.lease_id = None
        if not self._factory.needs_reset:
            self._set_idle(member)
            return
        member.state, member.since = "resetting", self._clock()
        self._spawn(self._reset(member))

    async def _reset(self, member: _Member[M]) -> None:
        assert member.ref is not None
        try:
            async with asyncio.timeout(self.config.reset_timeout_s):
                await self._factory.reset(member.ref)
        except Exception as exc:
            # Why broad: whatever broke the reset, this member is not fit to lend again.
            self._member_failed(member, f"reset failed: {describe_error(exc)}")
            return
        if self._members.get(member.member_id) is member:
            self._set_idle(member)

    def _set_idle(self, member: _Member[M]) -> None:
        member.state, member.since = "idle", self._clock()
        self._dispatch()

    def _member_failed(self, member: _Member[M], reason: str) -> None:
        if self._members.get(member.member_id) is not member:
            return
        log.warning("pool %s: member %s failed: %s", self.config.name, member.member_id, reason)
        del self._members[member.member_id]
        self._counters.failed += 1
        was_leased = member.lease_id is not None
        if member.lease_id is not None:
            record = self._leases.pop(member.lease_id, None)
            if record is not None:
                self._forget_key(record.lease)
            self._remember_lost(member.lease_id, f"its member {member.member_id} failed ({reason})")
        if member.ref is not None:
            self._spawn(self._factory.destroy(member.ref))
        # A leased member's caller will most likely come back for another: start one now.
        self._scale_up(extra=1 if was_leased else 0)
        self._dispatch()

    def _start_member(self) -> None:
        member_id = self._member_names(next(self._ids))
        member = _Member[M](member_id, "starting", self._clock())
        self._members[member_id] = member
        self._spawn(self._start(member))

    async def _start(self, member: _Member[M]) -> None:
        try:
            async with asyncio.timeout(self.config.start_timeout_s):
                ref = await self._factory.create(member.member_id)
        except Exception as exc:
            # Why broad: a member that cannot start must not break the pool; waiters time out
            # with the reason in their error and the next reconcile tick tries again.
            self._last_start_error = describe_error(exc)
            self._counters.start_failures += 1
            self._members.pop(member.member_id, None)
            log.warning("pool %s: member start failed: %s", self.config.name, describe_error(exc))
            return
        if self._members.get(member.member_id) is not member:
            await self._factory.destroy(ref)  # the pool stopped while it started
            return
        member.ref = ref
        self._counters.started += 1
        self._last_start_error = None
        self._set_idle(member)

    # -- scaling -------------------------------------------------------------------------------

    def _demand(self) -> int:
        """Members the waiters need: one per keyless waiter, one per distinct waiting key."""
        keys = {waiter.key for waiter in self._waiters if waiter.key is not None}
        keyless = sum(1 for waiter in self._waiters if waiter.key is None)
        return keyless + len(keys - set(self._by_key))

    def _scale_up(self, extra: int = 0) -> None:
        if self._closed:
            return
        starting = self._count("starting") + self._count("resetting")
        wanted = max(self._demand() - starting, 0) + extra
        below_min = max(self.config.min_size - len(self._members), 0)
        room = self.config.max_size - len(self._members)
        for _ in range(max(min(room, max(wanted, below_min)), 0)):
            self._start_member()

    def _scale_down(self, now: float) -> None:
        if self._waiters:
            return
        idle = sorted(
            (member for member in self._members.values() if member.state == "idle"),
            key=lambda member: member.since,
        )
        excess = len(self._members) - self.config.min_size
        for member in idle[: max(excess, 0)]:
            if now - member.since < self.config.scale_down_after_s:
                break
            del self._members[member.member_id]
            self._counters.scaled_down += 1
            if member.ref is not None:
                self._spawn(self._factory.destroy(member.ref))

    def _expire_idle_leases(self, now: float) -> None:
        limit = self.config.idle_release_s
        expired = [r for r in self._leases.values() if now - r.last_used >= limit]
        for record in expired:
            lease_id = record.lease.lease_id
            self._remember_lost(lease_id, f"released after {limit:g} s without use")
            self._leases.pop(lease_id, None)
            self._forget_key(record.lease)
            self._counters.idle_released += 1
            member = self._members.get(record.lease.member_id)
            if member is not None:
                self._recycle(member)

    async def reconcile(self) -> PoolStats:
        """One tick: idle leases released, idle members above min removed, demand met."""
        now = self._clock()
        self._expire_idle_leases(now)
        self._scale_down(now)
        self._scale_up()
        self._dispatch()
        stats = self.stats()
        self._metrics.record(stats)
        return stats

    async def check_health(self) -> int:
        """One pass of health checks over started members; returns how many failed."""
        members = [m for m in self._members.values() if m.state in ("idle", "leased")]
        problems = await asyncio.gather(*(self._probe(member) for member in members))
        failed = 0
        for member, problem in zip(members, problems, strict=True):
            if problem is not None:
                failed += 1
                self._member_failed(member, problem)
        return failed

    async def _probe(self, member: _Member[M]) -> str | None:
        assert member.ref is not None
        timeout = self.config.health_timeout_s
        try:
            async with asyncio.timeout(timeout):
                health = await self._factory.check(member.ref)
        except TimeoutError:
            return f"health check timed out after {timeout:g} s"
        except Exception as exc:
            # Why broad: any failure to answer health() means the member cannot be trusted.
            return f"health check failed: {describe_error(exc)}"
        member.isolation = _isolation(member.member_id, health)
        return None

    # -- background loops and shutdown ---------------------------------------------------------

    def start(self) -> None:
        """Start the reconcile and health loops (idempotent); call inside the running loop."""
        if not self._loops:
            self._loops = [
                asyncio.create_task(self._every(self.config.reconcile_interval_s, self.reconcile)),
                asyncio.create_task(self._every(self.config.health_interval_s, self.check_health)),
            ]
            self._scale_up()

    async def _every(self, interval_s: float, tick: Callable[[], Any]) -> None:
        while not self._closed:
            await asyncio.sleep(interval_s)
            try:
                await tick()
            except Exception:
                # Why broad: one failed tick (a Ray hiccup) must not stop the pool converging.
                log.exception("pool %s: background tick failed", self.config.name)

    async def stop(self) -> int:
        """Fail the waiters, stop the loops and every member; returns how many were stopped."""
        self._closed = True
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(self._shutting_down())
        for task in self._loops:
            task.cancel()
        members = [m.ref for m in self._members.values() if m.ref is not None]
        self._members.clear()
        self._leases.clear()
        self._by_key.clear()
        await asyncio.gather(*(self._factory.destroy(ref) for ref in members))
        for task in list(self._tasks):
            task.cancel()
        return len(members)

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- reporting -----------------------------------------------------------------------------

    def _count(self, state: MemberState) -> int:
        return sum(1 for member in self._members.values() if member.state == state)

    def stats(self) -> PoolStats:
        """The current sizes, counters and recent lease waits."""
        counters = self._counters
        waits = sorted(self._waits_ms)
        return PoolStats(
            pool=self.config.name,
            min_size=self.config.min_size,
            max_size=self.config.max_size,
            size=len(self._members),
            starting=self._count("starting"),
            idle=self._count("idle"),
            leased=self._count("leased"),
            resetting=self._count("resetting"),
            waiters=sum(1 for waiter in self._waiters if not waiter.future.done()),
            leases_granted=counters.granted,
            exhausted=counters.exhausted,
            members_started=counters.started,
            start_failures=counters.start_failures,
            members_failed=counters.failed,
            leases_idle_released=counters.idle_released,
            members_scaled_down=counters.scaled_down,
            wait_ms_p50=_quantile(waits, 0.50),
            wait_ms_p99=_quantile(waits, 0.99),
            isolation=[m.isolation for m in self._members.values() if m.isolation is not None],
        )

    def _exhausted(self, waited_s: float) -> PoolExhausted:
        self._counters.exhausted += 1
        message = (
            f"no free member within {waited_s:g} s: {self._count('leased')} of at most "
            f"{self.config.max_size} members leased ({self._count('starting')} starting), "
            f"{len(self._waiters)} caller(s) waiting; retry later"
        )
        if self._last_start_error is not None:
            message += f"; the last member start failed: {self._last_start_error}"
        return PoolExhausted(self.config.name, message)

    def _shutting_down(self) -> DependencyUnavailable:
        return DependencyUnavailable(f"pool {self.config.name}", "the pool is shutting down")

    def _check_open(self) -> None:
        if self._closed:
            raise self._shutting_down()


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return round(ordered[min(int(q * len(ordered)), len(ordered) - 1)], 3)


def describe_error(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters of it), for logs and the
    reasons a pool gives."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _isolation(member_id: str, health: Mapping[str, Any] | None) -> MemberIsolation | None:
    layers = health.get("isolation") if health else None
    if not isinstance(layers, Mapping) or not layers:
        return None
    node = health.get("node") if health else None
    return MemberIsolation(
        member=member_id,
        node=node if isinstance(node, str) else None,
        layers={str(key): str(value) for key, value in layers.items()},
    )
