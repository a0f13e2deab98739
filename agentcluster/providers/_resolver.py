"""Turning an agent's model into a LiteLLM call, from the provider settings as they are now.

A :class:`ProviderResolver` keeps the decrypted settings of one version in memory and checks the
stored version at most every ``refresh_s`` seconds (one small read), so a change made through any
gateway replica reaches every session host within that time, without a restart. A refresh that
fails (store down, a key that cannot decrypt the new version) keeps the last good version and logs
why; only the very first load raises.

:class:`SettingsModels` wraps an :class:`~agentcluster.llm.LLM` for one agent: when the settings
name models for that agent, they replace the profile's model and fallbacks in each request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agentcluster import redact
from agentcluster.errors import AgentClusterError
from agentcluster.llm import LLM, DeltaSink, LlmRequest, LlmResult, ModelRoute
from agentcluster.providers._models import AgentModels, StoredSettings, split_reference
from agentcluster.providers._secrets import KeySource
from agentcluster.providers._store import SettingsStore, StoredDocument

__all__ = ["ModelRoute", "ProviderResolver", "SettingsModels"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Provider:
    kind: str
    api_base: str | None
    api_key: str | None = field(repr=False)


@dataclass(frozen=True)
class _Snapshot:
    version: int
    providers: dict[str, _Provider]
    agents: dict[str, AgentModels]


class ProviderResolver:
    """The provider settings of the newest version this process could read (module docstring);
    the LLM client's :class:`~agentcluster.llm.ModelRoutes`.

    Args:
        store: where the settings are kept.
        keys: where the key that decrypts their secrets comes from.
        refresh_s: the longest a change takes to be seen here.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        store: SettingsStore,
        keys: KeySource,
        *,
        refresh_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._keys = keys
        self._refresh_s = refresh_s
        self._clock = clock
        self._snapshot: _Snapshot | None = None
        self._next_check = 0.0
        self._lock = asyncio.Lock()
        self._last_failure: str | None = None

    @property
    def version(self) -> int | None:
        """The version in use (None before the first load)."""
        return self._snapshot.version if self._snapshot else None

    async def route(self, model: str) -> ModelRoute | None:
        """Where ``model`` goes when its prefix names a configured provider, else None (the LLM
        client's own settings apply).

        Raises:
            InfrastructureError: the first load failed (the store is unreachable).
            ConfigError: the first load found secrets this process's key cannot decrypt.
        """
        snapshot = await self._current()
        name, provider_model = split_reference(model)
        provider = snapshot.providers.get(name)
        if provider is None or not provider_model:
            return None
        return ModelRoute(
            reference=model,
            litellm_model=f"{provider.kind}/{provider_model}",
            api_base=provider.api_base,
            api_key=provider.api_key,
        )

    async def agent_models(self, agent: str) -> AgentModels | None:
        """The agent's models from the settings, or None to keep its profile's."""
        return (await self._current()).agents.get(agent)

    async def refresh(self) -> int:
        """Check the stored version now (not waiting for ``refresh_s``); the version in use."""
        self._next_check = 0.0
        return (await self._current()).version

    async def aclose(self) -> None:
        """Release the store."""
        await self._store.aclose()

    async def _current(self) -> _Snapshot:
        snapshot = self._snapshot
        if snapshot is not None and self._clock() < self._next_check:
            return snapshot
        async with self._lock:
            if self._snapshot is not None and self._clock() < self._next_check:
                return self._snapshot
            await self._refresh()
            self._next_check = self._clock() + self._refresh_s
            assert self._snapshot is not None  # _refresh sets it or raises
            return self._snapshot

    async def _refresh(self) -> None:
        try:
            version = await self._store.version()
            if self._snapshot is not None and version == self._snapshot.version:
                return
            self._snapshot = await self._load(await self._store.read())
        except AgentClusterError as exc:
            if self._snapshot is None:
                raise
            self._log_failure(exc)
            return
        if self._last_failure is not None:
            log.info("provider settings: version %d readable again", self._snapshot.version)
        self._last_failure = None
        log.debug("provider settings: using version %d", self._snapshot.version)

    def _log_failure(self, exc: AgentClusterError) -> None:
        # Once per distinct failure, not on every check: the store may stay down for a while.
        if exc.message == self._last_failure:
            return
        self._last_failure = exc.message
        version = self._snapshot.version if self._snapshot else 0
        log.warning("provider settings: keeping version %d; refreshing failed: %s", version, exc)

    async def _load(self, document: StoredDocument) -> _Snapshot:
        stored = StoredSettings.of(document.data)
        box = await self._keys.box() if stored.tokens() else None
        providers = {
            p.name: _Provider(
                kind=p.kind,
                api_base=p.api_base,
                api_key=box.decrypt(p.api_key_token) if box and p.api_key_token else None,
            )
            for p in stored.providers
        }
        # Error texts and log lines of this process never show these keys (agentcluster.redact).
        redact.remember(*(provider.api_key for provider in providers.values()))
        return _Snapshot(version=document.version, providers=providers, agents=dict(stored.agents))


class SettingsModels:
    """An :class:`~agentcluster.llm.LLM` for one agent whose models the settings may replace.

    Args:
        inner: the LLM that makes the calls (the LiteLLM client, routing through the resolver).
        resolver: the provider settings.
        agent: the agent's name, as the settings' ``agents`` key it.
    """

    def __init__(self, inner: LLM, resolver: ProviderResolver, agent: str) -> None:
        self._inner = inner
        self._resolver = resolver
        self._agent = agent

    async def complete(self, request: LlmRequest, on_delta: DeltaSink | None = None) -> LlmResult:
        """The inner LLM's answer, asked of the agent's models from the settings if any."""
        models = await self._resolver.agent_models(self._agent)
        if models is not None:
            request = request.model_copy(
                update={"model": models.model, "fallback_models": list(models.fallback_models)}
            )
        return await self._inner.complete(request, on_delta)
