"""Server-sent events: a line decoder (WHATWG event-stream rules) and the mapping to stream items.

The decoder is fed one line at a time (without its terminator, as ``httpx``'s ``iter_lines``
yields them) and returns a :class:`ServerSentEvent` on each blank line that ends an event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from pydantic import ValidationError as PydanticValidationError

from agentcluster.api import Delta
from agentcluster.client._errors import ProtocolError
from agentcluster.events import Event, EventBase, load_event

__all__ = ["EVENT_TYPES", "Overflowed", "SSEDecoder", "ServerSentEvent", "StreamItem", "decode"]

StreamItem = Event | Delta
"""What the event streams yield: a persisted event (with ``seq``) or a live text fragment."""


def _event_types() -> frozenset[str]:
    union = get_args(get_args(Event)[0])
    classes: tuple[type[EventBase], ...] = union
    return frozenset(str(cls.model_fields["type"].default) for cls in classes)


EVENT_TYPES = _event_types()
"""The ``event:`` names this client knows how to parse; others are skipped (newer servers)."""


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event. ``id`` is the stream's last event id at dispatch (it persists across
    events, as the spec says); ``retry`` is a reconnection delay in milliseconds, if sent."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Incremental event-stream decoder; one instance per connection."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._first_line = True
        self.last_event_id: str | None = None
        self.retry: int | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        """Take one line (terminator stripped); return the event a blank line completes."""
        if self._first_line:
            self._first_line = False
            line = line.removeprefix("\ufeff")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        self._field(name, value)
        return None

    def _field(self, name: str, value: str) -> None:
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value)
        # Other field names are ignored, as the spec requires.

    def _dispatch(self) -> ServerSentEvent | None:
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:
            return None
        return ServerSentEvent(
            event=event, data="\n".join(data), id=self.last_event_id, retry=self.retry
        )


class Overflowed:
    """Marker for ``event: overflow``: the server dropped this subscriber; resume after the last
    seen seq."""


OVERFLOWED = Overflowed()


def decode(sse: ServerSentEvent) -> StreamItem | Overflowed | None:
    """The stream item an SSE event carries; None for event names this client does not know.

    Raises:
        ProtocolError: a known event whose data does not parse.
    """
    if sse.event == "overflow":
        return OVERFLOWED
    try:
        if sse.event == "delta":
            return Delta.model_validate_json(sse.data)
        if sse.event in EVENT_TYPES:
            return load_event(sse.data)
    except PydanticValidationError as exc:
        raise ProtocolError(f"SSE event {sse.event!r} (id {sse.id}): bad data: {exc}") from None
    return None
