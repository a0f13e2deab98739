"""Live feed of one session: committed events and streamed deltas, fanned out to subscribers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from agentcluster.api import Delta, Overflow, StreamItem

__all__ = ["Delta", "FeedItem", "LiveFeed", "Overflow", "Refresh", "StreamItem"]


@dataclass(frozen=True)
class Refresh:
    """Internal to a host's streams: events were committed by another process; read them from
    the store (never sent to clients)."""

    session_id: str


FeedItem = StreamItem | Refresh


class LiveFeed:
    """Fan-out to bounded subscriber queues. A subscriber that falls behind gets one Overflow and
    is dropped, so a slow reader never blocks a turn."""

    def __init__(self, session_id: str, *, queue_size: int = 1024) -> None:
        self.session_id = session_id
        self._queue_size = queue_size
        self._subscribers: set[asyncio.Queue[FeedItem | None]] = set()
        self._delta_index = 0

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> asyncio.Queue[FeedItem | None]:
        queue: asyncio.Queue[FeedItem | None] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[FeedItem | None]) -> None:
        self._subscribers.discard(queue)

    def publish(self, item: FeedItem) -> None:
        for queue in list(self._subscribers):
            if queue.qsize() >= self._queue_size - 1:
                self._subscribers.discard(queue)
                queue.put_nowait(Overflow(session_id=self.session_id))
            else:
                queue.put_nowait(item)

    def publish_delta(self, turn_id: str, step: int, text: str) -> None:
        self._delta_index += 1
        if not self._subscribers:
            return  # deltas are live only: nobody listening, nothing to build
        self.publish(
            Delta(
                session_id=self.session_id,
                turn_id=turn_id,
                step=step,
                index=self._delta_index,
                text=text,
            )
        )

    def close(self) -> None:
        """End every subscription (the session is passivated or moved)."""
        for queue in list(self._subscribers):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)
        self._subscribers.clear()
