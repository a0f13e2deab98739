"""Private PostgreSQL, Redis and OPA instances on free loopback ports, for fault injection.

The shared services of ``make deps-up`` serve every test run on the machine and must never be
stopped; a test that stops, pauses or restarts a dependency does it to one of these instead.
Each service has the same small API::

    service = PrivateRedis().start()     # ready to use when start() returns
    service.url                          # what SA01_* points at (same port across restarts)
    service.stop()                       # the dependency goes away (by our own PID only)
    service.start()                      # and comes back, same port, same data
    service.pause() / service.resume()   # SIGSTOP / SIGCONT: alive but silent (timeouts)
    service.close()                      # stop and delete its data directory

or as a context manager (``with PrivateOpa() as opa: ...``), which closes on exit. Every process
is signalled by the PID we started, never by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests.support.servers import free_port

__all__ = ["PrivateOpa", "PrivatePostgres", "PrivateRedis", "PrivateService"]

ROOT = Path(__file__).resolve().parents[2]
OPA_BIN = Path(os.environ.get("AC_OPA_BIN", ROOT / ".data" / "bin" / "opa"))
POLICIES = ROOT / "policies"
START_TIMEOUT_S = 30.0


def _wait_until(ready: Callable[[], bool], what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll ``ready()`` until it is true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} was not ready within {timeout_s}s")


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class PrivateService:
    """Base: one process we start on a fixed loopback port; subclasses say how."""

    name = "service"

    def __init__(self) -> None:
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"ac-{self.name}-"))
        self._process: subprocess.Popen[bytes] | None = None

    # -- subclass hooks ------------------------------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        return _port_open(self.port)

    def _run_as(self) -> dict[str, Any]:
        """Popen's user/group arguments (the PID we hold is then the server itself)."""
        return {}

    @property
    def url(self) -> str:
        """The endpoint to configure (``SA01_*``)."""
        raise NotImplementedError

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The PID of the running server, None when stopped."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    def start(self) -> Self:
        """Start the server (again) on its port and wait until it answers."""
        if self.pid is not None:
            return self
        log = open(self.workdir / f"{self.name}.log", "ab")  # noqa: SIM115 (kept by Popen)
        self._process = subprocess.Popen(
            self._command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            **self._run_as(),
        )
        log.close()
        _wait_until(self._alive_and_ready, f"private {self.name} on port {self.port}")
        return self

    def _alive_and_ready(self) -> bool:
        process = self._process
        if process is None or process.poll() is not None:
            log = (self.workdir / f"{self.name}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"private {self.name} exited during start:\n{log}")
        return self._ready()

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM (SIGKILL with ``kill``) to our PID, wait until it is gone."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        self.resume()
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        _wait_until(lambda: not _port_open(self.port), f"{self.name} port {self.port} closed")

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections and port but answers nothing."""
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, signum: int) -> None:
        for pid in self._pids():
            with contextlib.suppress(ProcessLookupError):  # a backend that just exited
                os.kill(pid, signum)

    def _pids(self) -> list[int]:
        return [self.pid] if self.pid is not None else []

    def close(self) -> None:
        """Stop and remove the data directory."""
        self.stop(kill=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class PrivateRedis(PrivateService):
    """``redis-server`` without persistence (a restart comes back empty, like a lost cache)."""

    name = "redis"

    def _command(self) -> list[str]:
        return [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class PrivateOpa(PrivateService):
    """``opa run --server`` with the repository's policies (``policies/``)."""

    name = "opa"

    def _command(self) -> list[str]:
        if not OPA_BIN.exists():
            raise RuntimeError(f"{OPA_BIN} is missing: run `make deps-up` to build OPA")
        return [
            str(OPA_BIN),
            "run",
            "--server",
            "--addr",
            f"127.0.0.1:{self.port}",
            "--log-level",
            "error",
            "--skip-version-check",
            str(POLICIES),
        ]

    def _ready(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class PrivatePostgres(PrivateService):
    """A throw-away PostgreSQL cluster (initdb into a temp dir, run as user ``postgres``,
    password auth over loopback TCP only). Data survives :meth:`stop` / :meth:`start`."""

    name = "postgres"
    user = "agentcluster"
    password = "private"  # a throw-away cluster on loopback

    def __init__(self) -> None:
        super().__init__()
        self._bin = _postgres_bindir()
        self._data = self.workdir / "data"
        self._initdb()

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.user}"

    def _run_as(self) -> dict[str, Any]:
        return {"user": "postgres", "group": "postgres", "extra_groups": []}

    def _initdb(self) -> None:
        shutil.chown(self.workdir, "postgres", "postgres")
        os.chmod(self.workdir, 0o700)
        password_file = self.workdir / "pw"
        password_file.write_text(self.password + "\n")
        shutil.chown(password_file, "postgres", "postgres")
        command = [
            f"{self._bin}/initdb",
            "-D",
            str(self._data),
            "-U",
            self.user,
            "--pwfile",
            str(password_file),
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
        ]
        subprocess.run(command, check=True, capture_output=True, timeout=120, **self._run_as())
        password_file.unlink()
        # The role's own database, so the DSN needs no other setup.
        self._run_once_single_user(f"CREATE DATABASE {self.user}")

    def _run_once_single_user(self, statement: str) -> None:
        command = [f"{self._bin}/postgres", "--single", "-D", str(self._data), "postgres"]
        subprocess.run(
            command,
            input=(statement + ";\n").encode(),
            check=True,
            capture_output=True,
            timeout=120,
            **self._run_as(),
        )

    def _command(self) -> list[str]:
        # postgres itself, in the foreground: its PID is the postmaster we signal.
        return [
            f"{self._bin}/postgres",
            "-D",
            str(self._data),
            "-c",
            "listen_addresses=127.0.0.1",
            "-p",
            str(self.port),
            "-c",
            f"unix_socket_directories={self.workdir}",
            "-c",
            "fsync=off",
        ]

    def _ready(self) -> bool:
        probe = [f"{self._bin}/pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run(probe, check=False, timeout=10).returncode == 0

    def _pids(self) -> list[int]:
        """The postmaster and its backends (pause must silence the open connections too)."""
        postmaster = self.pid
        if postmaster is None:
            return []
        children = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _parent_of(int(entry.name)) == postmaster:
                children.append(int(entry.name))
        return [postmaster, *children]

    def stop(self, *, kill: bool = False) -> None:
        """Stop the cluster: fast shutdown (SIGINT to the postmaster), or SIGKILL of every
        process of it with ``kill`` (a crash: recovery runs at the next start)."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        self.resume()
        if kill:
            self._signal_all(signal.SIGKILL)
        else:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._signal_all(signal.SIGKILL)
            process.wait(timeout=10)
        _wait_until(lambda: not _port_open(self.port), f"postgres port {self.port} closed")


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _postgres_bindir() -> str:
    versions = sorted(Path("/usr/lib/postgresql").iterdir(), key=lambda p: int(p.name))
    if not versions:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
    return str(versions[-1] / "bin")
