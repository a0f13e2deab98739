"""``agentcluster chat``: a conversation in the terminal, streamed as the agent writes it.

:class:`ChatRenderer` turns one turn's stream (events and ``Delta`` fragments) into terminal text;
:func:`run_chat` is the read-send-render loop over anything with the client's session methods
(:class:`ChatApi`), so both are tested without a gateway.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from agentcluster import events as ev
from agentcluster.api import ApprovalOut, CancelOut, SessionOut
from agentcluster.client import Conflict, Delta, NotFound, StreamItem
from agentcluster.domain import ApprovalDecision

__all__ = ["ChatApi", "ChatRenderer", "Console", "run_chat"]

QUIT_COMMANDS = frozenset({"/quit", "/exit"})
_MAX_SHOWN = 200


class ChatApi(Protocol):
    """The client methods a chat needs (``agentcluster.client.Client`` has them)."""

    def create_session(
        self, agent: str = "default", metadata: dict[str, Any] | None = None
    ) -> SessionOut: ...

    def get_session(self, session_id: str) -> SessionOut: ...

    def stream_turn(self, session_id: str, content: str) -> Iterator[StreamItem]: ...

    def cancel(self, session_id: str, turn_id: str | None = None) -> CancelOut: ...

    def follow_turn(
        self, session_id: str, turn_id: str, *, after: int = 0
    ) -> Iterator[StreamItem]: ...

    def approvals(self, session_id: str, *, all: bool = False) -> list[ApprovalOut]: ...

    def decide(
        self,
        session_id: str,
        tool_call_id: str,
        decision: ApprovalDecision,
        *,
        arguments: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> ApprovalOut: ...


def _compact(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _shown_result(result: Any) -> str:
    # Tools such as the calculator echo their input next to the value: show just the value.
    if isinstance(result, dict) and "value" in result:
        return _compact(result["value"])
    return _compact(result)


class ChatRenderer:
    """Writes one turn to ``out``: the answer token by token, tool calls and policy decisions on
    lines of their own (``  [tool calculator {"expression": "6*7"} -> 42]``), and how the turn
    ended when it did not complete.

    Attributes:
        turn_id: the turn, once its first item has arrived.
        failed: the turn ended with ``turn.failed``.
        paused: the turn's ``turn.awaiting_approval`` when its stream ended there.
    """

    def __init__(self, out: TextIO, label: str) -> None:
        self.out = out
        self.label = label
        self.turn_id: str | None = None
        self.failed = False
        self.paused: ev.TurnAwaitingApproval | None = None
        self._mid_line = False
        self._wrote_answer = False
        self._streamed_steps: set[int] = set()
        self._arguments: dict[str, dict[str, Any]] = {}
        self._denied: set[str] = set()

    def feed(self, item: StreamItem) -> None:
        """Render one stream item."""
        if self.turn_id is None:
            self.turn_id = getattr(item, "turn_id", None)
        match item:
            case Delta():
                self._text(item.text)
                self._streamed_steps.add(item.step)
            case ev.LlmCompleted(content=str(content)) if item.step not in self._streamed_steps:
                self._text(content)  # the model answered without streaming
            case ev.ToolRequested():
                self._arguments[item.tool_call_id] = item.arguments
            case ev.ToolApprovalDecided():
                self._decided(item)
            case ev.TurnAwaitingApproval():
                self.paused = item
            case ev.TurnStarted(resumed=True):
                self.paused = None
            case ev.ToolDecided(allowed=False):
                self._denied.add(item.tool_call_id)
                arguments = _compact(self._arguments.get(item.tool_call_id, {}))
                self._note(f"[policy denied {item.tool} {arguments}: {item.reason or 'no reason'}]")
            case ev.ToolCompleted() if item.tool_call_id not in self._denied:
                self._tool(item)
            case ev.TurnCompleted(content=content) if not self._wrote_answer:
                self._text(content)
            case ev.TurnFailed():
                self.failed = True
                self._note(f"[turn failed: {item.error_type}: {item.error}]")
            case ev.TurnCancelled():
                self._note(f"[turn cancelled{': ' + item.reason if item.reason else ''}]")

    def note(self, text: str) -> None:
        """A line of the CLI's own (e.g. about a cancel) between the turn's output."""
        self._note(text)

    def end(self) -> None:
        """Finish the turn's last line."""
        if self._mid_line:
            self.out.write("\n")
            self._mid_line = False
        self.out.flush()

    def _text(self, text: str) -> None:
        if not text:
            return
        if not self._mid_line:
            self.out.write(f"{self.label}> ")
            self._mid_line = True
        self.out.write(text)
        self.out.flush()
        self._wrote_answer = True

    def _note(self, text: str) -> None:
        self.end()
        self.out.write(f"  {text}\n")
        self.out.flush()

    def _decided(self, item: ev.ToolApprovalDecided) -> None:
        if item.arguments is not None:
            self._arguments[item.tool_call_id] = item.arguments  # what runs after an edit
        if item.expired:
            self._note(f"[approval of {item.tool} expired: rejected]")

    def _tool(self, item: ev.ToolCompleted) -> None:
        arguments = _compact(self._arguments.get(item.tool_call_id, {}))
        outcome = _shown_result(item.result) if item.ok else f"error: {item.error}"
        self._note(f"[tool {item.tool} {arguments} -> {outcome}]")


@dataclass
class Console:
    """Where the chat reads and writes: ``read_line(prompt)`` raises EOFError at the end."""

    read_line: Callable[[str], str]
    out: TextIO
    err: TextIO
    interactive: bool


def _render(api: ChatApi, session_id: str, stream: Iterator[StreamItem], r: ChatRenderer) -> bool:
    """Feed ``stream`` to the renderer; False when Ctrl-C cancelled the turn instead."""
    try:
        for item in stream:
            r.feed(item)
    except KeyboardInterrupt:
        _cancel(api, session_id, r.turn_id, r)
        return False
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
        r.end()
    return True


def _cancel(api: ChatApi, session_id: str, turn_id: str | None, renderer: ChatRenderer) -> None:
    # Ctrl-C cancels this turn only; the chat goes on.
    outcome = api.cancel(session_id, turn_id)
    renderer.note("[cancelled]" if outcome.cancelled else "[interrupted; nothing to cancel]")


def _run_turn(
    api: ChatApi, session_id: str, text: str, renderer: ChatRenderer, console: Console
) -> None:
    if _render(api, session_id, api.stream_turn(session_id, text), renderer):
        _through_pauses(api, session_id, renderer, console)


def _through_pauses(
    api: ChatApi, session_id: str, renderer: ChatRenderer, console: Console
) -> None:
    """While the turn waits for approvals: ask about each call, then stream what follows."""
    while (pause := renderer.paused) is not None:
        renderer.paused = None
        if not _decide_all(api, session_id, pause.turn_id, pause.tool_call_ids, console, renderer):
            return
        follow = api.follow_turn(session_id, pause.turn_id, after=pause.seq)
        if not _render(api, session_id, follow, renderer):
            return


@dataclass(frozen=True)
class _Choice:
    decision: ApprovalDecision
    arguments: dict[str, Any] | None = None
    message: str | None = None


def _decide_all(
    api: ChatApi,
    session_id: str,
    turn_id: str,
    tool_call_ids: list[str],
    console: Console,
    renderer: ChatRenderer,
) -> bool:
    """Ask about each of the turn's waiting calls and send the answers; False when the person
    left (end of input: the calls stay waiting) or cancelled the turn (Ctrl-C)."""
    waiting = {a.tool_call_id: a for a in api.approvals(session_id) if a.turn_id == turn_id}
    for tool_call_id in tool_call_ids:
        approval = waiting.get(tool_call_id)
        if approval is None:
            continue  # decided elsewhere, or expired, meanwhile
        try:
            choice = _ask(console, approval, renderer)
        except EOFError:
            renderer.note("[left waiting for approval]")
            return False
        except KeyboardInterrupt:
            renderer.end()
            _cancel(api, session_id, turn_id, renderer)
            return False
        try:
            api.decide(
                session_id,
                tool_call_id,
                choice.decision,
                arguments=choice.arguments,
                message=choice.message,
            )
        except (Conflict, NotFound) as exc:
            renderer.note(f"[not decided: {exc.detail or exc}]")
    return True


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    # Tool names and reasons go to a terminal: no escape sequences from anyone's data.
    return _CONTROL.sub("?", text)


def _ask(console: Console, approval: ApprovalOut, renderer: ChatRenderer) -> _Choice:
    """Show one waiting call and read the person's decision."""
    # json.dumps escapes control characters, so the model's arguments cannot steer the terminal.
    arguments = json.dumps(approval.arguments, ensure_ascii=False)
    reason = f": {_printable(approval.reason)}" if approval.reason else ""
    renderer.note(f"[approval needed: {_printable(approval.tool)} {arguments}{reason}]")
    while True:
        answer = _read(console, "approve? [y/n/e] ").strip().lower()
        if answer in ("y", "yes"):
            return _Choice("approve")
        if answer in ("n", "no"):
            message = _read(console, "message for the model (optional): ").strip()
            return _Choice("reject", message=message or None)
        if answer in ("e", "edit"):
            return _Choice("edit", arguments=_read_arguments(console, renderer))


def _read_arguments(console: Console, renderer: ChatRenderer) -> dict[str, Any]:
    while True:
        text = _read(console, "arguments (JSON object): ")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            renderer.note(f"[not JSON: {exc.msg} at column {exc.colno}]")
            continue
        if isinstance(value, dict):
            return value
        renderer.note("[the arguments must be a JSON object]")


def _read(console: Console, prompt: str) -> str:
    """A line from the person; from a pipe the prompt and answer are echoed, as a transcript."""
    if console.interactive:
        return console.read_line(prompt)
    answer = console.read_line("")
    console.out.write(f"{prompt}{answer}\n")
    console.out.flush()
    return answer


def _resume_waiting(api: ChatApi, session: SessionOut, console: Console) -> None:
    """A resumed session whose turn waits for approvals: ask about them first, then stream
    the turn to its end (from the session's last seq, read before anything is decided)."""
    waiting = api.approvals(session.session_id)
    if not waiting:
        return
    turn_id = waiting[0].turn_id
    renderer = ChatRenderer(console.out, session.agent)
    ids = [a.tool_call_id for a in waiting if a.turn_id == turn_id]
    if not _decide_all(api, session.session_id, turn_id, ids, console, renderer):
        return
    follow = api.follow_turn(session.session_id, turn_id, after=session.last_seq)
    if _render(api, session.session_id, follow, renderer):
        _through_pauses(api, session.session_id, renderer, console)


def _open_session(api: ChatApi, agent: str, session_id: str | None) -> SessionOut:
    if session_id is None:
        return api.create_session(agent=agent)
    return api.get_session(session_id)


def run_chat(api: ChatApi, *, agent: str, session_id: str | None, console: Console) -> int:
    """Create (or resume) a session and chat until ``/quit``, end of input or Ctrl-C at the prompt.

    Returns:
        1 if a turn failed or the session is closed, else 0. API errors propagate.
    """
    session = _open_session(api, agent, session_id)
    if session.status == "closed":
        print(f"agentcluster: session {session.session_id} is closed", file=console.err)
        return 1
    hint = " /quit or Ctrl-D leaves, Ctrl-C cancels a turn" if console.interactive else ""
    print(f"session {session.session_id} (agent {session.agent}){hint}", file=console.err)
    prompt = "you> " if console.interactive else ""
    failed = False
    if session.status == "awaiting_approval":
        _resume_waiting(api, session, console)
    while True:
        try:
            text = console.read_line(prompt).strip()
        except (EOFError, KeyboardInterrupt):
            if console.interactive:
                console.out.write("\n")
            break
        if text in QUIT_COMMANDS:
            break
        if not text:
            continue
        renderer = ChatRenderer(console.out, session.agent)
        _run_turn(api, session.session_id, text, renderer, console)
        failed = failed or renderer.failed
    return 1 if failed else 0
