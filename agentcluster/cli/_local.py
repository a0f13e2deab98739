"""``agentcluster up`` / ``down``: ``agentcluster serve`` as a background process of this machine,
tracked by a PID file under the data dir.

Safety rule: a signal goes only to the PID in the PID file, and only while that process's command
line is an ``agentcluster serve`` (PIDs are reused; a stale file must never stop someone else's
process). Ray is stopped by the serve process itself on SIGINT; ``ray stop`` is never run, since it
would stop every Ray cluster of the user.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TextIO

from agentcluster.config import Settings
from agentcluster.datadir import create_private_file, make_private_dir, write_private_text

__all__ = [
    "SERVE_MODULE",
    "LocalFiles",
    "Probe",
    "is_alive",
    "is_serve_cmdline",
    "process_cmdline",
    "read_pid",
    "run_down",
    "run_up",
    "serve_pid",
]

Probe = Callable[[], Literal["ready", "degraded"] | None]
"""Asks the gateway ``/v1/ready``: "ready" (200), "degraded" (503), None when it does not answer."""

SERVE_MODULE = "deployments.launcher"
"""The module ``agentcluster serve`` runs as its process (the Ray edge's launcher: the CLI, in
the core, never imports it)."""

_POLL_S = 0.5
_TERM_GRACE_S = 10.0
_KILL_GRACE_S = 5.0


@dataclass(frozen=True)
class LocalFiles:
    """Where ``up`` keeps its PID file and log, and where the demo mode keeps its API key."""

    data_dir: Path

    @classmethod
    def of(cls, settings: Settings) -> LocalFiles:
        return cls(settings.data_dir.resolve())

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "agentcluster.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "agentcluster.log"

    @property
    def demo_key_file(self) -> Path:
        return self.data_dir / "demo-api-key"


# --- processes --------------------------------------------------------------------------------


def read_pid(path: Path) -> int | None:
    """The PID in ``path``, or None when the file is missing or does not hold a positive number."""
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def is_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie waiting to be reaped is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    stat = Path(f"/proc/{pid}/stat")
    try:
        # The state letter follows the parenthesised command name, which may contain spaces.
        state = stat.read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return stat.parent.exists() or not Path("/proc/self").exists()
    return state not in {"Z", "X"}


def process_cmdline(pid: int) -> list[str] | None:
    """The command line of ``pid``, or None when it cannot be read (gone, or not permitted)."""
    if Path("/proc/self").exists():
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    try:  # no /proc (macOS): ps prints the arguments joined by spaces
        result = subprocess.run(
            ["ps", "-ww", "-o", "args=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.split() if result.returncode == 0 else None


def is_serve_cmdline(argv: Sequence[str]) -> bool:
    """Whether a command line runs ``agentcluster serve`` (the console script, possibly through
    its interpreter, or ``python -m agentcluster.cli serve`` as ``up`` starts it), or the
    launcher that ``serve`` then runs in its place (``python -m deployments.launcher``)."""
    args = list(argv)
    if args and Path(args[0]).name.startswith("python"):
        args = args[1:]
        if args[:2] == ["-m", SERVE_MODULE]:
            return True
        if args[:2] == ["-m", "agentcluster.cli"]:
            return args[2:3] == ["serve"]
    return bool(args) and Path(args[0]).name == "agentcluster" and args[1:2] == ["serve"]


def _is_serve_process(pid: int) -> bool:
    cmdline = process_cmdline(pid)
    return is_alive(pid) and cmdline is not None and is_serve_cmdline(cmdline)


def serve_pid(files: LocalFiles) -> int | None:
    """The PID of the ``agentcluster serve`` process the PID file names, if it is still running."""
    pid = read_pid(files.pid_file)
    return pid if pid is not None and _is_serve_process(pid) else None


def _wait_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(0.1, timeout_s))
    return True


# --- up ---------------------------------------------------------------------------------------


def _start_serve(files: LocalFiles) -> subprocess.Popen[bytes]:
    make_private_dir(files.data_dir)
    create_private_file(files.log_file)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    with files.log_file.open("ab") as log:
        log.write(f"\n--- agentcluster up, {stamp} ---\n".encode())
        log.flush()
        # A new session: Ctrl-C in this terminal must not reach the background cluster.
        process = subprocess.Popen(
            [sys.executable, "-m", "agentcluster.cli", "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    write_private_text(files.pid_file, f"{process.pid}\n")
    return process


def _wait_ready(
    probe: Probe, alive: Callable[[], bool], wait_s: float
) -> Literal["ready", "degraded", "exited", "timeout"]:
    deadline = time.monotonic() + wait_s
    state: Literal["ready", "degraded"] | None = None
    while True:
        state = probe()
        if state == "ready":
            return "ready"
        if not alive():
            return "exited"
        if time.monotonic() >= deadline:
            return state or "timeout"
        time.sleep(_POLL_S)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join("  | " + line for line in text.splitlines()[-lines:])


def _print_up(url: str, pid: int, files: LocalFiles, demo: bool, out: TextIO) -> None:
    print(f"agentcluster is up: {url}  (pid {pid})", file=out)
    if demo and files.demo_key_file.exists():
        print(
            f"  demo mode (no LLM configured); API key in {files.demo_key_file}:\n"
            f"  export AGENTCLUSTER_URL={url} "
            f"AGENTCLUSTER_API_KEY=$(cat {files.demo_key_file})",
            file=out,
        )
    print(f"  log: {files.log_file}", file=out)
    print("  `agentcluster chat` talks to it, `agentcluster down` stops it", file=out)


def _child_alive(process: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: process.poll() is None


def _serve_alive(pid: int) -> Callable[[], bool]:
    return lambda: _is_serve_process(pid)


def run_up(
    settings: Settings, url: str, probe: Probe, *, wait_s: float, out: TextIO, err: TextIO
) -> int:
    """Start ``agentcluster serve`` in the background unless it runs already, and wait until the
    gateway is ready.

    Returns:
        0 when ready, 1 when it exited, stayed degraded or did not answer within ``wait_s``.
    """
    files = LocalFiles.of(settings)
    demo = settings.llm.api_base is None
    pid = serve_pid(files)
    if pid is None and files.pid_file.exists():
        files.pid_file.unlink()  # stale: that process is gone or is not ours
    answering = probe() is not None
    if pid is not None and answering:
        print(f"already up (pid {pid})", file=out)
        _print_up(url, pid, files, demo, out)
        return 0
    if answering:
        print(f"a gateway already answers at {url} (not started by `agentcluster up`)", file=out)
        return 0
    if pid is None:
        process = _start_serve(files)
        pid, alive = process.pid, _child_alive(process)
        print(f"starting agentcluster (pid {pid}, log {files.log_file}) ...", file=out, flush=True)
    else:
        print(f"agentcluster is starting (pid {pid}); waiting ...", file=out, flush=True)
        alive = _serve_alive(pid)
    outcome = _wait_ready(probe, alive, wait_s)
    if outcome == "ready":
        _print_up(url, pid, files, demo, out)
        return 0
    if outcome == "exited":
        files.pid_file.unlink(missing_ok=True)
        tail = _log_tail(files.log_file)
        print(f"agentcluster: serve exited during start; log {files.log_file}:\n{tail}", file=err)
        return 1
    what = "answers but is degraded" if outcome == "degraded" else "did not answer"
    print(
        f"agentcluster: the gateway at {url} {what} after {wait_s:g}s; pid {pid} keeps starting "
        f"(log {files.log_file}; `agentcluster status` shows it, `agentcluster down` stops it)",
        file=err,
    )
    return 1


# --- down -------------------------------------------------------------------------------------


def _signal_serve(pid: int, signum: signal.Signals, timeout_s: float) -> bool:
    """Send ``signum`` if ``pid`` is still our serve process; True once it has exited."""
    if not _is_serve_process(pid):
        return not is_alive(pid)
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return True
    return _wait_exit(pid, timeout_s)


def run_down(
    files: LocalFiles, *, timeout_s: float, answering: Callable[[], bool], out: TextIO, err: TextIO
) -> int:
    """Stop the ``agentcluster serve`` named by the PID file: SIGINT, then after ``timeout_s``
    SIGTERM, then SIGKILL. Refuses a PID whose command line is not ``agentcluster serve``.

    Args:
        answering: whether a gateway answers at the configured URL (to explain a missing file).
    """
    pid = read_pid(files.pid_file)
    if pid is None:
        if answering():
            print(
                f"agentcluster: no PID file at {files.pid_file}, yet a gateway answers: it was not "
                "started by `agentcluster up`; stop it where it runs (Ctrl-C)",
                file=err,
            )
            return 1
        print("not running", file=out)
        return 0
    if not is_alive(pid):
        files.pid_file.unlink(missing_ok=True)
        print(f"not running (pid {pid} is gone; removed the stale PID file)", file=out)
        return 0
    cmdline = process_cmdline(pid)
    if cmdline is None or not is_serve_cmdline(cmdline):
        shown = " ".join(cmdline) if cmdline else "unreadable"
        print(
            f"agentcluster: pid {pid} from {files.pid_file} is not `agentcluster serve` "
            f"(command line: {shown[:200]}); not signalling it. Remove the file if it is stale.",
            file=err,
        )
        return 1
    print(f"stopping agentcluster (pid {pid}) ...", file=out, flush=True)
    stopped = (
        _signal_serve(pid, signal.SIGINT, timeout_s)
        or _signal_serve(pid, signal.SIGTERM, min(timeout_s, _TERM_GRACE_S))
        or _signal_serve(pid, signal.SIGKILL, _KILL_GRACE_S)
    )
    if not stopped:
        print(f"agentcluster: pid {pid} survived SIGKILL; PID file kept", file=err)
        return 1
    files.pid_file.unlink(missing_ok=True)
    print("stopped", file=out)
    return 0
