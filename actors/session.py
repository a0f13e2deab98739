"""SessionHost Ray actors and the router that places sessions on them.

All Ray API calls of the runtime live in this module: ``ray.remote`` is applied once, to the plain
:class:`SessionHost` wrapper around :class:`~agentcluster.runtime.SessionHostCore`, and the
:class:`RaySessionRouter` is the only code that creates or looks up host actors (their names come
from :mod:`actors.names`).

Placement: hosts are named, detached, restartable actors ``<prefix>-<n>``; a session maps to a host
by rendezvous hashing over the current host count (so growing or shrinking moves only the sessions
that must move, and the fencing epoch makes every move safe). Hosts are spread over nodes with the
SPREAD scheduling strategy. With ``sessions_per_host == 1`` (isolation mode) every session gets its
own actor, named after the session, running the same code.

Failover: every call to a host is made without Ray's retries, so a call to a host that died (or is
restarting) fails at once; the router then skips that host for ``SA01_RUNTIME_HOST_DOWN_S`` and
makes the call on the session's next host in rendezvous order, ``SA01_RUNTIME_STANDBY_HOSTS``
standby hosts last. That host activates the session from the store under a new fencing epoch
and resumes its open turn, while Ray restarts the dead process in the background. Streams resume
on the new host after the last event they delivered. The :class:`HostController` keeps the
standbys running and, every tick, wakes sessions with open turns that no live host owns (a
message accepted while no host could be woken, a turn of a host that died or was retired).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import ray
from ray.actor import ActorHandle

from actors import names as actor_names
from actors.compose import build_runtime_deps
from agentcluster import tracing
from agentcluster.config import RuntimeSettings, Settings
from agentcluster.domain import QueuedTurn
from agentcluster.errors import DependencyUnavailable, HostStarting
from agentcluster.events import TURN_OUTCOMES, EventBase, TurnOutcome
from agentcluster.logs import configure_logging
from agentcluster.runtime import HostStats, Runtime, SessionHostCore, StreamItem, plan_host_count
from agentcluster.schedules import ScheduleTicker
from agentcluster.store import ActivationStore, StateStore
from agentcluster.tracing import Carrier, SpanKind

if TYPE_CHECKING:
    from agentcluster.webhooks import WebhookDispatcher

__all__ = ["HostController", "RaySessionRouter", "SessionHost"]

log = logging.getLogger(__name__)


class SessionHost:
    """The Ray-facing shell of a SessionHostCore (one per actor process)."""

    def __init__(self, host_id: str, settings: Settings, isolation: bool = False) -> None:
        configure_logging(settings)
        tracing.configure_tracing(settings.tracing, "session-host")
        runtime = settings.runtime
        self._isolation = isolation
        self._host_id = host_id
        self._settings = settings
        self._warming: asyncio.Task[None] | None = None
        self._draining: asyncio.Task[list[str]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._core = SessionHostCore(
            host_id,
            lambda: build_runtime_deps(settings),
            idle_passivate_s=runtime.idle_passivate_s,
            reconcile_interval_s=runtime.reconcile_interval_s,
            recover_own=isolation,
        )
        # Start building dependencies now: a replacement or a restarted actor is warm sooner,
        # and a restarted session actor (isolation mode) resumes its turns with no call.
        with contextlib.suppress(RuntimeError):  # no running loop: the first call starts it
            self._warming = asyncio.get_running_loop().create_task(self._core.start())
            self._warming.add_done_callback(self._warmed)
        # A node being stopped sends its processes SIGTERM; Ray's handler turns it into an
        # exit of the worker's main thread (an async actor's own code runs on another thread,
        # where no signal handler can be set): drain on the way out.
        atexit.register(self._drain_at_exit)

    def _warmed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("host %s: not ready yet: %s", self._host_id, task.exception())

    async def ready(self) -> HostStats:
        self._loop = asyncio.get_running_loop()
        if self._draining is not None:
            raise HostStarting(self._host_id, "draining")
        await self._core.start()
        return self._core.stats()

    def _serving(self) -> None:
        """Refuse session work while this process still builds its dependencies (a fresh
        start, or Ray's restart after a crash: seconds of imports and connections), starting
        that build, or while it drains: the router moves the session to a ready host instead
        of waiting here."""
        self._loop = asyncio.get_running_loop()
        if self._draining is not None:
            raise HostStarting(self._host_id, "draining")
        if self._core.warm or self._isolation:
            return  # isolation mode: the session's own actor is the only place it can run
        if self._warming is None or self._warming.done():
            self._warming = asyncio.get_running_loop().create_task(self._core.start())
        raise HostStarting(self._host_id)

    async def notify(
        self,
        session_id: str,
        turn_id: str | None = None,
        trace: Carrier | None = None,
        queued: QueuedTurn | None = None,
    ) -> None:
        self._serving()
        # The turn remembers the active span (this call's) and continues its trace.
        with _served("notify", trace, session_id, turn_id):
            await self._core.notify(session_id, turn_id, queued)

    async def wait_turn(
        self,
        tenant_id: str,
        session_id: str,
        turn_id: str,
        after_seq: int,
        timeout_s: float,
        trace: Carrier | None = None,
        queued: QueuedTurn | None = None,
    ) -> TurnOutcome | None:
        self._serving()
        with _served("wait_turn", trace, session_id, turn_id):
            return await self._core.wait_turn(
                tenant_id, session_id, turn_id, after_seq, timeout_s, queued
            )

    async def cancel(self, tenant_id: str, session_id: str, turn_id: str | None) -> bool:
        self._serving()
        return await self._core.cancel(tenant_id, session_id, turn_id)

    async def refresh(self, session_id: str) -> bool:
        return self._core.refresh(session_id)

    async def stream(
        self,
        tenant_id: str,
        session_id: str,
        after_seq: int,
        until_turn: str | None,
        wake: bool = False,
        trace: Carrier | None = None,
    ) -> AsyncIterator[StreamItem]:
        self._serving()
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

    async def drain(self) -> list[str]:
        """Stop taking work and passivate every session (before the host is removed): running
        turns are handed over, left open and owned by this process, so a host controller that
        sees it gone wakes them elsewhere. Returns those sessions, for the caller to wake on their
        new host at once. Idempotent: a second call waits for the first."""
        if self._draining is None:
            self._draining = asyncio.get_running_loop().create_task(self._drain())
        return await self._draining

    async def _drain(self) -> list[str]:
        try:
            async with asyncio.timeout(self._settings.runtime.drain_timeout_s):
                busy = await self._core.stop(hand_over=True)
        except TimeoutError:
            log.warning("host %s: drain timed out; exiting with turns still open", self._host_id)
            busy = self._core.busy_session_ids()
        await tracing.flush_tracing()  # the host is killed or exits next
        return busy

    def _drain_at_exit(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return  # never served anything: nothing to hand over
        handing = asyncio.run_coroutine_threadsafe(self._drain_and_wake(), loop)
        try:
            handing.result(timeout=2 * self._settings.runtime.drain_timeout_s + 1)
        except Exception as exc:  # exiting anyway: the host controller wakes what is left
            log.warning("host %s: drain on exit failed: %s", self._host_id, _first_line(exc))

    async def _drain_and_wake(self) -> None:
        """Drain, then wake the sessions that were busy on the hosts they move to (best effort:
        the host controller wakes any left once this process is gone)."""
        busy = await self.drain()
        if busy and not self._isolation:
            router = RaySessionRouter(self._settings)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.runtime.drain_timeout_s):
                    await asyncio.gather(
                        *(router.notify(session_id) for session_id in busy),
                        return_exceptions=True,
                    )
        log.info("host %s drained (%d sessions handed over)", self._host_id, len(busy))


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
    """Holds the host count every router uses, reconciles it to load between min and max, keeps
    the standby hosts running and wakes sessions whose open turns no live host runs.

    It also runs the schedules' ticker (:class:`agentcluster.schedules.ScheduleTicker`) and the
    webhook dispatcher (:class:`agentcluster.webhooks.WebhookDispatcher`): every host set's
    controller tries, the holder of each one's lease in the store does the work; and it
    rejects the approvals nobody answered in time, waking their sessions.

    An async actor: it starts a loop that reconciles every ``reconcile_interval_s`` and one that
    ticks every ``schedules.tick_s`` (again on any call, should one have ended).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._count = settings.runtime.min_hosts
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self._store: StateStore | None = None
        self._holder = f"{actor_names.controller(settings.runtime)}~{os.getpid()}~{time.time_ns()}"
        self._router: RaySessionRouter | None = None  # the ticker's and the dispatcher's
        self._ticker: ScheduleTicker | None = None
        self._dispatcher: WebhookDispatcher | None = None
        self.woken = 0
        self.fired = 0
        with contextlib.suppress(RuntimeError):  # no running loop: built outside an actor
            self._ensure_loop()  # schedules tick without waiting for a first call

    def _ensure_loop(self) -> None:
        # A host that is restarting, or a database blip, must not stop the host set from
        # converging (or sessions from being woken, ticks sent, outcomes delivered) later.
        loops = {
            "reconcile": (self._settings.runtime.reconcile_interval_s, self.reconcile),
            "schedule tick": (self._settings.schedules.tick_s, self._tick_schedules),
            "webhook delivery": (self._settings.webhooks.tick_s, self._deliver_webhooks),
            "approval expiry": (self._settings.schedules.tick_s, self._expire_approvals),
        }
        for what, (period_s, step) in loops.items():
            task = self._loops.get(what)
            if task is None or task.done():
                self._loops[what] = asyncio.create_task(_every(period_s, what, step))

    def _sessions_router(self) -> RaySessionRouter:
        """A router over the host set as the routers see it (the count may have changed)."""
        if self._router is None:
            self._router = RaySessionRouter(self._settings, use_controller=False)
        self._router.use_count(self._count)
        return self._router

    async def _tick_schedules(self) -> None:
        router = self._sessions_router()
        if self._ticker is None:
            store = await self._state_store()
            submit = Runtime(store, router).send_message
            self._ticker = ScheduleTicker(store, submit, self._settings.schedules, self._holder)
        self.fired += await self._ticker.tick()

    async def _deliver_webhooks(self) -> None:
        # Imported here: the tools' SSRF guard is not for every process that routes sessions.
        from agentcluster.policy import build_policy_engine
        from agentcluster.tools import SsrfGuard
        from agentcluster.webhooks import WebhookDispatcher

        router = self._sessions_router()
        if self._dispatcher is None:
            guard = SsrfGuard(build_policy_engine(self._settings))
            self._dispatcher = WebhookDispatcher(
                await self._state_store(),
                guard,
                self._settings.webhooks,
                self._holder,
                on_event=router.refresh,
            )
        await self._dispatcher.tick()

    async def _expire_approvals(self) -> None:
        # Idempotent under each session's write lock: every controller may do it, no lease.
        store = await self._state_store()
        prefix = actor_names.host_set_prefix(self._settings.runtime)
        for session_id in await store.expire_approvals(owner_prefix=prefix):
            try:
                await self._sessions_router().notify(session_id)  # its turn resumes
            except Exception as exc:  # the reconcile sweep wakes it later
                log.warning("host controller: could not wake session %s: %s", session_id, exc)

    async def count(self) -> int:
        self._ensure_loop()
        return self._count

    async def set_count(self, count: int) -> int:
        self._ensure_loop()
        runtime = self._settings.runtime
        self._count = max(runtime.min_hosts, min(runtime.max_hosts, count))
        return self._count

    async def reconcile(self) -> int:
        """One tick: read every host's load, grow or shrink by the plan, start missing hosts
        (standbys included), wake sessions with open turns no live host owns; returns the
        count."""
        self._ensure_loop()
        async with self._lock:
            router = RaySessionRouter(self._settings, use_controller=False, count=self._count)
            if self._settings.runtime.sessions_per_host == 1:
                await self._wake(router, set())  # isolation mode: no host set to keep
                return self._count
            loads, complete = await router.live_loads()
            if complete:  # plan only on a full picture: a dead host is not an idle one
                target = plan_host_count(
                    [stats.active_sessions for stats in loads[: self._count]],
                    self._settings.runtime,
                )
                await self._resize(router, target)
            try:
                await router.ensure_hosts(self._count)
            except DependencyUnavailable as exc:  # sessions still get woken on the live ones
                log.warning("host controller: %s", exc)
            await self._wake(router, {stats.owner_id for stats in loads})
            return self._count

    async def _resize(self, router: RaySessionRouter, target: int) -> None:
        previous = self._count
        # Shrink in the routers' view first, then drain: new work stops arriving there, and
        # what the drained hosts were running is woken on its new host.
        self._count = target
        router.use_count(target)
        standby = self._settings.runtime.standby_hosts
        for index in reversed(range(target + standby, previous + standby)):
            await router.retire(index)

    async def _wake(self, router: RaySessionRouter, live_hosts: set[str]) -> None:
        # Isolation mode: a session's own actor recovers its turns when Ray restarts it; only
        # sessions no actor owns are woken here.
        runtime = self._settings.runtime
        isolation = runtime.sessions_per_host == 1
        store = await self._state_store()
        candidates = await store.sessions_to_wake(
            actor_names.host_set_prefix(runtime),
            None if isolation else live_hosts,
            # The accepting process retries waking for about a minute first; only then is an
            # unowned session this controller's (a database may be shared by host sets).
            unowned_after_s=_UNOWNED_AFTER_S,
            # Sessions' own actors (isolation mode, on a database this host set shares) are
            # never this host set's to take.
            excluding=router.session_actor_prefix,
        )
        if isolation:
            candidates += await self._orphaned_session_actors(router, store)
        for session_id in candidates:
            try:
                await router.notify(session_id)
                self.woken += 1
            except Exception as exc:  # one session's failure never stops the others' wake
                # (a dependency down, or a session whose agent this host set has no profile for
                # on a shared database): logged, retried next tick.
                log.warning("host controller: could not wake session %s: %s", session_id, exc)

    async def _orphaned_session_actors(
        self, router: RaySessionRouter, store: ActivationStore
    ) -> list[str]:
        # Isolation mode: sessions with open turns whose own actor is gone for good (drained by
        # `agentcluster down` or a node stop, not restarted by Ray): waking creates it again.
        owned = await store.sessions_with_open_turns(router.session_actor_prefix, prefix=True)
        if not owned:
            return []
        live = set(router.named_actors())
        return [sid for sid in owned if router.session_actor_name(sid) not in live]

    async def _state_store(self) -> StateStore:
        if self._store is None:
            from agentcluster.bootstrap import open_state_store

            self._store = await open_state_store(self._settings, migrate=False)
        return self._store


_UNOWNED_AFTER_S = 90.0


async def _every(period_s: float, what: str, step: Callable[[], Awaitable[object]]) -> None:
    """Run ``step`` every ``period_s`` for ever; a failure is logged, the next one still runs."""
    while True:
        await asyncio.sleep(period_s)
        try:
            await step()
        except Exception:
            log.exception("host controller: %s failed", what)


_WATCH_BACKOFF_S = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
_SessionHostActor = ray.remote(SessionHost)
_HostControllerActor = ray.remote(HostController)


def _score(session_id: str, host: int) -> int:
    digest = hashlib.blake2b(f"{host}:{session_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def pick_host(session_id: str, count: int) -> int:
    """Rendezvous (highest random weight) hashing: stable, and minimal moves when count changes."""
    return max(range(count), key=lambda host: _score(session_id, host))


class RaySessionRouter:
    """Maps sessions to host actors, creating hosts on demand and failing over from dead ones.
    The only place hosts are named."""

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
        self._down: dict[str, float] = {}
        """Host name -> monotonic time until which calls skip it (it died or is restarting)."""
        self._watching: dict[str, asyncio.Task[None]] = {}
        """Host name -> the task clearing its skip mark once it is ready (it was starting)."""
        self._warming: asyncio.Task[None] | None = None

    # -- names and handles ------------------------------------------------------------------

    def _host_name(self, index: int) -> str:
        return actor_names.host(self._runtime, index)

    @property
    def session_actor_prefix(self) -> str:
        return actor_names.session_actor_prefix(self._runtime)

    def session_actor_name(self, session_id: str) -> str:
        """The name of a session's own actor (isolation mode)."""
        return actor_names.session_actor(self._runtime, session_id)

    def named_actors(self) -> list[str]:
        """The live (or restarting) named host actors of this host set: placed hosts, standbys
        and sessions' own actors."""
        listed = ray.util.list_named_actors(all_namespaces=True)
        named = [e["name"] for e in listed if e["namespace"] == self._runtime.namespace]
        return actor_names.host_actors(self._runtime, named)

    def _options(self, name: str, restart: bool = True) -> dict[str, Any]:
        return {
            "name": name,
            "namespace": self._runtime.namespace,
            "lifetime": "detached",
            "get_if_exists": True,
            "max_restarts": -1 if restart else 0,
            "max_task_retries": -1,
            "max_concurrency": 10_000,
            "num_cpus": self._runtime.host_num_cpus,
            "scheduling_strategy": "SPREAD",
        }

    def _handle(self, name: str, host_id: str, isolation: bool) -> Any:
        # A placed or standby host that dies is not restarted by Ray: calls to a restarting
        # actor wait for it (a cold process: seconds), while calls to a dead one fail at once
        # and move to the next host. The router that saw it die creates the replacement in the
        # background (_watch). A session's own actor (isolation mode) is its only place: Ray
        # restarts it and it recovers its turns.
        if name not in self._handles:
            options = self._options(name, restart=isolation)
            self._handles[name] = _SessionHostActor.options(**options).remote(
                host_id, self._settings, isolation
            )
        return self._handles[name]

    def _controller_handle(self) -> Any:
        if self._controller is None:
            name = actor_names.controller(self._runtime)
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

    def use_count(self, count: int) -> None:
        """Place sessions over ``count`` hosts from now on (the controller's own routers)."""
        self._count = count
        self._count_at = time.monotonic()

    # -- placement and failover -------------------------------------------------------------

    def _ranked(self, session_id: str, count: int) -> list[str]:
        """The hosts ``session_id`` tries, in order: rendezvous over the placed hosts, then the
        standbys. The first is where it lives while every host is up."""
        ranked = sorted(range(count), key=lambda host: _score(session_id, host), reverse=True)
        standby = range(count, count + self._runtime.standby_hosts)
        return [self._host_name(index) for index in (*ranked, *standby)]

    def _live(self, names: list[str]) -> list[str]:
        now = time.monotonic()
        live = [name for name in names if self._down.get(name, 0.0) <= now]
        return live or names  # all marked down: try them anyway, one may be back

    def _mark_down(self, name: str, exc: BaseException) -> None:
        if self._down.get(name, 0.0) <= time.monotonic():
            log.warning("session host %s is not serving (%s); failing over", name, _first_line(exc))
        self._down[name] = time.monotonic() + self._runtime.host_down_s

    async def _targets(self, session_id: str) -> list[tuple[str, Any]]:
        if self._runtime.sessions_per_host == 1:
            name = self.session_actor_name(session_id)
            return [(name, self._handle(name, name, isolation=True))]
        names = self._live(self._ranked(session_id, await self._host_count()))
        return [(name, self._handle(name, name, isolation=False)) for name in names]

    async def host_for(self, session_id: str) -> ActorHandle:
        """The actor that hosts ``session_id`` now (created if it does not exist yet)."""
        handle: ActorHandle = (await self._targets(session_id))[0][1]
        return handle

    async def _on_host(self, session_id: str, call: Callable[[Any], Any]) -> Any:
        """``call(host)`` on the session's first live host, failing over to the next while a
        host turns out dead or still starting. When none can serve now (a cluster's first calls,
        several hosts lost at once), waits for the first of the session's hosts to be ready,
        replacements of dead ones included. DependencyUnavailable naming Ray when none
        answers."""
        failures: list[str] = []
        for name, handle in await self._targets(session_id):
            try:
                answer = await _call_host(call(handle))
            except (ray.exceptions.RayActorError, HostStarting) as exc:
                self._skip(name, exc)
                failures.append(f"{name}: {_first_line(exc)}")
                continue
            self._down.pop(name, None)  # it answers: the session's next calls go there too
            return answer
        ready = await self._first_ready(session_id, failures)
        if ready is not None:
            name, handle = ready
            try:
                answer = await _call_host(call(handle))
                self._down.pop(name, None)
                return answer
            except (ray.exceptions.RayActorError, HostStarting) as exc:
                self._skip(name, exc)
                failures.append(f"{name}: {_first_line(exc)}")
        raise DependencyUnavailable(
            "ray", f"no session host answered for session {session_id} ({'; '.join(failures)})"
        )

    async def _first_ready(self, session_id: str, failures: list[str]) -> tuple[str, Any] | None:
        """The first of the session's hosts to answer ``ready`` (each started or replaced as
        needed), or None when every one fails."""
        if self._runtime.sessions_per_host == 1:
            names = [self.session_actor_name(session_id)]
        else:
            names = self._ranked(session_id, await self._host_count())
        isolation = self._runtime.sessions_per_host == 1
        waits = {
            asyncio.ensure_future(_call_host(_once(handle.ready).remote())): (name, handle)
            for name in names
            for handle in [self._handle(name, name, isolation)]
        }
        try:
            while waits:
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    name, handle = waits.pop(future)
                    error = future.exception()
                    if error is None:
                        return name, handle
                    if not isinstance(error, (ray.exceptions.RayError, HostStarting)):
                        raise error
                    if isinstance(error, ray.exceptions.RayActorError):
                        self._handles.pop(name, None)  # dead: replaced on the next call
                    failures.append(f"{name}: {_first_line(error)}")
            return None
        finally:
            for future in waits:
                future.cancel()  # the hosts go on starting: later calls find them ready

    def _skip(self, name: str, exc: BaseException) -> None:
        """Skip a host that died or is starting until it is ready again: watched (and a dead
        one replaced) in the background, so every call of this router goes to the same next
        host meanwhile and a session moves back once, not at every call."""
        self._mark_down(name, exc)
        if name.startswith(self.session_actor_prefix) or name in self._watching:
            return  # a session's own actor: Ray restarts it; calls wait for it
        task = asyncio.get_running_loop().create_task(self._watch(name))
        self._watching[name] = task
        task.add_done_callback(lambda _: self._watching.pop(name, None))

    async def _watch(self, name: str) -> None:
        with contextlib.suppress(DependencyUnavailable):
            await self._ensure(name, _WATCH_BACKOFF_S, patient=True)
            self._down.pop(name, None)

    # -- calls ------------------------------------------------------------------------------

    async def notify(
        self, session_id: str, turn_id: str | None = None, queued: QueuedTurn | None = None
    ) -> None:
        with _calling("notify", session_id, turn_id) as trace:
            await self._on_host(
                session_id,
                lambda host: _once(host.notify).remote(session_id, turn_id, trace, queued),
            )

    async def wait_turn(
        self,
        tenant_id: str,
        session_id: str,
        turn_id: str,
        after_seq: int,
        timeout_s: float,
        queued: QueuedTurn | None = None,
    ) -> TurnOutcome | None:
        with _calling("wait_turn", session_id, turn_id) as trace:
            outcome: TurnOutcome | None = await self._on_host(
                session_id,
                lambda host: _once(host.wait_turn).remote(
                    tenant_id, session_id, turn_id, after_seq, timeout_s, trace, queued
                ),
            )
        return outcome

    async def cancel(self, tenant_id: str, session_id: str, turn_id: str | None) -> bool:
        cancelled = await self._on_host(
            session_id, lambda host: _once(host.cancel).remote(tenant_id, session_id, turn_id)
        )
        return bool(cancelled)

    async def refresh(self, session_id: str) -> None:
        """Tell the session's host (if it has the session active) that events were committed
        elsewhere, so its live streams show them. Best effort: a stream opened later reads
        them from the store anyway."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                _call_host(_once(self.actor(session_id).refresh).remote(session_id)), 2.0
            )

    async def stream(
        self,
        tenant_id: str,
        session_id: str,
        after_seq: int = 0,
        until_turn: str | None = None,
        wake: bool = False,
    ) -> AsyncIterator[StreamItem]:
        """The host's stream, followed wherever the session goes: if its host dies, or ends
        the stream because the session moved to another host, the stream goes on from the
        session's host after the last event it delivered (waking the session there, so its
        open turn resumes). Ends after ``until_turn``'s outcome when given."""
        last = after_seq
        failures: list[str] = []
        quiet = 0  # host streams in a row that ended having delivered nothing
        while True:
            name, host = (await self._targets(session_id))[0]
            items = self._stream_from(host, tenant_id, session_id, last, until_turn, wake)
            delivered = False
            try:
                async for item in items:
                    delivered = True
                    if isinstance(item, EventBase):
                        last = item.seq
                    yield item
                    if isinstance(item, TURN_OUTCOMES) and item.turn_id == until_turn:
                        return
            except (ray.exceptions.RayActorError, HostStarting) as exc:
                self._skip(name, exc)
                failures.append(f"{name}: {_first_line(exc)}")
                if isinstance(exc, HostStarting) and len(failures) > 1:
                    await _call(_once(host.ready).remote())  # every host starting: wait
                elif len(failures) > self._runtime.standby_hosts + 1:
                    raise DependencyUnavailable(
                        "ray", f"session {session_id}: stream lost ({'; '.join(failures)})"
                    ) from None
            else:
                # The host ended it: the session moved (another host took it) or was drained.
                # Follow it, backing off while nothing comes through.
                quiet = 0 if delivered else quiet + 1
                await asyncio.sleep(min(0.05 * (2**quiet - 1), 2.0))
            wake = True  # the session's host now resumes whatever turn is open

    async def _stream_from(
        self,
        host: Any,
        tenant_id: str,
        session_id: str,
        after_seq: int,
        until_turn: str | None,
        wake: bool,
    ) -> AsyncIterator[StreamItem]:
        with _calling("stream", session_id, until_turn) as trace:
            generator: Any = host.stream.options(
                num_returns="streaming", max_task_retries=0
            ).remote(tenant_id, session_id, after_seq, until_turn, wake, trace)
            finished = False
            try:
                async for ref in generator:
                    yield await _call_host(ref)
                finished = True
            finally:
                if not finished:
                    # The consumer left early (client disconnected) or the host died: end the
                    # host's subscription now, or it would hold the session active until the
                    # next restart. A dead host has nothing left to cancel.
                    with contextlib.suppress(ray.exceptions.RayError, ValueError):
                        ray.cancel(generator)

    async def _host_set(self, count: int | None = None) -> list[tuple[str, Any]]:
        """(name, handle) of the placed hosts 0..count-1 and the standbys after them."""
        count = count or await self._host_count()
        names = [self._host_name(i) for i in range(count + self._runtime.standby_hosts)]
        return [(name, self._handle(name, name, False)) for name in names]

    async def ensure_hosts(self, count: int | None = None) -> list[HostStats]:
        """Create (if needed, replacing dead ones) and start hosts 0..count-1 and the standbys;
        their stats."""
        hosts = await self._host_set(count)
        return list(await asyncio.gather(*(self._ensure(name) for name, _ in hosts)))

    async def _ensure(
        self, name: str, delays: tuple[float, ...] = _WATCH_BACKOFF_S[:4], *, patient: bool = False
    ) -> HostStats:
        """Host ``name``'s stats once it is ready, created again after each of ``delays`` while
        it is dead (once the dead one's name is free); ``patient``: also while it cannot get
        ready yet (e.g. its database is down) instead of raising that."""
        for delay_s in delays:
            await asyncio.sleep(delay_s)
            try:
                ready = _once(self._handle(name, name, False).ready)
                stats: HostStats = await _call_host(ready.remote())
                return stats
            except ray.exceptions.RayActorError:
                self._handles.pop(name, None)  # dead: the next attempt creates its replacement
            except (ray.exceptions.RayError, HostStarting, DependencyUnavailable):
                if not patient:
                    raise
        raise DependencyUnavailable("ray", f"session host {name} could not be started")

    def warm_up(self) -> None:
        """Start the host set in the background (a new cluster's first calls then find ready
        hosts instead of scattering over starting ones). Best effort: the host controller keeps
        the set running anyway."""
        self._warming = asyncio.get_running_loop().create_task(self._warm_up())

    async def _warm_up(self) -> None:
        try:
            if self._runtime.sessions_per_host == 1:
                await self._host_count()  # isolation mode: only the controller's sweep
                return
            await self.ensure_hosts()
        except (ray.exceptions.RayError, DependencyUnavailable) as exc:
            log.warning("session hosts not started ahead of traffic: %s", _first_line(exc))

    async def host_loads(self) -> list[HostStats]:
        """The stats of every placed host and standby (waiting for one that is restarting)."""
        hosts = await self._host_set()
        return list(await asyncio.gather(*(_call(host.stats.remote()) for _, host in hosts)))

    async def live_loads(self) -> tuple[list[HostStats], bool]:
        """The stats of the placed hosts and standbys that answer now, and whether all did."""
        hosts = await self._host_set()
        names = [name for name, _ in hosts]
        answers = await asyncio.gather(
            *(_call_host(_once(host.stats).remote()) for _, host in hosts), return_exceptions=True
        )
        loads = [answer for answer in answers if isinstance(answer, HostStats)]
        for name, answer in zip(names, answers, strict=True):
            if isinstance(answer, ray.exceptions.RayActorError):
                self._skip(name, answer)
            elif isinstance(answer, BaseException):
                raise answer
        return loads, len(loads) == len(names)

    async def retire(self, index: int) -> None:
        """Drain and end host ``index``; what it was running is woken on its new host now."""
        name = self._host_name(index)
        try:
            handle = ray.get_actor(name, namespace=self._runtime.namespace)
        except ValueError:
            return
        try:
            busy: list[str] = await _call(handle.drain.remote())
        except DependencyUnavailable:
            busy = []  # dead already: the controller wakes its sessions on the next tick
        ray.kill(handle, no_restart=True)
        self._handles.pop(name, None)
        self._down.pop(name, None)
        for session_id in busy:
            with contextlib.suppress(DependencyUnavailable):
                await self.notify(session_id)

    async def drain_all(self) -> int:
        """Drain every host of this host set and every session's own actor, without creating
        any (``agentcluster down``): running turns are handed over, left open, and resume on
        the next start. Returns how many sessions were handed over."""
        handles = []
        for name in self.named_actors():
            with contextlib.suppress(ValueError):
                handles.append(ray.get_actor(name, namespace=self._runtime.namespace))
        timeout_s = self._runtime.drain_timeout_s + 5.0
        drained = await asyncio.gather(
            *(asyncio.wait_for(_call_host(_once(h.drain).remote()), timeout_s) for h in handles),
            return_exceptions=True,
        )
        for answer in drained:
            if isinstance(answer, BaseException) and not isinstance(
                answer, (ray.exceptions.RayError, TimeoutError, HostStarting)
            ):
                raise answer
        return sum(len(answer) for answer in drained if isinstance(answer, list))

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
        """The isolation-mode actor of a session, or the host it maps to while every host is up
        (for tests and benchmarks)."""
        if self._runtime.sessions_per_host == 1:
            name = self.session_actor_name(session_id)
            return self._handle(name, name, isolation=True)
        name = self._ranked(session_id, self._count)[0]
        return self._handle(name, name, isolation=False)


def _once(method: Any) -> Any:
    # No retry by Ray: a call to a dead or restarting host fails at once, and the router moves
    # the session to a live host instead of waiting for the restart.
    return method.options(max_task_retries=0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


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
        return await _call_host(ref)
    except ray.exceptions.RayActorError as exc:
        raise DependencyUnavailable("ray", f"session host unavailable: {exc}") from exc


async def _call_host(ref: Any) -> Any:
    """Await a host call: the host's own errors re-raised as themselves; Ray's actor errors
    (the host died or is restarting) passed on for the router to fail over."""
    try:
        return await ref
    except ray.exceptions.RayTaskError as exc:
        cause = exc.as_instanceof_cause()
        if isinstance(cause, Exception) and not isinstance(cause, ray.exceptions.RayTaskError):
            raise cause from None
        raise
