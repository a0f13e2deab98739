"""LangGraph's vocabulary over agentcluster's records, as pure functions: assistants are agents,
threads are sessions, runs are turns, and a thread's state is ``{"messages": [...]}`` in
LangChain's message shape (``human``, ``ai`` with ``tool_calls``, ``tool``).

Message ids are the same whether a message is read from the store (``/state``, ``/history``,
``runs/wait``) or built from a turn's events while it streams, so clients that merge messages by
id see each message once: a user message keeps its stored id; the agent's messages of a turn are
``<turn id>-<n>``, ``n`` counting the turn's messages after the user's (the journal stores each of
them with the event that announces it, in the same order).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from agentcluster import events as ev
from agentcluster.domain import Message, TurnStatus

__all__ = [
    "ASSISTANT_NAMESPACE",
    "RunStatus",
    "ThreadStatus",
    "agent_message",
    "assistant_id",
    "human_message",
    "input_text",
    "message_id",
    "messages_of",
    "run_status",
    "thread_status",
    "tool_content",
    "tool_message",
]

ASSISTANT_NAMESPACE = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
"""LangGraph servers name a graph's default assistant ``uuid5(this, graph_id)``; so do we."""

RunStatus = Literal["pending", "running", "error", "success", "timeout", "interrupted"]
ThreadStatus = Literal["idle", "busy", "interrupted", "error"]
EARLIER = "[Earlier messages of this conversation, sent by the client]"
CURRENT = "[Current message]"

_RUN_STATUS: dict[TurnStatus, RunStatus] = {
    "queued": "pending",
    "running": "running",
    "awaiting_approval": "interrupted",
    "completed": "success",
    "failed": "error",
    "cancelled": "interrupted",
}
_ROLES = {"user": "human", "human": "human", "assistant": "ai", "ai": "ai", "system": "system"}


def assistant_id(agent: str) -> str:
    """The stable assistant id of an agent (what LangGraph gives a graph's default assistant)."""
    return str(uuid.uuid5(ASSISTANT_NAMESPACE, agent))


def run_status(status: TurnStatus) -> RunStatus:
    return _RUN_STATUS[status]


def thread_status(last_turn: TurnStatus | None) -> ThreadStatus:
    """A thread is busy while its latest turn is queued or running, interrupted while it waits
    for approvals, in error after a failed one, idle otherwise."""
    if last_turn in ("queued", "running"):
        return "busy"
    if last_turn == "awaiting_approval":
        return "interrupted"
    return "error" if last_turn == "failed" else "idle"


def message_id(turn_id: str, position: int) -> str:
    """The id of the turn's ``position``-th message after the user's (from 1)."""
    return f"{turn_id}-{position}"


def _base(kind: str, content: Any, msg_id: str, name: str | None = None) -> dict[str, Any]:
    return {
        "content": content,
        "additional_kwargs": {},
        "response_metadata": {},
        "type": kind,
        "name": name,
        "id": msg_id,
    }


def human_message(content: str, msg_id: str) -> dict[str, Any]:
    return {**_base("human", content, msg_id), "example": False}


def _tool_calls(calls: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """LangChain ``tool_calls`` (arguments parsed) and ``invalid_tool_calls`` of stored calls."""
    valid: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    for call in calls:
        raw = call.get("arguments") or "{}"
        try:
            args = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError:
            args = None
        entry = {"name": call.get("name"), "id": call.get("id")}
        if isinstance(args, dict):
            valid.append({**entry, "args": args, "type": "tool_call"})
        else:
            invalid.append({**entry, "args": raw, "error": None, "type": "invalid_tool_call"})
    return valid, invalid


def agent_message(
    content: str | None,
    msg_id: str,
    tool_calls: Iterable[dict[str, Any]] = (),
    usage: ev.Usage | None = None,
    chunk: bool = False,
) -> dict[str, Any]:
    """An ``ai`` message (``AIMessageChunk`` with ``chunk``) with its tool calls."""
    calls, invalid = _tool_calls(tool_calls)
    message = {
        **_base("AIMessageChunk" if chunk else "ai", content or "", msg_id),
        "example": False,
        "tool_calls": calls,
        "invalid_tool_calls": invalid,
        "usage_metadata": _usage(usage),
    }
    if chunk:
        message["tool_call_chunks"] = [
            {
                "name": call["name"],
                "args": json.dumps(call["args"]),
                "id": call["id"],
                "index": index,
                "type": "tool_call_chunk",
            }
            for index, call in enumerate(calls)
        ]
    return message


def _usage(usage: ev.Usage | None) -> dict[str, int] | None:
    if usage is None or usage.total_tokens == 0:
        return None
    return {
        "input_tokens": usage.prompt_tokens,
        "output_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def tool_content(ok: bool, result: Any, error: str | None) -> str:
    """The text the model read as a tool's result (as the agent loop renders it)."""
    if ok:
        return result if isinstance(result, str) else json.dumps(result, default=str)
    return json.dumps({"error": error or "tool failed"})


def tool_message(
    content: str, msg_id: str, tool_call_id: str | None, name: str | None, ok: bool = True
) -> dict[str, Any]:
    return {
        **_base("tool", content, msg_id, name),
        "tool_call_id": tool_call_id,
        "artifact": None,
        "status": "success" if ok else "error",
    }


def messages_of(stored: Iterable[Message]) -> list[dict[str, Any]]:
    """A session's stored messages as LangChain messages (ids as the stream gives them), without
    those of rolled back turns."""
    out: list[dict[str, Any]] = []
    positions: dict[str, int] = {}
    tool_names: dict[str, str] = {}
    for message in stored:
        if message.rolled_back:  # a rolled back turn's messages are gone from the thread
            continue
        if message.role == "user" or message.turn_id is None:
            kind = "human" if message.role == "user" else _ROLES.get(message.role, "system")
            out.append({**_base(kind, message.content, message.message_id), "example": False})
            continue
        position = positions.get(message.turn_id, 0) + 1
        positions[message.turn_id] = position
        msg_id = message_id(message.turn_id, position)
        if message.role == "tool":
            name = tool_names.get(message.tool_call_id or "")
            out.append(tool_message(message.content, msg_id, message.tool_call_id, name))
        else:
            calls = message.tool_calls or []
            tool_names.update({str(c.get("id")): str(c.get("name")) for c in calls})
            out.append(agent_message(message.content, msg_id, calls))
    return out


# -- input ------------------------------------------------------------------------------------


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content
        )
    return "" if content is None else str(content)


def _role(message: Any) -> tuple[str, str]:
    if isinstance(message, str):
        return "human", message
    if isinstance(message, list | tuple) and len(message) == 2:  # ("user", "text")
        return _ROLES.get(str(message[0]), str(message[0])), _text(message[1])
    if isinstance(message, dict):
        role = str(message.get("role") or message.get("type") or "")
        return _ROLES.get(role, role), _text(message.get("content"))
    raise ValueError("each input message is an object with role (or type) and content")


def input_text(run_input: Any, limit: int) -> str:
    """The user message a run's ``input`` sends: the text of its last message (of any role: a
    client may end with an AI or a system message and get the agent's answer to it). Earlier
    messages go before it as a plain transcript, the oldest left out while the whole is longer
    than ``limit`` characters (the thread's stored history is the context; the agent keeps its
    own system prompt).

    Raises:
        ValueError: the input has no ``messages`` ending with a message with text.
    """
    messages = run_input.get("messages") if isinstance(run_input, dict) else None
    if isinstance(messages, dict | str):
        messages = [messages]
    if not isinstance(messages, list) or not messages:
        raise ValueError("input.messages must be a non-empty list of messages")
    *earlier, (_, current) = [_role(message) for message in messages]
    if not current:
        raise ValueError("the last input message must have text")
    lines = [f"{role}: {text}" for role, text in earlier]
    while lines:
        text = "\n".join([EARLIER, *lines, "", CURRENT, current])
        if len(text) <= limit:
            return text
        del lines[0]
    return current


def timestamp(moment: datetime | None = None) -> str:
    """ISO 8601 with the UTC offset, as LangGraph servers write times."""
    return (moment or datetime.now(UTC)).isoformat()
