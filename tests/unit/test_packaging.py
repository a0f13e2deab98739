"""Packaging: `make build` makes a wheel with the package data the cluster needs; `make
docker-image` says clearly when there is no Docker engine; the Dockerfile stays in step with the
Ray and Python versions the project runs on."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import ray

ROOT = Path(__file__).resolve().parents[2]
STAMP = ".venv/.installed"  # the Makefile's install stamp: -o keeps make from reinstalling

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _make(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-s", "-o", STAMP, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _project() -> dict[str, object]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert isinstance(project, dict)
    return project


def _required_members() -> set[str]:
    """Files that must ship: the Wasm policy, every migration, the Ray actors and deployments."""
    required = {
        "agentcluster/policy/authz.wasm",
        "agentcluster/policy/authz.manifest.json",
        "agentcluster/policy/authz.data.json",
        "agentcluster/store/migrations/env.py",
        "agentcluster/py.typed",
    }
    for folder in ("agentcluster/store/migrations/versions", "actors", "deployments"):
        required |= {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).glob("*.py")}
    return required


def test_make_build_makes_a_wheel_with_the_package_data(tmp_path: Path) -> None:
    result = _make("build", f"DIST={tmp_path}")
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = list(tmp_path.glob("agentcluster-*.whl"))
    assert len(wheels) == 1, wheels
    assert wheels[0].name.startswith(f"agentcluster-{_project()['version']}-")
    with zipfile.ZipFile(wheels[0]) as wheel:
        members = set(wheel.namelist())
        entry_points = next(m for m in members if m.endswith(".dist-info/entry_points.txt"))
        assert "agentcluster = agentcluster.cli:main" in wheel.read(entry_points).decode()
        assert wheel.read("agentcluster/policy/authz.wasm")[:4] == b"\0asm"
    missing = _required_members() - members
    assert not missing, f"not in the wheel: {sorted(missing)}"
    assert not [m for m in members if m.startswith("tests/") or "__pycache__" in m]


def _docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, timeout=60, check=False)
    return probe.returncode == 0


def test_make_docker_image_without_an_engine_says_so() -> None:
    if _docker_engine_answers():
        pytest.skip("a Docker engine answers here: `make docker-image` would really build")
    result = _make("docker-image", timeout=60)
    assert result.returncode != 0
    assert "docker-image: no Docker engine on this machine (docker info failed)" in result.stderr
    assert f"the Dockerfile is at {ROOT / 'Dockerfile'}" in result.stderr


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_builds_on_the_ray_and_python_we_run() -> None:
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    bases = re.findall(r"^FROM\s+(\S+)", _dockerfile(), flags=re.MULTILINE)
    assert bases == [f"rayproject/ray:{ray.__version__}-{python}"]
    python_dir = f"python{sys.version_info.major}.{sys.version_info.minor}"
    cache = re.search(r"TIKTOKEN_CACHE_DIR=(\S+)", _dockerfile())
    assert cache is not None
    # The same folder, relative to site-packages, as LiteLLM's bundled tokenizers here.
    spec = importlib.util.find_spec("litellm")  # located, not imported (imports take seconds)
    assert spec is not None and spec.origin is not None
    assert (Path(spec.origin).parent / "litellm_core_utils" / "tokenizers").is_dir()
    assert cache.group(1).endswith(
        f"/lib/{python_dir}/site-packages/litellm/litellm_core_utils/tokenizers"
    )


def test_dockerfile_installs_the_lock_and_the_project_and_stays_offline() -> None:
    text = _dockerfile()
    assert "pip install --no-cache-dir -r requirements.lock" in text
    assert "pip install --no-cache-dir --no-deps -e ." in text
    for setting in (
        "LITELLM_LOCAL_MODEL_COST_MAP=True",
        "ANONYMIZED_TELEMETRY=false",
        "BROWSER_USE_CLOUD_SYNC=false",
        "BROWSER_USE_VERSION_CHECK=false",
        "SA01_BROWSER_CHROMIUM_PATH=/usr/bin/google-chrome-stable",
    ):
        assert setting in text, setting
    assert "apt-get install" in text and "google-chrome-stable" in text


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".data", ".git", "**/__pycache__", ".mypy_cache", ".pytest_cache"} <= ignored
