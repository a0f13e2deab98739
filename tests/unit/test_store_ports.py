"""The state store's role ports against their SQLAlchemy adapter.

mypy proves SqlStateStore satisfies every role (agentcluster/store/_sql.py); these tests keep the
roles honest at run time too: each role's methods exist on the adapter with the same parameters,
and every public method of the adapter belongs to some role.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from agentcluster.eventlog import OutboxSource as RelayOutboxSource
from agentcluster.store import (
    ActivationStore,
    ApprovalStore,
    AttachmentStore,
    HistoryReader,
    JournalWriter,
    OutboxBacklog,
    OutboxSource,
    ScheduleStore,
    SessionStore,
    SessionWriter,
    SharedDatabase,
    SqlStateStore,
    StateStore,
    StoreHealth,
    TenantStore,
    WebhookStore,
)

ROLES = [
    TenantStore,
    SessionStore,
    HistoryReader,
    AttachmentStore,
    ActivationStore,
    ApprovalStore,
    OutboxSource,
    OutboxBacklog,
    StoreHealth,
    SharedDatabase,
    ScheduleStore,
    WebhookStore,
]
ADAPTER_ONLY = {"engine"}
"""Public members no role has: the SQLAlchemy engine, for the migration helpers the CLI runs."""


def _members(role: type) -> set[str]:
    """The public names a protocol and the protocols it extends declare."""
    names: set[str] = set()
    for cls in role.__mro__:
        if getattr(cls, "_is_protocol", False) and cls.__module__ != "typing":
            names |= {name for name in vars(cls) if not name.startswith("_")}
            names |= {name for name in getattr(cls, "__annotations__", {})}
    return names


def _parameters(function: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


IMPLEMENTATIONS = [(role, SqlStateStore) for role in ROLES] + [(JournalWriter, SessionWriter)]


@pytest.mark.parametrize(("role", "adapter"), IMPLEMENTATIONS, ids=lambda cls: cls.__name__)
def test_the_adapter_has_each_method_of_the_role_with_its_parameters(
    role: type, adapter: type
) -> None:
    for name in sorted(_members(role)):
        declared = inspect.getattr_static(role, name, None)
        implemented = inspect.getattr_static(adapter, name, None)
        if callable(declared):
            assert callable(implemented), f"{role.__name__}.{name} is not a method of {adapter}"
            assert _parameters(implemented) == _parameters(declared), f"{role.__name__}.{name}"
        elif isinstance(declared, property) and implemented is not None:
            assert isinstance(implemented, property), f"{role.__name__}.{name}"
        # else: an attribute the adapter sets in __init__ (mypy checks those)


def test_every_public_method_of_the_adapter_belongs_to_a_role() -> None:
    public = {name for name in dir(SqlStateStore) if not name.startswith("_")}
    assert public - ADAPTER_ONLY == _members(StateStore) - {"description", "dependency"}


def test_the_union_is_every_role() -> None:
    assert set().union(*(_members(role) for role in ROLES)) == _members(StateStore)


def test_the_relay_reads_the_stores_outbox_role() -> None:
    assert RelayOutboxSource is OutboxSource
