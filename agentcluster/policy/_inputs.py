"""The input documents of ``data.agentcluster.authz.decision`` and how its answer is read.

Three kinds of request (the shapes are fixed; ``policies/README.md`` documents them):

- ``tool``: one tool call (tenant, agent, session, tool name, parsed arguments);
- ``network``: one network target of ``http_fetch`` after DNS resolution, asked for every hop;
- ``api``: one API action of a tenant (``session.*``, ``keys.manage``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, Literal

from agentcluster.tools._base import PolicyDecision, ToolInvocation

__all__ = [
    "ApiAction",
    "NetworkCategory",
    "api_input",
    "classify_address",
    "decision_from_result",
    "network_input",
    "tool_input",
]

NetworkCategory = Literal[
    "public",
    "loopback",
    "private",
    "link_local",
    "metadata",
    "reserved",
    "multicast",
    "unspecified",
]

ApiAction = Literal[
    "session.create",
    "session.read",
    "session.message",
    "session.cancel",
    "session.delete",
    "keys.manage",
]

# Cloud metadata endpoints (AWS/GCP/Azure IMDS, AWS IPv6 IMDS, ECS task metadata).
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2")
)

# The same ranges, in the same order, as `ip_ranges` in policies/authz.rego.
_RANGES: tuple[tuple[NetworkCategory, tuple[str, ...]], ...] = (
    ("loopback", ("127.0.0.0/8", "::1/128")),
    ("unspecified", ("0.0.0.0/8", "::/128")),
    ("link_local", ("169.254.0.0/16", "fe80::/10")),
    ("private", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")),
    ("multicast", ("224.0.0.0/4", "ff00::/8")),
    (
        "reserved",
        (
            "240.0.0.0/4",
            "192.0.0.0/24",
            "192.0.2.0/24",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "64:ff9b::/96",
            "100::/64",
            "2001:db8::/32",
        ),
    ),
)
_NETWORKS = tuple(
    (category, tuple(ipaddress.ip_network(cidr) for cidr in cidrs)) for category, cidrs in _RANGES
)


def tool_input(invocation: ToolInvocation) -> dict[str, Any]:
    """The policy input for one tool call."""
    return {
        "kind": "tool",
        "tenant": invocation.tenant_id,
        "agent": invocation.agent,
        "session": invocation.session_id,
        "tool": invocation.tool,
        "arguments": invocation.arguments,
    }


def network_input(
    *,
    tenant_id: str,
    agent: str,
    scheme: str,
    host: str,
    ip: str,
    port: int,
    category: NetworkCategory,
    tool: str = "http_fetch",
) -> dict[str, Any]:
    """The policy input for one network target (``host`` as written, ``ip`` as resolved)."""
    return {
        "kind": "network",
        "tenant": tenant_id,
        "agent": agent,
        "tool": tool,
        "target": {"scheme": scheme, "host": host, "ip": ip, "port": port, "category": category},
    }


def api_input(
    tenant_id: str, action: ApiAction, *, agent: str | None = None, admin: bool = False
) -> dict[str, Any]:
    """The policy input for one API action (``agent`` is None for actions on no agent)."""
    return {"kind": "api", "tenant": tenant_id, "action": action, "agent": agent, "admin": admin}


def classify_address(ip: str) -> NetworkCategory:
    """The network category of an IP address, as the policy's ``target.category`` expects it.

    IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) are classified by the IPv4 address inside;
    send that address as ``ip`` too (the policy treats ``::ffff:`` text as reserved). Addresses in
    none of the policy's ranges that Python does not consider global are "reserved".

    Raises:
        ValueError: ``ip`` is not an IP address.
    """
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in _METADATA_ADDRESSES:
        return "metadata"
    for category, networks in _NETWORKS:
        if any(address.version == net.version and address in net for net in networks):
            return category
    return "public" if address.is_global else "reserved"


def decision_from_result(result: object, *, engine: str, source: str) -> PolicyDecision:
    """Read the policy's answer; anything but ``{"allowed": bool, "reason": str}`` denies.

    Args:
        result: the value of ``data.agentcluster.authz.decision`` (None when undefined).
        engine: ``PolicyDecision.engine`` of the result.
        source: the engine as named in a denial's reason, e.g. ``"OPA at http://..."``.
    """
    if isinstance(result, Mapping):
        allowed = result.get("allowed")
        reason = result.get("reason")
        if isinstance(allowed, bool) and isinstance(reason, str):
            return PolicyDecision(allowed=allowed, reason=reason, engine=engine)
    if result is None:
        problem = "returned no decision (is the agentcluster.authz policy loaded?)"
    else:
        problem = f"returned a malformed decision: {_preview(result)}"
    return PolicyDecision(
        allowed=False, reason=f"policy engine ({source}) {problem}", engine=engine, failed=True
    )


def _preview(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
