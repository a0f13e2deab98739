"""The request-spec layer: one :class:`Call` per API operation, built and parsed here and executed
by either transport (``Client`` or ``AsyncClient``).

Nothing in this module does I/O, so the sync and async clients share every URL, header, body,
status check and retry decision.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from agentcluster.api import (
    AgentList,
    AgentOut,
    ApprovalDecisionIn,
    ApprovalList,
    ApprovalOut,
    CancelIn,
    CancelOut,
    Health,
    KeyCreated,
    KeyCreateIn,
    KeyList,
    MessageAccepted,
    MessageIn,
    MessageList,
    Ready,
    SessionCreateIn,
    SessionList,
    SessionOut,
    TurnOut,
)
from agentcluster.client._errors import (
    ConnectionFailed,
    error_from_response,
    invalid_request,
    protocol_error,
    retry_after_seconds,
)
from agentcluster.config import env
from agentcluster.domain import ApprovalDecision, MultitaskStrategy

__all__ = [
    "DEFAULT_URL",
    "Call",
    "RetryPolicy",
    "build_request",
    "check_stream",
    "connection_from_env",
    "default_headers",
    "new_idempotency_key",
]

DEFAULT_URL = "http://127.0.0.1:21016"
"""The gateway's own default address (``SA01_GATEWAY_HOST``/``SA01_GATEWAY_PORT``)."""
USER_AGENT = "agentcluster-python/0.1"

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

Method = Literal["GET", "POST", "DELETE"]
Params = dict[str, str | int]


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request and how to read its answer.

    Attributes:
        replay_safe: whether the request may be sent again after an ambiguous failure (the server
            may or may not have acted). True for reads, deletes, cancels and messages (they carry
            an ``Idempotency-Key``); False for session and key creation.
        timeout: seconds for this request, or None for the client's default.
        answer_statuses: statuses that are a normal answer even though they are usually retried
            (``/v1/ready`` answers 503 when degraded).
    """

    method: Method
    path: str
    parse: Callable[[httpx.Response], T]
    params: Params = field(default_factory=dict)
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    replay_safe: bool = True
    timeout: float | None = None
    answer_statuses: frozenset[int] = frozenset()


def default_headers(api_key: str | None) -> dict[str, str]:
    """Headers every request carries."""
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def connection_from_env() -> tuple[str, str | None]:
    """``(base_url, api_key)`` from ``AGENTCLUSTER_URL`` and ``AGENTCLUSTER_API_KEY``."""
    return env("AGENTCLUSTER_URL") or DEFAULT_URL, env("AGENTCLUSTER_API_KEY") or None


def build_request(http: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> httpx.Request:
    """The HTTP request for ``call`` on either transport (base URL and auth come from ``http``)."""
    return http.build_request(
        call.method,
        call.path,
        params=call.params,
        json=call.body,
        headers=call.headers,
        timeout=httpx.USE_CLIENT_DEFAULT if call.timeout is None else call.timeout,
    )


def new_idempotency_key() -> str:
    """A fresh key for one logical message send (reused across the client's own retries)."""
    return str(uuid.uuid4())


def _segment(value: str) -> str:
    # Ids go into the path: quote everything so "../" or "?" cannot change the route.
    return quote(value, safe="")


def _body(model: type[BaseModel], **fields: Any) -> dict[str, Any]:
    try:
        return model(**fields).model_dump(mode="json", exclude_none=True)
    except PydanticValidationError as exc:
        raise invalid_request(exc) from None


def _model(model: type[M], *statuses: int) -> Callable[[httpx.Response], M]:
    def parse(response: httpx.Response) -> M:
        if response.status_code not in statuses:
            raise error_from_response(response)
        try:
            return model.model_validate_json(response.content)
        except PydanticValidationError as exc:
            raise protocol_error(response, f"does not parse as {model.__name__}: {exc}") from None

    return parse


def _no_content(response: httpx.Response) -> None:
    if response.status_code not in (200, 204):
        raise error_from_response(response)


def check_stream(response: httpx.Response) -> None:
    """Raise for an event-stream request that did not open a stream (the body must be read)."""
    if response.status_code != 200:
        raise error_from_response(response)
    kind = response.headers.get("content-type", "")
    if not kind.startswith("text/event-stream"):
        raise protocol_error(response, f"expected text/event-stream, got {kind!r}")


def _stream(response: httpx.Response) -> httpx.Response:
    return response


# --- sessions ---------------------------------------------------------------------------------


def create_session(agent: str, metadata: dict[str, Any] | None) -> Call[SessionOut]:
    body = _body(SessionCreateIn, agent=agent, metadata=metadata or {})
    # Not replay-safe: a lost 201 followed by a resend would create a second session.
    return Call("POST", "/v1/sessions", _model(SessionOut, 201), body=body, replay_safe=False)


def list_sessions(limit: int, cursor: str | None) -> Call[SessionList]:
    params: Params = {"limit": limit}
    if cursor is not None:
        params["cursor"] = cursor
    return Call("GET", "/v1/sessions", _model(SessionList, 200), params=params)


def get_session(session_id: str) -> Call[SessionOut]:
    return Call("GET", f"/v1/sessions/{_segment(session_id)}", _model(SessionOut, 200))


def close_session(session_id: str) -> Call[SessionOut]:
    return Call("DELETE", f"/v1/sessions/{_segment(session_id)}", _model(SessionOut, 200))


# --- messages and turns -----------------------------------------------------------------------


def _message_body(content: str, strategy: MultitaskStrategy) -> dict[str, Any]:
    # The strategy goes only when it is not the default (a body an older gateway accepts).
    body = _body(MessageIn, content=content, multitask_strategy=strategy)
    if strategy == "enqueue":
        del body["multitask_strategy"]
    return body


def _messages_path(session_id: str) -> str:
    return f"/v1/sessions/{_segment(session_id)}/messages"


def send_message(
    session_id: str, content: str, idempotency_key: str, strategy: MultitaskStrategy = "enqueue"
) -> Call[MessageAccepted]:
    return Call(
        "POST",
        _messages_path(session_id),
        _model(MessageAccepted, 202, 200),
        body=_message_body(content, strategy),
        headers={"Idempotency-Key": idempotency_key},
    )


def ask(
    session_id: str,
    content: str,
    idempotency_key: str,
    timeout: float | None,
    strategy: MultitaskStrategy = "enqueue",
) -> Call[TurnOut]:
    return Call(
        "POST",
        _messages_path(session_id),
        _model(TurnOut, 200),
        params={"wait": "true"},
        body=_message_body(content, strategy),
        headers={"Idempotency-Key": idempotency_key},
        timeout=timeout,
    )


def stream_turn(session_id: str, content: str, idempotency_key: str) -> Call[httpx.Response]:
    return Call(
        "POST",
        _messages_path(session_id),
        _stream,
        body=_message_body(content, "enqueue"),
        headers={"Idempotency-Key": idempotency_key, "Accept": "text/event-stream"},
    )


def messages(session_id: str) -> Call[MessageList]:
    return Call("GET", _messages_path(session_id), _model(MessageList, 200))


def events(session_id: str, after: int) -> Call[httpx.Response]:
    headers = {"Accept": "text/event-stream"}
    if after > 0:
        headers["Last-Event-ID"] = str(after)
    return Call("GET", f"/v1/sessions/{_segment(session_id)}/events", _stream, headers=headers)


def cancel(session_id: str, turn_id: str | None) -> Call[CancelOut]:
    # Cancelling twice has the effect of cancelling once, so a resend is harmless.
    return Call(
        "POST",
        f"/v1/sessions/{_segment(session_id)}/cancel",
        _model(CancelOut, 200),
        body=_body(CancelIn, turn_id=turn_id),
    )


# --- approvals --------------------------------------------------------------------------------


def _approvals_path(session_id: str) -> str:
    return f"/v1/sessions/{_segment(session_id)}/approvals"


def approvals(session_id: str, all_: bool) -> Call[ApprovalList]:
    params: Params = {"all": "true"} if all_ else {}
    return Call("GET", _approvals_path(session_id), _model(ApprovalList, 200), params=params)


def decide(
    session_id: str,
    tool_call_id: str,
    decision: ApprovalDecision,
    arguments: dict[str, Any] | None,
    message: str | None,
) -> Call[ApprovalOut]:
    body = _body(ApprovalDecisionIn, decision=decision, arguments=arguments, message=message)
    # A resend after a lost answer finds the call decided (409 approval-not-pending): safe, and
    # the caller sees the conflict rather than a second decision.
    return Call(
        "POST",
        f"{_approvals_path(session_id)}/{_segment(tool_call_id)}",
        _model(ApprovalOut, 200),
        body=body,
    )


# --- agents, health ---------------------------------------------------------------------------


def agents() -> Call[AgentList]:
    return Call("GET", "/v1/agents", _model(AgentList, 200))


def agent(name: str) -> Call[AgentOut]:
    return Call("GET", f"/v1/agents/{_segment(name)}", _model(AgentOut, 200))


def health() -> Call[Health]:
    return Call("GET", "/v1/health", _model(Health, 200))


def ready() -> Call[Ready]:
    # 503 carries the same body when degraded: it is an answer, not an error, and not retried.
    return Call("GET", "/v1/ready", _model(Ready, 200, 503), answer_statuses=frozenset({503}))


# --- keys (admin) -----------------------------------------------------------------------------


def create_key(
    name: str, tenant_id: str | None, tenant_name: str | None, roles: Sequence[str] = ()
) -> Call[KeyCreated]:
    body = _body(
        KeyCreateIn, name=name, tenant_id=tenant_id, tenant_name=tenant_name, roles=list(roles)
    )
    if not roles:
        del body["roles"]  # what a server without key roles takes too
    return Call("POST", "/v1/keys", _model(KeyCreated, 201), body=body, replay_safe=False)


def list_keys(tenant_id: str | None) -> Call[KeyList]:
    params: Params = {} if tenant_id is None else {"tenant_id": tenant_id}
    return Call("GET", "/v1/keys", _model(KeyList, 200), params=params)


def revoke_key(key_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/keys/{_segment(key_id)}", _no_content)


# --- retries ----------------------------------------------------------------------------------

_RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Failures after which the request may have reached the server (or not): ambiguous.
_RETRY_ERRORS = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)
# Failures before the request left the client: safe to resend anything.
_NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before resending a :class:`Call`.

    Retried: connection errors, 502/503/504 and 429, waiting ``Retry-After`` when the answer has
    one (the gateway sends it with 503) and a backoff otherwise; never any other status. A call
    that is not replay-safe is resent only when the request certainly did not act: it never left
    (connect errors) or was refused with 429.

    Attributes:
        retries: resends after the first attempt.
        backoff: first backoff in seconds; doubles per attempt, with jitter, up to ``max_backoff``.
        max_retry_after: longest ``Retry-After`` the client waits; past it the error is raised
            at once (``RateLimited.retry_after`` says how long the server asked for).
    """

    retries: int = 2
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait before resend number ``attempt + 1``: half fixed, half jitter."""
        ceiling = min(self.max_backoff, self.backoff * 2**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # jitter, not crypto

    def after_response(
        self, call: Call[Any], response: httpx.Response, attempt: int
    ) -> float | None:
        """Seconds to wait before resending, or None to hand ``response`` to the caller."""
        status = response.status_code
        if attempt >= self.retries or status not in _RETRY_STATUSES:
            return None
        if status in call.answer_statuses or not (call.replay_safe or status == 429):
            return None
        hint = retry_after_seconds(response)
        if hint is None:
            return self.backoff_delay(attempt)
        return hint if hint <= self.max_retry_after else None

    def after_error(self, call: Call[Any], error: httpx.TransportError, attempt: int) -> float:
        """Seconds to wait before resending after ``error``.

        Raises:
            ConnectionFailed: the error is not retryable for this call, or retries are used up.
        """
        retryable = isinstance(error, _NOT_SENT_ERRORS) or (
            call.replay_safe and isinstance(error, _RETRY_ERRORS)
        )
        if not retryable or attempt >= self.retries:
            raise ConnectionFailed(
                f"{call.method} {call.path}: {type(error).__name__}: {error}"
            ) from error
        return self.backoff_delay(attempt)
