"""URLs read the way a browser reads them (agentcluster.tools._urls), and http_fetch using that.

The expected hosts are what Chromium and Firefox connect to for each URL (the WHATWG URL Standard's
host parser); the refused forms are the ones where a browser and another parser disagree.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from agentcluster.errors import ToolError
from agentcluster.tools import ToolInvocation
from agentcluster.tools._http import HttpFetchTool
from agentcluster.tools._ssrf import DefaultNetworkPolicy, SsrfGuard
from agentcluster.tools._urls import parse_web_url, web_url_problem
from tests.support.http_server import http_server
from tests.support.network import Recorder, StaticResolver

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("http://example.com", "http://example.com/"),
        ("HTTPS://Example.COM:443/a?b#c", "https://example.com/a?b#c"),
        ("http://example.com:8080?q", "http://example.com:8080/?q"),
        ("  http://example.com/  ", "http://example.com/"),
        # IPv4 forms browsers accept: one to four parts, decimal, octal, hex, trailing dot.
        ("http://2130706433/", "http://127.0.0.1/"),
        ("http://0x7f.1/", "http://127.0.0.1/"),
        ("http://0X7F.0.0.1/", "http://127.0.0.1/"),
        ("http://127.1/", "http://127.0.0.1/"),
        ("http://127.0.1/", "http://127.0.0.1/"),
        ("http://0177.0.0.1/", "http://127.0.0.1/"),
        ("http://017700000001/", "http://127.0.0.1/"),
        ("http://0x7f000001/", "http://127.0.0.1/"),
        ("http://127.0.0.1./", "http://127.0.0.1/"),
        ("http://0/", "http://0.0.0.0/"),
        ("http://0x/", "http://0.0.0.0/"),
        ("http://169.254.43518/", "http://169.254.169.254/"),
        ("http://0xa9fea9fe/", "http://169.254.169.254/"),
        ("http://4294967295/", "http://255.255.255.255/"),
        # Percent-encoding and UTS #46 mapping in the host.
        ("http://127.0.0.%31/", "http://127.0.0.1/"),
        ("http://%31%32%37.0.0.1/", "http://127.0.0.1/"),
        ("http://\uff11\uff12\uff17\u3002\uff10.\uff10.\uff11/", "http://127.0.0.1/"),
        ("http://127.0.0.%C2%AD1/", "http://127.0.0.1/"),
        ("http://LOCALHOST/", "http://localhost/"),
        ("http://b\u00fccher.example/", "http://xn--bcher-kva.example/"),
        # IPv6 literals come back compressed; the embedded IPv4 stays for the guard to judge.
        ("http://[::1]:8080/", "http://[::1]:8080/"),
        ("http://[0:0:0:0:0:0:0:1]/", "http://[::1]/"),
        ("http://[::127.0.0.1]/", "http://[::7f00:1]/"),
        ("http://[::FFFF:127.0.0.1]/", "http://[::ffff:7f00:1]/"),
        # "@" after the authority is path, not userinfo.
        ("http://example.com/@evil.test", "http://example.com/@evil.test"),
        ("http://example.com:80/", "http://example.com/"),
    ],
)
def test_urls_are_normalized_to_what_a_browser_connects_to(raw: str, normalized: str) -> None:
    assert str(parse_web_url(raw)) == normalized


def test_parts_and_ip_of_a_parsed_url() -> None:
    url = parse_web_url("https://0x7f.1:8443/x")
    assert (url.scheme, url.host, url.port, url.rest) == ("https", "127.0.0.1", 8443, "/x")
    assert str(url.ip) == "127.0.0.1"
    assert parse_web_url("http://example.com/").ip is None
    assert parse_web_url("wss://example.com/s", schemes=("ws", "wss")).port == 443


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        # The case: Python's urlsplit sees host ::127.0.0.1, a browser 127.0.0.1:8265.
        ("http://127.0.0.1:8265\\@[::127.0.0.1]/", "backslash"),
        ("http:\\\\127.0.0.1/", "backslash"),
        ("http://example.com\\@127.0.0.1/", "backslash"),
        ("http://example.com/a\\b", "backslash"),
        ("http://user:pw@127.0.0.1/", "credentials"),
        ("http://user@example.com/", "credentials"),
        ("http://example.com@127.0.0.1/", "credentials"),
        ("http://a@b@127.0.0.1/", "credentials"),
        ("http://exa\tmple.com/", "control character"),
        ("http://example.com/\n", "control character"),
        ("http://exam\x00ple.com/", "control character"),
        ("http://exam\x7fple.com/", "control character"),
        ("http://exam\u0085ple.com/", "control character"),
        ("http:/example.com/", "must start with http://"),
        ("http:example.com", "must start with http://"),
        ("http:///example.com/", "no host"),
        ("http://", "no host"),
        ("http://:80/", "no host"),
        ("ftp://example.com/", "scheme 'ftp' is not allowed"),
        ("javascript:alert(1)", "scheme 'javascript' is not allowed"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("//example.com/", "absolute http or https URL"),
        ("/relative", "absolute http or https URL"),
        ("http://example.com:0/", "port 0"),
        ("http://example.com:65536/", "port 65536"),
        ("http://example.com:8o/", "not a number"),
        ("http://example.com:\uff18\uff10/", "not a number"),
        ("http://1.2.3.4.5/", "neither a valid IPv4"),
        ("http://256.0.0.1/", "out of range"),
        ("http://4294967296/", "out of range"),
        ("http://1.16777216/", "out of range"),
        ("http://09/", "neither a valid IPv4"),
        ("http://foo.0x10/", "neither a valid IPv4"),
        ("http://foo.123/", "neither a valid IPv4"),
        ("http://exa mple.com/", "not a valid host name"),
        ("http://%2f/", "not a valid host name"),
        ("http://exa%40mple.com/", "not a valid host name"),
        ("http://example%00.com/", "not a valid host name"),
        ("http://%ff/", "not valid UTF-8"),
        ("http://[::1/", "no closing"),
        ("http://[::1]x/", "after the URL's IPv6 host"),
        ("http://[fe80::1%25eth0]/", "not a valid IPv6"),
        ("http://[127.0.0.1]/", "not a valid IPv6"),
        ("http://[::01.2.3.4]/", "not a valid IPv6"),
        ("http://[1:2:3:4:5:6:7:8:9]/", "not a valid IPv6"),
        ("http://./", "not a valid host name"),
        (42, "absolute http(s) URL"),
        ("", "absolute http(s) URL"),
    ],
)
def test_ambiguous_or_invalid_urls_are_refused(raw: Any, problem: str) -> None:
    with pytest.raises(ToolError) as raised:
        parse_web_url(raw)
    assert problem in raised.value.message
    assert web_url_problem(raw) == raised.value.message


def test_a_very_long_url_is_refused() -> None:
    assert "characters long" in (web_url_problem("http://e.test/" + "a" * 70_000) or "")


def _invocation(arguments: dict[str, Any]) -> ToolInvocation:
    return ToolInvocation(
        tenant_id="t1",
        session_id="s1",
        turn_id="turn-1",
        agent="tester",
        tool_call_id=uuid.uuid4().hex,
        tool="http_fetch",
        arguments=arguments,
    )


def _fetch_tool(policy: DefaultNetworkPolicy, recorder: Recorder) -> HttpFetchTool:
    return HttpFetchTool(
        SsrfGuard(policy, StaticResolver({})),
        max_bytes=10_000,
        timeout_s=10,
        max_redirects=3,
        transport_factory=recorder.factory,
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433:{port}/hello",
        "http://0x7f.1:{port}/hello",
        "http://127.1:{port}/hello",
        "http://0177.0.0.1:{port}/hello",
        "http://%31%32%37.0.0.1:{port}/hello",
    ],
)
async def test_http_fetch_judges_the_address_a_browser_would_use(url: str) -> None:
    # Denied as loopback by the default policy, so nothing is connected to...
    recorder = Recorder()
    with pytest.raises(ToolError, match=r"127\.0\.0\.1 \(loopback\)"):
        await _fetch_tool(DefaultNetworkPolicy(), recorder).run(
            {"url": url.format(port=1)}, _invocation({})
        )
    assert recorder.requests == []
    # ... and with loopback allowed, the request goes to 127.0.0.1 itself.
    with http_server() as port:
        recorder = Recorder()
        tool = _fetch_tool(DefaultNetworkPolicy(allow_cidrs=["127.0.0.1/32"]), recorder)
        result = await tool.run({"url": url.format(port=port)}, _invocation({}))
    assert result["text"] == "hello"
    assert recorder.requests == [(f"http://127.0.0.1:{port}/hello", f"127.0.0.1:{port}")]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8265\\@[::127.0.0.1]/",
        "http://user:pw@127.0.0.1/",
        "http://127.0.0.1\\@example.com/",
        "http://example.com/\r\nHost: 127.0.0.1",
    ],
)
async def test_http_fetch_refuses_ambiguous_urls_before_any_lookup(url: str) -> None:
    recorder = Recorder()
    tool = _fetch_tool(DefaultNetworkPolicy(allow_cidrs=["0.0.0.0/0", "::/0"]), recorder)
    with pytest.raises(ToolError, match=r"backslash|credentials|control character"):
        await tool.run({"url": url}, _invocation({}))
    assert recorder.requests == []


@pytest.mark.parametrize(
    ("location", "problem"),
    [
        ("/\\\\169.254.169.254/", "backslash"),
        ("http://user:pw@127.0.0.1/", "credentials"),
        ("http://0xa9fea9fe/latest/meta-data/", "169.254.169.254 (metadata)"),
        ("ftp://127.0.0.1/", "scheme 'ftp' is not allowed"),
    ],
)
async def test_http_fetch_checks_redirect_locations_like_urls(location: str, problem: str) -> None:
    recorder = Recorder()
    tool = _fetch_tool(DefaultNetworkPolicy(allow_cidrs=["127.0.0.1/32"]), recorder)
    with http_server() as port:
        start = str(httpx.URL(f"http://127.0.0.1:{port}/to", params={"url": location}))
        with pytest.raises(ToolError) as raised:
            await tool.run({"url": start}, _invocation({}))
    assert problem in raised.value.message
    assert [url for url, _ in recorder.requests] == [start]
