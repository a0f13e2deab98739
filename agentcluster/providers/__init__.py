"""LLM provider settings: models, keys and base URLs managed at run time, secrets encrypted.

* :class:`ProviderService`: what ``GET/PUT /v1/settings/providers`` and test-connection do;
* :class:`ProviderResolver`: what the LLM client asks to route a model (refreshes on change);
* :class:`SettingsStore`: where the settings live (Redis, or the state store's ``settings`` table);
* :class:`SecretBox` and :func:`key_source`: Fernet encryption under ``SA01_CRYPTO_FERNET_KEY``;
* :func:`rotate_secrets`: re-encrypt everything under a new key (``agentcluster secrets rotate``).
"""

from agentcluster.llm import ModelRoute
from agentcluster.providers._factory import (
    open_provider_resolver,
    open_provider_service,
    open_settings_store,
)
from agentcluster.providers._models import (
    NAME_PATTERN,
    AgentModels,
    ProviderIn,
    ProviderOut,
    ProviderSettingsIn,
    ProviderSettingsOut,
    ProviderTestIn,
    ProviderTestResult,
    StoredProvider,
    StoredSettings,
    split_reference,
)
from agentcluster.providers._probe import Probe, ProbeOutcome, probe_with_litellm, scrub
from agentcluster.providers._resolver import ProviderResolver, SettingsModels
from agentcluster.providers._secrets import (
    KEY_VARIABLE,
    MASK,
    KeyFile,
    KeySource,
    NoKey,
    SecretBox,
    StaticKeys,
    is_embedded,
    key_file_path,
    key_source,
    mask_secret,
    read_key_file,
    write_key_file,
)
from agentcluster.providers._service import ProviderService, RotationReport, rotate_secrets
from agentcluster.providers._store import (
    RedisSettingsStore,
    SettingsStore,
    SqlSettingsStore,
    StoredDocument,
)

__all__ = [
    "KEY_VARIABLE",
    "MASK",
    "NAME_PATTERN",
    "AgentModels",
    "KeyFile",
    "KeySource",
    "ModelRoute",
    "NoKey",
    "Probe",
    "ProbeOutcome",
    "ProviderIn",
    "ProviderOut",
    "ProviderResolver",
    "ProviderService",
    "ProviderSettingsIn",
    "ProviderSettingsOut",
    "ProviderTestIn",
    "ProviderTestResult",
    "RedisSettingsStore",
    "RotationReport",
    "SecretBox",
    "SettingsModels",
    "SettingsStore",
    "SqlSettingsStore",
    "StaticKeys",
    "StoredDocument",
    "StoredProvider",
    "StoredSettings",
    "is_embedded",
    "key_file_path",
    "key_source",
    "mask_secret",
    "open_provider_resolver",
    "open_provider_service",
    "open_settings_store",
    "probe_with_litellm",
    "read_key_file",
    "rotate_secrets",
    "scrub",
    "split_reference",
    "write_key_file",
]
