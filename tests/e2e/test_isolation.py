"""The python_exec attack suite, driven as a tenant would: through the real gateway, the fake
model scripted to call python_exec with hostile code, the code run by a real tool actor in a real
bubblewrap sandbox.

Each test asserts on the other side: the secret that must not appear in what the model got back,
the file that must stay unchanged, the process that must still run, the service that must still
answer. Only loopback is ever connected to.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentcluster.config import Settings
from agentcluster.testing.fake_llm import FakeLLM, ToolCall
from tests.e2e.conftest import (
    ADMIN_KEY,
    WORKSPACE_MAX_BYTES,
    new_tenant,
    script_tool_turn,
)
from tests.support.sandbox import require_sandbox

pytestmark = pytest.mark.timeout(180)

PROJECT = Path(__file__).resolve().parents[2]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _session(http: httpx.AsyncClient, key: str) -> str:
    created = await http.post("/v1/sessions", json={"agent": "coder"}, headers=_auth(key))
    assert created.status_code == 201, created.text
    return str(created.json()["session_id"])


async def _python_exec(
    http: httpx.AsyncClient, fake_llm: FakeLLM, key: str, session_id: str, code: str
) -> dict[str, Any]:
    """Have the model run ``code`` in the session; the tool result the model got back."""
    token = uuid.uuid4().hex
    call = ToolCall(name="python_exec", arguments={"code": code})
    script_tool_turn(fake_llm, token, call, f"done {token}")
    answer = await http.post(
        f"/v1/sessions/{session_id}/messages?wait=true",
        json={"content": f"run this {token}"},
        headers=_auth(key),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["content"] == f"done {token}", answer.text
    tool_message = [
        request
        for request in fake_llm.requests
        if token in str(request.messages) and request.messages[-1]["role"] == "tool"
    ][-1].messages[-1]
    content = str(tool_message["content"])
    try:
        result: dict[str, Any] = json.loads(content)
    except ValueError:
        pytest.fail(f"python_exec did not run: {content}")
    return result


@pytest.fixture(autouse=True)
def _sandbox_here() -> None:
    require_sandbox()


@pytest.fixture
async def tenant_key(http: httpx.AsyncClient) -> str:
    return (await new_tenant(http, "iso"))[1]


def _bytes_in(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir())


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


async def test_python_exec_runs_sandboxed(
    http: httpx.AsyncClient, fake_llm: FakeLLM, tenant_key: str
) -> None:
    session_id = await _session(http, tenant_key)
    code = "import os\nopen('n.txt','w').write('1')\nprint(os.getuid(), os.getcwd())"
    result = await _python_exec(http, fake_llm, tenant_key, session_id, code)
    assert (result["stdout"], result["isolation"]) == ("65534 /workspace\n", "bwrap")
    assert result["workspace"]["saved"] is True


async def test_the_services_secrets_are_out_of_reach(
    http: httpx.AsyncClient, fake_llm: FakeLLM, e2e_settings: Settings
) -> None:
    data_dir = e2e_settings.data_dir
    paths = [
        data_dir,
        data_dir / "services.env",
        data_dir / "fernet.key",
        data_dir / "agentcluster.db",
        data_dir / "demo-api-key",
        e2e_settings.workspace_root,
        PROJECT,
        Path(sys.prefix),
        Path("/root"),
        Path("/etc/passwd"),
    ]
    code = (
        "import os, glob\n"
        "seen = {'env': dict(os.environ), 'procs': {}, 'paths': {}}\n"
        "for pid in os.listdir('/proc'):\n"
        "    if pid.isdigit():\n"
        "        for part in ('environ', 'cmdline'):\n"
        "            try:\n"
        "                data = open(f'/proc/{pid}/{part}', 'rb').read()\n"
        "                seen['procs'][pid + part] = data.hex()\n"
        "            except OSError as e:\n"
        "                seen['procs'][pid + part] = str(e)\n"
        f"for path in {[str(p) for p in paths]!r}:\n"
        "    seen['paths'][path] = os.path.exists(path)\n"
        "open('seen.txt', 'w').write(repr(seen))\n"
    )
    # What the code saw goes to its workspace (too much for the model's context); read it there.
    tenant_id, tenant_key = await new_tenant(http, "iso-secrets")
    session_id = await _session(http, tenant_key)
    result = await _python_exec(http, fake_llm, tenant_key, session_id, code)
    assert result["exit_code"] == 0, result
    seen = e2e_settings.workspace_root / tenant_id / session_id / "seen.txt"
    output = await asyncio.to_thread(seen.read_text)
    secrets = [ADMIN_KEY, e2e_settings.crypto.fernet_key or "", e2e_settings.db.dsn or ""]
    for secret in filter(None, secrets):
        assert secret not in output
        assert secret.encode().hex() not in output
    assert "SA01_" not in output and b"SA01_".hex() not in output
    assert f"'{PROJECT}': False" in output
    assert f"'{data_dir}': False" in output
    assert f"'{e2e_settings.workspace_root}': False" in output
    assert "'/etc/passwd': False" in output


async def test_another_tenants_workspace_is_out_of_reach(
    http: httpx.AsyncClient, fake_llm: FakeLLM, e2e_settings: Settings
) -> None:
    tenant_a, key_a = await new_tenant(http, "iso-a")
    _, key_b = await new_tenant(http, "iso-b")
    session_a = await _session(http, key_a)
    secret = "tenant-a-private-" + uuid.uuid4().hex
    wrote = await _python_exec(
        http, fake_llm, key_a, session_a, f"open('private.txt','w').write({secret!r})"
    )
    assert wrote["workspace"]["saved"] is True
    stored = e2e_settings.workspace_root / tenant_a / session_a / "private.txt"
    assert await asyncio.to_thread(stored.read_text) == secret

    session_b = await _session(http, key_b)
    code = (
        "import os\n"
        f"for path in ({str(stored)!r}, {str(stored.parent)!r}, "
        f"{str(e2e_settings.workspace_root)!r}, '../{tenant_a}', '/workspace/..'):\n"
        "    try:\n"
        "        print(path, os.listdir(path) if os.path.isdir(path) else open(path).read())\n"
        "    except OSError as e:\n"
        "        print(path, type(e).__name__)\n"
    )
    result = await _python_exec(http, fake_llm, key_b, session_b, code)
    lines = result["stdout"].splitlines()
    assert secret not in result["stdout"]
    assert all(line.endswith("FileNotFoundError") for line in lines[:4]), lines
    assert lines[4].startswith("/workspace/.. [") and tenant_a not in lines[4]
    assert await asyncio.to_thread(stored.read_text) == secret


async def test_the_host_cannot_be_written_or_its_processes_signalled(
    http: httpx.AsyncClient, fake_llm: FakeLLM, tenant_key: str
) -> None:
    site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    targets = [
        site / "agentcluster-evil.pth",
        PROJECT / "agentcluster" / "evil.py",
        PROJECT / "pyproject.toml",
        Path("/etc/passwd"),
        Path("/usr/lib/python3/dist-packages/evil.pth"),
    ]
    before = {target: _digest(target) for target in targets}
    victim = await asyncio.create_subprocess_exec("sleep", "120")
    code = (
        "import os, signal\n"
        f"for path in {[str(t) for t in targets]!r}:\n"
        "    try:\n"
        "        open(path, 'a').write('import os; os.system(\"id\")\\n')\n"
        "        print('wrote', path)\n"
        "    except OSError as e:\n"
        "        print('refused', path, type(e).__name__)\n"
        f"for pid in range(1, 4096):\n"
        "    if pid != os.getpid():\n"
        "        try:\n"
        "            os.kill(pid, signal.SIGKILL)\n"
        "        except OSError:\n"
        "            pass\n"
        f"try:\n    os.kill({victim.pid}, signal.SIGKILL)\n    print('signalled victim')\n"
        "except OSError as e:\n    print('victim', type(e).__name__)\n"
    )
    try:
        session_id = await _session(http, tenant_key)
        result = await _python_exec(http, fake_llm, tenant_key, session_id, code)
        assert "wrote" not in result["stdout"]
        assert {target: _digest(target) for target in targets} == before
        assert victim.returncode is None
        health = await http.get("/v1/health")
        assert health.status_code == 200
    finally:
        victim.kill()
        await victim.wait()


async def test_rays_sockets_and_the_gateway_are_unreachable(
    http: httpx.AsyncClient, fake_llm: FakeLLM, tenant_key: str, gateway_url: str
) -> None:
    port = httpx.URL(gateway_url).port
    code = (
        "import glob, socket\n"
        "print('sockets', glob.glob('/tmp/ray/**/sockets/*', recursive=True))\n"
        "for family, address in ((socket.AF_INET, ('127.0.0.1', "
        f"{port})), (socket.AF_INET6, ('::1', {port}))):\n"
        "    s = socket.socket(family)\n"
        "    s.settimeout(3)\n"
        "    try:\n"
        "        s.connect(address)\n"
        "        print('connected', address)\n"
        "    except OSError as e:\n"
        "        print('refused', address, type(e).__name__)\n"
    )
    session_id = await _session(http, tenant_key)
    result = await _python_exec(http, fake_llm, tenant_key, session_id, code)
    assert "sockets []" in result["stdout"]
    assert "connected" not in result["stdout"]


async def test_a_fork_bomb_is_contained(
    http: httpx.AsyncClient, fake_llm: FakeLLM, tenant_key: str
) -> None:
    code = (
        "import os\n"
        "children = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            import time; time.sleep(60); os._exit(0)\n"
        "        children += 1\n"
        "except OSError as e:\n"
        "    print('stopped after', children, type(e).__name__)\n"
    )
    session_id = await _session(http, tenant_key)
    result = await _python_exec(http, fake_llm, tenant_key, session_id, code)
    assert result["stdout"].startswith("stopped after")
    assert int(result["stdout"].split()[2]) < 4096
    # The cluster still serves a turn.
    again_session = await _session(http, tenant_key)
    again = await _python_exec(http, fake_llm, tenant_key, again_session, "print('alive')")
    assert again["stdout"] == "alive\n"


async def test_filling_the_disk_stops_at_the_session_quota(
    http: httpx.AsyncClient, fake_llm: FakeLLM, e2e_settings: Settings
) -> None:
    code = (
        "i = 0\n"
        "try:\n"
        "    while True:\n"
        "        open(f'fill{i}', 'wb').write(b'x' * 1_000_000)\n"
        "        i += 1\n"
        "except OSError as e:\n"
        "    print('stopped', e.errno)\n"
    )
    tenant_id, tenant_key = await new_tenant(http, "iso-disk")
    session_id = await _session(http, tenant_key)
    result = await _python_exec(http, fake_llm, tenant_key, session_id, code)
    assert result["stdout"].startswith("stopped 28"), result  # ENOSPC
    workspace = e2e_settings.workspace_root / tenant_id / session_id
    used = await asyncio.to_thread(_bytes_in, workspace)
    assert 0 < used <= WORKSPACE_MAX_BYTES
    # Writing more through the file tools is refused too.
    token = uuid.uuid4().hex
    call = ToolCall(name="file_write", arguments={"path": "more.txt", "text": "y" * 100_000})
    script_tool_turn(fake_llm, token, call, f"done {token}")
    answer = await http.post(
        f"/v1/sessions/{session_id}/messages?wait=true",
        json={"content": f"write more {token}"},
        headers=_auth(tenant_key),
    )
    assert answer.status_code == 200
    assert _digest(workspace / "more.txt") is None
