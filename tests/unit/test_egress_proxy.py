"""The browser's egress proxy and Chromium launcher, without Chromium.

The proxy is driven over real loopback sockets by a raw HTTP client; what the servers behind it
saw is asserted on (a listener the policy does not allow must get no connection). Names resolve
through a fixed table, so no DNS is asked; only loopback is ever connected to.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agentcluster.browser._chromium import (
    ChromiumLaunch,
    is_reserved,
    register_ports,
    write_launcher,
)
from agentcluster.tools._egress_proxy import EgressLease, EgressProxy
from agentcluster.tools._ssrf import DefaultNetworkPolicy, SsrfGuard
from tests.support.network import StaticResolver

pytestmark = pytest.mark.timeout(60)

LEASE = EgressLease(tenant_id="t-egress", agent="surfer", session_id="s-1")


@dataclass
class Listener:
    """A loopback HTTP server that records every connection and request head it gets."""

    host: str
    port: int = 0
    connections: int = 0
    heads: list[str] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self) -> Listener:
        self.server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        self.heads.append(head)
        if head.startswith("ECHO"):  # a tunnelled protocol: echo lines back
            writer.write(b"echo:" + head.encode())
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        else:
            body = b"hello from " + self.host.encode()
            length = f"Content-Length: {len(body)}\r\n"
            writer.write(b"HTTP/1.1 200 OK\r\n" + length.encode() + b"\r\n" + body)
            await writer.drain()
        writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def servers() -> AsyncIterator[tuple[Listener, Listener]]:
    """An allowed listener on 127.0.0.1 and a forbidden one on 127.0.0.2."""
    allowed, forbidden = await Listener("127.0.0.1").start(), await Listener("127.0.0.2").start()
    yield allowed, forbidden
    await allowed.close()
    await forbidden.close()


@pytest.fixture
async def proxy() -> AsyncIterator[EgressProxy]:
    resolver = StaticResolver(
        {
            "site.test": ["127.0.0.1"],
            "sneaky.test": ["127.0.0.2"],
            "both.test": ["127.0.0.1", "127.0.0.2"],
        }
    )
    policy = DefaultNetworkPolicy(allow_cidrs=["127.0.0.1/32"])
    started = EgressProxy(SsrfGuard(policy, resolver))
    await started.start()
    started.begin_lease(LEASE)
    yield started
    await started.close()


async def send(
    proxy: EgressProxy, raw: str
) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send raw bytes to the proxy; return the first response head and the open streams."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(raw.encode("latin-1"))
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    return head, reader, writer


async def get(proxy: EgressProxy, url: str, host: str) -> tuple[str, bytes]:
    head, reader, writer = await send(proxy, f"GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n")
    body = await reader.read()
    writer.close()
    return head, body


async def test_plain_http_is_forwarded_to_the_resolved_address_with_connection_close(
    proxy: EgressProxy, servers: tuple[Listener, Listener]
) -> None:
    allowed, _ = servers
    head, body = await get(proxy, f"http://site.test:{allowed.port}/page?q=1", "site.test")
    assert head.startswith("HTTP/1.1 200") and "Connection: close" in head
    assert body == b"hello from 127.0.0.1"
    sent = allowed.heads[0]
    assert sent.startswith("GET /page?q=1 HTTP/1.1\r\n")  # origin form, to the pinned address
    assert "Host: site.test" in sent and "Connection: close" in sent
    assert proxy.take_blocked() == []


async def test_denied_targets_get_403_and_the_listener_sees_nothing(
    proxy: EgressProxy, servers: tuple[Listener, Listener]
) -> None:
    _, forbidden = servers
    attempts = [
        f"GET http://127.0.0.2:{forbidden.port}/img HTTP/1.1\r\nHost: x\r\n\r\n",
        f"CONNECT 127.0.0.2:{forbidden.port} HTTP/1.1\r\nHost: x\r\n\r\n",
        # A name resolving to a loopback address the policy does not allow.
        f"GET http://sneaky.test:{forbidden.port}/ HTTP/1.1\r\nHost: sneaky.test\r\n\r\n",
        # One allowed and one denied address: the whole name is denied.
        f"CONNECT both.test:{forbidden.port} HTTP/1.1\r\n\r\n",
        # IPv4 embedded in IPv6, 0.0.0.0 (reaches local listeners), userinfo.
        f"CONNECT [::ffff:127.0.0.2]:{forbidden.port} HTTP/1.1\r\n\r\n",
        f"GET http://0.0.0.0:{forbidden.port}/ HTTP/1.1\r\nHost: x\r\n\r\n",
        f"GET http://a@127.0.0.2:{forbidden.port}/ HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    for raw in attempts:
        head, _reader, writer = await send(proxy, raw)
        writer.close()
        assert head.split(" ")[1] in {"403", "400"}, (raw, head)
    assert forbidden.connections == 0
    blocked = proxy.take_blocked()
    assert len(blocked) == 6
    assert "loopback address 127.0.0.2" in blocked[2].reason  # judged as loopback
    assert proxy.stats.denied == 6


async def test_connect_tunnels_to_an_allowed_address_until_the_lease_ends(
    proxy: EgressProxy, servers: tuple[Listener, Listener]
) -> None:
    allowed, _ = servers
    head, reader, writer = await send(proxy, f"CONNECT site.test:{allowed.port} HTTP/1.1\r\n\r\n")
    assert head.startswith("HTTP/1.1 200")
    writer.write(b"ECHO x\r\n\r\nping")
    await writer.drain()
    echoed = await reader.readexactly(len(b"echo:ECHO x\r\n\r\nping"))
    assert echoed.endswith(b"ping")
    proxy.end_lease()  # the next session must not inherit this connection
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_without_a_lease_everything_is_denied(
    proxy: EgressProxy, servers: tuple[Listener, Listener]
) -> None:
    allowed, _ = servers
    proxy.end_lease()
    head, _ = await get(proxy, f"http://127.0.0.1:{allowed.port}/", "x")
    assert head.startswith("HTTP/1.1 403") and allowed.connections == 0
    assert "no session holds this browser" in proxy.take_blocked()[0].reason


async def test_malformed_requests_get_400(proxy: EgressProxy) -> None:
    for raw in [
        "GET /relative HTTP/1.1\r\n\r\n",
        "GET https://site.test/ HTTP/1.1\r\n\r\n",
        "CONNECT site.test HTTP/1.1\r\n\r\n",
        "CONNECT site.test:99999 HTTP/1.1\r\n\r\n",
        "BREW\r\n\r\n",
    ]:
        head, _reader, writer = await send(proxy, raw)
        writer.close()
        assert head.startswith("HTTP/1.1 400"), (raw, head)


async def test_browser_machinery_ports_are_reserved(tmp_path: Path) -> None:
    workdir = tmp_path / "ac-browser-x"
    workdir.mkdir()
    register_ports(workdir, [4242, 9222])
    import ipaddress

    loopback = ipaddress.ip_address("127.0.0.1")
    assert is_reserved(loopback, 9222, tmp_path)
    assert is_reserved(ipaddress.ip_address("::ffff:127.0.0.1"), 4242, tmp_path)
    assert not is_reserved(loopback, 8080, tmp_path)
    assert not is_reserved(ipaddress.ip_address("93.184.215.14"), 9222, tmp_path)


# --- the launcher -----------------------------------------------------------------------------


def test_the_launcher_drops_weakening_flags_and_pins_the_proxy(tmp_path: Path) -> None:
    fake = tmp_path / "fake-chromium"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "print(json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ)}))\n"
    )
    fake.chmod(0o755)
    launch = ChromiumLaunch(fake, None, None, True, "http://127.0.0.1:4242")
    launcher = write_launcher(launch, tmp_path / "launch.py", tmp_path)
    given = [
        "--no-sandbox",
        "--disable-setuid-sandbox",
        "--no-zygote",
        "--disable-web-security",
        "--proxy-server=http://evil:1",
        "--proxy-bypass-list=*",
        "--host-resolver-rules=MAP * 127.0.0.1",
        "--disable-features=Foo,Bar",
        "--user-data-dir=/x",
        "--remote-debugging-port=9999",
    ]
    done = subprocess.run([str(launcher), *given], capture_output=True, check=True, text=True)
    seen = json.loads(done.stdout)
    argv: list[str] = seen["argv"]
    assert "--user-data-dir=/x" in argv and "--remote-debugging-port=9999" in argv
    for dropped in ("--no-sandbox", "--disable-setuid-sandbox", "--no-zygote"):
        assert dropped not in argv
    assert not any(a.startswith(("--disable-web-security", "--host-resolver-rules")) for a in argv)
    assert [a for a in argv if a.startswith("--proxy-server")] == [
        "--proxy-server=http://127.0.0.1:4242"
    ]
    assert [a for a in argv if a.startswith("--proxy-bypass-list")] == [
        "--proxy-bypass-list=<-loopback>"
    ]
    assert "--disable-quic" in argv and "--dns-prefetch-disable" in argv
    features = [a for a in argv if a.startswith("--disable-features=")]
    assert len(features) == 1 and {"Foo", "Bar", "DnsOverHttps"} <= set(
        features[0].split("=", 1)[1].split(",")
    )
    assert seen["env"]["HOME"] == str(tmp_path) and "SA01_DB_DSN" not in seen["env"]
    assert set(seen["env"]) <= {
        "HOME",
        "TMPDIR",
        "XDG_CONFIG_HOME",
        "XDG_CACHE_HOME",
        "PATH",
        "LANG",
        "LC_CTYPE",
    }
