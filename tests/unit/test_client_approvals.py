"""The Python client's approvals: listing and deciding waiting tool calls, a turn's stream that
ends at its pause, and ``follow_turn`` reading the resumed turn to its end. Against the in-process
fake gateway of ``test_client`` (with the approvals routes added), for ``Client`` and
``AsyncClient`` alike."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError as PydanticValidationError

from agentcluster import events as ev
from agentcluster.api import ApprovalDecisionIn, ApprovalList, ApprovalOut
from agentcluster.client import Conflict, HandleClient, InvalidRequest
from tests.unit.test_client import (
    KEY,
    NOW,
    SID,
    Api,
    FakeGateway,
    answer,
    body,
    completed,
    frame,
    problem,
    received,
    sse,
    started,
)

# The fixtures that run each test with both clients (re-exported names count as used).
from tests.unit.test_client import api as api
from tests.unit.test_client import connect as connect

pytestmark = pytest.mark.timeout(10)

CALL = "call_1"


def approval_body(tool_call_id: str, status: str = "pending", **extra: Any) -> dict[str, Any]:
    return {
        "tool_call_id": tool_call_id,
        "session_id": SID,
        "turn_id": "t1",
        "tool": "calculator",
        "arguments": {"expression": "6*7"},
        "reason": "a person checks calculator calls",
        "status": status,
        "decisions": ["approve", "edit", "reject"],
        "expires_at": NOW,
        "created_at": NOW,
    } | extra


_DECIDED = {"approve": "approved", "edit": "edited", "reject": "rejected"}


class ApprovalsGateway(FakeGateway):
    """The fake gateway with ``GET .../approvals`` and ``POST .../approvals/{id}``: one call
    waits until it is decided; deciding it again is a 409."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: dict[str, dict[str, Any]] = {CALL: approval_body(CALL)}
        self.decided: dict[str, dict[str, Any]] = {}
        self.routes[:0] = [
            ("GET", re.compile(r"/v1/sessions/([^/]+)/approvals"), self.list_approvals),
            ("POST", re.compile(r"/v1/sessions/([^/]+)/approvals/([^/]+)"), self.decide),
        ]

    def list_approvals(self, request: httpx.Request, session_id: str) -> httpx.Response:
        items = list(self.pending.values())
        if request.url.params.get("all") == "true":
            items += list(self.decided.values())
        return httpx.Response(200, json={"items": items})

    def decide(self, request: httpx.Request, session_id: str, call_id: str) -> httpx.Response:
        if call_id not in self.pending:
            return problem(409, "approval-not-pending", "Conflict", f"{call_id} is decided")
        decision = json.loads(request.content)
        record = self.pending.pop(call_id) | {
            "status": _DECIDED[decision["decision"]],
            "decided_at": NOW,
            "decided_by": "key k1",
            "edited_arguments": decision.get("arguments"),
            "message": decision.get("message"),
        }
        self.decided[call_id] = record
        return httpx.Response(200, json=record)


@pytest.fixture
def gateway() -> FakeGateway:
    return ApprovalsGateway()


def requested(seq: int, call: str = CALL) -> ev.ToolApprovalRequested:
    return ev.ToolApprovalRequested(
        tenant_id="tn",
        session_id=SID,
        seq=seq,
        turn_id="t1",
        tool_call_id=call,
        tool="calculator",
        arguments={"expression": "6*7"},
    )


def paused(seq: int, *calls: str) -> ev.TurnAwaitingApproval:
    return ev.TurnAwaitingApproval(
        tenant_id="tn", session_id=SID, seq=seq, turn_id="t1", tool_call_ids=list(calls)
    )


async def test_lists_pending_approvals_and_all_with_all(api: Api, gateway: FakeGateway) -> None:
    pending = await api("approvals", SID)

    assert [(a.tool_call_id, a.status, a.tool) for a in pending] == [
        (CALL, "pending", "calculator")
    ]
    assert isinstance(pending[0], ApprovalOut) and pending[0].arguments == {"expression": "6*7"}
    assert (gateway.last.method, gateway.last.url.path) == ("GET", f"/v1/sessions/{SID}/approvals")
    assert "all" not in gateway.last.url.params

    await api("approve", SID, CALL)
    assert await api("approvals", SID) == []
    everything = await api("approvals", SID, all=True)
    assert [(a.tool_call_id, a.status) for a in everything] == [(CALL, "approved")]
    assert gateway.last.url.params["all"] == "true"


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "sent", "status"),
    [
        ("approve", (), {}, {"decision": "approve"}, "approved"),
        (
            "edit",
            ({"expression": "6*8"},),
            {},
            {"decision": "edit", "arguments": {"expression": "6*8"}},
            "edited",
        ),
        ("reject", ("not now",), {}, {"decision": "reject", "message": "not now"}, "rejected"),
        (
            "decide",
            ("approve",),
            {"message": "fine"},
            {"decision": "approve", "message": "fine"},
            "approved",
        ),
    ],
)
async def test_each_decision_posts_its_body(
    api: Api,
    gateway: FakeGateway,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    sent: dict[str, Any],
    status: str,
) -> None:
    decided = await api(method, SID, CALL, *args, **kwargs)

    request = gateway.last
    assert (request.method, request.url.path) == ("POST", f"/v1/sessions/{SID}/approvals/{CALL}")
    assert body(request) == sent
    assert (decided.tool_call_id, decided.status, decided.decided_by) == (CALL, status, "key k1")


async def test_deciding_twice_is_a_conflict(api: Api, gateway: FakeGateway) -> None:
    await api("reject", SID, CALL, "no")

    with pytest.raises(Conflict) as raised:
        await api("approve", SID, CALL)

    assert raised.value.type.endswith("/approval-not-pending")


async def test_ids_are_quoted_into_one_path_segment(api: Api, gateway: FakeGateway) -> None:
    gateway.script.append(answer(problem(404, "not-found", "Not Found", "no such call")))
    with pytest.raises(Exception):  # noqa: B017 (only the request is looked at)
        await api("approve", SID, "../x?y")

    assert gateway.last.url.raw_path == f"/v1/sessions/{SID}/approvals/..%2Fx%3Fy".encode()


@pytest.mark.parametrize(
    ("decision", "kwargs", "complaint"),
    [
        ("edit", {}, "edit needs the arguments"),
        ("approve", {"arguments": {"x": 1}}, "only taken with edit"),
        ("maybe", {}, "decision"),
    ],
)
async def test_a_decision_the_api_refuses_is_not_sent(
    api: Api, gateway: FakeGateway, decision: str, kwargs: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        await api("decide", SID, CALL, decision, **kwargs)

    assert gateway.requests == []
    assert complaint in raised.value.detail


async def test_stream_turn_ends_at_the_pause(api: Api, gateway: FakeGateway) -> None:
    gateway.turn_streams.append(
        sse(
            frame(received(2)),
            frame(started(3)),
            frame(requested(4)),
            frame(paused(5, CALL)),
            frame(received(6, "t2")),
        )
    )

    items = await api.collect("stream_turn", SID, "6*7?")

    assert [i.type for i in items] == [
        "message.received",
        "turn.started",
        "tool.approval_requested",
        "turn.awaiting_approval",
    ]
    assert items[-1].tool_call_ids == [CALL]


async def test_follow_turn_reads_the_resumed_turn_to_its_end(
    api: Api, gateway: FakeGateway
) -> None:
    resumed = ev.TurnStarted(tenant_id="tn", session_id=SID, seq=7, turn_id="t1", resumed=True)
    gateway.event_streams.append(
        sse(frame(received(6, "t2")), frame(resumed), frame(completed(8)), frame(started(9, "t2")))
    )

    items = await api.collect("follow_turn", SID, "t1", after=5)

    assert [(i.type, i.seq) for i in items] == [("turn.started", 7), ("turn.completed", 8)]
    request = gateway.last
    assert (request.url.path, request.headers["last-event-id"]) == (
        f"/v1/sessions/{SID}/events",
        "5",
    )


async def test_follow_turn_stops_at_the_next_pause(api: Api, gateway: FakeGateway) -> None:
    gateway.event_streams.append(
        sse(frame(requested(8, "call_2")), frame(paused(9, "call_2")), frame(completed(10)))
    )

    items = await api.collect("follow_turn", SID, "t1", after=7)

    assert [i.seq for i in items] == [8, 9]


# --- the handle client ------------------------------------------------------------------------


class FakeStream:
    """What ``handle.options(stream=True).events.remote(...)`` returns: an async iterator of
    items with ``cancel()`` (the replica's call cancelled when the caller stops early)."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        for item in self.items:
            yield item

    def cancel(self) -> None:
        self.cancelled = True


class FakeHandle:
    """The gateway deployment's handle as the client uses it: records each remote call."""

    def __init__(self, stream: FakeStream) -> None:
        self.stream = stream
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def options(self, *, stream: bool) -> FakeHandle:
        return self

    def __getattr__(self, method: str) -> Any:
        handle = self

        class Method:
            @staticmethod
            def remote(*args: Any) -> Any:
                handle.calls.append((method, args))
                if method == "events":
                    return handle.stream
                return _answer(method, args)

        return Method()


async def _value(value: Any) -> Any:
    return value


def _answer(method: str, args: tuple[Any, ...]) -> Any:
    if method == "approvals":
        return _value(ApprovalList(items=[ApprovalOut.model_validate(approval_body(CALL))]))
    body = args[-1]
    status = _DECIDED[body.decision]
    return _value(ApprovalOut.model_validate(approval_body(args[2], status)))


async def test_handle_follow_turn_keeps_its_turn_and_stops_at_its_end() -> None:
    other = ev.TurnStarted(tenant_id="tn", session_id=SID, seq=6, turn_id="t2")
    resumed = ev.TurnStarted(tenant_id="tn", session_id=SID, seq=7, turn_id="t1", resumed=True)
    stream = FakeStream([other, resumed, paused(8, "call_2"), completed(9)])
    handle = FakeHandle(stream)
    client = HandleClient(handle, KEY)

    items = [i async for i in client.follow_turn(SID, "t1", after=5)]

    assert [i.seq for i in items] == [7, 8]  # t2's event skipped; stopped at the next pause
    assert handle.calls == [("events", (KEY, SID, 5))]
    assert stream.cancelled  # the replica's stream is not left open


async def test_handle_decisions_carry_the_api_models() -> None:
    handle = FakeHandle(FakeStream([]))
    client = HandleClient(handle, KEY)

    assert [a.tool_call_id for a in await client.approvals(SID, all=True)] == [CALL]
    edited = await client.edit(SID, CALL, {"expression": "6*8"}, message="rounded")
    rejected = await client.reject(SID, CALL, "no")

    assert (edited.status, rejected.status) == ("edited", "rejected")
    assert handle.calls[0] == ("approvals", (KEY, SID, True))
    method, (key, session_id, call_id, body) = handle.calls[1]
    assert (method, key, session_id, call_id) == ("decide_approval", KEY, SID, CALL)
    assert body == ApprovalDecisionIn(
        decision="edit", arguments={"expression": "6*8"}, message="rounded"
    )
    assert handle.calls[2][1][3] == ApprovalDecisionIn(decision="reject", message="no")
    with pytest.raises(PydanticValidationError):  # refused before any call
        await client.decide(SID, CALL, "edit")
    assert len(handle.calls) == 3
