"""The tool pool's Ray shell: tool actors (the builtins, http_fetch, python_exec, workspace files
and MCP tools, off the session host).

The tool logic is plain Python in the core (:class:`~agentcluster.tools.ToolWorker`). Here:
:class:`ToolActor`, the pool member (the pool in :mod:`actors.pool` applies ``ray.remote``, as for
browser actors), whose health also names the Ray node it runs on, and :func:`start_tool_actor`,
one tool actor outside a pool.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.actor import ActorHandle

from agentcluster.config import Settings
from agentcluster.tools import NetworkPolicyFactory, ToolWorker

__all__ = ["NetworkPolicyFactory", "ToolActor", "start_tool_actor"]


class ToolActor(ToolWorker):
    """A tool pool member: a :class:`~agentcluster.tools.ToolWorker` (its arguments, its
    methods), named for Ray and the traces (``ToolActor/execute``)."""

    async def health(self) -> dict[str, Any]:
        """The worker's health, plus the Ray node it runs on (the console groups isolation by
        node)."""
        health = await super().health()
        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        return {**health, "node": node}


def start_tool_actor(settings: Settings, **options: Any) -> ActorHandle:
    """Start one tool actor outside a pool (``num_cpus=0``); ``options`` go to ToolActor."""
    remote: Any = ray.remote(ToolActor)
    handle: ActorHandle = remote.options(num_cpus=0).remote(settings, **options)
    return handle
