"""The production limiter: request windows and daily usage counters in Redis, one atomic script
per decision, so every gateway replica and session host of the cluster counts against the same
numbers.

Keys (``<prefix>`` is the runtime namespace, so clusters sharing a Redis stay apart):

* ``<prefix>:limits:rate:<tenant>``: a sorted set of the admitted requests of the last minute,
  scored by Redis's own clock (``TIME``, so replicas' clocks do not matter); it expires a window
  after the last request.
* ``<prefix>:limits:usage:<tenant>:<YYYY-MM-DD>``: a hash of the day's ``tokens`` and
  ``cost_nano_usd``; it expires at the end of the next UTC day (yesterday stays readable).
* ``<prefix>:limits:streams:<tenant>``: a sorted set of the tenant's open streams, one member per
  stream scored by its lease's expiry on Redis's clock; expired members are dropped before every
  count, and the key expires with its last lease.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta

from agentcluster.limits._models import (
    BudgetName,
    DailyUsage,
    RateDecision,
    StreamDecision,
    TenantLimits,
    to_nano_usd,
)
from agentcluster.limits._ports import Admission
from agentcluster.redisconn import open_redis, redis_errors

__all__ = ["RedisLimiter"]

_MICROS = 1_000_000

# KEYS[1] the tenant's window; ARGV limit, window (microseconds), a unique member.
# Returns {admitted 1/0, remaining, microseconds until a slot frees}.
_SLIDING_WINDOW = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
  return {1, limit - count - 1, 0}
end
local freeing = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
return {0, 0, tonumber(freeing[2]) + window - now}
"""

# KEYS[1] the day's usage hash; ARGV token limit, cost limit (nano-USD), tokens, expire-at.
# Returns {0 admitted | 1 tokens refused | 2 cost refused, tokens used, cost used}: the steps of
# budget_verdict, then the reservation.
_RESERVE = """
local used = redis.call('HMGET', KEYS[1], 'tokens', 'cost_nano_usd')
local tokens = tonumber(used[1]) or 0
local cost = tonumber(used[2]) or 0
local token_limit = tonumber(ARGV[1])
local cost_limit = tonumber(ARGV[2])
local estimate = tonumber(ARGV[3])
if token_limit > 0 and tokens + estimate > token_limit then return {1, tokens, cost} end
if cost_limit > 0 and cost >= cost_limit then return {2, tokens, cost} end
if estimate ~= 0 then
  redis.call('HINCRBY', KEYS[1], 'tokens', estimate)
  redis.call('EXPIREAT', KEYS[1], ARGV[4])
end
return {0, tokens, cost}
"""

# KEYS[1] the tenant's open streams; ARGV limit, lease (microseconds), the slot's id.
# Returns {acquired 1/0, open streams (with this one when acquired)}.
_ACQUIRE_STREAM = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local count = redis.call('ZCARD', KEYS[1])
if count >= tonumber(ARGV[1]) then return {0, count} end
redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
local ttl = math.ceil(lease / 1000)
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return {1, count + 1}
"""

# KEYS[1] the tenant's open streams; ARGV lease (microseconds), the slot's id. Re-adds a slot
# that expired meanwhile: its stream is still open.
_RENEW_STREAM = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local lease = tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
local ttl = math.ceil(lease / 1000)
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""

_REFUSALS: dict[int, BudgetName] = {1: "tokens_per_day", 2: "cost_per_day_usd"}


def _expire_at(day: str) -> int:
    """The end of the UTC day after ``day`` (unix seconds): yesterday's usage stays readable."""
    start = datetime.combine(date.fromisoformat(day), time(), tzinfo=UTC)
    return int((start + timedelta(days=2)).timestamp())


class RedisLimiter:
    """:class:`~agentcluster.limits.RateLimiter`, :class:`~agentcluster.limits.UsageCounter` and
    :class:`~agentcluster.limits.StreamSlots` on Redis (see the module docstring).

    Args:
        url: ``redis://host:port/db``.
        prefix: the key prefix (the runtime namespace).
        timeout_s: connect and command timeout.
    """

    def __init__(self, url: str, *, prefix: str = "agentcluster", timeout_s: float = 2.0) -> None:
        self._client = open_redis(url, timeout_s=timeout_s)
        self._prefix = f"{prefix}:limits"
        self._window = self._client.register_script(_SLIDING_WINDOW)
        self._reserve = self._client.register_script(_RESERVE)
        self._acquire_stream = self._client.register_script(_ACQUIRE_STREAM)
        self._renew_stream = self._client.register_script(_RENEW_STREAM)
        self.description = f"redis keys {self._prefix}:*"

    def rate_key(self, tenant_id: str) -> str:
        return f"{self._prefix}:rate:{tenant_id}"

    def usage_key(self, tenant_id: str, day: str) -> str:
        return f"{self._prefix}:usage:{tenant_id}:{day}"

    def streams_key(self, tenant_id: str) -> str:
        return f"{self._prefix}:streams:{tenant_id}"

    async def hit(self, tenant_id: str, limit: int, window_s: float) -> RateDecision:
        window_us = round(window_s * _MICROS)
        async with redis_errors(self.description):
            admitted, remaining, wait_us = await self._window(
                keys=[self.rate_key(tenant_id)], args=[limit, window_us, uuid.uuid4().hex]
            )
        return RateDecision(
            allowed=bool(admitted),
            limit=limit,
            remaining=int(remaining),
            retry_after_s=int(wait_us) / _MICROS,
        )

    async def reserve(
        self, tenant_id: str, day: str, tokens: int, limits: TenantLimits
    ) -> Admission:
        arguments = [
            limits.tokens_per_day,
            to_nano_usd(limits.cost_per_day_usd),
            tokens,
            _expire_at(day),
        ]
        async with redis_errors(self.description):
            code, used_tokens, used_cost = await self._reserve(
                keys=[self.usage_key(tenant_id, day)], args=arguments
            )
        used = DailyUsage(tokens=int(used_tokens), cost_nano_usd=int(used_cost))
        return Admission(refused=_REFUSALS.get(int(code)), used=used)

    async def add(self, tenant_id: str, day: str, tokens: int, cost_nano_usd: int) -> None:
        key = self.usage_key(tenant_id, day)
        async with redis_errors(self.description), self._client.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "tokens", tokens)
            pipe.hincrby(key, "cost_nano_usd", cost_nano_usd)
            pipe.expireat(key, _expire_at(day))
            await pipe.execute()

    async def read(self, tenant_id: str, day: str) -> DailyUsage:
        async with redis_errors(self.description):
            tokens, cost = await self._client.hmget(
                self.usage_key(tenant_id, day), ["tokens", "cost_nano_usd"]
            )
        return DailyUsage(tokens=int(tokens or 0), cost_nano_usd=int(cost or 0))

    async def acquire(
        self, tenant_id: str, slot_id: str, limit: int, lease_s: float
    ) -> StreamDecision:
        lease_us = round(lease_s * _MICROS)
        async with redis_errors(self.description):
            acquired, count = await self._acquire_stream(
                keys=[self.streams_key(tenant_id)], args=[limit, lease_us, slot_id]
            )
        return StreamDecision(acquired=bool(acquired), open_streams=int(count))

    async def renew(self, tenant_id: str, slot_id: str, lease_s: float) -> None:
        lease_us = round(lease_s * _MICROS)
        async with redis_errors(self.description):
            await self._renew_stream(keys=[self.streams_key(tenant_id)], args=[lease_us, slot_id])

    async def release(self, tenant_id: str, slot_id: str) -> None:
        async with redis_errors(self.description):
            await self._client.zrem(self.streams_key(tenant_id), slot_id)

    async def aclose(self) -> None:
        await self._client.aclose()
