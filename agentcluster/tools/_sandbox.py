"""``python_exec``: model-written Python in a bubblewrap sandbox, one sandbox per call.

Every run is a fresh ``bwrap`` (Debian package ``bubblewrap``) with:

* its own user, mount, PID, IPC, UTS, cgroup and network namespaces (no network at all: only a
  down loopback exists), no capabilities, ``--new-session`` and ``--die-with-parent``;
* an unprivileged identity: uid/gid 65534 inside, and outside the actor's user, or, when the
  actor runs as root, ``SA01_TOOLS_SANDBOX_UID``/``_GID`` (65532 by default). Never root: the
  kernel does not hold root to RLIMIT_NPROC, and root owns the service's files;
* a read-only ``/usr`` (the interpreter, ``SA01_TOOLS_SANDBOX_PYTHON``; ``/usr/local`` hidden),
  the packages offered to user code (``SA01_TOOLS_SANDBOX_PACKAGES``, read-only under
  ``/opt/packages``) and nothing else of the host: not ``/etc``, not ``/home`` or ``/root``, not
  the service's venv, source tree or data directory; a private ``/proc``, a minimal ``/dev``;
* ``/workspace`` (the working directory) and ``/tmp`` as size-limited tmpfs mounts. The session's
  stored workspace is never mounted: it is copied in as a tar stream and the result copied back
  only if it is a valid archive within the session's quota (:mod:`._workspace_archive`);
* an empty environment but PATH, HOME, TMPDIR and LANG;
* limits: CPU seconds, address space, file size, open files, processes (RLIMIT_NPROC, held per
  sandbox since the uid is not root), wall clock, output bytes; and where the actor may write
  cgroup v1 ``memory`` and ``pids`` (root on most VMs), a cgroup per run capping memory
  (including the tmpfs pages and kernel memory) and processes.

If bubblewrap cannot build this sandbox on a node, ``python_exec`` refuses with a tool error that
names the cause; :meth:`PythonSandbox.status` (the tool actor's health, ``/v1/cluster``,
``agentcluster check``) says which isolation a node has. The only weaker mode,
``SA01_TOOLS_PYTHON_SANDBOX=unsafe-single-tenant``, runs the same runner as a plain subprocess of
the actor's user (no namespaces: it can read what that user can); it is for single-tenant
development machines only and logs a warning every time a sandbox starts in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import tempfile
import time
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from agentcluster.config import ToolSettings
from agentcluster.errors import ConfigError, ToolError
from agentcluster.llm import ToolSchema
from agentcluster.tools import _sandbox_runner as runner
from agentcluster.tools._base import ToolInvocation
from agentcluster.tools._files import SessionWorkspaces
from agentcluster.tools._seccomp import seccomp_program
from agentcluster.tools._workspace_archive import (
    ArchiveRejected,
    WorkspaceQuota,
    pack_workspace,
    replace_workspace,
    unpack_checked,
    workspace_usage,
)

__all__ = [
    "PythonExecTool",
    "PythonSandbox",
    "SandboxLimits",
    "SandboxMode",
    "SandboxResult",
    "SandboxRuntime",
    "SandboxStatus",
    "StopReason",
]

log = logging.getLogger(__name__)

SandboxMode = Literal["bwrap", "unsafe-single-tenant"]
StopReason = Literal["ok", "cpu", "memory", "wall", "signal", "error"]

_RUNNER_SOURCE = Path(runner.__file__).read_text(encoding="utf-8")
_INNER_ID = 65534
_WORKSPACE = "/workspace"
_PACKAGES = "/opt/packages"
_ENV_PATH = "/usr/bin:/bin"
_SETUP_GRACE_S = 10.0
_REPROBE_S = 30.0
_CGROUP_SLACK_MB = 64


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one python_exec run.

    Attributes:
        cpu_s: CPU seconds of each process (RLIMIT_CPU soft limit; SIGKILL one second later).
        memory_mb: address space of each process in MiB (RLIMIT_AS), and with a cgroup the
            memory of the whole run (plus its tmpfs mounts).
        wall_s: wall-clock seconds before everything the code started is killed.
        max_output_bytes: stdout and stderr kept, each; the rest is read and dropped.
        max_file_mb: largest file the code may write (RLIMIT_FSIZE).
        max_open_files: RLIMIT_NOFILE.
        max_processes: processes and threads of one run (RLIMIT_NPROC, and pids.max).
        tmp_mb: size of the run's ``/tmp``.
        workspace_bytes: the session workspace's quota of file bytes (its tmpfs size).
        workspace_files: the session workspace's quota of files and directories.
    """

    cpu_s: int
    memory_mb: int
    wall_s: float
    max_output_bytes: int = 64_000
    max_file_mb: int = 64
    max_open_files: int = 256
    max_processes: int = 64
    tmp_mb: int = 64
    workspace_bytes: int = 100 * 1024 * 1024
    workspace_files: int = 10_000

    def __post_init__(self) -> None:
        bad = [f"{name}={value}" for name, value in asdict(self).items() if value <= 0]
        if bad:
            raise ConfigError(f"python_exec limits must be positive: {', '.join(bad)}")

    @classmethod
    def from_settings(cls, settings: ToolSettings) -> SandboxLimits:
        """The limits of ``settings`` (SA01_TOOLS_PYTHON_* and SA01_TOOLS_WORKSPACE_*)."""
        return cls(
            cpu_s=settings.python_cpu_s,
            memory_mb=settings.python_memory_mb,
            wall_s=settings.python_wall_s,
            max_processes=settings.python_max_processes,
            tmp_mb=settings.python_tmp_mb,
            workspace_bytes=settings.workspace_max_bytes,
            workspace_files=settings.workspace_max_files,
        )

    @property
    def quota(self) -> WorkspaceQuota:
        return WorkspaceQuota(max_bytes=self.workspace_bytes, max_files=self.workspace_files)

    def rlimits(self) -> list[tuple[str, int, int]]:
        """The (resource name, soft, hard) limits the code's process gets."""
        memory = self.memory_mb * 1024 * 1024
        file_size = min(self.max_file_mb * 1024 * 1024, self.workspace_bytes)
        return [
            ("RLIMIT_CORE", 0, 0),
            ("RLIMIT_CPU", self.cpu_s, self.cpu_s + 1),
            ("RLIMIT_AS", memory, memory),
            ("RLIMIT_FSIZE", file_size, file_size),
            ("RLIMIT_NOFILE", self.max_open_files, self.max_open_files),
            ("RLIMIT_NPROC", self.max_processes, self.max_processes),
        ]


@dataclass(frozen=True)
class SandboxRuntime:
    """What the sandbox is built from on this node.

    Attributes:
        bwrap: the bubblewrap binary.
        python: the interpreter user code runs on (it must live under ``/usr``).
        packages: directories offered read-only to user code (on ``sys.path``).
        uid: the sandbox's user outside when the actor runs as root.
        gid: its group.
        mode: ``bwrap``, or the explicitly unsafe ``unsafe-single-tenant``.
    """

    bwrap: Path = Path("/usr/bin/bwrap")
    python: Path = Path("/usr/bin/python3")
    packages: tuple[Path, ...] = ()
    uid: int = 65532
    gid: int = 65532
    mode: SandboxMode = "bwrap"

    @classmethod
    def from_settings(cls, settings: ToolSettings) -> SandboxRuntime:
        """The runtime of ``settings`` (SA01_TOOLS_SANDBOX_*, SA01_TOOLS_PYTHON_SANDBOX)."""
        return cls(
            bwrap=settings.sandbox_bwrap,
            python=settings.sandbox_python,
            packages=tuple(settings.sandbox_packages),
            uid=settings.sandbox_uid,
            gid=settings.sandbox_gid,
            mode=settings.python_sandbox,
        )


@dataclass(frozen=True)
class SandboxStatus:
    """Which isolation python_exec has on this node.

    Attributes:
        isolation: ``bwrap`` (the sandbox works), ``unsafe-single-tenant`` (the weak mode was
            chosen explicitly) or ``unavailable`` (python_exec refuses to run).
        detail: what the isolation consists of, or why it is unavailable.
        cgroup: ``v1`` when each run gets its own memory and pids cgroup, else ``none``.
        uid: the uid sandboxed code runs as, seen from outside.
    """

    isolation: Literal["bwrap", "unsafe-single-tenant", "unavailable"]
    detail: str
    cgroup: Literal["v1", "none"] = "none"
    uid: int | None = None

    @property
    def ready(self) -> bool:
        return self.isolation != "unavailable"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of the fields."""
        return asdict(self)

    def summary(self) -> str:
        """One line: ``bwrap; cgroup v1; uid 65532``, or ``unavailable: <why>``."""
        if self.isolation == "unavailable":
            return f"unavailable: {self.detail}"
        return f"{self.isolation}; cgroup {self.cgroup}; uid {self.uid}"


@dataclass(frozen=True)
class WorkspaceOutcome:
    """What happened to the session workspace: ``saved`` with its size, or why it was not."""

    saved: bool
    bytes: int = 0
    files: int = 0
    note: str | None = None


@dataclass(frozen=True)
class SandboxResult:
    """What a python_exec run did; ``stopped`` says why it ended (``ok``: on its own)."""

    exit_code: int
    stopped: StopReason
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    isolation: str
    duration_s: float
    workspace: WorkspaceOutcome = field(default_factory=lambda: WorkspaceOutcome(saved=False))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of the fields."""
        return asdict(self)


class PythonSandbox:
    """Runs Python source in a fresh sandbox per call (see the module docstring).

    Args:
        limits: the limits of every run.
        runtime: what the sandbox is built from; the defaults by default.
    """

    def __init__(self, limits: SandboxLimits, runtime: SandboxRuntime | None = None) -> None:
        self._limits = limits
        self._runtime = runtime or SandboxRuntime()
        self._status: SandboxStatus | None = None
        self._probed_at = 0.0
        self._lock = asyncio.Lock()
        self._cgroups = _Cgroups.create() if os.geteuid() == 0 else None
        self._workspace_locks: weakref.WeakValueDictionary[Path, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    @property
    def limits(self) -> SandboxLimits:
        return self._limits

    async def status(self) -> SandboxStatus:
        """This node's isolation, probed by running an empty program in the sandbox (again
        every 30 s while unavailable, so a fixed node recovers without a restart)."""
        async with self._lock:
            stale = time.monotonic() - self._probed_at > _REPROBE_S
            if self._status is None or (not self._status.ready and stale):
                self._status = await self._probe()
                self._probed_at = time.monotonic()
                self._announce(self._status)
            return self._status

    def _announce(self, status: SandboxStatus) -> None:
        if status.isolation == "unsafe-single-tenant":
            log.warning(
                "python_exec runs WITHOUT isolation (SA01_TOOLS_PYTHON_SANDBOX="
                "unsafe-single-tenant): code can read and write whatever uid %s can; never use "
                "this with more than one tenant",
                status.uid,
            )
        elif status.ready:
            log.info("python_exec sandbox: %s (cgroup %s)", status.detail, status.cgroup)
        else:
            log.error("python_exec is unavailable on this node: %s", status.detail)

    async def _probe(self) -> SandboxStatus:
        if self._runtime.mode == "unsafe-single-tenant":
            return SandboxStatus("unsafe-single-tenant", "plain subprocess", uid=os.geteuid())
        problem = _missing_parts(self._runtime)
        if problem:
            return SandboxStatus("unavailable", problem)
        with tempfile.TemporaryDirectory(prefix="ac-probe-") as empty:
            try:
                result = await self._execute("pass", Path(empty), save=False)
            except OSError as exc:
                return SandboxStatus("unavailable", f"bubblewrap could not start: {exc}")
        if result.exit_code != 0 or result.stopped != "ok":
            reason = (result.stderr.strip() or f"exit code {result.exit_code}")[-500:]
            return SandboxStatus("unavailable", f"bubblewrap sandbox failed: {reason}")
        cgroup: Literal["v1", "none"] = "v1" if self._cgroups else "none"
        return SandboxStatus("bwrap", _describe(self._runtime), cgroup, self._outside_uid())

    def _outside_uid(self) -> int:
        return self._runtime.uid if os.geteuid() == 0 else os.geteuid()

    async def run(self, source: str, workspace: Path) -> SandboxResult:
        """Run ``source`` in ``workspace`` (copied in, and back if the result is valid).

        Everything the run started is killed when the wall clock runs out and when the caller
        is cancelled, so no run outlives its call.

        Raises:
            ToolError: the sandbox is unavailable on this node (the message says why), or the
                stored workspace is already over its quota.
        """
        status = await self.status()
        if not status.ready:
            raise ToolError(f"python_exec is unavailable on this node: {status.detail}")
        key = await asyncio.to_thread(workspace.resolve)
        lock = self._workspace_locks.setdefault(key, asyncio.Lock())
        async with lock:
            used, entries = await asyncio.to_thread(workspace_usage, workspace)
            quota = self._limits.quota
            if used > quota.max_bytes or entries > quota.max_files:
                raise ToolError(
                    f"the session workspace holds {used} bytes in {entries} entries, over its "
                    f"quota of {quota.max_bytes} bytes and {quota.max_files} entries; delete "
                    "files first"
                )
            return await self._execute(source, workspace, save=True)

    async def _execute(self, source: str, workspace: Path, *, save: bool) -> SandboxResult:
        started = time.monotonic()
        cgroup = self._cgroups.new_run(self._limits) if self._cgroups else None
        try:
            run = _Run(self._limits, self._runtime, cgroup, workspace, save)
            outcome = await run.execute(source)
        finally:
            if cgroup is not None:
                # Off the event loop: the run's last processes may take a moment to leave it.
                await asyncio.to_thread(cgroup.remove)
        return _result(outcome, self._runtime.mode, round(time.monotonic() - started, 3))


@dataclass
class _Outcome:
    returncode: int | None
    report: dict[str, Any] | None
    stdout: tuple[str, bool]
    stderr: tuple[str, bool]
    killed: bool
    workspace: WorkspaceOutcome


class _Run:
    """One sandboxed execution: the process, the three pipes, the workspace in and out."""

    def __init__(
        self,
        limits: SandboxLimits,
        runtime: SandboxRuntime,
        cgroup: _RunCgroup | None,
        workspace: Path,
        save: bool,
    ) -> None:
        self._limits = limits
        self._runtime = runtime
        self._cgroup = cgroup
        self._workspace = workspace
        self._save = save
        self._scratch: Path | None = None
        self._result_fd_inside = -1
        self._seccomp_fd: int | None = None

    async def execute(self, source: str) -> _Outcome:
        stdin_read, stdin_write = os.pipe()
        result_read, result_write = os.pipe()
        self._result_fd_inside = result_write
        self._seccomp_fd = _seccomp_fd() if self._runtime.mode == "bwrap" else None
        inherited = [stdin_read, result_write]
        if self._seccomp_fd is not None:
            inherited.append(self._seccomp_fd)
        try:
            process = await self._spawn(stdin_read, result_write)
        except BaseException:
            os.close(stdin_write)
            os.close(result_read)
            raise
        finally:
            for fd in inherited:  # the child has its copies; ours are closed exactly once
                os.close(fd)
        try:
            return await self._supervise(process, source, stdin_write, result_read)
        finally:
            _kill_group(process.pid)
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)

    async def _spawn(self, stdin_fd: int, result_fd: int) -> asyncio.subprocess.Process:
        passed = (result_fd,) if self._seccomp_fd is None else (result_fd, self._seccomp_fd)
        return await asyncio.create_subprocess_exec(
            *self._command(),
            stdin=stdin_fd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=passed,
            cwd="/",
            env={"PATH": _ENV_PATH, "LANG": "C.UTF-8"},
            start_new_session=True,
        )

    def _command(self) -> list[str]:
        python = [str(self._runtime.python), "-I", "-S", "-B", "-X", "utf8", "-c", _RUNNER_SOURCE]
        if self._runtime.mode == "unsafe-single-tenant":
            return python
        command = [*self._bwrap_arguments(), "--", *python]
        if os.geteuid() == 0:
            command = [
                "setpriv",
                f"--reuid={self._runtime.uid}",
                f"--regid={self._runtime.gid}",
                "--clear-groups",
                *command,
            ]
        if self._cgroup is not None:
            command = self._cgroup.enter_command(command)
        return command

    def _bwrap_arguments(self) -> list[str]:
        limits = self._limits
        arguments = [
            str(self._runtime.bwrap),
            "--unshare-all",
            "--unshare-user",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--uid",
            str(_INNER_ID),
            "--gid",
            str(_INNER_ID),
            "--hostname",
            "python-exec",
            "--ro-bind",
            "/usr",
            "/usr",
            "--tmpfs",
            "/usr/local",
            "--remount-ro",
            "/usr/local",
            *_root_links(),
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--size",
            str(limits.tmp_mb * 1024 * 1024),
            "--tmpfs",
            "/tmp",
            "--size",
            str(limits.workspace_bytes),
            "--tmpfs",
            _WORKSPACE,
            "--size",
            str(limits.tmp_mb * 1024 * 1024),
            "--tmpfs",
            "/dev/shm",
            "--remount-ro",
            "/dev",
            "--chdir",
            _WORKSPACE,
            "--disable-userns",
            "--clearenv",
        ]
        if self._seccomp_fd is not None:
            arguments += ["--seccomp", str(self._seccomp_fd)]
        for index, package in enumerate(self._runtime.packages):
            # bwrap runs as the sandbox's user: it must be able to reach the directory.
            arguments += ["--ro-bind", str(package), f"{_PACKAGES}/{index}"]
        for name, value in _sandbox_env("/workspace", "/tmp").items():
            arguments += ["--setenv", name, value]
        # Last: the root (a tmpfs of mount points) read-only, once every mount is made.
        return [*arguments, "--remount-ro", "/"]

    def _header(self, source: bytes, result_fd: int) -> bytes:
        if self._runtime.mode == "unsafe-single-tenant":
            self._scratch = Path(tempfile.mkdtemp(prefix="python-exec-"))
            inside = str(self._scratch / "workspace")
        else:
            inside = _WORKSPACE
        packages = [f"{_PACKAGES}/{index}" for index in range(len(self._runtime.packages))]
        if self._runtime.mode == "unsafe-single-tenant":
            packages = [str(path) for path in self._runtime.packages]
        rlimits = self._limits.rlimits()
        if self._runtime.mode == "unsafe-single-tenant":
            # RLIMIT_NPROC counts every process of the actor's own user here: it would break.
            rlimits = [limit for limit in rlimits if limit[0] != "RLIMIT_NPROC"]
        header = {
            "source_bytes": len(source),
            "workspace": inside,
            "rlimits": rlimits,
            "wall_s": self._limits.wall_s,
            "paths": packages,
            "result_fd": result_fd,
            "pid_namespace": self._runtime.mode == "bwrap",
        }
        return json.dumps(header).encode() + b"\n"

    async def _supervise(
        self,
        process: asyncio.subprocess.Process,
        source: str,
        stdin_fd: int,
        result_fd: int,
    ) -> _Outcome:
        assert process.stdout and process.stderr  # both are pipes
        limit = self._limits.max_output_bytes
        stdout = asyncio.create_task(_read_capped(process.stdout, limit))
        stderr = asyncio.create_task(_read_capped(process.stderr, limit))
        header = self._header(source.encode("utf-8"), self._result_fd_inside)
        feeding = asyncio.create_task(
            asyncio.to_thread(self._feed, stdin_fd, header, source.encode("utf-8"))
        )
        collecting = asyncio.create_task(asyncio.to_thread(self._collect, result_fd))
        killed = False
        try:
            async with asyncio.timeout(self._limits.wall_s + _SETUP_GRACE_S):
                await process.wait()
                report, workspace = await collecting
        except TimeoutError:
            killed = True
            _kill_group(process.pid)
            await process.wait()
            report, workspace = await collecting
        finally:
            _kill_group(process.pid)
            await asyncio.gather(feeding, return_exceptions=True)
            outputs = await asyncio.gather(stdout, stderr)
        if killed:
            workspace = WorkspaceOutcome(saved=False, note="the run was killed; nothing saved")
        return _Outcome(process.returncode, report, outputs[0], outputs[1], killed, workspace)

    def _feed(self, fd: int, header: bytes, source: bytes) -> None:
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(header)
                stream.write(source)
                pack_workspace(self._workspace, stream)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sandbox died during setup; its exit status and stderr tell why

    def _collect(self, fd: int) -> tuple[dict[str, Any] | None, WorkspaceOutcome]:
        with os.fdopen(fd, "rb") as stream:
            line = stream.readline(4096)
            try:
                report = json.loads(line) if line else None
            except ValueError:
                report = None
            if not isinstance(report, dict):
                return None, WorkspaceOutcome(saved=False, note="the sandbox returned no result")
            if not self._save:
                return report, WorkspaceOutcome(saved=False)
            return report, self._store(stream)

    def _store(self, stream: BinaryIO) -> WorkspaceOutcome:
        staged = self._workspace.with_name(f".{self._workspace.name}.new-{uuid.uuid4().hex[:8]}")
        try:
            report = unpack_checked(stream, staged, self._limits.quota)
        except ArchiveRejected as exc:
            # Not read further: closing the pipe ends the sandbox's writer at once.
            return WorkspaceOutcome(saved=False, note=f"{exc}; the workspace was not changed")
        replace_workspace(self._workspace, staged)
        note = f"{report.skipped} links or special files were not kept" if report.skipped else None
        return WorkspaceOutcome(True, report.bytes, report.files, note)


def _result(outcome: _Outcome, mode: SandboxMode, duration: float) -> SandboxResult:
    report = outcome.report
    stdout, stdout_cut = outcome.stdout
    stderr, stderr_cut = outcome.stderr
    if report is None:
        exit_code = outcome.returncode if outcome.returncode is not None else -signal.SIGKILL
        stopped: StopReason = "wall" if outcome.killed else "error"
    else:
        exit_code = os.waitstatus_to_exitcode(int(report["wait_status"]))
        stopped = _stop_reason(exit_code, stderr, bool(report.get("wall_expired")))
    return SandboxResult(
        exit_code=exit_code,
        stopped=stopped,
        stdout=stdout,
        stderr=stderr,
        stdout_truncated=stdout_cut,
        stderr_truncated=stderr_cut,
        isolation=mode,
        duration_s=duration,
        workspace=outcome.workspace,
    )


def _stop_reason(exit_code: int, stderr: str, wall_expired: bool) -> StopReason:
    if wall_expired:
        return "wall"
    if exit_code == -signal.SIGXCPU:
        return "cpu"
    if exit_code == runner.MEMORY_EXIT or (exit_code != 0 and "MemoryError" in stderr):
        return "memory"
    if exit_code == runner.SETUP_EXIT:
        return "error"
    if exit_code < 0:
        return "signal"
    return "ok"


def _seccomp_fd() -> int | None:
    # A memory file holding the filter, read by bwrap from the descriptor it inherits.
    program = seccomp_program()
    if program is None:
        return None
    fd = os.memfd_create("python-exec-seccomp", os.MFD_CLOEXEC)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _sandbox_env(home: str, tmp: str) -> dict[str, str]:
    # Nothing from the actor's environment: it holds database and API credentials.
    return {"PATH": _ENV_PATH, "HOME": home, "TMPDIR": tmp, "LANG": "C.UTF-8"}


def _root_links() -> list[str]:
    # /bin, /lib, ... are symlinks into /usr on merged-/usr systems (Debian 12): recreate them.
    arguments: list[str] = []
    for name in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            arguments += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            arguments += ["--ro-bind", str(path), str(path)]
    return arguments


def _missing_parts(runtime: SandboxRuntime) -> str | None:
    if not runtime.bwrap.is_file():
        return (
            f"bubblewrap is not installed ({runtime.bwrap} is missing; install the Debian "
            "package bubblewrap)"
        )
    python = runtime.python.resolve()
    if not python.is_file():
        return f"the sandbox interpreter {runtime.python} is missing"
    if not python.is_relative_to("/usr") or python.is_relative_to("/usr/local"):
        return f"the sandbox interpreter {python} must live under /usr (not /usr/local)"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is missing; it drops root before bubblewrap starts"
    for package in runtime.packages:
        if not package.is_dir():
            return f"the sandbox package directory {package} is missing"
    return None


def _describe(runtime: SandboxRuntime) -> str:
    outside = runtime.uid if os.geteuid() == 0 else os.geteuid()
    return (
        f"bubblewrap: user, mount, pid, ipc, uts, cgroup and network namespaces; uid {outside} "
        f"outside; read-only /usr ({runtime.python}) and {len(runtime.packages)} package "
        "directories; tmpfs workspace, /tmp and /dev/shm; no capabilities, no nested user "
        f"namespaces; seccomp {'on' if seccomp_program() else 'off (not x86-64)'}"
    )


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


class _Cgroups:
    """Per-run cgroups in the cgroup v1 ``memory`` and ``pids`` hierarchies, under this
    process's own cgroup in each (so they count against whatever limits the actor has)."""

    def __init__(self, parents: dict[str, Path]) -> None:
        self._parents = parents

    @classmethod
    def create(cls) -> _Cgroups | None:
        """The per-run cgroup factory, or None where the hierarchies are missing or read-only."""
        own = _own_cgroups()
        parents: dict[str, Path] = {}
        for controller in ("memory", "pids"):
            mount = Path("/sys/fs/cgroup") / controller
            if controller not in own or not (mount / "cgroup.procs").exists():
                return None
            parent = mount / own[controller].lstrip("/") / f"agentcluster-sandbox-{os.getpid()}"
            try:
                parent.mkdir(exist_ok=True)
            except OSError:
                return None
            parents[controller] = parent
        return cls(parents)

    def new_run(self, limits: SandboxLimits) -> _RunCgroup | None:
        """A fresh cgroup pair for one run, limited; None if it could not be made."""
        name = f"run-{uuid.uuid4().hex[:12]}"
        # The code's memory, its /tmp and /dev/shm tmpfs pages and its workspace's.
        memory = (limits.memory_mb + 2 * limits.tmp_mb + _CGROUP_SLACK_MB) * 1024 * 1024
        memory += limits.workspace_bytes
        settings = {
            "memory": {"memory.limit_in_bytes": str(memory)},
            "pids": {"pids.max": str(limits.max_processes + 8)},
        }
        made: list[Path] = []
        try:
            for controller, parent in self._parents.items():
                folder = parent / name
                folder.mkdir()
                made.append(folder)
                for key, value in settings[controller].items():
                    (folder / key).write_text(value)
        except OSError as exc:
            log.warning("python_exec: could not create a run cgroup (%s); rlimits only", exc)
            _RunCgroup(made).remove()
            return None
        return _RunCgroup(made)


class _RunCgroup:
    def __init__(self, folders: Sequence[Path]) -> None:
        self._folders = list(folders)

    def enter_command(self, command: list[str]) -> list[str]:
        """``command`` started by a shell that first moves itself into this run's cgroups."""
        script = 'for f in "$@"; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 97; shift; '
        script += 'done; shift; exec "$@"'
        procs = [str(folder / "cgroup.procs") for folder in self._folders]
        return ["/bin/sh", "-c", script, "sh", *procs, "--", *command]

    def remove(self) -> None:
        for folder in self._folders:
            for _ in range(50):
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        break
                    time.sleep(0.01)  # the last processes of the run are still exiting


def _own_cgroups() -> dict[str, str]:
    own: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(","):
                own[controller] = path
    return own


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
                "Run Python 3 code (standard library) in a sandbox without network access and "
                "return stdout, stderr and the exit code. The working directory is the session "
                "workspace (files persist between calls; /tmp does not). Limits: "
                f"{limits.cpu_s} s CPU, {limits.memory_mb} MB memory, {limits.wall_s:g} s wall "
                f"clock, {limits.workspace_bytes // (1024 * 1024)} MB of workspace files. "
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
            ToolError: the code is not a string, the sandbox is unavailable on this node, or
                it could not start.
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
