"""Agent profiles: YAML data under ``configs/agents``, validated into :class:`AgentProfile`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agentcluster.errors import ConfigError

__all__ = ["AgentProfile", "TurnRetry", "load_profiles"]


class TurnRetry(BaseModel):
    """What to do with a turn interrupted by a host crash."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    on_interrupt: Literal["resume", "fail"] = "resume"
    max_attempts: int = Field(default=3, ge=1, le=20)


class AgentProfile(BaseModel):
    """How an agent thinks: model chain, prompt, tools and budgets."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    description: str = ""
    model: str = Field(min_length=1)
    fallback_models: list[str] = Field(default_factory=list)
    system_prompt: str = ""
    tools: list[str] = Field(default_factory=list)
    max_steps: int = Field(default=8, ge=1, le=100)
    max_output_tokens: int = Field(default=1024, ge=1, le=1_000_000)
    context_window: int = Field(default=16_000, ge=256, le=10_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    turn_retry: TurnRetry = TurnRetry()
    approval_timeout_s: float = Field(default=3600.0, gt=0, le=30 * 86400)
    """How long a tool call the policy sends to a person waits before it counts as rejected."""

    @model_validator(mode="after")
    def _output_fits(self) -> AgentProfile:
        if self.max_output_tokens >= self.context_window:
            raise ValueError("max_output_tokens must be smaller than context_window")
        return self


def _load_one(path: Path) -> AgentProfile:
    try:
        return AgentProfile.model_validate(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError as exc:
        raise ConfigError(f"agent profile {path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error.get("loc", ())) or "(profile)"
        raise ConfigError(f"agent profile {path}: {where}: {error.get('msg')}") from None


def load_profiles(directory: Path) -> dict[str, AgentProfile]:
    """Every ``*.yaml`` profile in ``directory`` by name.

    Raises:
        ConfigError: a profile is invalid, two share a name, or the directory has none.
    """
    profiles: dict[str, AgentProfile] = {}
    for path in sorted(directory.glob("*.yaml")):
        profile = _load_one(path)
        if profile.name in profiles:
            raise ConfigError(f"agent profile {path}: duplicate name {profile.name!r}")
        profiles[profile.name] = profile
    if not profiles:
        raise ConfigError(f"SA01_AGENTS_DIR: no agent profiles (*.yaml) in {directory}")
    return profiles
