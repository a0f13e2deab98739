"""``agentcluster chat``: a conversation in the terminal, streamed as the agent writes it.

:class:`ChatRenderer` turns one turn's stream (events and ``Delta`` fragments) into terminal text;
:func:`run_chat` is the read-send-render loop over anything with the client's session methods
(:class:`ChatApi`), so both are tested without a gateway.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from agentcluster import events as ev
from agentcluster.api import CancelOut, SessionOut
from agentcluster.client import Delta, StreamItem

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
    """

    def __init__(self, out: TextIO, label: str) -> None:
        self.out = out
        self.label = label
        self.turn_id: str | None = None
        self.failed = False
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


def _run_turn(api: ChatApi, session_id: str, text: str, renderer: ChatRenderer) -> None:
    stream = api.stream_turn(session_id, text)
    try:
        for item in stream:
            renderer.feed(item)
    except KeyboardInterrupt:
        # Ctrl-C cancels this turn only; the chat goes on.
        outcome = api.cancel(session_id, renderer.turn_id)
        renderer.note("[cancelled]" if outcome.cancelled else "[interrupted; nothing to cancel]")
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
        renderer.end()


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
        _run_turn(api, session.session_id, text, renderer)
        failed = failed or renderer.failed
    return 1 if failed else 0
