"""The store-backed TurnJournal: every step is a fenced transaction, then goes to the live feed."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from agentcluster import events as ev
from agentcluster import metrics, redact
from agentcluster.agent import TurnJournal, TurnNotOpen
from agentcluster.domain import TurnStatus
from agentcluster.events import Usage
from agentcluster.llm import LlmResult, ToolCallSpec
from agentcluster.runtime._feed import LiveFeed
from agentcluster.store import ActivationStore, JournalWriter
from agentcluster.tools import PolicyDecision, ToolOutcome

__all__ = ["StoreJournal"]


class StoreJournal(TurnJournal):
    """Records one session's turn steps with the owner epoch (a stale host cannot write), and
    the turn and tool call metrics; ``agent`` labels them (default: the agent bound with
    :func:`agentcluster.metrics.bind_agent` where the turn runs)."""

    def __init__(
        self,
        store: ActivationStore,
        tenant_id: str,
        session_id: str,
        epoch: int,
        feed: LiveFeed,
        on_outcome: Callable[[ev.TurnOutcome], None] | None = None,
        *,
        agent: str | None = None,
        quiet_seq: int | None = None,
    ) -> None:
        self._store = store
        self._tenant_id = tenant_id
        self._session_id = session_id
        self._epoch = epoch
        self._feed = feed
        self._on_outcome = on_outcome
        self._agent = agent
        self._last_answer: str | None = None
        # For metrics only: when each running turn started, and each call's policy decision.
        self._started: dict[str, float] = {}
        self._decisions: dict[str, Literal["allowed", "denied", "none"]] = {}
        # Turns a later message supersedes: the turn that does, and whether it rolls back.
        self._superseded: dict[str, tuple[str, bool]] = {}
        self.quiet_seq = quiet_seq
        """The seq the session's next event took when it last had no open turn, as this journal
        saw it commit (a turn's outcome with no other turn open); None once it wrote anything
        else. A turn whose message took exactly this seq is the only one open."""

    async def _write(
        self, change: Callable[[JournalWriter], Awaitable[None]], events: int = 1
    ) -> None:
        """Run ``change`` in one fenced transaction; ``events``: how many it emits (each step
        emits one), so their numbers come with the lock."""
        self.quiet_seq = None
        async with self._store.writer(self._session_id, epoch=self._epoch, events=events) as writer:
            await change(writer)
            # A turn ended (or paused: it still counts as open) and no turn is left open: the
            # session is quiet at the seq its next event takes, once this commits.
            ended = any(isinstance(event, ev.TURN_OUTCOMES) for event in writer.emitted)
            quiet = ended and not await writer.has_open_turns()
        if quiet:
            self.quiet_seq = writer.next_seq
        for event in writer.emitted:  # only after the commit: the feed never shows a rollback
            self._feed.publish(event)
            if isinstance(event, ev.TURN_OUTCOMES):
                self._measure_turn(event)
                if self._on_outcome is not None:
                    self._on_outcome(event)

    def _measure_turn(self, outcome: ev.TurnOutcome) -> None:
        started = self._started.pop(outcome.turn_id, None)
        seconds = None if started is None else time.perf_counter() - started
        metrics.record_turn(
            self._agent or metrics.current_agent(), outcome.type.removeprefix("turn."), seconds
        )

    def _ids(self) -> dict[str, str]:
        return {"tenant_id": self._tenant_id, "session_id": self._session_id}

    async def turn_started(self, turn_id: str, attempt: int, *, resumed: bool = False) -> None:
        async def change(writer: JournalWriter) -> None:
            recorded = await writer.start_turn(turn_id, resumed=resumed)
            if recorded is None:
                raise TurnNotOpen(turn_id)
            await writer.emit(
                ev.TurnStarted(**self._ids(), turn_id=turn_id, attempt=recorded, resumed=resumed)
            )

        await self._write(change)
        self._started[turn_id] = time.perf_counter()

    def watched(self) -> bool:
        return self._feed.subscribers > 0

    async def delta(self, turn_id: str, step: int, text: str) -> None:
        self._feed.publish_delta(turn_id, step, text)

    async def llm_completed(self, turn_id: str, step: int, result: LlmResult) -> None:
        calls = [call.model_dump() for call in result.tool_calls]

        async def change(writer: JournalWriter) -> None:
            self._last_answer = await writer.add_message(
                "assistant", result.content or "", turn_id=turn_id, tool_calls=calls or None
            )
            await writer.emit(
                ev.LlmCompleted(
                    **self._ids(),
                    turn_id=turn_id,
                    step=step,
                    model=result.model,
                    content=result.content,
                    tool_calls=calls,
                    usage=result.usage,
                    latency_ms=result.latency_ms,
                )
            )

        await self._write(change)

    async def tool_requested(
        self, turn_id: str, call: ToolCallSpec, arguments: dict[str, Any]
    ) -> None:
        async def change(writer: JournalWriter) -> None:
            await writer.record_tool_call(call.id, turn_id, call.name, arguments)
            await writer.emit(
                ev.ToolRequested(
                    **self._ids(),
                    turn_id=turn_id,
                    tool_call_id=call.id,
                    tool=call.name,
                    arguments=arguments,
                )
            )

        await self._write(change)

    async def tool_decided(
        self, turn_id: str, call: ToolCallSpec, decision: PolicyDecision
    ) -> None:
        async def change(writer: JournalWriter) -> None:
            verdict = "allow" if decision.allowed else "deny"
            status = "allowed" if decision.allowed else "denied"
            await writer.finish_tool_call(turn_id, call.id, status=status, decision=verdict)
            await writer.emit(
                ev.ToolDecided(
                    **self._ids(),
                    turn_id=turn_id,
                    tool_call_id=call.id,
                    tool=call.name,
                    allowed=decision.allowed,
                    reason=decision.reason,
                    engine=decision.engine,
                )
            )

        await self._write(change)
        self._decisions[call.id] = "allowed" if decision.allowed else "denied"

    async def tool_completed(
        self, turn_id: str, call: ToolCallSpec, outcome: ToolOutcome, content: str
    ) -> None:
        if not outcome.ok:  # error texts (a provider's, a library's) may quote a key
            outcome = outcome.model_copy(
                update={"error": outcome.error and redact.scrub(outcome.error)}
            )
            content = redact.scrub(content)

        async def change(writer: JournalWriter) -> None:
            await writer.add_message("tool", content, turn_id=turn_id, tool_call_id=call.id)
            await writer.finish_tool_call(
                turn_id,
                call.id,
                status="completed" if outcome.ok else "failed",
                result=outcome.model_dump(mode="json"),
            )
            await writer.emit(
                ev.ToolCompleted(
                    **self._ids(),
                    turn_id=turn_id,
                    tool_call_id=call.id,
                    tool=call.name,
                    ok=outcome.ok,
                    result=outcome.result,
                    error=outcome.error,
                    latency_ms=outcome.latency_ms,
                )
            )

        await self._write(change)
        decision = self._decisions.pop(call.id, "none")
        ran = decision == "allowed"
        seconds = outcome.latency_ms / 1000.0 if ran else None
        metrics.record_tool_call(call.name, decision, outcome.ok, seconds)

    async def approval_requested(
        self,
        turn_id: str,
        call: ToolCallSpec,
        arguments: dict[str, Any],
        reason: str,
        timeout_s: float,
    ) -> None:
        expires_at = datetime.now(UTC) + timedelta(seconds=timeout_s)
        reason = reason or f"tool {call.name} needs a person's approval"

        async def change(writer: JournalWriter) -> None:
            await writer.request_approval(turn_id, call.id, reason, expires_at)
            await writer.emit(
                ev.ToolApprovalRequested(
                    **self._ids(),
                    turn_id=turn_id,
                    tool_call_id=call.id,
                    tool=call.name,
                    arguments=arguments,
                    reason=reason,
                    expires_at=expires_at,
                )
            )

        await self._write(change)
        self._decisions.pop(call.id, None)

    async def turn_paused(self, turn_id: str, tool_call_ids: list[str], usage: Usage) -> None:
        async def change(writer: JournalWriter) -> None:
            webhook = await writer.pause_turn(turn_id, usage.model_dump())
            event = ev.TurnAwaitingApproval(
                **self._ids(), turn_id=turn_id, tool_call_ids=tool_call_ids
            )
            await _emit_outcome(writer, event, webhook)

        await self._write(change)

    async def turn_completed(self, turn_id: str, content: str, usage: Usage) -> None:
        async def change(writer: JournalWriter) -> None:
            answer = self._last_answer or await writer.add_message(
                "assistant", content, turn_id=turn_id
            )
            webhook = await writer.finish_turn(
                turn_id, "completed", usage=usage.model_dump(), answer_message_id=answer
            )
            completed = ev.TurnCompleted(
                **self._ids(), turn_id=turn_id, message_id=answer, content=content, usage=usage
            )
            await _emit_outcome(writer, completed, webhook)

        await self._write(change)

    async def turn_answered(self, turn_id: str, step: int, result: LlmResult, usage: Usage) -> None:
        """The answer, its ``llm.completed``, the turn's end and ``turn.completed`` in one
        transaction (a one-step turn commits twice: started, answered)."""
        content = result.content or ""

        async def change(writer: JournalWriter) -> None:
            answer = await writer.add_message("assistant", content, turn_id=turn_id)
            await writer.emit(
                ev.LlmCompleted(
                    **self._ids(),
                    turn_id=turn_id,
                    step=step,
                    model=result.model,
                    content=result.content,
                    usage=result.usage,
                    latency_ms=result.latency_ms,
                )
            )
            webhook = await writer.finish_turn(
                turn_id, "completed", usage=usage.model_dump(), answer_message_id=answer
            )
            completed = ev.TurnCompleted(
                **self._ids(), turn_id=turn_id, message_id=answer, content=content, usage=usage
            )
            await _emit_outcome(writer, completed, webhook)

        await self._write(change, events=2)

    async def turn_failed(
        self, turn_id: str, error_type: str, error: str, retryable: bool, usage: Usage
    ) -> None:
        error = redact.scrub(error)  # LiteLLM's texts may quote the key or the auth header
        await self._finish(
            turn_id,
            "failed",
            usage,
            error,
            ev.TurnFailed(
                **self._ids(),
                turn_id=turn_id,
                error_type=error_type,
                error=error,
                retryable=retryable,
            ),
        )

    def supersede(self, turn_id: str, by_turn: str, *, rollback: bool) -> None:
        """A later message (``by_turn``) interrupts or rolls back ``turn_id``: its cancel, by
        whichever path it comes (the running turn's task, or this journal for a queued one),
        records that, and a rollback hides the turn's messages from the model in the same
        transaction."""
        self._superseded[turn_id] = (by_turn, rollback)

    async def turn_cancelled(self, turn_id: str, reason: str, usage: Usage) -> None:
        superseded = self._superseded.pop(turn_id, None)
        if superseded is None:
            event = ev.TurnCancelled(**self._ids(), turn_id=turn_id, reason=reason)
            await self._finish(turn_id, "cancelled", usage, reason, event)
            return
        by_turn, rollback = superseded
        reason = f"{'rolled back' if rollback else 'interrupted'} by turn {by_turn}"
        event = ev.TurnCancelled(
            **self._ids(),
            turn_id=turn_id,
            reason=reason,
            superseded_by=by_turn,
            rolled_back=rollback,
        )

        async def change(writer: JournalWriter) -> None:
            webhook = await writer.finish_turn(
                turn_id, "cancelled", usage=usage.model_dump(), error=reason
            )
            if rollback:
                await writer.roll_back_messages(turn_id)
            await _emit_outcome(writer, event, webhook)

        await self._write(change)

    async def _finish(
        self, turn_id: str, status: TurnStatus, usage: Usage, error: str, event: ev.Event
    ) -> None:
        async def change(writer: JournalWriter) -> None:
            webhook = await writer.finish_turn(
                turn_id, status, usage=usage.model_dump(), error=error
            )
            await _emit_outcome(writer, event, webhook)

        await self._write(change)


async def _emit_outcome(writer: JournalWriter, event: ev.Event, webhook: str | None) -> None:
    """Record a turn's outcome event, and its webhook delivery in the same transaction."""
    stored = await writer.emit(event)
    if webhook is not None and isinstance(stored, ev.TURN_OUTCOMES):
        await writer.add_webhook_delivery(stored.turn_id, webhook, ev.dump_event(stored).decode())
