"""The input documents of ``data.agentcluster.authz.decision`` and how its answer is read.

Three kinds of request (the shapes are fixed; ``policies/README.md`` documents them):

- ``tool``: one tool call (tenant, agent, session, tool name, parsed arguments);
- ``network``: one network target of ``http_fetch`` after DNS resolution, asked for every hop;
- ``api``: one API action of a tenant (``session.*``, ``keys.manage``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from agentcluster.tools import AddressCategory, PolicyDecision, ToolInvocation
from agentcluster.tools import classify_address as classify

__all__ = [
    "ApiAction",
    "NetworkCategory",
    "api_input",
    "classify_address",
    "decision_from_result",
    "network_input",
    "tool_input",
]

NetworkCategory = AddressCategory
"""A network target's category, as the SSRF guard classifies it (one definition)."""

ApiAction = Literal[
    "session.create",
    "session.read",
    "session.message",
    "session.cancel",
    "session.delete",
    "session.approve",
    "keys.manage",
]


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
    """The policy input for one network target (``host`` as written, ``ip`` as resolved, ``port``
    the one connected to: the shipped policy allows public addresses on its ``allow_ports``)."""
    return {
        "kind": "network",
        "tenant": tenant_id,
        "agent": agent,
        "tool": tool,
        "target": {"scheme": scheme, "host": host, "ip": ip, "port": port, "category": category},
    }


def api_input(
    tenant_id: str,
    action: ApiAction,
    *,
    agent: str | None = None,
    admin: bool = False,
    roles: Sequence[str] = (),
) -> dict[str, Any]:
    """The policy input for one API action (``agent`` is None for actions on no agent;
    ``roles``: the calling key's)."""
    return {
        "kind": "api",
        "tenant": tenant_id,
        "action": action,
        "agent": agent,
        "admin": admin,
        "roles": list(roles),
    }


def classify_address(ip: str) -> NetworkCategory:
    """The network category of an IP address, as the policy's ``target.category`` expects it:
    the SSRF guard's classification (one definition; see ``agentcluster.tools._ssrf``).

    IPv6 addresses that carry an IPv4 address (IPv4-compatible, -mapped and -translated, NAT64,
    6to4, Teredo) get the category of the IPv4 address they carry, as the policy computes it from
    ``ip`` itself; an IPv4-mapped address is best sent in its IPv4 form (the guard does).

    Raises:
        ValueError: ``ip`` is not an IP address.
    """
    return classify(ipaddress.ip_address(ip))


def decision_from_result(result: object, *, engine: str, source: str) -> PolicyDecision:
    """Read the policy's answer; anything but ``{"allowed": bool, "reason": str}`` (and an optional
    ``"ask": bool``) denies.

    Args:
        result: the value of ``data.agentcluster.authz.decision`` (None when undefined).
        engine: ``PolicyDecision.engine`` of the result.
        source: the engine as named in a denial's reason, e.g. ``"OPA at http://..."``.
    """
    if isinstance(result, Mapping):
        allowed = result.get("allowed")
        reason = result.get("reason")
        ask = result.get("ask", False)
        if isinstance(allowed, bool) and isinstance(reason, str) and isinstance(ask, bool):
            return PolicyDecision(allowed=allowed, reason=reason, engine=engine, ask=ask)
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
