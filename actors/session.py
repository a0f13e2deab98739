"""SessionHost Ray actors and the router that places sessions on them.

All Ray API calls of the runtime live in this module: ``ray.remote`` is applied once, to the plain
:class:`SessionHost` wrapper around :class:`~agentcluster.runtime.SessionHostCore`, and the
:class:`RaySessionRouter` is the only code that names, creates or looks up host actors.

Placement: hosts are named, detached, restartable actors ``<prefix>-<n>``; a session maps to a host
by rendezvous hashing over the current host count (so growing or shrinking moves only the sessions
that must move, and the fencing epoch makes every move safe). Hosts are spread over nodes with the
SPREAD scheduling strategy. With ``sessions_per_host == 1`` (isolation mode) every session gets its
own actor, named after the session, running the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import ray
from ray.actor import ActorHandle

from agentcluster import tracing
from agentcluster.config import RuntimeSettings, Settings
from agentcluster.errors import DependencyUnavailable
from agentcluster.events import TurnOutcome
from agentcluster.logs import configure_logging
from agentcluster.runtime import HostStats, SessionHostCore, StreamItem, build_runtime_deps
from agentcluster.runtime._hostset import plan_host_count
from agentcluster.tracing import Carrier, SpanKind

__all__ = ["HostController", "RaySessionRouter", "SessionHost"]

log = logging.getLogger(__name__)


class SessionHost:
    """The Ray-facing shell of a SessionHostCore (one per actor process)."""

    def __init__(self, host_id: str, settings: Settings, isolation: bool = False) -> None:
        configure_logging(settings)
        tracing.configure_tracing(settings.tracing, "session-host")
        runtime = settings.runtime
        self._isolation = isolation
        self._core = SessionHostCore(
            host_id,
            lambda: build_runtime_deps(settings),
            idle_passivate_s=runtime.idle_passivate_s,
            reconcile_interval_s=runtime.reconcile_interval_s,
        )

    async def ready(self) -> HostStats:
        await self._core.start()
        return self._core.stats()

    async def notify(
        self, session_id: str, turn_id: str | None = None, trace: Carrier | None = None
    ) -> None:
        # The turn remembers the active span (this call's) and continues its trace.
        with _served("notify", trace, session_id, turn_id):
            await self._core.notify(session_id, turn_id)

    async def wait_turn(
        self,
        tenant_id: str,
        session_id: str,
        turn_id: str,
        after_seq: int,
        timeout_s: float,
        trace: Carrier | None = None,
    ) -> TurnOutcome | None:
        with _served("wait_turn", trace, session_id, turn_id):
            return await self._core.wait_turn(tenant_id, session_id, turn_id, after_seq, timeout_s)

    async def cancel(self, tenant_id: str, session_id: str, turn_id: str | None) -> bool:
        return await self._core.cancel(tenant_id, session_id, turn_id)

    async def stream(
        self,
        tenant_id: str,
        session_id: str,
        after_seq: int,
        until_turn: str | None,
        wake: bool = False,
        trace: Carrier | None = None,
    ) -> AsyncIterator[StreamItem]:
        # Not made active: a generator's steps may run in different contexts. The turn it
        # wakes gets the span's carrier explicitly.
        served = tracing.start_span(
            "SessionHost/stream",
            kind=SpanKind.SERVER,
            attributes=_rpc("stream", session_id, until_turn),
            parent=trace or {},
        )
        items = self._core.stream(
            tenant_id, session_id, after_seq, until_turn, wake, trace=tracing.carrier(served)
        )
        try:
            async for item in items:
                yield item
        finally:
            served.end()

    async def passivate(self, session_id: str) -> bool:
        return await self._core.passivate(session_id)

    async def passivate_idle(self, idle_s: float | None = None) -> int:
        count = await self._core.passivate_idle(idle_s)
        if self._isolation and not self._core.active_session_ids():
            # Isolation mode: an actor without its session is a process doing nothing.
            await tracing.flush_tracing()
            ray.actor.exit_actor()
        return count

    async def stats(self) -> HostStats:
        return self._core.stats()

    def pid(self) -> int:
        return os.getpid()

    async def drain(self) -> int:
        """Passivate every session (before the host is removed)."""
        sessions = self._core.active_session_ids()
        await self._core.stop()
        await tracing.flush_tracing()  # the host is killed next
        return len(sessions)


def _rpc(method: str, session_id: str, turn_id: str | None) -> dict[str, Any]:
    ids = {"agentcluster.session_id": session_id, "agentcluster.turn_id": turn_id}
    return tracing.rpc_attributes("SessionHost", method, ids)


def _served(
    method: str, trace: Carrier | None, session_id: str, turn_id: str | None
) -> contextlib.AbstractContextManager[object]:
    """The host's SERVER span of a call from a router, continuing the caller's trace."""
    return tracing.span(
        f"SessionHost/{method}",
        kind=SpanKind.SERVER,
        attributes=_rpc(method, session_id, turn_id),
        parent=trace or {},
    )


class HostController:
    """Holds the host count every router uses and reconciles it to load between min and max.

    An async actor: the first call starts a loop that reconciles every ``reconcile_interval_s``.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._count = settings.runtime.min_hosts
        self._loop_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._reconcile_forever())

    async def _reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.runtime.reconcile_interval_s)
            # A host that is restarting must not stop the host set from converging later.
            try:
                await self.reconcile()
            except Exception:
                log.exception("host controller: reconcile failed")

    async def count(self) -> int:
        self._ensure_loop()
        return self._count

    async def set_count(self, count: int) -> int:
        self._ensure_loop()
        runtime = self._settings.runtime
        self._count = max(runtime.min_hosts, min(runtime.max_hosts, count))
        return self._count

    async def reconcile(self) -> int:
        """One tick: read every host's load, grow or shrink by the plan; returns the count."""
        self._ensure_loop()
        async with self._lock:
            router = RaySessionRouter(self._settings, use_controller=False, count=self._count)
            loads = await router.host_loads()
            target = plan_host_count(
                [stats.active_sessions for stats in loads], self._settings.runtime
            )
            if target < self._count:
                # Shrink first in the routers' view, then drain: new work stops arriving there.
                self._count = target
                for index in range(target, len(loads)):
                    await router.retire(index)
            self._count = target
            await router.ensure_hosts(target)
            return self._count


_SessionHostActor = ray.remote(SessionHost)
_HostControllerActor = ray.remote(HostController)


def _score(session_id: str, host: int) -> int:
    digest = hashlib.blake2b(f"{host}:{session_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def pick_host(session_id: str, count: int) -> int:
    """Rendezvous (highest random weight) hashing: stable, and minimal moves when count changes."""
    return max(range(count), key=lambda host: _score(session_id, host))


class RaySessionRouter:
    """Maps sessions to host actors, creating hosts on demand. The only place hosts are named."""

    def __init__(
        self, settings: Settings, *, use_controller: bool = True, count: int | None = None
    ) -> None:
        self._settings = settings
        self._runtime: RuntimeSettings = settings.runtime
        self._handles: dict[str, Any] = {}
        self._count = count or self._runtime.min_hosts
        self._count_at = time.monotonic() if count else 0.0
        self._use_controller = use_controller
        self._controller: Any = None

    # -- names and handles ------------------------------------------------------------------

    def _host_name(self, index: int) -> str:
        return f"{self._runtime.host_prefix}-{index}"

    def _session_actor_name(self, session_id: str) -> str:
        return f"{self._runtime.host_prefix}-session-{session_id}"

    def _options(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "namespace": self._runtime.namespace,
            "lifetime": "detached",
            "get_if_exists": True,
            "max_restarts": -1,
            "max_task_retries": -1,
            "max_concurrency": 10_000,
            "num_cpus": self._runtime.host_num_cpus,
            "scheduling_strategy": "SPREAD",
        }

    def _handle(self, name: str, host_id: str, isolation: bool) -> Any:
        if name not in self._handles:
            options = self._options(name)
            self._handles[name] = _SessionHostActor.options(**options).remote(
                host_id, self._settings, isolation
            )
        return self._handles[name]

    def _controller_handle(self) -> Any:
        if self._controller is None:
            name = f"{self._runtime.host_prefix}-controller"
            options = self._options(name) | {"max_concurrency": 16}
            options.pop("scheduling_strategy")
            self._controller = _HostControllerActor.options(**options).remote(self._settings)
        return self._controller

    async def _host_count(self) -> int:
        if not self._use_controller or time.monotonic() - self._count_at < 1.0:
            return self._count
        self._count = int(await self._controller_handle().count.remote())
        self._count_at = time.monotonic()
        return self._count

    async def host_for(self, session_id: str) -> ActorHandle:
        """The actor that hosts ``session_id`` (created if it does not exist yet)."""
        if self._runtime.sessions_per_host == 1:
            name = self._session_actor_name(session_id)
            return self._handle(name, name, isolation=True)
        index = pick_host(session_id, await self._host_count())
        name = self._host_name(index)
        return self._handle(name, name, isolation=False)

    # -- calls ------------------------------------------------------------------------------

    async def notify(self, session_id: str, turn_id: str | None = None) -> None:
        host = await self.host_for(session_id)
        with _calling("notify", session_id, turn_id) as trace:
            await _call(host.notify.remote(session_id, turn_id, trace))

    async def wait_turn(
        self, tenant_id: str, session_id: str, turn_id: str, after_seq: int, timeout_s: float
    ) -> TurnOutcome | None:
        host = await self.host_for(session_id)
        with _calling("wait_turn", session_id, turn_id) as trace:
            outcome = await _call(
                host.wait_turn.remote(tenant_id, session_id, turn_id, after_seq, timeout_s, trace)
            )
        return outcome

    async def cancel(self, tenant_id: str, session_id: str, turn_id: str | None) -> bool:
        host = await self.host_for(session_id)
        return bool(await _call(host.cancel.remote(tenant_id, session_id, turn_id)))

    async def stream(
        self,
        tenant_id: str,
        session_id: str,
        after_seq: int = 0,
        until_turn: str | None = None,
        wake: bool = False,
    ) -> AsyncIterator[StreamItem]:
        host = await self.host_for(session_id)
        with _calling("stream", session_id, until_turn) as trace:
            generator: Any = host.stream.options(
                num_returns="streaming", max_task_retries=0
            ).remote(tenant_id, session_id, after_seq, until_turn, wake, trace)
            finished = False
            try:
                async for ref in generator:
                    yield await ref
                finished = True
            finally:
                if not finished:
                    # The consumer left early (client disconnected): end the host's
                    # subscription now, or it would hold the session active until the next
                    # restart.
                    ray.cancel(generator)

    async def ensure_hosts(self, count: int | None = None) -> list[HostStats]:
        """Create (if needed) and start hosts 0..count-1; returns their stats."""
        count = count or await self._host_count()
        hosts = [self._handle(self._host_name(i), self._host_name(i), False) for i in range(count)]
        return list(await asyncio.gather(*(_call(host.ready.remote()) for host in hosts)))

    async def host_loads(self) -> list[HostStats]:
        count = await self._host_count()
        hosts = [self._handle(self._host_name(i), self._host_name(i), False) for i in range(count)]
        return list(await asyncio.gather(*(_call(host.stats.remote()) for host in hosts)))

    async def retire(self, index: int) -> None:
        """Drain and end host ``index``; its sessions reactivate elsewhere from the store."""
        name = self._host_name(index)
        try:
            handle = ray.get_actor(name, namespace=self._runtime.namespace)
        except ValueError:
            return
        await _call(handle.drain.remote())
        ray.kill(handle, no_restart=True)
        self._handles.pop(name, None)

    async def set_host_count(self, count: int) -> int:
        self._count = int(await self._controller_handle().set_count.remote(count))
        self._count_at = time.monotonic()
        await self.ensure_hosts(self._count)
        return self._count

    async def reconcile(self) -> int:
        """Ask the controller to reconcile the host set to load now."""
        self._count = int(await self._controller_handle().reconcile.remote())
        self._count_at = time.monotonic()
        return self._count

    def actor(self, session_id: str) -> ActorHandle:
        """The isolation-mode actor of a session, or the host it maps to (for tests/benchmarks)."""
        if self._runtime.sessions_per_host == 1:
            name = self._session_actor_name(session_id)
            return self._handle(name, name, isolation=True)
        name = self._host_name(pick_host(session_id, self._count))
        return self._handle(name, name, isolation=False)


@contextlib.contextmanager
def _calling(method: str, session_id: str, turn_id: str | None) -> Iterator[Carrier]:
    """The router's CLIENT span of a host call, and the carrier that goes with the call."""
    with tracing.outgoing(
        f"SessionHost/{method}", attributes=_rpc(method, session_id, turn_id)
    ) as (_span, trace):
        yield trace


async def _call(ref: Any) -> Any:
    """Await a Ray call, turning Ray's own failures into ours (naming Ray)."""
    try:
        return await ref
    except ray.exceptions.RayActorError as exc:
        raise DependencyUnavailable("ray", f"session host unavailable: {exc}") from exc
    except ray.exceptions.RayTaskError as exc:
        cause = exc.as_instanceof_cause()
        if isinstance(cause, Exception) and not isinstance(cause, ray.exceptions.RayTaskError):
            raise cause from None
        raise
