"""The program that runs *inside* a python_exec sandbox (standard library only).

The tool actor starts it as ``python -I -S -c <this file's source>`` inside bubblewrap and talks
to it over three channels:

* stdin: one JSON header line (:class:`Header` fields), then ``source_bytes`` bytes of the
  model's Python source, then a tar stream of the session workspace (written by the host);
* stdout and stderr: the model's code's own output (the host caps what it keeps);
* fd 3: one JSON result line (:class:`Result` fields), then a tar stream of the workspace as the
  code left it (regular files and directories only). The host treats it as untrusted input: it
  checks every member and the session's quota before anything replaces the stored workspace.

The runner unpacks the workspace into ``workspace`` (a size-limited tmpfs under bubblewrap),
forks the code's process with its resource limits, waits for it under the wall-clock limit,
kills everything the code left running, and packs the workspace back. It becomes a child
subreaper so that processes the code orphaned are its own to end and reap.

It is deliberately small: it runs with the same (unprivileged) identity as the model's code, so
it holds nothing the code could not have. Python 3.9+ (it may be an older interpreter than the
service's own).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import stat
import sys
import tarfile
import traceback
from typing import Any, BinaryIO

__all__ = ["MEMORY_EXIT", "RESULT_FD", "SETUP_EXIT", "main"]

RESULT_FD = 3
MEMORY_EXIT = 86
SETUP_EXIT = 87
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_DUMPABLE = 4
_SOURCE_NAME = "<python_exec>"


def main() -> None:
    """Run one sandboxed execution (see the module docstring); exits when done."""
    stdin = sys.stdin.buffer
    header: dict[str, Any] = json.loads(stdin.readline())
    source = stdin.read(int(header["source_bytes"])).decode("utf-8")
    workspace = str(header["workspace"])
    _unpack(stdin, workspace)
    _harden_self()
    pid = os.fork()
    if pid == 0:
        _run_code(source, workspace, header)
    own_pid_namespace = bool(header.get("pid_namespace"))
    status, wall_expired = _wait(pid, float(header["wall_s"]), own_pid_namespace)
    _end_everything(pid, own_pid_namespace)
    result = {"wait_status": status, "wall_expired": wall_expired}
    try:
        with os.fdopen(int(header.get("result_fd", RESULT_FD)), "wb") as out:
            out.write(json.dumps(result).encode() + b"\n")
            _pack(out, workspace)
    except BrokenPipeError:
        pass  # the host stopped reading: the workspace broke a rule and is not kept
    os._exit(0)


def _unpack(stream: BinaryIO, workspace: str) -> None:
    os.makedirs(workspace, mode=0o700, exist_ok=True)
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            # The host wrote this archive; still, only plain files and directories, inside.
            name = os.path.normpath(member.name)
            if name.startswith(("/", "..")) or not (member.isfile() or member.isdir()):
                continue
            member.mode = 0o700 if member.isdir() else 0o600
            archive.extract(member, workspace, set_attrs=False)


def _harden_self() -> None:
    # Orphans of the code become the runner's children (so it can end and reap them), and the
    # runner cannot be ptrace-attached by the code it runs (same uid otherwise allows it).
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # best effort: the PID namespace ends every process anyway when the sandbox ends


def _run_code(source: str, workspace: str, header: dict[str, Any]) -> None:
    try:
        os.setpgid(0, 0)
        for name, soft, hard in header["rlimits"]:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        os.chdir(workspace)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.closerange(3, 65536)
        sys.path[:0] = list(header.get("paths", []))
        sys.argv = [_SOURCE_NAME]
        code = compile(source, _SOURCE_NAME, "exec")
    except SyntaxError:
        traceback.print_exc(limit=0)
        _flush_and_exit(1)
    except (OSError, ValueError) as exc:
        os.write(2, f"python_exec sandbox setup failed: {exc}\n".encode())
        os._exit(SETUP_EXIT)
    _flush_and_exit(_execute(code))


def _execute(code: Any) -> int:
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(code, namespace)
    except MemoryError:
        os.write(2, b"\nMemoryError: python_exec memory limit reached\n")
        return MEMORY_EXIT
    except SystemExit as exc:
        return _exit_code(exc.code)
    except BaseException as exc:  # the model's code may raise anything
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != _SOURCE_NAME:
            tb = tb.tb_next
        traceback.print_exception(type(exc), exc, tb)
        return 1
    return 0


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write(str(code) + "\n")
    return 1


def _flush_and_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _wait(pid: int, wall_s: float, own_pid_namespace: bool) -> tuple[int, bool]:
    expired = []

    def on_alarm(_signum: int, _frame: object) -> None:
        expired.append(True)
        _kill_all(pid, own_pid_namespace)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, wall_s)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    signal.setitimer(signal.ITIMER_REAL, 0)
    return status, bool(expired)


def _kill_all(pid: int, own_pid_namespace: bool) -> None:
    # In its own PID namespace, kill(-1) reaches every process of the sandbox but the runner
    # (and nothing outside). Without one (the unsafe mode) kill(-1) would reach every process
    # of the user on the machine: only the code's process group is ended there.
    with contextlib.suppress(OSError):
        if own_pid_namespace:
            os.kill(-1, signal.SIGKILL)
        else:
            os.killpg(pid, signal.SIGKILL)


def _end_everything(pid: int, own_pid_namespace: bool) -> None:
    _kill_all(pid, own_pid_namespace)
    if not own_pid_namespace:
        return  # processes that left the group are not ours to wait for
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def _pack(out: BinaryIO, workspace: str) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for folder, dirs, files in os.walk(workspace):
            for name in sorted(dirs) + sorted(files):
                path = os.path.join(folder, name)
                info = os.lstat(path)
                if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                    continue  # links, fifos, sockets: never leave the sandbox
                arcname = os.path.relpath(path, workspace)
                if stat.S_ISDIR(info.st_mode):
                    archive.addfile(archive.gettarinfo(path, arcname))
                    continue
                try:
                    handle = open(path, "rb")  # noqa: SIM115  (closed below)
                except OSError:
                    continue  # unreadable (mode 000): the code chose to lose it
                with handle:
                    # Write errors (the host stopped reading) are not the file's: they end it.
                    archive.addfile(archive.gettarinfo(path, arcname, handle), handle)


if __name__ == "__main__":
    main()
