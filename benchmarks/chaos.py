"""The chaos suite: faults against a stack of its own, with clients sending, and a check of every
acknowledged message afterwards (issue 13).

    python -m benchmarks.chaos                       # every scenario and the failover targets
    python -m benchmarks.chaos --only host-kill,postgres --out -    # some, print only

It starts private PostgreSQL, Redis, OPA and Kafka on free loopback ports, its own local Ray with
the gateway (two replicas) on a free port, the outbox relay and the fake LLM, so it can kill and
stop any of them (benchmarks/_chaos_stack.py). Each scenario runs N closed-loop clients, each
sending a message a second with an Idempotency-Key and retrying on 5xx/429/timeouts with the same
key, injects its fault, then checks the store and the ``agent.events`` topic
(benchmarks/_chaos_load.py). The table goes to docs/reliability.md ("## Chaos suite"), the
failover targets to docs/benchmarks.md ("## Failover").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from agentcluster.config import project_root
from benchmarks._chaos_load import (
    Ledger,
    LoadConfig,
    Verdict,
    create_sessions,
    probe_stored_turn,
    probe_turn,
    run_clients,
    verify,
)
from benchmarks._chaos_stack import AGENT, ChaosStack, ServiceName, StackConfig, start_stack
from benchmarks._common import DOC_TITLE, machine_description, markdown_table, percentile, publish

__all__ = ["SCENARIOS", "Recovery", "Result", "Scenario", "main", "run_scenario"]

RELIABILITY_TITLE = "# Reliability"
CHAOS_SECTION = "## Chaos suite"
BENCH_SECTION = "## Failover under faults (issue 13 targets)"
COMMAND = "make chaos  (python -m benchmarks.chaos)"
ACK_WITHIN_S = 5.0


@dataclass
class Recovery:
    """One fault's end (monotonic) and the seconds from it to the next completed probe turn."""

    end: float
    turn_s: float | None


@dataclass
class Context:
    """What a fault can act on while the clients send."""

    stack: ChaosStack
    client: httpx.AsyncClient
    tenant_id: str
    probe_session: str
    ledger: Ledger


Fault = Callable[[Context], Awaitable[list[Recovery]]]


@dataclass(frozen=True)
class Scenario:
    """A fault, the load it runs under, and how long the load goes on after it."""

    name: str
    fault: str
    clients: int
    inject: Fault
    tail_s: float = 8.0
    interval_s: float = 1.0


@dataclass
class Result:
    """A scenario's verdict and the answers its clients saw."""

    scenario: Scenario
    verdict: Verdict
    ledger: Ledger
    recoveries: list[Recovery]
    seconds: float
    extra: dict[str, str] = field(default_factory=dict)

    def first_success_s(self) -> list[float]:
        found = (self.ledger.first_success_after(r.end) for r in self.recoveries)
        return [value for value in found if value is not None]

    def turn_times(self) -> list[float]:
        return [r.turn_s for r in self.recoveries if r.turn_s is not None]

    def ack_within(self, seconds: float) -> float:
        """Share of sends answered 202 within ``seconds`` of their first attempt."""
        sends = self.ledger.sends
        quick = [s for s in sends if s.acked_at is not None and s.acked_at - s.started <= seconds]
        return len(quick) / len(sends) if sends else 0.0


# -- faults ---------------------------------------------------------------------------------------


async def _probe(ctx: Context, since: float) -> float | None:
    """Seconds from ``since`` to the completion of a new turn of the probe session."""
    return await probe_stored_turn(
        ctx.client, ctx.stack.store, ctx.tenant_id, ctx.probe_session, since
    )


async def _probe_task(ctx: Context, since: float) -> asyncio.Task[float | None]:
    return asyncio.create_task(_probe(ctx, since))


async def _kill_probe_host(ctx: Context) -> float | None:
    """SIGKILL the host owning the probe session (an affected session by construction); the
    moment of the kill, or None if no host could be killed."""
    host = await ctx.stack.host_of(ctx.tenant_id, ctx.probe_session)
    if host is None:  # not active right now: any host will do
        host = ctx.stack.host_names()[0]
    if await ctx.stack.kill_host(host) is None:
        print(f"chaos: host {host} not killed (no PID in time)", file=sys.stderr, flush=True)
        return None
    return time.monotonic()


def host_kills(every_s: float, count: int, *, sequential: bool = False) -> Fault:
    """Kill the probe session's host every ``every_s`` (or, ``sequential``, once the previous
    kill was recovered from, the host set is whole again and ``every_s`` more passed: each kill
    is then one host failure, not a cascade), ``count`` times."""

    async def inject(ctx: Context) -> list[Recovery]:
        kills: list[tuple[float, asyncio.Task[float | None]]] = []
        for _ in range(count):
            if sequential:  # the probe session is active on a live host again
                await _probe(ctx, time.monotonic())
                await ctx.stack.hosts_whole()
            await asyncio.sleep(every_s)
            moment = await _kill_probe_host(ctx)
            if moment is None:
                continue
            probe = await _probe_task(ctx, moment)
            if sequential:
                await probe
            kills.append((moment, probe))
        return [Recovery(moment, await probe) for moment, probe in kills]

    return inject


@dataclass
class LagWatch:
    """The relay's backlog (events committed, not yet on Kafka) sampled through an outage."""

    peak: int = 0
    drained_s: float | None = None


async def _watch_lag(ctx: Context, watch: LagWatch, back: asyncio.Event) -> None:
    """Sample ``outbox_lag`` every 0.5 s; once the broker is ``back``, time the drain to 0."""
    back_at: float | None = None
    while True:
        lag = await ctx.stack.store.outbox_lag()
        watch.peak = max(watch.peak, lag)
        if back.is_set():
            back_at = back_at or time.monotonic()
            if lag == 0:
                watch.drained_s = time.monotonic() - back_at
                return
        await asyncio.sleep(0.5)


def outage(
    service: ServiceName, seconds: float, lead_s: float = 5.0, lag: LagWatch | None = None
) -> Fault:
    """Stop ``service`` for ``seconds``, then start it again (``lag``: watch the relay's
    backlog meanwhile and until it drained, up to 120 s)."""

    async def inject(ctx: Context) -> list[Recovery]:
        await asyncio.sleep(lead_s)
        back = asyncio.Event()
        watcher = asyncio.create_task(_watch_lag(ctx, lag, back)) if lag else None
        await ctx.stack.stop_service(service)
        await asyncio.sleep(seconds)
        await ctx.stack.start_service(service)
        end = time.monotonic()
        back.set()
        recovery = Recovery(end, await _probe(ctx, end))
        if watcher is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watcher, 120)
        return [recovery]

    return inject


KAFKA_LAG = LagWatch()


def replica_kill(lead_s: float = 5.0) -> Fault:
    """``ray.kill`` one gateway replica."""

    async def inject(ctx: Context) -> list[Recovery]:
        await asyncio.sleep(lead_s)
        await asyncio.to_thread(ctx.stack.kill_gateway_replica)
        end = time.monotonic()
        return [Recovery(end, await _probe(ctx, end))]

    return inject


def tool_actor_kill(every_s: float = 5.0, count: int = 3) -> Fault:
    """SIGKILL a tool actor every ``every_s`` while turns call the calculator in it."""

    async def inject(ctx: Context) -> list[Recovery]:
        recoveries = []
        for _ in range(count):
            await asyncio.sleep(every_s)
            await ctx.stack.kill_tool_actor()
            end = time.monotonic()
            recoveries.append(Recovery(end, await _probe(ctx, end)))
        return recoveries

    return inject


def idle(seconds: float) -> Fault:
    """No fault: the load alone for ``seconds`` (a baseline)."""

    async def inject(ctx: Context) -> list[Recovery]:
        await asyncio.sleep(seconds)
        return []

    return inject


# 20 sessions at a message every 3 s: about 7 turns a second, which two shared cores sustain
# with the whole stack on them (at one a second each the turns queue up even without faults).
STORM_INTERVAL_S = 3.0

SCENARIOS: dict[str, Scenario] = {
    "host-kill": Scenario(
        "host-kill", "SessionHost SIGKILL every 10 s, 4 times", 8, host_kills(10, 4)
    ),
    "postgres": Scenario(
        "postgres", "PostgreSQL stopped 15 s, started", 8, outage("postgresql", 15)
    ),
    "kafka": Scenario(
        "kafka", "Kafka broker stopped 30 s, started", 8, outage("kafka", 30, lag=KAFKA_LAG)
    ),
    "redis": Scenario("redis", "Redis stopped 10 s, started", 8, outage("redis", 10)),
    "opa": Scenario("opa", "OPA stopped 10 s, started", 8, outage("opa", 10)),
    "replica-kill": Scenario("replica-kill", "a gateway replica ray.kill'ed", 8, replica_kill()),
    "tool-kill": Scenario(
        "tool-kill", "a tool actor SIGKILLed every 5 s, 3 times", 8, tool_actor_kill()
    ),
}
# Small versions for `make test` (tests/chaos): the invariants, not the timings.
SHORT: dict[str, Scenario] = {
    "host-kill-short": Scenario(
        "host-kill-short", "SessionHost SIGKILL every 5 s, twice", 4, host_kills(5, 2), 5.0
    ),
    "postgres-short": Scenario(
        "postgres-short", "PostgreSQL stopped 8 s, started", 4, outage("postgresql", 8, 3), 5.0
    ),
}
TARGETS: dict[str, Scenario] = {
    "kill-x20": Scenario(
        "kill-x20",
        "SessionHost SIGKILL, 20 times, each once the last was recovered and the host set "
        "whole again, + 2 s",
        4,
        host_kills(2, 20, sequential=True),
    ),
    "kill-every-5s": Scenario(
        "kill-every-5s",
        "SessionHost SIGKILL every 5 s for 2 min",
        20,
        host_kills(5, 24),
        interval_s=STORM_INTERVAL_S,
    ),
    # The same load without a fault: what the machine sustains (a backlog here is capacity,
    # not failover).
    "no-fault": Scenario(
        "no-fault", "none (baseline of kill-every-5s)", 20, idle(60), interval_s=STORM_INTERVAL_S
    ),
}


ALL: dict[str, Scenario] = SCENARIOS | TARGETS | SHORT


# -- running --------------------------------------------------------------------------------------


async def _probe_session(client: httpx.AsyncClient) -> str:
    session_id = (await create_sessions(client, AGENT, 1))[0]
    if await probe_turn(client, session_id, time.monotonic(), deadline_s=60) is None:
        raise RuntimeError("the stack answers no turn before the fault")
    return session_id


async def run_scenario(stack: ChaosStack, scenario: Scenario, load: LoadConfig) -> Result:
    """Run the scenario's clients, inject the fault, let the load run ``tail_s`` more, check."""
    tenant_id, key = await stack.new_tenant(scenario.name)
    limits = httpx.Limits(max_connections=scenario.clients + 8)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=stack.url, headers=headers, limits=limits) as client:
        sessions = await create_sessions(client, AGENT, scenario.clients)
        ctx = Context(stack, client, tenant_id, await _probe_session(client), Ledger())
        stop = asyncio.Event()
        started = time.monotonic()
        load = dataclasses.replace(load, interval_s=scenario.interval_s)
        clients = asyncio.create_task(run_clients(client, sessions, ctx.ledger, stop, load))
        try:
            recoveries = await scenario.inject(ctx)
            await asyncio.sleep(scenario.tail_s)
        finally:
            stop.set()
            await clients
        seconds = time.monotonic() - started
    kafka = stack.settings.kafka.bootstrap_servers
    verdict = await verify(
        stack.store, tenant_id, ctx.ledger, kafka=(kafka, "agent.events") if kafka else None
    )
    return Result(scenario, verdict, ctx.ledger, recoveries, seconds)


def summary(result: Result) -> dict[str, object]:
    """A scenario's figures as plain data (``--json``; the short test reads it)."""
    return {
        "scenario": result.scenario.name,
        "verdict": dataclasses.asdict(result.verdict) | {"ok": result.verdict.ok},
        "faults": len(result.recoveries),
        "recovered_turns": len(result.turn_times()),
        "answers_5xx": result.ledger.count(500, 600),
        "answers_500": result.ledger.count(500, 501),
        "no_answer": result.ledger.count(0, 1),
        "first_2xx_s": result.first_success_s(),
        "next_turn_s": result.turn_times(),
        "ack_within_5s": result.ack_within(ACK_WITHIN_S),
        "problems": dict(result.ledger.problems),
    }


def _lag_note(results: Sequence[Result]) -> list[str]:
    if not any(result.scenario.name == "kafka" for result in results):
        return []
    drained = "not within 120 s" if KAFKA_LAG.drained_s is None else f"{KAFKA_LAG.drained_s:.1f} s"
    return [
        "",
        f"Kafka outage: the relay's backlog (committed events not yet on the topic, the "
        f"outbox lag) peaked at {KAFKA_LAG.peak} events and drained to 0 {drained} after the "
        "broker was started again.",
    ]


def _problems(result: Result) -> str:
    counts = result.ledger.problems.most_common()
    return ", ".join(f"{count} x {kind}" for kind, count in counts) or "none"


def _seconds(values: Sequence[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f} s"
    return f"p50 {percentile(values, 50):.2f} / max {max(values):.2f} s"


def _row(result: Result) -> list[str]:
    v, ledger = result.verdict, result.ledger
    kafka = "-" if not v.kafka_checked else f"{v.kafka_missing} missing, {v.kafka_disordered} gaps"
    return [
        result.scenario.name,
        result.scenario.fault,
        f"{result.scenario.clients} clients x 1 msg / {result.scenario.interval_s:g} s, "
        f"{result.seconds:.0f} s",
        str(v.sent),
        str(v.acked),
        str(v.lost),
        str(v.duplicated),
        f"{v.unended} ({v.failed_turns} failed)",
        f"{ledger.count(500, 600)} ({ledger.count(500, 501)} x 500)",
        str(ledger.count(0, 1)),
        kafka,
        _seconds(result.first_success_s()),
        _seconds(result.turn_times()),
    ]


HEADERS = [
    "scenario",
    "fault",
    "load",
    "sent",
    "acked",
    "lost",
    "duplicated",
    "acked turns not ended",
    "5xx answers",
    "no answer",
    "agent.events",
    "fault end -> first 2xx",
    "fault end -> next completed turn",
]


def code_version() -> str:
    """The commit the run used, and whether the runtime's code had uncommitted changes (the
    figures depend on the router and hosts of the moment: re-run after they change)."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=project_root(), capture_output=True, text=True)
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--", "agentcluster", "actors", "deployments")
    return f"commit {git('rev-parse', '--short', 'HEAD')}" + (
        " with uncommitted changes to the runtime" if dirty else ""
    )


def chaos_report(results: Sequence[Result], version: str) -> str:
    """The reliability section: the table, how it was made, what each column means."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    verdicts = ", ".join(
        f"{r.scenario.name}: {'ok' if r.verdict.ok else 'FAILED'}" for r in results
    )
    return "\n".join(
        [
            f"Command: `{COMMAND}`, {stamp}, {version}, on {machine_description()}.",
            "",
            "Each scenario runs against a stack the run starts itself (private PostgreSQL, "
            "Redis, OPA and Kafka on free loopback ports, a local Ray, the gateway with 2 "
            "replicas, 2 session hosts, the outbox relay, the fake LLM answering in 0.2 s). "
            "Clients send a message a second each (every 3 s in kill-every-5s and its no-fault "
            "baseline) with an Idempotency-Key and retry on 5xx, "
            "429, timeouts (10 s) and connection errors with the same key, for up to 90 s. "
            "Afterwards every message is looked up in its session's history (acked and absent: "
            "lost; present twice: duplicated), every acked turn must have ended, and the "
            "session's events on `agent.events`, deduplicated by event id, must be seq 1..n of "
            "the store in order. Recovery is measured from the end of the fault (service started "
            "again, or the kill) to the first 2xx any client got, and to the completion of a "
            "new turn of a probe session (for host kills: a session of the killed host), its "
            "message sent right after the fault (202, retried) and its turn watched in the "
            "store every 50 ms.",
            "",
            markdown_table(HEADERS, [_row(r) for r in results]),
            "",
            f"Invariants: {verdicts}.",
            *_lag_note(results),
            "",
            "Error answers by scenario (status and problem type): "
            + "; ".join(f"{r.scenario.name}: {_problems(r)}" for r in results)
            + ".",
        ]
    )


def targets_report(results: dict[str, Result], version: str) -> str:
    """The benchmarks section: the issue's failover targets."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    if kills := results.get("kill-x20"):
        times = kills.turn_times()
        p50, p99 = (percentile(times, 50), percentile(times, 99)) if times else (0.0, 0.0)
        rows.append(
            [
                "host killed -> next completed turn of an affected session",
                f"{len(times)} of {len(kills.recoveries)} kills: p50 {p50:.2f} s, p99 {p99:.2f} s",
                "p50 <= 2 s, p99 <= 5 s",
            ]
        )
    if storm := results.get("kill-every-5s"):
        v = storm.verdict
        rows.append(
            [
                f"host killed every 5 s for 2 min, 20 sessions sending ({len(storm.recoveries)} "
                "kills: a host still restarting is skipped)",
                f"{storm.ack_within(ACK_WITHIN_S):.1%} of {v.sent} POSTs 202 within 5 s; "
                f"{v.lost} acked lost; {v.duplicated} duplicated; {v.unended} acked turns "
                "not ended",
                ">= 99%; 0; 0; 0",
            ]
        )
    if postgres := results.get("postgres"):
        rows.append(
            [
                "PostgreSQL back -> first 2xx",
                _seconds(postgres.first_success_s()),
                "<= 3 s",
            ]
        )
    return "\n".join(
        [
            f"Command: `{COMMAND}`, {stamp}, {version}, on {machine_description()}. "
            "The same run as the "
            "chaos suite in docs/reliability.md (its stack, clients and checks).",
            "",
            markdown_table(["target", "measured", "issue 13 asks"], rows),
        ]
    )


async def run_all(names: Sequence[str], load: LoadConfig) -> list[Result]:
    """Start the stack once and run the named scenarios in order on it."""
    chosen = [ALL[name] for name in names]
    results = []
    async with start_stack(StackConfig()) as stack:
        for scenario in chosen:
            print(f"chaos: {scenario.name}: {scenario.fault}", file=sys.stderr, flush=True)
            result = await run_scenario(stack, scenario, load)
            print(f"chaos: {scenario.name}: {_row(result)}", file=sys.stderr, flush=True)
            print(f"chaos: {scenario.name}: {_problems(result)}", file=sys.stderr, flush=True)
            results.append(result)
    return results


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__)
    every = [*SCENARIOS, *TARGETS]
    parser.add_argument(
        "--only", default=",".join(every), help=f"comma-separated of {[*ALL]} (default {every})"
    )
    parser.add_argument("--out", default="docs/reliability.md", help="'-': print only")
    parser.add_argument("--bench-out", default="docs/benchmarks.md", help="'-': print only")
    parser.add_argument("--json", type=Path, help="also write each scenario's figures here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite, publish the tables; exit 1 if an invariant failed."""
    args = _parse(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in ALL]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}")
    version = code_version()  # the code the run imports, before others change it
    results = asyncio.run(run_all(names, LoadConfig()))
    if args.json is not None:
        args.json.write_text(json.dumps([summary(result) for result in results], indent=2))
    publish(chaos_report(results, version), args.out, CHAOS_SECTION, RELIABILITY_TITLE)
    by_name = {result.scenario.name: result for result in results}
    if any(name in by_name for name in ("kill-x20", "kill-every-5s", "postgres")):
        with contextlib.suppress(KeyError):
            publish(
                targets_report(by_name, version), args.bench_out, BENCH_SECTION, DOC_TITLE.strip()
            )
    return 0 if all(result.verdict.ok for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
