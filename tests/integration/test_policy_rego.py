"""The Rego itself, with the OPA binary of `make deps-up` (AC_OPA_BIN): tests, format, build."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from agentcluster.policy._build import build_bundle
from agentcluster.policy._bundle import BUNDLE_DIR, DATA_FILE, MANIFEST_FILE, WASM_FILE
from tests.conftest import ROOT, service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

POLICIES = ROOT / "policies"


def _opa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [service("AC_OPA_BIN"), *args], capture_output=True, text=True, timeout=240, check=False
    )


def test_opa_test_passes() -> None:
    completed = _opa("test", "--format", "json", str(POLICIES))
    try:
        results = json.loads(completed.stdout)
    except ValueError:
        pytest.fail(f"opa test printed no JSON (exit {completed.returncode}): {completed.stderr}")
    failed = [f"{r['package']}.{r['name']}" for r in results if r.get("fail") or r.get("error")]
    assert not failed, f"opa test failures: {failed}\n{completed.stdout[-4000:]}"
    assert completed.returncode == 0, completed.stderr
    # The suite is thorough (see policies/authz_test.rego); an empty or truncated run fails here.
    assert len(results) >= 50


def test_rego_is_formatted_and_strict() -> None:
    formatted = _opa("fmt", "--list", str(POLICIES))
    assert formatted.returncode == 0, formatted.stderr
    assert formatted.stdout.strip() == "", f"run `opa fmt -w policies/`: {formatted.stdout}"
    checked = _opa("check", "--strict", str(POLICIES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_packaged_build_equals_a_fresh_build(tmp_path: Path) -> None:
    manifest = build_bundle(Path(service("AC_OPA_BIN")), POLICIES, tmp_path)
    committed = json.loads((BUNDLE_DIR / MANIFEST_FILE).read_text())
    assert committed == manifest, "run `make policy-wasm` and commit agentcluster/policy/authz.*"
    for name in (WASM_FILE, DATA_FILE):
        assert (tmp_path / name).read_bytes() == (BUNDLE_DIR / name).read_bytes(), name
