"""The agent runtime: sessions as virtual actors on hosts, and the in-cluster API to reach them."""

from agentcluster.runtime._activation import Activation, history_from_messages
from agentcluster.runtime._api import Runtime, RuntimeStore, SessionRouter
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
    "RuntimeStore",
    "SessionHostCore",
    "SessionRouter",
    "StreamItem",
    "history_from_messages",
    "plan_host_count",
]
