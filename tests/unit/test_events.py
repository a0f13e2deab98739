"""Typed events: the discriminated union round-trips and rejects what is not an event."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from agentcluster import events as ev


def test_round_trip_picks_the_class_by_type() -> None:
    event = ev.ToolCompleted(
        tenant_id="t",
        session_id="s",
        turn_id="u",
        tool_call_id="c",
        tool="calculator",
        ok=True,
        result={"value": 4},
    )
    loaded = ev.load_event(ev.dump_event(event))
    assert isinstance(loaded, ev.ToolCompleted)
    assert loaded == event
    assert uuid.UUID(loaded.event_id)
    assert loaded.ts.tzinfo is not None


def test_every_event_type_is_in_the_union() -> None:
    names = {cls.model_fields["type"].default for cls in ev.EventBase.__subclasses__()}
    assert names == {
        "session.created",
        "message.received",
        "turn.started",
        "llm.completed",
        "tool.requested",
        "tool.decided",
        "tool.approval_requested",
        "tool.approval_decided",
        "tool.completed",
        "turn.awaiting_approval",
        "turn.completed",
        "turn.failed",
        "turn.cancelled",
        "webhook.delivered",
        "webhook.failed",
        "session.closed",
    }
    for name in names:
        schema = ev.EVENTS.json_schema()
        assert name in str(schema)


def test_unknown_type_and_unknown_field_are_rejected() -> None:
    with pytest.raises(ValidationError):
        ev.load_event(b'{"type": "nope", "tenant_id": "t", "session_id": "s"}')
    with pytest.raises(ValidationError):
        ev.load_event(b'{"type": "session.closed", "tenant_id": "t", "session_id": "s", "x": 1}')


def test_trace_context_is_captured_from_the_active_span() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("turn"):
        event = ev.TurnStarted(tenant_id="t", session_id="s", turn_id="u")
    assert event.trace["traceparent"].startswith("00-")
    assert ev.TurnStarted(tenant_id="t", session_id="s", turn_id="u").trace == {}
