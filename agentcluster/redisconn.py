"""The one place that talks to redis-py: building a client and mapping its errors to ours.

Every Redis user (the limit counters, the provider settings store, the readiness probe) opens its
client through :func:`open_redis` and runs its commands inside :func:`redis_errors`, so timeouts
and error mapping are the same everywhere:

* unreachable (refused, reset, timed out: redis-py's ``ConnectionError`` / ``TimeoutError``, or a
  bare ``OSError``) is :class:`~agentcluster.errors.DependencyUnavailable` naming ``redis``
  (retryable: 503 with Retry-After on the API);
* any other redis-py error (a script or command refused) is
  :class:`~agentcluster.errors.InfrastructureError` naming ``redis``;
* ``WatchError`` passes through unchanged: it is the compare-and-set signal of a ``WATCH``
  transaction, which its caller turns into a conflict.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agentcluster.errors import DependencyUnavailable, InfrastructureError

__all__ = ["DEPENDENCY", "Redis", "open_redis", "redis_error", "redis_errors"]

DEPENDENCY = "redis"
"""The name our errors give Redis (``InfrastructureError.dependency``)."""

Redis = aioredis.Redis
"""The client type (``redis.asyncio.Redis``), for annotations."""


def open_redis(url: str, *, timeout_s: float) -> aioredis.Redis:
    """A client for ``url`` (connections open lazily, on the first command).

    Args:
        url: ``redis://host:port/db``, ``rediss://...`` or ``unix://...`` (``SA01_REDIS_URL``).
        timeout_s: connect and command timeout: a dead Redis answers within it, never hangs.
    """
    return aioredis.from_url(
        url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, decode_responses=True
    )


def redis_error(exc: RedisError | OSError, description: str) -> InfrastructureError:
    """Our error for a redis-py (or socket) error; ``description`` says what was being used."""
    unreachable = isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError)
    error = DependencyUnavailable if unreachable else InfrastructureError
    return error(DEPENDENCY, f"{description}: {exc}")


@asynccontextmanager
async def redis_errors(description: str) -> AsyncIterator[None]:
    """Convert the redis-py errors raised inside the block (see the module docstring).

    Raises:
        DependencyUnavailable: Redis is unreachable.
        InfrastructureError: Redis refused the command.
    """
    try:
        yield
    except WatchError:
        raise
    except (RedisError, OSError) as exc:
        raise redis_error(exc, description) from exc
