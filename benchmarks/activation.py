"""Session activation latency and memory per idle session: virtual actors vs isolation mode.

Run: ``.venv/bin/python -m benchmarks.activation`` (``--quick`` for a small run that only prints).

Virtual actors: ``--hosts`` SessionHost actors, each holding many sessions. Isolation mode
(``sessions_per_host: 1``), measured in the same run as the baseline: one actor process per
session, which exits when its session passivates, so activating a passivated session there means
starting a process.

Figures:

* activation of a passivated session with a ``--history``-message history: the driver's
  ``await host.notify.remote(session_id)`` (claim + load history + open turns + one Ray call),
  p50/p99 over ``--activations`` distinct sessions, measured while the hosts hold ``--sessions``
  idle sessions; next to it a trivial call on the same host, ``pid.remote()`` (the Ray call
  alone), the host's ``stats.remote()`` (which walks its sessions) and the same
  activation in a SessionHostCore inside this process (no Ray);
* memory per idle activated session: the hosts' RSS/USS/PSS after activating ``--sessions``
  sessions minus before (after warm-up, 0 sessions), divided by the count; in isolation mode the
  whole processes' memory divided by their count.

Starts its own local Ray and a fresh PostgreSQL database (created on the server of
``SA01_DB_DSN``, or of ``.data/services.env``), and removes both at the end. No LLM call is made.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import ray
from sqlalchemy import insert, text

from actors.compose import build_runtime_deps
from actors.session import RaySessionRouter
from agentcluster.config import Settings, load_settings
from agentcluster.runtime import RuntimeDeps, SessionHostCore
from agentcluster.store import SqlStateStore, open_store
from agentcluster.store.models import Base
from benchmarks._common import (
    KIB,
    MIB,
    Memory,
    create_database,
    drop_database,
    machine_description,
    markdown_table,
    percentile,
    publish,
    server_dsn,
    total_memory,
)

SECTION = "## Session activation and memory"
TABLES = Base.metadata.tables
DOC_TITLE = (
    "# Benchmarks\n\nResults of the scripts under `benchmarks/`, each section with the command "
    "that produced it. These machines are noisy: compare the ratios to the baseline measured in "
    "the same run rather than absolute figures across runs.\n"
)
TARGET_P99_MS = 25.0
TARGET_KIB = 200.0
TARGET_P99_AT_MOST_MS = 15.0
"""Issue 17: activation p99 with 100,000 sessions on the node at most this..."""
TARGET_GROWTH = 1.25
"""...and within this factor of the p99 at 10,000."""
WARMUP_SESSIONS = 20
BATCH = 200
PACE_S = 0.01  # between latency samples, so one sample's worker does not overlap the next
SETTLE_TIMEOUT_S = 30.0
USER_TEXT = "Could you look at the figures from last week and tell me what changed, and why? "
ANSWER_TEXT = (
    "Revenue rose 4% week over week, mostly from the new annual plans; churn was flat. Support "
    "tickets fell after the billing fix shipped on Tuesday, and the onboarding funnel converted "
    "slightly better on mobile. The one worrying number is refund requests, up from 12 to 19, "
    "nearly all about the old invoice format. I would watch that one next week. "
)

T = TypeVar("T")


# -- arguments --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.activation", description=__doc__)
    parser.add_argument("--sessions", type=int, default=10_000, help="idle sessions for memory")
    parser.add_argument("--history", type=int, default=100, help="messages per sampled session")
    parser.add_argument(
        "--activations", type=int, default=1000, help="latency samples (per level of sessions held)"
    )
    parser.add_argument("--hosts", type=int, default=2, help="SessionHost actors")
    parser.add_argument("--isolation-sessions", type=int, default=20, help="isolation baseline")
    parser.add_argument(
        "--levels",
        default="1000,10000,100000",
        help="session counts the hosts hold while activation is measured again (comma-separated;"
        " --sessions is always one of them)",
    )
    parser.add_argument(
        "--out", default=None, help="file to update (default docs/benchmarks.md; '-': none)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes (1000 sessions, 40 samples, 4 isolated); prints only unless --out",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.activations, args.isolation_sessions = 1000, 40, 4
        args.levels = "200,1000"
    try:
        levels = {int(level) for level in str(args.levels).split(",") if level.strip()}
    except ValueError:
        parser.error("--levels must be comma-separated numbers")
    args.levels = sorted(levels | {args.sessions})
    if args.levels[0] < 1:
        parser.error("--levels must be >= 1")
    if args.out is None:
        args.out = "-" if args.quick else "docs/benchmarks.md"
    for name in ("sessions", "history", "activations", "hosts", "isolation_sessions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


# -- database ---------------------------------------------------------------------------------


# -- seeding ----------------------------------------------------------------------------------


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _history_rows(
    tenant_id: str, session_id: str, history: int, at: datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Completed turns: user and assistant messages alternating, each pair sharing a turn_id."""
    messages: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for index in range(history):
        if index % 2 == 0:
            turn_id = str(uuid.uuid4())
        role, content = ("user", USER_TEXT) if index % 2 == 0 else ("assistant", ANSWER_TEXT)
        message_id = str(uuid.uuid4())
        stamp = at + timedelta(milliseconds=index)
        messages.append(
            {
                "message_id": message_id,
                "tenant_id": tenant_id,
                "session_id": session_id,
                "turn_id": turn_id,
                "role": role,
                "content": f"{index}: {content}",
                "created_at": stamp,
            }
        )
        if role == "user":
            turns.append(
                {
                    "turn_id": turn_id,
                    "tenant_id": tenant_id,
                    "session_id": session_id,
                    "message_id": message_id,
                    "status": "completed",
                    "attempt": 1,
                    "usage": {"prompt_tokens": 100, "completion_tokens": 80},
                    "created_at": stamp,
                    "started_at": stamp,
                    "finished_at": stamp,
                }
            )
        else:
            turns[-1]["answer_message_id"] = message_id
    for turn in turns:
        turn.setdefault("answer_message_id", None)
    return messages, turns


async def seed_sessions(
    store: SqlStateStore, tenant_id: str, count: int, history: int
) -> list[str]:
    """``count`` sessions of agent ``default`` with ``history`` messages each, in batches."""
    session_ids = [str(uuid.uuid4()) for _ in range(count)]
    now = datetime.now(UTC)
    per_batch = max(1, 4000 // max(history, 1))
    for batch in chunks(session_ids, per_batch):
        sessions = [
            {
                "session_id": session_id,
                "tenant_id": tenant_id,
                "agent": "default",
                "status": "active",
                "metadata": {},
                "owner_epoch": 0,
                "next_seq": 1,
                "created_at": now,
                "updated_at": now,
            }
            for session_id in batch
        ]
        messages: list[dict[str, Any]] = []
        turns: list[dict[str, Any]] = []
        for session_id in batch:
            session_messages, session_turns = _history_rows(tenant_id, session_id, history, now)
            messages += session_messages
            turns += session_turns
        async with store.engine.begin() as connection:
            await connection.execute(insert(TABLES["sessions"]), sessions)
            await connection.execute(insert(TABLES["messages"]), messages)
            await connection.execute(insert(TABLES["turns"]), turns)
    return session_ids


@dataclass
class Population:
    tenant_id: str
    warmup: list[str]
    memory: list[str]
    sampled: list[str]  # --history messages each; the isolation baseline uses the first ones


async def seed(store: SqlStateStore, args: argparse.Namespace) -> Population:
    tenant = await store.create_tenant("benchmark-activation")
    tenant_id = tenant.tenant_id
    sampled_count = max(args.activations, args.isolation_sessions)
    population = Population(
        tenant_id=tenant_id,
        warmup=await seed_sessions(store, tenant_id, WARMUP_SESSIONS, 4),
        memory=await seed_sessions(store, tenant_id, max(args.levels), 4),
        sampled=await seed_sessions(store, tenant_id, sampled_count, args.history),
    )
    async with store.engine.begin() as connection:
        await connection.execute(text("ANALYZE"))  # as autovacuum would on a live database
    return population


# -- measuring --------------------------------------------------------------------------------


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    """Milliseconds ``call`` took."""
    start = time.perf_counter()
    await call()
    return (time.perf_counter() - start) * 1000


async def settle(probe: Callable[[], Memory]) -> Memory:
    """Memory once two readings a second apart differ by under 1% (bounded)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    last = probe()
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        current = probe()
        if abs(current.uss - last.uss) <= 0.01 * max(last.uss, 1):
            return current
        last = current
    return last


@dataclass
class Level:
    """What the hosts do while holding ``sessions`` idle sessions."""

    sessions: int
    activation_ms: list[float]
    call_ms: list[float]
    stats_ms: list[float]
    per_session: Memory


@dataclass
class ModeResult:
    activation_ms: list[float]
    per_session: Memory
    call_ms: list[float] = field(default_factory=list)
    stats_ms: list[float] = field(default_factory=list)
    inprocess_ms: list[float] = field(default_factory=list)
    base: Memory = field(default_factory=lambda: Memory(0, 0, 0))
    after: Memory = field(default_factory=lambda: Memory(0, 0, 0))
    sessions: int = 0
    levels: list[Level] = field(default_factory=list)


async def activate_all(router: RaySessionRouter, session_ids: Sequence[str]) -> None:
    for batch in chunks(session_ids, BATCH):
        await asyncio.gather(*(router.notify(session_id) for session_id in batch))


async def passivate_all(router: RaySessionRouter, session_ids: Sequence[str]) -> None:
    for batch in chunks(session_ids, BATCH):
        await asyncio.gather(
            *(router.actor(session_id).passivate.remote(session_id) for session_id in batch)
        )


async def active_sessions(hosts: Sequence[Any]) -> int:
    stats = await asyncio.gather(*(host.stats.remote() for host in hosts))
    return sum(item.active_sessions for item in stats)


async def sample_activations(
    router: RaySessionRouter, sampled: Sequence[str]
) -> tuple[list[float], list[float], list[float]]:
    """Activation of each passivated sampled session, with a bare Ray call and ``stats`` on its
    host just before: (activation, call, stats) milliseconds."""
    await activate_all(router, sampled)  # so that each sample is a passivated session
    await asyncio.sleep(1.0)
    await passivate_all(router, sampled)
    call_ms: list[float] = []
    stats_ms: list[float] = []
    activation_ms: list[float] = []
    for session_id in sampled:
        host: Any = router.actor(session_id)
        call_ms.append(await timed(host.pid.remote))
        stats_ms.append(await timed(host.stats.remote))
        activation_ms.append(await timed(functools.partial(host.notify.remote, session_id)))
        await asyncio.sleep(PACE_S)
    await asyncio.sleep(1.0)
    await passivate_all(router, sampled)
    return activation_ms, call_ms, stats_ms


async def virtual_mode(
    settings: Settings, population: Population, hosts: int, levels: Sequence[int], main: int
) -> ModeResult:
    """Many sessions per host: at each level of idle sessions held, their memory and the
    activation latency; the ``main`` level's figures are the mode's."""
    router = RaySessionRouter(settings, use_controller=False, count=hosts)
    await router.ensure_hosts(hosts)  # builds each host's deps: LiteLLM import, store pool
    handles = list({router.actor(session_id) for session_id in population.memory})
    pids: list[int] = list(await asyncio.gather(*(handle.pid.remote() for handle in handles)))
    measured: list[Level] = []
    try:
        await activate_all(router, population.warmup)
        await passivate_all(router, population.warmup)
        base = await settle(lambda: total_memory(pids))
        main_after = base
        held = 0
        for level in levels:
            await activate_all(router, population.memory[held:level])
            held = level
            if await active_sessions(handles) != level:
                raise RuntimeError(f"not every one of {level} sessions is active on the hosts")
            after = await settle(lambda: total_memory(pids))
            activation_ms, call_ms, stats_ms = await sample_activations(router, population.sampled)
            measured.append(
                Level(level, activation_ms, call_ms, stats_ms, (after - base).per(level))
            )
            print(f"measured with {level:,} sessions held", file=sys.stderr)
            if level == main:
                main_after = after
    finally:
        for handle in handles:
            ray.kill(handle, no_restart=True)
    at_main = next(item for item in measured if item.sessions == main)
    return ModeResult(
        activation_ms=at_main.activation_ms,
        per_session=at_main.per_session,
        call_ms=at_main.call_ms,
        stats_ms=at_main.stats_ms,
        base=base,
        after=main_after,
        sessions=main,
        levels=measured,
    )


async def inprocess_activations(settings: Settings, population: Population) -> list[float]:
    """The same activations in a SessionHostCore inside this process: no Ray call at all."""
    deps = await build_runtime_deps(settings)

    async def ready() -> RuntimeDeps:
        return deps

    core = SessionHostCore(f"{settings.runtime.host_prefix}-inprocess", ready)
    try:
        await core.start()
        for session_id in population.warmup:
            await core.notify(session_id)
        await asyncio.sleep(0.5)
        await core.stop()
        samples: list[float] = []
        for session_id in population.sampled:
            samples.append(await timed(functools.partial(core.notify, session_id)))
            await asyncio.sleep(PACE_S)
        await asyncio.sleep(0.5)
        await core.stop()  # passivates every sample again
        return samples
    finally:
        await core.stop()
        # The composition root built it: the SQL adapter, whatever role the host sees.
        if isinstance(deps.store, SqlStateStore):
            await deps.store.close()


async def isolation_mode(settings: Settings, session_ids: Sequence[str]) -> ModeResult:
    """One actor per session: activating a passivated session starts its process."""
    isolated = settings.model_copy(
        update={"runtime": settings.runtime.model_copy(update={"sessions_per_host": 1})}
    )
    router = RaySessionRouter(isolated, use_controller=False)
    handles: list[Any] = []
    activation_ms: list[float] = []
    try:
        for session_id in session_ids:

            async def first_notify(sid: str = session_id) -> None:
                handle = router.actor(sid)  # creates the actor: it does not exist yet
                handles.append(handle)
                await handle.notify.remote(sid)

            activation_ms.append(await timed(first_notify))
        pids: list[int] = list(await asyncio.gather(*(h.pid.remote() for h in handles)))
        if len(set(pids)) != len(session_ids):
            raise RuntimeError("isolation mode did not give each session its own process")
        total = await settle(lambda: total_memory(pids))
    finally:
        for handle in handles:
            ray.kill(handle, no_restart=True)
    return ModeResult(
        activation_ms=activation_ms,
        per_session=total.per(len(session_ids)),
        after=total,
        sessions=len(session_ids),
    )


# -- report -----------------------------------------------------------------------------------


@dataclass
class Report:
    args: argparse.Namespace
    command: str
    virtual: ModeResult
    isolation: ModeResult
    inprocess_ms: list[float]
    seconds: float


def _ms(values: Sequence[float], q: float) -> str:
    return f"{percentile(values, q):.1f}"


def _kib(value: int) -> str:
    return f"{value / KIB:,.0f}"


def _ratio(isolated: float, virtual: float) -> str:
    return f"{isolated / virtual:,.0f}x" if virtual > 0 else "n/a"


def result_table(report: Report) -> str:
    virtual, isolation = report.virtual, report.isolation
    rows: list[list[str]] = []
    for label, q in (("p50", 50.0), ("p99", 99.0)):
        v, i = percentile(virtual.activation_ms, q), percentile(isolation.activation_ms, q)
        rows.append([f"activation of a passivated session, {label} (ms)", *_fmt(v, i, ".1f")])
    for label in ("rss", "uss", "pss"):
        v, i = getattr(virtual.per_session, label), getattr(isolation.per_session, label)
        rows.append([f"{label.upper()} per idle session (KiB)", *_fmt(v / KIB, i / KIB, ",.0f")])
    args = report.args
    headers = [
        "",
        f"virtual actors ({args.sessions:,} sessions on {args.hosts} hosts)",
        f"isolation mode ({args.isolation_sessions} actors)",
        "isolation / virtual",
    ]
    return markdown_table(headers, rows)


def _fmt(virtual: float, isolated: float, spec: str) -> list[str]:
    return [format(virtual, spec), format(isolated, spec), _ratio(isolated, virtual)]


def details(report: Report) -> list[str]:
    virtual = report.virtual
    hosts = report.args.hosts
    overhead = [a - c for a, c in zip(virtual.activation_ms, virtual.call_ms, strict=True)]
    return [
        f"- Ray call alone on the same host (`pid.remote()`): p50 {_ms(virtual.call_ms, 50)} ms, "
        f"p99 {_ms(virtual.call_ms, 99)} ms; activation minus that call, per sample: "
        f"p50 {_ms(overhead, 50)} ms, p99 {_ms(overhead, 99)} ms. `stats.remote()` on the same "
        f"host (~{virtual.sessions // hosts:,} sessions each): "
        f"p50 {_ms(virtual.stats_ms, 50)} ms, p99 {_ms(virtual.stats_ms, 99)} ms.",
        f"- Slowest virtual activation: {max(virtual.activation_ms):.1f} ms; slowest isolated: "
        f"{max(report.isolation.activation_ms):,.0f} ms.",
        f"- Activation in a SessionHostCore in the driver process (no Ray): "
        f"p50 {_ms(report.inprocess_ms, 50)} ms, p99 {_ms(report.inprocess_ms, 99)} ms.",
        f"- Virtual hosts after warm-up with 0 sessions: {virtual.base.pss / MIB / hosts:,.0f} MiB "
        f"PSS, {virtual.base.uss / MIB / hosts:,.0f} MiB USS, "
        f"{virtual.base.rss / MIB / hosts:,.0f} MiB RSS per host; with {virtual.sessions:,} "
        f"sessions: {virtual.after.pss / MIB:,.0f} MiB PSS in all, i.e. "
        f"{virtual.after.pss / virtual.sessions / KIB:,.0f} KiB PSS per session "
        f"counting the hosts themselves.",
    ]


def level_table(report: Report) -> str:
    """Activation and memory as the hosts fill (issue 17: cost flat in the sessions held)."""
    rows = [
        [
            f"{level.sessions:,}",
            _ms(level.activation_ms, 50),
            _ms(level.activation_ms, 99),
            _ms(level.call_ms, 50),
            _ms(level.call_ms, 99),
            _ms(level.stats_ms, 99),
            _kib(level.per_session.uss),
            _kib(level.per_session.pss),
        ]
        for level in report.virtual.levels
    ]
    headers = [
        f"sessions held ({report.args.hosts} hosts)",
        "activation p50 ms",
        "activation p99 ms",
        "Ray call p50 ms",
        "Ray call p99 ms",
        "stats p99 ms",
        "USS KiB/session",
        "PSS KiB/session",
    ]
    return markdown_table(headers, rows)


def level_verdicts(report: Report) -> list[str]:
    by_count = {level.sessions: level for level in report.virtual.levels}
    most, ten = by_count.get(100_000), by_count.get(10_000)
    if most is None or ten is None:
        return ["- Flat cost (100,000 vs 10,000 sessions): not measured (levels without both)."]
    p99, p99_ten = percentile(most.activation_ms, 99), percentile(ten.activation_ms, 99)
    met = p99 <= TARGET_P99_AT_MOST_MS and p99 <= TARGET_GROWTH * p99_ten
    return [
        f"- Activation p99 with 100,000 sessions <= {TARGET_P99_AT_MOST_MS:.0f} ms and within "
        f"{TARGET_GROWTH}x of 10,000: **{'met' if met else 'missed'}** ({p99:.1f} ms vs "
        f"{p99_ten:.1f} ms, {p99 / p99_ten:.2f}x)."
    ]


def verdicts(report: Report) -> list[str]:
    p99 = percentile(report.virtual.activation_ms, 99)
    per = report.virtual.per_session
    worst = max(per.rss, per.uss) / KIB
    return [
        f"- Activation p99 <= {TARGET_P99_MS:.0f} ms: "
        f"**{'met' if p99 <= TARGET_P99_MS else 'missed'}** "
        f"({p99:.1f} ms, virtual actors, end to end from the driver).",
        f"- <= {TARGET_KIB:.0f} KiB per idle activated session: "
        f"**{'met' if worst <= TARGET_KIB else 'missed'}** (RSS {per.rss / KIB:,.0f} KiB, "
        f"USS {per.uss / KIB:,.0f} KiB).",
    ]


def markdown(report: Report) -> str:
    args = report.args
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    method = (
        f"Method: one local Ray (`num_cpus=2`) and a fresh PostgreSQL database on this machine. "
        f"Activation = `await host.notify.remote(session_id)` from the driver for a session that "
        f"was activated once and passivated, with {args.history} messages of history (completed "
        f"turns, user ≈90 and assistant ≈370 characters), {args.activations} distinct sessions "
        f"one at a time, while the hosts hold {args.sessions:,} idle sessions. Memory = the "
        f"hosts' RSS/USS/PSS (`memory_full_info`) with {args.sessions:,} idle activated sessions "
        f"of 4 messages minus after warm-up with none, divided by the count. Isolation mode "
        f"(`sessions_per_host: 1`): activation = first `notify` of a session whose actor does not "
        f"exist (its actor exits when the session passivates), i.e. process start + imports + "
        f"store pool + load; memory = those processes' total divided by their count (their "
        f"sessions have the {args.history}-message history: at most a few hundred KiB more); "
        f"with {args.isolation_sessions} samples its p99 is about the maximum. Ray runs with its "
        f"default system config (no worker prestart). "
        f"Run time {report.seconds:.0f} s."
    )
    return "\n".join(
        [
            f"Command: `{report.command}`",
            "",
            f"Date: {when}. Machine: {machine_description()}.",
            "",
            result_table(report),
            "",
            *details(report),
            "",
            "As the hosts fill (the same sampled activations, measured again at each count of idle "
            "sessions held):",
            "",
            level_table(report),
            "",
            "Targets:",
            "",
            *verdicts(report),
            *level_verdicts(report),
            "",
            method,
        ]
    )


# -- main -------------------------------------------------------------------------------------


def bench_settings(dsn: str) -> Settings:
    return load_settings(
        {
            "db": {"dsn": dsn, "pool_size": 10},
            # No LLM call is made; a loopback address anyway, should one be attempted.
            "llm": {"api_base": "http://127.0.0.1:9", "api_key": "unused", "max_retries": 0},
            "runtime": {
                "host_prefix": f"bench-{uuid.uuid4().hex[:8]}",
                "idle_passivate_s": 86_400,  # passivation off: the sessions must stay active
                "min_hosts": 1,
                "max_hosts": 1000,
            },
        }
    )


async def run(args: argparse.Namespace, command: str) -> Report:
    started = time.monotonic()
    server = server_dsn()
    dsn = await create_database(server)
    try:
        settings = bench_settings(dsn)
        store = await open_store(settings.db_dsn)
        try:
            population = await seed(store, args)
        finally:
            await store.close()
        print(f"seeded in {time.monotonic() - started:.0f} s", file=sys.stderr)
        virtual = await virtual_mode(settings, population, args.hosts, args.levels, args.sessions)
        print("virtual actors measured", file=sys.stderr)
        inprocess = await inprocess_activations(settings, population)
        isolated = population.sampled[: args.isolation_sessions]
        isolation = await isolation_mode(settings, isolated)
    finally:
        await drop_database(server, dsn)
    return Report(args, command, virtual, isolation, inprocess, time.monotonic() - started)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = " ".join([".venv/bin/python -m benchmarks.activation", *argv])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = asyncio.run(run(args, command))
    finally:
        ray.shutdown()
    publish(markdown(report), args.out, SECTION, DOC_TITLE)


if __name__ == "__main__":
    main()
