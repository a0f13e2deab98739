"""Fakes typed against the SSRF guard's ports: a fixed-answer resolver, a recording transport."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

import httpx

from agentcluster.errors import ToolError
from agentcluster.tools._ssrf import IPAddress


class StaticResolver:
    """Resolves names from a fixed table, counting lookups; no DNS is ever asked."""

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self._table = {
            name: [ipaddress.ip_address(ip) for ip in ips] for name, ips in table.items()
        }
        self.lookups: list[str] = []

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.lookups.append(host)
        if host not in self._table:
            raise ToolError(f"cannot resolve host {host!r}: not in the test table")
        return list(self._table[host])


class Recorder:
    """Builds transports that record every request they are asked to send.

    Only requests to loopback addresses are sent; any other is recorded and refused, so a guard
    bug fails the test instead of reaching a private or public network.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []  # (url as sent, Host header)

    def factory(self) -> httpx.AsyncBaseTransport:
        return _RecordingTransport(self)


class _RecordingTransport(httpx.AsyncBaseTransport):
    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self._inner = httpx.AsyncHTTPTransport(retries=0)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._recorder.requests.append((str(request.url), request.headers.get("host", "")))
        if not ipaddress.ip_address(request.url.host).is_loopback:
            raise httpx.ConnectError(f"test transport refuses non-loopback {request.url.host}")
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
