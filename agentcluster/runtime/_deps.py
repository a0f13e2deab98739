"""Builds a process's runtime dependencies from the settings (store, LLM, tools, agent loops)."""

from __future__ import annotations

from agentcluster.agent import AgentLoop, load_profiles
from agentcluster.bootstrap import open_state_store
from agentcluster.config import Settings
from agentcluster.limits import open_budget_guard
from agentcluster.llm import BreakerRegistry, ChatMessage, LiteLLMClient, ToolSchema, trim_history
from agentcluster.policy import build_policy_engine
from agentcluster.providers import SettingsModels, open_provider_resolver
from agentcluster.runtime._host import RuntimeDeps

__all__ = ["build_runtime_deps", "trim_to_window"]


def trim_to_window(
    messages: list[ChatMessage], context_window: int, reserve: int, tools: list[ToolSchema]
) -> list[ChatMessage]:
    """The agent loop's Trimmer: tiktoken counts, system prompt and latest turns kept."""
    kept, _dropped, _tokens = trim_history(messages, context_window, reserve, tools)
    return kept


async def build_runtime_deps(settings: Settings) -> RuntimeDeps:
    """Store, LLM client (with per-model breakers), tools, policy, budgets and one loop per
    agent."""
    # Tools run on pooled actors (the Ray edge, imported only here): none runs in a host.
    from actors.executor import ActorToolExecutor

    profiles = load_profiles(settings.runtime.agents_dir)
    store = await open_state_store(settings)
    # Provider settings (GET/PUT /v1/settings/providers) route models and may replace an agent's
    # models; a change is seen within SA01_LLM_SETTINGS_REFRESH_S, without a restart.
    resolver = await open_provider_resolver(settings, state_store=store)
    llm = LiteLLMClient(settings.llm, BreakerRegistry.from_settings(settings.llm), routes=resolver)
    executor = await ActorToolExecutor.create(settings, profiles.values(), store)
    policy = build_policy_engine(settings)
    # The tenant's daily token and cost budgets, checked before each LLM call of every agent.
    budget = open_budget_guard(settings, store)
    loops = {
        name: AgentLoop(
            profile, SettingsModels(llm, resolver, name), executor, policy, trim_to_window, budget
        )
        for name, profile in profiles.items()
    }
    return RuntimeDeps(store=store, loops=loops)
