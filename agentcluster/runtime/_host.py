"""SessionHostCore: many virtual actors (sessions) in one process. Plain Python; the Ray actor in
``actors/session.py`` only wraps it.

Activation claims the session with a new fencing epoch, loads its history and open turns from the
store; passivation stops the worker, releases ownership and frees the memory. A host that restarts
(same name, new process) finds the sessions it owned that still have open turns and resumes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from agentcluster import metrics
from agentcluster._gc import settle_long_lived_objects
from agentcluster.agent import AgentLoop
from agentcluster.domain import QueuedTurn
from agentcluster.errors import ConfigError, NotFoundError
from agentcluster.events import TURN_OUTCOMES, EventBase, TurnOutcome
from agentcluster.runtime._activation import Activation, history_from_messages, is_resumed
from agentcluster.runtime._feed import Refresh, StreamItem
from agentcluster.store import ActivationStore
from agentcluster.tracing import Carrier

__all__ = ["HostStats", "RuntimeDeps", "SessionHostCore"]

log = logging.getLogger(__name__)


@dataclass
class RuntimeDeps:
    """What a host needs, built once per process (at the edge, by
    ``actors.compose.build_runtime_deps``)."""

    store: ActivationStore
    loops: dict[str, AgentLoop]


class HostStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    host_id: str
    owner_id: str = ""
    """The owner id this process writes into the sessions it claims (name and incarnation)."""
    active_sessions: int
    running_turns: int
    subscribers: int
    activations: int
    passivations: int


class SessionHostCore:
    """Hosts sessions; every public coroutine is safe to call concurrently."""

    def __init__(
        self,
        host_id: str,
        deps_factory: Callable[[], Awaitable[RuntimeDeps]],
        *,
        idle_passivate_s: float = 300.0,
        reconcile_interval_s: float = 5.0,
        recover_own: bool = True,
    ) -> None:
        self.host_id = host_id
        # What the store records as a session's owner: this process, not just its name, so a
        # host that Ray restarted under the same name never passes for the one that died.
        self.owner_id = f"{host_id}~{uuid.uuid4().hex[:8]}"
        self._recover_own = recover_own
        self._deps_factory = deps_factory
        self._deps: RuntimeDeps | None = None
        self._ready_lock = asyncio.Lock()
        self._idle_passivate_s = idle_passivate_s
        self._reconcile_interval_s = reconcile_interval_s
        # In the order of last use (a use moves a session to the end): the idle ones first.
        self._activations: dict[str, Activation] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._running_turns = 0
        self._subscribers = 0
        self._reconciler: asyncio.Task[None] | None = None
        self.activations_total = 0
        self.passivations_total = 0

    async def _ready(self) -> RuntimeDeps:
        if self._deps is None:
            async with self._ready_lock:
                if self._deps is None:
                    self._deps = await self._deps_factory()
                    settle_long_lived_objects()
                    self._reconciler = asyncio.create_task(self._reconcile_forever())
                    await self._recover(self._deps)
        return self._deps

    async def start(self) -> None:
        """Build dependencies and resume sessions this host owned before a restart."""
        await self._ready()

    @property
    def warm(self) -> bool:
        """Whether the dependencies are built (calls will not wait for them)."""
        return self._deps is not None

    async def _recover(self, deps: RuntimeDeps) -> None:
        # Sessions that earlier processes of this name left with open turns. Only where no
        # other host may take them (isolation mode: the actor is the session's own); elsewhere
        # the host controller wakes them on whichever host is live, at once.
        if not self._recover_own:
            return
        for session_id in await deps.store.sessions_with_open_turns(
            f"{self.host_id}~", prefix=True
        ):
            (await self._activate(session_id)).pump()

    # -- activation -------------------------------------------------------------------------

    async def _activate(self, session_id: str) -> Activation:
        # Ready first, outside the session lock: recovery activates sessions itself.
        deps = await self._ready()
        active = self._activations.get(session_id)
        if active is None or active.stale:
            lock = self._locks.setdefault(session_id, asyncio.Lock())
            async with lock:
                active = self._activations.get(session_id)
                if active is None or active.stale:
                    active = await self._load(deps, session_id)
                    self._activations.pop(session_id, None)  # a stale one: to the end, fresh
                    self._activations[session_id] = active
                    self.activations_total += 1
                    metrics.record_session_activated(self.host_id)
        # Refreshed on use: Ray stops exporting a gauge that is not set again for a while.
        metrics.record_sessions_active(self.host_id, len(self._activations))
        # Turns pumped from this context label their metrics with the session's agent.
        metrics.bind_agent(active.session.agent)
        return active

    async def _load(self, deps: RuntimeDeps, session_id: str) -> Activation:
        # One transaction: claim (new epoch), history and open turns.
        loaded = await deps.store.activate_session(session_id, self.owner_id)
        session = loaded.session
        loop = deps.loops.get(session.agent)
        if loop is None:
            raise ConfigError(f"session {session_id}: agent {session.agent!r} has no profile")
        # Turns not started yet see nothing of each other; a paused or resuming one has its
        # steps in the history.
        queued = {
            t.turn_id for t in loaded.open_turns if t.status == "queued" and not is_resumed(t)
        }
        history = history_from_messages(loaded.messages, exclude_turns=queued)
        activation = Activation(
            session,
            session.owner_epoch,
            history,
            deps.store,
            loop,
            on_touch=self._touched,
            on_running=self._count_running,
            quiet_seq=None if loaded.open_turns or not loaded.next_seq else loaded.next_seq,
        )
        if loaded.open_turns:
            # Whatever brought the session here, its open turns run here now: the host it left
            # (fenced from this epoch on) will not finish them. The worker starts only once the
            # caller yields, after a stream has subscribed.
            activation.pump()
        return activation

    def _touched(self, session_id: str) -> None:
        # Moved to the end: passivation reads from the front, the least recently used.
        activation = self._activations.pop(session_id, None)
        if activation is not None:
            self._activations[session_id] = activation

    def _count_running(self, delta: int) -> None:
        self._running_turns += delta

    def refresh(self, session_id: str) -> bool:
        """Events were committed for the session outside this host (a webhook attempt): its
        live streams here read them from the store. False when it is not active here."""
        activation = self._activations.get(session_id)
        if activation is None:
            return False
        activation.feed.publish(Refresh(session_id=session_id))
        return True

    async def notify(
        self, session_id: str, turn_id: str | None = None, queued: QueuedTurn | None = None
    ) -> None:
        """A message was committed for this session: activate it and run its open turns
        (``turn_id``, the turn just queued, continues the active trace when it runs; ``queued``:
        that turn as it was queued, which spares the read of the open turns when it is the only
        one)."""
        (await self._activate(session_id)).pump(turn_id, queued=queued)

    async def wait_turn(
        self,
        tenant_id: str,
        session_id: str,
        turn_id: str,
        after_seq: int,
        timeout_s: float,
        queued: QueuedTurn | None = None,
    ) -> TurnOutcome | None:
        """Run the session's open turns and wait for ``turn_id``'s outcome event: what
        :meth:`notify` then :meth:`stream` until the outcome would give, in one call and without
        sending every delta. None when no outcome came within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        activation = await self._owned(tenant_id, session_id)
        outcome = await activation.wait_outcome(turn_id, timeout_s, queued)
        remaining = deadline - time.monotonic()
        if outcome is not None or remaining <= 0:
            return outcome
        # The turn ended before this activation saw it, or the session moved: read the store.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                async for item in self.stream(tenant_id, session_id, after_seq, turn_id):
                    if isinstance(item, TURN_OUTCOMES) and item.turn_id == turn_id:
                        return item
        return None

    async def cancel(self, tenant_id: str, session_id: str, turn_id: str | None) -> bool:
        activation = await self._owned(tenant_id, session_id)
        return await activation.cancel(turn_id)

    async def _owned(self, tenant_id: str, session_id: str) -> Activation:
        activation = await self._activate(session_id)
        if activation.session.tenant_id != tenant_id:
            raise NotFoundError(f"session {session_id} not found")
        return activation

    async def stream(
        self,
        tenant_id: str,
        session_id: str,
        after_seq: int = 0,
        until_turn: str | None = None,
        wake: bool = False,
        trace: Carrier | None = None,
    ) -> AsyncIterator[StreamItem]:
        """Persisted events after ``after_seq``, then live deltas and events, without gap or
        duplicate. Ends after ``until_turn``'s terminal event when given, or when the session is
        passivated or moves to another host (resubscribe with the last seq seen). A woken
        ``until_turn`` continues the trace of ``trace`` (default: the active one)."""
        activation = await self._owned(tenant_id, session_id)
        deps = await self._ready()
        queue = activation.feed.subscribe()  # first: nothing committed from now on is missed
        self._subscribers += 1
        if wake:
            activation.pump(until_turn, trace)  # after subscribing: no delta can pass unseen
        try:
            last = after_seq
            while True:
                page = await deps.store.list_events(tenant_id, session_id, after_seq=last)
                for event in page:
                    last = event.seq
                    yield event
                    if _ends(event, until_turn):
                        return
                if len(page) < 1000:
                    break
            while (item := await queue.get()) is not None:
                if isinstance(item, Refresh) or (
                    isinstance(item, EventBase) and item.seq > last + 1
                ):
                    # Events other processes committed (a message the gateway accepted, a
                    # webhook attempt): from the store, in order, before this one.
                    for event in await deps.store.list_events(
                        tenant_id, session_id, after_seq=last
                    ):
                        last = event.seq
                        yield event
                        if _ends(event, until_turn):
                            return
                    continue
                if isinstance(item, EventBase):
                    if item.seq <= last:
                        continue
                    last = item.seq
                yield item
                if _ends(item, until_turn):
                    return
        finally:
            activation.feed.unsubscribe(queue)
            self._subscribers -= 1
            activation.touch()

    # -- passivation ------------------------------------------------------------------------

    async def passivate(self, session_id: str, *, release: bool = True) -> bool:
        """Stop and forget an activation, releasing ownership (unless ``release`` is False);
        False if it is not here."""
        activation = self._activations.pop(session_id, None)
        if activation is None:
            return False
        lock = self._locks.get(session_id)
        if lock is not None and not lock.locked():
            del self._locks[session_id]
        await activation.stop()
        if release and not activation.stale and self._deps is not None:
            await self._deps.store.release_session(session_id, activation.epoch)
        self.passivations_total += 1
        metrics.record_session_passivated(self.host_id)
        metrics.record_sessions_active(self.host_id, len(self._activations))
        return True

    async def passivate_idle(self, idle_s: float | None = None) -> int:
        """Passivate sessions idle for ``idle_s`` (default: the configured idle time).

        Reads the sessions from the least recently used and stops at the first one used within
        ``idle_s``: the work is what went idle (and the few busy ones among them), not every
        session the host holds."""
        limit = self._idle_passivate_s if idle_s is None else idle_s
        now = time.monotonic()
        idle: list[str] = []
        for session_id, a in self._activations.items():
            if now - a.last_active < limit:
                break  # every later one was used more recently
            if a.stale or (not a.busy and a.feed.subscribers == 0):
                idle.append(session_id)
        for session_id in idle:
            await self.passivate(session_id)
        return len(idle)

    async def _reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(self._reconcile_interval_s)
            # One bad tick (a database blip during release) must not end passivation for good.
            try:
                await self.passivate_idle()
            except Exception:
                log.exception("host %s: reconcile tick failed", self.host_id)

    def stats(self) -> HostStats:
        """Counts kept as sessions change: constant time, whatever the host holds."""
        return HostStats(
            host_id=self.host_id,
            owner_id=self.owner_id,
            active_sessions=len(self._activations),
            running_turns=self._running_turns,
            subscribers=self._subscribers,
            activations=self.activations_total,
            passivations=self.passivations_total,
        )

    def active_session_ids(self) -> list[str]:
        return list(self._activations)

    def busy_session_ids(self) -> list[str]:
        """Sessions with a turn running or waiting here."""
        return [session_id for session_id, a in self._activations.items() if a.busy]

    async def stop(self, *, hand_over: bool = False) -> list[str]:
        """Passivate everything and stop the reconciler; returns the sessions that had a turn
        running or queued.

        Args:
            hand_over: leave those sessions owned by this process (their running turn stopped
                at once and left open, not recorded cancelled), so whichever host controller
                sees the process gone wakes them on a live host without waiting; the others are
                released. Without it every session is released.
        """
        busy = self.busy_session_ids()
        if self._reconciler is not None:
            self._reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconciler
        for session_id in list(self._activations):
            await self.passivate(session_id, release=not (hand_over and session_id in busy))
        return busy


def _ends(item: StreamItem, until_turn: str | None) -> bool:
    return isinstance(item, TURN_OUTCOMES) and item.turn_id == until_turn
