"""Test-connection: one real, tiny LiteLLM call to a provider.

LiteLLM is imported on the first test, not with this package: a gateway replica that never tests a
provider does not pay its seconds and ~200 MB. The call asks for one token, without streaming and
without retries, bounded by ``timeout_s``; whatever happens becomes a :class:`ProbeOutcome`
(nothing raises), with the key scrubbed out of any text the provider or LiteLLM sent back.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agentcluster.config import prepare_offline_environment
from agentcluster.providers._resolver import ModelRoute
from agentcluster.providers._secrets import mask_secret

__all__ = ["Probe", "ProbeOutcome", "probe_with_litellm", "scrub"]

_DETAIL_CHARS = 300
_SSL_CONTEXT = re.compile(r" ssl:<[^>]*>")


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


async def probe_with_litellm(route: ModelRoute, timeout_s: float) -> ProbeOutcome:
    """Ask ``route`` for one token through LiteLLM; failures are outcomes, not exceptions."""
    prepare_offline_environment()  # before LiteLLM's first import: no cost-map download
    import litellm

    litellm.suppress_debug_info = True
    started = time.perf_counter()
    try:
        response = await litellm.acompletion(
            model=route.litellm_model,
            messages=[{"role": "user", "content": "Reply with one word: ok"}],
            max_tokens=1,
            api_base=route.api_base,
            api_key=route.api_key or ("none" if route.api_base else None),
            timeout=timeout_s,
            num_retries=0,
            max_retries=0,
        )
    except Exception as exc:
        # Any failure is the answer to "does this provider work": LiteLLM raises many classes
        # (openai's, httpx's, its own), all reported the same way, the key scrubbed out.
        return _failed(route, exc, started)
    model = getattr(response, "model", None) or route.litellm_model
    return ProbeOutcome(
        ok=True, latency_ms=_since(started), detail=scrub(f"answered as {model}", route.api_key)
    )


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 1)


def _failed(route: ModelRoute, exc: BaseException, started: float) -> ProbeOutcome:
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
