"""``http_fetch``: one HTTP request through the SSRF guard, redirects followed and re-checked here.

Each hop is checked by :class:`~agentcluster.tools._ssrf.SsrfGuard` and then sent *to the checked
address*: the URL's host is replaced by the IP, the ``Host`` header and the TLS server name keep
the original name (so virtual hosts and certificate checks work), and no second DNS lookup can
change the destination. Redirects are followed by this code, never by httpx, so every hop goes
through the guard again. The environment's proxy settings are ignored (a proxy would resolve the
name itself).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx

from agentcluster.config import ToolSettings
from agentcluster.errors import ConfigError, ToolError
from agentcluster.llm import ToolSchema
from agentcluster.tools._base import ToolInvocation
from agentcluster.tools._ssrf import CheckedTarget, IPAddress, SsrfGuard
from agentcluster.tools._urls import parse_web_url

__all__ = ["HttpFetchTool", "TransportFactory"]

TransportFactory = Callable[[], httpx.AsyncBaseTransport]

_METHODS = ("GET", "HEAD", "POST")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Set by this tool from the URL and the body; a model-supplied value would break the pinning.
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
# Credentials that must not follow a redirect to another origin (what browsers and httpx do).
_CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
_RESPONSE_HEADERS = (
    "content-type",
    "content-length",
    "content-language",
    "content-disposition",
    "last-modified",
    "etag",
    "cache-control",
    "location",
    "retry-after",
)
_TEXT_MARKERS = ("json", "xml", "javascript", "yaml", "csv", "x-www-form-urlencoded")


def _default_transport() -> httpx.AsyncBaseTransport:
    return httpx.AsyncHTTPTransport(retries=0)


@dataclass(frozen=True)
class _Request:
    method: str
    url: httpx.URL
    headers: dict[str, str]
    body: bytes | None


@dataclass(frozen=True)
class _Response:
    status: int
    reason: str
    headers: httpx.Headers
    body: bytes
    truncated: bool
    encoding: str


class HttpFetchTool:
    """``http_fetch``: GET, HEAD or POST a URL; the SSRF guard decides every hop.

    Args:
        guard: resolves and checks each hop's host.
        max_bytes: the most response bytes ever read (a call may ask for fewer).
        timeout_s: limit for the whole fetch, redirects included.
        max_redirects: redirects followed before giving up.
        transport_factory: builds the httpx transport for each hop (tests pass a recording one).

    Raises:
        ConfigError: a limit is not positive (``max_redirects`` may be 0).
    """

    def __init__(
        self,
        guard: SsrfGuard,
        *,
        max_bytes: int,
        timeout_s: float,
        max_redirects: int,
        transport_factory: TransportFactory = _default_transport,
    ) -> None:
        if max_bytes <= 0 or timeout_s <= 0 or max_redirects < 0:
            raise ConfigError(
                f"http_fetch limits: max_bytes={max_bytes} and timeout_s={timeout_s} must be "
                f"positive, max_redirects={max_redirects} must be >= 0"
            )
        self._guard = guard
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self._max_redirects = max_redirects
        self._transport_factory = transport_factory
        self._schema = _schema(max_bytes)

    @classmethod
    def from_settings(
        cls,
        settings: ToolSettings,
        guard: SsrfGuard,
        transport_factory: TransportFactory = _default_transport,
    ) -> HttpFetchTool:
        """The tool with the fetch limits of ``settings`` (SA01_TOOLS_FETCH_*)."""
        return cls(
            guard,
            max_bytes=settings.fetch_max_bytes,
            timeout_s=settings.fetch_timeout_s,
            max_redirects=settings.fetch_max_redirects,
            transport_factory=transport_factory,
        )

    @property
    def schema(self) -> ToolSchema:
        return self._schema

    async def run(self, arguments: dict[str, Any], invocation: ToolInvocation) -> dict[str, Any]:
        """Fetch the URL and return status, final URL, some headers and the (truncated) text.

        Raises:
            ToolError: bad arguments, a denied or unresolvable host, too many redirects, a
                connection failure or the time limit; the message says which.
        """
        request = _parse_request(arguments)
        max_bytes = min(int(arguments.get("max_bytes", self._max_bytes)), self._max_bytes)
        if max_bytes <= 0:
            raise ToolError("max_bytes must be positive")
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._fetch(request, max_bytes, invocation)
        except TimeoutError:
            raise ToolError(
                f"fetching {request.url} timed out after {self._timeout_s:g} s"
            ) from None

    async def _fetch(
        self, request: _Request, max_bytes: int, invocation: ToolInvocation
    ) -> dict[str, Any]:
        hops: list[str] = []
        for _ in range(self._max_redirects + 1):
            target = await self._check(request.url, invocation)
            response = await self._send(request, target, max_bytes)
            following = _redirect(request, response)
            if following is None:
                return _result(request, response, hops)
            hops.append(str(request.url))
            request = following
        raise ToolError(
            f"too many redirects: more than {self._max_redirects} starting at "
            f"{hops[0] if hops else request.url}"
        )

    async def _check(self, url: httpx.URL, invocation: ToolInvocation) -> CheckedTarget:
        return await self._guard.check(
            scheme=url.scheme,
            host=url.host,
            port=url.port or _DEFAULT_PORTS[url.scheme],
            tenant_id=invocation.tenant_id,
            agent=invocation.agent,
            tool=invocation.tool,
        )

    async def _send(self, request: _Request, target: CheckedTarget, max_bytes: int) -> _Response:
        failures: list[str] = []
        for ip in target.addresses:
            try:
                return await self._send_to(request, ip, max_bytes)
            except httpx.ConnectError as exc:
                # The next checked address may answer (a dual-stack host, one address down).
                failures.append(f"{ip}: {exc or type(exc).__name__}")
            except httpx.TimeoutException:
                raise ToolError(f"{request.url.host} ({ip}) did not answer in time") from None
            except httpx.HTTPError as exc:
                raise ToolError(
                    f"fetching {request.url} from {ip} failed: {exc or type(exc).__name__}"
                ) from None
        raise ToolError(f"cannot connect to {request.url.host}: {'; '.join(failures)}")

    async def _send_to(self, request: _Request, ip: IPAddress, max_bytes: int) -> _Response:
        url = request.url
        headers = {**request.headers, "Host": url.netloc.decode("ascii")}
        extensions: dict[str, Any] = {}
        if url.scheme == "https":
            extensions["sni_hostname"] = url.host
        pinned = httpx.Request(
            request.method,
            url.copy_with(host=str(ip)),
            headers=headers,
            content=request.body,
            extensions=extensions,
        )
        transport = self._transport_factory()
        async with httpx.AsyncClient(
            transport=transport, trust_env=False, follow_redirects=False, timeout=self._timeout_s
        ) as client:
            response = await client.send(pinned, stream=True)
            try:
                body, truncated = await _read_limited(response, max_bytes)
            finally:
                await response.aclose()
        return _Response(
            status=response.status_code,
            reason=response.reason_phrase,
            headers=response.headers,
            body=body,
            truncated=truncated,
            encoding=response.encoding or "utf-8",
        )


async def _read_limited(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    # Decoded bytes are counted, so a small compressed body cannot expand past the limit.
    buffer = bytearray()
    async for chunk in response.aiter_bytes():
        buffer.extend(chunk)
        if len(buffer) > max_bytes:
            return bytes(buffer[:max_bytes]), True
    return bytes(buffer), False


def _parse_request(arguments: dict[str, Any]) -> _Request:
    method = str(arguments.get("method", "GET")).upper()
    if method not in _METHODS:
        raise ToolError(f"method must be one of {', '.join(_METHODS)}, got {method!r}")
    url = _parse_url(arguments.get("url"))
    headers = _parse_headers(arguments.get("headers") or {})
    body = arguments.get("body")
    if body is not None and method != "POST":
        raise ToolError(f"a body is only sent with POST, not {method}")
    return _Request(method, url, headers, body.encode("utf-8") if body is not None else None)


def _parse_url(raw: Any) -> httpx.URL:
    # Parsed as a browser would (WHATWG), then handed to httpx in that normalized form: the host
    # the guard checks is the host httpx connects to, whatever notation the model used.
    web_url = parse_web_url(raw)
    try:
        url = httpx.URL(str(web_url))
    except httpx.InvalidURL as exc:
        raise ToolError(f"invalid url {raw!r}: {exc}") from None
    if url.raw_host.decode("ascii").lower() != web_url.host or url.userinfo:
        raise ToolError(f"invalid url {raw!r}: its host is ambiguous")
    return url


def _parse_headers(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ToolError("headers must be an object of string values")
    reserved = sorted(name for name in raw if name.lower() in _RESERVED_HEADERS)
    if reserved:
        raise ToolError(
            f"header(s) {', '.join(reserved)} are set by http_fetch and cannot be given"
        )
    return {str(name): value for name, value in raw.items()}


def _redirect(request: _Request, response: _Response) -> _Request | None:
    location = response.headers.get("location")
    if response.status not in _REDIRECTS or not location:
        return None
    url = _redirect_target(request.url, location)
    method, body = request.method, request.body
    # 303 always, and 301/302 after a POST, turn into a GET without a body (as browsers do).
    if (response.status == 303 and method != "HEAD") or (
        response.status in (301, 302) and method == "POST"
    ):
        method, body = "GET", None
    headers = dict(request.headers)
    if _origin(url) != _origin(request.url):
        headers = {k: v for k, v in headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
    return replace(request, method=method, url=url, headers=headers, body=body)


def _redirect_target(base: httpx.URL, location: str) -> httpx.URL:
    # Browsers read "\\" in a Location as "/" ("/\\host" is another host): refuse it, and check
    # the joined URL as any URL the model gives.
    if any(ord(char) < 0x20 or char in "\\\x7f" for char in location):
        raise ToolError(
            f"{base} redirected to {location!r}, which has a backslash or a control character"
        )
    try:
        return _parse_url(str(base.join(location)))
    except httpx.InvalidURL as exc:
        problem = str(exc)
    except ToolError as exc:
        problem = exc.message
    raise ToolError(f"{base} redirected to a refused location {location!r}: {problem}")


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    return url.scheme, url.host, url.port or _DEFAULT_PORTS[url.scheme]


def _result(request: _Request, response: _Response, hops: list[str]) -> dict[str, Any]:
    content_type = response.headers.get("content-type", "")
    textual = _is_textual(content_type)
    return {
        "url": hops[0] if hops else str(request.url),
        "final_url": str(request.url),
        "redirects": hops,
        "status": response.status,
        "reason": response.reason,
        "headers": {
            name: response.headers[name] for name in _RESPONSE_HEADERS if name in response.headers
        },
        "text": response.body.decode(response.encoding, errors="replace") if textual else None,
        "binary": not textual,
        "bytes": len(response.body),
        "truncated": response.truncated,
    }


def _is_textual(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return not media or media.startswith("text/") or any(m in media for m in _TEXT_MARKERS)


def _schema(max_bytes: int) -> ToolSchema:
    return ToolSchema(
        name="http_fetch",
        description=(
            "Fetch a URL over HTTP(S) and return the status, final URL, main headers and the "
            "response text (truncated past max_bytes). Redirects are followed. Internal and "
            "private addresses are refused unless the policy allows them."
        ),
        parameters={
            "type": "object",
            "properties": {
                "url": {"type": "string", "description": "Absolute http:// or https:// URL."},
                "method": {"type": "string", "enum": list(_METHODS), "description": "GET default."},
                "headers": {
                    "type": "object",
                    "description": "Extra request headers (string values).",
                    "additionalProperties": {"type": "string"},
                },
                "body": {"type": "string", "description": "Request body; POST only."},
                "max_bytes": {
                    "type": "integer",
                    "description": f"Most response bytes to read (at most {max_bytes}).",
                },
            },
            "required": ["url"],
            "additionalProperties": False,
        },
    )
