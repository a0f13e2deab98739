"""Small helpers shared by the benchmark scripts: percentiles, process memory, the results file,
a throwaway PostgreSQL database, free loopback ports, a closed-loop load driver and subprocesses
that are always stopped by their handle."""

from __future__ import annotations

import asyncio
import contextlib
import platform
import re
import shlex
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import asyncpg
import httpx
import psutil
from pydantic import BaseModel
from sqlalchemy.engine import make_url

from agentcluster.config import env, project_root

__all__ = [
    "DOC_TITLE",
    "KIB",
    "MIB",
    "ApiTarget",
    "CpuMeter",
    "CpuSnapshot",
    "LoadRun",
    "ManagedProcess",
    "Memory",
    "ProcessFailed",
    "TurnFailed",
    "ask_turn",
    "create_database",
    "create_tenant_key",
    "database_transactions",
    "drive",
    "drop_database",
    "free_port",
    "health_probe",
    "machine_description",
    "markdown_table",
    "memory_of",
    "percentile",
    "replace_section",
    "server_dsn",
    "service_variables",
    "total_memory",
    "wait_healthy",
    "warm_sessions",
]

KIB = 1024
MIB = 1024 * 1024
DOC_TITLE = (
    "# Benchmarks\n\nResults of the scripts under `benchmarks/`, each section with the command "
    "that produced it. These machines are noisy: compare the ratios to the baseline measured in "
    "the same run rather than absolute figures across runs.\n"
)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation (numpy's default method)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Memory:
    """Resident memory of one process or a sum of processes, in bytes.

    RSS counts shared pages in full, USS only the pages no other process maps, PSS shares each
    page among the processes that map it (so PSS sums to the machine's real use).
    """

    rss: int
    uss: int
    pss: int

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.rss + other.rss, self.uss + other.uss, self.pss + other.pss)

    def __sub__(self, other: Memory) -> Memory:
        return Memory(self.rss - other.rss, self.uss - other.uss, self.pss - other.pss)

    def per(self, count: int) -> Memory:
        return Memory(self.rss // count, self.uss // count, self.pss // count)


def memory_of(pid: int) -> Memory:
    """RSS, USS and PSS of a live process (reads /proc/<pid>/smaps; same user)."""
    info = psutil.Process(pid).memory_full_info()
    return Memory(rss=info.rss, uss=info.uss, pss=info.pss)


def total_memory(pids: Iterable[int]) -> Memory:
    total = Memory(0, 0, 0)
    for pid in pids:
        total += memory_of(pid)
    return total


def machine_description() -> str:
    """CPU count and model, RAM, kernel: enough to compare two runs of a benchmark."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        if found:
            model = found.group(1).strip()
    ram_gib = psutil.virtual_memory().total / 1024**3
    cpus = psutil.cpu_count(logical=True)
    return f"{cpus} CPUs ({model}), {ram_gib:.1f} GiB RAM, Linux {platform.release()}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table; numeric-looking columns are right-aligned."""
    align = ["---:" if index else "---" for index in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def replace_section(path: Path, heading: str, body: str, title: str = "# Benchmarks") -> None:
    """Write ``heading`` + ``body`` into the markdown file, replacing that section if present.

    A section runs from its ``## `` heading to the next ``## `` heading; other sections are kept.
    The file is created with ``title`` when missing.
    """
    text = path.read_text() if path.exists() else f"{title}\n"
    section = f"{heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(heading)}\s*$.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def publish(text_out: str, out: str, section: str, title: str) -> None:
    """Print a benchmark's report and, unless ``out`` is ``-``, replace its section in ``out``."""
    print(text_out)
    if out == "-":
        return
    path = Path(out)
    path = path if path.is_absolute() else project_root() / path
    replace_section(path, section, text_out, title=title)
    print(f"\nwrote {section!r} in {path}", file=sys.stderr)


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SERVICE_VARIABLES = (
    "SA01_DB_DSN",
    "SA01_KAFKA_BOOTSTRAP_SERVERS",
    "SA01_REDIS_URL",
    "SA01_POLICY_URL",
)


def service_variables(names: Sequence[str] = SERVICE_VARIABLES) -> dict[str, str]:
    """The local services' settings among ``names``: each from the environment, else from
    ``.data/services.env`` (written by ``make deps-up``, what ``make stack-up`` sources); the ones
    set in neither are left out."""
    found = {name: value for name in names if (value := env(name))}
    services = project_root() / ".data" / "services.env"
    if services.exists():
        for line in services.read_text().splitlines():
            key, _, raw = line.strip().removeprefix("export ").partition("=")
            if key in names and key not in found and raw:
                found[key] = shlex.split(raw)[0]
    return found


def server_dsn() -> str:
    """The PostgreSQL server to create benchmark databases on: ``SA01_DB_DSN``, else the one in
    ``.data/services.env`` (written by ``make deps-up``).

    Raises:
        SystemExit: no PostgreSQL DSN is configured.
    """
    dsn = service_variables(["SA01_DB_DSN"]).get("SA01_DB_DSN")
    if not dsn or make_url(dsn).get_backend_name() != "postgresql":
        raise SystemExit("SA01_DB_DSN: a PostgreSQL DSN is needed (start services: make deps-up)")
    return dsn


async def _admin(dsn: str, statement: str) -> None:
    url = make_url(dsn).set(drivername="postgresql")
    connection = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def create_database(server: str, prefix: str = "ac_bench") -> str:
    """A fresh database on ``server`` named ``<prefix>_<random>``; returns its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    await _admin(server, f'CREATE DATABASE "{name}"')
    return make_url(server).set(database=name).render_as_string(hide_password=False)


async def database_transactions(server: str, dsn: str) -> int:
    """Transactions committed or rolled back in the database of ``dsn`` (``pg_stat_database``).

    PostgreSQL 15+ backends flush these counters at most once a second while busy and within 10 s
    of going idle: read them after an idle pause for exact counts.
    """
    url = make_url(server).set(drivername="postgresql")
    connection = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        count = await connection.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
            make_url(dsn).database,
        )
    finally:
        await connection.close()
    return int(count or 0)


async def drop_database(server: str, dsn: str) -> None:
    """Drop the database of ``dsn`` (made by :func:`create_database`), closing its connections."""
    name = make_url(dsn).database
    await _admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class LoadRun(BaseModel):
    """Latencies of one closed-loop load run (ms, in completion order) and its wall time."""

    latencies_ms: list[float]
    seconds: float

    @property
    def rate(self) -> float:
        """Calls per second."""
        return len(self.latencies_ms) / self.seconds


async def drive(
    call: Callable[[str], Awaitable[None]], keys: Sequence[str], calls: int, concurrency: int
) -> LoadRun:
    """``calls`` calls by ``concurrency`` workers, each cycling over its own share of ``keys``
    (e.g. sessions: a key is never used by two calls at once).

    Raises:
        ValueError: fewer keys than workers.
    """
    if len(keys) < concurrency:
        raise ValueError("need at least one key per worker")
    remaining = iter(range(calls))  # shared: each worker takes the next call number
    latencies: list[float] = []

    async def worker(mine: Sequence[str]) -> None:
        for count, _ in enumerate(remaining):
            started = time.perf_counter()
            await call(mine[count % len(mine)])
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker(keys[w::concurrency]) for w in range(concurrency)))
    return LoadRun(latencies_ms=latencies, seconds=time.perf_counter() - started)


class ProcessFailed(RuntimeError):
    """A benchmark's subprocess exited, timed out or said something unexpected."""


class ManagedProcess:
    """A subprocess of a benchmark with piped stdin/stdout/stderr.

    Its output is drained as it comes: lines starting with one of ``prefixes`` are queued for
    :meth:`receive`, the rest kept as a short tail for error messages. :meth:`stop` ends it by its
    handle: close stdin (a well-behaved child cleans up and exits), then SIGTERM, then SIGKILL.
    """

    def __init__(
        self, name: str, process: asyncio.subprocess.Process, prefixes: tuple[str, ...]
    ) -> None:
        self.name = name
        self.process = process
        self.tail: deque[str] = deque(maxlen=60)
        self._prefixes = prefixes
        self._lines: asyncio.Queue[str] = asyncio.Queue()
        self._drains = [
            asyncio.create_task(self._drain(stream))
            for stream in (process.stdout, process.stderr)
            if stream is not None
        ]

    @classmethod
    async def start(
        cls,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
        prefixes: tuple[str, ...] = (),
    ) -> ManagedProcess:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=project_root(),
        )
        return cls(name, process, prefixes)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            if self._prefixes and text.startswith(self._prefixes):
                await self._lines.put(text)
            else:
                self.tail.append(text)

    def fail(self, message: str) -> NoReturn:
        """Raise :class:`ProcessFailed` with ``message`` and the tail of the output."""
        tail = "\n".join(self.tail)
        raise ProcessFailed(f"{self.name}: {message}\n--- last output ---\n{tail}")

    async def send(self, line: str) -> None:
        """Write one line to its stdin."""
        if self.process.stdin is None:
            self.fail("no stdin")
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def receive(self, prefix: str, timeout_s: float) -> str:
        """The rest of the next queued line, which must start with ``prefix``."""
        waiter = asyncio.create_task(self._lines.get())
        exited = asyncio.create_task(self.process.wait())
        done, _ = await asyncio.wait(
            {waiter, exited}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        for task in (waiter, exited):
            task.cancel()
        if waiter not in done:
            self.fail("exited" if exited in done else f"no {prefix.strip()} within {timeout_s} s")
        line = waiter.result()
        if not line.startswith(prefix):
            self.fail(f"expected {prefix.strip()}, got {line[:200]}")
        return line.removeprefix(prefix)

    async def stop(self, timeout_s: float = 30.0, *, stdin_first: bool = True) -> None:
        """Close stdin and wait (unless ``stdin_first`` is false: a server that does not read
        it); then SIGTERM and wait; then SIGKILL. Idempotent."""
        if self.process.returncode is None:
            if self.process.stdin is not None:
                self.process.stdin.close()
            first = [None] if stdin_first else []
            for send_signal in (*first, self.process.terminate, self.process.kill):
                if send_signal is not None:
                    with contextlib.suppress(ProcessLookupError):
                        send_signal()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.process.wait(), timeout_s)
                    break
        for task in self._drains:
            task.cancel()


@dataclass(frozen=True)
class CpuSnapshot:
    """User+system CPU seconds of each watched process (with its role) and of the whole machine."""

    per_process: dict[int, tuple[str, float]] = field(default_factory=dict)
    machine_busy_s: float = 0.0


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


class CpuMeter:
    """CPU seconds by role of the processes ``watched()`` yields, with the rest of the machine's
    busy time under ``other`` (the machines are shared: it shows how noisy a phase was).

    Args:
        watched: ``(process, role)`` pairs, asked again at every snapshot (processes come and go).
        other: the role name of everything else.
    """

    def __init__(
        self,
        watched: Callable[[], Iterable[tuple[psutil.Process, str]]],
        other: str = "other processes",
    ) -> None:
        self._watched = watched
        self.other = other

    def snapshot(self) -> CpuSnapshot:
        per_process: dict[int, tuple[str, float]] = {}
        with contextlib.suppress(psutil.Error):
            for process, role in self._watched():
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    per_process[process.pid] = (role, times.user + times.system)
        return CpuSnapshot(per_process, _busy_seconds())

    def since(self, before: CpuSnapshot) -> dict[str, float]:
        """CPU seconds by role since ``before`` (a process that ended meanwhile is not counted)."""
        after = self.snapshot()
        seconds: dict[str, float] = {}
        for pid, (role, cpu) in after.per_process.items():
            _, cpu_before = before.per_process.get(pid, (role, 0.0))
            seconds[role] = seconds.get(role, 0.0) + max(cpu - cpu_before, 0.0)
        ours = sum(seconds.values())
        seconds[self.other] = max(after.machine_busy_s - before.machine_busy_s - ours, 0.0)
        return seconds


# -- the v1 HTTP API as a load target -------------------------------------------------------------


class TurnFailed(RuntimeError):
    """A request to the API under test did not answer as expected."""


@dataclass(frozen=True)
class ApiTarget:
    """A server speaking the v1 HTTP API (the gateway, or a baseline with the same endpoints)."""

    key: str
    url: str
    token: str

    def client(self, concurrency: int, timeout_s: float = 120.0) -> httpx.AsyncClient:
        """A client with room for ``concurrency`` requests at once, authenticated."""
        limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=64)
        return httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=timeout_s,
            limits=limits,
        )


async def ask_turn(client: httpx.AsyncClient, session_id: str, content: str) -> None:
    """``POST /v1/sessions/{id}/messages?wait=true``; the turn must complete with an answer."""
    response = await client.post(
        f"/v1/sessions/{session_id}/messages", params={"wait": "true"}, json={"content": content}
    )
    body = response.json() if response.status_code == 200 else None
    if body is None or body.get("status") != "completed" or not body.get("content"):
        raise TurnFailed(f"{client.base_url}: turn failed: {response.status_code} {response.text}")


async def warm_sessions(
    client: httpx.AsyncClient, agent: str, count: int, content: str, concurrency: int = 16
) -> list[str]:
    """``count`` new sessions of ``agent``, each warmed by one turn."""
    session_ids: list[str] = []
    for _ in range(count):
        response = await client.post("/v1/sessions", json={"agent": agent})
        if response.status_code != 201:
            raise TurnFailed(f"create session: {response.status_code} {response.text}")
        session_ids.append(str(response.json()["session_id"]))

    async def turn(session_id: str) -> None:
        await ask_turn(client, session_id, content)

    await drive(turn, session_ids, count, min(count, concurrency))
    return session_ids


async def health_probe(target: ApiTarget, count: int) -> list[float]:
    """``GET /v1/health`` ``count`` times, one at a time: the ingress path alone (ms each)."""
    latencies: list[float] = []
    async with target.client(1) as client:
        for _ in range(count):
            started = time.perf_counter()
            response = await client.get("/v1/health")
            latencies.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise TurnFailed(f"{target.url}/v1/health: {response.status_code}")
    return latencies


async def wait_healthy(target: ApiTarget, server: ManagedProcess, timeout_s: float) -> None:
    """Until ``GET /v1/health`` answers 200 (``server`` must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout_s
    async with target.client(1) as client:
        while time.monotonic() < deadline:
            if server.process.returncode is not None:
                server.fail("exited")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/v1/health")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    server.fail(f"not healthy within {timeout_s} s")


async def create_tenant_key(url: str, admin_key: str, name: str) -> str:
    """A new tenant named ``name`` and an API key for it, through ``POST /v1/keys``."""
    async with httpx.AsyncClient(base_url=url, timeout=120.0) as client:
        response = await client.post(
            "/v1/keys",
            json={"name": name, "tenant_name": name},
            headers={"Authorization": f"Bearer {admin_key}"},
        )
    if response.status_code != 201:
        raise TurnFailed(f"create tenant key: {response.status_code} {response.text}")
    return str(response.json()["secret"])
