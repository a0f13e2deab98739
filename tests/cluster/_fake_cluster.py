"""A Ray cluster of the test's own on Ray's fake multinode autoscaler, and a driver process for it.

:class:`FakeCluster` starts ``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...`` with
cluster/fake-multinode.yaml on free loopback ports, a temp dir of its own and a token of its own,
so it coexists with any other Ray on the machine; :meth:`FakeCluster.stop` kills only its
processes (never ``ray stop``, which would stop everyone's).

:class:`Driver` is a separate Python process connected to that cluster (so it never meets a Ray
already initialized in the pytest process). It answers one JSON command per line on its stdin
(run this module with ``python -m tests.cluster._fake_cluster``): the nodes Ray knows, leasing
and releasing browsers from the browser pool of :mod:`actors.browser`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil
import yaml

__all__ = ["CONFIG", "Driver", "DriverError", "FakeCluster", "NodeView"]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "cluster" / "fake-multinode.yaml"
HEAD_CPUS = 2  # what the config's ray.head.default says
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 120.0
KILL_ROUNDS = 5

# `ray start --head` options that take a port: each gets a free loopback port, none a default one
# (6379, 10001, 52365, ... belong to whichever other cluster runs on the machine).
_PORT_OPTIONS = (
    "--port",
    "--node-manager-port",
    "--object-manager-port",
    "--ray-client-server-port",
    "--dashboard-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
)
# Ports Ray reads from the environment only, with fixed defaults (44217, 44227): the autoscaler's
# and the dashboard head's Prometheus endpoints, on the head's IP (127.0.0.1).
_PORT_VARIABLES = ("AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT")


def _free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (held together, so they are distinct)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]


def _ray_cli() -> str:
    return str(Path(sys.executable).parent / "ray")


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"({path} missing)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _holds_path(proc: psutil.Process, root: str) -> bool:
    """Whether a process names ``root`` on its command line or has a file under it open.

    Ray workers and agents rewrite their command line (and with it the environment block) to
    ``ray::...``, but their stdout/stderr stay open on log files in the cluster's temp dir.
    """
    try:
        if any(root in arg for arg in proc.cmdline()):
            return True
        fd_dir = Path(f"/proc/{proc.pid}/fd")
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd).startswith(root):
                    return True
    except (psutil.Error, OSError):
        return False
    return False


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass
class FakeCluster:
    """One fake multinode cluster: its temp dir (which names its processes) and its ports.

    Attributes:
        root: the cluster's own directory: Ray's temp dir, TMPDIR of every process, token, logs.
        gcs_port: the head's GCS port on 127.0.0.1.
        env: the environment its processes run with; drivers need the same.
    """

    root: Path
    gcs_port: int
    env: dict[str, str]

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.gcs_port}"

    @classmethod
    def start(cls, config: Path = CONFIG) -> FakeCluster:
        """Start the head (the autoscaler runs in it); stop everything again if that fails."""
        # Under /tmp whatever TMPDIR says: Ray's Unix socket paths must stay short.
        root = Path(tempfile.mkdtemp(prefix="acfm-", dir="/tmp"))
        free = _free_ports(len(_PORT_OPTIONS) + len(_PORT_VARIABLES))
        ports = dict(zip(_PORT_OPTIONS, free[: len(_PORT_OPTIONS)], strict=True))
        env_ports = dict(zip(_PORT_VARIABLES, free[len(_PORT_OPTIONS) :], strict=True))
        cluster = cls(root, ports["--port"], _cluster_env(root, env_ports))
        try:
            cluster._start_head(config, ports)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start_head(self, config: Path, ports: Mapping[str, int]) -> None:
        settings = yaml.safe_load(config.read_text())
        settings["provider"]["gcs_address"] = self.address
        own_config = self.root / "fake-multinode.yaml"
        own_config.write_text(yaml.safe_dump(settings, sort_keys=False))
        (self.root / "tmp").mkdir()
        args = [_ray_cli(), "start", "--head", f"--node-ip-address={LOOPBACK}"]
        args += [f"{option}={port}" for option, port in ports.items()]
        args += [
            # Workers bind random free ports rather than the shared 10002-19999 range.
            "--min-worker-port=0",
            "--max-worker-port=0",
            f"--num-cpus={HEAD_CPUS}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={self.root / 'ray'}",
            f"--autoscaling-config={own_config}",
        ]
        log = self.root / "ray-start.log"
        with log.open("w") as out:
            result = subprocess.run(
                args,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=START_TIMEOUT_S,
                check=False,
            )
        if result.returncode != 0:
            raise RuntimeError(f"ray start exited {result.returncode}:\n{_tail(log)}")

    def processes(self) -> list[psutil.Process]:
        """Live processes of this cluster: those naming its temp dir, and their descendants."""
        root = str(self.root)
        spared = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter():
            if proc.pid in spared or not _holds_path(proc, root):
                continue
            found[proc.pid] = proc
            with contextlib.suppress(psutil.Error):
                found.update({child.pid: child for child in proc.children(recursive=True)})
        return [proc for pid, proc in found.items() if pid not in spared and _alive(proc)]

    def listeners(self) -> set[tuple[str, int, str]]:
        """(address, port, process name) of every TCP socket the cluster listens on."""
        found = set()
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                for conn in proc.net_connections("inet"):
                    if conn.status == psutil.CONN_LISTEN:
                        found.add((conn.laddr.ip, conn.laddr.port, proc.name()))
        return found

    def monitor_log(self) -> str:
        """The autoscaler's log, for failure messages."""
        return _tail(self.root / "ray" / "session_latest" / "logs" / "monitor.log", 60)

    def stop(self) -> None:
        """Kill this cluster's processes (a few rounds: a dying raylet may still be spawning),
        then remove its directory."""
        for _ in range(KILL_ROUNDS):
            procs = self.processes()
            if not procs:
                break
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            psutil.wait_procs(procs, timeout=10)
        left = self.processes()
        if left:
            raise RuntimeError(f"fake cluster processes survived: {[p.pid for p in left]}")
        shutil.rmtree(self.root, ignore_errors=True)


def _cluster_env(root: Path, ports: Mapping[str, int]) -> dict[str, str]:
    """The environment of the head, and through it of every node, worker and driver."""
    env = {k: v for k, v in os.environ.items() if k not in {"RAY_ADDRESS", "RAY_AUTH_TOKEN"}}
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env.update(
        {
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            # Fake nodes get their IP from ray.util.get_node_ip_address() in the autoscaler's
            # process: the machine's outward address unless this is 0, then 127.0.0.1.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            # Browser profiles and downloads of the actors land in the cluster's directory.
            "TMPDIR": str(root / "tmp"),
            **{name: str(port) for name, port in ports.items()},
        }
    )
    return env


# --- the driver process ------------------------------------------------------------------------


class DriverError(Exception):
    """The driver process failed a command or went away."""


@dataclass(frozen=True)
class NodeView:
    """A node as ``ray.nodes()`` reports it."""

    node_id: str
    alive: bool
    address: str
    browsers: float


class Driver:
    """A Python process connected to a :class:`FakeCluster`, driven one command at a time.

    Args:
        cluster: the cluster to connect to.
        env: extra environment (the SA01_* settings of the browser pool).
    """

    def __init__(self, cluster: FakeCluster, env: Mapping[str, str]) -> None:
        self._stderr = cluster.root / f"driver-{secrets.token_hex(3)}.log"
        with self._stderr.open("w") as err:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tests.cluster._fake_cluster", cluster.address],
                cwd=ROOT,
                env={**cluster.env, **env},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )

    def call(self, op: str, wait_s: float = 60.0, **args: Any) -> Any:
        """Send one command; its result, or :class:`DriverError` with the driver's stderr."""
        stdin, stdout = self._pipes()
        stdin.write(json.dumps({"op": op, **args}) + "\n")
        stdin.flush()
        ready, _, _ = select.select([stdout], [], [], wait_s)
        line = stdout.readline() if ready else ""
        if not line:
            raise DriverError(f"no answer to {op} within {wait_s}s:\n{_tail(self._stderr)}")
        reply = json.loads(line)
        if "error" in reply:
            raise DriverError(f"{op}: {reply['error']}")
        return reply["result"]

    def nodes(self) -> list[NodeView]:
        """Every node Ray knows, dead ones included."""
        return [NodeView(**node) for node in self.call("nodes")]

    def lease(self, count: int, timeout_s: float) -> list[str]:
        """Lease ``count`` browsers from the pool at once; the leased members' ids."""
        members: list[str] = self.call("lease", timeout_s + 30, count=count, timeout_s=timeout_s)
        return members

    def release(self) -> int:
        """Give every lease back; how many were still held."""
        released: int = self.call("release")
        return released

    def pool_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.call("pool")
        return stats

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        stdin, stdout = self._proc.stdin, self._proc.stdout
        if stdin is None or stdout is None or self._proc.poll() is not None:
            raise DriverError(f"the driver is not running:\n{_tail(self._stderr)}")
        return stdin, stdout

    def close(self) -> None:
        """End the process (closing its stdin asks it to leave; kill if it does not)."""
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


class _Commands:
    """What the driver process does for each command (inside Ray, in its event loop)."""

    def __init__(self) -> None:
        from actors.browser import start_browser_pool
        from agentcluster.config import load_settings

        self._pool = start_browser_pool(load_settings())
        self._leases: list[Any] = []

    async def run(self, op: str, args: dict[str, Any]) -> Any:
        handlers: dict[str, Callable[..., Awaitable[Any]]] = {
            "nodes": self.nodes,
            "lease": self.lease,
            "release": self.release,
            "pool": self.pool,
            "shutdown": self.shutdown,
        }
        return await handlers[op](**args)

    async def nodes(self) -> list[dict[str, Any]]:
        import ray

        return [
            {
                "node_id": node["NodeID"],
                "alive": node["Alive"],
                "address": node["NodeManagerAddress"],
                "browsers": node["Resources"].get("browser", 0.0),
            }
            for node in ray.nodes()
        ]

    async def lease(self, count: int, timeout_s: float) -> list[str]:
        """Lease ``count`` browsers at once (one sticky key each); their member ids."""
        keys = [f"session-{secrets.token_hex(4)}" for _ in range(count)]
        leases = await asyncio.gather(*(self._pool.lease(key, timeout_s) for key in keys))
        self._leases.extend(leases)
        return [lease.member_id for lease in leases]

    async def release(self) -> int:
        released = [await self._pool.release(lease) for lease in self._leases]
        self._leases.clear()
        return sum(released)

    async def pool(self) -> dict[str, Any]:
        return (await self._pool.stats()).model_dump()

    async def shutdown(self) -> int:
        return await self._pool.shutdown()


async def _serve(commands_out: IO[str]) -> None:
    commands = _Commands()
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        request = json.loads(line)
        op = request.pop("op")
        try:
            reply = {"result": await commands.run(op, request)}
        except Exception as exc:  # Why broad: any failure goes back to the test as the answer.
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        commands_out.write(json.dumps(reply) + "\n")
        commands_out.flush()


def main(address: str) -> None:
    """The driver process: answers on the original stdout; anything else printed goes to stderr."""
    import ray

    commands_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    ray.init(address=address, log_to_driver=False)
    started = time.monotonic()
    try:
        asyncio.run(_serve(commands_out))
    finally:
        print(f"driver done after {time.monotonic() - started:.1f}s", file=sys.stderr)
        ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
