"""The SSRF guard: classify addresses, resolve hosts once, ask a network policy for every address.

A fetch is only as safe as the address it connects to, so the guard decides on *resolved
addresses*, not on names: the host is resolved once, every address is classified and put to a
:class:`NetworkPolicy`, and the caller connects to one of exactly those addresses (no second DNS
lookup, so a name cannot be re-pointed at an internal address in between: DNS rebinding).

Categories, most specific first::

    metadata     cloud instance metadata: 169.254.169.254, fd00:ec2::254, metadata.google.internal
    unspecified  0.0.0.0/8, ::
    loopback     127.0.0.0/8, ::1
    link_local   169.254.0.0/16, fe80::/10
    private      RFC 1918, CGNAT 100.64.0.0/10, ULA fc00::/7, site-local fec0::/10
    multicast    224.0.0.0/4, ff00::/8
    reserved     everything else that is not globally routable (documentation, benchmarking,
                 IETF assignments 192.0.0.0/24 and 2001::/23, IPv6 outside 2000::/3, ...)
    public       the rest

IPv6 addresses that carry an IPv4 address are judged by the IPv4 address they carry
(:func:`embedded_ipv4`): IPv4-compatible ``::/96`` (``::127.0.0.1``; not ``::`` and ``::1``),
IPv4-mapped ``::ffff:0:0/96``, IPv4-translated ``::ffff:0:0:0/96``, NAT64 ``64:ff9b::/96`` and
the local-use ``64:ff9b:1::/48`` (the IPv4 in the last 32 bits), 6to4 ``2002::/16`` (bits
16-47), and Teredo ``2001::/32``, judged by the stricter of its server and (obfuscated) client
address. A zone id (``fe80::1%eth0``) is not part of the address and is dropped first.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from agentcluster.errors import ConfigError, ToolError
from agentcluster.tools._base import PolicyDecision

__all__ = [
    "DEFAULT_ALLOW_PORTS",
    "METADATA_HOSTS",
    "AddressCategory",
    "CheckedTarget",
    "DefaultNetworkPolicy",
    "IPAddress",
    "NetworkPolicy",
    "Resolver",
    "SsrfGuard",
    "SystemResolver",
    "classify_address",
    "classify_target",
    "embedded_ipv4",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

AddressCategory = Literal[
    "loopback",
    "private",
    "link_local",
    "metadata",
    "reserved",
    "multicast",
    "unspecified",
    "public",
]

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)

METADATA_HOSTS: frozenset[str] = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2"}
)

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_ULA = ipaddress.ip_network("fc00::/7")
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_RFC1918 = tuple(
    ipaddress.ip_network(cidr) for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
# Not globally routable, yet ``is_global`` in some Python versions.
_RESERVED = tuple(ipaddress.ip_network(cidr) for cidr in ("192.0.0.0/24", "2001::/23", "3fff::/20"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_LAST_32_BITS = tuple(
    ipaddress.ip_network(cidr)
    for cidr in ("::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48")
)
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_TEREDO = ipaddress.ip_network("2001::/32")
_STRICTEST_FIRST: tuple[AddressCategory, ...] = (
    "metadata",
    "loopback",
    "unspecified",
    "link_local",
    "private",
    "multicast",
    "reserved",
    "public",
)


def classify_address(address: IPAddress | str) -> AddressCategory:
    """The category of one IP address (see the module docstring for the table).

    An IPv6 address that carries IPv4 addresses gets the strictest of their categories.

    Raises:
        ValueError: ``address`` is a string that is not an IP address.
    """
    ip = _without_zone(ipaddress.ip_address(address) if isinstance(address, str) else address)
    carried = embedded_ipv4(ip)
    if carried:
        return min((_classify_plain(v4) for v4 in carried), key=_STRICTEST_FIRST.index)
    return _classify_plain(ip)


def embedded_ipv4(address: IPAddress) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address carries (see the module docstring); () if none.

    Teredo gives two: the server's and the client's (its bits inverted, as Teredo stores it).
    """
    if not isinstance(address, ipaddress.IPv6Address):
        return ()
    ip = _without_zone(address)
    value = int(ip)
    if any(ip in network for network in _LAST_32_BITS):
        return (ipaddress.IPv4Address(value & 0xFFFFFFFF),)
    if ip in _IPV4_COMPATIBLE and value > 1:
        return (ipaddress.IPv4Address(value),)
    if ip in _SIX_TO_FOUR:
        return (ipaddress.IPv4Address((value >> 80) & 0xFFFFFFFF),)
    if ip in _TEREDO:
        server = ipaddress.IPv4Address((value >> 64) & 0xFFFFFFFF)
        return server, ipaddress.IPv4Address(~value & 0xFFFFFFFF)
    return ()


def _without_zone(ip: IPAddress) -> IPAddress:
    # ipaddress keeps "%eth0" in equality and hashing: fd00:ec2::254%eth0 would miss the
    # metadata set. The zone only picks an interface; the address is the same.
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        return ipaddress.IPv6Address(int(ip))
    return ip


def _classify_plain(ip: IPAddress) -> AddressCategory:
    if ip in METADATA_ADDRESSES:
        return "metadata"
    if ip.is_unspecified or ip in _THIS_NETWORK:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if _is_private(ip):
        return "private"
    if ip.is_multicast:
        return "multicast"
    if not ip.is_global or ip.is_reserved or any(ip in network for network in _RESERVED):
        return "reserved"
    return "public"


def _is_private(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv4Address):
        return ip in _CGNAT or any(ip in network for network in _RFC1918)
    return ip in _ULA or ip in _SITE_LOCAL


def classify_target(host: str, ip: IPAddress) -> AddressCategory:
    """The category of connecting to ``ip`` for ``host``: a metadata *name* wins over the IP."""
    if _normalize_host(host) in METADATA_HOSTS:
        return "metadata"
    return classify_address(ip)


def _normalize_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


class Resolver(Protocol):
    """Resolves a host name to addresses (the guard's only DNS access; tests inject their own)."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """The addresses ``host`` resolves to; raise ToolError when it does not resolve."""
        ...


class SystemResolver:
    """Resolves through the event loop's ``getaddrinfo`` (the system resolver)."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """The distinct addresses of ``host``, in resolver order.

        Raises:
            ToolError: the name does not resolve.
        """
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ToolError(f"cannot resolve host {host!r}: {exc.strerror}") from None
        addresses: list[IPAddress] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            # An IPv6 sockaddr may carry a scope ("fe80::1%eth0"); the scope is not part of the IP.
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if ip not in addresses:
                addresses.append(ip)
        return addresses


class NetworkPolicy(Protocol):
    """Port: decides whether a tool may connect to one resolved address."""

    async def decide_network(
        self,
        *,
        tenant_id: str,
        agent: str,
        tool: str,
        scheme: str,
        host: str,
        ip: str,
        port: int,
        category: AddressCategory,
    ) -> PolicyDecision: ...


DEFAULT_ALLOW_PORTS: tuple[int, ...] = (80, 443)
"""Ports of public addresses a tool may connect to unless configured otherwise (as the policy)."""


class DefaultNetworkPolicy:
    """Public addresses on ports 80 and 443 allowed; everything else denied unless allowlisted.

    Used when no policy engine is configured, and by tests; it decides as the shipped Rego policy
    with its default data does. An allowlisted host or CIDR opens what it names on every port
    (the operator named that destination), except metadata endpoints: those need their own
    explicit entry (the metadata host name, or a CIDR that names the metadata address itself,
    such as ``169.254.169.254/32``), so allowing ``169.254.0.0/16`` does not open instance
    credentials.

    Args:
        allow_hosts: host names (case-insensitive, exact match) allowed whatever they resolve to.
        allow_cidrs: networks such as ``"127.0.0.1/32"`` or ``"10.0.0.0/8"`` that are allowed.
        allow_ports: the ports public addresses may be reached on.

    Raises:
        ConfigError: a CIDR does not parse, or a port is not 1-65535.
    """

    engine = "default-network"

    def __init__(
        self,
        allow_hosts: Iterable[str] = (),
        allow_cidrs: Iterable[str] = (),
        allow_ports: Iterable[int] = DEFAULT_ALLOW_PORTS,
    ) -> None:
        self._hosts = frozenset(_normalize_host(host) for host in allow_hosts)
        self._networks = tuple(_network(cidr) for cidr in allow_cidrs)
        self._ports = tuple(_port(port) for port in allow_ports)

    async def decide_network(
        self,
        *,
        tenant_id: str,
        agent: str,
        tool: str,
        scheme: str,
        host: str,
        ip: str,
        port: int,
        category: AddressCategory,
    ) -> PolicyDecision:
        """Allow public addresses on the allowed ports and allowlisted targets; deny the rest."""
        if category == "public" and port in self._ports:
            return self._decide(True, "public address")
        allowlisted = self._allowlisted(host, ip, category)
        if allowlisted is not None:
            return self._decide(True, allowlisted)
        if category == "public":
            ports = ", ".join(str(p) for p in self._ports) or "none"
            return self._decide(False, f"port {port} of public addresses is not allowed ({ports})")
        return self._decide(False, f"{category} address {ip} is not allowlisted")

    def _allowlisted(self, host: str, ip: str, category: AddressCategory) -> str | None:
        if _normalize_host(host) in self._hosts:
            return f"host {host} is allowlisted"
        address = _without_zone(ipaddress.ip_address(ip))
        for network in self._networks:
            if address in network and (category != "metadata" or address in _exact(network)):
                return f"{ip} is in allowlisted network {network}"
        return None

    def _decide(self, allowed: bool, reason: str) -> PolicyDecision:
        return PolicyDecision(allowed=allowed, reason=reason, engine=self.engine)


def _port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"allow_ports: {port!r} is not a port (an integer from 1 to 65535)")
    return port


def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise ConfigError(f"allow_cidrs: {cidr!r} is not a network: {exc}") from None


def _exact(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> frozenset[IPAddress]:
    # The metadata addresses a network names on its own (a /32 or /128, or a tiny range).
    if network.num_addresses > 4:
        return frozenset()
    return frozenset(network)


@dataclass(frozen=True)
class CheckedTarget:
    """A host whose every resolved address the policy allowed; connect only to ``addresses``."""

    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]
    categories: tuple[AddressCategory, ...]


class SsrfGuard:
    """Resolves a target once and asks the policy about every address before any connection.

    Args:
        policy: decides each (host, address, port).
        resolver: name resolution; the system resolver by default.
    """

    def __init__(self, policy: NetworkPolicy, resolver: Resolver | None = None) -> None:
        self._policy = policy
        self._resolver = resolver or SystemResolver()

    async def check(
        self, *, scheme: str, host: str, port: int, tenant_id: str, agent: str, tool: str
    ) -> CheckedTarget:
        """Resolve ``host`` and require the policy to allow every address it resolves to.

        One denied address denies the whole host: otherwise a name resolving to both a public
        and an internal address would reach the internal one whenever the public one fails.

        Raises:
            ToolError: the host does not resolve, or the policy denied an address (the message
                names the host, the address, its category and the policy's reason).
        """
        addresses = await self._addresses(host, port)
        categories: list[AddressCategory] = []
        for ip in addresses:
            category = classify_target(host, ip)
            # ::ffff:a.b.c.d is the IPv4 host a.b.c.d: policies see (and allowlist) the IPv4 form.
            mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
            decision = await self._policy.decide_network(
                tenant_id=tenant_id,
                agent=agent,
                tool=tool,
                scheme=scheme,
                host=host,
                ip=str(mapped or ip),
                port=port,
                category=category,
            )
            if not decision.allowed:
                raise ToolError(
                    f"{tool} to {host} denied: it resolves to {ip} ({category}); "
                    f"policy {decision.engine or 'unknown'}: {decision.reason or 'no reason given'}"
                )
            categories.append(category)
        return CheckedTarget(scheme, host, port, tuple(addresses), tuple(categories))

    async def _addresses(self, host: str, port: int) -> list[IPAddress]:
        literal = _ip_literal(host)
        if literal is not None:
            return [literal]
        addresses = await self._resolver.resolve(host, port)
        if not addresses:
            raise ToolError(f"cannot resolve host {host!r}: no addresses")
        return addresses


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return _without_zone(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None
