"""The names of the cluster's Ray actors, in one place (all in ``SA01_RUNTIME_NAMESPACE``).

==========================  ====================================================================
actor                       name
==========================  ====================================================================
pool manager                ``pool-<pool>`` (:func:`pool_manager`)
pool member                 ``pool-<pool>-<incarnation>-<n>`` (:func:`pool_member`): beside its
                            manager, ``<incarnation>`` six hex digits new with each manager start
tool pool / browser pool    ``<host_prefix>-tools`` / ``<host_prefix>-browser`` (pool names)
detached workers            ``<host_prefix>-relay``, ``<host_prefix>-inbound`` (:func:`worker`)
session hosts               ``<host_prefix>-<n>`` (:func:`host`: placed hosts, then standbys)
session's own actor         ``<host_prefix>-session-<id>`` (:func:`session_actor`, isolation mode)
host controller             ``<host_prefix>-controller`` (:func:`controller`)
==========================  ====================================================================

Whoever needs to tell actors apart by name (the console's cluster view lists the pool managers,
the session router its host set's actors) asks :func:`pool_managers` or :func:`host_actors` here
instead of parsing names itself.
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
    "controller",
    "host",
    "host_actors",
    "host_set_prefix",
    "pool",
    "pool_manager",
    "pool_managers",
    "pool_member",
    "pool_members",
    "session_actor",
    "session_actor_prefix",
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


def host_set_prefix(runtime: RuntimeSettings) -> str:
    """What every actor name of the host set starts with (hosts, sessions' own actors, the
    controller), and so every session owner id of it (``<host name>~<incarnation>``)."""
    return f"{runtime.host_prefix}-"


def host(runtime: RuntimeSettings, index: int) -> str:
    """The actor name of session host ``index`` (placed hosts first, standbys after them)."""
    return f"{host_set_prefix(runtime)}{index}"


def session_actor_prefix(runtime: RuntimeSettings) -> str:
    """What the names of sessions' own actors (isolation mode) start with."""
    return f"{host_set_prefix(runtime)}session-"


def session_actor(runtime: RuntimeSettings, session_id: str) -> str:
    """The actor name of a session's own host (isolation mode: one actor per session)."""
    return f"{session_actor_prefix(runtime)}{session_id}"


def controller(runtime: RuntimeSettings) -> str:
    """The actor name of the host set's controller."""
    return f"{host_set_prefix(runtime)}controller"


def host_actors(runtime: RuntimeSettings, actor_names: Iterable[str]) -> list[str]:
    """The session hosts and sessions' own actors among ``actor_names`` (one namespace's named
    actors), in their order: not the controller, the workers or the pools."""
    prefix, sessions = host_set_prefix(runtime), session_actor_prefix(runtime)
    return [
        name
        for name in actor_names
        if name.startswith(prefix) and (name[len(prefix) :].isdigit() or name.startswith(sessions))
    ]


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
