"""Errors of the OpenAI-compatible routes in OpenAI's shape (``{"error": {message, type, param,
code}}``), with the statuses the ``openai`` SDK turns into its typed exceptions
(401 AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError, 400 BadRequestError,
429 RateLimitError, ...). The rest of the API keeps problem+json.

:class:`OpenAIRoute` applies it: every error raised while a route of the router runs (its
dependencies, authentication and body validation included) is answered here instead of by the
app's problem handlers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from agentcluster.errors import (
    AgentClusterError,
    InfrastructureError,
    RateLimited,
    StaleEpochError,
    UserError,
)
from agentcluster.gateway._openai_models import OpenAIError, OpenAIErrorBody
from agentcluster.gateway._problems import ProblemError

__all__ = ["ERROR_RESPONSES", "OpenAIApiError", "OpenAIRoute", "openai_error", "openai_error_body"]

log = logging.getLogger(__name__)

_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "conflict_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "server_error",
}

_DECLARED: dict[int | str, str] = {
    400: "Malformed request (BadRequestError)",
    401: "Missing or invalid API key (AuthenticationError)",
    403: "Denied by policy, or the admin key (PermissionDeniedError)",
    404: "Unknown model, session or response (NotFoundError)",
    409: "The turn was cancelled (ConflictError)",
    429: "Over the tenant's rate or open streams, with Retry-After (RateLimitError)",
    500: "The turn failed, answered with x-should-retry: false (InternalServerError)",
    503: "A dependency is unavailable, with Retry-After (InternalServerError)",
    504: "The turn did not end in time (InternalServerError)",
    "4XX": "Any other client error (APIStatusError)",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorBody, "description": description}
    for status, description in _DECLARED.items()
}
# Answered by the app's middleware before any route runs, in the API's problem+json shape.
ERROR_RESPONSES[413] = {
    "description": "Request body too large (problem+json, from the gateway's body limit)",
    "content": {"application/problem+json": {"schema": {"type": "object"}}},
}
"""The error responses every OpenAI-compatible operation declares in the OpenAPI document."""


class OpenAIApiError(Exception):
    """Raise in an OpenAI-compatible route to answer with this error."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers


def openai_error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> OpenAIErrorBody:
    """The body of an error (also sent inside a stream that fails after it started)."""
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return OpenAIErrorBody(error=OpenAIError(message=message, type=kind, param=param, code=code))


def _response(
    status: int,
    message: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = openai_error_body(status, message, code, param)
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def _retry_headers(exc: AgentClusterError) -> dict[str, str] | None:
    if isinstance(exc, RateLimited) and exc.retry_after is not None:
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    return None


def _from_ours(exc: AgentClusterError) -> JSONResponse:
    if isinstance(exc, UserError):
        code = exc.problem_type.replace("-", "_")
        status = 400 if exc.status == 422 else exc.status
        return _response(status, exc.message, code, headers=_retry_headers(exc))
    if isinstance(exc, InfrastructureError | StaleEpochError):
        headers = {"Retry-After": "1"}
        return _response(503, exc.message, "dependency_unavailable", headers=headers)
    return _response(500, exc.message, "internal_error")


def _from_validation(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(error.get("type") == "json_invalid" for error in errors):
        return _response(400, "the request body is not valid JSON", "malformed_json")
    first = errors[0] if errors else {}
    where = [str(part) for part in first.get("loc", ()) if part not in ("body", "header")]
    param = ".".join(where) or None
    return _response(400, f"{param or 'body'}: {first.get('msg')}", "invalid_value", param)


def openai_error(exc: Exception) -> JSONResponse:
    """``exc`` answered in OpenAI's error shape."""
    if isinstance(exc, OpenAIApiError):
        return _response(exc.status, exc.message, exc.code, exc.param, exc.headers)
    if isinstance(exc, ValidationError):  # a body our own models refused (e.g. MessageIn)
        first = exc.errors()[0]
        return _response(400, f"{first.get('msg')}", "invalid_value")
    if isinstance(exc, ProblemError):
        code = exc.problem_type.replace("-", "_")
        return _response(exc.status, exc.detail, code, headers=exc.headers)
    if isinstance(exc, AgentClusterError):
        return _from_ours(exc)
    if isinstance(exc, RequestValidationError):
        return _from_validation(exc)
    if isinstance(exc, StarletteHTTPException):
        return _response(exc.status_code, str(exc.detail))
    log.exception("unhandled error on an OpenAI-compatible route", exc_info=exc)
    return _response(500, "internal error", "internal_error")


class OpenAIRoute(APIRoute):
    """A route whose errors, from its dependencies to its handler, are OpenAI-shaped."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # every error of these routes: answered in OpenAI's shape
                return openai_error(exc)

        return handle
