"""Errors and callers of the LangGraph-compatible routes.

Errors are answered as LangGraph servers answer them, ``{"detail": "..."}`` with the status the
``langgraph-sdk`` turns into its typed exceptions (401 AuthenticationError, 403
PermissionDeniedError, 404 NotFoundError, 409 ConflictError, 422 UnprocessableEntityError,
429 RateLimitError, 5xx InternalServerError). :class:`LangGraphRoute` applies it to every error
raised while a route of the router runs, its dependencies and body validation included.

The API key comes as ``x-api-key`` (what the SDK sends) or ``Authorization: Bearer``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Header, Request, Response
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
from agentcluster.gateway._callers import ServiceDep, bearer_token
from agentcluster.gateway._langgraph_models import LangGraphError
from agentcluster.gateway._problems import ProblemError
from agentcluster.gateway._service import Caller

__all__ = [
    "ERROR_RESPONSES",
    "LangGraphApiError",
    "LangGraphCallerDep",
    "LangGraphRoute",
    "langgraph_error",
]

log = logging.getLogger(__name__)

_DECLARED: dict[int | str, str] = {
    401: "Missing or invalid API key (AuthenticationError)",
    403: "Denied by policy, or the admin key (PermissionDeniedError)",
    404: "Unknown assistant, thread or run, or another tenant's (NotFoundError)",
    409: "The thread exists, or runs a turn (multitask_strategy reject) (ConflictError)",
    422: "Malformed or unsupported request (UnprocessableEntityError)",
    429: "Over the tenant's rate or open streams, with Retry-After (RateLimitError)",
    503: "A dependency is unavailable, with Retry-After (InternalServerError)",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": LangGraphError, "description": description}
    for status, description in _DECLARED.items()
}
ERROR_RESPONSES[413] = {
    "description": "Request body too large (problem+json, from the gateway's body limit)",
    "content": {"application/problem+json": {"schema": {"type": "object"}}},
}
"""The error responses every LangGraph-compatible operation declares."""


class LangGraphApiError(Exception):
    """Raise in a LangGraph-compatible route to answer ``{"detail": detail}`` with ``status``."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


def _response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = LangGraphError(detail=detail).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


def _from_ours(exc: AgentClusterError) -> JSONResponse:
    if isinstance(exc, UserError):
        headers = None
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        return _response(exc.status, exc.message, headers)
    if isinstance(exc, InfrastructureError | StaleEpochError):
        return _response(503, exc.message, {"Retry-After": "1"})
    return _response(500, exc.message)


def _from_validation(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(error.get("type") == "json_invalid" for error in errors):
        return _response(422, "the request body is not valid JSON")
    first = errors[0] if errors else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body",))
    return _response(422, f"{where or 'body'}: {first.get('msg')}")


def langgraph_error(exc: Exception) -> JSONResponse:
    """``exc`` answered as a LangGraph server answers errors."""
    if isinstance(exc, LangGraphApiError):
        return _response(exc.status, exc.detail, exc.headers)
    if isinstance(exc, ProblemError):
        return _response(exc.status, exc.detail, exc.headers or None)
    if isinstance(exc, AgentClusterError):
        return _from_ours(exc)
    if isinstance(exc, RequestValidationError):
        return _from_validation(exc)
    if isinstance(exc, ValidationError):  # a body our own models refused (e.g. MessageIn)
        return _response(422, str(exc.errors()[0].get("msg")))
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code == 400:  # FastAPI's "error parsing the body": a malformed request
            return _response(422, "the request body is not valid JSON")
        return _response(exc.status_code, str(exc.detail))
    log.exception("unhandled error on a LangGraph-compatible route", exc_info=exc)
    return _response(500, "internal error")


class LangGraphRoute(APIRoute):
    """A route whose errors, from its dependencies to its handler, are LangGraph-shaped."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # every error of these routes: answered in their shape
                return langgraph_error(exc)

        return handle


async def langgraph_caller(
    service: ServiceDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header(description="the API key (langgraph-sdk)")] = None,
) -> Caller:
    """The caller of an ``x-api-key`` (the SDK's header) or ``Authorization: Bearer`` key."""
    token = x_api_key.strip() if x_api_key else bearer_token(authorization)
    caller = await service.authenticate(token)
    await service.admit(caller)  # the tenant's requests per minute: 429 past it
    return caller


LangGraphCallerDep = Annotated[Caller, Depends(langgraph_caller)]
