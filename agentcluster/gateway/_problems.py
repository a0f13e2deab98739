"""RFC 9457 problem+json responses: every error the API returns goes through here.

Types are stable URIs under ``PROBLEM_BASE``; clients switch on them, not on the text.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentcluster.api import PROBLEM_BASE
from agentcluster.errors import (
    AgentClusterError,
    ConfigError,
    InfrastructureError,
    RateLimited,
    StaleEpochError,
    UserError,
)

__all__ = ["BodyLimit", "ProblemError", "allowed_methods", "install_problem_handlers", "problem"]

log = logging.getLogger(__name__)

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

_HTTP_TYPES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    413: "payload-too-large",
    415: "unsupported-media-type",
}


class ProblemError(Exception):
    """Raise in a route to answer with a problem (status, stable type, detail)."""

    def __init__(
        self, status: int, problem_type: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.problem_type = problem_type
        self.detail = detail
        self.headers = headers or {}


def problem(
    status: int,
    problem_type: str,
    detail: str,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + problem_type,
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    body.update(extra or {})
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )


def _validation_detail(exc: RequestValidationError) -> tuple[int, str, str]:
    errors = exc.errors()
    if any(error.get("type") == "json_invalid" for error in errors):
        return 400, "malformed-json", "the request body is not valid JSON"
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg')}")
    return 422, "validation-failed", "; ".join(parts)


def _from_error(exc: AgentClusterError) -> tuple[int, str, str]:
    if isinstance(exc, UserError):
        return exc.status, exc.problem_type, exc.message
    if isinstance(exc, InfrastructureError | StaleEpochError):
        return 503, "dependency-unavailable", exc.message
    if isinstance(exc, ConfigError):
        return 500, "misconfigured", exc.message
    return 500, "internal-error", exc.message


def _rate_headers(exc: AgentClusterError) -> dict[str, str] | None:
    """``Retry-After`` (whole seconds) and the RateLimit fields of a 429."""
    if not isinstance(exc, RateLimited) or exc.retry_after is None:
        return None
    seconds = str(max(1, math.ceil(exc.retry_after)))
    headers = {"Retry-After": seconds}
    if exc.limit is not None:
        headers |= {"RateLimit-Limit": str(exc.limit), "RateLimit-Remaining": "0"}
        headers["RateLimit-Reset"] = seconds
    return headers


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
_Templates = list[tuple[re.Pattern[str], list[str]]]


def _documented_paths(app: FastAPI) -> _Templates:
    """The OpenAPI document's path templates as patterns with their methods, the most literal
    first (``/threads/search`` before ``/threads/{thread_id}``), built once per app."""
    cached: _Templates | None = getattr(app.state, "documented_paths", None)
    if cached is not None:
        return cached
    templates = sorted(app.openapi().get("paths", {}).items(), key=lambda i: i[0].count("{"))
    built = [
        (
            re.compile(re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(template))),
            sorted(method.upper() for method in operations if method.upper() in _METHODS),
        )
        for template, operations in templates
    ]
    app.state.documented_paths = built
    return built


def allowed_methods(request: Request) -> str:
    """The ``Allow`` value of a 405: the methods the OpenAPI document lists for the request's
    path; for a path it does not describe, every method some route serves there (the router
    answers with the first route that matched the path only, one of several)."""
    path, root = request.scope["path"], request.scope.get("root_path", "")
    path = path[len(root) :] if root and path.startswith(root) else path  # under a mount
    for pattern, methods in _documented_paths(request.app):
        if pattern.fullmatch(path):
            return ", ".join(methods)
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]
    return ", ".join(allowed)


def _http_headers(request: Request, exc: StarletteHTTPException) -> dict[str, str] | None:
    """The exception's headers; a 405 lists the path's methods in ``Allow`` (RFC 9110)."""
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
    return headers or None


def install_problem_handlers(app: FastAPI) -> None:
    """Route every error (ours, validation, HTTP, unexpected) to a problem+json response."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ProblemError)
        return problem(
            exc.status, exc.problem_type, exc.detail, instance=request.url.path, headers=exc.headers
        )

    async def on_ours(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AgentClusterError)
        status, problem_type, detail = _from_error(exc)
        headers = {"Retry-After": "1"} if status == 503 else _rate_headers(exc)
        return problem(status, problem_type, detail, instance=request.url.path, headers=headers)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        status, problem_type, detail = _validation_detail(exc)
        return problem(status, problem_type, detail, instance=request.url.path)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        problem_type = _HTTP_TYPES.get(exc.status_code, "http-error")
        return problem(
            exc.status_code,
            problem_type,
            str(exc.detail),
            instance=request.url.path,
            headers=_http_headers(request, exc),
        )

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "internal-error", "internal error", instance=request.url.path)

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(AgentClusterError, on_ours)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413, whether or not the
    client sent a Content-Length (chunked bodies are counted as they arrive)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"the request body is larger than {self.max_bytes} bytes"
        response = problem(413, "payload-too-large", detail, instance=scope.get("path"))
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass
