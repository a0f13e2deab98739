"""The LLM port over LiteLLM: streaming, retries with backoff, a breaker per model, fallbacks.

One :meth:`LiteLLMClient.complete` walks the chain ``[request.model, *request.fallback_models]``:

* a model whose breaker is open is skipped without a call;
* a call with an ``on_delta`` streams (``stream=True`` with usage in the last chunk); content
  fragments go to ``on_delta`` in order, tool-call argument fragments are joined by their index.
  A call without one asks for the whole answer (unless ``stream`` is ``always``): LiteLLM parses
  each streamed chunk into two models, which makes a short answer cost three times the CPU;
* a *retryable* failure (429, 408/409, 5xx, timeout, connection error, a broken stream) is retried
  on the same model up to ``max_retries`` times with exponential backoff and jitter, honouring a
  429's ``Retry-After`` up to :data:`RETRY_AFTER_CAP_S` (a longer one moves on to the next model at
  once: we do not park a turn that long); then the next model is tried;
* a *terminal* failure (400, 401, 403, 404, 422, context window exceeded, content policy) raises
  :class:`~agentcluster.errors.TerminalFailure` at once, naming model and status: no retry and no
  fallback, the same request would be rejected again;
* when every model failed: :class:`~agentcluster.errors.LlmUnavailable` (an
  ``InfrastructureError`` of ``llm``, retryable) listing each model's last failure.

Deltas are never duplicated: a call is retried, or the next model tried, only while nothing has
been passed to ``on_delta`` yet. A stream that breaks *after* content was emitted raises
``InfrastructureError`` (retryable) at once, saying so; the caller, who has shown part of an
answer, decides whether to retry the whole turn. Tool-call-only streams emit no deltas, so they
stay retryable to the end.

LiteLLM's own retries are off (``num_retries=0``, ``max_retries=0``) so every attempt is counted
here, by the breaker and in :attr:`LlmResult.attempts`. ``timeout_s`` bounds connecting and each
wait for data of a stream (LiteLLM's ``timeout``; a whole answer's one wait is the call's);
``call_timeout_s`` bounds a whole call, stream included
(a stream still dripping past it is a retryable failure like any timeout), so no call, and so no
turn, can hang. A malformed chunk (cut-off JSON, bytes that are not SSE, a chunk of the wrong
shape) reaches us as LiteLLM's ``MidStreamFallbackError`` and is a retryable failure too.

Importing this module imports LiteLLM (seconds, ~200 MB); it first calls
:func:`~agentcluster.config.prepare_offline_environment` so that import stays offline.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentcluster.config import LlmSettings, prepare_offline_environment

# LiteLLM reads LITELLM_LOCAL_MODEL_COST_MAP at import time; without it, the import goes online.
prepare_offline_environment()

import httpx  # noqa: E402
import litellm  # noqa: E402
import openai  # noqa: E402
import pybreaker  # noqa: E402

from agentcluster import metrics, tracing  # noqa: E402
from agentcluster.errors import (  # noqa: E402
    InfrastructureError,
    LlmUnavailable,
    TerminalFailure,
)
from agentcluster.events import Usage  # noqa: E402
from agentcluster.llm._tokens import count_messages, count_text  # noqa: E402
from agentcluster.llm._types import (  # noqa: E402
    ChatMessage,
    DeltaSink,
    LlmRequest,
    LlmResult,
    ModelRoute,
    ModelRoutes,
    ToolCallSpec,
    ToolSchema,
)

__all__ = ["RETRY_AFTER_CAP_S", "BreakerRegistry", "LiteLLMClient", "Sleep", "wire_tool_name"]

litellm.suppress_debug_info = True
# LiteLLM's own success logging hands every streamed chunk to a thread pool and prices each call
# again; nothing here reads it (usage, cost, metrics and traces are ours): off.
litellm.disable_streaming_logging = True

RETRY_AFTER_CAP_S = 10.0
"""The longest ``Retry-After`` honoured by sleeping; longer ones move on to the next model."""

_MAX_BACKOFF_S = 30.0
_JITTER = 0.2
_RETRYABLE_STATUSES = frozenset({408, 409, 429})
_DETAIL_CHARS = 300

Sleep = Callable[[float], Awaitable[None]]
"""How the client waits between attempts (``asyncio.sleep``; tests pass a recorder)."""


class _BreakerMetrics(pybreaker.CircuitBreakerListener):
    """Keeps the breaker state gauge of each model current."""

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        metrics.record_breaker_state(cb.name or "unknown", new_state.name)


class BreakerRegistry:
    """One circuit breaker per model name, shared by every client of the process.

    Only retryable call failures count towards opening a breaker; terminal errors (the request was
    wrong, the provider is up) and anything else (cancellation, a failing ``on_delta``) do not.
    As in pybreaker, an excluded outcome counts as a success and resets the failure count.

    Args:
        fail_max: consecutive failures that open a model's breaker.
        reset_timeout_s: how long it stays open before one trial call is let through.
    """

    def __init__(self, fail_max: int = 5, reset_timeout_s: float = 30.0) -> None:
        self._fail_max = fail_max
        self._reset_timeout_s = reset_timeout_s
        self._breakers: dict[str, pybreaker.CircuitBreaker] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: LlmSettings) -> BreakerRegistry:
        """A registry with the breaker thresholds of ``settings``."""
        return cls(fail_max=settings.breaker_fail_max, reset_timeout_s=settings.breaker_reset_s)

    def breaker(self, model: str) -> pybreaker.CircuitBreaker:
        """The breaker of ``model``, created closed on first use."""
        with self._lock:
            breaker = self._breakers.get(model)
            if breaker is None:
                breaker = pybreaker.CircuitBreaker(
                    fail_max=self._fail_max,
                    reset_timeout=self._reset_timeout_s,
                    exclude=[_not_a_call_failure],
                    name=model,
                    # Re-raise our own error when the breaker trips, not pybreaker's.
                    throw_new_error_on_trip=False,
                    listeners=[_BreakerMetrics()],
                )
                self._breakers[model] = breaker
                metrics.record_breaker_state(model, breaker.current_state)
            return breaker

    def states(self) -> dict[str, str]:
        """Each known model's breaker state: ``closed``, ``open`` or ``half-open``."""
        with self._lock:
            return {model: str(b.current_state) for model, b in self._breakers.items()}


class _CallFailed(Exception):
    """A retryable failure of one call; the only outcome a breaker counts as a failure."""

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        after_deltas: int = 0,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.retry_after_s = retry_after_s
        self.after_deltas = after_deltas


def _not_a_call_failure(exc: BaseException) -> bool:
    return not isinstance(exc, _CallFailed)


@dataclass
class _Progress:
    """What one ``complete`` has done so far, across models."""

    attempts: int = 0
    deltas: int = 0
    failures: list[str] = field(default_factory=list)
    last_failure: BaseException | None = None


class LiteLLMClient:
    """The :class:`~agentcluster.llm.LLM` port over LiteLLM (see the module docstring for policy).

    Args:
        settings: endpoint, timeout, retry and breaker settings.
        breakers: the process-wide breaker registry; a private one from ``settings`` when omitted.
        sleep: waits between attempts; ``asyncio.sleep`` unless a test records the delays.
        rng: the jitter source (seed it for reproducible delays).
        routes: where each model goes (the provider settings' resolver, or fixed routes);
            None: this client's own settings route every model.
    """

    def __init__(
        self,
        settings: LlmSettings,
        breakers: BreakerRegistry | None = None,
        *,
        sleep: Sleep | None = None,
        rng: random.Random | None = None,
        routes: ModelRoutes | None = None,
    ) -> None:
        self._settings = settings
        self._routes = routes
        if breakers is None:
            breakers = BreakerRegistry.from_settings(settings)
        self.breakers = breakers
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        self._rng = rng if rng is not None else random.Random()

    async def complete(self, request: LlmRequest, on_delta: DeltaSink | None = None) -> LlmResult:
        """One completion from the first model of the chain that answers (streamed when
        ``on_delta`` is given).

        Args:
            request: the model chain and the conversation.
            on_delta: receives content fragments in order, from one stream only; None when
                nobody watches (the answer is asked for whole).

        Returns:
            The assembled answer; ``model`` is the model that answered, ``attempts`` counts every
            call made (retries and fallbacks included), ``latency_ms`` the whole wait.

        Raises:
            TerminalFailure: a model rejected the request itself (4xx other than 408/409/429).
            InfrastructureError: every model failed or was skipped by its open breaker, or a
                stream broke after content was already passed to ``on_delta``; retryable.
        """
        with tracing.span(
            f"chat {request.model}",
            kind=tracing.SpanKind.CLIENT,
            attributes=_request_attributes(request),
        ) as span:
            result = await self._complete_chain(request, on_delta)
            _trace_result(span, result)
            return result

    async def _complete_chain(self, request: LlmRequest, on_delta: DeltaSink | None) -> LlmResult:
        started = time.perf_counter()
        progress = _Progress()
        try:
            for model in [request.model, *request.fallback_models]:
                result = await self._complete_with(model, request, on_delta, progress)
                if result is not None:
                    latency_ms = (time.perf_counter() - started) * 1000.0
                    _measure(result, latency_ms)
                    return result.model_copy(
                        update={"latency_ms": latency_ms, "attempts": progress.attempts}
                    )
        except (InfrastructureError, TerminalFailure):
            metrics.record_llm_call(request.model, "error", time.perf_counter() - started)
            raise
        metrics.record_llm_call(request.model, "error", time.perf_counter() - started)
        # The last failure (and the library error behind it) stays the cause: a provider test
        # reads its status and transport failure from the chain.
        raise LlmUnavailable(
            f"all models failed: {'; '.join(progress.failures)}", retryable=True
        ) from progress.last_failure

    async def _complete_with(
        self, model: str, request: LlmRequest, on_delta: DeltaSink | None, progress: _Progress
    ) -> LlmResult | None:
        """Call ``model`` with retries; None (with the reason recorded) to move to the next."""
        # The provider settings' route for this model (None: this client's own settings apply).
        route = await self._routes.route(model) if self._routes is not None else None
        breaker = self.breakers.breaker(model)
        # Refreshed on use: Ray stops exporting a gauge that is not set again for a while.
        metrics.record_breaker_state(model, breaker.current_state)
        last: _CallFailed | None = None
        for retry in range(self._settings.max_retries + 1):
            try:
                with breaker.calling():
                    progress.attempts += 1
                    return await self._stream_once(model, route, request, on_delta, progress)
            except pybreaker.CircuitBreakerError:
                reason = f"{last.detail}; circuit open" if last else "circuit open, not called"
                progress.failures.append(f"{model}: {reason}")
                return None
            except _CallFailed as failure:
                if failure.after_deltas:
                    raise _broken_stream(model, failure) from failure
                tracing.current_span().add_event(
                    "llm.attempt_failed", {"gen_ai.request.model": model, "error": failure.detail}
                )
                last = failure
                delay = self._delay(retry, failure)
                if retry == self._settings.max_retries or delay is None:
                    break
                await self._sleep(delay)
        progress.failures.append(f"{model}: {last.detail if last else 'no attempt'}")
        progress.last_failure = last or progress.last_failure
        return None

    def _delay(self, retry: int, failure: _CallFailed) -> float | None:
        """Seconds before the next attempt; None when Retry-After is too long to wait for."""
        backoff = min(self._settings.retry_backoff_s * 2**retry, _MAX_BACKOFF_S)
        backoff *= 1.0 + self._rng.uniform(0.0, _JITTER)
        if failure.retry_after_s is None:
            return backoff
        if failure.retry_after_s > RETRY_AFTER_CAP_S:
            return None
        return max(backoff, failure.retry_after_s)

    async def _stream_once(
        self,
        model: str,
        route: ModelRoute | None,
        request: LlmRequest,
        on_delta: DeltaSink | None,
        progress: _Progress,
    ) -> LlmResult:
        """One streamed call; library errors leave as TerminalFailure or _CallFailed."""
        assembly = _StreamAssembly()
        deltas_before = progress.deltas
        call_timeout_s = self._settings.call_timeout_s
        try:
            # The whole call, not only each wait for data: a stream that keeps dripping must
            # still end, or the turn would never end either.
            async with asyncio.timeout(call_timeout_s):
                await self._consume(model, route, request, assembly, on_delta, progress)
        except (openai.OpenAIError, httpx.HTTPError) as exc:
            raise _map_error(exc, model, after_deltas=progress.deltas - deltas_before) from exc
        except TimeoutError as exc:
            detail = f"no complete answer within {call_timeout_s:g} s (SA01_LLM_CALL_TIMEOUT_S)"
            raise _CallFailed(detail, after_deltas=progress.deltas - deltas_before) from exc
        routed = route.litellm_model if route is not None else self._routed(model)
        result = assembly.result(model, routed, request)
        if not result.tool_calls:
            return result
        names = {wire_tool_name(tool.name): tool.name for tool in request.tools}
        calls = [
            c.model_copy(update={"name": names.get(c.name, c.name)}) for c in result.tool_calls
        ]
        return result.model_copy(update={"tool_calls": calls})

    async def _consume(
        self,
        model: str,
        route: ModelRoute | None,
        request: LlmRequest,
        assembly: _StreamAssembly,
        on_delta: DeltaSink | None,
        progress: _Progress,
    ) -> None:
        """Open the stream and feed every chunk to ``assembly``, content to ``on_delta``; with
        no ``on_delta`` (nobody watches) the answer is asked for whole, unless streaming is
        always on."""
        streamed = on_delta is not None or self._settings.stream == "always"
        arguments = self._call_arguments(model, route, request, streamed)
        if not streamed:
            assembly.add_whole(await litellm.acompletion(**arguments))
            return
        stream = await litellm.acompletion(**arguments)
        try:
            async for chunk in stream:
                text = assembly.add(chunk)
                if text and on_delta is not None:
                    progress.deltas += 1
                    await on_delta(text)
        finally:
            # Release the connection now when we stop early (error, cancellation, a failing
            # sink) instead of whenever the stream is garbage-collected.
            await _close_stream(stream)

    def _call_arguments(
        self, model: str, route: ModelRoute | None, request: LlmRequest, streamed: bool
    ) -> dict[str, Any]:
        settings = self._settings
        arguments: dict[str, Any] = {
            "model": self._routed(model),
            "messages": [_wire_message(message) for message in request.messages],
            "tools": [_wire_tool(tool) for tool in request.tools] or None,
            "api_base": settings.api_base,
            "api_key": self._api_key(),
            "num_retries": 0,
            "max_retries": 0,
        }
        if streamed:
            arguments["stream"] = True
            arguments["stream_options"] = {"include_usage": True}
            arguments["timeout"] = settings.timeout_s
        else:
            # A whole answer sends nothing until it is done: its wait is the whole call's.
            arguments["timeout"] = httpx.Timeout(
                settings.call_timeout_s, connect=settings.timeout_s
            )
        if route is not None:
            arguments["model"] = route.litellm_model
            arguments["api_base"] = route.api_base
            arguments["api_key"] = route.api_key or ("none" if route.api_base else None)
        if request.max_output_tokens is not None:
            arguments["max_tokens"] = request.max_output_tokens
        if request.temperature is not None:
            arguments["temperature"] = request.temperature
        if request.response_schema is not None:
            arguments["response_format"] = request.response_schema.to_openai()
        return arguments

    def _api_key(self) -> str | None:
        if self._settings.api_key:
            return self._settings.api_key
        # An OpenAI-compatible base without auth still wants some key on the wire; without a base,
        # None lets LiteLLM use the provider's own key (OPENAI_API_KEY, ...) instead of a dummy.
        return "none" if self._settings.api_base else None

    def _routed(self, model: str) -> str:
        """The LiteLLM model string: a bare name goes to the configured OpenAI-compatible base."""
        if self._settings.api_base and "/" not in model:
            return f"openai/{model}"
        return model


def _request_attributes(request: LlmRequest) -> dict[str, Any]:
    """GenAI semantic-convention attributes of a chat request."""
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": request.model,
        "gen_ai.request.max_tokens": request.max_output_tokens,
        "gen_ai.request.temperature": request.temperature,
        "agentcluster.llm.fallback_models": list(request.fallback_models) or None,
    }


def _trace_result(span: tracing.Span, result: LlmResult) -> None:
    usage = result.usage
    span.set_attributes(
        {
            "gen_ai.response.model": result.model,
            "gen_ai.usage.input_tokens": usage.prompt_tokens,
            "gen_ai.usage.output_tokens": usage.completion_tokens,
            "agentcluster.llm.cost_usd": usage.cost_usd,
            "agentcluster.llm.attempts": result.attempts,
            "agentcluster.llm.tool_calls": len(result.tool_calls),
        }
    )
    if result.finish_reason:
        span.set_attribute("gen_ai.response.finish_reasons", [result.finish_reason])


def _measure(result: LlmResult, latency_ms: float) -> None:
    usage = result.usage
    metrics.record_llm_call(
        result.model,
        "ok",
        latency_ms / 1000.0,
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cost_usd,
    )


_WIRE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def wire_tool_name(name: str) -> str:
    """The tool's name as providers accept it (``^[a-zA-Z0-9_-]{1,64}$``): unchanged when it
    already fits, else its invalid characters replaced and a short hash of the original appended,
    so ``mcp.files.read`` and a tool really named ``mcp_files_read`` stay apart."""
    if _WIRE_NAME.match(name):
        return name
    digest = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', name)[:55]}_{digest}"


def _wire_tool(tool: ToolSchema) -> dict[str, Any]:
    wire = tool.to_openai()
    wire["function"]["name"] = wire_tool_name(tool.name)
    return wire


def _wire_message(message: ChatMessage) -> dict[str, Any]:
    wire = message.to_openai()
    for call in wire.get("tool_calls", ()):
        call["function"]["name"] = wire_tool_name(call["function"]["name"])
    return wire


async def _close_stream(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def _broken_stream(model: str, failure: _CallFailed) -> LlmUnavailable:
    return LlmUnavailable(
        f"{model}: the stream broke after {failure.after_deltas} content fragment(s) were "
        f"delivered, not retried to avoid duplicating them: {failure.detail}",
        retryable=True,
    )


# --------------------------------------------------------------------------------------------------
# Error mapping
# --------------------------------------------------------------------------------------------------


def _map_error(
    exc: openai.OpenAIError | httpx.HTTPError, model: str, *, after_deltas: int = 0
) -> TerminalFailure | _CallFailed:
    """Convert a LiteLLM/openai/httpx exception into a terminal failure or a retryable one.

    LiteLLM's classes are not a reliable guide on their own: a 403 arrives as ``APIError`` (not
    ``PermissionDeniedError``), a 422 as ``BadRequestError``, a refused connection as
    ``InternalServerError`` (500) and a stream cut mid-way as ``MidStreamFallbackError`` (a 500
    ``ServiceUnavailableError``). So timeouts and connection errors are recognised by class and
    the rest by HTTP status: 408, 409, 429 and 5xx are retryable, other 4xx terminal.
    """
    status = _status_of(exc)
    detail = _describe(exc, status)
    if _is_transport_failure(exc):
        return _CallFailed(detail, status=status, after_deltas=after_deltas)
    terminal_class = isinstance(
        exc, litellm.ContextWindowExceededError | litellm.ContentPolicyViolationError
    )
    if terminal_class or (status is not None and _is_terminal_status(status)):
        return TerminalFailure(f"llm: {model} rejected the request ({detail})")
    return _CallFailed(
        detail, status=status, retry_after_s=_retry_after(exc), after_deltas=after_deltas
    )


def _is_transport_failure(exc: BaseException) -> bool:
    # openai.APITimeoutError is a subclass of APIConnectionError; both carry no HTTP answer.
    return isinstance(exc, openai.APIConnectionError | httpx.TransportError)


def _is_terminal_status(status: int) -> bool:
    return 400 <= status < 500 and status not in _RETRYABLE_STATUSES


def _status_of(exc: BaseException) -> int | None:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _describe(exc: BaseException, status: int | None) -> str:
    text = " ".join(str(exc).split())
    if len(text) > _DETAIL_CHARS:
        text = text[: _DETAIL_CHARS - 3] + "..."
    prefix = f"HTTP {status} " if status is not None else ""
    return f"{prefix}{type(exc).__name__}: {text}"


def _retry_after(exc: BaseException) -> float | None:
    """Seconds from a ``Retry-After`` (or ``retry-after-ms``) response header, if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        milliseconds = headers.get("retry-after-ms")
        if milliseconds is not None:
            return max(0.0, float(milliseconds) / 1000.0)
        seconds = headers.get("retry-after")
        # An HTTP-date Retry-After fails float() and is ignored: backoff applies instead.
        return max(0.0, float(seconds)) if seconds is not None else None
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# Stream assembly
# --------------------------------------------------------------------------------------------------


@dataclass
class _ToolCallParts:
    id: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class _StreamAssembly:
    """Joins streamed chunks: content in order, tool calls by index, finish reason, usage."""

    def __init__(self) -> None:
        self._content: list[str] = []
        self._calls: dict[int, _ToolCallParts] = {}
        self._finish_reason: str | None = None
        self._usage: Any = None

    def add(self, chunk: Any) -> str | None:
        """Take one chunk; returns its content fragment, if it has one."""
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self._usage = usage
        choices = getattr(chunk, "choices", None) or []
        if not choices:
            return None
        choice = choices[0]
        if getattr(choice, "finish_reason", None):
            self._finish_reason = str(choice.finish_reason)
        delta = getattr(choice, "delta", None)
        for call in getattr(delta, "tool_calls", None) or []:
            self._add_tool_call(call)
        text = getattr(delta, "content", None)
        if isinstance(text, str) and text:
            self._content.append(text)
            return text
        return None

    def add_whole(self, response: Any) -> None:
        """Take a whole (not streamed) answer."""
        self._usage = getattr(response, "usage", None)
        choices = getattr(response, "choices", None) or []
        if not choices:
            return
        choice = choices[0]
        if getattr(choice, "finish_reason", None):
            self._finish_reason = str(choice.finish_reason)
        message = getattr(choice, "message", None)
        for index, call in enumerate(getattr(message, "tool_calls", None) or []):
            self._add_tool_call(call, index)
        text = getattr(message, "content", None)
        if isinstance(text, str) and text:
            self._content.append(text)

    def _add_tool_call(self, call: Any, position: int = 0) -> None:
        index = getattr(call, "index", None)
        index = index if isinstance(index, int) else position
        parts = self._calls.setdefault(index, _ToolCallParts())
        if getattr(call, "id", None):
            parts.id = str(call.id)
        function = getattr(call, "function", None)
        name = getattr(function, "name", None)
        if name:
            parts.name = str(name)
        fragment = getattr(function, "arguments", None)
        if fragment:
            parts.arguments.append(str(fragment))

    def tool_calls(self) -> list[ToolCallSpec]:
        """The assembled tool calls, by index."""
        return [
            ToolCallSpec(
                id=parts.id or f"call_{index}",
                name=parts.name,
                arguments="".join(parts.arguments) or "{}",
            )
            for index, parts in sorted(self._calls.items())
        ]

    def result(self, model: str, routed_model: str, request: LlmRequest) -> LlmResult:
        """The answer of ``model`` (``routed_model`` is its LiteLLM name, for pricing)."""
        content = "".join(self._content) or None
        tool_calls = self.tool_calls()
        return LlmResult(
            model=model,
            content=content,
            tool_calls=tool_calls,
            finish_reason=self._finish_reason,
            usage=self._priced_usage(routed_model, request, content, tool_calls),
        )

    def _priced_usage(
        self,
        routed_model: str,
        request: LlmRequest,
        content: str | None,
        tool_calls: Sequence[ToolCallSpec],
    ) -> Usage:
        prompt, completion = self._token_counts()
        if prompt is None or completion is None:
            # The provider sent no usage: estimate it so accounting never silently reads zero.
            prompt = count_messages(request.messages, routed_model, request.tools)
            answer = (content or "") + "".join(json.dumps(c.model_dump()) for c in tool_calls)
            completion = count_text(answer, routed_model)
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            cost_usd=_cost_usd(routed_model, prompt, completion),
        )

    def _token_counts(self) -> tuple[int | None, int | None]:
        prompt = getattr(self._usage, "prompt_tokens", None)
        completion = getattr(self._usage, "completion_tokens", None)
        return (
            prompt if isinstance(prompt, int) else None,
            completion if isinstance(completion, int) else None,
        )


_UNPRICED: set[str] = set()
"""Models LiteLLM's (local, fixed) cost map cannot price: asking again would fail again, after
the same search of the map."""
_UNPRICED_MAX = 1024


def _cost_usd(routed_model: str, prompt_tokens: int, completion_tokens: int) -> float:
    if routed_model in _UNPRICED:
        return 0.0
    try:
        prompt_cost, completion_cost = litellm.cost_per_token(
            model=routed_model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )
    except Exception:
        # Pricing is best effort: an unmapped model (ModelNotMappedError) or any other failure of
        # LiteLLM's cost map must not fail a call that already succeeded; it costs 0.
        if len(_UNPRICED) < _UNPRICED_MAX:
            _UNPRICED.add(routed_model)
        return 0.0
    return float(prompt_cost) + float(completion_cost)
