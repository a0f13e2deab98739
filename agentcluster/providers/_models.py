"""Provider settings as the API takes and gives them, and as they are kept at rest.

A *model reference* is ``<provider name>/<model>`` (``local/demo``): the provider's LiteLLM kind,
base URL and key turn it into a LiteLLM call (``openai/demo`` at that base with that key). The
model part may itself contain slashes (``router/meta-llama/llama-3-8b``).

Secrets only travel inward in clear (:class:`ProviderIn.api_key`); outward they are masked
(:class:`ProviderOut.api_key`) and at rest they are Fernet tokens (:class:`StoredProvider`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "AgentModels",
    "ProviderIn",
    "ProviderOut",
    "ProviderSettingsIn",
    "ProviderSettingsOut",
    "ProviderTestIn",
    "ProviderTestResult",
    "StoredProvider",
    "StoredSettings",
    "split_reference",
]

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$"
REFERENCE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}/[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$"

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
ModelName = Annotated[str, Field(pattern=MODEL_PATTERN)]
ModelReference = Annotated[
    str, Field(pattern=REFERENCE_PATTERN, description="<provider name>/<model>, e.g. local/demo")
]


def split_reference(reference: str) -> tuple[str, str]:
    """``("local", "demo")`` for ``local/demo``: the provider name and the provider's model."""
    provider, _, model = reference.partition("/")
    return provider, model


def _invalid(message: str) -> PydanticCustomError:
    # A custom error keeps the message as written (no "Value error, " prefix in problem details).
    return PydanticCustomError("provider_settings", message)


def _check_api_base(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    parts = urlsplit(value.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise _invalid("expected an http(s)://host[:port][/path] URL")
    try:
        _ = parts.port
    except ValueError:
        raise _invalid("the port is not a number in 1..65535") from None
    if parts.username or parts.password:
        raise _invalid("put credentials in api_key, not in the URL")
    return value.strip().rstrip("/")


def _unique(values: list[str], what: str) -> list[str]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise _invalid(f"{what} {value!r} is listed twice")
        seen.add(value)
    return values


class _ProviderFields(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name = Field(description="how agents refer to this provider: <name>/<model>")
    kind: Name = Field(
        description="the LiteLLM provider prefix: openai, anthropic, azure, ollama, ..."
    )
    api_base: str | None = Field(default=None, description="the provider's base URL")
    models: list[ModelName] = Field(min_length=1, max_length=200)

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, value: str | None) -> str | None:
        return _check_api_base(value)

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str]) -> list[str]:
        return _unique(value, "model")


class ProviderIn(_ProviderFields):
    """A provider as an operator sends it."""

    api_key: str | None = Field(
        default=None,
        max_length=4096,
        repr=False,
        description="the clear key; the masked value from GET keeps the stored key; null: none",
    )

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if any(char.isspace() or not char.isprintable() for char in value.strip()):
            raise _invalid("an API key has no spaces or control characters")
        return value.strip()


class ProviderOut(_ProviderFields):
    """A provider as the API shows it: the key masked (``sk-…abcd``), never in clear."""

    api_key: str | None = Field(default=None, description="the masked key, or null for none")


class AgentModels(BaseModel):
    """An agent's models from the settings: they replace its profile's model and fallbacks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelReference
    fallback_models: list[ModelReference] = Field(default_factory=list, max_length=10)

    @model_validator(mode="after")
    def _distinct(self) -> AgentModels:
        _unique([self.model, *self.fallback_models], "model")
        return self

    def references(self) -> list[str]:
        """The model, then the fallbacks."""
        return [self.model, *self.fallback_models]


def _check_agents(providers: dict[str, list[str]], agents: dict[str, AgentModels]) -> None:
    for agent, models in agents.items():
        for reference in models.references():
            provider, model = split_reference(reference)
            if provider not in providers:
                known = ", ".join(sorted(providers)) or "none"
                raise _invalid(
                    f"agents.{agent}: provider {provider!r} of {reference!r} is not configured "
                    f"(configured: {known})"
                )
            if model not in providers[provider]:
                raise _invalid(
                    f"agents.{agent}: {reference!r}: provider {provider!r} lists no model "
                    f"{model!r} (its models: {', '.join(providers[provider])})"
                )


class ProviderSettingsIn(BaseModel):
    """The whole provider settings, as a PUT replaces them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int | None = Field(
        default=None,
        ge=0,
        strict=True,  # a JSON integer: not true/false, not "3"
        description="the version read; a newer stored one gives 409",
    )
    providers: list[ProviderIn] = Field(default_factory=list, max_length=50)
    agents: dict[Name, AgentModels] = Field(
        default_factory=dict, max_length=500, description="per agent: default and fallback models"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ProviderSettingsIn:
        _unique([p.name for p in self.providers], "provider")
        _check_agents({p.name: p.models for p in self.providers}, self.agents)
        return self


class ProviderSettingsOut(BaseModel):
    """The provider settings as stored (secrets masked) and their version."""

    model_config = ConfigDict(frozen=True)

    version: int
    updated_at: datetime | None = None
    providers: list[ProviderOut] = Field(default_factory=list)
    agents: dict[str, AgentModels] = Field(default_factory=dict)


class ProviderTestIn(BaseModel):
    """Which model a test-connection asks (default: the provider's first)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelName | None = None


class ProviderTestResult(BaseModel):
    """What one test call to a provider found. ``ok`` false is an answer, not an API error."""

    model_config = ConfigDict(frozen=True)

    provider: str
    model: str
    ok: bool
    latency_ms: float
    status: int | None = Field(default=None, description="the provider's HTTP status, if any")
    detail: str


class StoredProvider(_ProviderFields):
    """A provider at rest: its key as a Fernet token."""

    api_key_token: str | None = Field(default=None, repr=False)


class StoredSettings(BaseModel):
    """The provider settings at rest (one document, written whole)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    providers: list[StoredProvider] = Field(default_factory=list)
    agents: dict[str, AgentModels] = Field(default_factory=dict)

    def provider(self, name: str) -> StoredProvider | None:
        """The provider called ``name``, if configured."""
        return next((p for p in self.providers if p.name == name), None)

    def tokens(self) -> list[str]:
        """Every stored secret token."""
        return [p.api_key_token for p in self.providers if p.api_key_token is not None]

    @classmethod
    def of(cls, data: dict[str, Any] | None) -> StoredSettings:
        """The settings in a stored document (empty when nothing is stored)."""
        return cls.model_validate(data or {})
