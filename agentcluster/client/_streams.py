"""Following an event stream across connections, without I/O: both transports drive these.

A tail is fed the lines of one connection at a time. It drops events it has already yielded
(by ``seq``), remembers the last seq so the next connection resumes after it (``Last-Event-ID``),
and decides after each connection whether to reconnect, how long to wait, or to give up.
"""

from __future__ import annotations

from typing import Any

import httpx

from agentcluster.api import Delta
from agentcluster.client import _calls as calls
from agentcluster.client._calls import Call, RetryPolicy
from agentcluster.client._errors import ConnectionFailed
from agentcluster.client._sse import Overflowed, SSEDecoder, StreamItem, decode

__all__ = ["TURN_ENDS", "EventTail", "TurnEventTail", "TurnTail", "ends_turn"]

TURN_ENDS = frozenset({"turn.completed", "turn.failed", "turn.cancelled", "turn.awaiting_approval"})
"""What a turn's stream stops at: its outcome, or its pause for approvals
(``turn.awaiting_approval``: the turn resumes under the same id once they are decided; the
clients' ``follow_turn`` reads on from there)."""


def ends_turn(item: object, turn_id: str | None) -> bool:
    """Whether ``item`` ends (or pauses) the turn ``turn_id``."""
    return getattr(item, "type", None) in TURN_ENDS and _turn_id(item) == turn_id


class EventTail:
    """The events of one session after ``after``, across as many connections as it takes.

    Args:
        follow: reconnect when the server ends the stream; without it, one connection is read to
            its end (an ``overflow`` still resumes: the events it skipped are not lost).
        policy: ``retries`` bounds consecutive connections that fail without receiving anything;
            any received line, heartbeats included, resets the count.
    """

    def __init__(self, session_id: str, *, after: int, follow: bool, policy: RetryPolicy) -> None:
        self.session_id = session_id
        self.last_seq = after
        self.follow = follow
        self.done = False
        self._policy = policy
        self._decoder = SSEDecoder()
        self._failures = 0
        self._received = False
        self._overflowed = False
        self._retry_ms: int | None = None

    def next_call(self) -> Call[httpx.Response]:
        """The request for the next connection; resets per-connection state."""
        self._decoder = SSEDecoder()
        self._received = False
        self._overflowed = False
        return self._call()

    def _call(self) -> Call[httpx.Response]:
        return calls.events(self.session_id, self.last_seq)

    @property
    def interrupted(self) -> bool:
        """Stop reading this connection: the stream is finished or the server dropped us."""
        return self.done or self._overflowed

    def feed(self, line: str) -> StreamItem | None:
        """Take one line of the current connection; return an item to yield, if it completes one."""
        self._received = True
        sse = self._decoder.feed(line)
        if sse is None:
            return None
        if sse.retry is not None:
            self._retry_ms = sse.retry
        item = decode(sse)
        if isinstance(item, Overflowed):
            self._overflowed = True
            return None
        if item is None:
            # An event type this client does not know: skip it, but resume after it.
            if sse.id is not None and sse.id.isdigit():
                self.last_seq = max(self.last_seq, int(sse.id))
            return None
        return self._accept(item)

    def _accept(self, item: StreamItem) -> StreamItem | None:
        if isinstance(item, Delta):
            return item if self._wanted(item) else None
        if item.seq <= self.last_seq:
            return None  # already yielded before a reconnect
        self.last_seq = item.seq
        if not self._wanted(item):
            return None
        self.done = self._ends(item)
        return item

    def _wanted(self, item: StreamItem) -> bool:
        return True

    def _ends(self, item: StreamItem) -> bool:
        return item.type == "session.closed"

    def reconnect_delay(self, error: httpx.TransportError | None) -> float | None:
        """After a connection ended (``error`` if it broke): seconds to wait before the next
        connection, or None when the stream is over.

        Raises:
            ConnectionFailed: the connection broke and reconnecting is not allowed or has failed
                ``retries`` times in a row.
        """
        if self.done:
            return None
        if not (self.follow or self._overflowed):
            if error is not None:
                raise self._failed(error) from error
            return None
        if self._received:
            self._failures = 0
            if error is None:
                return (self._retry_ms or 0) / 1000
        if self._failures >= self._policy.retries:
            raise self._failed(error) from error
        delay = self._policy.backoff_delay(self._failures)
        self._failures += 1
        return delay

    def _failed(self, error: httpx.TransportError | None) -> ConnectionFailed:
        reason = f"{type(error).__name__}: {error}" if error else "the server ended it at once"
        return ConnectionFailed(
            f"event stream of session {self.session_id} after seq {self.last_seq}: {reason}"
        )


class TurnEventTail(EventTail):
    """The items of one known turn, read from the session's event stream after ``after``, until
    the turn's outcome or its next pause: what follows a decided ``turn.awaiting_approval``
    (pass that event's seq as ``after``)."""

    def __init__(
        self, session_id: str, turn_id: str | None, *, after: int, policy: RetryPolicy
    ) -> None:
        super().__init__(session_id, after=after, follow=True, policy=policy)
        self.turn_id = turn_id

    def _wanted(self, item: StreamItem) -> bool:
        turn_id = _turn_id(item)
        return turn_id is None or turn_id == self.turn_id

    def _ends(self, item: StreamItem) -> bool:
        return ends_turn(item, self.turn_id) or super()._ends(item)


class TurnTail(TurnEventTail):
    """The items of one turn: opened by the message POST itself; if that stream breaks before
    the turn's terminal event (or pause), resumed from the session's event stream (or, when the
    turn id is not known yet, by the same POST again: its ``Idempotency-Key`` makes it the same
    turn)."""

    def __init__(
        self, session_id: str, content: str, idempotency_key: str, policy: RetryPolicy
    ) -> None:
        super().__init__(session_id, None, after=0, policy=policy)
        self._post = calls.stream_turn(session_id, content, idempotency_key)

    def _call(self) -> Call[httpx.Response]:
        return self._post if self.turn_id is None else super()._call()

    def _accept(self, item: StreamItem) -> StreamItem | None:
        if self.turn_id is None:
            # The POST's stream carries only this turn: its first item names the turn.
            self.turn_id = _turn_id(item)
        return super()._accept(item)


def _turn_id(item: object) -> str | None:
    turn_id: Any = getattr(item, "turn_id", None)
    return turn_id if isinstance(turn_id, str) else None
