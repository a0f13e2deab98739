"""Test-connection: one real, tiny call to a provider, through the LLM port.

The call goes the way every LLM call goes (:class:`~agentcluster.llm.LiteLLMClient`: its error
mapping, breaker, metrics and trace span), routed to the provider under test by a fixed
:class:`~agentcluster.llm.ModelRoute`. It asks for one token, without retries or fallbacks and with
a breaker of its own (a test must reach the provider even when agents' calls opened theirs),
bounded by ``timeout_s``; whatever happens becomes a :class:`ProbeOutcome` (nothing raises), with
the key scrubbed out of any text the provider or LiteLLM sent back.

LiteLLM is imported on the first test, not with this package: a gateway replica that never tests a
provider does not pay its seconds and ~200 MB.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agentcluster.config import LlmSettings
from agentcluster.llm import ChatMessage, LlmRequest, ModelRoute, StaticRoutes
from agentcluster.providers._secrets import mask_secret

__all__ = ["Probe", "ProbeOutcome", "probe_with_litellm", "scrub"]

_DETAIL_CHARS = 300
_SSL_CONTEXT = re.compile(r" ssl:<[^>]*>")
_CHAIN_LINKS = 8


@dataclass(frozen=True)
class ProbeOutcome:
    """What a test call found: success, the HTTP status if any, latency and a short detail."""

    ok: bool
    latency_ms: float
    detail: str
    status: int | None = None


Probe = Callable[[ModelRoute, float], Awaitable[ProbeOutcome]]
"""Makes one test call along a route within a timeout (:func:`probe_with_litellm`)."""


def scrub(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` replaced by its mask, squeezed to one line of bounded length."""
    if secret:
        text = text.replace(secret, mask_secret(secret))
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."


def _probe_settings(timeout_s: float) -> LlmSettings:
    # One attempt, asked for whole (no sink): its one wait for the answer is the whole call's,
    # so the whole call is bounded by the probe's timeout.
    return LlmSettings(
        api_base=None,
        api_key=None,
        timeout_s=timeout_s,
        call_timeout_s=timeout_s,
        max_retries=0,
    )


async def probe_with_litellm(route: ModelRoute, timeout_s: float) -> ProbeOutcome:
    """Ask ``route`` for one token through the LLM port; failures are outcomes, not
    exceptions."""
    from agentcluster.llm import LiteLLMClient  # imports LiteLLM (offline, seconds)

    client = LiteLLMClient(_probe_settings(timeout_s), routes=StaticRoutes(route))
    request = LlmRequest(
        model=route.reference,
        messages=[ChatMessage(role="user", content="Reply with one word: ok")],
        max_output_tokens=1,
    )
    started = time.perf_counter()
    try:
        await client.complete(request)
    except Exception as exc:
        # Why broad: any failure is the answer to "does this provider work". The port's errors
        # carry the library's error as their cause; anything LiteLLM raised past the port's
        # mapping is reported the same way, the key scrubbed out.
        return _failed(route, exc, started, timeout_s)
    detail = scrub(f"answered as {route.litellm_model}", route.api_key)
    return ProbeOutcome(ok=True, latency_ms=_since(started), detail=detail)


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 1)


def _failed(
    route: ModelRoute, error: BaseException, started: float, timeout_s: float
) -> ProbeOutcome:
    exc = _library_error(error)
    if type(exc) is TimeoutError:  # the whole-call bound, not LiteLLM's own timeout
        detail = f"no answer within {timeout_s:g} s"
        return ProbeOutcome(ok=False, latency_ms=_since(started), detail=detail)
    transport = _transport_failure(exc)
    if transport is not None:
        # No HTTP answer at all, whatever status LiteLLM's wrapper claims (it says 500).
        where = route.api_base or "the provider"
        reason = _SSL_CONTEXT.sub("", str(transport))  # aiohttp's repr of an object: noise
        detail = f"cannot connect to {where}: {type(transport).__name__}: {reason}"
        return ProbeOutcome(
            ok=False, latency_ms=_since(started), detail=scrub(detail, route.api_key)
        )
    status = _status_of(exc)
    prefix = f"HTTP {status}: " if status is not None else ""
    detail = f"{prefix}{type(exc).__name__}: {exc}"
    return ProbeOutcome(
        ok=False, latency_ms=_since(started), detail=scrub(detail, route.api_key), status=status
    )


def _library_error(error: BaseException) -> BaseException:
    """The library's error behind the port's (the first link of the cause chain that is not
    ours), or ``error`` itself when there is none (an open breaker, say)."""
    current: BaseException | None = error
    for _ in range(_CHAIN_LINKS):
        if current is None:
            break
        if not type(current).__module__.startswith("agentcluster"):
            return current
        current = current.__cause__ or current.__context__
    return error


def _status_of(exc: BaseException) -> int | None:
    status: Any = getattr(exc, "status_code", None)
    return status if isinstance(status, int) and 100 <= status < 600 else None


def _transport_failure(exc: BaseException) -> BaseException | None:
    """The transport error behind ``exc``, if it is one: LiteLLM reports a refused connection as
    its own InternalServerError (500) caused by it, so look down the chain (a few links)."""
    import httpx
    import openai

    current: BaseException | None = exc
    found: BaseException | None = None
    for _ in range(6):
        if current is None:
            break
        if isinstance(current, openai.APIConnectionError | httpx.TransportError):
            found = current  # keep going: the innermost one says the most (host, port, errno)
        current = current.__cause__ or current.__context__
    return found
