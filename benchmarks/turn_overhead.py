"""Turn overhead: one-step turns through the cluster vs two single-process baselines, in one run.

Run: ``.venv/bin/python -m benchmarks.turn_overhead`` (``--quick`` for a short run that only
prints; ``--out FILE`` to write it anyway; ``--stack production|embedded|both``).

Targets, all running the same one-step turn (``POST /v1/sessions/{id}/messages?wait=true``, a
profile without tools; ``agentcluster.testing.fake_llm`` in a thread of this process,
``--ttft-ms``, default 0):

* **bare**: ``benchmarks/_bare_app.py``, the service a user writes in an afternoon with no
  agentcluster code (FastAPI under uvicorn, one worker; an asyncpg pool on its own PostgreSQL
  database; LiteLLM ``acompletion``, non-streaming; per turn one history read, one LLM call and one
  transaction writing the user message, the answer and two events). The ratios and the issue 17
  targets are against it;
* **store baseline**: ``benchmarks/_baseline_app.py``, our own work without the distribution (the
  cluster's store and its journal's transactions, ``LiteLLMClient`` asking for whole answers
  as the cluster does when nobody watches, trimming; no Ray), on the stack's database: what
  the cluster costs beyond its own store and LLM client;
* **cluster**, per ``--stack`` and Serve mode (``--modes``), each a local Ray in a child process of
  this script (``--cluster-child``; Serve reads its mode from the environment at import):

  * stacks: ``production`` (as ``make stack-up``: a fresh PostgreSQL database, the Kafka outbox
    relay and inbound consumer on private topics, Redis and the OPA server of
    ``.data/services.env``); ``embedded`` (as ``make run``: SQLite, the in-process Wasm policy, no
    Kafka or Redis);
  * modes: ``default`` (Serve's HTTP proxy → gateway replica → SessionHost actor) and
    ``throughput`` (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: gRPC from proxy to replica, and direct
    ingress, the replica's own HTTP port, measured as a second path);
  * in-cluster (default mode, by the child's Ray driver): the gateway's DeploymentHandle
    (``agentcluster.connect(key).ask``) and ``Runtime.ask`` (no gateway at all).

Each (stack, mode) is a block in which the bare service, the store baseline and the cluster's HTTP
paths are measured alternately, ``--rounds`` times, at each ``--concurrency``. A phase takes fresh
sessions, each warmed by one turn (activation is not measured), and runs ``--requests`` turns with
``httpx.AsyncClient``, one turn per session at a time, a session serving 10 turns before its worker
moves to a fresh one (histories stay short, as the issue describes). Latency is the client's wall
time per request; throughput is turns / phase wall time. CPU seconds of every process, by role
(the shared PostgreSQL, Kafka, Redis and OPA servers included), are read before and after each
phase.

Creates its own PostgreSQL databases (on the server of ``SA01_DB_DSN``, or of
``.data/services.env``), SQLite files and Kafka topics, and removes them at the end; every process
it starts is stopped by its handle. Loopback only.
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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import httpx
import psutil
import yaml
from pydantic import BaseModel
from sqlalchemy.engine import make_url

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
    service_variables,
    wait_healthy,
    warm_sessions,
)

SECTION = "## Turn overhead"
# Issue 17's targets, against the bare service, on the production stack.
TARGET_P50_RATIO, TARGET_P50_LEVEL = 2.5, 1
TARGET_THROUGHPUT_RATIO, TARGET_THROUGHPUT_LEVEL = 0.5, 16
TARGET_HOST_CPU_MS = 15.0
TARGET_CPU_RATIO = 2.0
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
SESSION_TURNS = 10  # measured turns a session serves before its worker takes a fresh one
WARM_CONCURRENCY = 16
HEALTH_PROBES = 200
STATS_FLUSH_S = 11.0  # PostgreSQL flushes an idle backend's counters within 10 s
TRANSACTION_TURNS = 96
TRANSACTION_CONCURRENCY = 16
START_TIMEOUT_S = 240.0
READY, RESULT, MEASURE = "READY ", "RESULT ", "MEASURE "
# Kafka topics of a production cluster, as configs/topics.yaml, under private names.
TOPIC_PARTITIONS = {"events": 6, "inbound": 3}
PRODUCTION_VARIABLES = ("SA01_KAFKA_BOOTSTRAP_SERVERS", "SA01_REDIS_URL", "SA01_POLICY_URL")
# What a child process must not inherit: each stack sets its own services.
STACK_PREFIXES = ("SA01_DB_", "SA01_KAFKA_", "SA01_REDIS_", "SA01_POLICY_", "RAY_SERVE_")

Stack = Literal["production", "embedded"]
STACK_TITLES: dict[Stack, str] = {
    "production": "production stack (`make stack-up`: PostgreSQL, Kafka relay, Redis, OPA server)",
    "embedded": "embedded (`make run`: SQLite, in-process Wasm policy, no Kafka or Redis)",
}
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
BARE, BASELINE = "bare", "baseline"
CLIENT, BARE_APP, BASELINE_APP, PROXY, REPLICA, HOST, RAY, POSTGRES, SERVICES, OTHER = (
    "client + fake LLM (this process)",
    "bare service",
    "store baseline app",
    "Serve proxy",
    "gateway replica",
    "session host",
    "Ray system (GCS, raylet, controllers, agents, driver)",
    "PostgreSQL (all backends)",
    "Kafka, Redis, OPA servers",
    "other processes (not ours)",
)
ROLES = (CLIENT, BARE_APP, BASELINE_APP, PROXY, REPLICA, HOST, RAY, POSTGRES, SERVICES, OTHER)
ROLE_MARKERS = (("ProxyActor", PROXY), ("ServeReplica", REPLICA), ("SessionHost", HOST))
SERVICE_NAMES = {"postgres": POSTGRES, "redis-server": SERVICES, "opa": SERVICES}
_T0 = time.monotonic()


def http_turn(client: httpx.AsyncClient, session_id: str) -> Awaitable[None]:
    return ask_turn(client, session_id, USER_TEXT)


def sessions_needed(turns: int, concurrency: int) -> int:
    """Sessions :func:`drive_fresh` may use for ``turns`` at ``concurrency``: each worker opens
    one per ``SESSION_TURNS`` of its turns, so at most ``turns // SESSION_TURNS`` full ones plus
    one partly used per worker."""
    return turns // SESSION_TURNS + concurrency


async def drive_fresh(
    call: Callable[[str], Awaitable[None]],
    sessions: Sequence[str],
    turns: int,
    concurrency: int,
) -> LoadRun:
    """``turns`` calls by ``concurrency`` workers (closed loop); a worker serves a session
    ``SESSION_TURNS`` times, then takes the next fresh one (no session is used by two workers).

    Raises:
        ValueError: fewer than :func:`sessions_needed` sessions.
    """
    if len(sessions) < sessions_needed(turns, concurrency):
        raise ValueError(
            f"{turns} turns at c={concurrency} need more than {len(sessions)} sessions"
        )
    fresh = iter(sessions)
    remaining = iter(range(turns))  # shared: each worker takes the next turn number
    latencies: list[float] = []

    async def worker() -> None:
        session_id, served = "", SESSION_TURNS
        for _ in remaining:
            if served == SESSION_TURNS:
                session_id, served = next(fresh), 0
            served += 1
            started = time.perf_counter()
            await call(session_id)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadRun(latencies_ms=latencies, seconds=time.perf_counter() - started)


async def http_sessions(client: httpx.AsyncClient, turns: int, concurrency: int) -> list[str]:
    """Fresh sessions for ``turns`` at ``concurrency``, each warmed by one turn (the cluster
    activates it then, so activation is not measured)."""
    count = sessions_needed(turns, concurrency)
    return await warm_sessions(client, AGENT, count, USER_TEXT, WARM_CONCURRENCY)


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
    parser.add_argument("--rounds", type=int, help="alternations per block (default 2)")
    parser.add_argument(
        "--stack",
        choices=("production", "embedded", "both"),
        default="both",
        help="the cluster's stack: make stack-up's services, make run's embedded ones, or both",
    )
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
    args.stacks = list(get_args(Stack)) if args.stack == "both" else [args.stack]
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


class StackServices(BaseModel):
    """What a stack's cluster (or the store baseline) keeps its state in and talks to; ``None``
    is the embedded default (no Kafka relay, per-process limits, in-process policy)."""

    dsn: str
    kafka_servers: str | None = None
    topics_file: str | None = None
    redis_url: str | None = None
    policy_url: str | None = None
    events_topic: str | None = None  # where the relay publishes (reported, not a setting)

    def overrides(self) -> dict[str, dict[str, Any]]:
        """``load_settings`` overrides: exactly these services, whatever the environment holds."""
        kafka: dict[str, Any] = {"bootstrap_servers": self.kafka_servers}
        if self.topics_file is not None:
            kafka["topics_file"] = self.topics_file
        return {
            "db": {"dsn": self.dsn},
            "kafka": kafka,
            "redis": {"url": self.redis_url},
            "policy": {"url": self.policy_url},
        }

    def env(self) -> dict[str, str]:
        """The same as ``SA01_`` variables, for every process of the child (Ray workers too)."""
        values = {
            "SA01_DB_DSN": self.dsn,
            "SA01_KAFKA_BOOTSTRAP_SERVERS": self.kafka_servers,
            "SA01_KAFKA_TOPICS_FILE": self.topics_file,
            "SA01_REDIS_URL": self.redis_url,
            "SA01_POLICY_URL": self.policy_url,
        }
        return {key: value for key, value in values.items() if value is not None}


class ChildConfig(BaseModel):
    """First line on a cluster child's stdin: what to start."""

    mode: ServeMode
    stack: Stack
    services: StackServices
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


# -- CPU accounting ---------------------------------------------------------------------------


def _cluster_role(process: psutil.Process) -> str:
    try:
        title = " ".join(process.cmdline())
    except psutil.Error:
        return RAY
    return next((role for marker, role in ROLE_MARKERS if marker in title), RAY)


def _service_role(process: psutil.Process) -> str | None:
    name = process.info["name"]
    if name == "java":  # the Kafka broker (the only Java server of make deps-up)
        with contextlib.suppress(psutil.Error):
            if "kafka" in " ".join(process.cmdline()).lower():
                return SERVICES
        return None
    return SERVICE_NAMES.get(name)


@dataclass
class Watched:
    """The processes whose CPU time a phase reports, by role: this process, the two baselines, a
    cluster child's process tree (Ray workers carry their actor's name in their title) and the
    shared servers (PostgreSQL's backends, Kafka, Redis, OPA: other users' load counts too)."""

    bare_pid: int | None = None
    baseline_pid: int | None = None
    cluster_pid: int | None = None

    def __call__(self) -> Iterable[tuple[psutil.Process, str]]:
        yield psutil.Process(), CLIENT
        for pid, role in ((self.bare_pid, BARE_APP), (self.baseline_pid, BASELINE_APP)):
            if pid is not None:
                yield psutil.Process(pid), role
        if self.cluster_pid is not None:
            root = psutil.Process(self.cluster_pid)
            yield root, RAY
            for process in root.children(recursive=True):
                yield process, _cluster_role(process)
        for process in psutil.process_iter(["name"]):
            service = _service_role(process)
            if service is not None:
                yield process, service


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

    def ms_per_turn(self, roles: Iterable[str]) -> float:
        return sum(self.cpu_ms_per_turn(role) for role in roles)


@dataclass
class Block:
    """One stack in one serve mode: its cluster paths and both baselines measured alternately
    with them (the in-cluster paths of the default mode are measured after them)."""

    stack: Stack
    mode: ServeMode
    phases: dict[tuple[str, int], Phase] = field(default_factory=dict)
    health_ms: dict[str, list[float]] = field(default_factory=dict)
    relayed: int | None = None  # events the Kafka relay published (production)

    def phase(self, key: str, concurrency: int) -> Phase:
        return self.phases.setdefault((key, concurrency), Phase())

    def paths(self) -> list[str]:
        return list(dict.fromkeys(key for key, _ in self.phases))

    def cluster_keys(self) -> list[str]:
        return [key for key in self.paths() if key not in (BARE, BASELINE)]

    def roles(self, key: str) -> tuple[str, ...]:
        """The processes a path's turn runs in (its "all of ours"): the client and fake LLM, the
        path's own processes and the servers its stack uses; not the idle processes of the other
        targets, which the CPU table still shows."""
        servers = (POSTGRES, SERVICES) if self.stack == "production" else ()
        if key == BARE:
            return CLIENT, BARE_APP, POSTGRES
        if key == BASELINE:
            return CLIENT, BASELINE_APP, *servers[:1]
        return CLIENT, PROXY, REPLICA, HOST, RAY, *servers

    def ours_ms_per_turn(self, key: str, concurrency: int) -> float:
        """CPU per turn of the processes of :meth:`roles`."""
        return self.phase(key, concurrency).ms_per_turn(self.roles(key))

    def http_keys(self) -> list[str]:
        """The paths measured over HTTP, with CPU by role (not the in-cluster ones)."""
        return [key for key in self.paths() if key not in get_args(InClusterPath)]


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
        """Fresh warmed sessions, then ``--requests`` turns; checks each made one LLM call."""
        requests = self.args.requests
        async with target.client(concurrency) as client:
            sessions = await http_sessions(client, requests, concurrency)
            self.llm.clear_requests()
            before = self.meter.snapshot()
            turn = functools.partial(http_turn, client)
            run = await drive_fresh(turn, sessions, requests, concurrency)
            cpu = self.meter.since(before)
        calls = len(self.llm.requests)
        if calls != requests:
            raise BenchmarkError(f"{target.key}: {requests} turns made {calls} LLM calls")
        return run, cpu


async def run_block(
    bench: Bench, stack: Stack, mode: ServeMode, targets: Sequence[ApiTarget]
) -> Block:
    """The bare service, the store baseline and the cluster paths (``targets``, in that order)
    alternately, ``--rounds`` times, at each concurrency."""
    block = Block(stack, mode)
    for round_index in range(bench.args.rounds):
        order = targets if round_index % 2 == 0 else targets[::-1]
        for concurrency in bench.args.levels:
            for target in order:
                run, cpu = await bench.measure(target, concurrency)
                block.phase(target.key, concurrency).add(run, cpu)
                _progress(f"{stack}/{mode}", target.key, concurrency, run)
    for target in targets:
        block.health_ms[target.key] = await health_probe(target, bench.args.health_probes)
    return block


def _progress(block: str, key: str, concurrency: int, run: LoadRun) -> None:
    p50 = percentile(run.latencies_ms, 50)
    log(f"{block:21} {key:8} c={concurrency:<3} p50 {p50:7.1f} ms {run.rate:6.1f} turns/s")


# -- what a run creates -----------------------------------------------------------------------


@dataclass
class Resources:
    """Databases, SQLite files (under ``workdir``) and Kafka topics a run creates, and removes at
    its end."""

    server: str
    workdir: Path
    agents_dir: Path
    production: dict[str, str]
    databases: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)

    async def database(self, stack: Stack, name: str) -> str:
        """A fresh database: PostgreSQL for production, a SQLite file for embedded."""
        if stack == "embedded":
            return f"sqlite:///{self.workdir / f'{name}-{uuid.uuid4().hex[:8]}.db'}"
        self.databases.append(await create_database(self.server, f"ac_bench_{name}"))
        return self.databases[-1]

    async def cluster_services(self, stack: Stack) -> StackServices:
        """A cluster's services: its own database, and for production its own Kafka topics
        (the shared broker's default topics belong to other users) beside Redis and OPA."""
        dsn = await self.database(stack, "turns")
        if stack == "embedded":
            return StackServices(dsn=dsn)
        prefix = f"bench-turns-{uuid.uuid4().hex[:8]}"
        topics = {role: f"{prefix}.{role}" for role in TOPIC_PARTITIONS}
        topics_file = self.workdir / f"{prefix}.yaml"
        spec = {
            role: {"name": topics[role], "partitions": n} for role, n in TOPIC_PARTITIONS.items()
        }
        topics_file.write_text(yaml.safe_dump(spec))
        self.topics += [*topics.values(), f"{topics['inbound']}.dlq"]
        return StackServices(
            dsn=dsn,
            kafka_servers=self.production["SA01_KAFKA_BOOTSTRAP_SERVERS"],
            topics_file=str(topics_file),
            redis_url=self.production["SA01_REDIS_URL"],
            policy_url=self.production["SA01_POLICY_URL"],
            events_topic=topics["events"],
        )

    async def remove(self) -> None:
        for dsn in self.databases:
            await drop_database(self.server, dsn)
        if self.topics:
            await delete_topics(self.production["SA01_KAFKA_BOOTSTRAP_SERVERS"], self.topics)


async def delete_topics(servers: str, names: Sequence[str]) -> None:
    """Delete the Kafka topics a run created (a name that was never created is no error)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=15_000)
    await admin.start()
    try:
        with contextlib.suppress(KafkaError):
            await admin.delete_topics(list(names))
    finally:
        await admin.close()


async def topic_records(servers: str, topic: str) -> int:
    """Records on ``topic`` so far (the sum of its partitions' end offsets): what the relay of a
    cluster with its own topic has published."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, n) for n in range(TOPIC_PARTITIONS["events"])]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


def production_variables() -> dict[str, str]:
    """Kafka, Redis and OPA of ``make stack-up`` (environment, else ``.data/services.env``).

    Raises:
        SystemExit: one of them is not configured.
    """
    found = service_variables(PRODUCTION_VARIABLES)
    missing = [name for name in PRODUCTION_VARIABLES if name not in found]
    if missing:
        raise SystemExit(f"--stack production needs {', '.join(missing)} (make deps-up)")
    return found


# -- processes we start -----------------------------------------------------------------------


def _env(extra: dict[str, str], services: StackServices | None = None) -> dict[str, str]:
    # Each child starts from no Serve flag and no service setting at all, whatever the caller's
    # environment holds: its stack and mode say which.
    inherited = environment().items()
    child = {key: value for key, value in inherited if not key.startswith(STACK_PREFIXES)}
    stack = services.env() if services is not None else {}
    return child | stack | extra | {"PYTHONUNBUFFERED": "1"}


def _plain_dsn(dsn: str) -> str:
    # asyncpg takes postgresql://, not SQLAlchemy's postgresql+asyncpg://.
    return make_url(dsn).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def running_bare(bench: Bench, dsn: str) -> AsyncIterator[ApiTarget]:
    port, token = free_port(), "bare-" + uuid.uuid4().hex
    argv = [sys.executable, "-m", "benchmarks._bare_app", "--port", str(port)]
    argv += ["--dsn", _plain_dsn(dsn), "--llm-base", bench.llm.base_url]
    argv += ["--model", f"openai/{PROFILE['model']}", "--system-prompt", PROFILE["system_prompt"]]
    argv += ["--max-tokens", str(PROFILE["max_output_tokens"]), "--token", token]
    child = await ManagedProcess.start("bare service", argv, _env({}))
    bench.watched.bare_pid = child.pid
    try:
        target = ApiTarget(BARE, f"http://127.0.0.1:{port}", token)
        await wait_healthy(target, child, START_TIMEOUT_S)
        yield target
    finally:
        bench.watched.bare_pid = None
        await child.stop(stdin_first=False)  # uvicorn does not read stdin; SIGTERM stops it


@contextlib.asynccontextmanager
async def running_baseline(
    bench: Bench, services: StackServices, agents_dir: Path
) -> AsyncIterator[ApiTarget]:
    port, token = free_port(), "baseline-" + uuid.uuid4().hex
    argv = [sys.executable, "-m", "benchmarks._baseline_app", "--port", str(port)]
    argv += ["--dsn", services.dsn, "--llm-base", bench.llm.base_url]
    argv += ["--agents-dir", str(agents_dir), "--agent", AGENT, "--token", token]
    child = await ManagedProcess.start("store baseline app", argv, _env({}, services))
    bench.watched.baseline_pid = child.pid
    try:
        target = ApiTarget(BASELINE, f"http://127.0.0.1:{port}", token)
        await wait_healthy(target, child, START_TIMEOUT_S)
        yield target
    finally:
        bench.watched.baseline_pid = None
        await child.stop(stdin_first=False)


@dataclass
class Cluster:
    child: ManagedProcess
    targets: list[ApiTarget]
    token: str


@contextlib.asynccontextmanager
async def running_cluster(
    bench: Bench, stack: Stack, mode: ServeMode, services: StackServices, agents_dir: Path
) -> AsyncIterator[Cluster]:
    admin_key = "admin-" + uuid.uuid4().hex
    config = ChildConfig(
        mode=mode,
        stack=stack,
        services=services,
        llm_base=bench.llm.base_url,
        agents_dir=str(agents_dir),
        admin_key=admin_key,
        port=free_port(),
        replicas=bench.args.replicas,
        host_prefix=f"bench-{uuid.uuid4().hex[:8]}",
    )
    argv = [sys.executable, "-m", "benchmarks.turn_overhead", "--cluster-child"]
    child = await ManagedProcess.start(
        f"cluster ({stack}/{mode})",
        argv,
        _env(MODE_ENV[mode], services),
        prefixes=(READY, RESULT),
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
    concurrency = TRANSACTION_CONCURRENCY
    clients = [target.client(concurrency) for target, _ in targets]
    try:
        pools = [await http_sessions(client, turns, concurrency) for client in clients]
        await asyncio.sleep(STATS_FLUSH_S)
        before = [await database_transactions(server, dsn) for _, dsn in targets]
        for client, pool in zip(clients, pools, strict=True):
            await drive_fresh(functools.partial(http_turn, client), pool, turns, concurrency)
        await asyncio.sleep(STATS_FLUSH_S)
        after = [await database_transactions(server, dsn) for _, dsn in targets]
    finally:
        for client in clients:
            await client.aclose()
    return {
        target.key: (end - start) / turns
        for (target, _), start, end in zip(targets, before, after, strict=True)
    }


async def in_cluster(cluster: Cluster, args: argparse.Namespace, block: Block) -> None:
    """The in-cluster paths at each concurrency, measured by the child's driver, into ``block``."""
    for path in get_args(InClusterPath):
        for concurrency in args.levels:
            command = InClusterCommand(
                path=path, api_key=cluster.token, requests=args.requests, concurrency=concurrency
            )
            await cluster.child.send(MEASURE + command.model_dump_json())
            run = LoadRun.model_validate_json(await cluster.child.receive(RESULT, START_TIMEOUT_S))
            block.phase(path, concurrency).add(run)
            _progress(f"{block.stack}/{block.mode}", path, concurrency, run)


# -- the cluster child (its own process, with its own Ray) ------------------------------------


def cluster_settings(config: ChildConfig) -> Settings:
    overrides = config.services.overrides()
    overrides["llm"] = {"api_base": config.llm_base, "api_key": "bench", "max_retries": 1}
    overrides["auth"] = {"admin_key": config.admin_key}
    overrides["runtime"] = {"agents_dir": config.agents_dir, "host_prefix": config.host_prefix}
    return load_settings(overrides)


def _say(prefix: str, message: BaseModel) -> None:
    print(prefix + message.model_dump_json(), flush=True)


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(1)  # unwinds through the finally below: Serve and Ray are shut down


def _start_kafka_workers(settings: Settings) -> None:
    """As ``agentcluster serve`` does with Kafka configured: the outbox relay and the inbound
    consumer, one actor each."""
    from actors.inbound import start_inbound
    from actors.relay import start_relay

    start_relay(settings)
    asyncio.run(start_inbound(settings))


def cluster_child() -> None:
    """Start Ray, the gateway (and, for production, the Kafka workers), say READY, run MEASURE
    commands until stdin closes, clean up."""
    import ray
    from ray import serve

    from deployments.gateway import build_gateway, start_proxy

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    config = ChildConfig.model_validate_json(sys.stdin.readline())
    settings = cluster_settings(config)
    replicas = {"min_replicas": config.replicas, "max_replicas": config.replicas}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        start_proxy(settings, "127.0.0.1", config.port)
        serve.run(
            build_gateway(settings, autoscaling_config=replicas), name=APP_NAME, route_prefix="/"
        )
        if settings.kafka.bootstrap_servers is not None:
            _start_kafka_workers(settings)
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


async def _fresh_run(
    create: Callable[[], Awaitable[str]], ask: Callable[[str], Awaitable[None]], c: InClusterCommand
) -> LoadRun:
    """As an HTTP phase: fresh sessions warmed by one turn each, then the turns, a session
    serving ``SESSION_TURNS`` of them."""
    sessions = [await create() for _ in range(sessions_needed(c.requests, c.concurrency))]
    await drive(ask, sessions, len(sessions), min(len(sessions), WARM_CONCURRENCY))
    return await drive_fresh(ask, sessions, c.requests, c.concurrency)


async def _measure_handle(command: InClusterCommand) -> LoadRun:
    import agentcluster

    client = agentcluster.connect(command.api_key)

    async def create() -> str:
        return (await client.create_session(AGENT)).session_id

    async def ask(session_id: str) -> None:
        outcome = await client.ask(session_id, USER_TEXT)
        if outcome.status != "completed":
            raise BenchmarkError(f"handle turn ended {outcome.status}: {outcome.error}")

    return await _fresh_run(create, ask, command)


async def _measure_runtime(settings: Settings, command: InClusterCommand) -> LoadRun:
    from actors.compose import connect_runtime

    runtime = await connect_runtime(settings)
    try:
        tenant = await runtime.store.create_tenant(f"bench-runtime-{uuid.uuid4().hex[:8]}")

        async def create() -> str:
            return (await runtime.create_session(tenant.tenant_id, AGENT)).session_id

        async def ask(session_id: str) -> None:
            outcome = await runtime.ask(tenant.tenant_id, session_id, USER_TEXT)
            if outcome.type != "turn.completed":
                raise BenchmarkError(f"runtime turn ended with {outcome.type}")

        return await _fresh_run(create, ask, command)
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
    transactions: dict[str, float] = field(default_factory=dict)

    def of(self, stack: Stack) -> list[Block]:
        return [block for block in self.blocks if block.stack == stack]

    def block(self, stack: Stack, mode: ServeMode) -> Block | None:
        return next((b for b in self.blocks if b.stack == stack and b.mode == mode), None)


async def run(bench: Bench, workdir: Path, agents_dir: Path) -> Results:
    production = production_variables() if "production" in bench.args.stacks else {}
    resources = Resources(server_dsn(), workdir, agents_dir, production)
    results = Results()
    try:
        bare_dsn = await resources.database("production", "bare")  # always PostgreSQL
        async with running_bare(bench, bare_dsn) as bare:
            log("bare service up")
            for stack in bench.args.stacks:
                await run_stack(bench, stack, (bare, bare_dsn), resources, results)
    finally:
        await resources.remove()
    return results


async def run_stack(
    bench: Bench,
    stack: Stack,
    bare: tuple[ApiTarget, str],
    resources: Resources,
    results: Results,
) -> None:
    """The blocks of one stack: the store baseline on the stack's database, then a cluster per
    serve mode, each measured alternately with both baselines."""
    base_services = StackServices(dsn=await resources.database(stack, "baseline"))
    async with running_baseline(bench, base_services, resources.agents_dir) as baseline:
        log(f"store baseline ({stack}) up")
        for mode in bench.args.serve_modes:
            services = await resources.cluster_services(stack)
            async with running_cluster(bench, stack, mode, services, resources.agents_dir) as cl:
                log(f"cluster ({stack}/{mode}) up: " + ", ".join(t.url for t in cl.targets))
                block = await run_block(bench, stack, mode, [bare[0], baseline, *cl.targets])
                results.blocks.append(block)
                if mode == "default":
                    await in_cluster(cl, bench.args, block)
                if services.kafka_servers is not None and services.events_topic is not None:
                    await asyncio.sleep(1.0)  # the relay polls the outbox every 0.2 s
                    block.relayed = await topic_records(
                        services.kafka_servers, services.events_topic
                    )
                    log(f"cluster ({stack}/{mode}): the relay published {block.relayed} events")
                if mode == "default" and stack == "production" and not bench.args.quick:
                    pairs = [bare, (baseline, base_services.dsn), (cl.targets[0], services.dsn)]
                    results.transactions = await transactions_per_turn(resources.server, pairs)
            log(f"cluster ({stack}/{mode}) stopped")


# -- report -----------------------------------------------------------------------------------

LABELS: dict[tuple[ServeMode, str], str] = {
    ("default", BARE): "**bare service** (FastAPI + asyncpg + LiteLLM)",
    ("default", BASELINE): "store baseline (our store and LLM client, no Ray)",
    ("default", "proxy"): "cluster, Serve's default HTTP proxy",
    ("default", "handle"): "in-cluster DeploymentHandle (`agentcluster.connect(key).ask`)",
    ("default", "runtime"): "in-cluster `Runtime.ask` (no gateway)",
    ("throughput", BARE): "**bare service** (throughput block)",
    ("throughput", BASELINE): "store baseline (throughput block)",
    ("throughput", "proxy"): "cluster, `RAY_SERVE_THROUGHPUT_OPTIMIZED=1`, via the proxy",
    ("throughput", "direct"): "cluster, `RAY_SERVE_THROUGHPUT_OPTIMIZED=1`, direct ingress",
}
SHORT: dict[tuple[ServeMode, str], str] = {
    ("default", BARE): "bare",
    ("default", BASELINE): "store baseline",
    ("default", "proxy"): "default proxy",
    ("throughput", BARE): "bare (2nd block)",
    ("throughput", BASELINE): "store baseline (2nd block)",
    ("throughput", "proxy"): "throughput, proxy",
    ("throughput", "direct"): "throughput, direct",
}


def _ratio(value: float) -> str:
    return f"{value:.2f}x"


def _row(label: str, concurrency: int, phase: Phase, bare: Phase, baseline: Phase) -> list[str]:
    return [
        str(concurrency),
        label,
        f"{phase.p(50):.1f}",
        f"{phase.p(99):.1f}",
        f"{phase.throughput:.1f}",
        _ratio(phase.p(50) / bare.p(50)),
        _ratio(phase.throughput / bare.throughput),
        _ratio(phase.p(50) / baseline.p(50)),
    ]


def result_table(report: Report, stack: Stack) -> str:
    rows: list[list[str]] = []
    for concurrency in report.args.levels:
        for block in report.results.of(stack):
            bare, baseline = block.phase(BARE, concurrency), block.phase(BASELINE, concurrency)
            for key in block.paths():
                label = LABELS[(block.mode, key)]
                rows.append(_row(label, concurrency, block.phase(key, concurrency), bare, baseline))
    headers = ["c", "path", "p50 ms", "p99 ms", "turns/s", "p50 / bare", "turns/s / bare"]
    return markdown_table([*headers, "p50 / store baseline"], rows)


def cpu_table(report: Report, stack: Stack, concurrency: int) -> str:
    keyed = [(block, key) for block in report.results.of(stack) for key in block.http_keys()]
    columns = [(SHORT[(block.mode, key)], block.phase(key, concurrency)) for block, key in keyed]
    rows = [
        [role, *(f"{phase.cpu_ms_per_turn(role):.1f}" for _, phase in columns)]
        for role in ROLES
        if any(phase.cpu_ms_per_turn(role) >= 0.05 for _, phase in columns)
    ]
    ours = [block.ours_ms_per_turn(key, concurrency) for block, key in keyed]
    rows.append(["**all of ours** (the path's own roles)", *(f"**{v:.1f}**" for v in ours)])
    return markdown_table(["CPU ms per turn", *(label for label, _ in columns)], rows)


def health_line(report: Report, stack: Stack) -> str:
    parts = [
        f"{SHORT[(block.mode, key)]} {percentile(values, 50):.2f} ms"
        for block in report.results.of(stack)
        for key, values in block.health_ms.items()
    ]
    return f"- `GET /v1/health` alone, one at a time, p50: {'; '.join(parts)}."


def relay_line(report: Report, stack: Stack) -> list[str]:
    """That the production stack's relay ran: events it published to the cluster's topic."""
    parts = [
        f"{block.mode} block {block.relayed}"
        for block in report.results.of(stack)
        if block.relayed is not None
    ]
    if not parts:
        return []
    return [f"- Events the Kafka relay published (each cluster's own topic): {'; '.join(parts)}."]


def transactions_line(report: Report, stack: Stack) -> list[str]:
    found = report.results.transactions
    if not found or stack != "production":
        return []
    parts = [f"{SHORT[('default', key)]} {value:.1f}" for key, value in found.items()]
    return [
        f"- PostgreSQL transactions per turn (`pg_stat_database` of each target's database, "
        f"{TRANSACTION_TURNS} turns at c={TRANSACTION_CONCURRENCY}): {'; '.join(parts)}."
    ]


def _p50(values: Sequence[float]) -> float:
    return percentile(values, 50)


def latency_split(report: Report, stack: Stack) -> list[str]:
    """The lowest concurrency's p50 along the paths, outermost first."""
    block, low = report.results.block(stack, "default"), report.args.levels[0]
    if block is None:
        return []
    paths = [("HTTP through Serve's proxy", block.phase("proxy", low))]
    for path, label in (("handle", "DeploymentHandle"), ("runtime", "`Runtime.ask`")):
        if (path, low) in block.phases:
            paths.append((label, block.phase(path, low)))
    paths += [("store baseline", block.phase(BASELINE, low)), ("bare", block.phase(BARE, low))]
    steps = " → ".join(f"{label} {phase.p(50):.1f} ms" for label, phase in paths)
    hop = _p50(block.health_ms["proxy"]) - _p50(block.health_ms[BARE])
    return [
        f"- p50 at c={low}, from the outermost path in: {steps}. The Serve proxy hop alone "
        f"(`GET /v1/health`, vs the bare service's) adds {hop:.1f} ms."
    ]


def cpu_split(report: Report, stack: Stack) -> list[str]:
    """What the extra CPU per turn is, at the top concurrency."""
    block, top = report.results.block(stack, "default"), report.args.levels[-1]
    if block is None:
        return []
    bare, proxy = block.phase(BARE, top), block.phase("proxy", top)
    ours, bare_ours = block.ours_ms_per_turn("proxy", top), block.ours_ms_per_turn(BARE, top)
    # The cluster's own roles, then the servers its stack uses.
    roles = [HOST, REPLICA, PROXY, RAY, *block.roles("proxy")[5:]]
    parts = ", ".join(f"{role} {proxy.cpu_ms_per_turn(role):.1f} ms" for role in roles)
    bare_app = bare.cpu_ms_per_turn(BARE_APP)
    lines = [
        f"- CPU at c={top}: {ours:.0f} ms per turn in our processes and the servers they use for "
        f"the cluster vs {bare_ours:.0f} ms for the bare service ({ours / bare_ours:.1f}x): "
        f"{parts}; the bare service's process {bare_app:.1f} ms, the store baseline's "
        f"{block.phase(BASELINE, top).cpu_ms_per_turn(BASELINE_APP):.1f} ms. The bare service is "
        f"one Python process (at most one core: ≈{1000 / bare_app:.0f} turns/s); the cluster "
        f"spreads over both cores (≈{2000 / ours:.0f} turns/s if it had them to itself)."
    ]
    fast = report.results.block(stack, "throughput")
    if fast is not None and "direct" in fast.paths():
        direct, via = fast.phase("direct", top), fast.phase("proxy", top)
        lines.append(
            f"- Direct ingress (`RAY_SERVE_THROUGHPUT_OPTIMIZED=1`, straight to the replica's "
            f"port) takes the proxy out: Serve proxy CPU {via.cpu_ms_per_turn(PROXY):.1f} → "
            f"{direct.cpu_ms_per_turn(PROXY):.1f} ms per turn, `GET /v1/health` "
            f"{_p50(fast.health_ms['proxy']):.1f} → {_p50(fast.health_ms['direct']):.1f} ms; the "
            f"gateway replica and session host costs stay."
        )
    return lines


def _level(levels: Sequence[int], wanted: int) -> tuple[int, bool]:
    """The run's level closest to ``wanted``, and whether it is ``wanted`` itself."""
    found = min(levels, key=lambda level: abs(level - wanted))
    return found, found == wanted


def _judged(ok: bool, exact: bool, wanted: int) -> str:
    if not exact:
        return f"(not judged: the target is at c={wanted})"
    return "**met**" if ok else "**missed**"


def ratio_verdicts(report: Report, block: Block) -> list[str]:
    """Each HTTP path of the cluster against the bare service of its block."""
    low, low_exact = _level(report.args.levels, TARGET_P50_LEVEL)
    high, high_exact = _level(report.args.levels, TARGET_THROUGHPUT_LEVEL)
    lines = []
    for key in block.cluster_keys():
        if key not in block.http_keys():
            continue
        p50 = block.phase(key, low).p(50) / block.phase(BARE, low).p(50)
        rate = block.phase(key, high).throughput / block.phase(BARE, high).throughput
        p50_ok = _judged(p50 <= TARGET_P50_RATIO, low_exact, TARGET_P50_LEVEL)
        rate_ok = _judged(rate >= TARGET_THROUGHPUT_RATIO, high_exact, TARGET_THROUGHPUT_LEVEL)
        lines.append(
            f"- {block.stack}, {LABELS[(block.mode, key)]}: p50 at c={low} {_ratio(p50)} "
            f"{p50_ok}; throughput at c={high} {_ratio(rate)} {rate_ok}."
        )
    return lines


def cpu_verdicts(report: Report, block: Block) -> list[str]:
    top = report.args.levels[-1]
    host = block.phase("proxy", top).cpu_ms_per_turn(HOST)
    ratio = block.ours_ms_per_turn("proxy", top) / block.ours_ms_per_turn(BARE, top)
    host_ok = "**met**" if host <= TARGET_HOST_CPU_MS else "**missed**"
    ratio_ok = "**met**" if ratio <= TARGET_CPU_RATIO else "**missed**"
    # What the platform's distribution alone costs, before the turn's own work on the host.
    cluster = block.phase("proxy", top)
    floor = sum(cluster.cpu_ms_per_turn(role) for role in (PROXY, REPLICA, RAY))
    bare = block.ours_ms_per_turn(BARE, top)
    return [
        f"- {block.stack}, session host CPU per one-step turn at c={top}: {host:.1f} ms "
        f"{host_ok}; all of ours {_ratio(ratio)} the bare service's {ratio_ok}. Serve's proxy, "
        f"the gateway replica and Ray's own processes alone take {floor:.1f} ms per turn, "
        f"against {TARGET_CPU_RATIO * bare:.1f} ms for everything at {TARGET_CPU_RATIO:g}x the "
        f"bare service's {bare:.1f} ms (the host's LLM call and store writes, which the bare "
        f"service makes too, come on top)."
    ]


def embedded_verdict(report: Report) -> list[str]:
    """Embedded no worse than production: its default-proxy ratios against the bare service."""
    production = report.results.block("production", "default")
    embedded = report.results.block("embedded", "default")
    if production is None or embedded is None:
        return []
    low, _ = _level(report.args.levels, TARGET_P50_LEVEL)
    high, _ = _level(report.args.levels, TARGET_THROUGHPUT_LEVEL)

    def ratios(block: Block) -> tuple[float, float]:
        p50 = block.phase("proxy", low).p(50) / block.phase(BARE, low).p(50)
        return p50, block.phase("proxy", high).throughput / block.phase(BARE, high).throughput

    (emb_p50, emb_rate), (prod_p50, prod_rate) = ratios(embedded), ratios(production)
    ok = emb_p50 <= prod_p50 and emb_rate >= prod_rate
    return [
        f"- embedded no worse than production (default proxy, against each block's bare "
        f"service): p50 at c={low} {_ratio(emb_p50)} vs {_ratio(prod_p50)}, throughput at "
        f"c={high} {_ratio(emb_rate)} vs {_ratio(prod_rate)}: {'**met**' if ok else '**missed**'}."
    ]


def verdicts(report: Report) -> list[str]:
    lines: list[str] = []
    for block in report.results.blocks:
        lines += ratio_verdicts(report, block)
    for stack in report.args.stacks:
        default = report.results.block(stack, "default")
        if default is not None:
            lines += cpu_verdicts(report, default)
    return lines + embedded_verdict(report)


def method(report: Report) -> str:
    args = report.args
    load = ", ".join(f"{value:.2f}" for value in report.load_before)
    return (
        f"Method: one-step turns (profile without tools; the fake LLM answers a 9-word reply, "
        f"time to first token {args.ttft_ms:g} ms, from a thread of the benchmark process). Bare "
        f"service: `benchmarks/_bare_app.py`, no agentcluster code (FastAPI + uvicorn, one "
        f"worker, constant bearer check; asyncpg pool on its own PostgreSQL database; per turn "
        f"one history query, one non-streaming LiteLLM `acompletion`, one transaction writing the "
        f"user message, the answer and two events). Store baseline: `benchmarks/_baseline_app.py` "
        f"(the same uvicorn app shape; the cluster's store on the stack's database, "
        f"`submit_message` and the journal's two transactions of a one-step turn, `LiteLLMClient` "
        f"asking for the whole answer, as the cluster does when nobody watches; no Ray). "
        f"Cluster: a local Ray (`num_cpus=2`) per stack and serve mode, "
        f"{args.replicas} gateway replica(s), one SessionHost; production: a fresh PostgreSQL "
        f"database, Kafka relay and inbound consumer on private topics, Redis and the OPA server "
        f"of `.data/services.env`; embedded: a fresh SQLite file, in-process policy, no Kafka or "
        f"Redis. In each block the bare service, the store baseline and the HTTP paths alternate, "
        f"{args.rounds} round(s) of {args.requests} turns per path and concurrency; each ratio "
        f"compares a path with the bare service of its own block. The in-cluster paths (driver "
        f"of the default block, measured once after it) use the same sizes. Every phase takes "
        f"fresh sessions, each warmed by one turn (activation is not measured) and serving "
        f"{SESSION_TURNS} measured turns before its worker moves to a fresh one, one turn per "
        f"session at a time, `httpx.AsyncClient` in the benchmark process. CPU counts every "
        f"PostgreSQL backend and the Kafka, Redis and OPA servers, whoever uses them. "
        f"`RAY_SERVE_ENABLE_HA_PROXY=1` is not run: its HAProxy stats and metrics listeners bind "
        f"all interfaces (`*:8404`, `*:9101`) and this benchmark stays on loopback. Load average "
        f"before the run: {load}; the machine is shared, see 'other processes'. Run time "
        f"{report.seconds:.0f} s."
    )


def stack_section(report: Report, stack: Stack) -> list[str]:
    top = max(report.args.levels)
    return [
        f"### {STACK_TITLES[stack]}",
        "",
        result_table(report, stack),
        "",
        f"CPU per turn at c={top} (user+system time of each process during the phases, "
        f"divided by the turns):",
        "",
        cpu_table(report, stack, top),
        "",
        health_line(report, stack),
        *relay_line(report, stack),
        *transactions_line(report, stack),
        "",
        "What dominates:",
        "",
        *latency_split(report, stack),
        *cpu_split(report, stack),
        "",
    ]


INGRESS_NOTE = (
    "Why Serve's HTTP proxy stays the default ingress (issue 17, deliverable 3): direct ingress "
    "(`RAY_SERVE_THROUGHPUT_OPTIMIZED=1`) gives each gateway replica a port of its own (30000 "
    "up) and no one address across replicas, so with several replicas or autoscaling a client "
    "and the console would need a load balancer of their own; Serve's HAProxy mode "
    "(`RAY_SERVE_ENABLE_HA_PROXY=1`) is that load balancer, but Ray's HAProxy template binds its "
    "stats and metrics listeners on every interface (`bind *:8404`, `bind :9101`; only the ports "
    "are settings) and needs the `haproxy` binary on every node: not a default we ship. Direct "
    "ingress stays an opt-in (README, 'Ingress'). The hop from the replica to the session host "
    "is already one: a `?wait=true` turn is one Ray call to its host, and its outcome comes back "
    "on that call (no second subscription, no deltas sent: nobody watches, so the LLM call is "
    "not streamed either)."
)


def markdown(report: Report) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    sections = [line for stack in report.args.stacks for line in stack_section(report, stack)]
    return "\n".join(
        [
            f"Command: `{report.command}`",
            "",
            f"Date: {when}. Machine: {machine_description()}.",
            "",
            *sections,
            f"Targets (issue 17, against the bare service, on the production stack: p50 <= "
            f"{TARGET_P50_RATIO}x at c={TARGET_P50_LEVEL}, throughput >= "
            f"{TARGET_THROUGHPUT_RATIO}x at c={TARGET_THROUGHPUT_LEVEL}; session host CPU <= "
            f"{TARGET_HOST_CPU_MS:g} ms per turn, all of ours <= {TARGET_CPU_RATIO:g}x the bare "
            f"service's; embedded no worse than production):",
            "",
            *verdicts(report),
            "",
            method(report),
            "",
            INGRESS_NOTE,
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
            results = asyncio.run(run(Bench(args, llm), Path(workdir), agents_dir))
    finally:
        llm.stop()
    report = Report(args, command, results, time.monotonic() - started, load_before)
    publish(markdown(report), args.out, SECTION, DOC_TITLE)


if __name__ == "__main__":
    main()
