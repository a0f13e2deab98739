"""``python_exec``: run model-written Python in a limited subprocess with the session workspace.

The code runs in ``sys.executable -I`` (isolated mode: no PYTHON* variables, no user site) with a
scrubbed environment, the workspace as its working directory, and these limits:

* CPU time (RLIMIT_CPU), address space (RLIMIT_AS), file size, open files, no core dumps;
* wall clock: the whole process group is killed when it runs out;
* no network, by one of two isolations, reported in every result as ``network_isolation``:

  - ``netns``: the child enters new network and PID namespaces (``unshare``; root, or
    unprivileged user namespaces) and drops every capability. Only a down loopback exists, so
    nothing connects anywhere; when the code's first process ends, the kernel kills everything
    it started, even processes that left the process group.
  - ``audit-hook``: the fallback where namespaces are not allowed. An audit hook refuses
    non-Unix sockets, ctypes, process creation and ``exec``. This is a guard against accidents,
    not a boundary against hostile code (a C extension could bypass it).

Known gaps: the code can read files the actor's user can read (no mount namespace), and the
kernel never enforces RLIMIT_NPROC for uid 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from agentcluster.config import ToolSettings
from agentcluster.errors import ConfigError, ToolError
from agentcluster.llm._types import ToolSchema
from agentcluster.tools._base import ToolInvocation
from agentcluster.tools._files import SessionWorkspaces

__all__ = [
    "Isolation",
    "PythonExecTool",
    "PythonSandbox",
    "SandboxLimits",
    "SandboxResult",
    "StopReason",
]

Isolation = Literal["netns", "audit-hook"]
StopReason = Literal["ok", "cpu", "memory", "wall", "signal"]

# Exit codes the launcher uses to tell the parent what happened (outside the usual 0..2).
_MEMORY_EXIT = 86
_SETUP_EXIT = 87
_CHILD_ENV_PATH = "/usr/local/bin:/usr/bin:/bin"

# Runs in the child before the model's code. Standard library only: it is passed with -c.
_LAUNCHER = r"""
import json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
source = sys.stdin.read()
sys.stdin.close()
sys.stdin = open(os.devnull)
sys.argv = ["<python_exec>"]

def setup_failed(message):
    os.write(2, ("python_exec sandbox setup failed: " + message + "\n").encode())
    os._exit(cfg["setup_exit"])

def enter_namespaces():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    newnet, newpid, newuser = 0x40000000, 0x20000000, 0x10000000
    if libc.unshare(newnet | newpid) != 0 and libc.unshare(newuser | newnet | newpid) != 0:
        setup_failed("unshare: " + os.strerror(ctypes.get_errno()))
    # Three processes: this one relays the code's exit status; its child is PID 1 of the new
    # namespace (when it ends, the kernel ends everything the code started); PID 1's child runs
    # the code. PID 1 ignores signals it has no handler for, so the code must not be PID 1.
    read_end, write_end = os.pipe()
    if os.fork():
        os.close(write_end)
        data = os.read(read_end, 32)
        os.wait()
        relay_status(int(data) if data else signal.SIGKILL)
    os.close(read_end)
    pid = os.fork()
    if pid:
        status = os.waitpid(pid, 0)[1]
        os.write(write_end, str(status).encode())
        os._exit(0)
    os.close(write_end)
    drop_capabilities(libc)

def relay_status(status):
    if os.WIFSIGNALED(status):
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status))

def drop_capabilities(libc):
    import ctypes
    pr_capbset_drop, pr_set_no_new_privs = 24, 38
    for cap in range(64):
        libc.prctl(pr_capbset_drop, cap, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    if libc.capset(header, data) != 0:
        setup_failed("capset: " + os.strerror(ctypes.get_errno()))
    libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0)

def install_audit_hook():
    import socket
    unix = socket.AF_UNIX
    blocked = ("subprocess.", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.fork",
               "os.forkpty", "pty.spawn", "ctypes.", "winreg.")
    blocked_imports = ("ctypes", "_ctypes", "_posixsubprocess")

    def hook(event, args):
        if event == "socket.__new__" and args[1] != unix:
            raise PermissionError("network access is disabled in python_exec")
        if event.startswith(blocked):
            raise PermissionError(event + " is disabled in python_exec")
        if event == "import" and args[0] in blocked_imports:
            raise PermissionError("importing " + args[0] + " is disabled in python_exec")
    sys.addaudithook(hook)

# Limits first: they are inherited by the namespace's first process, and raising them again
# needs the capability dropped next.
for name, soft, hard in cfg["limits"]:
    resource.setrlimit(getattr(resource, name), (soft, hard))
if cfg["isolation"] == "netns":
    enter_namespaces()
if cfg["isolation"] == "audit-hook":
    install_audit_hook()

namespace = {"__name__": "__main__", "__builtins__": __builtins__}
try:
    exec(compile(source, "<python_exec>", "exec"), namespace)
except MemoryError:
    os.write(2, b"\nMemoryError: python_exec memory limit reached\n")
    os._exit(cfg["memory_exit"])
except SystemExit:
    raise
except BaseException as exc:
    import traceback
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != "<python_exec>":
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)
    sys.exit(1)
"""

_PROBE = r"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
flags = 0x40000000 | 0x20000000
ok = libc.unshare(flags) == 0 or libc.unshare(flags | 0x10000000) == 0
sys.exit(0 if ok else 1)
"""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one python_exec run.

    Attributes:
        cpu_s: CPU seconds (RLIMIT_CPU soft limit; SIGKILL one second later).
        memory_mb: address space in MiB (RLIMIT_AS).
        wall_s: wall-clock seconds before the process group is killed.
        max_output_bytes: stdout and stderr kept, each; the rest is read and dropped.
        max_file_mb: largest file the code may write (RLIMIT_FSIZE).
        max_open_files: RLIMIT_NOFILE.
        max_processes: processes and threads the code may add (RLIMIT_NPROC counts all of
            the user's tasks, so the limit is set to their current count plus this; the kernel
            never enforces it for uid 0, so it is not set there).
    """

    cpu_s: int
    memory_mb: int
    wall_s: float
    max_output_bytes: int = 64_000
    max_file_mb: int = 64
    max_open_files: int = 256
    max_processes: int = 64

    def __post_init__(self) -> None:
        numbers = asdict(self)
        bad = [f"{name}={value}" for name, value in numbers.items() if value <= 0]
        if bad:
            raise ConfigError(f"python_exec limits must be positive: {', '.join(bad)}")

    @classmethod
    def from_settings(cls, settings: ToolSettings) -> SandboxLimits:
        """The limits of ``settings`` (SA01_TOOLS_PYTHON_*)."""
        return cls(
            cpu_s=settings.python_cpu_s,
            memory_mb=settings.python_memory_mb,
            wall_s=settings.python_wall_s,
        )

    def rlimits(self) -> list[tuple[str, int, int]]:
        """The (resource name, soft, hard) limits the child sets on itself."""
        memory = self.memory_mb * 1024 * 1024
        file_size = self.max_file_mb * 1024 * 1024
        return [
            ("RLIMIT_CORE", 0, 0),
            ("RLIMIT_CPU", self.cpu_s, self.cpu_s + 1),
            ("RLIMIT_AS", memory, memory),
            ("RLIMIT_FSIZE", file_size, file_size),
            ("RLIMIT_NOFILE", self.max_open_files, self.max_open_files),
        ]


@dataclass(frozen=True)
class SandboxResult:
    """What a python_exec run did; ``stopped`` says why it ended (``ok``: on its own)."""

    exit_code: int
    stopped: StopReason
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    network_isolation: Isolation
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of the fields."""
        return asdict(self)


class PythonSandbox:
    """Runs Python source in a limited subprocess (see the module docstring).

    Args:
        limits: the limits of every run.
        isolation: ``"auto"`` uses namespaces when this machine allows them, else the audit
            hook; ``"netns"`` requires namespaces; ``"audit-hook"`` forces the fallback.
    """

    def __init__(
        self, limits: SandboxLimits, isolation: Literal["auto"] | Isolation = "auto"
    ) -> None:
        self._limits = limits
        self._requested = isolation
        self._isolation: Isolation | None = None if isolation != "audit-hook" else "audit-hook"
        self._lock = asyncio.Lock()

    @property
    def limits(self) -> SandboxLimits:
        return self._limits

    async def isolation(self) -> Isolation:
        """The network isolation runs use (probed once on first use).

        Raises:
            ConfigError: ``"netns"`` was required and this machine does not allow namespaces.
        """
        async with self._lock:
            if self._isolation is None:
                netns = await _namespaces_available()
                if not netns and self._requested == "netns":
                    raise ConfigError(
                        "python_exec isolation 'netns': unshare(CLONE_NEWNET|CLONE_NEWPID) is "
                        "not permitted here; use 'auto' to fall back to the audit hook"
                    )
                self._isolation = "netns" if netns else "audit-hook"
            return self._isolation

    async def run(self, source: str, workspace: Path) -> SandboxResult:
        """Run ``source`` with ``workspace`` as its working directory.

        The process group is killed when the wall clock runs out and also when the caller is
        cancelled, so no run outlives its call.
        """
        isolation = await self.isolation()
        limits = self._limits.rlimits()
        if os.getuid() != 0:
            tasks = await asyncio.to_thread(_user_task_count, os.getuid())
            nproc = tasks + self._limits.max_processes
            limits.append(("RLIMIT_NPROC", nproc, nproc))
        config = {
            "isolation": isolation,
            "limits": limits,
            "memory_exit": _MEMORY_EXIT,
            "setup_exit": _SETUP_EXIT,
        }
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-X",
            "utf8",
            "-c",
            _LAUNCHER,
            json.dumps(config),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=workspace,
            env=_child_env(workspace),
            start_new_session=True,
        )
        try:
            return await self._supervise(process, source, isolation, started)
        finally:
            _kill_group(process.pid)

    async def _supervise(
        self,
        process: asyncio.subprocess.Process,
        source: str,
        isolation: Isolation,
        started: float,
    ) -> SandboxResult:
        assert process.stdin and process.stdout and process.stderr  # all three are pipes
        limit = self._limits.max_output_bytes
        stdout = asyncio.create_task(_read_capped(process.stdout, limit))
        stderr = asyncio.create_task(_read_capped(process.stderr, limit))
        wall_expired = False
        try:
            async with asyncio.timeout(self._limits.wall_s):
                await _feed(process.stdin, source)
                await process.wait()
        except TimeoutError:
            wall_expired = True
            _kill_group(process.pid)
            await process.wait()
        finally:
            # Killing the group closes the pipes, so the readers finish.
            _kill_group(process.pid)
            out, out_cut = await stdout
            err, err_cut = await stderr
        exit_code = process.returncode if process.returncode is not None else -signal.SIGKILL
        return SandboxResult(
            exit_code=exit_code,
            stopped=_stop_reason(exit_code, err, wall_expired),
            stdout=out,
            stderr=err,
            stdout_truncated=out_cut,
            stderr_truncated=err_cut,
            network_isolation=isolation,
            duration_s=round(time.monotonic() - started, 3),
        )


async def _namespaces_available() -> bool:
    probe = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-c",
        _PROBE,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env={"PATH": _CHILD_ENV_PATH},
    )
    return await probe.wait() == 0


def _user_task_count(uid: int) -> int:
    # RLIMIT_NPROC counts every task (process or thread) whose real uid is the user's.
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields.get("Threads", "1"))
    return count


def _child_env(workspace: Path) -> dict[str, str]:
    # Nothing from the actor's environment: it holds database and API credentials.
    return {
        "PATH": _CHILD_ENV_PATH,
        "HOME": str(workspace),
        "TMPDIR": str(workspace),
        "LANG": "C.UTF-8",
    }


async def _feed(stdin: asyncio.StreamWriter, source: str) -> None:
    try:
        stdin.write(source.encode("utf-8"))
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the child died during setup; its exit status tells why
    finally:
        stdin.close()


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> tuple[str, bool]:
    kept = bytearray()
    truncated = False
    while chunk := await stream.read(65_536):
        room = limit - len(kept)
        if len(chunk) > room:
            truncated = True
        kept.extend(chunk[: max(room, 0)])
    return kept.decode("utf-8", errors="replace"), truncated


def _kill_group(pid: int) -> None:
    # The group may be gone already; that is the normal case after a clean exit.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _stop_reason(exit_code: int, stderr: str, wall_expired: bool) -> StopReason:
    if wall_expired:
        return "wall"
    if exit_code == -signal.SIGXCPU:
        return "cpu"
    if exit_code == _MEMORY_EXIT or (exit_code != 0 and "MemoryError" in stderr):
        return "memory"
    if exit_code < 0:
        return "signal"
    return "ok"


class PythonExecTool:
    """``python_exec``: run Python code in the sandbox, in the calling session's workspace.

    Args:
        sandbox: where the code runs.
        workspaces: maps the invocation's tenant and session to a directory.
    """

    def __init__(self, sandbox: PythonSandbox, workspaces: SessionWorkspaces) -> None:
        self._sandbox = sandbox
        self._workspaces = workspaces
        limits = sandbox.limits
        self._schema = ToolSchema(
            name="python_exec",
            description=(
                "Run Python 3 code in a sandbox without network access and return stdout, "
                "stderr and the exit code. The working directory is the session workspace "
                f"(files persist between calls). Limits: {limits.cpu_s} s CPU, "
                f"{limits.memory_mb} MB memory, {limits.wall_s:g} s wall clock. "
                "Print what you want to see."
            ),
            parameters={
                "type": "object",
                "properties": {"code": {"type": "string", "description": "Python source."}},
                "required": ["code"],
                "additionalProperties": False,
            },
        )

    @property
    def schema(self) -> ToolSchema:
        return self._schema

    async def run(self, arguments: dict[str, Any], invocation: ToolInvocation) -> dict[str, Any]:
        """Run the code; a run that fails or hits a limit is a result, not an error.

        Raises:
            ToolError: the code is not a string, or the sandbox could not start.
        """
        code = arguments.get("code")
        if not isinstance(code, str):
            raise ToolError("code must be a string of Python source")
        workspace = await self._workspaces.open(invocation.tenant_id, invocation.session_id)
        try:
            result = await self._sandbox.run(code, workspace)
        except OSError as exc:
            raise ToolError(f"python_exec could not start: {exc.strerror or exc}") from None
        return result.to_dict()
