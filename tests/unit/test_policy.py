"""The policy package without services: the packaged Wasm build, inputs, the in-process engine.

The decision table against the real OPA server is in tests/integration/test_policy_engines.py.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from opapywasm import OpaWasmPolicy

from agentcluster.config import load_settings
from agentcluster.errors import ConfigError
from agentcluster.policy import (
    OpaServerPolicy,
    WasmBundle,
    WasmPolicy,
    build_policy_engine,
    classify_address,
    decision_from_result,
    load_bundle,
    merge_data,
)
from agentcluster.policy._bundle import (
    BUNDLE_DIR,
    DATA_FILE,
    MANIFEST_FILE,
    WASM_FILE,
    policy_sources,
    sources_digest,
)
from agentcluster.tools import ToolInvocation

pytestmark = pytest.mark.timeout(60)

POLICIES = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture(scope="module")
def wasm() -> Iterator[WasmPolicy]:
    """The packaged engine with one extra tenant (compiling the Wasm takes ~0.5 s: share it)."""
    engine = WasmPolicy(
        {
            "agentcluster": {
                "tenants": {
                    "unit-t1": {
                        "agents": ["support"],
                        "network": {"allow_cidrs": ["127.0.0.1/32"], "allow_hosts": []},
                    }
                }
            }
        }
    )
    yield engine
    engine.close()


def _invocation(tool: str, arguments: dict[str, object], tenant: str = "unit-t0") -> ToolInvocation:
    return ToolInvocation(
        tenant_id=tenant,
        session_id="s1",
        turn_id="t1",
        agent="support",
        tool_call_id="c1",
        tool=tool,
        arguments=arguments,
    )


# ---------------------------------------------------------------- the packaged build


def test_packaged_wasm_is_built_from_the_current_policies() -> None:
    manifest = json.loads((BUNDLE_DIR / MANIFEST_FILE).read_text())
    current = policy_sources(POLICIES)
    changed = sorted(
        path
        for path in current.keys() | manifest["sources"].keys()
        if current.get(path) != manifest["sources"].get(path)
    )
    assert not changed, (
        f"agentcluster/policy/{WASM_FILE} is stale: {', '.join(changed)} changed since it was "
        "built; run `make policy-wasm` and commit agentcluster/policy/authz.*"
    )
    assert manifest["sources_sha256"] == sources_digest(current)


def test_packaged_wasm_needs_no_host_builtins() -> None:
    # opa-py-wasm implements only a few builtins on the host (sprintf, json/yaml helpers), and not
    # like OPA does; the policy must stick to what OPA compiles into the Wasm itself.
    policy = OpaWasmPolicy.from_wasm_bytes(load_bundle().wasm)
    try:
        assert policy.builtins == {}
        assert set(policy.entrypoints) == {
            "agentcluster/authz/decision",
            "agentcluster/authz/decisions",
        }
    finally:
        policy.close()


def test_sources_are_rego_and_data_without_tests() -> None:
    sources = policy_sources(POLICIES)
    assert "authz.rego" in sources
    assert "data.json" in sources
    assert not [path for path in sources if path.endswith("_test.rego")]
    assert "README.md" not in sources


def test_load_bundle_checks_the_manifest(tmp_path: Path) -> None:
    bundle = load_bundle()
    assert bundle.manifest["entrypoint"] == "agentcluster/authz/decision"
    assert "defaults" in bundle.data["agentcluster"]
    for name in (WASM_FILE, DATA_FILE, MANIFEST_FILE):
        shutil.copy(BUNDLE_DIR / name, tmp_path / name)
    (tmp_path / DATA_FILE).write_text('{"agentcluster": {}}\n')
    with pytest.raises(ConfigError, match=r"authz\.data\.json has sha256 .*make policy-wasm"):
        load_bundle(tmp_path)
    (tmp_path / WASM_FILE).unlink()
    with pytest.raises(ConfigError, match=r"cannot read .*authz\.wasm"):
        load_bundle(tmp_path)


# ---------------------------------------------------------------- inputs and results


@pytest.mark.parametrize(
    ("ip", "category"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("10.0.0.1", "private"),
        ("192.168.1.1", "private"),
        ("172.31.255.1", "private"),
        ("100.64.0.1", "private"),
        ("fc00::1", "private"),
        ("169.254.1.1", "link_local"),
        ("fe80::1", "link_local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("192.0.2.1", "reserved"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("2001:db8::1", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("93.184.216.34", "public"),
        ("2606:2800:220:1:248:1893:25c8:1946", "public"),
    ],
)
def test_classify_address(ip: str, category: str) -> None:
    assert classify_address(ip) == category


def test_classify_address_rejects_names() -> None:
    with pytest.raises(ValueError):
        classify_address("localhost")


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        (None, "returned no decision (is the agentcluster.authz policy loaded?)"),
        ({"allowed": "yes", "reason": "x"}, "returned a malformed decision: {'allowed': 'yes'"),
        ({"allowed": True}, "returned a malformed decision: {'allowed': True}"),
        ([True], "returned a malformed decision: [True]"),
    ],
)
def test_malformed_results_deny(result: object, problem: str) -> None:
    decision = decision_from_result(result, engine="opa", source="OPA at http://x")
    assert not decision.allowed
    assert decision.reason.startswith(f"policy engine (OPA at http://x) {problem}")
    assert decision.engine == "opa"


def test_well_formed_result_passes_through() -> None:
    decision = decision_from_result({"allowed": True, "reason": "ok"}, engine="wasm", source="w")
    assert (decision.allowed, decision.reason, decision.engine) == (True, "ok", "wasm")


def test_merge_data_merges_objects_and_replaces_the_rest() -> None:
    base = {"a": {"b": [1], "c": {"d": 1}}, "e": 1}
    merged = merge_data(base, {"a": {"b": [2], "c": {"f": 2}}, "g": 3})
    assert merged == {"a": {"b": [2], "c": {"d": 1, "f": 2}}, "e": 1, "g": 3}
    assert base == {"a": {"b": [1], "c": {"d": 1}}, "e": 1}


# ---------------------------------------------------------------- the in-process engine


async def test_wasm_decides_tool_calls(wasm: WasmPolicy) -> None:
    allowed = await wasm.decide_tool(_invocation("http_fetch", {"url": "https://x.test/"}))
    assert allowed.allowed
    assert allowed.reason == "tool http_fetch is allowed for agent support in tenant unit-t0"
    assert allowed.engine == "wasm"
    denied = await wasm.decide_tool(_invocation("http_fetch", {"url": "file:///etc/passwd"}))
    assert not denied.allowed
    assert denied.reason.startswith("http_fetch URL file:///etc/passwd is not allowed")


async def test_wasm_decides_network_targets_with_override_data(wasm: WasmPolicy) -> None:
    loopback = {"agent": "support", "scheme": "http", "host": "127.0.0.1", "port": 8080}
    default = await wasm.decide_network(
        tenant_id="unit-t0", ip="127.0.0.1", category="loopback", **loopback
    )
    assert not default.allowed
    assert "loopback addresses are not allowed for tenant unit-t0" in default.reason
    listed = await wasm.decide_network(
        tenant_id="unit-t1", ip="127.0.0.1", category="loopback", **loopback
    )
    assert listed.allowed, listed.reason


_CATEGORY_TEXT = {
    "loopback": "loopback addresses",
    "private": "private network addresses",
    "link_local": "link-local addresses",
    "metadata": "cloud metadata endpoints",
    "reserved": "reserved addresses",
    "multicast": "multicast addresses",
    "unspecified": "unspecified addresses",
}

# Addresses in many notations, the IPv6 forms that carry an IPv4 address among them.
_ADDRESSES = [
    "127.0.0.1",
    "0.1.2.3",
    "100.100.100.200",
    "192.0.0.9",
    "8.8.8.8",
    "::",
    "::1",
    "::2",
    "::127.0.0.1",
    "::7f00:1",
    "0:0:0:0:0:0:7f00:1",
    "::a9fe:a9fe",
    "::808:808",
    "::ffff:127.0.0.1",
    "::FFFF:7F00:1",
    "0:0:0:0:0:ffff:a00:1",
    "::ffff:0:7f00:1",
    "64:ff9b::7f00:1",
    "64:ff9b::127.0.0.1",
    "64:ff9b::808:808",
    "64:ff9b:1::a9fe:a9fe",
    "64:ff9b:1:abcd::c0a8:101",
    "64:ff9b:1::808:808",
    "2002:7f00:1::",
    "2002:a9fe:a9fe:1:2:3:4:5",
    "2002:808:808::",
    "2001:0:808:808::80ff:fffe",
    "2001:0:7f00:1::f7f7:f7f7",
    "2001:0:808:808::f5ff:fefe",
    "2001:0:808:808::f7f7:f7f7",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "2001:db8::1",
    "2001:10::1",
    "3fff::1",
    "5f00::1",
    "::1:0:0:1",
    "fec0::1",
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",
    "FD00:EC2:0:0:0:0:0:254",
    "ff02::1",
    "2606:4700::1111",
]


@pytest.mark.parametrize("ip", _ADDRESSES)
async def test_the_rego_policy_classifies_addresses_as_the_guard_does(
    wasm: WasmPolicy, ip: str
) -> None:
    # Labelled "public", so the policy's own classification of the address decides.
    decision = await wasm.decide_network(
        tenant_id="unit-t0",
        agent="support",
        scheme="http",
        host="x.test",
        ip=ip,
        port=80,
        category="public",
    )
    category = classify_address(ip)
    if category == "public":
        assert decision.allowed, decision.reason
        assert decision.reason.endswith("(public)")
    else:
        assert not decision.allowed
        assert f"is blocked: {_CATEGORY_TEXT[category]} are not allowed" in decision.reason


async def test_wasm_decides_ports(wasm: WasmPolicy) -> None:
    target = {"tenant_id": "unit-t1", "agent": "support", "scheme": "http", "category": "public"}
    public = await wasm.decide_network(host="x.test", ip="8.8.8.8", port=8080, **target)
    assert not public.allowed
    assert "port 8080 of public addresses is not allowed" in public.reason
    assert (await wasm.decide_network(host="x.test", ip="8.8.8.8", port=443, **target)).allowed
    listed = await wasm.decide_network(
        host="127.0.0.1", ip="127.0.0.1", port=8265, **{**target, "category": "loopback"}
    )
    assert listed.allowed, listed.reason


async def test_wasm_decides_api_actions(wasm: WasmPolicy) -> None:
    assert not (await wasm.decide_action("unit-t0", "keys.manage")).allowed
    assert (await wasm.decide_action("unit-t0", "keys.manage", admin=True)).allowed
    assert (await wasm.decide_action("unit-t1", "session.create", agent="support")).allowed
    other = await wasm.decide_action("unit-t1", "session.create", agent="sales")
    assert other.reason == "agent sales is not available to tenant unit-t1"


async def test_wasm_denies_inputs_it_cannot_evaluate(wasm: WasmPolicy) -> None:
    not_json = await wasm.decide({"kind": "tool", "arguments": {"x": object()}})
    assert not not_json.allowed
    assert not_json.reason.startswith("policy engine (in-process Wasm) failed: ")
    huge = await wasm.decide_tool(_invocation("python_exec", {"code": "x" * 5_000_000}))
    assert not huge.allowed
    assert "policy engine (in-process Wasm) failed" in huge.reason
    assert "exceeding the 4000000-byte limit" in huge.reason


async def test_wasm_denies_unknown_kinds(wasm: WasmPolicy) -> None:
    decision = await wasm.decide({"kind": "shell", "tenant": "unit-t0"})
    assert not decision.allowed
    assert (
        decision.reason == 'unknown policy input kind "shell"; expected one of api, network, tool'
    )


def test_wasm_rejects_a_broken_bundle() -> None:
    bundle = load_bundle()
    broken = WasmBundle(wasm=b"\0asm-not-really", data=bundle.data, manifest=bundle.manifest)
    with pytest.raises(ConfigError, match="cannot load the Wasm policy"):
        WasmPolicy(bundle=broken)


# ---------------------------------------------------------------- choosing the engine


async def test_build_policy_engine_follows_the_settings() -> None:
    # Constructing the OPA engine opens no connection; no request is sent here.
    remote = build_policy_engine(
        load_settings({"policy": {"url": "http://127.0.0.1:9/", "timeout_s": 1.5}})
    )
    assert isinstance(remote, OpaServerPolicy)
    assert (remote.url, remote.timeout_s) == ("http://127.0.0.1:9", 1.5)
    await remote.aclose()
    local = build_policy_engine(
        load_settings({"policy": {"url": None}}),
        {"agentcluster": {"tenants": {"u": {"deny_actions": ["session.read"]}}}},
    )
    assert isinstance(local, WasmPolicy)
    assert not (await local.decide_action("u", "session.read")).allowed
    await local.aclose()


async def test_opa_engine_denies_input_that_is_not_json() -> None:
    # Encoding fails before any connection is opened: nothing is sent anywhere.
    opa = OpaServerPolicy("http://127.0.0.1:9", timeout_s=1)
    try:
        decision = await opa.decide({"kind": "tool", "arguments": {"x": object()}})
    finally:
        await opa.aclose()
    assert not decision.allowed
    assert decision.reason.startswith(
        "policy engine (OPA at http://127.0.0.1:9) was not asked: the input is not JSON"
    )
