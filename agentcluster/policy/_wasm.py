"""Policy decisions in-process: the same Rego, compiled to Wasm, run by wasmtime (opa-py-wasm)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from opapywasm import UNDEFINED, OpaWasmError, OpaWasmPolicy, PolicyConfig

from agentcluster.errors import ConfigError
from agentcluster.policy._bundle import BATCH_ENTRYPOINT, ENTRYPOINT, WasmBundle, load_bundle
from agentcluster.policy._engine import RegoPolicyEngine
from agentcluster.policy._inputs import decision_from_result
from agentcluster.tools import PolicyDecision

__all__ = ["WasmPolicy", "merge_data"]

_SOURCE = "in-process Wasm"

# One instance: evaluation runs synchronously on the caller's thread (a decision takes well under
# a millisecond), so there is never a second concurrent evaluation on an event loop. No eval
# deadline: the policy has no unbounded iteration, and a deadline costs a 100 Hz ticker thread
# per engine. Inputs are bounded instead.
_CONFIG = PolicyConfig(
    pool_size=1,
    default_entrypoint=ENTRYPOINT,
    eval_timeout_seconds=None,
    max_input_bytes=4_000_000,
    strict_result_shape=True,
)


class WasmPolicy(RegoPolicyEngine):
    """Evaluates the packaged Wasm build of ``policies/`` with its data, in this process.

    Args:
        data_overrides: merged over the packaged data (``{"agentcluster": {"tenants": {...}}}``):
            objects merge key by key, any other value replaces. Give the same documents an
            OPA server gets through ``PUT /v1/data/...`` to get the same decisions.
        bundle: the build to run; by default the one shipped in this package.

    Raises:
        ConfigError: the build is missing, does not match its manifest, or is not a valid policy.
    """

    engine = "wasm"
    _source = _SOURCE

    def __init__(
        self,
        data_overrides: Mapping[str, Any] | None = None,
        *,
        bundle: WasmBundle | None = None,
    ) -> None:
        bundle = bundle if bundle is not None else load_bundle()
        self.data = merge_data(bundle.data, data_overrides or {})
        try:
            self._policy = OpaWasmPolicy.from_wasm_bytes(bundle.wasm, config=_CONFIG)
            self._policy.set_data(self.data)
        except OpaWasmError as exc:
            raise ConfigError(f"policy bundle: cannot load the Wasm policy: {exc}") from exc

    async def decide(self, policy_input: Mapping[str, Any]) -> PolicyDecision:
        """Evaluate the policy for ``policy_input``; deny if the evaluation fails."""
        try:
            result = self._policy.evaluate(dict(policy_input))
        except (OpaWasmError, TypeError, ValueError) as exc:
            return self._failure(f"{type(exc).__name__}: {exc}")
        return decision_from_result(
            None if result is UNDEFINED else result, engine=self.engine, source=_SOURCE
        )

    async def _evaluate_batch(self, batch: dict[str, Any]) -> object:
        try:
            result = self._policy.evaluate(batch, entrypoint=BATCH_ENTRYPOINT)
        except (OpaWasmError, TypeError, ValueError) as exc:
            return self._failure(f"{type(exc).__name__}: {exc}")
        return None if result is UNDEFINED else result

    def _failure(self, problem: str) -> PolicyDecision:
        return PolicyDecision(
            allowed=False,
            reason=f"policy engine ({_SOURCE}) failed: {problem}",
            engine=self.engine,
            failed=True,
        )

    async def aclose(self) -> None:
        """Release the Wasm instance."""
        self.close()

    def close(self) -> None:
        """Release the Wasm instance (for callers without an event loop); idempotent."""
        self._policy.close()

    def __repr__(self) -> str:
        return f"WasmPolicy(entrypoint={ENTRYPOINT!r})"


def merge_data(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in: objects recursively, other values replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = merge_data(current, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
