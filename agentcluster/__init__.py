"""agentcluster: a Ray-distributed compute cluster for LLM agent sessions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentcluster.client import HandleClient

__all__ = ["connect"]


def connect(api_key: str, **options: Any) -> HandleClient:
    """The in-cluster client over the gateway's Serve DeploymentHandle (see agentcluster.client)."""
    from agentcluster.client import connect as _connect

    return _connect(api_key, **options)
