"""The names of the cluster's Ray actors, in one place (all in ``SA01_RUNTIME_NAMESPACE``).

==========================  ====================================================================
actor                       name
==========================  ====================================================================
pool manager                ``pool-<pool>`` (:func:`pool_manager`)
pool member                 ``pool-<pool>-<incarnation>-<n>`` (:func:`pool_member`): beside its
                            manager, ``<incarnation>`` six hex digits new with each manager start
tool pool / browser pool    ``<host_prefix>-tools`` / ``<host_prefix>-browser`` (pool names)
detached workers            ``<host_prefix>-relay``, ``<host_prefix>-inbound`` (:func:`worker`)
session hosts               ``<host_prefix>-<n>``, ``<host_prefix>-session-<id>``,
                            ``<host_prefix>-controller`` (built in ``actors/session.py``)
==========================  ====================================================================

Whoever needs to tell actors apart by name (the console's cluster view lists the pool managers)
asks :func:`pool_managers` here instead of parsing names itself.
"""

from __future__ import annotations

import functools
import string
import uuid
from collections.abc import Callable, Iterable
from typing import Literal

from agentcluster.config import RuntimeSettings

__all__ = [
    "INCARNATION_DIGITS",
    "PoolKind",
    "WorkerRole",
    "pool",
    "pool_manager",
    "pool_managers",
    "pool_member",
    "pool_members",
    "worker",
]

PoolKind = Literal["tools", "browser"]
WorkerRole = Literal["relay", "inbound"]

INCARNATION_DIGITS = 6
"""Hex digits of a pool manager's incarnation in its members' names."""

_MANAGER_PREFIX = "pool-"
_HEX = frozenset(string.hexdigits.lower())


def pool(runtime: RuntimeSettings, kind: PoolKind) -> str:
    """The name of the cluster's ``kind`` pool (its manager is :func:`pool_manager` of it)."""
    return f"{runtime.host_prefix}-{kind}"


def pool_manager(pool_name: str) -> str:
    """The actor name of a pool's manager."""
    return f"{_MANAGER_PREFIX}{pool_name}"


def pool_member(pool_name: str, incarnation: str, number: int) -> str:
    """The actor name of member ``number`` started by incarnation ``incarnation`` of a pool's
    manager."""
    return f"{pool_manager(pool_name)}-{incarnation}-{number}"


def pool_members(pool_name: str) -> Callable[[int], str]:
    """The member names of one start of a pool's manager (``number`` -> :func:`pool_member`),
    under an incarnation new with each call: a restarted manager never reuses a name."""
    incarnation = uuid.uuid4().hex[:INCARNATION_DIGITS]
    return functools.partial(pool_member, pool_name, incarnation)


def worker(runtime: RuntimeSettings, role: WorkerRole) -> str:
    """The actor name of the cluster's detached ``role`` worker (the outbox relay, the Kafka
    inbound consumer)."""
    return f"{runtime.host_prefix}-{role}"


def pool_managers(actor_names: Iterable[str]) -> dict[str, str]:
    """The pool managers among ``actor_names`` (one namespace's named actors): actor name ->
    pool name. Members are left out: a name that is a listed manager's name plus a member
    suffix is a member, even when the pool's own name could end that way."""
    names = set(actor_names)
    return {
        name: name[len(_MANAGER_PREFIX) :]
        for name in sorted(names)
        if name.startswith(_MANAGER_PREFIX) and not _is_member(name, names)
    }


def _is_member(name: str, names: set[str]) -> bool:
    stem, _, suffix = name.rpartition("-")
    manager, _, incarnation = stem.rpartition("-")
    return (
        suffix.isdigit()
        and len(incarnation) == INCARNATION_DIGITS
        and set(incarnation) <= _HEX
        and manager in names
    )
