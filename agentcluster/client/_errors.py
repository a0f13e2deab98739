"""Errors the client raises: the gateway's problem+json answers and transport failures.

Hierarchy (each class also sits under :mod:`agentcluster.errors`, so ``except NotFoundError``
catches a 404 from the gateway as well as one raised in-process)::

    AgentClusterError
    ├── ApiError                          the gateway answered with a problem (status, type, ...)
    │   ├── InvalidRequest   400, 422     also a UserError
    │   ├── Unauthorized     401          also a UserError
    │   ├── Forbidden        403          also a UserError
    │   ├── NotFound         404          also a NotFoundError
    │   ├── Conflict         409          also a ConflictError
    │   ├── PayloadTooLarge  413          also a UserError
    │   ├── RateLimited      429          also a RateLimited; retryable; ``retry_after`` seconds
    │   │                                 when the server said (``Retry-After``)
    │   └── ServerError      5xx          retryable for 502 and 504
    │       └── Unavailable  503          retryable
    ├── ConnectionFailed                  no answer (refused, reset, timed out); a
    │                                     DependencyUnavailable, retryable
    └── ProtocolError                     the answer does not follow the API contract; terminal

Like every agentcluster error they carry plain attributes (they pickle) and never log.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from pydantic import ValidationError as PydanticValidationError

from agentcluster import errors
from agentcluster.api import PROBLEM_BASE, Problem
from agentcluster.errors import (
    AgentClusterError,
    ConflictError,
    DependencyUnavailable,
    NotFoundError,
    UserError,
)

__all__ = [
    "ApiError",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "ProtocolError",
    "RateLimited",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "error_from_problem",
    "error_from_response",
    "invalid_request",
    "protocol_error",
    "retry_after_seconds",
]


class ApiError(AgentClusterError):
    """The gateway answered with an RFC 9457 problem.

    Attributes:
        status: the HTTP status code.
        type: the stable problem type URI, e.g. ``https://agentcluster.dev/problems/not-found``.
        title: short, human-readable summary of the problem type.
        detail: what went wrong with this request (may be empty).
        instance: the URI of this occurrence, when the server gave one.
    """

    def __init__(
        self,
        status: int,
        title: str,
        *,
        type: str = "about:blank",
        detail: str = "",
        instance: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        text = f"{status} {title}: {detail}" if detail else f"{status} {title}"
        super().__init__(text, retryable=retryable)
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.instance = instance


class InvalidRequest(ApiError, UserError):
    """400 or 422: the request is malformed or fails validation (also raised before sending when
    a body fails the contract's own validation)."""


class Unauthorized(ApiError, UserError):
    """401: no API key, or one the gateway does not know."""


class Forbidden(ApiError, UserError):
    """403: the key is valid but may not do this (e.g. an admin route with a tenant key)."""


class NotFound(ApiError, NotFoundError):
    """404: no such session, agent or key for this tenant."""


class Conflict(ApiError, ConflictError):
    """409: the current state does not allow it (e.g. a message to a closed session)."""


class PayloadTooLarge(ApiError, UserError):
    """413: the body is larger than the gateway accepts."""


class RateLimited(ApiError, errors.RateLimited):
    """429: too many requests. ``retry_after`` is the server's hint in seconds, if any (the
    gateway sends whole seconds until the tenant's next request is admitted)."""

    retryable = True

    def __init__(
        self,
        status: int,
        title: str,
        *,
        type: str = "about:blank",
        detail: str = "",
        instance: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            status, title, type=type, detail=detail, instance=instance, retryable=retryable
        )
        self.retry_after = retry_after


class ServerError(ApiError):
    """5xx: the gateway (or a proxy in front of it) failed. Retryable for 502, 503 and 504."""


class Unavailable(ServerError):
    """503: the gateway or one of its dependencies is down or overloaded."""

    retryable = True


class ConnectionFailed(DependencyUnavailable):
    """The gateway could not be reached or the connection broke before an answer."""

    def __init__(self, message: str) -> None:
        super().__init__("gateway", message)


class ProtocolError(AgentClusterError):
    """The gateway's answer does not follow the API contract (bad JSON, unknown shape)."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: RateLimited,
    503: Unavailable,
}
_RETRYABLE_SERVER = frozenset({502, 503, 504})


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _problem(response: httpx.Response) -> Problem:
    # A proxy's 502 page or an empty body is not a problem document: describe it from the status.
    try:
        return Problem.model_validate_json(response.content)
    except PydanticValidationError:
        text = response.text.strip()
        return Problem(
            type="about:blank",
            title=response.reason_phrase or f"HTTP {response.status_code}",
            status=response.status_code,
            detail=text[:500],
        )


def error_from_response(response: httpx.Response) -> ApiError:
    """The typed exception for an error response (the body must have been read)."""
    problem = _problem(response)
    status = response.status_code
    default = ServerError if status >= 500 else ApiError
    cls = _BY_STATUS.get(status, default)
    if cls is RateLimited:
        return RateLimited(
            status,
            problem.title,
            type=problem.type,
            detail=problem.detail,
            instance=problem.instance,
            retry_after=retry_after_seconds(response),
        )
    return cls(
        status,
        problem.title,
        type=problem.type,
        detail=problem.detail,
        instance=problem.instance,
        retryable=True if status in _RETRYABLE_SERVER else None,
    )


def error_from_problem(
    status: int, title: str, problem_type: str, detail: str, retry_after: float | None = None
) -> ApiError:
    """The typed exception of a problem the gateway raised in-process (the in-cluster handle
    gets the same classes as the HTTP clients). ``problem_type`` is the suffix under
    ``PROBLEM_BASE``."""
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    uri = PROBLEM_BASE + problem_type
    if cls is RateLimited:
        return RateLimited(status, title, type=uri, detail=detail, retry_after=retry_after)
    retryable = True if status in _RETRYABLE_SERVER else None
    return cls(status, title, type=uri, detail=detail, retryable=retryable)


def invalid_request(error: PydanticValidationError) -> InvalidRequest:
    """A request body that fails the contract's validation, reported like the gateway would."""
    details = "; ".join(
        f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()
    )
    return InvalidRequest(
        422, "Validation failed", type=f"{PROBLEM_BASE}validation-failed", detail=details
    )


def protocol_error(response: httpx.Response, reason: str) -> ProtocolError:
    """An answer that does not match the contract."""
    snippet = json.dumps(response.text[:200])
    return ProtocolError(
        f"{response.request.method} {response.request.url.path} -> {response.status_code}: "
        f"{reason}; body starts {snippet}"
    )
