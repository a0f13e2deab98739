"""Policy engines: ``data.agentcluster.authz.decision`` from ``policies/``, two ways.

:class:`OpaServerPolicy` asks an OPA server (``SA01_POLICY_URL``); :class:`WasmPolicy` evaluates
the same Rego compiled to Wasm in-process. Both implement the tools' ``PolicyEngine`` port plus
``decide`` (any input document), ``decide_network`` and ``decide_action``, and both deny when they
cannot decide. :func:`build_policy_engine` picks one from the settings.
"""

from agentcluster.policy._bundle import ENTRYPOINT, WasmBundle, load_bundle
from agentcluster.policy._engine import RegoPolicyEngine
from agentcluster.policy._factory import build_policy_engine
from agentcluster.policy._inputs import (
    ApiAction,
    NetworkCategory,
    api_input,
    classify_address,
    decision_from_result,
    network_input,
    tool_input,
)
from agentcluster.policy._opa import OpaServerPolicy
from agentcluster.policy._wasm import WasmPolicy, merge_data

__all__ = [
    "ENTRYPOINT",
    "ApiAction",
    "NetworkCategory",
    "OpaServerPolicy",
    "RegoPolicyEngine",
    "WasmBundle",
    "WasmPolicy",
    "api_input",
    "build_policy_engine",
    "classify_address",
    "decision_from_result",
    "load_bundle",
    "merge_data",
    "network_input",
    "tool_input",
]
