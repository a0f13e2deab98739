"""The composition root: where the core's ports meet their adapters for a process of the cluster.

The core (``agentcluster/``) defines the ports and never imports the Ray edge; this module, at the
edge, builds what a process needs:

* :func:`build_runtime_deps`: a session host's store, LLM client, tool pools, policy, budgets and
  one agent loop per profile (each SessionHost actor calls it once);
* :func:`connect_runtime`: the in-cluster :class:`~agentcluster.runtime.Runtime` of a gateway
  replica, the Kafka inbound worker or a script, routing to SessionHost actors.

It lives in ``actors/`` rather than ``deployments/`` because the session hosts (``actors/``) build
their dependencies here, and ``actors/`` never imports ``deployments/``.
"""

from __future__ import annotations

from agentcluster import llm
from agentcluster.agent import AgentLoop, load_profiles
from agentcluster.bootstrap import open_state_store
from agentcluster.config import Settings, load_settings
from agentcluster.limits import open_budget_guard
from agentcluster.policy import build_policy_engine
from agentcluster.providers import SettingsModels, open_provider_resolver
from agentcluster.runtime import Runtime, RuntimeDeps
from agentcluster.tools import PolicyEngine
from agentcluster.tracing import configure_tracing

__all__ = ["build_runtime_deps", "connect_runtime"]


async def build_runtime_deps(
    settings: Settings, *, policy: PolicyEngine | None = None
) -> RuntimeDeps:
    """Store, LLM client (with per-model breakers), tools, policy (``policy``, else the engine
    the settings name), budgets and one loop per agent, for this process."""
    # The tool pools pull in the browser actors: loaded when a host builds, not when
    # actors.session is imported (a gateway replica imports it for the router only).
    from actors.executor import ActorToolExecutor

    profiles = load_profiles(settings.runtime.agents_dir)
    store = await open_state_store(settings)
    # Provider settings (GET/PUT /v1/settings/providers) route models and may replace an agent's
    # models; a change is seen within SA01_LLM_SETTINGS_REFRESH_S, without a restart.
    resolver = await open_provider_resolver(settings, state_store=store)
    # llm.LiteLLMClient loads LiteLLM on first access (seconds, ~200 MB): here, not at import.
    client = llm.LiteLLMClient(
        settings.llm, llm.BreakerRegistry.from_settings(settings.llm), routes=resolver
    )
    executor = await ActorToolExecutor.create(settings, profiles.values(), store)
    policy = policy or build_policy_engine(settings)
    # The tenant's daily token and cost budgets, checked before each LLM call of every agent.
    budget = open_budget_guard(settings, store)
    loops = {
        name: AgentLoop(
            profile,
            SettingsModels(client, resolver, name),
            executor,
            policy,
            llm.trim_to_window,
            budget,
        )
        for name, profile in profiles.items()
    }
    return RuntimeDeps(store=store, loops=loops)


async def connect_runtime(settings: Settings | None = None) -> Runtime:
    """The runtime of the Ray cluster this process is connected to (``ray.init`` first).

    Opens the state store (running migrations) and routes to SessionHost actors, starting the
    host set ahead of traffic. Configures this process's tracing unless something did before (a
    gateway replica does), so calls to the hosts continue the caller's trace.
    """
    # actors.session imports this module (its hosts build their dependencies here).
    from actors.session import RaySessionRouter

    settings = settings or load_settings()
    configure_tracing(settings.tracing, "runtime")
    store = await open_state_store(settings)
    router = RaySessionRouter(settings)
    router.warm_up()
    return Runtime(store, router, notify_timeout_s=settings.runtime.notify_timeout_s)
