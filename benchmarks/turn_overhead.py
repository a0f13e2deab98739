"""Turn overhead: one-step turns through the cluster vs a single-process baseline, in one run.

Run: ``.venv/bin/python -m benchmarks.turn_overhead`` (``--quick`` for a short run that only
prints; ``--out FILE`` to write it anyway).

Targets, all running the same one-step turn (``POST /v1/sessions/{id}/messages?wait=true``, a
profile without tools, the fake LLM's streamed reply; ``agentcluster.testing.fake_llm`` in a
thread of this process, ``--ttft-ms``, default 0):

* **baseline**: ``benchmarks/_baseline_app.py``, FastAPI under uvicorn (one worker) in a
  subprocess: the same store writes and the same LiteLLM call as a one-step turn, no Ray;
* **cluster**, one local Ray per Serve mode (``--modes``), each in a child process of this script
  (``--cluster-child``) because Serve reads its mode from the environment at import: ``default``
  (Serve's HTTP proxy → gateway replica → SessionHost actor) and ``throughput``
  (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: gRPC from proxy to replica, user code on the replica's
  main loop, and direct ingress: the replica serves HTTP on its own port, measured as a second
  path);
* **in-cluster** (default mode, measured by the child's Ray driver): the gateway's
  DeploymentHandle (``agentcluster.connect(key).ask``: no HTTP proxy, no FastAPI) and
  ``Runtime.ask`` (no gateway at all).

Each serve mode is a block in which the baseline and the cluster's HTTP paths are measured
alternately, ``--rounds`` times, at each ``--concurrency``. A phase takes a fresh pool of sessions
(16, or the concurrency if larger), warms each with one turn (activation is not measured), then
runs ``--requests`` turns with ``httpx.AsyncClient``, one turn per session at a time. Latency is
the client's wall time per request; throughput is turns / phase wall time. CPU seconds of every
process, by role, are read before and after each phase.

Creates its own PostgreSQL databases (on the server of ``SA01_DB_DSN``, or of
``.data/services.env``) and drops them at the end; every process it starts is stopped by its
handle. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import httpx
import psutil
import yaml
from pydantic import BaseModel

from agentcluster.config import Settings, environment, load_settings
from agentcluster.testing.fake_llm import FakeLLM, Script, Timing
from benchmarks._common import (
    DOC_TITLE,
    ApiTarget,
    CpuMeter,
    LoadRun,
    ManagedProcess,
    ask_turn,
    create_database,
    create_tenant_key,
    database_transactions,
    drive,
    drop_database,
    free_port,
    health_probe,
    machine_description,
    markdown_table,
    percentile,
    publish,
    server_dsn,
    wait_healthy,
    warm_sessions,
)

SECTION = "## Turn overhead"
TARGET_P50_RATIO = 1.5
TARGET_THROUGHPUT_RATIO = 0.7
APP_NAME = "agentcluster"
AGENT = "bench"
PROFILE: dict[str, Any] = {
    "name": AGENT,
    "model": "fake-a",
    "system_prompt": "You are a benchmark agent. Answer briefly.",
    "tools": [],
    "max_steps": 2,
    "max_output_tokens": 256,
    "context_window": 8192,
}
USER_TEXT = "What is the capital of France?"
MIN_POOL = 16
HEALTH_PROBES = 200
STATS_FLUSH_S = 11.0  # PostgreSQL flushes an idle backend's counters within 10 s
TRANSACTION_TURNS = 96
START_TIMEOUT_S = 240.0
READY, RESULT, MEASURE = "READY ", "RESULT ", "MEASURE "

ServeMode = Literal["default", "throughput"]
MODE_ENV: dict[ServeMode, dict[str, str]] = {
    "default": {},
    # Direct ingress holds a stopping replica for 30 s by default; nothing is in flight at the end.
    "throughput": {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    },
}
InClusterPath = Literal["handle", "runtime"]
CLIENT, BASELINE, PROXY, REPLICA, HOST, RAY, POSTGRES, OTHER = (
    "client + fake LLM (this process)",
    "baseline app",
    "Serve proxy",
    "gateway replica",
    "session host",
    "Ray system (GCS, raylet, controllers, agents, driver)",
    "PostgreSQL (all backends)",
    "other processes (not ours)",
)
ROLES = (CLIENT, BASELINE, PROXY, REPLICA, HOST, RAY, POSTGRES, OTHER)
ROLE_MARKERS = (("ProxyActor", PROXY), ("ServeReplica", REPLICA), ("SessionHost", HOST))
_T0 = time.monotonic()


def http_turn(client: httpx.AsyncClient, session_id: str) -> Awaitable[None]:
    return ask_turn(client, session_id, USER_TEXT)


async def http_pool(client: httpx.AsyncClient, count: int) -> list[str]:
    """``count`` new sessions, each warmed by one turn (the cluster activates it then)."""
    return await warm_sessions(client, AGENT, count, USER_TEXT, MIN_POOL)


class BenchmarkError(RuntimeError):
    """A target did not behave (a failed turn, a missing LLM call)."""


def log(text: str) -> None:
    print(f"[{time.monotonic() - _T0:4.0f} s] {text}", file=sys.stderr, flush=True)


# -- arguments --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.turn_overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=int, help="turns per phase (default 240; quick 24)")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated levels")
    parser.add_argument("--rounds", type=int, help="alternations per serve mode (default 2)")
    parser.add_argument("--modes", default="default,throughput", help="serve modes to run")
    parser.add_argument("--replicas", type=int, default=1, help="gateway replicas (fixed)")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="fake LLM time to first token")
    parser.add_argument(
        "--out", default=None, help="file to update (default docs/benchmarks.md; '-': none)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="24 turns per phase, one round, fewer probes, no transaction count; prints only",
    )
    parser.add_argument("--cluster-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = {"requests": 24, "rounds": 1} if args.quick else {"requests": 240, "rounds": 2}
    for name, value in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.out is None:
        args.out = "-" if args.quick else "docs/benchmarks.md"
    args.health_probes = HEALTH_PROBES // 4 if args.quick else HEALTH_PROBES
    args.levels = sorted({int(level) for level in args.concurrency.split(",") if level.strip()})
    args.serve_modes = list(dict.fromkeys(m.strip() for m in args.modes.split(",") if m.strip()))
    for mode in args.serve_modes:
        if mode not in get_args(ServeMode):
            parser.error(f"--modes: unknown mode {mode!r} (known: default, throughput)")
    for name in ("requests", "rounds", "replicas"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if not args.levels or args.levels[0] < 1:
        parser.error("--concurrency: levels must be >= 1")
    return args


# -- messages between this script and a cluster child (one JSON line each) --------------------


class ChildConfig(BaseModel):
    """First line on a cluster child's stdin: what to start."""

    mode: ServeMode
    dsn: str
    llm_base: str
    agents_dir: str
    admin_key: str
    port: int
    replicas: int
    host_prefix: str


class ChildReady(BaseModel):
    """The child's ``READY`` line: where the gateway answers over HTTP."""

    proxy_url: str
    direct_urls: list[str]


class InClusterCommand(BaseModel):
    """A ``MEASURE`` line: turns from the child's driver through an in-cluster path."""

    path: InClusterPath
    api_key: str
    requests: int
    concurrency: int
    sessions: int


# -- CPU accounting ---------------------------------------------------------------------------


def _cluster_role(process: psutil.Process) -> str:
    try:
        title = " ".join(process.cmdline())
    except psutil.Error:
        return RAY
    return next((role for marker, role in ROLE_MARKERS if marker in title), RAY)


@dataclass
class Watched:
    """The processes whose CPU time a phase reports, by role: this process, the baseline, a
    cluster child's process tree (Ray workers carry their actor's name in their title) and
    PostgreSQL's backends."""

    baseline_pid: int | None = None
    cluster_pid: int | None = None

    def __call__(self) -> Iterable[tuple[psutil.Process, str]]:
        yield psutil.Process(), CLIENT
        if self.baseline_pid is not None:
            yield psutil.Process(self.baseline_pid), BASELINE
        if self.cluster_pid is not None:
            root = psutil.Process(self.cluster_pid)
            yield root, RAY
            for process in root.children(recursive=True):
                yield process, _cluster_role(process)
        for process in psutil.process_iter(["name"]):
            if process.info["name"] == "postgres":
                yield process, POSTGRES


# -- phases and blocks ------------------------------------------------------------------------


@dataclass
class Phase:
    """Turns of one path at one concurrency, pooled over rounds."""

    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ROLES, 0.0))

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def add(self, run: LoadRun, cpu_s: dict[str, float] | None = None) -> None:
        self.latencies_ms += run.latencies_ms
        self.seconds += run.seconds
        for role, seconds in (cpu_s or {}).items():
            self.cpu_s[role] = self.cpu_s.get(role, 0.0) + seconds

    def cpu_ms_per_turn(self, role: str) -> float:
        return self.cpu_s[role] * 1000 / len(self.latencies_ms)


@dataclass
class Block:
    """One serve mode: its cluster paths and the baseline measured alternately with them."""

    mode: ServeMode
    phases: dict[tuple[str, int], Phase] = field(default_factory=dict)
    health_ms: dict[str, list[float]] = field(default_factory=dict)

    def phase(self, key: str, concurrency: int) -> Phase:
        return self.phases.setdefault((key, concurrency), Phase())

    def cluster_keys(self) -> list[str]:
        return [key for key in dict.fromkeys(key for key, _ in self.phases) if key != "baseline"]


@dataclass
class Bench:
    """What a run shares: arguments, the fake LLM, the CPU meter."""

    args: argparse.Namespace
    llm: FakeLLM
    watched: Watched = field(default_factory=Watched)
    meter: CpuMeter = field(init=False)

    def __post_init__(self) -> None:
        self.meter = CpuMeter(self.watched, other=OTHER)

    async def measure(
        self, target: ApiTarget, concurrency: int
    ) -> tuple[LoadRun, dict[str, float]]:
        """A fresh warmed pool, then ``--requests`` turns; checks each made one LLM call."""
        requests = self.args.requests
        async with target.client(concurrency) as client:
            pool = await http_pool(client, max(MIN_POOL, concurrency))
            self.llm.clear_requests()
            before = self.meter.snapshot()
            run = await drive(functools.partial(http_turn, client), pool, requests, concurrency)
            cpu = self.meter.since(before)
        calls = len(self.llm.requests)
        if calls != requests:
            raise BenchmarkError(f"{target.key}: {requests} turns made {calls} LLM calls")
        return run, cpu


async def run_block(
    bench: Bench, mode: ServeMode, baseline: ApiTarget, cluster: Sequence[ApiTarget]
) -> Block:
    """Baseline and cluster paths alternately, ``--rounds`` times, at each concurrency."""
    block = Block(mode)
    targets = [baseline, *cluster]
    for round_index in range(bench.args.rounds):
        order = targets if round_index % 2 == 0 else targets[::-1]
        for concurrency in bench.args.levels:
            for target in order:
                run, cpu = await bench.measure(target, concurrency)
                block.phase(target.key, concurrency).add(run, cpu)
                _progress(mode, target.key, concurrency, run)
    for target in targets:
        block.health_ms[target.key] = await health_probe(target, bench.args.health_probes)
    return block


def _progress(mode: str, key: str, concurrency: int, run: LoadRun) -> None:
    p50 = percentile(run.latencies_ms, 50)
    log(f"{mode:10} {key:8} c={concurrency:<3} p50 {p50:7.1f} ms {run.rate:6.1f} turns/s")


# -- processes we start -----------------------------------------------------------------------


def _env(extra: dict[str, str]) -> dict[str, str]:
    # Each serve mode starts from no Serve flag at all, whatever the caller's environment holds.
    inherited = environment().items()
    child = {key: value for key, value in inherited if not key.startswith("RAY_SERVE_")}
    return child | extra | {"PYTHONUNBUFFERED": "1"}


@contextlib.asynccontextmanager
async def running_baseline(
    bench: Bench, dsn: str, agents_dir: Path, token: str
) -> AsyncIterator[ApiTarget]:
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks._baseline_app", "--port", str(port), "--dsn", dsn]
    argv += ["--llm-base", bench.llm.base_url, "--agents-dir", str(agents_dir)]
    argv += ["--agent", AGENT, "--token", token]
    child = await ManagedProcess.start("baseline app", argv, _env({}))
    bench.watched.baseline_pid = child.pid
    try:
        target = ApiTarget("baseline", f"http://127.0.0.1:{port}", token)
        await wait_healthy(target, child, START_TIMEOUT_S)
        yield target
    finally:
        bench.watched.baseline_pid = None
        await child.stop(stdin_first=False)  # uvicorn does not read stdin; SIGTERM stops it


@dataclass
class Cluster:
    child: ManagedProcess
    targets: list[ApiTarget]
    token: str


@contextlib.asynccontextmanager
async def running_cluster(
    bench: Bench, mode: ServeMode, dsn: str, agents_dir: Path
) -> AsyncIterator[Cluster]:
    admin_key = "admin-" + uuid.uuid4().hex
    config = ChildConfig(
        mode=mode,
        dsn=dsn,
        llm_base=bench.llm.base_url,
        agents_dir=str(agents_dir),
        admin_key=admin_key,
        port=free_port(),
        replicas=bench.args.replicas,
        host_prefix=f"bench-{uuid.uuid4().hex[:8]}",
    )
    argv = [sys.executable, "-m", "benchmarks.turn_overhead", "--cluster-child"]
    child = await ManagedProcess.start(
        f"cluster ({mode})", argv, _env(MODE_ENV[mode]), prefixes=(READY, RESULT)
    )
    bench.watched.cluster_pid = child.pid
    try:
        await child.send(config.model_dump_json())
        ready = ChildReady.model_validate_json(await child.receive(READY, START_TIMEOUT_S))
        token = await create_tenant_key(ready.proxy_url, admin_key, f"bench-{uuid.uuid4().hex[:8]}")
        targets = [ApiTarget("proxy", ready.proxy_url, token)]
        targets += [ApiTarget("direct", url, token) for url in ready.direct_urls[:1]]
        yield Cluster(child, targets, token)
    finally:
        bench.watched.cluster_pid = None
        await child.stop(timeout_s=START_TIMEOUT_S / 4)


async def transactions_per_turn(
    server: str, targets: Sequence[tuple[ApiTarget, str]], turns: int = TRANSACTION_TURNS
) -> dict[str, float]:
    """PostgreSQL transactions per turn of each ``(target, its database)``, from the database's
    counters read after idle pauses (so every backend has flushed them)."""
    clients = [target.client(MIN_POOL) for target, _ in targets]
    try:
        pools = [await http_pool(client, MIN_POOL) for client in clients]
        await asyncio.sleep(STATS_FLUSH_S)
        before = [await database_transactions(server, dsn) for _, dsn in targets]
        for client, pool in zip(clients, pools, strict=True):
            await drive(functools.partial(http_turn, client), pool, turns, MIN_POOL)
        await asyncio.sleep(STATS_FLUSH_S)
        after = [await database_transactions(server, dsn) for _, dsn in targets]
    finally:
        for client in clients:
            await client.aclose()
    return {
        target.key: (end - start) / turns
        for (target, _), start, end in zip(targets, before, after, strict=True)
    }


async def in_cluster(cluster: Cluster, args: argparse.Namespace) -> dict[tuple[str, int], Phase]:
    """The in-cluster paths at each concurrency, measured by the child's driver."""
    phases: dict[tuple[str, int], Phase] = {}
    for path in get_args(InClusterPath):
        for concurrency in args.levels:
            command = InClusterCommand(
                path=path,
                api_key=cluster.token,
                requests=args.requests,
                concurrency=concurrency,
                sessions=max(MIN_POOL, concurrency),
            )
            await cluster.child.send(MEASURE + command.model_dump_json())
            run = LoadRun.model_validate_json(await cluster.child.receive(RESULT, START_TIMEOUT_S))
            phases[(path, concurrency)] = phase = Phase()
            phase.add(run)
            _progress("default", path, concurrency, run)
    return phases


# -- the cluster child (its own process, with its own Ray) ------------------------------------


def cluster_settings(config: ChildConfig) -> Settings:
    return load_settings(
        {
            "db": {"dsn": config.dsn},
            "llm": {"api_base": config.llm_base, "api_key": "bench", "max_retries": 1},
            "auth": {"admin_key": config.admin_key},
            "runtime": {"agents_dir": config.agents_dir, "host_prefix": config.host_prefix},
        }
    )


def _say(prefix: str, message: BaseModel) -> None:
    print(prefix + message.model_dump_json(), flush=True)


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(1)  # unwinds through the finally below: Serve and Ray are shut down


def cluster_child() -> None:
    """Start Ray and the gateway, say READY, run MEASURE commands until stdin closes, clean up."""
    import ray
    from ray import serve

    from deployments.gateway import build_gateway

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    config = ChildConfig.model_validate_json(sys.stdin.readline())
    settings = cluster_settings(config)
    replicas = {"min_replicas": config.replicas, "max_replicas": config.replicas}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": config.port})
        serve.run(
            build_gateway(settings, autoscaling_config=replicas), name=APP_NAME, route_prefix="/"
        )
        direct = _direct_ingress_urls(config.port) if config.mode == "throughput" else []
        _say(READY, ChildReady(proxy_url=f"http://127.0.0.1:{config.port}", direct_urls=direct))
        for line in sys.stdin:
            command = InClusterCommand.model_validate_json(line.removeprefix(MEASURE))
            _say(RESULT, asyncio.run(_measure_in_cluster(settings, command)))
    finally:
        serve.shutdown()
        ray.shutdown()


def _direct_ingress_urls(proxy_port: int) -> list[str]:
    """The replicas' own HTTP ports (direct ingress), from the Serve controller's target groups
    (what Serve's HAProxy manager reads; Ray 2.60 has no public API for them)."""
    import ray
    from ray.serve._private.common import RequestProtocol
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:
        raise BenchmarkError("direct ingress: Serve is not running")
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        groups = ray.get(client._controller.get_target_groups.remote(APP_NAME))
        ports = [
            target.port
            for group in groups
            if group.protocol == RequestProtocol.HTTP
            for target in group.targets
        ]
        if ports and proxy_port not in ports:
            return [f"http://127.0.0.1:{port}" for port in ports]
        time.sleep(0.5)
    raise BenchmarkError("direct ingress: no replica port was published")


async def _measure_in_cluster(settings: Settings, command: InClusterCommand) -> LoadRun:
    if command.path == "handle":
        return await _measure_handle(command)
    return await _measure_runtime(settings, command)


async def _measure_handle(command: InClusterCommand) -> LoadRun:
    import agentcluster

    client = agentcluster.connect(command.api_key)

    async def ask(session_id: str) -> None:
        outcome = await client.ask(session_id, USER_TEXT)
        if outcome.status != "completed":
            raise BenchmarkError(f"handle turn ended {outcome.status}: {outcome.error}")

    pool = [(await client.create_session(AGENT)).session_id for _ in range(command.sessions)]
    await drive(ask, pool, len(pool), min(len(pool), MIN_POOL))
    return await drive(ask, pool, command.requests, command.concurrency)


async def _measure_runtime(settings: Settings, command: InClusterCommand) -> LoadRun:
    from actors.compose import connect_runtime

    runtime = await connect_runtime(settings)
    try:
        tenant = await runtime.store.create_tenant(f"bench-runtime-{uuid.uuid4().hex[:8]}")

        async def ask(session_id: str) -> None:
            outcome = await runtime.ask(tenant.tenant_id, session_id, USER_TEXT)
            if outcome.type != "turn.completed":
                raise BenchmarkError(f"runtime turn ended with {outcome.type}")

        pool = [
            (await runtime.create_session(tenant.tenant_id, AGENT)).session_id
            for _ in range(command.sessions)
        ]
        await drive(ask, pool, len(pool), min(len(pool), MIN_POOL))
        return await drive(ask, pool, command.requests, command.concurrency)
    finally:
        await runtime.close()


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Report:
    args: argparse.Namespace
    command: str
    results: Results
    seconds: float
    load_before: tuple[float, float, float]


@dataclass
class Results:
    blocks: list[Block] = field(default_factory=list)
    in_cluster: dict[tuple[str, int], Phase] = field(default_factory=dict)
    transactions: dict[str, float] = field(default_factory=dict)


async def run(bench: Bench, agents_dir: Path) -> Results:
    server = server_dsn()
    databases: list[str] = []
    results = Results()
    try:
        databases.append(await create_database(server, "ac_bench_turns"))
        token = "baseline-" + uuid.uuid4().hex
        async with running_baseline(bench, databases[0], agents_dir, token) as baseline:
            log("baseline up")
            for mode in bench.args.serve_modes:
                databases.append(await create_database(server, "ac_bench_turns"))
                async with running_cluster(bench, mode, databases[-1], agents_dir) as cluster:
                    log(f"cluster ({mode}) up: " + ", ".join(t.url for t in cluster.targets))
                    results.blocks.append(await run_block(bench, mode, baseline, cluster.targets))
                    if mode != "default":
                        continue
                    results.in_cluster = await in_cluster(cluster, bench.args)
                    if not bench.args.quick:
                        pairs = [(baseline, databases[0]), (cluster.targets[0], databases[-1])]
                        results.transactions = await transactions_per_turn(server, pairs)
                log(f"cluster ({mode}) stopped")
    finally:
        for dsn in databases:
            await drop_database(server, dsn)
    return results


# -- report -----------------------------------------------------------------------------------

LABELS: dict[tuple[str, str], str] = {
    ("default", "baseline"): "baseline (default block)",
    ("default", "proxy"): "cluster, Serve's default HTTP proxy",
    ("default", "handle"): "in-cluster DeploymentHandle (`agentcluster.connect(key).ask`)",
    ("default", "runtime"): "in-cluster `Runtime.ask` (no gateway)",
    ("throughput", "baseline"): "baseline (throughput block)",
    ("throughput", "proxy"): "cluster, `RAY_SERVE_THROUGHPUT_OPTIMIZED=1`, via the proxy",
    ("throughput", "direct"): "cluster, `RAY_SERVE_THROUGHPUT_OPTIMIZED=1`, direct ingress",
}
SHORT: dict[tuple[str, str], str] = {
    ("default", "baseline"): "baseline",
    ("default", "proxy"): "default proxy",
    ("throughput", "baseline"): "baseline (2nd block)",
    ("throughput", "proxy"): "throughput, proxy",
    ("throughput", "direct"): "throughput, direct",
}


def _ratio(value: float) -> str:
    return f"{value:.2f}x"


def _row(label: str, concurrency: int, phase: Phase, base: Phase) -> list[str]:
    return [
        str(concurrency),
        label,
        f"{phase.p(50):.1f} / {base.p(50):.1f}",
        _ratio(phase.p(50) / base.p(50)),
        f"{phase.p(99):.1f} / {base.p(99):.1f}",
        f"{phase.throughput:.1f} / {base.throughput:.1f}",
        _ratio(phase.throughput / base.throughput),
    ]


def result_table(report: Report) -> str:
    rows: list[list[str]] = []
    for concurrency in report.args.levels:
        for block in report.results.blocks:
            base = block.phase("baseline", concurrency)
            for key in block.cluster_keys():
                label = LABELS[(block.mode, key)]
                rows.append(_row(label, concurrency, block.phase(key, concurrency), base))
            if block.mode != "default":
                continue
            for path in get_args(InClusterPath):
                phase = report.results.in_cluster.get((path, concurrency))
                if phase is not None:
                    rows.append(_row(LABELS[("default", path)], concurrency, phase, base))
    headers = ["c", "path", "p50 ms (path / baseline)", "p50 ratio", "p99 ms (path / baseline)"]
    headers += ["turns/s (path / baseline)", "throughput ratio"]
    return markdown_table(headers, rows)


def cpu_table(report: Report, concurrency: int) -> str:
    columns = [
        (SHORT[(block.mode, key)], block.phase(key, concurrency))
        for block in report.results.blocks
        for key in ("baseline", *block.cluster_keys())
    ]
    rows = [
        [role, *(f"{phase.cpu_ms_per_turn(role):.1f}" for _, phase in columns)]
        for role in ROLES
        if any(phase.cpu_ms_per_turn(role) >= 0.05 for _, phase in columns)
    ]
    ours = [sum(phase.cpu_ms_per_turn(role) for role in ROLES[:-1]) for _, phase in columns]
    rows.append(["**all of ours**", *(f"**{value:.1f}**" for value in ours)])
    return markdown_table(["CPU ms per turn", *(label for label, _ in columns)], rows)


def health_line(report: Report) -> str:
    parts = [
        f"{SHORT[(block.mode, key)]} {percentile(values, 50):.2f} ms"
        for block in report.results.blocks
        for key, values in block.health_ms.items()
    ]
    return f"- `GET /v1/health` alone, one at a time, p50: {'; '.join(parts)}."


def transactions_line(report: Report) -> list[str]:
    found = report.results.transactions
    if not found:
        return []
    parts = [f"{SHORT[('default', key)]} {value:.1f}" for key, value in found.items()]
    return [
        f"- PostgreSQL transactions per turn (`pg_stat_database` of each target's database, "
        f"{TRANSACTION_TURNS} turns at c={MIN_POOL}): {'; '.join(parts)}."
    ]


def _block(report: Report, mode: ServeMode) -> Block | None:
    return next((block for block in report.results.blocks if block.mode == mode), None)


def _p50(values: Sequence[float]) -> float:
    return percentile(values, 50)


def latency_split(report: Report) -> list[str]:
    """The lowest concurrency's p50 along the paths, outermost first."""
    block, low = _block(report, "default"), report.args.levels[0]
    if block is None:
        return []
    paths = [("HTTP through Serve's proxy", block.phase("proxy", low))]
    for path, label in (("handle", "DeploymentHandle"), ("runtime", "`Runtime.ask`")):
        if (path, low) in report.results.in_cluster:
            paths.append((label, report.results.in_cluster[(path, low)]))
    paths.append(("baseline", block.phase("baseline", low)))
    steps = " → ".join(f"{label} {phase.p(50):.1f} ms" for label, phase in paths)
    hop = _p50(block.health_ms["proxy"]) - _p50(block.health_ms["baseline"])
    return [
        f"- p50 at c={low}, from the outermost path in: {steps}. The Serve proxy hop alone "
        f"(`GET /v1/health`) adds {hop:.1f} ms."
    ]


def cpu_split(report: Report) -> list[str]:
    """What the extra CPU per turn is, at the top concurrency."""
    block, top = _block(report, "default"), report.args.levels[-1]
    if block is None:
        return []
    base, proxy = block.phase("baseline", top), block.phase("proxy", top)
    ours = sum(proxy.cpu_ms_per_turn(role) for role in ROLES[:-1])
    base_ours = sum(base.cpu_ms_per_turn(role) for role in ROLES[:-1])
    parts = ", ".join(
        f"{role} {proxy.cpu_ms_per_turn(role):.1f} ms" for role in (HOST, REPLICA, PROXY, RAY)
    )
    lines = [
        f"- CPU at c={top}: {ours:.0f} ms per turn in our processes for the cluster vs "
        f"{base_ours:.0f} ms for the baseline ({ours / base_ours:.1f}x): {parts}; the baseline app "
        f"{base.cpu_ms_per_turn(BASELINE):.1f} ms. The baseline is one Python process (at most "
        f"one core: ≈{1000 / base.cpu_ms_per_turn(BASELINE):.0f} turns/s); the cluster spreads "
        f"over both cores (≈{2000 / ours:.0f} turns/s if it had them to itself) but needs "
        f"{ours / base_ours:.1f}x the CPU per turn."
    ]
    fast = _block(report, "throughput")
    if fast is not None and "direct" in fast.cluster_keys():
        direct, via = fast.phase("direct", top), fast.phase("proxy", top)
        lines.append(
            f"- Direct ingress (`RAY_SERVE_THROUGHPUT_OPTIMIZED=1`, straight to the replica's "
            f"port) takes the proxy out: Serve proxy CPU {via.cpu_ms_per_turn(PROXY):.1f} → "
            f"{direct.cpu_ms_per_turn(PROXY):.1f} ms per turn, `GET /v1/health` "
            f"{_p50(fast.health_ms['proxy']):.1f} → {_p50(fast.health_ms['direct']):.1f} ms; the "
            f"gateway replica and session host costs stay."
        )
    return lines


def verdicts(report: Report) -> list[str]:
    lines = []
    for block in report.results.blocks:
        for key in block.cluster_keys():
            checks = []
            for concurrency in report.args.levels:
                phase, base = block.phase(key, concurrency), block.phase("baseline", concurrency)
                p50 = phase.p(50) / base.p(50)
                rate = phase.throughput / base.throughput
                p50_ok = "met" if p50 <= TARGET_P50_RATIO else "missed"
                rate_ok = "met" if rate >= TARGET_THROUGHPUT_RATIO else "missed"
                checks.append(
                    f"c={concurrency}: p50 {_ratio(p50)} **{p50_ok}**, "
                    f"throughput {_ratio(rate)} **{rate_ok}**"
                )
            lines.append(f"- {LABELS[(block.mode, key)]}: " + "; ".join(checks) + ".")
    return lines


def method(report: Report) -> str:
    args = report.args
    load = ", ".join(f"{value:.2f}" for value in report.load_before)
    return (
        f"Method: one-step turns (profile without tools; the fake LLM streams a 9-word reply, "
        f"time to first token {args.ttft_ms:g} ms, from a thread of the benchmark process). "
        f"Baseline: `benchmarks/_baseline_app.py` (FastAPI + uvicorn, one worker, constant "
        f"bearer check; the same `submit_message`, three journal transactions and "
        f"`LiteLLMClient` streaming call; no Ray). Cluster: a local Ray (`num_cpus=2`) per serve "
        f"mode, {args.replicas} gateway replica(s), one SessionHost. In each serve mode's block "
        f"the baseline and the HTTP paths alternate, {args.rounds} round(s) of {args.requests} "
        f"turns per path and concurrency; each ratio compares a path with the baseline of its own "
        f"block. The in-cluster paths (driver of the default block, measured once after it) use "
        f"the same sizes. Every phase takes a fresh pool of max(16, c) sessions warmed by one turn "
        f"each (activation is not measured), one turn per session at a time, `httpx.AsyncClient` "
        f"in the benchmark process. Fresh databases. `RAY_SERVE_ENABLE_HA_PROXY=1` is not run: "
        f"its HAProxy stats and metrics listeners bind all interfaces (`*:8404`, `*:9101`) and "
        f"this benchmark stays on loopback. Load average before the run: {load}; the machine "
        f"is shared, see 'other processes'. Run time {report.seconds:.0f} s."
    )


def markdown(report: Report) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    top = max(report.args.levels)
    return "\n".join(
        [
            f"Command: `{report.command}`",
            "",
            f"Date: {when}. Machine: {machine_description()}.",
            "",
            result_table(report),
            "",
            f"CPU per turn at c={top} (user+system time of each process during the phases, "
            f"divided by the turns):",
            "",
            cpu_table(report, top),
            "",
            health_line(report),
            *transactions_line(report),
            "",
            "What dominates:",
            "",
            *latency_split(report),
            *cpu_split(report),
            "",
            f"Targets (p50 <= {TARGET_P50_RATIO}x the baseline, throughput >= "
            f"{TARGET_THROUGHPUT_RATIO}x the baseline):",
            "",
            *verdicts(report),
            "",
            method(report),
        ]
    )


# -- main -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.cluster_child:
        cluster_child()
        return
    command = " ".join([".venv/bin/python -m benchmarks.turn_overhead", *argv])
    started = time.monotonic()
    load_before = os.getloadavg()
    llm = FakeLLM(Script(), timing=Timing(ttft_s=args.ttft_ms / 1000)).start_in_thread()
    try:
        with tempfile.TemporaryDirectory(prefix="turn-overhead-") as workdir:
            agents_dir = Path(workdir) / "agents"
            agents_dir.mkdir()
            (agents_dir / f"{AGENT}.yaml").write_text(yaml.safe_dump(PROFILE))
            results = asyncio.run(run(Bench(args, llm), agents_dir))
    finally:
        llm.stop()
    report = Report(args, command, results, time.monotonic() - started, load_before)
    publish(markdown(report), args.out, SECTION, DOC_TITLE)


if __name__ == "__main__":
    main()
