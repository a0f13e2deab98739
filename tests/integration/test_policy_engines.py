"""Both policy engines on one decision table: the real OPA server (SA01_POLICY_URL) and the
in-process Wasm build must agree with each other and with the expected column. Plus fail-closed.

Network rows are data only: nothing here connects to any address but the OPA server on loopback.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import httpx
import pytest

from agentcluster.policy import (
    NetworkCategory,
    OpaServerPolicy,
    WasmPolicy,
    api_input,
    load_bundle,
    network_input,
)
from tests.conftest import ROOT, service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RUN = uuid.uuid4().hex[:10]
# Test-unique tenants, so concurrent runs against the shared OPA server do not collide.
T = f"ptest-{RUN}-t"  # has a data entry (below)
D = f"ptest-{RUN}-d"  # has none: the committed defaults apply
M = f"ptest-{RUN}-m"  # allowlists one metadata address
B = f"ptest-{RUN}-b"  # has malformed data

TENANTS: dict[str, Any] = {
    T: {
        "agents": ["support", "research"],
        "tools": {"allow": ["*"], "deny": ["mcp.admin.*"]},
        "agent_tools": {
            "support": {
                "allow": ["http_fetch", "browser_*", "mcp.files.*"],
                "deny": ["browser_task"],
            }
        },
        "deny_actions": ["session.delete"],
        "limits": {"python_exec_max_code_bytes": 64, "url_schemes": ["http", "https"]},
        "network": {
            "allow_hosts": ["allowed.test", "*.corp.test"],
            "allow_cidrs": ["127.0.0.1/32", "10.1.0.0/16"],
        },
    },
    M: {"network": {"allow_metadata": ["169.254.169.254"], "allow_cidrs": ["169.254.0.0/16"]}},
    B: {"tools": {"deny": "python_exec"}, "network": {"allow_cidrs": "127.0.0.1/32"}},
}


def tool(tenant: str, agent: str, name: str, **arguments: Any) -> dict[str, Any]:
    return {
        "kind": "tool",
        "tenant": tenant,
        "agent": agent,
        "session": "s-1",
        "tool": name,
        "arguments": arguments,
    }


def net(
    tenant: str,
    host: str,
    ip: str,
    category: NetworkCategory,
    scheme: str = "https",
    port: int = 443,
) -> dict[str, Any]:
    return network_input(
        tenant_id=tenant,
        agent="research",
        scheme=scheme,
        host=host,
        ip=ip,
        port=port,
        category=category,
    )


class Row(NamedTuple):
    name: str
    request: dict[str, Any]
    allowed: bool
    reason_part: str


ROWS = [
    # ---- tools
    Row("defaults allow a tool", tool(D, "a", "python_exec", code="print(1)"), True, "is allowed"),
    Row("default code limit", tool(D, "a", "python_exec", code="x" * 65537), False, "65537 bytes"),
    Row(
        "tenant code limit", tool(T, "research", "python_exec", code="x" * 65), False, "at most 64"
    ),
    Row("utf-8 at the limit", tool(T, "research", "python_exec", code="é" * 32), True, "allowed"),
    Row("utf-8 over it", tool(T, "research", "python_exec", code="é" * 33), False, "is 66 bytes"),
    Row("agent allowlist", tool(T, "support", "python_exec", code="1"), False, "for agent support"),
    Row("agent glob allows", tool(T, "support", "browser_click", index=2), True, "is allowed"),
    Row("agent deny wins", tool(T, "support", "browser_task", task="x"), False, "browser_task)"),
    Row("tenant deny glob", tool(T, "research", "mcp.admin.drop"), False, "(rule mcp.admin.*)"),
    Row("mcp namespace glob", tool(T, "support", "mcp.files.read", path="a"), True, "is allowed"),
    Row("file URL", tool(T, "research", "http_fetch", url="file:///etc/passwd"), False, "URL file"),
    Row("https URL", tool(D, "a", "http_fetch", url="https://example.test/"), True, "is allowed"),
    Row("js URL", tool(D, "a", "browser_navigate", url="javascript:alert(1)"), False, "javascript"),
    Row("agent not in tenant", tool(T, "sales", "browser_state"), False, "not available"),
    Row("no tool name", {"kind": "tool", "tenant": D, "agent": "a"}, False, "has no tool"),
    # ---- network targets (never connected to)
    Row("loopback v4", net(D, "localhost", "127.0.0.1", "loopback"), False, "loopback addresses"),
    Row("loopback v6", net(D, "localhost", "::1", "loopback"), False, "loopback addresses"),
    Row("metadata", net(D, "169.254.169.254", "169.254.169.254", "metadata"), False, "metadata"),
    Row("private 10/8", net(D, "db", "10.0.0.1", "private"), False, "private network"),
    Row("private 192.168", net(D, "router", "192.168.1.1", "private"), False, "private network"),
    Row("public v4", net(D, "example.test", "93.184.216.34", "public"), True, "(public)"),
    Row("public v6", net(D, "v6.test", "2606:2800:220:1::1", "public"), True, "(public)"),
    Row("allowlisted CIDR", net(T, "127.0.0.1", "127.0.0.1", "loopback"), True, "(loopback)"),
    Row("outside the CIDR", net(T, "127.0.0.2", "127.0.0.2", "loopback"), False, "loopback"),
    Row("allowlisted host", net(T, "allowed.test", "::1", "loopback"), True, "(loopback)"),
    Row("host glob", net(T, "wiki.corp.test", "192.168.1.1", "private"), True, "(private)"),
    Row("private CIDR", net(T, "db", "10.1.2.3", "private"), True, "(private)"),
    Row("metadata needs own", net(M, "169.254.169.254", "169.254.169.254", "metadata"), True, ""),
    Row("CIDR is not enough", net(M, "imds", "fd00:ec2::254", "metadata"), False, "allow_metadata"),
    Row("link-local by CIDR", net(M, "ll", "169.254.1.1", "link_local"), True, "(link_local)"),
    Row("link-local default", net(D, "ll", "fe80::1", "link_local"), False, "link-local"),
    Row(
        "metadata by name", net(D, "metadata.google.internal", "93.184.216.34", "public"), False, ""
    ),
    Row("mislabelled", net(D, "x.test", "127.0.0.1", "public"), False, "loopback addresses"),
    Row("v4-mapped", net(D, "x.test", "::ffff:127.0.0.1", "public"), False, "loopback addr"),
    Row("v4-mapped allowlisted", net(T, "x.test", "::ffff:127.0.0.1", "loopback"), True, ""),
    Row("v4-compatible", net(D, "x.test", "::7f00:1", "public"), False, "loopback addr"),
    Row("v4-compatible text", net(D, "x.test", "::127.0.0.1", "public"), False, "loopback addr"),
    Row("v4-translated", net(D, "x.test", "::ffff:0:7f00:1", "public"), False, "loopback addr"),
    Row("NAT64", net(D, "x.test", "64:ff9b::a9fe:a9fe", "public"), False, "cloud metadata"),
    Row("NAT64 local", net(D, "x.test", "64:ff9b:1::a00:1", "public"), False, "private net"),
    Row("NAT64 public", net(D, "x.test", "64:ff9b::808:808", "public"), True, "(public)"),
    Row("6to4", net(D, "x.test", "2002:7f00:1::", "public"), False, "loopback addr"),
    Row("Teredo client", net(D, "x.test", "2001:0:808:808::80ff:fffe", "public"), False, "loopb"),
    Row("Teredo public", net(D, "x.test", "2001:0:808:808::f7f7:f7f7", "public"), True, "public"),
    Row("not in 2000::/3", net(D, "x.test", "5f00::1", "public"), False, "reserved"),
    Row("IPv4 CIDR, v6 form", net(T, "x.test", "::7f00:1", "loopback"), False, "loopback"),
    Row("port 8080 public", net(D, "x.test", "8.8.8.8", "public", port=8080), False, "port 8080"),
    Row("port 80 public", net(D, "x.test", "8.8.8.8", "public", port=80), True, "(public)"),
    Row("allowlisted port", net(T, "127.0.0.1", "127.0.0.1", "loopback", port=8265), True, ""),
    Row("no port", net(D, "x.test", "8.8.8.8", "public", port=0), False, "has no port"),
    Row("not an ip", net(D, "x.test", "not-an-ip", "public"), False, "not an IP address"),
    Row("scheme", net(D, "x.test", "93.184.216.34", "public", "ftp"), False, 'scheme "ftp"'),
    # ---- API actions
    Row("create", api_input(D, "session.create", agent="a"), True, "is allowed"),
    Row("keys without admin", api_input(D, "keys.manage"), False, "needs an admin key"),
    Row("keys as admin", api_input(D, "keys.manage", admin=True), True, "is allowed"),
    Row("denied action", api_input(T, "session.delete"), False, "disabled for tenant"),
    Row("agent allowlist", api_input(T, "session.create", agent="sales"), False, "not available"),
    Row("no agent", api_input(T, "session.read"), True, "is allowed"),
    Row("unknown action", {**api_input(D, "session.read"), "action": "x.y"}, False, "unknown API"),
    # ---- malformed
    Row("unknown kind", {"kind": "shell", "tenant": D}, False, "unknown policy input kind"),
    Row("no kind", {"tenant": D}, False, "has no kind"),
    Row("malformed tool data", tool(B, "a", "python_exec", code="1"), False, "at network.allo"),
    Row("malformed net data", net(B, "h", "127.0.0.1", "loopback"), False, "tools.deny;"),
]


# ---------------------------------------------------------------- the OPA server


def _module_id(path: str) -> str:
    # `opa run ... /abs/policies` names each module by its path without the leading slash.
    return str(ROOT / "policies" / path).lstrip("/")


def _load_checkout_policies(client: httpx.Client) -> None:
    """Make the server run this checkout's Rego, as `opa run --watch` would.

    deps.sh starts OPA once with the files of that moment; a server started before the policy
    changed still runs the old modules (e.g. the placeholder this package replaced).
    """
    on_disk = {
        _module_id(p.relative_to(ROOT / "policies").as_posix()): p.read_text()
        for p in (ROOT / "policies").rglob("*.rego")
    }
    served = {m["id"]: m["raw"] for m in client.get("/v1/policies").json()["result"]}
    prefix = _module_id("")
    for module_id in served.keys() - on_disk.keys():
        if module_id.startswith(prefix):
            client.delete(f"/v1/policies/{module_id}").raise_for_status()
    for module_id, raw in on_disk.items():
        if served.get(module_id) != raw:
            response = client.put(
                f"/v1/policies/{module_id}", content=raw, headers={"Content-Type": "text/plain"}
            )
            assert response.status_code == 200, response.text
    committed = load_bundle().data["agentcluster"]
    if client.get("/v1/data/agentcluster/defaults").json().get("result") != committed["defaults"]:
        client.put("/v1/data/agentcluster/defaults", json=committed["defaults"]).raise_for_status()
    for tenant_id, entry in committed.get("tenants", {}).items():
        client.put(f"/v1/data/agentcluster/tenants/{tenant_id}", json=entry).raise_for_status()


@pytest.fixture(scope="module")
def opa_url() -> Iterator[str]:
    """SA01_POLICY_URL running this checkout's policy, with the test tenants' data for the run."""
    url = service("SA01_POLICY_URL")
    with httpx.Client(base_url=url, timeout=10, trust_env=False) as client:
        _load_checkout_policies(client)
        for tenant_id, entry in TENANTS.items():
            client.put(f"/v1/data/agentcluster/tenants/{tenant_id}", json=entry).raise_for_status()
        try:
            yield url
        finally:
            for tenant_id in TENANTS:
                client.delete(f"/v1/data/agentcluster/tenants/{tenant_id}")


@pytest.fixture(scope="module")
def wasm() -> Iterator[WasmPolicy]:
    engine = WasmPolicy({"agentcluster": {"tenants": TENANTS}})
    yield engine
    engine.close()


# ---------------------------------------------------------------- the table


async def test_both_engines_agree_on_the_decision_table(opa_url: str, wasm: WasmPolicy) -> None:
    assert len(ROWS) >= 30
    opa = OpaServerPolicy(opa_url, timeout_s=5)
    try:
        mismatches = []
        for row in ROWS:
            by_opa = await opa.decide(row.request)
            by_wasm = await wasm.decide(row.request)
            assert (by_opa.engine, by_wasm.engine) == ("opa", "wasm")
            got = (by_opa.allowed, by_opa.reason, by_wasm.allowed, by_wasm.reason)
            if (
                by_opa.allowed != row.allowed
                or by_wasm.allowed != row.allowed
                or by_opa.reason != by_wasm.reason
                or row.reason_part not in by_opa.reason
            ):
                mismatches.append(f"{row.name}: expected {row.allowed} ({row.reason_part}), {got}")
        assert not mismatches, "\n".join(mismatches)
    finally:
        await opa.aclose()


async def test_decision_latency_of_both_engines(opa_url: str, wasm: WasmPolicy) -> None:
    """Prints p50/p90 per decision (run with -s); a report, not an assertion on time."""
    opa = OpaServerPolicy(opa_url, timeout_s=5)
    try:
        await opa.decide(ROWS[0].request)  # open the keep-alive connection
        for name, engine in (("opa", opa), ("wasm", wasm)):
            samples = []
            for _ in range(5):
                for row in ROWS:
                    started = time.perf_counter()
                    decision = await engine.decide(row.request)
                    samples.append(time.perf_counter() - started)
                    assert decision.allowed == row.allowed
            cuts = statistics.quantiles(samples, n=10)
            print(
                f"\npolicy decision latency {name}: p50 {statistics.median(samples) * 1e3:.3f} ms, "
                f"p90 {cuts[8] * 1e3:.3f} ms over {len(samples)} decisions"
            )
    finally:
        await opa.aclose()


async def test_tool_port_through_the_server(opa_url: str) -> None:
    from agentcluster.tools import ToolInvocation

    opa = OpaServerPolicy(opa_url)
    try:
        invocation = ToolInvocation(
            tenant_id=T,
            session_id="s",
            turn_id="t",
            agent="support",
            tool_call_id="c",
            tool="python_exec",
            arguments={"code": "1"},
        )
        decision = await opa.decide_tool(invocation)
        assert not decision.allowed
        assert decision.reason == f"tool python_exec is not allowed for agent support in tenant {T}"
        action = await opa.decide_action(T, "session.delete")
        assert action.reason == f"action session.delete is disabled for tenant {T}"
    finally:
        await opa.aclose()


# ---------------------------------------------------------------- fail closed


def _closed_port() -> int:
    """A loopback port with no listener (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_server_denies() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    opa = OpaServerPolicy(url, timeout_s=2)
    try:
        decision = await opa.decide(ROWS[0].request)
    finally:
        await opa.aclose()
    assert not decision.allowed
    assert decision.reason == f"policy engine (OPA at {url}) unreachable: ConnectError"
    assert decision.engine == "opa"


async def test_silent_server_times_out_and_denies() -> None:
    # A listening socket that never answers: the connection is accepted by the kernel, the
    # request is written, no response ever comes.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        opa = OpaServerPolicy(url, timeout_s=0.3)
        try:
            decision = await opa.decide(ROWS[0].request)
        finally:
            await opa.aclose()
    assert not decision.allowed
    assert (
        decision.reason == f"policy engine (OPA at {url}) did not answer within 0.3 s (ReadTimeout)"
    )


async def test_wrong_path_on_a_real_server_denies(opa_url: str) -> None:
    # The real server, asked under a prefix it does not serve, answers 404.
    opa = OpaServerPolicy(f"{opa_url}/not-opa", timeout_s=5)
    try:
        decision = await opa.decide(ROWS[0].request)
    finally:
        await opa.aclose()
    assert not decision.allowed
    assert decision.reason.startswith(f"policy engine (OPA at {opa_url}/not-opa) answered HTTP 404")


async def _serve_by_path(answers: dict[str, bytes]) -> tuple[asyncio.Server, str, list[str]]:
    """A keep-alive HTTP server answering each path with its JSON body (404 otherwise)."""
    seen: list[str] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            lines = head.decode().split("\r\n")
            path = lines[0].split(" ")[1]
            length = next(
                (
                    int(line.split(":")[1])
                    for line in lines
                    if line.lower().startswith("content-length")
                ),
                0,
            )
            await reader.readexactly(length)
            seen.append(path)
            body = answers.get(path)
            status = b"200 OK" if body is not None else b"404 Not Found"
            body = body if body is not None else b"{}"
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", seen


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"<html>proxy error</html>", "answered with a body that is not JSON"),
        (b"{}", "returned no decision (is the agentcluster.authz policy loaded?)"),
        (b'{"result": {"allowed": "true"}}', "returned a malformed decision"),
        (b'{"result": true}', "returned a malformed decision: True"),
    ],
)
async def test_malformed_answers_deny(body: bytes, problem: str) -> None:
    server, url, _seen = await _serve_by_path({"/v1/data/agentcluster/authz/decision": body})
    opa = OpaServerPolicy(url, timeout_s=5)
    try:
        decision = await opa.decide(ROWS[0].request)
    finally:
        await opa.aclose()
        server.close()
        await server.wait_closed()
    assert not decision.allowed
    assert decision.reason.startswith(f"policy engine (OPA at {url}) {problem}")


# ---------------------------------------------------------------- a step's calls in one request


async def test_a_batch_gets_each_requests_own_decision_in_one_request(
    opa_url: str, wasm: WasmPolicy
) -> None:
    opa = OpaServerPolicy(opa_url, timeout_s=5)
    try:
        requests = [row.request for row in ROWS]
        alone = [(d.allowed, d.reason, d.ask) for d in [await opa.decide(r) for r in requests]]
        for engine in (opa, wasm):
            batch = await engine.decide_many(requests)
            assert [(d.allowed, d.reason, d.ask) for d in batch] == alone, engine.engine
    finally:
        await opa.aclose()
    assert [allowed for allowed, _reason, _ask in alone] == [row.allowed for row in ROWS]


async def test_a_batch_the_server_cannot_answer_denies_every_request() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    opa = OpaServerPolicy(url, timeout_s=2)
    try:
        decisions = await opa.decide_many([ROWS[0].request, ROWS[1].request])
    finally:
        await opa.aclose()
    assert [d.reason for d in decisions] == [
        f"policy engine (OPA at {url}) unreachable: ConnectError"
    ] * 2
    assert not any(d.allowed for d in decisions)


@pytest.mark.parametrize(
    ("batch_body", "expected"),
    [
        # A policy without `decisions` (an older bundle on the server): asked one at a time.
        (b"{}", ["allowed by the single rule"] * 2),
        # One decision for two calls: neither runs.
        (
            b'{"result": [{"allowed": true, "reason": "ok"}]}',
            ["answered 1 decision(s) for a batch of 2"] * 2,
        ),
        (b'{"result": "yes"}', ["answered 0 decision(s) for a batch of 2"] * 2),
        (
            b'{"result": [{"allowed": true, "reason": "ok"}, {"allowed": "yes"}]}',
            ["ok", "returned a malformed decision"],
        ),
    ],
)
async def test_a_batch_answer_is_checked_call_by_call(
    batch_body: bytes, expected: list[str]
) -> None:
    single = b'{"result": {"allowed": true, "reason": "allowed by the single rule"}}'
    server, url, seen = await _serve_by_path(
        {
            "/v1/data/agentcluster/authz/decisions": batch_body,
            "/v1/data/agentcluster/authz/decision": single,
        }
    )
    opa = OpaServerPolicy(url, timeout_s=5)
    try:
        decisions = await opa.decide_many([ROWS[0].request, ROWS[1].request])
    finally:
        await opa.aclose()
        server.close()
        await server.wait_closed()
    assert len(decisions) == 2
    for decision, part in zip(decisions, expected, strict=True):
        assert part in decision.reason
        assert decision.allowed is (part in {"ok", "allowed by the single rule"})
    assert seen[0] == "/v1/data/agentcluster/authz/decisions"
    assert len(seen) == (3 if batch_body == b"{}" else 1)
