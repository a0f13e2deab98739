"""The fake LLM's wire format: pure functions from a request and a reply to OpenAI JSON objects."""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse, Response

from agentcluster.testing._script import FinishReason, RecordedRequest, Reply, Timing, text_of

__all__ = [
    "Completion",
    "build_completion",
    "completion_json",
    "completion_pieces",
    "error_response",
    "non_stream_delay",
    "stream_chunks",
]

_ARGUMENT_FRAGMENT_CHARS = 8
_CHARS_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 3


def _tokens(text: str) -> int:
    """Rough token count, ceil(chars / 4): documented as rough, it does not match tiktoken."""
    return math.ceil(len(text) / _CHARS_PER_TOKEN)


def _prompt_tokens(request: RecordedRequest) -> int:
    total = _tokens(json.dumps(request.tools)) if request.tools else 0
    for message in request.messages:
        total += _TOKENS_PER_MESSAGE + _tokens(text_of(message.get("content")))
        if message.get("tool_calls"):
            total += _tokens(json.dumps(message["tool_calls"]))
    return total


@dataclass(frozen=True)
class _WireCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Completion:
    """Everything needed to answer one request, in both the JSON and the streaming form."""

    completion_id: str
    created: int
    model: str
    content: str | None
    calls: tuple[_WireCall, ...]
    finish_reason: FinishReason
    usage: dict[str, int]
    include_usage: bool
    ttft_s: float
    inter_chunk_s: float
    latency_s: float | None


def build_completion(request: RecordedRequest, reply: Reply, timing: Timing) -> Completion:
    content, truncated = _truncate(reply.text, request.max_tokens)
    calls = tuple(
        _WireCall(call.id or f"call_{uuid.uuid4().hex[:24]}", call.name, call.arguments_json)
        for call in reply.tool_calls
    )
    finish: FinishReason = "length" if truncated else "tool_calls" if calls else "stop"
    prompt = _prompt_tokens(request)
    completion = _tokens(content or "") + sum(_tokens(c.name + c.arguments) for c in calls)
    return Completion(
        completion_id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
        created=int(time.time()),
        model=request.model,
        content=content,
        calls=calls,
        finish_reason=reply.finish_reason or finish,
        usage={
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
        include_usage=request.include_usage,
        ttft_s=timing.ttft_s if reply.ttft_s is None else reply.ttft_s,
        inter_chunk_s=timing.inter_chunk_s if reply.inter_chunk_s is None else reply.inter_chunk_s,
        latency_s=timing.latency_s if reply.latency_s is None else reply.latency_s,
    )


def _truncate(text: str | None, max_tokens: int | None) -> tuple[str | None, bool]:
    """Cut ``text`` to ``max_tokens`` (at the rough 4 characters per token)."""
    if text is None or max_tokens is None or _tokens(text) <= max_tokens:
        return text, False
    return text[: max_tokens * _CHARS_PER_TOKEN], True


def completion_json(completion: Completion) -> dict[str, Any]:
    """The non-streaming ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": completion.content, "refusal": None}
    if completion.calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in completion.calls
        ]
    return {
        "id": completion.completion_id,
        "object": "chat.completion",
        "created": completion.created,
        "model": completion.model,
        "system_fingerprint": "fp_fake_llm",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": completion.usage,
    }


def stream_chunks(completion: Completion) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of a streamed answer, in order, without ``[DONE]``."""
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": piece} for piece in _split_words(completion.content or "")]
    for index, call in enumerate(completion.calls):
        deltas += _call_deltas(index, call)
    chunks = [_chunk(completion, delta, None) for delta in deltas]
    chunks.append(_chunk(completion, {}, completion.finish_reason))
    if completion.include_usage:
        chunks.append({**_chunk(completion, {}, None), "choices": [], "usage": completion.usage})
    return chunks


def completion_pieces(completion: Completion) -> list[str]:
    """The content fragments a stream of ``completion`` sends, one chunk each, in order."""
    return _split_words(completion.content or "")


def _split_words(text: str) -> list[str]:
    """One piece per word, whitespace kept with the word before it, so pieces join back exactly."""
    return re.findall(r"\s*\S+\s*|\s+", text) if text else []


def _call_deltas(index: int, call: _WireCall) -> list[dict[str, Any]]:
    head = {
        "index": index,
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": ""},
    }
    deltas = [{"tool_calls": [head]}]
    step = _ARGUMENT_FRAGMENT_CHARS
    for start in range(0, len(call.arguments), step):
        fragment = call.arguments[start : start + step]
        deltas.append({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
    return deltas


def _chunk(
    completion: Completion, delta: dict[str, Any], finish_reason: str | None
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": completion.completion_id,
        "object": "chat.completion.chunk",
        "created": completion.created,
        "model": completion.model,
        "system_fingerprint": "fp_fake_llm",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if completion.include_usage:
        # OpenAI sends an explicit null usage on every chunk but the last when usage is requested.
        chunk["usage"] = None
    return chunk


def non_stream_delay(completion: Completion) -> float:
    if completion.latency_s is not None:
        return completion.latency_s
    return completion.ttft_s + completion.inter_chunk_s * (len(stream_chunks(completion)) - 1)


_ERROR_TYPES = {
    400: ("invalid_request_error", "Bad request"),
    401: ("authentication_error", "Invalid API key"),
    403: ("permission_error", "Forbidden"),
    404: ("not_found_error", "Not found"),
    429: ("rate_limit_error", "Rate limit reached (fake LLM)"),
    503: ("service_unavailable", "The fake LLM is overloaded"),
    504: ("timeout", "The fake LLM timed out"),
}


def error_response(
    status: int, message: str | None = None, retry_after: float | None = None
) -> Response:
    kind, default_message = _ERROR_TYPES.get(status, ("server_error", "Internal server error"))
    body = {
        "error": {"message": message or default_message, "type": kind, "param": None, "code": kind}
    }
    headers = {} if retry_after is None else {"retry-after": f"{retry_after:g}"}
    return JSONResponse(body, status_code=status, headers=headers)
