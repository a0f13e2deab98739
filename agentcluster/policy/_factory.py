"""Choose the policy engine from the settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentcluster.config import Settings
from agentcluster.policy._engine import RegoPolicyEngine
from agentcluster.policy._opa import OpaServerPolicy
from agentcluster.policy._wasm import WasmPolicy

__all__ = ["build_policy_engine"]


def build_policy_engine(
    settings: Settings, data_overrides: Mapping[str, Any] | None = None
) -> RegoPolicyEngine:
    """The OPA server at ``SA01_POLICY_URL`` when it is set, else the in-process Wasm engine.

    Args:
        settings: the settings tree (``settings.policy``).
        data_overrides: extra data for the in-process engine (see :class:`WasmPolicy`); an OPA
            server takes its data from its own files and ``PUT /v1/data``, so it is ignored there.
    """
    if settings.policy.url:
        return OpaServerPolicy(settings.policy.url, settings.policy.timeout_s)
    return WasmPolicy(data_overrides)
