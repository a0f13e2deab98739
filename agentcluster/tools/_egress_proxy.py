"""The browser's egress decision point: a loopback forward proxy owned by one browser actor.

Chromium is started with ``--proxy-server=http://127.0.0.1:<port>`` and
``--proxy-bypass-list=<-loopback>``, so every request it makes (navigations from any source,
redirects, subresources, iframes, fetch/XHR, WebSocket, service workers) arrives here. For each
one the proxy resolves the host ONCE, asks the tenant's network policy (through
:class:`~agentcluster.tools._ssrf.SsrfGuard`) about every resolved address and the port, and
connects to exactly one of those addresses: a name cannot be re-pointed between the decision and
the connection (DNS rebinding), and Chromium never resolves a name itself.

Two request forms are served:

* ``CONNECT host:port`` (HTTPS, and WebSockets, which Chromium always tunnels): after the
  decision the proxy answers ``200`` and relays bytes both ways;
* absolute-form ``GET http://host:port/path`` (plain HTTP): the request is sent to the pinned
  address in origin form with ``Connection: close``, its body relayed by ``Content-Length`` or
  chunked framing, and the response relayed until the server closes. One request per client
  connection, so every request is decided on its own.

Whose traffic it is comes from :meth:`EgressProxy.begin_lease`: the tenant and agent of the
session that currently holds the browser. Without a lease every request is denied (fail closed);
:meth:`EgressProxy.end_lease` also cuts every open connection of the lease. A denied request gets
``403`` and is recorded as a :class:`BlockedRequest`, which the browser tools report.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from agentcluster.errors import ToolError
from agentcluster.tools._ssrf import IPAddress, SsrfGuard

__all__ = ["BlockedRequest", "EgressLease", "EgressProxy", "ProxyStats", "parse_authority"]

log = logging.getLogger(__name__)

ReservedCheck = Callable[[IPAddress, int], bool]
"""Whether (address, port) is the node's own browser machinery (a proxy or a DevTools port)."""

_MAX_HEAD = 64 * 1024
_MAX_BLOCKED = 200
_CHUNK = 64 * 1024
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
    }
)


@dataclass(frozen=True)
class EgressLease:
    """Whose requests the proxy is deciding: the session holding the browser."""

    tenant_id: str
    agent: str
    session_id: str


@dataclass(frozen=True)
class BlockedRequest:
    """One request the proxy refused (reported to the model by the browser tools)."""

    target: str
    reason: str

    @property
    def host(self) -> str:
        """The host part of ``target`` (lower case, IPv6 without brackets)."""
        return self.target.rpartition(":")[0].strip("[]")

    def describe(self) -> str:
        """``target: reason`` on one line."""
        return f"{self.target}: {self.reason}"


@dataclass
class ProxyStats:
    """Counters since the proxy started."""

    allowed: int = 0
    denied: int = 0
    failed: int = 0


class _Refused(Exception):
    """A request that gets an error status instead of a connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class _Head:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


class EgressProxy:
    """A forward proxy on 127.0.0.1 that decides every request with the tenant's policy.

    Args:
        guard: resolves each host once and asks the network policy about every address.
        tool: the tool name the policy sees in network requests (``browser``).
        reserved: refuses loopback targets that are the node's browser machinery.
        connect_timeout_s: how long a connection to an allowed address may take.
    """

    def __init__(
        self,
        guard: SsrfGuard,
        *,
        tool: str = "browser",
        reserved: ReservedCheck | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._guard = guard
        self._tool = tool
        self._reserved = reserved or (lambda _ip, _port: False)
        self._connect_timeout_s = connect_timeout_s
        self._server: asyncio.Server | None = None
        self._lease: EgressLease | None = None
        self._blocked: list[BlockedRequest] = []
        self._open: set[asyncio.StreamWriter] = set()
        self.stats = ProxyStats()
        self.port = 0

    @property
    def url(self) -> str:
        """The proxy's address as Chromium's ``--proxy-server`` takes it."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> int:
        """Listen on 127.0.0.1 (a free port); returns the port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=_MAX_HEAD)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        """Stop listening and cut every open connection."""
        self.end_lease()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def begin_lease(self, lease: EgressLease) -> None:
        """Decide the requests from now on for this session's tenant and agent."""
        if self._lease != lease:
            self._blocked.clear()
        self._lease = lease

    def end_lease(self) -> None:
        """Deny everything until the next lease, and cut the connections of this one."""
        self._lease = None
        self._blocked.clear()
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    def take_blocked(self) -> list[BlockedRequest]:
        """The requests refused since the last call (oldest first), forgetting them."""
        blocked, self._blocked = self._blocked, []
        return blocked

    # -- one client connection ----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        lease = self._lease
        try:
            head = await _read_head(reader)
            if head.method == "CONNECT":
                await self._tunnel(head, lease, reader, writer)
            else:
                await self._forward(head, lease, reader, writer)
        except _Refused as refused:
            await _answer(writer, refused.status, refused.reason)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client or the server went away; nothing to tell anyone
        finally:
            self._open.discard(writer)
            writer.transport.abort()

    async def _tunnel(
        self,
        head: _Head,
        lease: EgressLease | None,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        host, port = parse_authority(head.target)
        scheme = "https" if port != 80 else "http"
        upstream_reader, upstream_writer = await self._connect(lease, scheme, host, port)
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await writer.drain()
        await _relay_both(reader, writer, upstream_reader, upstream_writer)

    async def _forward(
        self,
        head: _Head,
        lease: EgressLease | None,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        host, port, path = _absolute_http(head.target)
        upstream_reader, upstream_writer = await self._connect(lease, "http", host, port)
        try:
            upgrade = head.header("upgrade") is not None
            upstream_writer.write(_origin_form(head, path, upgrade))
            if upgrade:  # a WebSocket handshake: the connection becomes a tunnel
                await _relay_both(reader, writer, upstream_reader, upstream_writer)
                return
            await _relay_body(head, reader, upstream_writer)
            await _relay_response(upstream_reader, writer)
        finally:
            upstream_writer.transport.abort()

    async def _connect(
        self, lease: EgressLease | None, scheme: str, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Decide (host, port) for the lease and connect to one of the allowed addresses."""
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        addresses = await self._decide(lease, scheme, host, port, target)
        error: OSError | None = None
        for ip in addresses:
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    return await asyncio.open_connection(str(ip), port, limit=_MAX_HEAD)
            except (OSError, TimeoutError) as exc:
                error = exc if isinstance(exc, OSError) else OSError(f"timed out to {ip}")
        self.stats.failed += 1
        raise _Refused(502, f"cannot connect to {target}: {error}")

    async def _decide(
        self, lease: EgressLease | None, scheme: str, host: str, port: int, target: str
    ) -> tuple[IPAddress, ...]:
        if lease is None:
            return self._deny(target, "no session holds this browser")
        try:
            checked = await self._guard.check(
                scheme=scheme,
                host=host,
                port=port,
                tenant_id=lease.tenant_id,
                agent=lease.agent,
                tool=self._tool,
            )
        except ToolError as exc:
            return self._deny(target, exc.message)
        for ip in checked.addresses:
            if self._reserved(ip, port):
                return self._deny(target, f"{ip}:{port} is the browser machinery of this node")
        self.stats.allowed += 1
        return checked.addresses

    def _deny(self, target: str, reason: str) -> tuple[IPAddress, ...]:
        self.stats.denied += 1
        if len(self._blocked) < _MAX_BLOCKED:
            self._blocked.append(BlockedRequest(target, reason))
        log.info("browser egress denied: %s: %s", target, reason)
        raise _Refused(403, f"blocked by the egress policy: {target}: {reason}")


# --- parsing --------------------------------------------------------------------------------


async def _read_head(reader: asyncio.StreamReader) -> _Head:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise _Refused(431, "request head too large") from None
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _Refused(400, "malformed request line")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise _Refused(400, "malformed header line")
        headers.append((name, value.strip()))
    return _Head(parts[0], parts[1], parts[2], headers)


def parse_authority(authority: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) as (host without brackets, port).

    Raises:
        _Refused: userinfo, a bad port or an empty host (400).
    """
    if "@" in authority or "\\" in authority or not authority:
        raise _Refused(400, f"bad authority {authority!r}")
    if authority.startswith("["):
        host, bracket, rest = authority[1:].partition("]")
        if not bracket:
            raise _Refused(400, f"bad authority {authority!r}")
        with contextlib.suppress(ValueError):
            ipaddress.IPv6Address(host)
            return host, _port(rest, default_port, authority)
        raise _Refused(400, f"bad IPv6 address in {authority!r}")
    host, colon, port = authority.rpartition(":")
    if not colon:
        host, port = authority, ""
    if not host or ":" in host:
        raise _Refused(400, f"bad authority {authority!r}")
    return host.lower(), _port(f":{port}" if port else "", default_port, authority)


def _port(rest: str, default_port: int | None, authority: str) -> int:
    if not rest:
        if default_port is None:
            raise _Refused(400, f"no port in {authority!r}")
        return default_port
    digits = rest.removeprefix(":")
    if not rest.startswith(":") or not digits.isascii() or not digits.isdigit() or len(digits) > 5:
        raise _Refused(400, f"bad port in {authority!r}")
    port = int(digits)
    if not 0 < port < 65536:
        raise _Refused(400, f"bad port in {authority!r}")
    return port


def _absolute_http(target: str) -> tuple[str, int, str]:
    """(host, port, origin-form path) of an absolute-form ``http://`` request target."""
    if not target.lower().startswith("http://"):
        raise _Refused(400, "only absolute http:// targets and CONNECT are proxied")
    parts = urlsplit(target)
    host, port = parse_authority(parts.netloc, 80)
    path = parts.path or "/"
    return host, port, f"{path}?{parts.query}" if parts.query else path


def _origin_form(head: _Head, path: str, upgrade: bool) -> bytes:
    lines = [f"{head.method} {path} HTTP/1.1"]
    for name, value in head.headers:
        if name.lower() not in _HOP_BY_HOP:
            lines.append(f"{name}: {value}")
    if upgrade:
        lines += [f"Upgrade: {head.header('upgrade')}", "Connection: Upgrade"]
    else:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --- relaying -------------------------------------------------------------------------------


async def _relay_body(
    head: _Head, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter
) -> None:
    if (head.header("transfer-encoding") or "").lower().endswith("chunked"):
        await _relay_chunked(reader, upstream)
        return
    length = head.header("content-length")
    if length is None:
        return
    if not length.isascii() or not length.isdigit():
        raise _Refused(400, "bad Content-Length")
    remaining = int(length)
    while remaining > 0:
        data = await reader.readexactly(min(remaining, _CHUNK))
        upstream.write(data)
        await upstream.drain()
        remaining -= len(data)


async def _relay_chunked(reader: asyncio.StreamReader, upstream: asyncio.StreamWriter) -> None:
    while True:
        line = await reader.readuntil(b"\r\n")
        upstream.write(line)
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _Refused(400, "bad chunk size") from None
        if size == 0:
            break
        upstream.write(await reader.readexactly(size + 2))
        await upstream.drain()
    while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
        upstream.write(trailer)
    upstream.write(b"\r\n")
    await upstream.drain()


async def _relay_response(upstream: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The response head with ``Connection: close`` (the client must not reuse this
    connection), then the body until the server closes."""
    head = await upstream.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    kept = [line for line in lines[1:] if line and not _is_hop_header(line)]
    head_out = "\r\n".join([lines[0], *kept, "Connection: close"]) + "\r\n\r\n"
    writer.write(head_out.encode("latin-1"))
    await _pump(upstream, writer)


def _is_hop_header(line: str) -> bool:
    name = line.partition(":")[0].strip().lower()
    return name in {"connection", "keep-alive", "proxy-connection"}


async def _relay_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    upstream_reader: asyncio.StreamReader,
    upstream_writer: asyncio.StreamWriter,
) -> None:
    try:
        await asyncio.gather(_pump(reader, upstream_writer), _pump(upstream_reader, writer))
    finally:
        upstream_writer.transport.abort()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(_CHUNK):
            sink.write(data)
            await sink.drain()
    except ConnectionError:
        pass
    finally:
        if sink.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                sink.write_eof()


async def _answer(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    phrases = {400: "Bad Request", 403: "Forbidden", 431: "Request Header Fields Too Large"}
    body = f"{reason}\n".encode()
    head = (
        f"HTTP/1.1 {status} {phrases.get(status, 'Bad Gateway')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(ConnectionError, RuntimeError):
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
