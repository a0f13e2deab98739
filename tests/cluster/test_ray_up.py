"""`ray up cluster/local.yaml` end to end: Ray's cluster launcher reaches the head (127.0.0.1) over
SSH as the cluster's own user, syncs the checkout, installs the locked dependencies, starts Ray and
deploys configs/serve.yaml; the gateway answers /v1/ready and runs a turn against the fake LLM;
`ray down` stops that cluster and nothing else.

The only change to the committed YAML is the optional settings mount, pointed at a directory this
test writes (the fake LLM's address and an admin key); everything else runs as committed.
`ray down` runs `ray stop` on the head as the cluster's unprivileged user, so it can only stop that
user's processes: the test holds the suite's own (root) Ray cluster open across it and checks it
survives.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from agentcluster.testing.fake_llm import FakeLLM, Reply, Rule, Script
from tests.conftest import eventually

ROOT = Path(__file__).resolve().parents[2]
LOCAL_YAML = ROOT / "cluster" / "local.yaml"
CLUSTER_USER = "agentcluster"
GATEWAY = "http://127.0.0.1:21016"
# Ports the committed config binds on 127.0.0.1: gateway, GCS, dashboard, metrics, Ray client.
PORTS = (21016, 6379, 8265, 8080, 10001)
UP_TIMEOUT_S = 1500  # a fresh machine downloads and installs the locked wheels for the user
DOWN_TIMEOUT_S = 180
RAY_DAEMONS = ("raylet", "gcs_server")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(UP_TIMEOUT_S + 600)]


def _port_free(port: int) -> bool:
    return not any(
        conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN
        for conn in psutil.net_connections("tcp")
    )


def _ray_daemons(user: str) -> set[int]:
    """PIDs of the Ray daemons (raylet, GCS) that ``user`` runs."""
    found = set()
    for proc in psutil.process_iter(["pid", "name", "username"]):
        if proc.info["username"] == user and proc.info["name"] in RAY_DAEMONS:
            found.add(proc.info["pid"])
    return found


def _suite_ray_daemons() -> set[int]:
    """PIDs of the Ray daemons this pytest process started (the ray_cluster fixture's: ray.init
    starts them as its children). Other Ray clusters on the machine may come and go meanwhile."""
    return {
        child.pid
        for child in psutil.Process().children(recursive=True)
        if child.name() in RAY_DAEMONS
    }


def _ray_cli() -> str:
    return str(Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "ray")


def _launcher(command: str, config: Path, log: Path, timeout: float) -> None:
    """`ray up|down -y config` from the repository root (file_mounts name ./ paths), logged."""
    args = [_ray_cli(), command, "-y", str(config)]
    if command == "up":
        args.append("--no-config-cache")
    with log.open("w") as out:
        result = subprocess.run(
            args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
        )
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        pytest.fail(f"ray {command} exited {result.returncode}; last lines of {log}:\n{tail}")


@pytest.fixture
def launcher_ready() -> None:
    """Loopback SSH for the launcher (what `make local-ssh` does; idempotent)."""
    prepared = subprocess.run(
        ["bash", str(ROOT / "cluster" / "local-ssh.sh"), "up"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert prepared.returncode == 0, f"cluster/local-ssh.sh up failed:\n{prepared.stderr}"
    busy = [port for port in PORTS if not _port_free(port)]
    if busy:
        pytest.fail(
            f"ports {busy} on 127.0.0.1 are taken; the local cluster needs them "
            "(is `agentcluster up` or another `ray up cluster/local.yaml` running?)",
            pytrace=False,
        )


@pytest.fixture
def answering_llm() -> Iterator[FakeLLM]:
    server = FakeLLM(Script(), host="127.0.0.1", models=("demo",)).start_in_thread()
    yield server
    server.stop()


def _config_with_settings(tmp_path: Path, settings: dict[str, str]) -> Path:
    """The committed local.yaml with its settings mount pointed at a directory holding
    agentcluster.env (the mount the YAML shows commented out)."""
    env_dir = tmp_path / "agentcluster-env"
    env_dir.mkdir()
    lines = [f"{name}={value}" for name, value in settings.items()]
    (env_dir / "agentcluster.env").write_text("\n".join(lines) + "\n")
    config: dict[str, Any] = yaml.safe_load(LOCAL_YAML.read_text())
    config["file_mounts"]["~/agentcluster-env"] = str(env_dir)
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def _run_one_turn(http: httpx.AsyncClient, admin_key: str, token: str) -> dict[str, Any]:
    created = await http.post(
        "/v1/keys",
        json={"name": "ray-up", "tenant_name": f"local-{token}"},
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    assert created.status_code == 201, created.text
    headers = {"Authorization": f"Bearer {created.json()['secret']}"}
    session = await http.post("/v1/sessions", json={"agent": "default"}, headers=headers)
    assert session.status_code == 201, session.text
    session_id = session.json()["session_id"]
    turn = await http.post(
        f"/v1/sessions/{session_id}/messages",
        params={"wait": "true"},
        json={"content": f"hello local cluster {token}"},
        headers=headers,
        timeout=120,
    )
    assert turn.status_code == 200, turn.text
    body: dict[str, Any] = turn.json()
    return body


async def _ready(http: httpx.AsyncClient, admin_key: str) -> dict[str, Any] | None:
    # With the admin key: the details (the store's path) are not shown to anyone else.
    headers = {"Authorization": f"Bearer {admin_key}"}
    try:
        response = await http.get("/v1/ready", timeout=5, headers=headers)
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.usefixtures("launcher_ready", "ray_cluster")
async def test_ray_up_serves_a_turn_and_ray_down_stops_only_this_cluster(
    answering_llm: FakeLLM, tmp_path: Path
) -> None:
    token = uuid.uuid4().hex[:10]
    answer = f"the local cluster answers {token}"
    answering_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content=answer)))
    admin_key = "admin-" + uuid.uuid4().hex
    config = _config_with_settings(
        tmp_path,
        {
            "SA01_LLM_API_BASE": answering_llm.base_url,
            "SA01_LLM_API_KEY": "local",
            "SA01_AUTH_ADMIN_KEY": admin_key,
        },
    )
    ours_before = _suite_ray_daemons()
    assert ours_before, "the suite's own Ray cluster (ray_cluster fixture) should be running"
    started = time.monotonic()
    await asyncio.to_thread(_launcher, "up", config, tmp_path / "ray-up.log", UP_TIMEOUT_S)
    up_s = time.monotonic() - started
    down_done = False
    try:
        assert _ray_daemons(CLUSTER_USER), "ray up returned but the cluster user runs no Ray"
        async with httpx.AsyncClient(base_url=GATEWAY) as http:
            ready = await eventually(
                lambda: _ready(http, admin_key),
                timeout=180,
                interval=1,
                message="gateway /v1/ready",
            )
            store = next(dep for dep in ready["dependencies"] if dep["name"] == "sqlite")
            # The embedded store of the cluster user's checkout: this is the launched cluster.
            assert f"/home/{CLUSTER_USER}/agentcluster/.data/" in store["detail"]
            outcome = await _run_one_turn(http, admin_key, token)
        assert outcome["status"] == "completed", outcome
        assert outcome["content"] == answer
        assert any(token in str(r.messages) for r in answering_llm.requests)

        await asyncio.to_thread(
            _launcher, "down", config, tmp_path / "ray-down.log", DOWN_TIMEOUT_S
        )
        down_done = True

        async def cluster_gone() -> bool:
            return not _ray_daemons(CLUSTER_USER) and _port_free(21016)

        await eventually(cluster_gone, timeout=60, interval=1, message="local cluster stopped")
        assert ours_before <= _suite_ray_daemons(), "ray down stopped Ray processes not its own"
        print(f"ray up took {up_s:.1f} s")
    finally:
        if not down_done:
            # Best effort after a failure above (which is the error reported).
            await asyncio.to_thread(
                subprocess.run,
                [_ray_cli(), "down", "-y", str(config)],
                cwd=ROOT,
                capture_output=True,
                timeout=DOWN_TIMEOUT_S,
                check=False,
            )
