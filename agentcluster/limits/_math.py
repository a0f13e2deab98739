"""The arithmetic of the limits, free of any storage: the sliding window of requests and the daily
budget check. The in-process and SQL adapters call these; the Redis adapter's Lua scripts do the
same steps inside Redis (tests hold both to the same answers)."""

from __future__ import annotations

import math
from collections import deque

from agentcluster.limits._models import (
    BudgetName,
    DailyUsage,
    RateDecision,
    TenantLimits,
    to_nano_usd,
)

__all__ = ["budget_verdict", "retry_after_header", "sliding_window"]


def sliding_window(times: deque[float], now: float, limit: int, window_s: float) -> RateDecision:
    """Admit a request at ``now`` if fewer than ``limit`` were admitted in the last ``window_s``.

    ``times`` holds the admitted requests' times, oldest first; it is updated in place (times
    that left the window are dropped, an admitted request is appended). A refused request is not
    recorded, so a client that keeps knocking does not push its own slot further away.

    The window is ``(now - window_s, now]``: a request admitted at ``t`` frees its slot at
    ``t + window_s``. When refused, ``retry_after_s`` is the time until enough slots free for one
    more (the oldest of the requests over the limit leaving; several if ``limit`` was lowered).
    """
    while times and times[0] <= now - window_s:
        times.popleft()
    if len(times) < limit:
        times.append(now)
        return RateDecision(allowed=True, limit=limit, remaining=limit - len(times))
    freeing = times[len(times) - limit]
    return RateDecision(
        allowed=False, limit=limit, remaining=0, retry_after_s=freeing + window_s - now
    )


def retry_after_header(seconds: float) -> int:
    """``Retry-After`` in whole seconds: rounded up (a client that waits that long is admitted),
    and at least 1."""
    return max(1, math.ceil(seconds - 1e-9))


def budget_verdict(
    limits: TenantLimits, used: DailyUsage, estimate_tokens: int
) -> BudgetName | None:
    """Which daily budget a call estimated at ``estimate_tokens`` prompt tokens would pass, if any.

    Tokens: refused when ``used + estimate > tokens_per_day`` (the call's prompt alone would pass
    the budget; its completion is only known afterwards, so the last admitted call may end a
    little over). Cost: refused once the day's cost reached ``cost_per_day_usd`` (a call's price
    is only known from the provider's usage, after the call). ``0`` is unlimited.
    """
    if limits.tokens_per_day and used.tokens + estimate_tokens > limits.tokens_per_day:
        return "tokens_per_day"
    if limits.cost_per_day_usd and used.cost_nano_usd >= to_nano_usd(limits.cost_per_day_usd):
        return "cost_per_day_usd"
    return None
