"""Checks on untrusted request input that must happen before any parser or model sees it: the
nesting depth of JSON bodies and the event id a stream resumes after.

JSON nested a few hundred levels deep overflows the recursion of the JSON parser, pydantic's
validator or serializer, or the database's JSON functions, each in its own way (a 500, or a row
whose event stream can never be read again). Bodies are bounded in size by ``BodyLimit``; this
bounds their depth, counting brackets outside strings without parsing anything.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentcluster.gateway._problems import ProblemError, problem

__all__ = [
    "MAX_EVENT_ID",
    "MAX_JSON_DEPTH",
    "JsonDepthLimit",
    "json_nesting",
    "parse_event_id",
]

MAX_JSON_DEPTH = 32
"""Nesting levels a request body may have (session metadata has its own, lower limit)."""
MAX_EVENT_ID = 2**63 - 1
"""A seq is a signed 64-bit integer in the store."""

_EVENT_ID = re.compile(r"[0-9]{1,19}")  # ASCII digits only: str.isdigit accepts "²" and "٣"
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENERS = frozenset(b"[{")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def parse_event_id(value: str | None, source: str = "Last-Event-ID") -> int | None:
    """The seq in a ``Last-Event-ID`` header or ``?after=`` (None when absent).

    Raises:
        ProblemError: 400 ``invalid-last-event-id`` unless 1-19 ASCII digits <= 2**63 - 1.
    """
    if value is None:
        return None
    text = value.strip(" \t")
    if _EVENT_ID.fullmatch(text) is None or int(text) > MAX_EVENT_ID:
        raise ProblemError(
            400,
            "invalid-last-event-id",
            f"{source} must be an event seq: ASCII digits, 0 to {MAX_EVENT_ID}",
        )
    return int(text)


def json_nesting(body: bytes, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply ``body`` nests arrays and objects, counting up to ``limit + 1`` (then it
    stops: deeper is all a caller needs to know). Brackets inside strings do not count; the
    text need not be valid JSON."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        if byte in _OPENERS:
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        else:
            depth -= 1
    return deepest


def _is_json(scope: Scope) -> bool:
    """FastAPI parses a body as JSON when its content type says so or when it has none."""
    content_type = dict(scope.get("headers") or []).get(b"content-type")
    return content_type is None or b"json" in content_type.lower()


class JsonDepthLimit:
    """ASGI middleware: a JSON request body nested deeper than ``max_depth`` gets 422
    ``validation-failed`` before the app reads it. The body is read whole (``BodyLimit``, outside
    this middleware, bounds its size) and handed on unchanged."""

    def __init__(self, app: ASGIApp, max_depth: int = MAX_JSON_DEPTH) -> None:
        self.app = app
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: let the app see it
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if json_nesting(body, self.max_depth) > self.max_depth:
            detail = f"the JSON body is nested deeper than {self.max_depth} levels"
            response = problem(422, "validation-failed", detail, instance=scope.get("path"))
            await response(scope, receive, send)
            return
        first: Message = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay([first], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that first returns ``messages`` (the body already read), then the client's."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
