"""The SSRF guard and http_fetch.

Only loopback is ever connected to: names "resolve" through a fixed table (no DNS), and the
recording transport refuses anything but loopback, so denied targets are checked by asserting
that no request was even attempted. Allowed fetches hit a server this test runs on 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from agentcluster.errors import ConfigError, ToolError
from agentcluster.tools import ToolInvocation
from agentcluster.tools._http import HttpFetchTool
from agentcluster.tools._ssrf import (
    DefaultNetworkPolicy,
    NetworkPolicy,
    SsrfGuard,
    classify_address,
    classify_target,
    embedded_ipv4,
)
from tests.support.http_server import http_server
from tests.support.network import Recorder, StaticResolver

pytestmark = pytest.mark.timeout(60)

LOOPBACK_ONLY = DefaultNetworkPolicy(allow_cidrs=["127.0.0.0/8"])


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with http_server() as port:
        yield port


@pytest.mark.parametrize(
    ("address", "category"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("64:ff9b::7f00:1", "loopback"),
        ("2002:7f00:1::1", "loopback"),
        ("169.254.169.254", "metadata"),
        ("::ffff:169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("169.254.10.1", "link_local"),
        ("fe80::1", "link_local"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("192.0.2.1", "reserved"),
        ("240.0.0.1", "reserved"),
        ("8.8.8.8", "public"),
        ("2001:4860:4860::8888", "public"),
    ],
)
def test_classify_address(address: str, category: str) -> None:
    assert classify_address(address) == category


def test_a_metadata_name_is_metadata_whatever_it_resolves_to() -> None:
    assert (
        classify_target("Metadata.Google.Internal.", ipaddress.ip_address("8.8.8.8")) == "metadata"
    )
    assert classify_target("example.test", ipaddress.ip_address("8.8.8.8")) == "public"


async def _decide(policy: NetworkPolicy, host: str, ip: str) -> bool:
    decision = await policy.decide_network(
        tenant_id="t1",
        agent="a",
        tool="http_fetch",
        scheme="http",
        host=host,
        ip=ip,
        port=80,
        category=classify_target(host, ipaddress.ip_address(ip)),
    )
    return decision.allowed


async def test_default_policy_allows_public_and_denies_the_rest() -> None:
    policy = DefaultNetworkPolicy()
    assert await _decide(policy, "example.test", "8.8.8.8")
    for ip in ("127.0.0.1", "::1", "169.254.169.254", "10.0.0.1", "192.168.1.1", "fe80::1"):
        assert not await _decide(policy, "example.test", ip), ip


async def test_metadata_needs_its_own_allowlist_entry() -> None:
    link_local = DefaultNetworkPolicy(allow_cidrs=["169.254.0.0/16"])
    assert await _decide(link_local, "h.test", "169.254.10.1")
    assert not await _decide(link_local, "h.test", "169.254.169.254")
    exact = DefaultNetworkPolicy(allow_cidrs=["169.254.169.254/32"])
    assert await _decide(exact, "h.test", "169.254.169.254")
    by_name = DefaultNetworkPolicy(allow_hosts=["metadata.google.internal"])
    assert await _decide(by_name, "metadata.google.internal", "169.254.169.254")


def test_a_bad_cidr_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="allow_cidrs: 'ten' is not a network"):
        DefaultNetworkPolicy(allow_cidrs=["ten"])


def _invocation(arguments: Mapping[str, Any]) -> ToolInvocation:
    return ToolInvocation(
        tenant_id="t1",
        session_id="s1",
        turn_id="turn-1",
        agent="tester",
        tool_call_id=uuid.uuid4().hex,
        tool="http_fetch",
        arguments=dict(arguments),
    )


def _tool(
    policy: NetworkPolicy,
    recorder: Recorder,
    names: Mapping[str, Sequence[str]] | None = None,
    max_redirects: int = 5,
) -> tuple[HttpFetchTool, StaticResolver]:
    resolver = StaticResolver(names or {})
    tool = HttpFetchTool(
        SsrfGuard(policy, resolver),
        max_bytes=50_000,
        timeout_s=10,
        max_redirects=max_redirects,
        transport_factory=recorder.factory,
    )
    return tool, resolver


async def _fetch(tool: HttpFetchTool, **arguments: Any) -> dict[str, Any]:
    return await tool.run(arguments, _invocation(arguments))


@pytest.mark.parametrize(
    ("url", "names", "denied"),
    [
        ("http://127.0.0.1:{port}/hello", {}, "127.0.0.1 (loopback)"),
        ("http://[::1]:{port}/hello", {}, "::1 (loopback)"),
        ("http://169.254.169.254/latest/meta-data/", {}, "169.254.169.254 (metadata)"),
        ("http://10.0.0.1/", {}, "10.0.0.1 (private)"),
        ("http://192.168.1.1/admin", {}, "192.168.1.1 (private)"),
        ("http://sneaky.test:{port}/hello", {"sneaky.test": ["127.0.0.1"]}, "127.0.0.1 (loopback)"),
        ("http://metadata.google.internal/", {"metadata.google.internal": ["8.8.8.8"]}, "metadata"),
        ("http://mixed.test/", {"mixed.test": ["8.8.8.8", "10.0.0.7"]}, "10.0.0.7 (private)"),
    ],
)
async def test_internal_targets_are_denied_without_connecting(
    port: int, url: str, names: dict[str, list[str]], denied: str
) -> None:
    recorder = Recorder()
    tool, _ = _tool(DefaultNetworkPolicy(), recorder, names)
    with pytest.raises(ToolError) as raised:
        await _fetch(tool, url=url.format(port=port))
    assert denied in raised.value.message
    assert "denied" in raised.value.message and "not allowlisted" in raised.value.message
    assert recorder.requests == []


async def test_allowlisted_loopback_is_fetched(port: int) -> None:
    recorder = Recorder()
    tool, _ = _tool(LOOPBACK_ONLY, recorder)
    result = await _fetch(tool, url=f"http://127.0.0.1:{port}/hello")
    assert (result["status"], result["text"], result["truncated"]) == (200, "hello", False)
    assert result["headers"]["content-type"] == "text/plain; charset=utf-8"
    assert recorder.requests == [(f"http://127.0.0.1:{port}/hello", f"127.0.0.1:{port}")]


async def test_a_name_is_resolved_once_and_the_checked_address_is_used(port: int) -> None:
    recorder = Recorder()
    tool, resolver = _tool(
        DefaultNetworkPolicy(allow_hosts=["service.test"]),
        recorder,
        {"service.test": ["127.0.0.1"]},
    )
    result = await _fetch(tool, url=f"http://service.test:{port}/echo")
    # Connected to the checked IP, with the name kept in the Host header for the server.
    assert recorder.requests == [(f"http://127.0.0.1:{port}/echo", f"service.test:{port}")]
    assert json.loads(result["text"])["headers"]["host"] == f"service.test:{port}"
    assert resolver.lookups == ["service.test"]
    assert result["final_url"] == f"http://service.test:{port}/echo"


async def test_a_redirect_chain_is_followed_and_each_hop_checked(port: int) -> None:
    recorder = Recorder()
    tool, _ = _tool(LOOPBACK_ONLY, recorder)
    result = await _fetch(tool, url=f"http://127.0.0.1:{port}/redirect/3")
    assert (result["status"], result["text"]) == (200, "hello")
    assert result["final_url"] == f"http://127.0.0.1:{port}/hello"
    assert [url for url, _ in recorder.requests] == [
        f"http://127.0.0.1:{port}/redirect/3",
        f"http://127.0.0.1:{port}/redirect/2",
        f"http://127.0.0.1:{port}/redirect/1",
        f"http://127.0.0.1:{port}/redirect/0",
        f"http://127.0.0.1:{port}/hello",
    ]
    assert len(result["redirects"]) == 4


async def test_a_redirect_to_loopback_is_denied(port: int) -> None:
    # The first hop's name is allowlisted; the redirect to the loopback IP itself is not.
    recorder = Recorder()
    tool, _ = _tool(
        DefaultNetworkPolicy(allow_hosts=["allowed.test"]),
        recorder,
        {"allowed.test": ["127.0.0.1"]},
    )
    target = f"http://127.0.0.1:{port}/hello"
    with pytest.raises(ToolError, match=r"127\.0\.0\.1 \(loopback\)"):
        await _fetch(tool, url=f"http://allowed.test:{port}/to?url={target}")
    assert [url for url, _ in recorder.requests] == [f"http://127.0.0.1:{port}/to?url={target}"]


async def test_a_redirect_to_metadata_is_denied_without_connecting(port: int) -> None:
    recorder = Recorder()
    tool, _ = _tool(LOOPBACK_ONLY, recorder)
    to = "http://169.254.169.254/latest/meta-data/iam"
    with pytest.raises(ToolError, match=r"169\.254\.169\.254 \(metadata\)"):
        await _fetch(tool, url=f"http://127.0.0.1:{port}/to?url={to}")
    assert len(recorder.requests) == 1


async def test_too_many_redirects(port: int) -> None:
    tool, _ = _tool(LOOPBACK_ONLY, Recorder(), max_redirects=2)
    with pytest.raises(ToolError, match="too many redirects: more than 2"):
        await _fetch(tool, url=f"http://127.0.0.1:{port}/redirect/5")


async def test_credentials_do_not_follow_a_redirect_to_another_origin(port: int) -> None:
    tool, _ = _tool(
        DefaultNetworkPolicy(allow_cidrs=["127.0.0.0/8"]), Recorder(), {"other.test": ["127.0.0.1"]}
    )
    headers = {"Authorization": "Bearer secret", "X-Trace": "1"}
    same = await _fetch(tool, url=f"http://127.0.0.1:{port}/to?url=/echo", headers=headers)
    assert json.loads(same["text"])["headers"]["authorization"] == "Bearer secret"
    other = f"http://other.test:{port}/echo"
    moved = await _fetch(tool, url=f"http://127.0.0.1:{port}/to?url={other}", headers=headers)
    echoed = json.loads(moved["text"])["headers"]
    assert "authorization" not in echoed and echoed["x-trace"] == "1"


async def test_post_body_and_303_turning_into_get(port: int) -> None:
    tool, _ = _tool(LOOPBACK_ONLY, Recorder())
    posted = await _fetch(tool, url=f"http://127.0.0.1:{port}/echo", method="POST", body="a=1")
    assert json.loads(posted["text"])["method"] == "POST"
    assert json.loads(posted["text"])["body"] == "a=1"
    url = f"http://127.0.0.1:{port}/to?code=303&url=/echo"
    seen = await _fetch(tool, url=url, method="POST", body="a=1")
    assert json.loads(seen["text"])["method"] == "GET"


async def test_large_bodies_are_truncated_and_binary_is_not_decoded(port: int) -> None:
    tool, _ = _tool(LOOPBACK_ONLY, Recorder())
    big = await _fetch(tool, url=f"http://127.0.0.1:{port}/big?size=100000", max_bytes=1000)
    assert (len(big["text"]), big["bytes"], big["truncated"]) == (1000, 1000, True)
    capped = await _fetch(tool, url=f"http://127.0.0.1:{port}/big?size=100000", max_bytes=10**9)
    assert (capped["bytes"], capped["truncated"]) == (50_000, True)
    binary = await _fetch(tool, url=f"http://127.0.0.1:{port}/binary")
    assert (binary["text"], binary["binary"], binary["bytes"]) == (None, True, 10)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"url": "file:///etc/passwd"}, "absolute http or https URL"),
        ({"url": "ftp://127.0.0.1/"}, "absolute http or https URL"),
        ({"url": "/relative"}, "absolute http or https URL"),
        ({"url": "http://user:pw@127.0.0.1/"}, "credentials in the URL"),
        ({"url": "http://127.0.0.1/", "method": "DELETE"}, "method must be one of"),
        ({"url": "http://127.0.0.1/", "body": "x"}, "only sent with POST"),
        ({"url": "http://127.0.0.1/", "headers": {"Host": "evil.test"}}, "Host are set by"),
    ],
)
async def test_bad_requests_are_refused_before_any_lookup(
    arguments: dict[str, Any], message: str
) -> None:
    recorder = Recorder()
    tool, resolver = _tool(LOOPBACK_ONLY, recorder)
    with pytest.raises(ToolError, match=message):
        await _fetch(tool, **arguments)
    assert recorder.requests == [] and resolver.lookups == []


async def test_an_unresolvable_name_is_a_tool_error() -> None:
    tool, _ = _tool(LOOPBACK_ONLY, Recorder())
    with pytest.raises(ToolError, match=r"cannot resolve host 'nowhere\.test'"):
        await _fetch(tool, url="http://nowhere.test/")


async def test_policies_see_ipv4_mapped_addresses_in_ipv4_form() -> None:
    guard = SsrfGuard(DefaultNetworkPolicy(allow_cidrs=["127.0.0.1/32"]), StaticResolver({}))
    target = await guard.check(
        scheme="http", host="::ffff:127.0.0.1", port=80, tenant_id="t1", agent="a", tool="t"
    )
    assert target.categories == ("loopback",)


# ---------------------------------------------------------------- IPv6 forms carrying IPv4


@pytest.mark.parametrize(
    ("address", "category"),
    [
        # IPv4-compatible ::/96: Python calls ::7f00:1 global; it carries 127.0.0.1.
        ("::127.0.0.1", "loopback"),
        ("::7f00:1", "loopback"),
        ("0:0:0:0:0:0:7f00:1", "loopback"),
        ("::0.0.0.1", "loopback"),  # parses to ::1 itself
        ("::0.0.0.0", "unspecified"),  # parses to :: itself
        ("::2", "unspecified"),  # 0.0.0.2, "this network"
        ("::a9fe:a9fe", "metadata"),
        ("::169.254.1.1", "link_local"),
        ("::10.0.0.1", "private"),
        ("::e000:1", "multicast"),
        ("::c000:201", "reserved"),
        ("::808:808", "public"),
        # IPv4-mapped and IPv4-translated (SIIT).
        ("::FFFF:127.0.0.1", "loopback"),
        ("0:0:0:0:0:ffff:7f00:1", "loopback"),
        ("::ffff:0.0.0.0", "unspecified"),
        ("::ffff:a9fe:a9fe", "metadata"),
        ("::ffff:0:7f00:1", "loopback"),
        ("::ffff:0:10.1.2.3", "private"),
        # NAT64, well-known and local-use (the IPv4 address in the last 32 bits).
        ("64:ff9b::127.0.0.1", "loopback"),
        ("64:ff9b::a9fe:a9fe", "metadata"),
        ("64:ff9b::808:808", "public"),
        ("64:ff9b:1::7f00:1", "loopback"),
        ("64:ff9b:1:ffff:ffff::a00:1", "private"),
        ("64:ff9b:1::808:808", "public"),
        # 6to4: bits 16-47.
        ("2002:7f00:1::", "loopback"),
        ("2002:a9fe:a9fe::", "metadata"),
        ("2002:c0a8:101:1::1", "private"),
        ("2002:808:808::1", "public"),
        # Teredo: the stricter of the server (bits 32-63) and the inverted client (last 32).
        ("2001:0:808:808::80ff:fffe", "loopback"),  # client 127.0.0.1
        ("2001:0:7f00:1::f7f7:f7f7", "loopback"),  # server 127.0.0.1
        ("2001:0:808:808::f5ff:fefe", "private"),  # client 10.0.1.1
        ("2001:0:a9fe:a9fe::f5ff:fefe", "metadata"),  # metadata beats private
        ("2001:0:808:808::f7f7:f7f7", "public"),  # both 8.8.8.8
        # Zone ids are dropped: ipaddress keeps them in equality, so a set lookup missed them.
        ("fd00:ec2::254%eth0", "metadata"),
        ("::ffff:127.0.0.1%1", "loopback"),
        ("fe80::1%eth0", "link_local"),
        # Plain addresses Python calls global (3.11) that nobody routes.
        ("::1:0:0:1", "reserved"),
        ("5f00::1", "reserved"),
        ("3fff::1", "reserved"),
        ("2001:10::1", "reserved"),
        ("fec0::1", "private"),
        ("0.1.2.3", "unspecified"),
        ("192.0.0.9", "reserved"),
        ("2606:4700::1111", "public"),
    ],
)
def test_ipv6_forms_are_judged_by_the_ipv4_they_carry(address: str, category: str) -> None:
    assert classify_address(address) == category
    assert classify_address(ipaddress.ip_address(address)) == category


def test_embedded_ipv4() -> None:
    def carried(address: str) -> list[str]:
        return [str(ip) for ip in embedded_ipv4(ipaddress.ip_address(address))]

    assert carried("::7f00:1") == ["127.0.0.1"]
    assert carried("::") == [] and carried("::1") == []
    assert carried("64:ff9b:1:2:3:4:c000:201") == ["192.0.2.1"]
    assert carried("2002:c000:201::") == ["192.0.2.1"]
    assert carried("2001:0:4136:e378:8000:63bf:3fff:fdd2") == ["65.54.227.120", "192.0.2.45"]
    assert carried("2606:4700::1111") == [] and carried("127.0.0.1") == []


@pytest.mark.parametrize(
    "host", ["[::127.0.0.1]", "[64:ff9b:1::7f00:1]", "[2002:7f00:1::]", "[::ffff:0:7f00:1]"]
)
async def test_http_fetch_denies_ipv6_literals_carrying_loopback(host: str) -> None:
    # An IPv4 CIDR does not open them: only the IPv4-mapped form is the same host.
    recorder = Recorder()
    tool, resolver = _tool(LOOPBACK_ONLY, recorder)
    with pytest.raises(ToolError, match=r"\(loopback\)"):
        await _fetch(tool, url=f"http://{host}:8265/")
    assert recorder.requests == [] and resolver.lookups == []


async def test_a_name_resolving_to_an_ipv6_form_of_loopback_is_denied() -> None:
    recorder = Recorder()
    tool, _ = _tool(DefaultNetworkPolicy(), recorder, {"sneaky.test": ["::7f00:1"]})
    with pytest.raises(ToolError, match=r"::7f00:1 \(loopback\)"):
        await _fetch(tool, url="http://sneaky.test/")
    assert recorder.requests == []


# ---------------------------------------------------------------- ports


async def _denial(policy: NetworkPolicy, host: str, ip: str, port: int) -> str | None:
    decision = await policy.decide_network(
        tenant_id="t1",
        agent="a",
        tool="http_fetch",
        scheme="http",
        host=host,
        ip=ip,
        port=port,
        category=classify_target(host, ipaddress.ip_address(ip)),
    )
    return None if decision.allowed else decision.reason


async def test_public_addresses_only_on_ports_80_and_443_by_default() -> None:
    policy = DefaultNetworkPolicy()
    assert await _denial(policy, "example.test", "8.8.8.8", 80) is None
    assert await _denial(policy, "example.test", "2606:4700::1111", 443) is None
    reason = await _denial(policy, "example.test", "8.8.8.8", 8080)
    assert reason == "port 8080 of public addresses is not allowed (80, 443)"
    assert await _denial(policy, "example.test", "8.8.8.8", 6379) is not None


async def test_allowed_ports_are_configurable_and_allowlists_open_every_port() -> None:
    policy = DefaultNetworkPolicy(
        allow_hosts=["api.test"], allow_cidrs=["127.0.0.1/32"], allow_ports=[8443]
    )
    assert await _denial(policy, "example.test", "8.8.8.8", 8443) is None
    assert await _denial(policy, "example.test", "8.8.8.8", 443) is not None
    assert await _denial(policy, "api.test", "8.8.8.8", 22) is None
    assert await _denial(policy, "127.0.0.1", "127.0.0.1", 8265) is None
    assert await _denial(policy, "127.0.0.2", "127.0.0.2", 80) is not None


@pytest.mark.parametrize("port", [0, 65536, -1, True, "80"])
def test_a_bad_port_is_a_config_error(port: Any) -> None:
    with pytest.raises(ConfigError, match=r"allow_ports: .* is not a port"):
        DefaultNetworkPolicy(allow_ports=[port])


async def test_http_fetch_to_a_public_address_on_another_port_is_denied() -> None:
    recorder = Recorder()
    tool, _ = _tool(DefaultNetworkPolicy(), recorder, {"public.test": ["8.8.8.8"]})
    with pytest.raises(ToolError, match="port 8080 of public addresses is not allowed"):
        await _fetch(tool, url="http://public.test:8080/")
    assert recorder.requests == []
