"""python_exec: real subprocesses under real limits; no Ray, no services.

The network attempt targets a listener this test opens on 127.0.0.1, so it would succeed if the
sandbox let it through (the test can fail), and nothing ever leaves loopback.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from agentcluster.errors import ToolError
from agentcluster.tools import InProcessToolExecutor, ToolInvocation, ToolRegistry
from agentcluster.tools._files import SessionWorkspaces, file_tools
from agentcluster.tools._sandbox import PythonExecTool, PythonSandbox, SandboxLimits
from tests.conftest import eventually

pytestmark = pytest.mark.timeout(60)

LIMITS = SandboxLimits(cpu_s=1, memory_mb=256, wall_s=20)


@pytest.fixture(params=["auto", "audit-hook"])
def sandbox(request: pytest.FixtureRequest) -> PythonSandbox:
    """Both isolations: whatever this machine gives (namespaces here) and the fallback."""
    return PythonSandbox(LIMITS, isolation=request.param)


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP listener on 127.0.0.1 that a sandboxed connect would reach if it were allowed."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1]
    server.close()


async def test_normal_code_runs_and_writes_in_its_workspace(
    sandbox: PythonSandbox, tmp_path: Path
) -> None:
    code = "open('out.txt', 'w').write('hello'); print(sum(range(10)))"
    result = await sandbox.run(code, tmp_path)
    assert (result.stopped, result.exit_code, result.stdout) == ("ok", 0, "45\n")
    assert (tmp_path / "out.txt").read_text() == "hello"


async def test_an_infinite_loop_is_stopped_by_the_cpu_limit(
    sandbox: PythonSandbox, tmp_path: Path
) -> None:
    result = await sandbox.run("while True:\n    pass\n", tmp_path)
    assert result.stopped == "cpu"
    assert result.exit_code != 0


async def test_a_memory_bomb_is_stopped_by_the_memory_limit(
    sandbox: PythonSandbox, tmp_path: Path
) -> None:
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(10_000_000))\n"
    result = await sandbox.run(code, tmp_path)
    assert result.stopped == "memory"
    assert "MemoryError" in result.stderr


async def test_sleeping_past_the_wall_clock_is_killed(tmp_path: Path) -> None:
    sandbox = PythonSandbox(SandboxLimits(cpu_s=5, memory_mb=256, wall_s=0.5))
    result = await sandbox.run(
        "import time\nprint('started', flush=True)\ntime.sleep(60)", tmp_path
    )
    assert result.stopped == "wall"
    assert result.stdout == "started\n"


async def test_a_connection_to_loopback_fails(
    sandbox: PythonSandbox, tmp_path: Path, listener: int
) -> None:
    code = (
        "import socket\n"
        f"socket.create_connection(('127.0.0.1', {listener}), timeout=5)\n"
        "print('connected')\n"
    )
    result = await sandbox.run(code, tmp_path)
    assert "connected" not in result.stdout
    assert result.exit_code == 1
    expected = "PermissionError" if result.network_isolation == "audit-hook" else "OSError"
    assert expected in result.stderr or "Network is unreachable" in result.stderr


async def test_namespaces_are_used_where_the_machine_allows_them(tmp_path: Path) -> None:
    # This machine runs the tests as root, where unshare is allowed: the strong isolation is on.
    assert await PythonSandbox(LIMITS).isolation() == "netns"
    assert await PythonSandbox(LIMITS, isolation="audit-hook").isolation() == "audit-hook"


async def test_the_environment_is_not_inherited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SA01_SECRET_FOR_TEST", "do-not-leak")
    result = await PythonSandbox(LIMITS).run("import os; print(sorted(os.environ))", tmp_path)
    assert "SA01_SECRET_FOR_TEST" not in result.stdout
    assert "do-not-leak" not in result.stdout


async def test_capabilities_are_dropped_in_namespaces(tmp_path: Path) -> None:
    code = "print([l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1])"
    result = await PythonSandbox(LIMITS, isolation="netns").run(code, tmp_path)
    assert result.stdout.strip() == "0000000000000000"


async def test_output_is_truncated_and_flagged(tmp_path: Path) -> None:
    sandbox = PythonSandbox(SandboxLimits(cpu_s=5, memory_mb=256, wall_s=20, max_output_bytes=100))
    result = await sandbox.run("print('x' * 100_000)", tmp_path)
    assert (result.stopped, len(result.stdout), result.stdout_truncated) == ("ok", 100, True)


async def test_a_traceback_shows_the_models_code_not_the_launcher(tmp_path: Path) -> None:
    result = await PythonSandbox(LIMITS).run("x = 1\nraise ValueError('boom')\n", tmp_path)
    assert result.exit_code == 1
    assert 'File "<python_exec>", line 2' in result.stderr
    assert "ValueError: boom" in result.stderr
    assert "enter_namespaces" not in result.stderr


async def test_cancelling_the_call_kills_the_process(tmp_path: Path) -> None:
    marker = tmp_path / "still-running"
    code = (
        f"import time\nwhile True:\n    open({str(marker)!r}, 'w').close()\n    time.sleep(0.05)\n"
    )
    task = asyncio.create_task(PythonSandbox(LIMITS).run(code, tmp_path))
    await eventually(_exists(marker), timeout=10, message="the sandboxed loop did not start")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    marker.unlink()
    await asyncio.sleep(0.3)  # the loop would have re-created the marker by now if still alive
    assert not marker.exists()


def _exists(path: Path) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return await asyncio.to_thread(path.exists)

    return probe


def _invocation(
    tool: str, arguments: dict[str, object], tenant: str, session: str
) -> ToolInvocation:
    return ToolInvocation(
        tenant_id=tenant,
        session_id=session,
        turn_id="turn-1",
        agent="tester",
        tool_call_id=uuid.uuid4().hex,
        tool=tool,
        arguments=arguments,
    )


async def test_python_exec_and_file_tools_share_the_session_workspace(tmp_path: Path) -> None:
    workspaces = SessionWorkspaces(tmp_path)
    registry = ToolRegistry(
        [PythonExecTool(PythonSandbox(LIMITS), workspaces), *file_tools(workspaces)]
    )
    executor = InProcessToolExecutor(registry)
    tenant, session = f"t-{uuid.uuid4().hex[:8]}", f"s-{uuid.uuid4().hex[:8]}"

    wrote = await executor.execute(
        _invocation(
            "python_exec", {"code": "open('data.csv','w').write('a,b\\n1,2\\n')"}, tenant, session
        )
    )
    assert wrote.ok and wrote.result["stopped"] == "ok"
    read = await executor.execute(_invocation("file_read", {"path": "data.csv"}, tenant, session))
    assert read.ok and read.result["text"] == "a,b\n1,2\n"
    listed = await executor.execute(_invocation("file_list", {}, tenant, session))
    assert listed.ok and listed.result["entries"] == ["data.csv"]
    assert (tmp_path / tenant / session / "data.csv").exists()

    other = await executor.execute(_invocation("file_list", {}, tenant, "another-session"))
    assert other.ok and other.result["entries"] == []


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("file_read", {"path": "../other/secret.txt"}),
        ("file_read", {"path": "/etc/hostname"}),
        ("file_write", {"path": "../escape.txt", "text": "x"}),
        ("file_copy", {"source": "a.txt", "destination": "../../a.txt"}),
        ("file_list", {"path": ".."}),
    ],
)
async def test_file_tools_refuse_paths_outside_the_workspace(
    tmp_path: Path, tool: str, arguments: dict[str, object]
) -> None:
    workspaces = SessionWorkspaces(tmp_path / "root")
    (tmp_path / "root" / "t1" / "other").mkdir(parents=True)
    (tmp_path / "root" / "t1" / "other" / "secret.txt").write_text("secret")
    executor = InProcessToolExecutor(ToolRegistry(file_tools(workspaces)))
    (await workspaces.open("t1", "s1")).joinpath("a.txt").write_text("a")

    outcome = await executor.execute(_invocation(tool, arguments, "t1", "s1"))
    assert not outcome.ok
    assert "Access denied" in (outcome.error or "")
    assert not (tmp_path / "root" / "t1" / "escape.txt").exists()
    assert not (tmp_path / "a.txt").exists()


async def test_file_tools_report_missing_files_as_tool_errors(tmp_path: Path) -> None:
    executor = InProcessToolExecutor(ToolRegistry(file_tools(SessionWorkspaces(tmp_path))))
    outcome = await executor.execute(_invocation("file_read", {"path": "nope.txt"}, "t1", "s1"))
    assert outcome == outcome.model_copy(update={"ok": False})
    assert "no such file" in (outcome.error or "")


@pytest.mark.parametrize("bad", ["..", "../t2", "a/b", "", "."])
def test_workspace_ids_cannot_name_other_directories(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ToolError, match="cannot name a workspace"):
        SessionWorkspaces(tmp_path).path("t1", bad)
