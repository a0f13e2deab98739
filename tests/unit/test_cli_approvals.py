"""``agentcluster chat`` when a turn pauses for approvals, without a gateway: the waiting call is
shown, ``approve? [y/n/e]`` is asked (an edit re-asks on bad JSON), the answer is sent, and the
resumed turn is streamed to its end from the pause's seq."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import pytest

from agentcluster import events as ev
from agentcluster.api import ApprovalOut, SessionOut
from agentcluster.cli._chat import run_chat
from agentcluster.client import StreamItem, error_from_problem
from agentcluster.domain import ApprovalDecision
from tests.unit.test_cli import SID, TURN, ScriptedApi, _ids, console, delta, render

pytestmark = pytest.mark.timeout(30)

CALL = "c1"


def waiting(call: str = CALL, arguments: dict[str, Any] | None = None) -> ApprovalOut:
    return ApprovalOut(
        tool_call_id=call,
        session_id=SID,
        turn_id=TURN,
        tool="calculator",
        arguments={"expression": "6*7"} if arguments is None else arguments,
        reason="calculations need a person",
        status="pending",
        decisions=["approve", "edit", "reject"],
        created_at=datetime.now(UTC),
    )


def paused_turn(*calls: str) -> list[StreamItem]:
    return [
        ev.MessageReceived(**_ids(1), message_id="m1", content="q"),
        ev.TurnStarted(**_ids(2)),
        *[
            ev.ToolRequested(
                **_ids(3), tool_call_id=call, tool="calculator", arguments={"expression": "6*7"}
            )
            for call in calls
        ],
        ev.TurnAwaitingApproval(**_ids(5), tool_call_ids=list(calls)),
    ]


def resumed_turn(result: Any = 42, seq: int = 6) -> list[StreamItem]:
    ok = not isinstance(result, str)
    return [
        ev.TurnStarted(**_ids(seq), resumed=True),
        ev.ToolCompleted(
            **_ids(seq + 1),
            tool_call_id=CALL,
            tool="calculator",
            ok=ok,
            result={"value": result} if ok else None,
            error=None if ok else result,
        ),
        delta("done"),
        ev.TurnCompleted(**_ids(seq + 2), message_id="m2", content="done"),
    ]


class ApprovingApi(ScriptedApi):
    """The scripted chat API with approvals: ``pending`` is what ``approvals`` lists,
    ``follows`` answers each ``follow_turn`` in order; decisions are recorded."""

    def __init__(
        self,
        turns: list[Sequence[StreamItem | type[KeyboardInterrupt]]],
        follows: list[list[StreamItem]],
        pending: list[ApprovalOut],
    ) -> None:
        super().__init__(turns)
        self.follows = follows
        self.pending = pending
        self.decisions: list[tuple[str, str, dict[str, Any] | None, str | None]] = []
        self.followed: list[tuple[str, int]] = []
        self.session_status: Literal["active", "awaiting_approval"] = "active"
        self.refuse: set[str] = set()

    def get_session(self, session_id: str) -> SessionOut:
        session = super().get_session(session_id)
        return session.model_copy(update={"status": self.session_status, "last_seq": 5})

    def approvals(self, session_id: str, *, all: bool = False) -> list[ApprovalOut]:
        return list(self.pending)

    def decide(
        self,
        session_id: str,
        tool_call_id: str,
        decision: ApprovalDecision,
        *,
        arguments: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> ApprovalOut:
        if tool_call_id in self.refuse:
            raise error_from_problem(409, "Conflict", "approval-not-pending", "it expired")
        self.decisions.append((tool_call_id, decision, arguments, message))
        self.pending = [a for a in self.pending if a.tool_call_id != tool_call_id]
        return waiting(tool_call_id)

    def follow_turn(self, session_id: str, turn_id: str, *, after: int = 0) -> Iterator[StreamItem]:
        self.followed.append((turn_id, after))
        yield from self.follows.pop(0)


def chat(api: ApprovingApi, lines: list[str], session_id: str | None = None) -> tuple[int, str]:
    chat_console, out, _ = console(lines)
    code = run_chat(api, agent="tester", session_id=session_id, console=chat_console)
    return code, out.getvalue()


SHOWN = '  [approval needed: calculator {"expression": "6*7"}: calculations need a person]\n'


def test_y_approves_and_the_resumed_turn_streams_to_its_end() -> None:
    api = ApprovingApi([paused_turn(CALL)], [resumed_turn()], [waiting()])

    code, out = chat(api, ["what is 6*7?", "y"])

    assert code == 0
    assert api.decisions == [(CALL, "approve", None, None)]
    assert api.followed == [(TURN, 5)]  # after the pause's seq
    assert out == (
        SHOWN
        + "approve? [y/n/e] y\n"
        + '  [tool calculator {"expression": "6*7"} -> 42]\n'
        + "tester> done\n"
    )


def test_n_rejects_with_a_message_and_asks_again_after_a_bad_answer() -> None:
    api = ApprovingApi([paused_turn(CALL)], [resumed_turn("rejected by a person: no")], [waiting()])

    code, out = chat(api, ["q", "maybe", "n", "not this one"])

    assert code == 0
    assert api.decisions == [(CALL, "reject", None, "not this one")]
    assert "approve? [y/n/e] maybe\napprove? [y/n/e] n\n" in out
    assert "message for the model (optional): not this one\n" in out
    assert "-> error: rejected by a person: no]" in out


def test_e_edits_and_re_asks_on_invalid_json() -> None:
    api = ApprovingApi([paused_turn(CALL)], [resumed_turn(48)], [waiting()])

    code, out = chat(api, ["q", "e", "{bad", "[1]", '{"expression": "6*8"}'])

    assert code == 0
    assert api.decisions == [(CALL, "edit", {"expression": "6*8"}, None)]
    assert "  [not JSON: Expecting property name enclosed in double quotes at column 2]\n" in out
    assert "  [the arguments must be a JSON object]\n" in out
    assert out.count("arguments (JSON object): ") == 3


def test_two_waiting_calls_are_asked_in_turn_and_a_second_pause_too() -> None:
    second = [
        ev.TurnStarted(**_ids(6), resumed=True),
        ev.ToolRequested(
            **_ids(7), tool_call_id="c3", tool="calculator", arguments={"expression": "1"}
        ),
        ev.TurnAwaitingApproval(**_ids(8), tool_call_ids=["c3"]),
    ]
    api = ApprovingApi(
        [paused_turn(CALL, "c2")], [second, resumed_turn(seq=9)], [waiting(), waiting("c2")]
    )
    original_decide = api.decide

    def decide_then_pause_again(*args: Any, **kwargs: Any) -> ApprovalOut:
        decided = original_decide(*args, **kwargs)
        if not api.pending and len(api.decisions) == 2:
            api.pending = [waiting("c3", {"expression": "1"})]
        return decided

    api.decide = decide_then_pause_again  # type: ignore[method-assign]

    code, out = chat(api, ["q", "y", "n", "", "y"])

    assert code == 0
    assert [(d[0], d[1]) for d in api.decisions] == [
        (CALL, "approve"),
        ("c2", "reject"),
        ("c3", "approve"),
    ]
    assert api.followed == [(TURN, 5), (TURN, 8)]
    assert out.count("approve? [y/n/e]") == 3 and out.endswith("tester> done\n")


def test_end_of_input_leaves_the_call_waiting() -> None:
    api = ApprovingApi([paused_turn(CALL)], [], [waiting()])

    code, out = chat(api, ["q"])

    assert (code, api.decisions, api.followed) == (0, [], [])
    assert out.endswith("  [left waiting for approval]\n")


def test_a_call_decided_meanwhile_is_reported_and_the_turn_followed() -> None:
    api = ApprovingApi([paused_turn(CALL)], [resumed_turn()], [waiting()])
    api.refuse = {CALL}

    code, out = chat(api, ["q", "y"])

    assert code == 0
    assert "  [not decided: it expired]\n" in out and out.endswith("tester> done\n")


def test_resuming_a_waiting_session_asks_first() -> None:
    api = ApprovingApi([], [resumed_turn()], [waiting()])
    api.session_status = "awaiting_approval"

    code, out = chat(api, ["y"], session_id=SID)

    assert code == 0
    assert api.decisions == [(CALL, "approve", None, None)]
    assert api.followed == [(TURN, 5)]  # the session's last seq before deciding
    assert out.startswith(SHOWN) and out.endswith("tester> done\n")


def test_arguments_cannot_carry_terminal_escapes() -> None:
    hostile = waiting(arguments={"expression": "\x1b]0;owned\x07 1+1"})
    api = ApprovingApi([paused_turn(CALL)], [resumed_turn()], [hostile])

    _, out = chat(api, ["q", "y"])

    assert "\x1b" not in out and "\x07" not in out
    assert '{"expression": "\\u001b]0;owned\\u0007 1+1"}' in out


def test_an_expired_approval_is_shown_and_an_edit_shows_the_arguments_that_ran() -> None:
    expired = ev.ToolApprovalDecided(
        **_ids(6),
        tool_call_id=CALL,
        tool="calculator",
        decision="reject",
        decided_by="expiry",
        expired=True,
    )
    edited = ev.ToolApprovalDecided(
        **_ids(6),
        tool_call_id="c2",
        tool="calculator",
        decision="edit",
        arguments={"expression": "6*8"},
        decided_by="key k1",
    )
    ran = ev.ToolCompleted(
        **_ids(7), tool_call_id="c2", tool="calculator", ok=True, result={"value": 48}
    )
    requested = ev.ToolRequested(
        **_ids(3), tool_call_id="c2", tool="calculator", arguments={"expression": "6*7"}
    )

    text, _ = render([expired, requested, edited, ran])

    assert text == (
        "  [approval of calculator expired: rejected]\n"
        '  [tool calculator {"expression": "6*8"} -> 48]\n'
    )
