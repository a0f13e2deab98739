"""What the settings API does with provider settings: read masked, replace, test, rotate keys.

Secrets are encrypted before they are stored and masked whenever they leave; log lines name
providers and versions, never a key. A PUT replaces the whole document in one compare-and-set
write, so it is all-or-nothing; sending back the masked key from a GET keeps the stored one.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime

from agentcluster.errors import ConflictError, NotFoundError, ValidationFailed
from agentcluster.llm import ModelRoute
from agentcluster.providers._models import (
    ProviderIn,
    ProviderOut,
    ProviderSettingsIn,
    ProviderSettingsOut,
    ProviderTestIn,
    ProviderTestResult,
    StoredProvider,
    StoredSettings,
)
from agentcluster.providers._probe import Probe, probe_with_litellm, scrub
from agentcluster.providers._secrets import MASK, KeySource, SecretBox, mask_secret
from agentcluster.providers._store import SettingsStore, StoredDocument

__all__ = ["ProviderService", "RotationReport", "rotate_secrets"]

log = logging.getLogger(__name__)


class _Boxes:
    """The key, fetched once per operation and only when a secret is involved."""

    def __init__(self, keys: KeySource) -> None:
        self._keys = keys
        self._box: SecretBox | None = None

    async def get(self) -> SecretBox:
        if self._box is None:
            self._box = await self._keys.box(create=True)
        return self._box


class ProviderService:
    """Provider settings for the API (see the module docstring).

    Args:
        store: where the settings are kept.
        keys: where the secrets' key comes from.
        known_agents: the agent profiles; settings for any other agent are refused (None: any).
        probe: makes a test call (default: one LiteLLM call).
        probe_timeout_s: how long a test call may take.
    """

    def __init__(
        self,
        store: SettingsStore,
        keys: KeySource,
        *,
        known_agents: Collection[str] | None = None,
        probe: Probe | None = None,
        probe_timeout_s: float = 10.0,
    ) -> None:
        self.store = store
        self._keys = keys
        self._known_agents = frozenset(known_agents) if known_agents is not None else None
        self._probe: Probe = probe or probe_with_litellm
        self._probe_timeout_s = probe_timeout_s

    async def get(self) -> ProviderSettingsOut:
        """The settings with every key masked.

        Raises:
            ConfigError: stored keys exist but this process's key cannot decrypt them.
        """
        document = await self.store.read()
        return await self._out(document, StoredSettings.of(document.data), _Boxes(self._keys))

    async def put(self, body: ProviderSettingsIn) -> ProviderSettingsOut:
        """Validate, encrypt and store ``body`` as the next version; the result masked.

        Raises:
            ValidationFailed: an unknown agent, or a masked key that is not the stored one.
            ConflictError: ``body.version`` is not the stored version, or another write won.
            ConfigError: no key to encrypt with (production without SA01_CRYPTO_FERNET_KEY).
        """
        self._check_agents(body)
        current = await self.store.read()
        if body.version is not None and body.version != current.version:
            raise ConflictError(
                f"the provider settings are at version {current.version}, not {body.version}; "
                "read them again and retry"
            )
        previous = StoredSettings.of(current.data)
        boxes = _Boxes(self._keys)
        providers = [
            await self._stored(p, previous.provider(p.name), boxes) for p in body.providers
        ]
        stored = StoredSettings(providers=providers, agents=dict(body.agents))
        version = await self.store.write(stored.model_dump(mode="json"), current.version)
        log.info(
            "provider settings: version %d stored (providers: %s; agents: %s)",
            version,
            ", ".join(p.name for p in providers) or "none",
            ", ".join(sorted(stored.agents)) or "none",
        )
        written = StoredDocument(version=version, data={}, updated_at=datetime.now(UTC))
        return await self._out(written, stored, boxes)

    async def test(self, name: str, body: ProviderTestIn | None = None) -> ProviderTestResult:
        """Make one small call to provider ``name`` (``body.model`` or its first model).

        Raises:
            NotFoundError: no provider of that name is configured.
        """
        stored = StoredSettings.of((await self.store.read()).data)
        provider = stored.provider(name)
        if provider is None:
            raise NotFoundError(f"provider {name!r} is not configured")
        model = (body.model if body else None) or provider.models[0]
        api_key = None
        if provider.api_key_token is not None:
            api_key = (await _Boxes(self._keys).get()).decrypt(provider.api_key_token)
        route = ModelRoute(
            reference=f"{name}/{model}",
            litellm_model=f"{provider.kind}/{model}",
            api_base=provider.api_base,
            api_key=api_key,
        )
        outcome = await self._probe(route, self._probe_timeout_s)
        detail = scrub(outcome.detail, api_key)
        log.info("provider %s: test of %s %s: %s", name, model, _verdict(outcome.ok), detail)
        return ProviderTestResult(
            provider=name,
            model=model,
            ok=outcome.ok,
            latency_ms=outcome.latency_ms,
            status=outcome.status,
            detail=detail,
        )

    async def aclose(self) -> None:
        """Release the store."""
        await self.store.aclose()

    def _check_agents(self, body: ProviderSettingsIn) -> None:
        if self._known_agents is None:
            return
        for agent in body.agents:
            if agent not in self._known_agents:
                known = ", ".join(sorted(self._known_agents)) or "none"
                raise ValidationFailed(f"agents.{agent}: no such agent profile (known: {known})")

    async def _stored(
        self, provider: ProviderIn, previous: StoredProvider | None, boxes: _Boxes
    ) -> StoredProvider:
        fields = provider.model_dump(exclude={"api_key"})
        secret = provider.api_key
        if secret is None:
            return StoredProvider(**fields)
        if MASK not in secret:
            return StoredProvider(**fields, api_key_token=(await boxes.get()).encrypt(secret))
        token = previous.api_key_token if previous is not None else None
        if token is None or mask_secret((await boxes.get()).decrypt(token)) != secret:
            raise ValidationFailed(
                f"providers.{provider.name}.api_key: a masked value that is not this provider's "
                "stored key; send the clear key, the masked value from GET unchanged, or null"
            )
        return StoredProvider(**fields, api_key_token=token)

    async def _out(
        self, document: StoredDocument, stored: StoredSettings, boxes: _Boxes
    ) -> ProviderSettingsOut:
        providers = []
        for provider in stored.providers:
            masked = None
            if provider.api_key_token is not None:
                masked = mask_secret((await boxes.get()).decrypt(provider.api_key_token))
            fields = provider.model_dump(exclude={"api_key_token"})
            providers.append(ProviderOut(**fields, api_key=masked))
        return ProviderSettingsOut(
            version=document.version,
            updated_at=document.updated_at,
            providers=providers,
            agents=dict(stored.agents),
        )


def _verdict(ok: bool) -> str:
    return "succeeded" if ok else "failed"


@dataclass(frozen=True)
class RotationReport:
    """What a rotation did: how many secrets of how many providers, and the new version."""

    providers: int
    secrets: int
    version: int


async def rotate_secrets(store: SettingsStore, old: SecretBox, new: SecretBox) -> RotationReport:
    """Re-encrypt every stored secret from ``old``'s keys to ``new``'s first key, all or nothing.

    Every token is re-encrypted and checked in memory first; then one compare-and-set write stores
    them all, so a failure (a token ``old`` cannot open, a concurrent change) stores nothing.

    Raises:
        SecretKeyError: ``old`` cannot decrypt a stored secret (nothing was written).
        ConflictError: the settings changed during the rotation (nothing was written; run again).
    """
    document = await store.read()
    stored = StoredSettings.of(document.data)
    providers = []
    for provider in stored.providers:
        token = provider.api_key_token
        if token is not None:
            token = old.rotate(token, new)
            new.decrypt(token)  # proves the new key opens it before anything is written
        providers.append(provider.model_copy(update={"api_key_token": token}))
    rotated = stored.model_copy(update={"providers": providers})
    version = await store.write(rotated.model_dump(mode="json"), document.version)
    secrets = len(rotated.tokens())
    log.info("provider settings: %d secret(s) re-encrypted, version %d", secrets, version)
    return RotationReport(providers=len(providers), secrets=secrets, version=version)
