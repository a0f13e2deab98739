"""The A2A facade's pieces that need no cluster: tasks from a session's events, the stream events
of a turn, the text a message sends, the agent card as the a2a-sdk client reads it, error
mapping, ListTasks page tokens and the OpenAPI document."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from a2a.client.card_resolver import parse_agent_card
from a2a.client.client_factory import ClientFactory
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.types import (
    Message,
    Part,
    Role,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatusUpdateEvent,
)
from a2a.utils.errors import (
    ContentTypeNotSupportedError,
    InternalError,
    InvalidParamsError,
    TaskNotFoundError,
)
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.struct_pb2 import Value

from agentcluster import events as ev
from agentcluster.agent import AgentProfile
from agentcluster.config import Settings, load_settings
from agentcluster.errors import NotFoundError, RateLimited, ValidationFailed
from agentcluster.gateway import ProblemError, create_app
from agentcluster.gateway._a2a_cards import agent_card, default_agent
from agentcluster.gateway._a2a_handler import (
    A2ACall,
    _mapped,
    decode_page_token,
    encode_page_token,
)
from agentcluster.gateway._a2a_tasks import (
    TaskStream,
    approval_decisions,
    message_text,
    task_of,
    views_of_session,
)
from agentcluster.runtime import Delta, Runtime

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
IDS = {"tenant_id": "t1", "session_id": "s1"}


def _at(seconds: int) -> dict[str, Any]:
    return {**IDS, "seq": seconds, "ts": T0 + timedelta(seconds=seconds)}


def _session_events() -> list[ev.Event]:
    """Three turns: one with a tool call that completed, one that failed, one still queued."""
    return [
        ev.SessionCreated(**_at(1), agent="tester"),
        ev.MessageReceived(**_at(2), message_id="m1", turn_id="u1", content="compute 6*7"),
        ev.TurnStarted(**_at(3), turn_id="u1"),
        ev.ToolRequested(
            **_at(4), turn_id="u1", tool_call_id="c1", tool="calc", arguments={"x": "6*7"}
        ),
        ev.ToolCompleted(
            **_at(5), turn_id="u1", tool_call_id="c1", tool="calc", ok=True, result=42
        ),
        ev.MessageReceived(**_at(6), message_id="m2", turn_id="u2", content="again"),
        ev.TurnCompleted(**_at(7), turn_id="u1", message_id="a1", content="it is 42"),
        ev.TurnStarted(**_at(8), turn_id="u2"),
        ev.TurnFailed(**_at(9), turn_id="u2", error_type="BudgetExceeded", error="budget spent"),
        ev.MessageReceived(**_at(10), message_id="m3", turn_id="u3", content="later"),
    ]


def _data(part: Part) -> dict[str, Any]:
    data: dict[str, Any] = MessageToDict(part.data)
    return data


def test_a_sessions_events_become_its_tasks_with_states_history_and_the_answer() -> None:
    views = views_of_session(_session_events())
    assert [(v.turn_id, v.status) for v in views] == [
        ("u1", "completed"),
        ("u2", "failed"),
        ("u3", "queued"),
    ]
    done = task_of(views[0])
    assert (done.id, done.context_id) == ("u1", "s1")
    assert done.status.state == TaskState.TASK_STATE_COMPLETED
    assert done.status.timestamp.ToDatetime(UTC) == T0 + timedelta(seconds=7)
    assert [a.parts[0].text for a in done.artifacts] == ["it is 42"]
    user, call, result = done.history
    assert (user.role, user.parts[0].text, user.message_id) == (Role.ROLE_USER, "compute 6*7", "m1")
    assert call.role == Role.ROLE_AGENT and call.metadata["kind"] == "tool_call"
    assert _data(call.parts[0]) == {"tool": "calc", "call_id": "c1", "arguments": {"x": "6*7"}}
    assert result.metadata["kind"] == "tool_result" and _data(result.parts[0])["result"] == 42
    assert [m.message_id for m in task_of(views[0], history_length=1).history] == ["c1-result"]
    assert list(task_of(views[0], history_length=0).history) == []

    failed = task_of(views[1])
    assert failed.status.state == TaskState.TASK_STATE_FAILED and not failed.artifacts
    assert "budget spent" in failed.status.message.parts[0].text
    assert task_of(views[2]).status.state == TaskState.TASK_STATE_SUBMITTED


def _delta(text: str) -> Delta:
    return Delta(session_id="s1", turn_id="u1", step=1, index=0, text=text)


def test_a_turns_stream_items_become_status_updates_and_answer_chunks() -> None:
    stream = TaskStream("u1", "s1")
    items = [
        ev.TurnStarted(**_at(3), turn_id="u1"),
        ev.ToolRequested(**_at(4), turn_id="u1", tool_call_id="c1", tool="calc"),
        _delta("it is"),
        _delta(" 4"),
        ev.TurnCompleted(**_at(7), turn_id="u1", message_id="a1", content="it is 42"),
    ]
    events = [event for item in items for event in stream.events(item)]
    kinds = [type(event).__name__ for event in events]
    assert kinds == [
        "TaskStatusUpdateEvent",
        "TaskStatusUpdateEvent",
        "TaskArtifactUpdateEvent",
        "TaskArtifactUpdateEvent",
        "TaskArtifactUpdateEvent",
        "TaskStatusUpdateEvent",
    ]
    tool = events[1]
    assert isinstance(tool, TaskStatusUpdateEvent)
    assert tool.status.state == TaskState.TASK_STATE_WORKING
    assert tool.status.message.metadata["kind"] == "tool_call"
    chunks = [e for e in events if isinstance(e, TaskArtifactUpdateEvent)]
    assert [c.artifact.parts[0].text for c in chunks] == ["it is", " 4", "2"]
    assert [(c.append, c.last_chunk) for c in chunks] == [
        (False, False),
        (True, False),
        (True, True),
    ]
    final = events[-1]
    assert isinstance(final, TaskStatusUpdateEvent)
    assert (final.task_id, final.status.state) == ("u1", TaskState.TASK_STATE_COMPLETED)


def test_an_answer_the_deltas_did_not_start_is_sent_whole_and_failures_say_why() -> None:
    stream = TaskStream("u1", "s1")
    stream.events(_delta("thinking aloud"))
    done = stream.events(ev.TurnCompleted(**_at(7), turn_id="u1", message_id="a", content="42"))
    chunk = done[0]
    assert isinstance(chunk, TaskArtifactUpdateEvent)
    assert (chunk.artifact.parts[0].text, chunk.append, chunk.last_chunk) == ("42", False, True)
    failed = TaskStream("u2", "s1").events(
        ev.TurnCancelled(**_at(9), turn_id="u2", reason="by the API")
    )
    assert isinstance(failed[0], TaskStatusUpdateEvent)
    assert failed[0].status.state == TaskState.TASK_STATE_CANCELED
    assert "by the API" in failed[0].status.message.parts[0].text


def _message(*parts: Part, role: Role.ValueType = Role.ROLE_USER) -> Message:
    return Message(message_id="m", role=role, parts=list(parts))


def test_a_messages_text_and_data_parts_are_sent_and_files_are_refused() -> None:
    data = Part()
    data.data.CopyFrom(ParseDict({"a": 1}, Value()))
    assert message_text(_message(Part(text="hello"), data)) == 'hello\n{"a": 1}'
    with pytest.raises(ContentTypeNotSupportedError):
        message_text(_message(Part(url="http://127.0.0.1/x.png")))
    with pytest.raises(InvalidParamsError):
        message_text(_message(Part(text="  ")))
    with pytest.raises(InvalidParamsError):
        message_text(_message(Part(text="hi"), role=Role.ROLE_AGENT))


def test_the_agent_card_is_what_the_sdk_client_resolves_and_connects_with() -> None:
    profile = AgentProfile(
        name="tester", model="m", description="Tests things.", tools=["calculator"]
    )
    served = agent_card_to_dict(agent_card(profile, "http://127.0.0.1:1/a2a/tester"))
    # v0.3 clients read the legacy fields.
    assert served["url"] == "http://127.0.0.1:1/a2a/tester"
    assert served["preferredTransport"] == "JSONRPC"
    card = parse_agent_card(copy.deepcopy(served))
    assert (card.name, card.description, card.capabilities.streaming) == (
        "tester",
        "Tests things.",
        True,
    )
    assert [skill.id for skill in card.skills] == ["tester", "tool:calculator"]
    scheme = card.security_schemes["bearer"].http_auth_security_scheme
    assert scheme.scheme == "bearer"
    assert [list(r.schemes) for r in card.security_requirements] == [["bearer"]]
    best = ClientFactory._find_best_interface(list(card.supported_interfaces))
    assert best is not None
    assert (best.url, best.protocol_binding, best.protocol_version) == (
        "http://127.0.0.1:1/a2a/tester",
        "JSONRPC",
        "1.0",
    )
    assert default_agent(["b", "a"]) == "a"
    assert default_agent(["b", "default"]) == "default"
    assert default_agent([]) is None


def test_our_errors_become_a2a_errors_or_are_left_for_an_http_answer() -> None:
    call = A2ACall(service=None, caller=None, agent="tester")  # type: ignore[arg-type]
    with pytest.raises(TaskNotFoundError), _mapped(call):
        raise NotFoundError("session s not found")
    with pytest.raises(InvalidParamsError), _mapped(call):
        raise ValidationFailed("content too long")
    assert call.http_error is None
    limited = RateLimited("slow down", retry_after=1.0, limit=5)
    with pytest.raises(InternalError), _mapped(call):
        raise limited
    assert call.http_error is limited
    denied = ProblemError(403, "forbidden", "denied by policy")
    with pytest.raises(InternalError), _mapped(call):
        raise denied
    assert call.http_error is denied
    call.http_error = None
    with pytest.raises(InternalError, match="internal error"), _mapped(call):
        raise KeyError("a bug")
    assert call.http_error is None


def test_list_page_tokens_round_trip_and_foreign_tokens_are_invalid_params() -> None:
    assert decode_page_token(encode_page_token("abc", 3)) == ("abc", 3)
    assert decode_page_token(encode_page_token(None, 0)) == (None, 0)
    assert decode_page_token("") == (None, 0)
    for bad in ("not base64 !", encode_page_token("x", 0)[:-3], "e30"):
        with pytest.raises(InvalidParamsError):
            decode_page_token(bad)


async def _no_runtime(settings: Settings) -> Runtime:
    raise AssertionError("the OpenAPI document needs no runtime")


def test_the_openapi_document_has_the_cards_and_the_jsonrpc_endpoint() -> None:
    paths = create_app(load_settings({}), _no_runtime).openapi()["paths"]
    assert "get" in paths["/.well-known/agent-card.json"]
    assert "get" in paths["/a2a/{agent}/.well-known/agent-card.json"]
    rpc = paths["/a2a/{agent}"]["post"]
    # Any JSON: what is no JSON-RPC request is a JSON-RPC error in a 200 (a2a-sdk clients read it)
    body = rpc["requestBody"]["content"]["application/json"]["schema"]
    assert "type" not in body and "required" not in body and "properties" not in body
    answers = rpc["responses"]["200"]["content"]
    assert "error" in answers["application/json"]["schema"]["properties"]
    assert "text/event-stream" in answers


def test_task_type_is_the_sdks() -> None:
    assert isinstance(task_of(views_of_session(_session_events())[0]), Task)


def _paused_events() -> list[ev.Event]:
    """A turn whose two calculator calls wait for a person; the first is then decided."""
    asked = {"turn_id": "u1", "tool": "calc", "reason": "sums", "expires_at": T0}
    return [
        ev.MessageReceived(**_at(1), message_id="m1", turn_id="u1", content="sum twice"),
        ev.TurnStarted(**_at(2), turn_id="u1"),
        ev.ToolApprovalRequested(**_at(3), **asked, tool_call_id="c1", arguments={"x": "1+1"}),
        ev.ToolApprovalRequested(**_at(4), **asked, tool_call_id="c2", arguments={"x": "2+2"}),
        ev.TurnAwaitingApproval(**_at(5), turn_id="u1", tool_call_ids=["c1", "c2"]),
    ]


def _listed(message: Message) -> list[dict[str, Any]]:
    [data] = [_data(part) for part in message.parts if part.WhichOneof("content") == "data"]
    return list(data["approvals"])


def test_a_paused_turn_is_an_input_required_task_listing_what_still_waits() -> None:
    events = _paused_events()
    [view] = views_of_session(events)
    task = task_of(view)
    assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    assert task.status.message.metadata["kind"] == "approval_request"
    waiting = _listed(task.status.message)
    assert [(w["tool_call_id"], w["arguments"]) for w in waiting] == [
        ("c1", {"x": "1+1"}),
        ("c2", {"x": "2+2"}),
    ]
    assert waiting[0]["decisions"] == ["approve", "edit", "reject"]
    assert waiting[0]["expires_at"] == T0.isoformat() and waiting[0]["reason"] == "sums"
    decided = ev.ToolApprovalDecided(
        **_at(6), turn_id="u1", tool_call_id="c1", tool="calc", decision="approve", decided_by="k"
    )
    [view] = views_of_session([*events, decided])
    assert [w["tool_call_id"] for w in _listed(task_of(view).status.message)] == ["c2"]

    stream = TaskStream("u1", "s1")
    updates = [event for item in events[1:] for event in stream.events(item)]
    final = updates[-1]
    assert isinstance(final, TaskStatusUpdateEvent)
    assert final.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    assert [w["tool_call_id"] for w in _listed(final.status.message)] == ["c1", "c2"]


def _answer(*parts: Part) -> Message:
    return Message(message_id="a", role=Role.ROLE_USER, parts=list(parts), task_id="u1")


def test_an_answer_to_an_input_required_task_is_read_as_its_decisions() -> None:
    waiting = [e for e in _paused_events() if isinstance(e, ev.ToolApprovalRequested)]
    data = {
        "approvals": [
            {"tool_call_id": "c1", "decision": "approve"},
            {"tool_call_id": "c2", "decision": "edit", "arguments": {"x": "3+3"}},
        ]
    }
    decided = approval_decisions(_answer(Part(data=ParseDict(data, Value()))), waiting)
    assert [(call, d.decision, d.arguments) for call, d in decided] == [
        ("c1", "approve", None),
        ("c2", "edit", {"x": "3+3"}),
    ]
    with pytest.raises(InvalidParamsError, match="2 calls wait"):  # a bare word: which one?
        approval_decisions(_answer(Part(text="approve")), waiting)
    [(call, rejected)] = approval_decisions(_answer(Part(text="Reject: too risky")), waiting[:1])
    assert (call, rejected.decision, rejected.message) == ("c1", "reject", "too risky")
    with pytest.raises(ValidationFailed):  # not a decision
        approval_decisions(_answer(Part(text="perhaps")), waiting[:1])
    edit_without_arguments = {"approvals": [{"tool_call_id": "c1", "decision": "edit"}]}
    with pytest.raises(ValidationFailed, match="arguments"):
        approval_decisions(_answer(Part(data=ParseDict(edit_without_arguments, Value()))), waiting)
    with pytest.raises(InvalidParamsError):
        approval_decisions(_answer(Part(data=ParseDict({"yes": 1}, Value()))), waiting)
