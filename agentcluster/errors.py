"""Every error agentcluster raises on purpose.

Hierarchy::

    AgentClusterError                  base; ``retryable`` is data, not a subclass
    ├── ConfigError                    bad or missing configuration (names the variable); terminal
    │   └── SecretKeyError             the Fernet key cannot decrypt the stored provider secrets
    ├── UserError                      the caller's request is wrong; terminal; maps to 4xx
    │   ├── Forbidden                  403: denied (by the policy, for one)
    │   ├── NotFoundError              404: no such session/key/agent *for this tenant*
    │   ├── ConflictError              409: state does not allow it (closed session, ...)
    │   │   └── TurnInProgress         409: a ``reject`` message while a turn is open
    │   ├── ValidationFailed           422: well-formed but invalid input
    │   └── RateLimited                429: over the tenant's request rate; retryable after
    │       │                          ``retry_after`` seconds
    │       └── TooManyStreams         429: the tenant holds its most open streams and waits
    ├── ToolError                      "tell the model": returned to the LLM as a tool result
    ├── InfrastructureError            a dependency failed; ``dependency`` names it
    │   ├── DependencyUnavailable      unreachable (refused, timed out); retryable
    │   │   └── HostStarting           a session host still building its dependencies
    │   └── LlmUnavailable             no model of the chain answered (errors, timeouts, open
    │                                  breakers, a broken stream); ``llm``; retryable
    ├── StaleEpochError                a fenced write by a host that lost the session
    └── TerminalFailure                the work cannot succeed (e.g. a turn past its retry budget)
        └── BudgetExceeded             the tenant's daily LLM token or cost budget is spent

Exceptions carry plain attributes so they pickle across Ray actors, and they never log by
themselves: whoever catches them decides.
"""

from __future__ import annotations

__all__ = [
    "AgentClusterError",
    "ApprovalNotPending",
    "BudgetExceeded",
    "ConfigError",
    "ConflictError",
    "DependencyUnavailable",
    "Forbidden",
    "HostStarting",
    "InfrastructureError",
    "LlmUnavailable",
    "NotFoundError",
    "RateLimited",
    "SecretKeyError",
    "StaleEpochError",
    "TerminalFailure",
    "TooManyStreams",
    "ToolError",
    "TurnInProgress",
    "UserError",
    "ValidationFailed",
]


class AgentClusterError(Exception):
    """Base of all agentcluster errors.

    Attributes:
        message: human-readable, one line.
        retryable: whether retrying the same operation later may succeed.
    """

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[AgentClusterError], state: dict[str, object]) -> AgentClusterError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


class ConfigError(AgentClusterError):
    """Configuration is missing or malformed; the message starts with the variable's name."""


class SecretKeyError(ConfigError):
    """The configured Fernet key cannot decrypt a stored secret (a wrong key, or secrets rotated
    to a key this process was not given). Names the variable, never the secret or the key."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


class UserError(AgentClusterError):
    """The request is wrong. ``problem_type`` is the stable RFC 9457 type suffix."""

    status: int = 400
    problem_type: str = "bad-request"


class Forbidden(UserError):
    """The caller may not do this (e.g. the policy denied the action); the message says why."""

    status = 403
    problem_type = "forbidden"


class NotFoundError(UserError):
    """The thing does not exist for this tenant."""

    status = 404
    problem_type = "not-found"


class ConflictError(UserError):
    """The current state does not allow the operation."""

    status = 409
    problem_type = "conflict"


class TurnInProgress(ConflictError):
    """A message sent with the ``reject`` multitask strategy while the session has a turn open
    (running, queued or waiting); nothing was written."""

    problem_type = "turn-in-progress"


class ApprovalNotPending(ConflictError):
    """A decision for a tool call that no longer waits for one: already decided, expired, or
    its turn ended; nothing was written."""

    problem_type = "approval-not-pending"


class ValidationFailed(UserError):
    """Input is well-formed but invalid."""

    status = 422
    problem_type = "validation-failed"


class RateLimited(UserError):
    """Too many requests: the tenant is over its request rate. Retrying after ``retry_after``
    seconds may succeed, so unlike other user errors it is retryable.

    Attributes:
        retry_after: seconds until the next request can be admitted (None: unknown).
        limit: the rate that was exceeded, in requests per window (None: unknown).
        window_s: the window of that rate, in seconds.
    """

    status = 429
    problem_type = "rate-limited"
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        limit: int | None = None,
        window_s: float = 60.0,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.retry_after = retry_after
        self.limit = limit
        self.window_s = window_s


class TooManyStreams(RateLimited):
    """The tenant already holds its most concurrently open streams and waits (SSE streams,
    streamed turns, waits for a turn's answer); one may open when another closes.

    ``limit`` stays None (it is not a request rate); ``max_open_streams`` is the limit.
    """

    problem_type = "too-many-streams"

    def __init__(
        self, message: str, *, retry_after: float, max_open_streams: int, open_streams: int
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.max_open_streams = max_open_streams
        self.open_streams = open_streams


class ToolError(AgentClusterError):
    """A tool failed in a way the model should hear about (returned as the tool's result)."""


class InfrastructureError(AgentClusterError):
    """A dependency failed. ``dependency`` names it (postgresql, kafka, redis, opa, ...)."""

    retryable = True

    def __init__(self, dependency: str, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(f"{dependency}: {message}", retryable=retryable)
        self.dependency = dependency


class DependencyUnavailable(InfrastructureError):
    """The dependency could not be reached at all."""


class HostStarting(DependencyUnavailable):
    """A session host is still building its dependencies (a fresh process, or one Ray just
    restarted after a crash) or is draining; the router moves the session to a host that is
    ready."""

    def __init__(self, host_id: str, state: str = "starting") -> None:
        super().__init__("ray", f"session host {host_id} is {state}")
        self.host_id = host_id


class LlmUnavailable(InfrastructureError):
    """No model of a call's chain gave an answer: each failed past its retries (HTTP 5xx or 429,
    a timeout, a malformed stream) or was skipped by its open breaker, or a stream broke after
    part of the answer was delivered. A turn fails with it as ``error_type: LlmUnavailable``."""

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__("llm", message, retryable=retryable)


class StaleEpochError(AgentClusterError):
    """A write fenced off: the writer's epoch is older than the session's current owner epoch."""

    def __init__(self, session_id: str, epoch: int | None = None) -> None:
        super().__init__(f"session {session_id}: stale owner epoch {epoch}; another host owns it")
        self.session_id = session_id
        self.epoch = epoch


class TerminalFailure(AgentClusterError):
    """The work cannot succeed; do not retry."""


class BudgetExceeded(TerminalFailure):
    """The tenant's daily LLM budget does not allow the next call; the turn fails without it.

    Attributes:
        tenant_id: whose budget.
        budget: which one: ``tokens_per_day`` or ``cost_per_day_usd``.
        used: what the tenant used today (tokens, or US dollars).
        limit: the budget (tokens, or US dollars).
        resets_at: when the day's usage starts again from zero (ISO 8601, UTC midnight).
    """

    def __init__(
        self,
        message: str,
        *,
        tenant_id: str,
        budget: str,
        used: float,
        limit: float,
        resets_at: str,
    ) -> None:
        super().__init__(message)
        self.tenant_id = tenant_id
        self.budget = budget
        self.used = used
        self.limit = limit
        self.resets_at = resets_at
