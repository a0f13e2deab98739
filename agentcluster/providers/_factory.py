"""Builds the provider settings pieces from the settings tree: the one place that picks the
settings store (Redis or the state store's table) and the key source."""

from __future__ import annotations

from collections.abc import Collection

from agentcluster.bootstrap import open_state_store
from agentcluster.config import Settings
from agentcluster.providers._probe import Probe
from agentcluster.providers._resolver import ProviderResolver
from agentcluster.providers._secrets import key_source
from agentcluster.providers._service import ProviderService
from agentcluster.providers._store import RedisSettingsStore, SettingsStore, SqlSettingsStore
from agentcluster.store import SharedDatabase

__all__ = ["open_provider_resolver", "open_provider_service", "open_settings_store"]


async def open_settings_store(
    settings: Settings, *, state_store: SharedDatabase | None = None
) -> SettingsStore:
    """Redis when ``SA01_REDIS_URL`` is set, else the state store's ``settings`` table.

    Args:
        settings: the settings tree.
        state_store: the process's open state store to share; without it one is opened and
            closed with the settings store.
    """
    if settings.redis.url is not None:
        return RedisSettingsStore(settings.redis.url, prefix=settings.runtime.namespace)
    if state_store is not None:
        return SqlSettingsStore(state_store)
    return SqlSettingsStore(await open_state_store(settings), owns_store=True)


async def open_provider_service(
    settings: Settings,
    *,
    state_store: SharedDatabase | None = None,
    known_agents: Collection[str] | None = None,
    probe: Probe | None = None,
) -> ProviderService:
    """The settings API's service (close it with ``aclose``)."""
    return ProviderService(
        await open_settings_store(settings, state_store=state_store),
        key_source(settings),
        known_agents=known_agents,
        probe=probe,
        probe_timeout_s=settings.llm.probe_timeout_s,
    )


async def open_provider_resolver(
    settings: Settings, *, state_store: SharedDatabase | None = None
) -> ProviderResolver:
    """The LLM client's view of the provider settings (close it with ``aclose``)."""
    return ProviderResolver(
        await open_settings_store(settings, state_store=state_store),
        key_source(settings),
        refresh_s=settings.llm.settings_refresh_s,
    )
