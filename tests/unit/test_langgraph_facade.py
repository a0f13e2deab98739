"""The LangGraph-compatible API's pieces that need no cluster: assistant ids, the input a run
sends, LangChain messages from the store and from a turn's events (the same ids both ways), the
stream modes, resuming by event id, and errors in LangGraph's ``{"detail"}`` shape."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError

from agentcluster import api
from agentcluster import events as ev
from agentcluster.domain import Message
from agentcluster.errors import DependencyUnavailable, NotFoundError, RateLimited, ValidationFailed
from agentcluster.gateway import ProblemError
from agentcluster.gateway._langgraph_errors import LangGraphApiError, langgraph_error
from agentcluster.gateway._langgraph_messages import (
    CURRENT,
    EARLIER,
    assistant_id,
    input_text,
    messages_of,
    thread_status,
)
from agentcluster.gateway._langgraph_models import (
    AssistantSearchIn,
    RunCreateIn,
    RunInput,
    ThreadCreateIn,
    ThreadSearchIn,
)
from agentcluster.gateway._langgraph_resume import resume_decisions
from agentcluster.gateway._langgraph_stream import EventId, RunStream, SseOut, parse_event_id
from agentcluster.runtime import Delta, Overflow, StreamItem

T, S, RUN, USER_MSG = "tenant", "session-1", "turn-1", "message-1"
NOW = datetime(2026, 12, 2, tzinfo=UTC)
LIMIT = 32_000
CALL = {"id": "call-1", "name": "calculator", "arguments": '{"expression": "6*7"}'}


def _ids() -> dict[str, Any]:
    return {"tenant_id": T, "session_id": S}


def _turn_events() -> list[StreamItem]:
    """A turn with one tool call: the model streams a little, calls the calculator, then
    streams its answer."""
    usage = ev.Usage(prompt_tokens=5, completion_tokens=3, total_tokens=8)
    return [
        ev.MessageReceived(**_ids(), seq=10, message_id=USER_MSG, turn_id=RUN, content="6*7?"),
        ev.TurnStarted(**_ids(), seq=11, turn_id=RUN),
        Delta(session_id=S, turn_id=RUN, step=1, index=1, text="Let me "),
        Delta(session_id=S, turn_id=RUN, step=1, index=2, text="compute."),
        ev.LlmCompleted(
            **_ids(),
            seq=12,
            turn_id=RUN,
            step=1,
            model="m",
            content="Let me compute.",
            tool_calls=[CALL],
            usage=usage,
        ),
        ev.ToolRequested(
            **_ids(),
            seq=13,
            turn_id=RUN,
            tool_call_id="call-1",
            tool="calculator",
            arguments={"expression": "6*7"},
        ),
        ev.ToolCompleted(
            **_ids(),
            seq=14,
            turn_id=RUN,
            tool_call_id="call-1",
            tool="calculator",
            ok=True,
            result=42,
        ),
        Delta(session_id=S, turn_id=RUN, step=2, index=3, text="It is "),
        Delta(session_id=S, turn_id=RUN, step=2, index=4, text="42."),
        ev.LlmCompleted(**_ids(), seq=15, turn_id=RUN, step=2, model="m", content="It is 42."),
        ev.TurnCompleted(**_ids(), seq=16, turn_id=RUN, message_id="answer", content="It is 42."),
    ]


def _stored() -> list[Message]:
    """The same turn as the store keeps its messages (after an earlier, tool-less turn)."""

    def message(message_id: str, role: str, content: str, **extra: Any) -> Message:
        return Message(
            message_id=message_id,
            session_id=S,
            role=role,  # type: ignore[arg-type]
            content=content,
            created_at=NOW,
            **extra,
        )

    return [
        message("old-user", "user", "hi", turn_id="turn-0"),
        message("old-answer", "assistant", "hello", turn_id="turn-0"),
        message(USER_MSG, "user", "6*7?", turn_id=RUN),
        message("m1", "assistant", "Let me compute.", turn_id=RUN, tool_calls=[CALL]),
        message("m2", "tool", "42", turn_id=RUN, tool_call_id="call-1"),
        message("m3", "assistant", "It is 42.", turn_id=RUN),
    ]


def _run(modes: set[str], **options: Any) -> tuple[RunStream, list[SseOut]]:
    history = messages_of(_stored()[:2])
    stream = RunStream(
        RUN, S, assistant_id("tester"), "tester", frozenset(modes), history, **options
    )
    out = [sse for item in _turn_events() for sse in stream.feed(item)]
    return stream, out


def test_assistant_ids_are_the_uuids_langgraph_gives_a_graphs_default_assistant() -> None:
    # The id LangGraph's own docs show for the default assistant of the graph "agent".
    assert assistant_id("agent") == "fe096781-5601-53d2-b2f6-0d3403f7e9ca"
    assert assistant_id("tester") == assistant_id("tester") != assistant_id("agent")


def test_a_run_sends_the_inputs_last_message_with_earlier_ones_as_a_transcript() -> None:
    assert input_text({"messages": [{"role": "user", "content": "hi"}]}, LIMIT) == "hi"
    parts = {"messages": [{"type": "human", "content": [{"text": "a"}, "b"]}]}
    assert input_text(parts, LIMIT) == "ab"
    assert input_text({"messages": [("user", "tuple form")]}, LIMIT) == "tuple form"
    assert input_text({"messages": [{"role": "ai", "content": "resume"}]}, LIMIT) == "resume"
    conversation = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"type": "ai", "content": "earlier"},
            {"role": "human", "content": "now"},
        ]
    }
    text = input_text(conversation, LIMIT)
    assert text.splitlines() == [EARLIER, "system: be brief", "ai: earlier", "", CURRENT, "now"]
    cut = input_text(conversation, len(text) - 1)  # too long: the oldest message is left out
    assert cut.splitlines() == [EARLIER, "ai: earlier", "", CURRENT, "now"]
    assert input_text(conversation, 3) == "now"
    for bad in (None, {}, {"messages": []}):
        with pytest.raises(ValueError):
            input_text(bad, LIMIT)
    with pytest.raises(ValueError):
        input_text({"messages": [{"role": "user", "content": ""}]}, LIMIT)


def test_a_run_input_is_what_its_schema_says() -> None:
    for messages in (
        [{"role": "user", "content": "hi", "id": "m1"}],
        [{"type": "ai", "content": [{"type": "text", "text": "a"}, "b"]}],
        [["system", "be brief"], "hi"],
        "hi",
        {"role": "tool", "content": "42"},
    ):
        RunInput.model_validate({"messages": messages})
    for messages in (
        [],
        [{"role": "robot", "content": "x"}],
        [{"role": "user", "content": ""}],
        [{"content": "no role"}],
        [{"role": "user", "content": []}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": "u"}]}],
        [1],
    ):
        with pytest.raises(ValueError):
            RunInput.model_validate({"messages": messages})
    with pytest.raises(ValueError):
        RunInput.model_validate({"state": {}})


def test_stored_messages_are_langchain_messages_with_tool_calls_and_tool_names() -> None:
    messages = messages_of(_stored())
    assert [m["type"] for m in messages] == ["human", "ai", "human", "ai", "tool", "ai"]
    assert [m["id"] for m in messages] == [
        "old-user",
        "turn-0-1",
        USER_MSG,
        f"{RUN}-1",
        f"{RUN}-2",
        f"{RUN}-3",
    ]
    call = messages[3]["tool_calls"][0]
    assert call == {
        "name": "calculator",
        "id": "call-1",
        "args": {"expression": "6*7"},
        "type": "tool_call",
    }
    assert (messages[4]["tool_call_id"], messages[4]["name"]) == ("call-1", "calculator")
    broken = Message(
        message_id="x",
        session_id=S,
        turn_id="t",
        role="assistant",
        content="",
        tool_calls=[{"id": "c", "name": "n", "arguments": "{not json"}],
        created_at=NOW,
    )
    (ai,) = messages_of([broken])
    assert ai["tool_calls"] == [] and ai["invalid_tool_calls"][0]["args"] == "{not json"
    hidden = [m.model_copy(update={"rolled_back": m.turn_id == RUN}) for m in _stored()]
    assert [m["id"] for m in messages_of(hidden)] == ["old-user", "turn-0-1"]


def test_values_and_updates_end_with_the_messages_the_store_holds() -> None:
    stream, out = _run({"values", "updates"})
    assert stream.ended
    values = [sse.data for sse in out if sse.event == "values"]
    # The user's message, each model step and the tool result: the thread's state each time.
    assert len(values) == 4
    assert values[-1] == {"messages": messages_of(_stored())}  # ids as /state gives them
    updates = [sse.data for sse in out if sse.event == "updates"]
    assert [list(update) for update in updates] == [["agent"], ["tools"], ["agent"]]
    assert updates[1]["tools"]["messages"][0]["content"] == "42"


def test_messages_tuple_streams_tokens_then_the_steps_tool_calls_and_the_tool_result() -> None:
    _stream, out = _run({"messages-tuple"})
    parts = [sse.data for sse in out]
    assert all(sse.event == "messages" for sse in out)
    chunks = [(message, meta) for message, meta in parts]
    ai_text = "".join(m["content"] for m, _ in chunks if m["type"] in ("AIMessageChunk", "ai"))
    assert ai_text == "Let me compute.It is 42."
    last_of_step = chunks[2][0]
    assert last_of_step["type"] == "AIMessageChunk" and last_of_step["content"] == ""
    assert last_of_step["tool_calls"][0]["name"] == "calculator"
    assert last_of_step["tool_call_chunks"][0]["id"] == "call-1"
    tool, meta = chunks[3]
    assert tool["type"] == "tool" and meta["langgraph_node"] == "tools"
    assert {m["id"] for m, _ in chunks[:3]} == {f"{RUN}-1"}  # the step's chunks share its id
    assert chunks[0][1]["langgraph_node"] == "agent" and chunks[0][1]["run_id"] == RUN


def test_messages_mode_sends_metadata_partial_and_complete_messages() -> None:
    _stream, out = _run({"messages"})
    events = [sse.event for sse in out]
    assert events[:3] == ["messages/metadata", "messages/partial", "messages/partial"]
    assert out[2].data[0]["content"] == "Let me compute."  # the text so far
    assert events.count("messages/complete") == 3  # two model steps and the tool result


def test_events_mode_sends_langchain_style_run_events() -> None:
    _stream, out = _run({"events"})
    kinds = [sse.data["event"] for sse in out]
    assert kinds[0] == "on_chain_start" and kinds[-1] == "on_chain_end"
    for kind in ("on_chat_model_start", "on_chat_model_stream", "on_chat_model_end"):
        assert kind in kinds
    assert kinds.index("on_tool_start") < kinds.index("on_tool_end")
    assert out[-1].data["data"]["output"]["messages"][-1]["content"] == "It is 42."


def test_every_event_has_an_id_and_a_resumed_stream_leaves_out_what_was_sent() -> None:
    _stream, out = _run({"values", "updates"})
    ids = [sse.event_id for sse in out]
    assert all(ids) and len(set(ids)) == len(ids)
    seen = out[3]
    resume = parse_event_id(seen.event_id)
    assert resume is not None
    # Replayed from the store (no live tokens), everything up to the last id is left out.
    replay = RunStream(
        RUN,
        S,
        "a",
        "tester",
        frozenset({"values", "updates"}),
        messages_of(_stored()[:2]),
        resume_after=resume,
    )
    persisted = [item for item in _turn_events() if not isinstance(item, Delta)]
    again = [sse for item in persisted for sse in replay.feed(item)]
    assert [sse.event_id for sse in again] == ids[4:]
    assert again[-1].data == out[-1].data


def test_event_ids_parse_strictly() -> None:
    assert parse_event_id("12-3") == EventId(12, 3)
    assert parse_event_id(None) is None and parse_event_id("") is None
    assert EventId(12, 3) < EventId(12, 4) < EventId(13, 0)
    for bad in ("12", "a-1", "1-2-3", "9999999999999999999-1", " 1-2", "\u0663-1", "null"):
        with pytest.raises(ValueError):
            parse_event_id(bad)


def test_a_failed_turn_ends_with_an_error_event_and_an_overflow_cuts_the_stream() -> None:
    stream = RunStream(RUN, S, "a", "tester", frozenset({"values"}))
    failed = ev.TurnFailed(
        **_ids(), seq=3, turn_id=RUN, error_type="BudgetExceeded", error="over budget"
    )
    (error,) = stream.feed(failed)
    assert (error.event, error.data["error"]) == ("error", "BudgetExceeded") and stream.ended
    cut = RunStream(RUN, S, "a", "tester", frozenset({"values"}))
    assert cut.feed(Overflow(session_id=S)) == [] and cut.cut and not cut.ended


def test_thread_status_follows_the_latest_turn() -> None:
    assert thread_status(None) == "idle" and thread_status("completed") == "idle"
    assert thread_status("queued") == thread_status("running") == "busy"
    assert thread_status("failed") == "error"
    assert thread_status("awaiting_approval") == "interrupted"


def test_run_requests_refuse_what_this_server_cannot_do() -> None:
    hello = {"messages": [{"role": "user", "content": "hi"}]}
    plain = RunCreateIn.model_validate(
        {"assistant_id": "tester", "input": hello, "stream_mode": ["values"], "webhook": None}
    )
    assert plain.modes() == {"values"}
    RunCreateIn.model_validate(
        {"assistant_id": "t", "input": hello, "multitask_strategy": "rollback"}
    )
    for unsupported in (
        {"interrupt_before": ["tools"]},
        {"interrupt_after": "*"},
        {"command": {"resume": 1}},
        {"checkpoint_id": "c"},
        {"webhook": "http://127.0.0.1/hook"},
        {"after_seconds": 1},
        {"no_such_field": 1},
        {"stream_mode": "nonsense"},
        {"stream_subgraphs": 1},
    ):
        with pytest.raises(ValueError):
            RunCreateIn.model_validate({"assistant_id": "tester", "input": hello, **unsupported})
    with pytest.raises(ValueError):
        RunCreateIn.model_validate({"assistant_id": "tester"})  # no input


def test_integers_and_booleans_are_strict_and_unsupported_searches_only_empty() -> None:
    for body in (
        {"offset": False},
        {"limit": True},
        {"limit": "10"},
        {"limit": 2.5},
        {"values": {"a": 1}},
    ):
        with pytest.raises(ValueError):
            ThreadSearchIn.model_validate(body)
    assert ThreadSearchIn.model_validate({"values": {}, "offset": 3}).offset == 3
    assert ThreadSearchIn.model_validate({"limit": 20.0}).limit == 20  # a JSON Schema integer
    with pytest.raises(ValueError):
        AssistantSearchIn.model_validate({"offset": False})
    with pytest.raises(ValueError):
        ThreadCreateIn.model_validate({"supersteps": [{"updates": []}]})
    assert ThreadCreateIn.model_validate({"supersteps": []}).supersteps == []


def _error(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    response = langgraph_error(exc)
    return response.status_code, json.loads(bytes(response.body)), dict(response.headers)


def test_errors_are_detail_objects_with_the_statuses_the_sdk_types() -> None:
    status, body, headers = _error(
        ProblemError(401, "unauthorized", "invalid API key", {"WWW-Authenticate": "Bearer"})
    )
    assert (status, body) == (401, {"detail": "invalid API key"})
    assert headers["www-authenticate"] == "Bearer"
    assert _error(NotFoundError("session s not found"))[0] == 404
    assert _error(ValidationFailed("unknown agent"))[0] == 422
    status, _body, headers = _error(RateLimited("slow down", retry_after=2.5, limit=5))
    assert (status, headers["retry-after"]) == (429, "3")
    status, _body, headers = _error(DependencyUnavailable("redis", "down"))
    assert (status, headers["retry-after"]) == (503, "1")
    assert _error(LangGraphApiError(409, "busy"))[:2] == (409, {"detail": "busy"})
    invalid = RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": "x"}])
    assert _error(invalid)[:2] == (422, {"detail": "the request body is not valid JSON"})
    missing = RequestValidationError(
        [{"type": "missing", "loc": ("body", "assistant_id"), "msg": "Field required"}]
    )
    assert _error(missing)[1] == {"detail": "assistant_id: Field required"}
    assert _error(RuntimeError("boom"))[:2] == (500, {"detail": "internal error"})


def _waiting(*tool_call_ids: str) -> list[api.ApprovalOut]:
    return [
        api.ApprovalOut(
            tool_call_id=call,
            session_id=S,
            turn_id=RUN,
            tool="calculator",
            arguments={"expression": "6*7"},
            reason="sums",
            status="pending",
            decisions=["approve", "edit", "reject"],
            created_at=NOW,
        )
        for call in tool_call_ids
    ]


def test_a_paused_turn_streams_its_interrupts_and_a_resumed_one_goes_on_numbering() -> None:
    asked = {"turn_id": RUN, "tool": "calculator", "arguments": {"expression": "6*7"}}
    items: list[StreamItem] = [
        ev.MessageReceived(**_ids(), seq=10, message_id=USER_MSG, turn_id=RUN, content="6*7?"),
        ev.TurnStarted(**_ids(), seq=11, turn_id=RUN),
        ev.LlmCompleted(
            **_ids(), seq=12, turn_id=RUN, step=1, model="m", content=None, tool_calls=[CALL]
        ),
        ev.ToolRequested(**_ids(), seq=13, tool_call_id="call-1", **asked),
        ev.ToolApprovalRequested(**_ids(), seq=14, tool_call_id="call-1", reason="sums", **asked),
        ev.TurnAwaitingApproval(**_ids(), seq=15, turn_id=RUN, tool_call_ids=["call-1"]),
    ]
    stream = RunStream(RUN, S, "a", "tester", frozenset({"values", "updates"}))
    out = [sse for item in items for sse in stream.feed(item)]
    assert stream.ended
    update, values = out[-2:]
    [interrupt] = update.data["__interrupt__"]
    assert interrupt["id"] == "call-1" and interrupt["value"]["tool"] == "calculator"
    assert interrupt["value"]["decisions"] == ["approve", "edit", "reject"]
    assert values.event == "values" and values.data["__interrupt__"] == [interrupt]
    assert [m["type"] for m in values.data["messages"]] == ["human", "ai"]

    history = values.data["messages"]
    resumed = RunStream(
        RUN, S, "a", "tester", frozenset({"values"}), history=history, first_position=1
    )
    after = [
        ev.TurnStarted(**_ids(), seq=17, turn_id=RUN, resumed=True),
        ev.ToolCompleted(
            **_ids(),
            seq=18,
            turn_id=RUN,
            tool_call_id="call-1",
            tool="calculator",
            ok=True,
            result=42,
        ),
        ev.LlmCompleted(**_ids(), seq=19, turn_id=RUN, step=2, model="m", content="42"),
        ev.TurnCompleted(**_ids(), seq=20, turn_id=RUN, message_id="a", content="42"),
    ]
    final = [sse for item in after for sse in resumed.feed(item)][-1].data["messages"]
    assert [m["type"] for m in final] == ["human", "ai", "tool", "ai"]
    assert [m["id"] for m in final[1:]] == [f"{RUN}-1", f"{RUN}-2", f"{RUN}-3"]


def test_a_resume_is_one_decision_a_map_of_interrupt_ids_or_the_decisions_in_order() -> None:
    one, two = _waiting("c1"), _waiting("c1", "c2")
    [(call, decision)] = resume_decisions("approve", one)
    assert (call, decision.decision) == ("c1", "approve")
    [(_, edited)] = resume_decisions({"type": "edit", "arguments": {"expression": "1"}}, one)
    assert (edited.decision, edited.arguments) == ("edit", {"expression": "1"})
    mapped = resume_decisions({"c2": {"decision": "reject", "message": "no"}, "c1": "yes"}, two)
    assert [(c, d.decision, d.message) for c, d in mapped] == [
        ("c2", "reject", "no"),
        ("c1", "approve", None),
    ]
    ordered = resume_decisions({"decisions": [{"type": "approve"}, {"type": "reject"}]}, two)
    assert [(c, d.decision) for c, d in ordered] == [("c1", "approve"), ("c2", "reject")]
    with pytest.raises(LangGraphApiError) as several:  # one decision, two interrupts
        resume_decisions("approve", two)
    assert several.value.status == 422
    with pytest.raises(LangGraphApiError) as nothing:
        resume_decisions("approve", [])
    assert nothing.value.status == 409
    with pytest.raises(ValidationFailed):
        resume_decisions({"type": "edit"}, one)  # edit needs the arguments
    with pytest.raises(LangGraphApiError):
        resume_decisions(42, one)


def test_a_run_takes_input_or_a_command_to_resume() -> None:
    resume = RunCreateIn.model_validate({"assistant_id": "t", "command": {"resume": "approve"}})
    assert resume.input is None and resume.command is not None
    for body in (
        {"command": {"resume": None}},
        {"command": {"resume": "approve", "goto": "tools"}},
        {"command": {"resume": "approve", "update": {"x": 1}}},
        {"command": {"resume": "approve"}, "input": {"messages": ["hi"]}},
    ):
        with pytest.raises(ValueError):
            RunCreateIn.model_validate({"assistant_id": "t", **body})
