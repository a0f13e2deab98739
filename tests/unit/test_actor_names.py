"""actors/names.py: every actor name is built there, and pool managers are told from members."""

from __future__ import annotations

from actors import names
from agentcluster.config import RuntimeSettings


def test_names_of_pools_members_and_workers() -> None:
    runtime = RuntimeSettings(host_prefix="ac-x")
    assert names.pool(runtime, "tools") == "ac-x-tools"
    assert names.pool(runtime, "browser") == "ac-x-browser"
    assert names.pool_manager("ac-x-tools") == "pool-ac-x-tools"
    assert names.pool_member("ac-x-tools", "0a1b2c", 3) == "pool-ac-x-tools-0a1b2c-3"
    assert names.worker(runtime, "relay") == "ac-x-relay"
    assert names.worker(runtime, "inbound") == "ac-x-inbound"


def test_pool_managers_leave_members_and_other_actors_out() -> None:
    listed = [
        names.pool_manager("ac-x-tools"),
        names.pool_member("ac-x-tools", "0a1b2c", 1),
        names.pool_member("ac-x-tools", "0a1b2c", 12),
        names.pool_manager("ac-x-browser"),
        names.pool_member("ac-x-browser", "ffffff", 2),
        # A pool whose own name ends like a member suffix, with no manager it would belong to.
        names.pool_manager("solo-abcdef-1"),
        "ac-x-0",
        "ac-x-relay",
    ]
    assert names.pool_managers(listed) == {
        "pool-ac-x-browser": "ac-x-browser",
        "pool-ac-x-tools": "ac-x-tools",
        "pool-solo-abcdef-1": "solo-abcdef-1",
    }


def test_pool_members_are_named_under_a_new_incarnation_per_manager_start() -> None:
    first, second = names.pool_members("ac-x-tools"), names.pool_members("ac-x-tools")
    assert first(1).startswith("pool-ac-x-tools-") and first(1).endswith("-1")
    assert first(1) != second(1)
    assert names.pool_managers([names.pool_manager("ac-x-tools"), first(2)]) == {
        "pool-ac-x-tools": "ac-x-tools"
    }


def test_names_of_the_host_set() -> None:
    runtime = RuntimeSettings(host_prefix="ac-x")
    assert names.host(runtime, 0) == "ac-x-0"
    assert names.session_actor(runtime, "s-1") == "ac-x-session-s-1"
    assert names.session_actor(runtime, "s-1").startswith(names.session_actor_prefix(runtime))
    assert names.controller(runtime) == "ac-x-controller"
    assert names.host(runtime, 3).startswith(names.host_set_prefix(runtime))


def test_host_actors_are_the_hosts_and_sessions_own_actors_only() -> None:
    runtime = RuntimeSettings(host_prefix="ac-x")
    listed = [
        names.host(runtime, 0),
        names.controller(runtime),
        names.session_actor(runtime, "s-1"),
        names.worker(runtime, "relay"),
        names.pool(runtime, "tools"),
        names.pool_manager(names.pool(runtime, "tools")),
        "ac-xy-1",
        "other-2",
        names.host(runtime, 12),
    ]
    assert names.host_actors(runtime, listed) == ["ac-x-0", "ac-x-session-s-1", "ac-x-12"]
