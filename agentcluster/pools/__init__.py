"""Pools of members in plain Python: leases with backpressure, sticky keys, health and scaling.

:class:`PoolCore` keeps the books (members, leases, waiters) and reaches its members only through
the :class:`MemberFactory` port, so it runs without Ray. The Ray shell is ``actors/pool.py``: a
pool manager actor around one core, Ray actors as members, Ray metrics as :class:`PoolMetrics`.
"""

from agentcluster.pools._core import (
    Lease,
    LeaseLost,
    MemberFactory,
    MemberIsolation,
    PoolConfig,
    PoolCore,
    PoolExhausted,
    PoolMetrics,
    PoolStats,
    describe_error,
)

__all__ = [
    "Lease",
    "LeaseLost",
    "MemberFactory",
    "MemberIsolation",
    "PoolConfig",
    "PoolCore",
    "PoolExhausted",
    "PoolMetrics",
    "PoolStats",
    "describe_error",
]
