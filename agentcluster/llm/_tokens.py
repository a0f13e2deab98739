"""Token counting with tiktoken, offline, and trimming a conversation to a model's context window.

The encoding is chosen on purpose, from the model's name (any ``provider/`` prefix is ignored):

* ``o200k_base`` for the GPT-4o generation and later (``gpt-4o*``, ``chatgpt-4o*``, ``gpt-4.1*``,
  ``gpt-4.5*``, ``gpt-5*``, ``gpt-oss*``) and the o-series reasoning models (``o1*``, ``o3*``,
  ``o4*``), which is what tiktoken itself maps them to;
* ``cl100k_base`` for everything else, unknown models included. Other providers' tokenizers differ
  anyway; cl100k is a stable, middle-of-the-road estimate. (LiteLLM's ``encode`` uses cl100k even
  for gpt-4o, which is why we do not delegate to it.)

Counts follow OpenAI's recipe for chat messages: 3 tokens of framing per message, the encoded role
and content, tool calls and tool-call ids counted as their JSON text, plus 3 tokens priming the
reply. They are estimates (providers add hidden formatting around tools), good to a few percent.

tiktoken would download its encodings on first use; :func:`prepare_offline_environment` points it
at the copies LiteLLM bundles before the first ``get_encoding``.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence

import tiktoken

from agentcluster.config import prepare_offline_environment
from agentcluster.errors import ValidationFailed
from agentcluster.llm._types import ChatMessage, ToolSchema

__all__ = [
    "CL100K_BASE",
    "O200K_BASE",
    "count_message",
    "count_messages",
    "count_text",
    "count_tools",
    "encoding_name_for",
    "trim_history",
    "trim_to_window",
]

O200K_BASE = "o200k_base"
CL100K_BASE = "cl100k_base"

_O200K_PREFIXES = (
    "gpt-4o",
    "chatgpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "gpt-oss",
    "o1",
    "o3",
    "o4",
)
_TOKENS_PER_MESSAGE = 3
_REPLY_PRIMING = 3


def encoding_name_for(model: str) -> str:
    """The tiktoken encoding used to count tokens for ``model`` (see the module docstring)."""
    name = model.rsplit("/", 1)[-1].strip().lower()
    return O200K_BASE if name.startswith(_O200K_PREFIXES) else CL100K_BASE


@functools.lru_cache(maxsize=8)
def _encoding(name: str) -> tiktoken.Encoding:
    prepare_offline_environment()
    return tiktoken.get_encoding(name)


class _CountCache:
    """Token counts of recently counted texts, by encoding, at most ``max_chars`` of text kept.

    A turn counts the session's whole history to fit it in the window; each message's text is
    counted once, not on every step of every turn (the history's strings are the same objects,
    whose hash Python keeps)."""

    def __init__(self, max_chars: int) -> None:
        self._max_chars = max_chars
        self._chars = 0
        self._counts: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._lock = threading.Lock()  # a browser task's model may count from its thread

    def count(self, encoding: str, text: str) -> int:
        key = (encoding, text)
        with self._lock:
            found = self._counts.get(key)
            if found is not None:
                self._counts.move_to_end(key)
                return found
        # disallowed_special=() counts text such as "<|endoftext|>" as plain text.
        counted = len(_encoding(encoding).encode(text, disallowed_special=()))
        if len(text) > self._max_chars // 16:  # a huge text would evict everything else
            return counted
        with self._lock:
            if key not in self._counts:
                self._counts[key] = counted
                self._chars += len(text)
            while self._chars > self._max_chars:
                (_name, old), _ = self._counts.popitem(last=False)
                self._chars -= len(old)
        return counted


_COUNTS = _CountCache(max_chars=8_000_000)


def count_text(text: str, model: str = "") -> int:
    """Tokens of ``text`` in the encoding of ``model``."""
    if not text:
        return 0
    return _COUNTS.count(encoding_name_for(model), text)


def count_message(message: ChatMessage, model: str = "") -> int:
    """Tokens one message adds to a prompt: framing, role, content, tool calls and call id."""
    tokens = _TOKENS_PER_MESSAGE + count_text(message.role, model)
    tokens += count_text(message.content or "", model)
    if message.tool_calls:
        calls = [{"name": call.name, "arguments": call.arguments} for call in message.tool_calls]
        tokens += count_text(json.dumps(calls, separators=(",", ":")), model)
    if message.tool_call_id:
        tokens += count_text(message.tool_call_id, model)
    return tokens


def count_tools(tools: Sequence[ToolSchema], model: str = "") -> int:
    """Tokens of the tool definitions, counted as their JSON (an estimate)."""
    if not tools:
        return 0
    wire = [tool.to_openai() for tool in tools]
    return count_text(json.dumps(wire, separators=(",", ":")), model)


def count_messages(
    messages: Sequence[ChatMessage], model: str = "", tools: Sequence[ToolSchema] = ()
) -> int:
    """Prompt tokens of a whole request: every message, the tools and the reply priming."""
    return (
        _REPLY_PRIMING
        + count_tools(tools, model)
        + sum(count_message(message, model) for message in messages)
    )


def trim_history(
    messages: Sequence[ChatMessage],
    context_window: int,
    reserve_output_tokens: int,
    tools: Sequence[ToolSchema] = (),
    *,
    model: str = "",
) -> tuple[list[ChatMessage], int, int]:
    """Keep the system prompt(s) and the latest messages that fit the context window.

    The system messages and the last user message are always kept. Then whole groups are added,
    newest first, until the next one does not fit; a group is one message, or an assistant message
    with tool calls together with the tool results that follow it, so a call is never separated
    from its results. The kept history never starts with a ``tool`` message. Order is preserved.

    Args:
        messages: the conversation, oldest first.
        context_window: the model's context window, in tokens.
        reserve_output_tokens: tokens left free for the reply.
        tools: the tool definitions sent with the request (they take room too).
        model: selects the encoding (see :func:`encoding_name_for`).

    Returns:
        ``(kept_messages, dropped_count, prompt_tokens)``; ``prompt_tokens`` counts the kept
        messages, the tools and the reply priming.

    Raises:
        ValueError: ``reserve_output_tokens`` is negative or leaves no room in the window.
        ValidationFailed: even the system prompt(s) and the last user message do not fit.
    """
    budget = context_window - reserve_output_tokens
    if reserve_output_tokens < 0 or budget <= 0:
        raise ValueError(
            f"reserve_output_tokens={reserve_output_tokens} leaves no room in a context window "
            f"of {context_window} tokens"
        )
    sizes = [count_message(message, model) for message in messages]
    kept = _required_indices(messages)
    used = _REPLY_PRIMING + count_tools(tools, model) + sum(sizes[i] for i in kept)
    if used > budget:
        raise ValidationFailed(
            f"the system prompt and the last user message need {used} tokens, but only {budget} "
            f"fit (context window {context_window} minus {reserve_output_tokens} reserved for "
            f"the reply)"
        )
    for group in reversed(_groups(messages)):
        cost = sum(sizes[i] for i in group if i not in kept)
        if used + cost > budget:
            break
        kept.update(group)
        used += cost
    for index in _leading_tool_messages(messages, kept):
        kept.discard(index)
        used -= sizes[index]
    return [messages[i] for i in sorted(kept)], len(messages) - len(kept), used


def trim_to_window(
    messages: list[ChatMessage], context_window: int, reserve: int, tools: list[ToolSchema]
) -> list[ChatMessage]:
    """The agent loop's Trimmer: :func:`trim_history`'s kept messages (tiktoken counts, system
    prompt and latest turns kept)."""
    kept, _dropped, _tokens = trim_history(messages, context_window, reserve, tools)
    return kept


def _required_indices(messages: Sequence[ChatMessage]) -> set[int]:
    required = {i for i, message in enumerate(messages) if message.role == "system"}
    users = [i for i, message in enumerate(messages) if message.role == "user"]
    if users:
        required.add(users[-1])
    return required


def _groups(messages: Sequence[ChatMessage]) -> list[list[int]]:
    """Indices of the non-system messages, grouped so tool results stay with their call."""
    groups: list[list[int]] = []
    for index, message in enumerate(messages):
        if message.role == "system":
            continue
        opener = messages[groups[-1][0]] if groups else None
        joins_call = (
            message.role == "tool"
            and opener is not None
            and opener.role == "assistant"
            and bool(opener.tool_calls)
        )
        if joins_call:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def _leading_tool_messages(messages: Sequence[ChatMessage], kept: set[int]) -> list[int]:
    """Kept ``tool`` messages before the first other kept non-system message (orphans)."""
    orphans: list[int] = []
    for index in sorted(kept):
        role = messages[index].role
        if role == "system":
            continue
        if role != "tool":
            break
        orphans.append(index)
    return orphans
