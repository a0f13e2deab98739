"""One activated session inside a host: its memory, its turn worker and its live feed.

Turns run one at a time in arrival order. The worker asks the store for the session's open turns
(ordered by when their message was committed), so a message committed by any gateway replica is
picked up in order once the host is told to look.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime

from agentcluster import tracing
from agentcluster.agent import TURN_HANDOVER, AgentLoop, TurnContext, TurnNotOpen
from agentcluster.domain import SUPERSEDING, Message, QueuedTurn, Session, Turn
from agentcluster.errors import StaleEpochError
from agentcluster.events import TurnAwaitingApproval, TurnOutcome, Usage
from agentcluster.llm import ChatMessage, ToolCallSpec
from agentcluster.logs import bound
from agentcluster.runtime._feed import LiveFeed
from agentcluster.runtime._journal import StoreJournal
from agentcluster.store import ActivationStore
from agentcluster.tracing import Carrier

__all__ = ["Activation", "history_from_messages", "is_resumed"]

log = logging.getLogger(__name__)

INTERRUPTED_TURN = "the turn was interrupted by a host restart"
RECENT_OUTCOMES = 64
"""Outcomes an activation remembers, so a waiter that arrives after its turn ended is answered."""
RECENT_TRACES = 256
"""Trace carriers of turns not started yet that an activation remembers (a turn whose carrier
was dropped, or that is resumed after a restart, starts a trace of its own)."""


def _chat(message: Message) -> ChatMessage:
    calls = [ToolCallSpec.model_validate(call) for call in message.tool_calls or []]
    return ChatMessage(
        role=message.role,
        content=message.content,
        tool_calls=calls or None,
        tool_call_id=message.tool_call_id,
    )


def history_from_messages(messages: list[Message], exclude_turns: set[str]) -> list[ChatMessage]:
    """The conversation as the model should see it: turn by turn, each turn's user message first.

    Messages are stored in commit order, where a queued message may sit between an earlier turn's
    steps; grouping by turn restores the conversation. Turns in ``exclude_turns`` (queued, not yet
    started) are left out: a turn only sees messages that arrived before it; so are messages a
    later message rolled back.
    """
    order: list[str] = []
    by_turn: dict[str, list[Message]] = defaultdict(list)
    for message in messages:
        key = message.turn_id or message.message_id
        if key in exclude_turns or message.rolled_back:
            continue
        if key not in by_turn:
            order.append(key)
        by_turn[key].append(message)
    history: list[ChatMessage] = []
    for key in order:
        group = by_turn[key]
        group.sort(key=lambda m: m.role != "user")  # stable: user first, the rest in commit order
        history.extend(_chat(message) for message in group)
    return history


class Activation:
    """A live session: owns the epoch it claimed and the history it loaded."""

    def __init__(
        self,
        session: Session,
        epoch: int,
        history: list[ChatMessage],
        store: ActivationStore,
        loop: AgentLoop,
        *,
        on_touch: Callable[[str], None] | None = None,
        on_running: Callable[[int], None] | None = None,
        quiet_seq: int | None = None,
    ) -> None:
        """``on_touch(session_id)`` is told each time it is used (its host keeps sessions in
        the order of their last use, for passivation); ``on_running(+1 | -1)`` when a turn
        starts and ends running here (its host's count); ``quiet_seq``: the session had no open
        turn when its next event was to take this seq (as loaded)."""
        self.session = session
        self.epoch = epoch
        self.history = history
        self.feed = LiveFeed(session.session_id)
        self._store = store
        self._loop = loop
        self._journal = StoreJournal(
            store,
            session.tenant_id,
            session.session_id,
            epoch,
            self.feed,
            self._turn_ended,
            agent=session.agent,
            quiet_seq=quiet_seq,
        )
        self._outcomes: OrderedDict[str, TurnOutcome] = OrderedDict()
        self._waiters: dict[str, list[asyncio.Future[TurnOutcome | None]]] = defaultdict(list)
        self._traces: OrderedDict[str, Carrier] = OrderedDict()
        self._worker: asyncio.Task[None] | None = None
        self._turn_task: asyncio.Task[object] | None = None
        self._current_turn: str | None = None
        self._wake = asyncio.Event()
        # Turns the wakes brought as they were queued (by the seq of their message), and whether
        # a wake came without one: the worker then reads the open turns from the store.
        self._queued: dict[int, QueuedTurn] = {}
        self._must_read = False
        self._checks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.stale = False
        self.last_active = time.monotonic()
        self._on_touch = on_touch
        self._on_running = on_running

    def touch(self) -> None:
        """It was used now: idle from here on."""
        self.last_active = time.monotonic()
        if self._on_touch is not None:
            self._on_touch(self.session.session_id)

    @property
    def session_id(self) -> str:
        return self.session.session_id

    @property
    def busy(self) -> bool:
        return self._worker is not None and not self._worker.done()

    @property
    def current_turn(self) -> str | None:
        return self._current_turn

    def pump(
        self,
        turn_id: str | None = None,
        trace: Carrier | None = None,
        queued: QueuedTurn | None = None,
    ) -> None:
        """Make sure the worker looks for open turns (idempotent).

        Args:
            turn_id: a turn the caller queued or waits for: when it runs, it continues the
                caller's trace (``trace``, by default the active span's).
            queued: ``turn_id`` as it was queued: the worker runs it without reading the open
                turns when it knows it is the only one (see :meth:`_next_turns`).
        """
        if turn_id is not None:
            self._remember_trace(turn_id, tracing.carrier() if trace is None else trace)
        if queued is not None and queued.turn_id == turn_id:
            self._queued[queued.seq] = queued
            while len(self._queued) > RECENT_OUTCOMES:
                del self._queued[min(self._queued)]
        else:
            self._must_read = True
        self.touch()
        self._wake.set()
        if not self.busy:
            self._worker = asyncio.create_task(self._work(), name=f"session-{self.session_id}")
        elif turn_id is not None and self._turn_task is not None and turn_id != self._current_turn:
            # A message arrived while a turn runs: if it interrupts or rolls back, the running
            # turn stops now rather than when it ends (the worker cancels the rest).
            check = asyncio.create_task(self._interrupt_if_superseded())
            self._checks.add(check)
            check.add_done_callback(self._checks.discard)

    async def wait_outcome(
        self, turn_id: str, timeout_s: float, queued: QueuedTurn | None = None
    ) -> TurnOutcome | None:
        """Pump (with the turn as ``queued``, if given), then wait for ``turn_id``'s outcome
        event; None when it does not come from this activation (it ended elsewhere or earlier,
        the session moved) or not within the time."""
        known = self._outcomes.get(turn_id)
        if isinstance(known, TurnAwaitingApproval) and not await self._still_paused(turn_id):
            del self._outcomes[turn_id]  # decided since: wait for where the resumed turn ends
            known = None
        if known is not None:
            return known
        waiter: asyncio.Future[TurnOutcome | None] = asyncio.get_running_loop().create_future()
        self._waiters[turn_id].append(waiter)
        self.pump(turn_id, queued=queued)
        try:
            async with asyncio.timeout(timeout_s):
                return await waiter
        except TimeoutError:
            return None
        finally:
            waiters = self._waiters.get(turn_id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[turn_id]

    async def _still_paused(self, turn_id: str) -> bool:
        turns = await self._store.open_turns(self.session_id)
        return any(t.turn_id == turn_id and t.status == "awaiting_approval" for t in turns)

    def _remember_trace(self, turn_id: str, trace: Carrier) -> None:
        # The first caller's wins: the request that queued the turn, not a later waiter.
        if trace and turn_id not in self._traces:
            self._traces[turn_id] = trace
            while len(self._traces) > RECENT_TRACES:
                self._traces.popitem(last=False)

    def _turn_ended(self, outcome: TurnOutcome) -> None:
        self._outcomes[outcome.turn_id] = outcome
        while len(self._outcomes) > RECENT_OUTCOMES:
            self._outcomes.popitem(last=False)
        self._settle(outcome.turn_id, outcome)

    def _settle(self, turn_id: str, outcome: TurnOutcome | None) -> None:
        for waiter in self._waiters.pop(turn_id, []):
            if not waiter.done():
                waiter.set_result(outcome)

    def _settle_unknown(self, open_turns: set[str]) -> None:
        # A waited-for turn that is neither open nor ended here ended before this activation
        # saw it: its waiters look in the store instead.
        for turn_id in [t for t in self._waiters if t not in open_turns]:
            self._settle(turn_id, self._outcomes.get(turn_id))

    async def _work(self) -> None:
        # The worker outlives the call that started it: its turns hang under their own traces.
        with tracing.detached():
            await self._work_turns()

    async def _work_turns(self) -> None:
        try:
            while self._wake.is_set() and not self.stale and not self._stopping:
                self._wake.clear()
                turns = await self._next_turns()
                if turns and turns[0][0].status == "awaiting_approval":
                    break  # it and the turns after it wait for a person's decisions
                if turns and not self.stale and not self._stopping:
                    # One turn, then look again only if woken meanwhile (a message arrived,
                    # a cancel came) or more were open: no query after every turn.
                    turn, prompt = turns[0]
                    await self._run(turn, prompt)
                    if len(turns) > 1:
                        self._wake.set()
        except StaleEpochError:
            self.stale = True
            self.feed.close()
        # A worker must never die silently with turns pending: log it; the next message or the
        # host's reconcile tick pumps again.
        except Exception:
            log.exception("session %s: turn worker failed", self.session_id)
        finally:
            self.touch()
            if self.stale:
                for turn_id in list(self._waiters):
                    self._settle(turn_id, None)

    async def _next_turns(self) -> list[tuple[Turn, str]]:
        """The open turns to run, in order: read from the store, unless a wake brought the
        turn whose message took the very seq at which the session last had no open turn (its
        journal saw that commit). Nothing else was written to the session in between, so that
        turn is the only one open: the read would find just it."""
        quiet = self._journal.quiet_seq
        queued = None if self._must_read or quiet is None else self._queued.pop(quiet, None)
        if queued is not None:
            return [(_queued_turn(queued, self.session), queued.prompt)]
        self._must_read = False
        self._queued.clear()  # what the read finds covers them
        turns = await self._store.open_turns_with_prompts(self.session_id)
        self._settle_unknown({turn.turn_id for turn, _prompt in turns})
        return await self._supersede(turns)

    async def _run(self, turn: Turn, prompt: str) -> None:
        profile = self._loop.profile
        interrupted = turn.status == "running"
        resumed = is_resumed(turn)
        if interrupted and (
            profile.turn_retry.on_interrupt == "fail"
            or turn.attempt >= profile.turn_retry.max_attempts
        ):
            await self._journal.turn_failed(
                turn.turn_id, "HostRestarted", INTERRUPTED_TURN, False, _usage(turn)
            )
            return
        if not interrupted and not resumed:
            if turn.strategy == "rollback":
                await self._reload_history()  # without what it rolled back
            self.history.append(ChatMessage(role="user", content=prompt))
        context = TurnContext(
            tenant_id=self.session.tenant_id,
            session_id=self.session_id,
            turn_id=turn.turn_id,
            agent=self.session.agent,
            attempt=turn.attempt if resumed else turn.attempt + 1,
            resumed=resumed,
        )
        prior_steps = await self._prior_steps(turn) if interrupted or resumed else 0
        approvals = None
        if interrupted or resumed:  # its last step's calls may have been sent to a person
            approvals = await self._store.turn_approvals(self.session_id, turn.turn_id)
        self._current_turn = turn.turn_id
        if self._on_running is not None:
            self._on_running(1)
        started = time.monotonic()
        ids = {"tenant_id": self.session.tenant_id, "session_id": self.session_id}
        span = self._turn_span(context)
        # The turn's task, its logs and its events carry the ids and the turn's span.
        with bound(**ids, turn_id=turn.turn_id), tracing.use(span):
            self._turn_task = asyncio.create_task(
                self._loop.run_turn(
                    context,
                    self.history,
                    self._journal,
                    prior_steps=prior_steps,
                    approvals=approvals,
                    prior_usage=_usage(turn) if resumed else None,
                )
            )
        try:
            result = await self._turn_task
            if getattr(result, "status", None) == "awaiting_approval":
                self._wake.set()  # look again: all may have been decided meanwhile
            span.set_attribute("agentcluster.turn.status", getattr(result, "status", "ended"))
            with bound(**ids, turn_id=turn.turn_id), tracing.use(span):
                log.info(
                    "turn %s: %s after %d step(s) in %.0f ms (attempt %d)",
                    turn.turn_id,
                    getattr(result, "status", "ended"),
                    getattr(result, "steps", 0),
                    (time.monotonic() - started) * 1000,
                    context.attempt,
                )
        except TurnNotOpen:  # cancelled or superseded between being read and starting
            span.set_attribute("agentcluster.turn.status", "not-open")
        except asyncio.CancelledError:
            span.set_attribute("agentcluster.turn.status", "cancelled")
            worker = asyncio.current_task()
            if worker is not None and worker.cancelling():
                raise  # the worker itself is being stopped, not just the turn
        except Exception as exc:
            tracing.mark_error(span, exc)
            raise
        finally:
            span.end()
            self._current_turn = None
            if self._on_running is not None:
                self._on_running(-1)
            self._turn_task = None
            self.touch()

    def _turn_span(self, context: TurnContext) -> tracing.Span:
        """The turn's span (GenAI ``invoke_agent``), under the trace of the request that queued
        it; a new trace when that is unknown (a resumed turn, a carrier dropped)."""
        return tracing.start_span(
            f"invoke_agent {context.agent}",
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": context.agent,
                "agentcluster.tenant_id": context.tenant_id,
                "agentcluster.session_id": context.session_id,
                "agentcluster.turn_id": context.turn_id,
                "agentcluster.turn.attempt": context.attempt,
            },
            parent=self._traces.pop(context.turn_id, {}),
        )

    async def _supersede(self, turns: list[tuple[Turn, str]]) -> list[tuple[Turn, str]]:
        """Cancel the open turns before the last ``interrupt`` or ``rollback`` message (durable:
        also when the message arrived while the session had no host); returns those left."""
        last = _last_superseding(turns)
        if last <= 0:
            return turns
        by_turn = turns[last][0]
        for turn, _prompt in turns[:last]:
            rollback = by_turn.strategy == "rollback"
            self._journal.supersede(turn.turn_id, by_turn.turn_id, rollback=rollback)
            await self._journal.turn_cancelled(turn.turn_id, "", _usage(turn))
        return turns[last:]

    async def _interrupt_if_superseded(self) -> None:
        running, task = self._current_turn, self._turn_task
        try:
            turns = await self._store.open_turns_with_prompts(self.session_id)
        except Exception:  # the worker applies it when it looks next; nothing is lost
            log.warning("session %s: could not check for an interrupt", self.session_id)
            return
        last = _last_superseding(turns)
        before = {turn.turn_id for turn, _prompt in turns[: max(last, 0)]}
        if running in before and task is self._turn_task and task is not None:
            by_turn = turns[last][0]
            self._journal.supersede(
                running, by_turn.turn_id, rollback=by_turn.strategy == "rollback"
            )
            task.cancel()

    async def _reload_history(self) -> None:
        messages = await self._store.list_messages(self.session.tenant_id, self.session_id)
        queued = {t.turn_id for t in await self._store.open_turns(self.session_id)}
        self.history[:] = history_from_messages(messages, exclude_turns=queued)

    async def _prior_steps(self, turn: Turn) -> int:
        messages = await self._store.list_messages(self.session.tenant_id, self.session_id)
        return sum(1 for m in messages if m.turn_id == turn.turn_id and m.role == "assistant")

    async def cancel(self, turn_id: str | None) -> bool:
        """Cancel the running turn (at its next await), the one waiting for a person (also when
        ``turn_id`` is None) or a queued one; True if one was found."""
        if self._turn_task is not None and turn_id in (None, self._current_turn):
            self._turn_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._turn_task)
            return True
        # Queued, paused, or left running by a host the session moved from and not started
        # here yet (once it ends here, starting it finds it closed: TurnNotOpen).
        for turn in await self._store.open_turns(self.session_id):
            paused = turn.status == "awaiting_approval"
            if turn.turn_id == turn_id or (turn_id is None and paused):
                reason = (
                    "cancelled while awaiting approval" if paused else "cancelled before it started"
                )
                await self._journal.turn_cancelled(turn.turn_id, reason, _usage(turn))
                return True
        return False

    async def stop(self) -> None:
        """Stop the worker (host shutdown or passivation) and end live subscriptions. A turn
        still running is handed over, not cancelled: it stays open in the store and the
        session's next host resumes it."""
        self._stopping = True  # no next turn starts
        turn = self._turn_task
        if turn is not None and not turn.done():
            # Ended first, alone: a cancel of the worker would reach it too, without the
            # handover message, and record the turn as cancelled.
            turn.cancel(TURN_HANDOVER)
            await asyncio.wait([turn])  # whatever it ends with, the worker reports it
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for turn_id in list(self._waiters):
            self._settle(turn_id, None)  # they look in the store (or the next host) instead
        self.feed.close()


def _queued_turn(queued: QueuedTurn, session: Session) -> Turn:
    """The turn as the store has it just after it was queued."""
    return Turn(
        turn_id=queued.turn_id,
        session_id=session.session_id,
        tenant_id=session.tenant_id,
        message_id=queued.message_id,
        status="queued",
        attempt=0,
        created_at=datetime.now(UTC),
        strategy=queued.strategy,
    )


def is_resumed(turn: Turn) -> bool:
    """A queued turn that ran before: its tool calls were decided by a person and it goes on
    where it paused (a queued turn never started begins with its message)."""
    return turn.status == "queued" and turn.started_at is not None


def _last_superseding(turns: list[tuple[Turn, str]]) -> int:
    """The index of the last open turn sent with ``interrupt`` or ``rollback`` (-1: none)."""
    for index in range(len(turns) - 1, -1, -1):
        if turns[index][0].strategy in SUPERSEDING:
            return index
    return -1


def _usage(turn: Turn) -> Usage:
    return Usage.model_validate(turn.usage or {})
