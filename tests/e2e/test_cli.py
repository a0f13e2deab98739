"""The ``agentcluster`` command as a user runs it: subprocesses of the installed console script
against the e2e gateway (chat, keys, status), and ``up``/``down`` of a cluster of its own on a free
port with a temporary data dir, stopped by PID however the test ends."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentcluster.testing.fake_llm import FakeLLM, Reply, Rule, ToolCall
from tests.conftest import ROOT
from tests.e2e.conftest import ADMIN_KEY, _free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CLI = str(ROOT / ".venv" / "bin" / "agentcluster")


def run_cli(
    *args: str, stdin: str = "", env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def test_chat_streams_the_answer_and_shows_tool_calls(
    gateway_url: str, tenant_key: str, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    calculate = Reply(tool_calls=[ToolCall(name="calculator", arguments={"expression": "6*7"})])
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=calculate, times=1))
    answer = Reply(content=f"six times seven is 42 {token}")
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=answer))

    done = run_cli(
        "chat", "--url", gateway_url, "--key", tenant_key, "--agent", "tester",
        stdin=f"hello {token}\n",
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        '  [tool calculator {"expression": "6*7"} -> 42]\n'
        f"tester> six times seven is 42 {token}\n"
    )
    assert done.stderr.startswith("session ") and "(agent tester)" in done.stderr


def test_chat_without_a_reachable_gateway_fails_with_one_line() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    done = run_cli("chat", "--url", url, "--key", "ac_x", stdin="hi\n", timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith(f"agentcluster: gateway not reachable at {url} (")
    assert len(done.stderr.strip().splitlines()) == 1


def test_keys_create_list_revoke(gateway_url: str) -> None:
    admin = ("--url", gateway_url, "--admin-key", ADMIN_KEY)
    tenant_name = f"cli-{uuid.uuid4().hex[:8]}"
    created = run_cli("keys", "create", "--name", "cli-key", "--tenant-name", tenant_name, *admin)
    assert created.returncode == 0, created.stderr
    fields = dict(line.split(maxsplit=1) for line in created.stdout.splitlines()[:4])
    assert fields["name"] == "cli-key" and fields["secret"]

    listed = run_cli("keys", "list", "--tenant-id", fields["tenant_id"], *admin)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert [(row[0], row[4]) for row in rows] == [(fields["key_id"], "-")]
    assert fields["secret"] not in listed.stdout

    revoked = run_cli("keys", "revoke", fields["key_id"], *admin)
    assert (revoked.returncode, revoked.stdout) == (0, f"revoked {fields['key_id']}\n")
    listed = run_cli("keys", "list", "--tenant-id", fields["tenant_id"], *admin)
    assert listed.stdout.splitlines()[1].split()[4] != "-"  # revoked_at is set

    wrong = run_cli("keys", "list", "--url", gateway_url, "--admin-key", "not-the-admin-key")
    assert wrong.returncode == 1
    assert wrong.stderr.startswith("agentcluster: 401")


def test_status_of_a_ready_gateway(gateway_url: str) -> None:
    done = run_cli("status", "--url", gateway_url, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    gateway, health, ready = done.stdout.splitlines()[:3]
    assert (gateway, ready) == (f"gateway     {gateway_url}", "ready       ready")
    assert health.startswith("health      ok")


# --- up / down: a cluster of the test's own ---------------------------------------------------

_SERVICE_VARIABLES = ("SA01_", "GATEWAY_", "AGENTCLUSTER_")


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """An environment for a cluster on a free port with embedded defaults and demo mode under
    ``tmp_path``; whatever it started is stopped by PID at the end, even when the test failed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SERVICE_VARIABLES)}
    env.update(SA01_DATA_DIR=str(tmp_path), SA01_GATEWAY_PORT=str(_free_port()))
    pid_file = tmp_path / "agentcluster.pid"
    try:
        yield env, tmp_path
    finally:
        if pid_file.exists():
            pid = int(pid_file.read_text())
            stopped = run_cli("down", "--timeout", "30", env=env, timeout=90)
            if stopped.returncode != 0 or pid_file.exists():
                # Last resort: the serve process leads its own session and process group.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


@pytest.mark.timeout(360)
def test_up_status_chat_down(own_cluster: tuple[dict[str, str], Path]) -> None:
    env, data_dir = own_cluster
    url = f"http://127.0.0.1:{env['SA01_GATEWAY_PORT']}"

    up = run_cli("up", "--wait", "150", env=env, timeout=200)
    assert up.returncode == 0, up.stdout + up.stderr + (data_dir / "agentcluster.log").read_text()
    pid = int((data_dir / "agentcluster.pid").read_text())
    assert f"agentcluster is up: {url}  (pid {pid})" in up.stdout
    assert str(data_dir / "demo-api-key") in up.stdout

    again = run_cli("up", env=env, timeout=60)
    assert (again.returncode, again.stdout.splitlines()[0]) == (0, f"already up (pid {pid})")

    status = run_cli("status", env=env, timeout=60)
    assert status.returncode == 0, status.stderr
    assert f"local       pid {pid} (started by `agentcluster up`)" in status.stdout

    # No --url, no --key: this machine's gateway and the demo key under the data dir.
    chat = run_cli("chat", stdin="hello demo\n", env=env)
    assert (chat.returncode, chat.stdout) == (0, "default> [demo] You said: hello demo\n")

    down = run_cli("down", env=env, timeout=120)
    assert (down.returncode, down.stdout.splitlines()[-1]) == (0, "stopped"), down.stderr
    assert not (data_dir / "agentcluster.pid").exists()
    assert run_cli("status", env=env, timeout=60).returncode == 1
    assert run_cli("down", env=env, timeout=60).stdout == "not running\n"
