"""A2A agent cards of the cluster's agents (pure: a profile and URLs in, a card out).

Each agent's card names its JSON-RPC endpoint (one URL, announced for protocol versions 1.0 and
0.3, which the endpoint both speaks), streaming, the bearer scheme (an agentcluster API key) and
its skills: the agent itself (its profile's description), then one skill per tool it may use.
"""

from __future__ import annotations

from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)
from a2a.utils.constants import PROTOCOL_VERSION_0_3, PROTOCOL_VERSION_1_0, TransportProtocol

from agentcluster.agent import AgentProfile

__all__ = ["A2A_PREFIX", "BEARER_SCHEME", "CARD_VERSION", "agent_card", "default_agent"]

A2A_PREFIX = "/a2a"
"""Each agent's JSON-RPC endpoint is ``/a2a/{agent}``; its card is under it, at
``/a2a/{agent}/.well-known/agent-card.json``."""
BEARER_SCHEME = "bearer"
CARD_VERSION = "1"
MODES = ["text/plain", "application/json"]


def default_agent(names: list[str]) -> str | None:
    """The agent of ``/.well-known/agent-card.json``: ``default`` if there is one, else the
    first by name (None without agents)."""
    if "default" in names:
        return "default"
    return min(names, default=None)


def _skills(profile: AgentProfile) -> list[AgentSkill]:
    about = profile.description or f"The agentcluster agent {profile.name}."
    skills = [
        AgentSkill(
            id=profile.name,
            name=profile.name,
            description=about,
            tags=["agentcluster", "conversation"],
            input_modes=MODES,
            output_modes=MODES,
        )
    ]
    for tool in profile.tools:
        description = f"Answers using its {tool} tool (run server side, shown as tool messages)."
        skills.append(
            AgentSkill(id=f"tool:{tool}", name=tool, description=description, tags=[tool])
        )
    return skills


def agent_card(profile: AgentProfile, rpc_url: str) -> AgentCard:
    """The card of ``profile``'s agent, whose JSON-RPC endpoint is ``rpc_url`` (absolute)."""
    interfaces = [
        AgentInterface(
            url=rpc_url, protocol_binding=TransportProtocol.JSONRPC.value, protocol_version=version
        )
        for version in (PROTOCOL_VERSION_1_0, PROTOCOL_VERSION_0_3)
    ]
    bearer = HTTPAuthSecurityScheme(
        scheme="bearer", description="An agentcluster API key (Authorization: Bearer <key>)"
    )
    return AgentCard(
        name=profile.name,
        description=profile.description or f"The agentcluster agent {profile.name}.",
        supported_interfaces=interfaces,
        version=CARD_VERSION,
        capabilities=AgentCapabilities(streaming=True, push_notifications=False),
        security_schemes={BEARER_SCHEME: SecurityScheme(http_auth_security_scheme=bearer)},
        security_requirements=[SecurityRequirement(schemes={BEARER_SCHEME: StringList()})],
        default_input_modes=MODES,
        default_output_modes=["text/plain"],
        skills=_skills(profile),
    )
