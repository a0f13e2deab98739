"""python_exec in the real bubblewrap sandbox: what runs, the limits, and every way out we know.

Each attack runs real code in a real sandbox and asserts on what the other side saw: a file that
must stay unchanged, a listener that must get no connection, a process that must not be
signalled, a secret that must not appear in the output. Only loopback is ever connected to.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import os
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentcluster.config import ToolSettings
from agentcluster.errors import ToolError
from agentcluster.tools import InProcessToolExecutor, ToolInvocation, ToolRegistry
from agentcluster.tools._files import SessionWorkspaces, file_tools
from agentcluster.tools._sandbox import (
    PythonExecTool,
    PythonSandbox,
    SandboxLimits,
    SandboxResult,
    SandboxRuntime,
)
from tests.conftest import eventually
from tests.support.sandbox import require_sandbox

pytestmark = pytest.mark.timeout(90)

LIMITS = SandboxLimits(cpu_s=2, memory_mb=256, wall_s=20, workspace_bytes=4 << 20)
PROJECT = Path(__file__).resolve().parents[2]


def _need_bwrap() -> None:
    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap is not installed: `make deps-up` installs it", pytrace=False)
    require_sandbox()


@pytest.fixture
def sandbox() -> PythonSandbox:
    _need_bwrap()
    return PythonSandbox(LIMITS)


@pytest.fixture
def workspaces(tmp_path: Path) -> SessionWorkspaces:
    return SessionWorkspaces(tmp_path / "workspaces")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP listener on 127.0.0.1 that a sandboxed connect would reach if it were allowed."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    yield server
    server.close()


async def _run(sandbox: PythonSandbox, code: str, workspace: Path) -> SandboxResult:
    await asyncio.to_thread(workspace.mkdir, parents=True, exist_ok=True)
    return await sandbox.run(code, workspace)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digest_or_none(path: Path) -> str | None:
    """The file's digest, or None where it does not exist (or is not a readable file)."""
    try:
        return _digest(path)
    except OSError:
        return None


# ---------------------------------------------------------------- what works


async def test_status_says_bubblewrap_with_a_cgroup_where_one_is_writable(
    sandbox: PythonSandbox,
) -> None:
    status = await sandbox.status()
    assert status.isolation == "bwrap", status.detail
    assert "network" in status.detail
    assert status.uid != 0
    if os.geteuid() == 0 and _digest_or_none(Path("/sys/fs/cgroup/pids/cgroup.procs")):
        assert status.cgroup == "v1"


async def test_code_runs_in_its_workspace_and_files_persist(
    sandbox: PythonSandbox, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    first = await _run(
        sandbox, "open('out.txt','w').write('hello'); print(sum(range(10)))", workspace
    )
    assert (first.stopped, first.exit_code, first.stdout) == ("ok", 0, "45\n")
    assert first.workspace.saved and first.isolation == "bwrap"
    assert (workspace / "out.txt").read_text() == "hello"
    second = await _run(sandbox, "import os; print(os.getcwd(), open('out.txt').read())", workspace)
    assert second.stdout == "/workspace hello\n"


async def test_the_code_runs_unprivileged_with_no_capabilities(
    sandbox: PythonSandbox, tmp_path: Path
) -> None:
    code = (
        "import os\n"
        "caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')]\n"
        "print(os.getuid(), os.getgid(), caps[0])\n"
    )
    result = await _run(sandbox, code, tmp_path / "ws")
    assert result.stdout.split() == ["65534", "65534", "0000000000000000"]  # inside


async def test_only_the_interpreter_and_the_sandbox_mounts_are_visible(
    sandbox: PythonSandbox, tmp_path: Path
) -> None:
    code = "import os; print(sorted(os.listdir('/'))); print(os.listdir('/usr/local'))"
    result = await _run(sandbox, code, tmp_path / "ws")
    top = ast.literal_eval(result.stdout.splitlines()[0])
    assert set(top) <= {"bin", "dev", "lib", "lib64", "proc", "sbin", "tmp", "usr", "workspace"}
    assert "etc" not in top and "root" not in top and "home" not in top
    assert result.stdout.splitlines()[1] == "[]"


@pytest.fixture
def packages() -> Iterator[Path]:
    """A package directory the sandbox's user can reach (as an operator would install one)."""
    folder = Path(tempfile.mkdtemp(prefix="ac-packages-"))
    (folder / "offered.py").write_text("VALUE = 42\n")
    folder.chmod(0o755)
    (folder / "offered.py").chmod(0o644)
    yield folder
    shutil.rmtree(folder)


async def test_only_workspace_tmp_and_shm_are_writable(
    sandbox: PythonSandbox, tmp_path: Path
) -> None:
    code = (
        "import errno\n"
        "for d in ('/', '/dev', '/usr', '/proc', '/tmp', '/dev/shm', '/workspace'):\n"
        "    try:\n"
        "        open(d.rstrip('/') + '/probe', 'w').write('x')\n"
        "        print(d, 'writable')\n"
        "    except OSError as e:\n"
        "        print(d, errno.errorcode[e.errno])\n"
    )
    result = await _run(sandbox, code, tmp_path / "ws")
    writable = [line.split()[0] for line in result.stdout.splitlines() if "writable" in line]
    assert writable == ["/tmp", "/dev/shm", "/workspace"], result.stdout


async def test_kernel_surface_is_filtered_and_nested_namespaces_refused(
    sandbox: PythonSandbox, tmp_path: Path
) -> None:
    # keyctl(KEYCTL_JOIN_SESSION_KEYRING), io_uring_setup, bpf, userfaultfd, perf_event_open,
    # then unshare(CLONE_NEWUSER), each through the raw syscall.
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "calls = {'keyctl': (250, 1, 0), 'io_uring_setup': (425, 8, 0), 'bpf': (321, 0, 0),\n"
        "         'userfaultfd': (323, 0, 0), 'perf_event_open': (298, 0, 0),\n"
        "         'unshare_user': (272, 0x10000000, 0)}\n"
        "for name, (nr, a, b) in calls.items():\n"
        "    r = libc.syscall(nr, a, b, 0, 0, 0)\n"
        "    print(name, r, os.strerror(ctypes.get_errno()) if r < 0 else 'ok')\n"
        "print('seccomp', [l.split()[1] for l in open('/proc/self/status') "
        "if l.startswith('Seccomp:')][0])\n"
    )
    result = await _run(sandbox, code, tmp_path / "ws")
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines.pop("seccomp") == "2", result.stdout
    for name, outcome in lines.items():
        assert outcome.startswith("-1 "), f"{name}: {outcome}"


async def test_offered_packages_are_importable_and_read_only(
    tmp_path: Path, packages: Path
) -> None:
    _need_bwrap()
    sandbox = PythonSandbox(LIMITS, SandboxRuntime(packages=(packages,)))
    code = (
        "import offered; print(offered.VALUE)\n"
        "try:\n    open(offered.__file__, 'a').write('x')\n"
        "except OSError as e:\n    print(e.errno)\n"
    )
    result = await _run(sandbox, code, tmp_path / "ws")
    value, error = result.stdout.split()
    assert value == "42" and error in {"13", "30"}  # EACCES or EROFS
    assert (packages / "offered.py").read_text() == "VALUE = 42\n"


async def test_output_is_truncated_and_flagged(tmp_path: Path) -> None:
    _need_bwrap()
    limits = SandboxLimits(cpu_s=5, memory_mb=256, wall_s=20, max_output_bytes=100)
    result = await _run(PythonSandbox(limits), "print('x' * 100_000)", tmp_path / "ws")
    assert (result.stopped, len(result.stdout), result.stdout_truncated) == ("ok", 100, True)


async def test_a_traceback_shows_the_models_code_not_the_runner(
    sandbox: PythonSandbox, tmp_path: Path
) -> None:
    result = await _run(sandbox, "x = 1\nraise ValueError('boom')\n", tmp_path / "ws")
    assert result.exit_code == 1
    assert 'File "<python_exec>", line 2' in result.stderr
    assert "ValueError: boom" in result.stderr
    assert "_run_code" not in result.stderr


async def test_exit_codes_and_syntax_errors_are_reported(
    sandbox: PythonSandbox, tmp_path: Path
) -> None:
    exited = await _run(sandbox, "import sys; sys.exit(3)", tmp_path / "ws")
    assert (exited.exit_code, exited.stopped) == (3, "ok")
    broken = await _run(sandbox, "def (:\n", tmp_path / "ws")
    assert broken.exit_code == 1 and "SyntaxError" in broken.stderr


# ---------------------------------------------------------------- limits


async def test_an_infinite_loop_is_stopped_by_the_cpu_limit(
    sandbox: PythonSandbox, tmp_path: Path
) -> None:
    result = await _run(sandbox, "while True:\n    pass\n", tmp_path / "ws")
    assert result.stopped == "cpu" and result.exit_code != 0


async def test_a_memory_bomb_is_stopped_by_the_memory_limit(
    sandbox: PythonSandbox, tmp_path: Path
) -> None:
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(10_000_000))\n"
    result = await _run(sandbox, code, tmp_path / "ws")
    assert result.stopped == "memory"


async def test_sleeping_past_the_wall_clock_is_killed_and_the_workspace_kept(
    tmp_path: Path,
) -> None:
    _need_bwrap()
    sandbox = PythonSandbox(SandboxLimits(cpu_s=5, memory_mb=256, wall_s=0.5))
    code = "import time\nopen('before.txt','w').write('1')\nprint('started', flush=True)\n"
    code += "time.sleep(60)"
    result = await _run(sandbox, code, tmp_path / "ws")
    assert result.stopped == "wall"
    assert result.stdout == "started\n"
    assert (tmp_path / "ws" / "before.txt").read_text() == "1"


async def test_a_fork_bomb_is_held_by_the_process_limit(tmp_path: Path) -> None:
    _need_bwrap()
    limits = SandboxLimits(cpu_s=5, memory_mb=256, wall_s=15, max_processes=16)
    code = (
        "import os, time\n"
        "made = 0\n"
        "for _ in range(500):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        made += 1\n"
        "    except OSError:\n"
        "        break\n"
        "print(made, flush=True)\n"
        "os._exit(0)\n"
    )
    result = await _run(PythonSandbox(limits), code, tmp_path / "ws")
    assert int(result.stdout) < 16
    # Everything it started was ended with the run: no process of the sandbox uid is left.
    status = await PythonSandbox(limits).status()
    assert await _no_processes_of(status.uid)


async def _no_processes_of(uid: int | None) -> bool:
    if uid is None or uid == os.geteuid():
        return True  # the sandbox runs as this user: cannot tell its processes apart

    def probe() -> bool:
        for entry in Path("/proc").glob("[0-9]*/status"):
            try:
                fields = dict(line.split(":", 1) for line in entry.read_text().splitlines())
            except (OSError, ValueError):
                continue
            if int(fields.get("Uid", "-1 ").split()[0]) == uid and "bwrap" not in fields["Name"]:
                return False
        return True

    async def check() -> bool:
        return await asyncio.to_thread(probe)

    return bool(await eventually(check, timeout=10, message="sandbox processes left running"))


async def test_filling_the_disk_stops_at_the_quota_and_keeps_what_fits(tmp_path: Path) -> None:
    _need_bwrap()
    limits = SandboxLimits(cpu_s=10, memory_mb=256, wall_s=20, workspace_bytes=1 << 20)
    code = (
        "i = 0\n"
        "try:\n"
        "    while True:\n"
        "        open(f'f{i}', 'wb').write(b'x' * 100_000)\n"
        "        i += 1\n"
        "except OSError as e:\n"
        "    print('stopped', e.errno)\n"
    )
    workspace = tmp_path / "ws"
    result = await _run(PythonSandbox(limits), code, workspace)
    assert result.stdout.split()[0] == "stopped"
    assert sum(p.stat().st_size for p in workspace.iterdir()) <= 1 << 20
    assert result.workspace.saved and result.workspace.bytes <= 1 << 20


async def test_too_many_files_are_refused_and_the_workspace_left_as_it_was(
    tmp_path: Path,
) -> None:
    _need_bwrap()
    limits = SandboxLimits(cpu_s=10, memory_mb=256, wall_s=20, workspace_files=50)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "keep.txt").write_text("kept")
    code = (
        "for i in range(200):\n    open(f'f{i}', 'w').close()\nopen('keep.txt','w').write('lost')"
    )
    result = await _run(PythonSandbox(limits), code, workspace)
    assert not result.workspace.saved
    assert "50 entries" in (result.workspace.note or "")
    assert sorted(p.name for p in workspace.iterdir()) == ["keep.txt"]
    assert (workspace / "keep.txt").read_text() == "kept"


async def test_a_workspace_over_its_quota_refuses_to_run(tmp_path: Path) -> None:
    _need_bwrap()
    limits = SandboxLimits(cpu_s=5, memory_mb=256, wall_s=20, workspace_bytes=10_000)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "big").write_bytes(b"x" * 20_000)
    with pytest.raises(ToolError, match="over its quota"):
        await PythonSandbox(limits).run("print(1)", workspace)


async def test_links_the_code_makes_never_leave_the_sandbox(
    sandbox: PythonSandbox, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    code = (
        f"import os\nos.symlink({str(secret)!r}, 'link')\nos.symlink('/etc/passwd', 'pw')\n"
        "os.mkfifo('fifo')\nopen('real.txt','w').write('ok')\n"
    )
    workspace = tmp_path / "ws"
    result = await _run(sandbox, code, workspace)
    assert result.exit_code == 0, result.stderr
    assert result.workspace.saved
    assert sorted(p.name for p in workspace.iterdir()) == ["real.txt"]


async def test_cancelling_the_call_kills_the_run(sandbox: PythonSandbox, tmp_path: Path) -> None:
    code = "import time\nprint('running', flush=True)\ntime.sleep(60)\n"
    task = asyncio.create_task(_run(sandbox, code, tmp_path / "ws"))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    status = await sandbox.status()
    assert await _no_processes_of(status.uid)


# ---------------------------------------------------------------- attacks: the host's files


@pytest.fixture
def host_secrets(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """Files of the service next to the workspaces, as a tool actor's node has them."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    files = {
        "fernet": data / "fernet.key",
        "sqlite": data / "agentcluster.db",
        "other_workspace": tmp_path / "workspaces" / "tenant-b" / "session-b" / "notes.txt",
    }
    files["fernet"].write_text("fernet-secret-" + uuid.uuid4().hex)
    files["sqlite"].write_bytes(b"SQLite format 3\x00" + uuid.uuid4().bytes)
    files["other_workspace"].parent.mkdir(parents=True)
    files["other_workspace"].write_text("tenant b private " + uuid.uuid4().hex)
    for path in files.values():
        path.chmod(0o644)  # readable by anyone on the host: only the sandbox's walls stop it
    yield files


READ_TARGETS = {
    "fernet key": "fernet",
    "sqlite file": "sqlite",
    "another session's workspace": "other_workspace",
}


@pytest.mark.parametrize("target", sorted(READ_TARGETS))
async def test_host_files_cannot_be_read(
    sandbox: PythonSandbox, tmp_path: Path, host_secrets: dict[str, Path], target: str
) -> None:
    path = host_secrets[READ_TARGETS[target]]
    code = f"print(open({str(path)!r}, 'rb').read().hex())"
    result = await _run(sandbox, code, tmp_path / "workspaces" / "tenant-a" / "session-a")
    assert result.exit_code == 1
    assert "FileNotFoundError" in result.stderr
    assert path.read_bytes().hex() not in result.stdout + result.stderr


async def test_the_project_data_dir_and_venv_are_absent(
    sandbox: PythonSandbox, tmp_path: Path
) -> None:
    paths = [PROJECT, PROJECT / ".data", Path(sys.prefix), Path(sys.executable)]
    code = f"import os\nprint([os.path.exists(p) for p in {[str(p) for p in paths]!r}])"
    result = await _run(sandbox, code, tmp_path / "ws")
    assert result.stdout.strip() == str([False] * len(paths))


@pytest.mark.parametrize(
    "target",
    [
        "/usr/lib/python3/dist-packages/agentcluster-evil.pth",
        "/usr/bin/agentcluster-evil",
        "/etc/passwd",
        "/proc/sys/kernel/hostname",
    ],
)
async def test_system_paths_cannot_be_written(
    sandbox: PythonSandbox, tmp_path: Path, target: str
) -> None:
    before = _digest_or_none(Path(target))
    code = f"open({target!r}, 'a').write('import os\\n')\nprint('wrote')"
    result = await _run(sandbox, code, tmp_path / "ws")
    assert "wrote" not in result.stdout
    assert _digest_or_none(Path(target)) == before


async def test_the_project_tree_and_site_packages_cannot_be_written(
    sandbox: PythonSandbox, tmp_path: Path
) -> None:
    site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    targets = [site / "agentcluster-evil.pth", PROJECT / "agentcluster" / "evil.py"]
    code = "\n".join(
        f"try:\n    open({str(t)!r}, 'w').write('x')\n    print('wrote')\nexcept OSError:\n    pass"
        for t in targets
    )
    result = await _run(sandbox, code, tmp_path / "ws")
    assert "wrote" not in result.stdout
    assert not any(t.exists() for t in targets)


async def test_the_environment_of_the_service_is_unreachable(
    sandbox: PythonSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "do-not-leak-" + uuid.uuid4().hex
    monkeypatch.setenv("SA01_AUTH_ADMIN_KEY", secret)
    code = (
        "import os\n"
        "print(dict(os.environ))\n"
        "for pid in os.listdir('/proc'):\n"
        "    if pid.isdigit():\n"
        "        try:\n"
        "            print(pid, open(f'/proc/{pid}/environ', 'rb').read())\n"
        "        except OSError as e:\n"
        "            print(pid, e)\n"
        "print(os.getppid())\n"
    )
    result = await _run(sandbox, code, tmp_path / "ws")
    assert result.exit_code == 0, result.stderr
    assert secret not in result.stdout
    assert "SA01_" not in result.stdout


async def test_processes_outside_cannot_be_seen_or_signalled(
    sandbox: PythonSandbox, tmp_path: Path
) -> None:
    victim = await asyncio.create_subprocess_exec("sleep", "60")  # a process of ours to aim at
    try:
        code = (
            "import os, signal\n"
            "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
            f"for pid in ({victim.pid}, {os.getpid()}, 1):\n"
            "    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n"
            "        print('signalled', pid)\n"
            "    except OSError as e:\n"
            "        print('refused', pid, e.errno)\n"
        )
        result = await _run(sandbox, code, tmp_path / "ws")
        visible = ast.literal_eval(result.stdout.splitlines()[0])
        assert max(visible) < 50  # a fresh PID namespace: only the sandbox's own few processes
        assert f"signalled {victim.pid}" not in result.stdout
        assert f"signalled {os.getpid()}" not in result.stdout
        assert victim.returncode is None
    finally:
        victim.kill()
        await victim.wait()


async def test_no_network_not_even_loopback(
    sandbox: PythonSandbox, tmp_path: Path, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    code = (
        "import socket\n"
        f"for host in ('127.0.0.1', '::1', 'localhost'):\n"
        "    try:\n"
        f"        socket.create_connection((host, {port}), timeout=3)\n"
        "        print('connected', host)\n"
        "    except OSError as e:\n"
        "        print('refused', host, type(e).__name__)\n"
    )
    result = await _run(sandbox, code, tmp_path / "ws")
    assert "connected" not in result.stdout
    assert result.stdout.count("refused") == 3
    with pytest.raises(BlockingIOError):
        listener.accept()  # the listener saw no connection


async def test_rays_sockets_are_not_reachable(sandbox: PythonSandbox, tmp_path: Path) -> None:
    # Ray's Unix sockets live under /tmp/ray on the host; the sandbox's /tmp is its own tmpfs,
    # and abstract Unix sockets belong to the (new) network namespace.
    code = (
        "import os, socket, glob\n"
        "print(glob.glob('/tmp/ray/**/*', recursive=True))\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect('\\0ray')\n    print('connected')\nexcept OSError as e:\n"
        "    print('refused', e.errno)\n"
    )
    result = await _run(sandbox, code, tmp_path / "ws")
    assert result.stdout.splitlines()[0] == "[]"
    assert "connected" not in result.stdout


# ---------------------------------------------------------------- fail closed


async def test_a_node_without_bubblewrap_refuses_and_says_why(tmp_path: Path) -> None:
    runtime = SandboxRuntime(bwrap=tmp_path / "no-bwrap")
    sandbox = PythonSandbox(LIMITS, runtime)
    status = await sandbox.status()
    assert status.isolation == "unavailable"
    assert "bubblewrap is not installed" in status.detail
    with pytest.raises(ToolError, match="python_exec is unavailable on this node: bubblewrap"):
        await _run(sandbox, "print('ran')", tmp_path / "ws")


async def test_a_sandbox_that_cannot_start_refuses(tmp_path: Path, packages: Path) -> None:
    # A "bubblewrap" that always fails, as on a node where user namespaces are not allowed
    # (next to the packages fixture's file: a place the sandbox's user can reach).
    fake = packages / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    sandbox = PythonSandbox(LIMITS, SandboxRuntime(bwrap=fake))
    status = await sandbox.status()
    assert status.isolation == "unavailable"
    assert "No permissions to create new namespace" in status.detail
    with pytest.raises(ToolError, match="No permissions"):
        await _run(sandbox, "print('ran')", tmp_path / "ws")


async def test_the_unsafe_mode_is_named_so_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox = PythonSandbox(LIMITS, SandboxRuntime(mode="unsafe-single-tenant"))
    with caplog.at_level("WARNING", logger="agentcluster.tools._sandbox"):
        status = await sandbox.status()
    assert status.isolation == "unsafe-single-tenant"
    assert any("WITHOUT isolation" in record.message for record in caplog.records)
    result = await _run(sandbox, "open('a.txt','w').write('x'); print('ran')", tmp_path / "ws")
    assert (result.stdout, result.isolation) == ("ran\n", "unsafe-single-tenant")
    assert (tmp_path / "ws" / "a.txt").read_text() == "x"


def test_the_settings_offer_no_silent_fallback() -> None:
    assert ToolSettings().python_sandbox == "bwrap"
    with pytest.raises(ValueError, match="python_sandbox"):
        ToolSettings(python_sandbox="auto")  # type: ignore[arg-type]


# ---------------------------------------------------------------- the tool


def _invocation(tool: str, arguments: dict[str, object], session: str) -> ToolInvocation:
    return ToolInvocation(
        tenant_id="tenant-a",
        session_id=session,
        turn_id="turn-1",
        agent="tester",
        tool_call_id=uuid.uuid4().hex,
        tool=tool,
        arguments=arguments,
    )


async def test_python_exec_and_file_tools_share_the_session_workspace(
    sandbox: PythonSandbox, workspaces: SessionWorkspaces
) -> None:
    executor = InProcessToolExecutor(
        ToolRegistry([PythonExecTool(sandbox, workspaces), *file_tools(workspaces)])
    )
    session = f"s-{uuid.uuid4().hex[:8]}"
    wrote = await executor.execute(
        _invocation("file_write", {"path": "data.csv", "text": "a,b\n1,2\n"}, session)
    )
    assert wrote.ok
    code = "rows = open('data.csv').read().split()\nopen('count.txt','w').write(str(len(rows)))"
    ran = await executor.execute(_invocation("python_exec", {"code": code}, session))
    assert ran.ok and ran.result["stopped"] == "ok", ran
    read = await executor.execute(_invocation("file_read", {"path": "count.txt"}, session))
    assert read.ok and read.result["text"] == "2"
    other = await executor.execute(_invocation("file_list", {}, "another-session"))
    assert other.ok and other.result["entries"] == []
