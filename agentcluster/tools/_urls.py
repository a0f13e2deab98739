"""Web URLs read the way a browser reads them (the WHATWG URL Standard), and refused when unclear.

A guard that parses a URL one way while the client that connects parses it another way checks the
wrong host: ``http://127.0.0.1:8265\\@[::127.0.0.1]/`` is host ``::127.0.0.1`` to Python's
``urlsplit`` but ``127.0.0.1:8265`` to a browser, and ``http://2130706433/``, ``http://0x7f.1/`` and
``http://127.1/`` are all 127.0.0.1 to a browser. :func:`parse_web_url` therefore

- refuses what browsers silently repair or read differently from other parsers: control
  characters, backslashes (browsers read ``\\`` as ``/`` in http(s) URLs), userinfo
  (``user:pw@``), anything but ``scheme://`` after the scheme, a port that is not 1-65535;
- parses the host as the WHATWG host parser does: percent-decoding, IDNA/UTS #46 mapping
  (full-width digits and ``。`` become ASCII), the IPv4 forms browsers accept (one to four parts,
  decimal, octal ``0177`` or hex ``0x7f``, a trailing dot), bracketed IPv6 (no zone id);
- returns the host in the form the browser connects to (dotted-quad IPv4, compressed IPv6, an
  ASCII lower-case name), so the SSRF guard judges the address that is actually used.

Both ``http_fetch`` and the browser's navigation check use it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

import idna

from agentcluster.errors import ToolError

__all__ = ["DEFAULT_PORTS", "WebUrl", "parse_web_url", "web_url_problem"]

DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443, "ws": 80, "wss": 443}

# WHATWG "forbidden domain code points" (after percent-decoding and IDNA); "." separates labels.
_FORBIDDEN_HOST_CHARS = frozenset([chr(c) for c in range(0x21)] + list("#%/:<>?@[\\]^|") + ["\x7f"])
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789+-.")
_MAX_URL_CHARS = 65_536


@dataclass(frozen=True)
class WebUrl:
    """An absolute http(s) (or ws(s)) URL with its host as the browser would connect to it.

    Attributes:
        scheme: lower case, one of the schemes asked for.
        host: ASCII: a dotted-quad IPv4 address, an IPv6 address (compressed, no brackets) or a
            lower-case domain name (IDNA ``xn--`` labels for non-ASCII names).
        port: the port connected to (the scheme's default when the URL gives none).
        rest: path, query and fragment as written; at least ``/``.
        ip: the address when ``host`` is an IP literal, else None.
    """

    scheme: str
    host: str
    port: int
    rest: str
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None

    @property
    def netloc(self) -> str:
        """``host[:port]`` as written in a URL (IPv6 bracketed, a default port left out)."""
        host = f"[{self.host}]" if isinstance(self.ip, ipaddress.IPv6Address) else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.rest}"


def web_url_problem(raw: object, *, schemes: Collection[str] = ("http", "https")) -> str | None:
    """Why ``raw`` is not a URL :func:`parse_web_url` accepts, or None when it is."""
    try:
        parse_web_url(raw, schemes=schemes)
    except ToolError as exc:
        return exc.message
    return None


def parse_web_url(raw: object, *, schemes: Collection[str] = ("http", "https")) -> WebUrl:
    """Parse an absolute URL the way a browser does, refusing every ambiguous form.

    Args:
        raw: the URL; ASCII spaces around it are ignored.
        schemes: the schemes accepted (a subset of http, https, ws, wss).

    Raises:
        ToolError: the URL is not an absolute URL of those schemes, or has a form that browsers
            and other parsers read differently (the message says which).
    """
    if not isinstance(raw, str) or not raw.strip(" "):
        raise ToolError("url must be an absolute http(s) URL such as 'https://example.com/'")
    text = raw.strip(" ")
    _check_characters(text)
    scheme, after_scheme = _split_scheme(text, schemes)
    authority, rest = _split_authority(after_scheme)
    host_text, port = _split_port(authority, scheme)
    host, ip = _parse_host(host_text)
    return WebUrl(scheme=scheme, host=host, port=port, rest=_normalize_rest(rest), ip=ip)


def _check_characters(text: str) -> None:
    if len(text) > _MAX_URL_CHARS:
        raise ToolError(f"the URL is {len(text)} characters long; at most {_MAX_URL_CHARS}")
    for char in text:
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            raise ToolError(f"the URL contains a control character (U+{code:04X}); encode it")
    if "\\" in text:
        raise ToolError(
            "the URL contains a backslash, which browsers read as '/'; write '/' or %5C instead"
        )


def _split_scheme(text: str, schemes: Collection[str]) -> tuple[str, str]:
    scheme, colon, after = text.partition(":")
    scheme = scheme.lower()
    wanted = f"an absolute {' or '.join(schemes)} URL such as '{next(iter(schemes))}://host/'"
    if not colon or not scheme or not scheme[0].isalpha() or set(scheme) - _SCHEME_CHARS:
        raise ToolError(f"the URL must be {wanted}")
    if scheme not in schemes or scheme not in DEFAULT_PORTS:
        raise ToolError(f"the URL scheme {scheme!r} is not allowed; it must be {wanted}")
    if not after.startswith("//"):
        raise ToolError(f"the URL must start with {scheme}:// followed by the host")
    return scheme, after[2:]


def _split_authority(after_slashes: str) -> tuple[str, str]:
    end = len(after_slashes)
    for delimiter in "/?#":
        found = after_slashes.find(delimiter)
        if found != -1:
            end = min(end, found)
    authority, rest = after_slashes[:end], after_slashes[end:]
    if "@" in authority:
        raise ToolError(
            "credentials in the URL (user:password@) are not allowed; send an Authorization header"
        )
    if not authority:
        raise ToolError("the URL has no host")
    return authority, rest


def _split_port(authority: str, scheme: str) -> tuple[str, int]:
    if authority.startswith("["):
        close = authority.find("]")
        if close == -1:
            raise ToolError("the URL's IPv6 host has no closing ']'")
        host, after = authority[: close + 1], authority[close + 1 :]
        if after and not after.startswith(":"):
            raise ToolError(f"unexpected {after!r} after the URL's IPv6 host")
        port_text = after[1:] if after else ""
    else:
        host, _, port_text = authority.partition(":")
    return host, _parse_port(port_text, scheme)


def _parse_port(port_text: str, scheme: str) -> int:
    if not port_text:
        return DEFAULT_PORTS[scheme]
    if not (port_text.isascii() and port_text.isdigit()):
        raise ToolError(f"the URL's port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ToolError(f"the URL's port {port} is not between 1 and 65535")
    return port


def _parse_host(
    host_text: str,
) -> tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address | None]:
    if host_text.startswith("["):
        ipv6 = _parse_ipv6(host_text[1:-1])
        return ipv6.compressed, ipv6
    if not host_text:
        raise ToolError("the URL has no host")
    domain = _domain_to_ascii(_percent_decode(host_text))
    bad = sorted(set(domain) & _FORBIDDEN_HOST_CHARS)
    if bad or not domain.strip("."):
        shown = "".join(bad) or domain
        raise ToolError(f"the URL's host {host_text!r} is not a valid host name ({shown!r})")
    if _ends_in_number(domain):
        ipv4 = _parse_ipv4(domain)
        return str(ipv4), ipv4
    return domain, None


def _parse_ipv6(text: str) -> ipaddress.IPv6Address:
    # Python accepts a zone id ("fe80::1%eth0"), browsers do not: refuse it like them.
    if "%" in text or not text:
        raise ToolError(f"the URL's IPv6 host [{text}] is not a valid IPv6 address")
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        raise ToolError(f"the URL's IPv6 host [{text}] is not a valid IPv6 address") from None


def _percent_decode(host_text: str) -> str:
    try:
        return unquote_to_bytes(host_text).decode("utf-8")
    except UnicodeDecodeError:
        raise ToolError(f"the URL's host {host_text!r} is not valid UTF-8 once decoded") from None


def _domain_to_ascii(domain: str) -> str:
    # UTS #46 as browsers apply it (non-transitional, no STD3 rules): maps full-width and other
    # compatibility characters to ASCII, lower-cases, drops ignored characters (soft hyphen).
    try:
        mapped = idna.uts46_remap(domain, std3_rules=False, transitional=False)
        if mapped.isascii():
            return mapped
        return ".".join(_label_to_ascii(label) for label in mapped.split("."))
    except idna.IDNAError as exc:
        raise ToolError(f"the URL's host {domain!r} is not a valid domain name: {exc}") from None


def _label_to_ascii(label: str) -> str:
    if label.isascii():
        return label
    return idna.alabel(label).decode("ascii")


def _ends_in_number(domain: str) -> bool:
    labels = domain.split(".")
    if labels[-1] == "" and len(labels) > 1:
        labels.pop()
    last = labels[-1]
    if last and last.isdigit():
        return True
    return _ipv4_number(last) is not None and last[:2].lower() == "0x"


def _parse_ipv4(domain: str) -> ipaddress.IPv4Address:
    parts = domain.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    numbers = [_ipv4_number(part) for part in parts]
    if len(parts) > 4 or any(n is None for n in numbers):
        raise ToolError(f"the URL's host {domain!r} is neither a valid IPv4 address nor a name")
    values = [n for n in numbers if n is not None]
    if any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        raise ToolError(f"the URL's host {domain!r} is an IPv4 address out of range")
    address = values[-1]
    for index, value in enumerate(values[:-1]):
        address += value * 256 ** (3 - index)
    return ipaddress.IPv4Address(address)


def _ipv4_number(part: str) -> int | None:
    # WHATWG "IPv4 number parser": 0x/0X hex, a leading 0 octal, else decimal; "0x" alone is 0.
    if not part:
        return None
    radix, digits = 10, part
    if part[:2].lower() == "0x":
        radix, digits = 16, part[2:]
    elif len(part) > 1 and part.startswith("0"):
        radix, digits = 8, part[1:]
    if not digits:
        return 0
    if not digits.isascii() or not digits.isalnum():
        return None
    try:
        return int(digits, radix)
    except ValueError:
        return None


def _normalize_rest(rest: str) -> str:
    return rest if rest.startswith("/") else "/" + rest
