"""Build the in-process policy: ``opa build -t wasm`` of ``policies/`` into this package.

Run by ``make policy-wasm``::

    python -m agentcluster.policy._build --opa .data/bin/opa --policies policies

It writes ``authz.wasm``, ``authz.data.json`` and ``authz.manifest.json`` next to
:mod:`agentcluster.policy._bundle`. A build tool, not runtime code: it blocks on a subprocess.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from agentcluster.errors import ConfigError
from agentcluster.policy._bundle import (
    BATCH_ENTRYPOINT,
    BUNDLE_DIR,
    DATA_FILE,
    ENTRYPOINT,
    MANIFEST_FILE,
    WASM_FILE,
    policy_sources,
    sources_digest,
)

__all__ = ["build_bundle", "main"]

_BUILD_TIMEOUT_S = 300


def build_bundle(opa_bin: Path, policies_dir: Path, out_dir: Path = BUNDLE_DIR) -> dict[str, Any]:
    """Compile ``policies_dir`` with ``opa_bin`` and write the three bundle files to ``out_dir``.

    Returns:
        The manifest written.

    Raises:
        ConfigError: OPA is missing or the build failed (the message carries OPA's output).
    """
    sources = policy_sources(policies_dir)
    wasm, data = _opa_build(opa_bin.resolve(), policies_dir)
    data_text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    manifest = {
        "entrypoint": ENTRYPOINT,
        "opa_version": _opa_version(opa_bin),
        "sources_sha256": sources_digest(sources),
        "sources": sources,
        "wasm_sha256": hashlib.sha256(wasm).hexdigest(),
        "data_sha256": hashlib.sha256(data_text.encode()).hexdigest(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / WASM_FILE).write_bytes(wasm)
    (out_dir / DATA_FILE).write_text(data_text)
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _opa_build(opa_bin: Path, policies_dir: Path) -> tuple[bytes, Any]:
    with tempfile.TemporaryDirectory(prefix="policy-wasm-") as tmp:
        bundle_path = Path(tmp) / "bundle.tar.gz"
        _run(
            [
                str(opa_bin),
                "build",
                "--target",
                "wasm",
                "--entrypoint",
                ENTRYPOINT,
                "--entrypoint",
                BATCH_ENTRYPOINT,
                "--ignore",
                "*_test.rego",
                "--output",
                str(bundle_path),
                policies_dir.name,
            ],
            # Relative to its parent: the Wasm embeds the path, so the output does not depend on
            # where the checkout lives.
            cwd=policies_dir.resolve().parent,
        )
        members = _read_members(bundle_path, {"policy.wasm", "data.json"})
    return members["policy.wasm"], json.loads(members["data.json"])


def _read_members(bundle_path: Path, names: set[str]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    with tarfile.open(bundle_path, "r:gz") as archive:
        for member in archive.getmembers():
            name = member.name.lstrip("/")
            extracted = archive.extractfile(member) if name in names else None
            if extracted is not None:
                found[name] = extracted.read()
    missing = names - found.keys()
    if missing:
        raise ConfigError(f"opa build: {bundle_path} lacks {', '.join(sorted(missing))}")
    return found


def _opa_version(opa_bin: Path) -> str:
    output = _run([str(opa_bin), "version"])
    for line in io.StringIO(output):
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    raise ConfigError(f"opa: `{opa_bin} version` printed no Version line")


def _run(command: list[str], cwd: Path | None = None) -> str:
    try:
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=_BUILD_TIMEOUT_S,
            check=False,
            cwd=cwd,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(
            f"opa: cannot run {command[0]}: {exc} (`make deps-up` builds it)"
        ) from exc
    if completed.returncode != 0:
        raise ConfigError(
            f"opa: `{' '.join(command)}` exited {completed.returncode}: "
            f"{(completed.stderr or completed.stdout).strip()}"
        )
    return completed.stdout


def main(argv: list[str] | None = None) -> int:
    """Command line: build the bundle, print what was written; exit 1 on failure."""
    parser = argparse.ArgumentParser(description="Compile policies/ to the in-process Wasm build")
    parser.add_argument("--opa", type=Path, required=True, help="the opa binary")
    parser.add_argument("--policies", type=Path, default=Path("policies"))
    parser.add_argument("--out", type=Path, default=BUNDLE_DIR)
    args = parser.parse_args(argv)
    try:
        manifest = build_bundle(args.opa, args.policies, args.out)
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    print(
        f"policy wasm: {len(manifest['sources'])} sources (sha256 {manifest['sources_sha256']}) "
        f"-> {args.out / WASM_FILE}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
