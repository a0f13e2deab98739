"""The gateway's API authorization: policy denials are 403, an engine that cannot decide is 503."""

from __future__ import annotations

import socket

import pytest

from agentcluster.config import load_settings
from agentcluster.errors import DependencyUnavailable
from agentcluster.gateway import Caller, GatewayService
from agentcluster.gateway._problems import ProblemError
from agentcluster.policy import OpaServerPolicy, WasmPolicy


def _service(policy: OpaServerPolicy | WasmPolicy) -> GatewayService:
    settings = load_settings({"policy": {"url": None}})
    # authorize() needs no runtime: it only asks the policy.
    return GatewayService(runtime=None, settings=settings, profiles={}, policy=policy)  # type: ignore[arg-type]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_in_process_policy_allows_tenant_actions_and_denies_per_tenant_data() -> None:
    policy = WasmPolicy(
        {"agentcluster": {"tenants": {"t-deny": {"deny_actions": ["session.cancel"]}}}}
    )
    service = _service(policy)
    caller = Caller(tenant_id="t-ok", key_id="k")
    assert await service.authorize(caller, "session.create", "default") == "t-ok"
    with pytest.raises(ProblemError) as denied:
        await service.authorize(Caller(tenant_id="t-deny", key_id="k"), "session.cancel")
    assert denied.value.status == 403 and "session.cancel" in denied.value.detail
    admin = Caller(tenant_id=None, key_id=None, admin=True)
    assert await service.authorize(admin, "keys.manage") == "(admin)"
    with pytest.raises(ProblemError) as forbidden:  # the admin key has no sessions
        await service.authorize(admin, "session.read")
    assert forbidden.value.status == 403
    policy.close()


async def test_an_unreachable_policy_engine_fails_closed_as_503_naming_it() -> None:
    policy = OpaServerPolicy(f"http://127.0.0.1:{_closed_port()}", timeout_s=1.0)
    service = _service(policy)
    with pytest.raises(DependencyUnavailable) as down:
        await service.authorize(Caller(tenant_id="t1", key_id="k"), "session.read")
    assert down.value.dependency == "policy" and "unreachable" in down.value.message
    # A failed decision is not cached: the next request asks again (and fails again).
    with pytest.raises(DependencyUnavailable):
        await service.authorize(Caller(tenant_id="t1", key_id="k"), "session.read")
    await policy.aclose()
