"""The Wasm build of ``policies/`` shipped in this package, and how to tell whether it is current.

Three files sit next to this module:

- ``authz.wasm``: ``policies/*.rego`` compiled by ``opa build -t wasm`` (entrypoint
  ``agentcluster/authz/decision``);
- ``authz.data.json``: the data documents of ``policies/`` as OPA merged them into the bundle;
- ``authz.manifest.json``: the OPA version, the sha256 of every source file and of the two outputs.

``make policy-wasm`` rebuilds them (see :mod:`agentcluster.policy._build`); a test compares the
manifest with ``policies/`` so a stale build fails CI.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentcluster.errors import ConfigError

__all__ = [
    "BATCH_ENTRYPOINT",
    "BUNDLE_DIR",
    "ENTRYPOINT",
    "WasmBundle",
    "load_bundle",
    "policy_sources",
    "sources_digest",
]

BUNDLE_DIR = Path(__file__).resolve().parent
ENTRYPOINT = "agentcluster/authz/decision"
BATCH_ENTRYPOINT = "agentcluster/authz/decisions"
"""One decision per request of ``input.batch`` (the OPA server's; Wasm evaluates one by one)."""
WASM_FILE = "authz.wasm"
DATA_FILE = "authz.data.json"
MANIFEST_FILE = "authz.manifest.json"

# What `opa build policies/` reads: Rego modules (tests excluded) and data documents.
_DATA_SUFFIXES = (".json", ".yaml", ".yml")


@dataclass(frozen=True)
class WasmBundle:
    """A loaded build: the compiled policy, its data and the manifest it was built with."""

    wasm: bytes
    data: dict[str, Any]
    manifest: dict[str, Any]


def policy_sources(policies_dir: Path) -> dict[str, str]:
    """The sha256 of every file under ``policies_dir`` that the build reads, by relative path."""
    sources: dict[str, str] = {}
    for path in sorted(policies_dir.rglob("*")):
        if path.is_file() and _is_source(path):
            relative = path.relative_to(policies_dir).as_posix()
            sources[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return sources


def sources_digest(sources: dict[str, str]) -> str:
    """One sha256 over the per-file digests (path and digest of each, in path order)."""
    lines = "".join(f"{path}\0{digest}\n" for path, digest in sorted(sources.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def _is_source(path: Path) -> bool:
    if path.suffix == ".rego":
        return not path.name.endswith("_test.rego")
    return path.suffix in _DATA_SUFFIXES


def load_bundle(bundle_dir: Path = BUNDLE_DIR) -> WasmBundle:
    """Read and check the build in ``bundle_dir``.

    Raises:
        ConfigError: a file is missing, unreadable, or does not match the manifest's sha256.
    """
    manifest = _read_json(bundle_dir / MANIFEST_FILE)
    wasm = _read_checked(bundle_dir / WASM_FILE, manifest.get("wasm_sha256"))
    data = json.loads(_read_checked(bundle_dir / DATA_FILE, manifest.get("data_sha256")))
    if not isinstance(data, dict):
        raise ConfigError(f"policy bundle: {bundle_dir / DATA_FILE} must hold a JSON object")
    return WasmBundle(wasm=wasm, data=data, manifest=manifest)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"policy bundle: cannot read {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"policy bundle: {path} must hold a JSON object")
    return value


def _read_checked(path: Path, expected_sha256: object) -> bytes:
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"policy bundle: cannot read {path}: {exc}") from exc
    actual = hashlib.sha256(content).hexdigest()
    if actual != expected_sha256:
        raise ConfigError(
            f"policy bundle: {path} has sha256 {actual}, the manifest says {expected_sha256}; "
            "rebuild with `make policy-wasm`"
        )
    return content
