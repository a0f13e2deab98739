"""The agent runtime: sessions as virtual actors on hosts, and the in-cluster API to reach them."""

from agentcluster.config import Settings
from agentcluster.runtime._activation import Activation, history_from_messages
from agentcluster.runtime._api import Runtime, SessionRouter
from agentcluster.runtime._feed import Delta, LiveFeed, Overflow, StreamItem
from agentcluster.runtime._host import HostStats, RuntimeDeps, SessionHostCore
from agentcluster.runtime._hostset import plan_host_count

__all__ = [
    "Activation",
    "Delta",
    "HostStats",
    "LiveFeed",
    "Overflow",
    "Runtime",
    "RuntimeDeps",
    "SessionHostCore",
    "SessionRouter",
    "StreamItem",
    "build_runtime_deps",
    "history_from_messages",
    "plan_host_count",
]


async def build_runtime_deps(settings: Settings) -> RuntimeDeps:
    """Store, LLM, tools and agent loops for this process (imports LiteLLM lazily: it is slow)."""
    from agentcluster.runtime._deps import build_runtime_deps as build

    return await build(settings)
