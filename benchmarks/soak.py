"""The soak (issue 13): many concurrent SSE streams held open while turns run; no stream may
fail, and the gateway replicas' and session hosts' memory must stay flat (within 10%).

    python -m benchmarks.soak --minutes 10            # 1,000 streams for 10 minutes
    python -m benchmarks.soak --minutes 2 --out -     # a shorter run, print only

It starts its own stack (benchmarks/_chaos_stack.py: private PostgreSQL, Redis and OPA, a local
Ray, the gateway on a free port, the fake LLM). 1,000 streams do not fit the default limits, by
design: a tenant holds at most ``SA01_LIMITS_MAX_OPEN_STREAMS`` (16) and a replica serves at most
``SA01_LIMITS_REPLICA_MAX_OPEN_STREAMS`` (48, below Serve's ``max_ongoing_requests`` of 64). So
the soak spreads the streams over many tenants (``--tenants``, 10 streams each, 5 per session) and
deploys four replicas with ``max_ongoing_requests`` 320 and a replica cap of 300 (four replicas
hold 1,200; an SSE stream is an idle async generator between events, so a replica holds hundreds;
the cap stays below max_ongoing_requests so short requests still find a slot).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import psutil

from benchmarks._chaos_load import Ledger, LoadConfig, create_sessions, run_clients
from benchmarks._chaos_stack import AGENT, ChaosStack, StackConfig, start_stack
from benchmarks._common import MIB, Memory, machine_description, markdown_table, publish

__all__ = ["SoakConfig", "main", "run_soak"]

SECTION = "## Soak"
TITLE = "# Reliability"
REPLICAS = 4
MAX_ONGOING = 320
REPLICA_STREAMS = 300
STREAMS_PER_TENANT = 10
STREAMS_PER_SESSION = 5
FLAT = 0.10


@dataclass(frozen=True)
class SoakConfig:
    """Streams, how long they are held, the turns that run meanwhile."""

    streams: int = 1000
    minutes: float = 10.0
    senders: int = 20
    send_interval_s: float = 3.0
    sample_every_s: float = 30.0
    warmup_s: float = 60.0


@dataclass
class StreamStats:
    """What all the streams saw."""

    opened: int = 0
    open_now: int = 0
    events: int = 0
    errors: list[str] = field(default_factory=list)

    def error(self, text: str) -> None:
        """Count an error; the first ones are printed as they happen (a run that dies before
        its report still tells what went wrong)."""
        self.errors.append(text)
        if len(self.errors) <= 20:
            print(f"soak: stream error: {text}", file=sys.stderr, flush=True)


@dataclass
class Sample:
    at_s: float
    gateway: Memory
    hosts: Memory
    open_streams: int


# -- streams ------------------------------------------------------------------------------------


async def _hold_stream(
    client: httpx.AsyncClient, key: str, session_id: str, stats: StreamStats, stop: asyncio.Event
) -> None:
    """One SSE stream of a session's events, held until ``stop``; any early end is an error."""
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    counted, opened_at, last_event = False, time.monotonic(), "none"
    try:
        async with client.stream(
            "GET", f"/v1/sessions/{session_id}/events", headers=headers
        ) as response:
            if response.status_code != 200:
                body = (await response.aread())[:200]
                stats.error(f"open: {response.status_code} {body!r}")
                return
            stats.opened += 1
            stats.open_now += 1
            counted = True
            lines = response.aiter_lines()
            while not stop.is_set():
                line = await _next_line(lines, stop)
                if line is None:
                    if not stop.is_set():
                        held = time.monotonic() - opened_at
                        stats.error(
                            f"stream ended by the server after {held:.0f} s "
                            f"(last event: {last_event})"
                        )
                    return
                if line.startswith("event:"):
                    stats.events += 1
                    last_event = line.removeprefix("event:").strip()
    except httpx.HTTPError as exc:
        if not stop.is_set():
            stats.error(f"{type(exc).__name__}: {exc}")
    finally:
        if counted:
            stats.open_now -= 1


async def _next_line(lines: object, stop: asyncio.Event) -> str | None:
    """The next line, or None when the stream ended or ``stop`` was set first."""
    iterator = lines.__anext__()  # type: ignore[attr-defined]
    reader = asyncio.ensure_future(iterator)
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if reader not in done:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, httpx.HTTPError):
            await reader
        return None
    try:
        return str(reader.result())
    except StopAsyncIteration:
        return None


# -- memory -------------------------------------------------------------------------------------


def _our_processes() -> list[psutil.Process]:
    """The worker processes of this run's Ray (children of its raylet)."""
    import ray

    # The raylet of the node this driver started (ray.init(address="local")): no public API
    # names its PID, and the state API needs the dashboard, which the stack leaves off.
    node = ray._private.worker._global_node
    if node is None:
        raise RuntimeError("Ray is not initialised in this process")
    raylet = node.all_processes["raylet"][0].process.pid
    return psutil.Process(raylet).children(recursive=True)


def _memory_by_role() -> tuple[Memory, Memory]:
    gateway, hosts = Memory(0, 0, 0), Memory(0, 0, 0)
    for process in _our_processes():
        with contextlib.suppress(psutil.Error):
            title = " ".join(process.cmdline())
            info = process.memory_full_info()
            memory = Memory(info.rss, info.uss, info.pss)
            if "ServeReplica" in title and "Gateway" in title:
                gateway += memory
            elif "SessionHost" in title:
                hosts += memory
    return gateway, hosts


# -- the run ------------------------------------------------------------------------------------


async def _tenants(stack: ChaosStack, count: int) -> list[tuple[str, list[str]]]:
    """``count`` tenants, each with its key and its sessions."""
    tenants = []
    sessions_each = STREAMS_PER_TENANT // STREAMS_PER_SESSION
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
        for index in range(count):
            _tenant_id, key = await stack.new_tenant(f"soak{index}")
            client.headers["Authorization"] = f"Bearer {key}"
            tenants.append((key, await create_sessions(client, AGENT, sessions_each)))
    return tenants


async def _open_streams(
    client: httpx.AsyncClient,
    tenants: Sequence[tuple[str, list[str]]],
    stats: StreamStats,
    stop: asyncio.Event,
    total: int,
) -> list[asyncio.Task[None]]:
    """Open ``total`` streams, 50 at a time (so the opening is not itself a burst test)."""
    targets = [
        (key, session_id)
        for key, sessions in tenants
        for session_id in sessions
        for _ in range(STREAMS_PER_SESSION)
    ][:total]
    tasks = []
    for start in range(0, len(targets), 50):
        for key, session_id in targets[start : start + 50]:
            tasks.append(asyncio.create_task(_hold_stream(client, key, session_id, stats, stop)))
        await asyncio.sleep(1.0)
    return tasks


async def _sample(samples: list[Sample], stats: StreamStats, started: float) -> None:
    gateway, hosts = await asyncio.to_thread(_memory_by_role)
    samples.append(Sample(time.monotonic() - started, gateway, hosts, stats.open_now))


Finish = Callable[[StreamStats, list[Sample], Ledger], None]


async def run_soak(
    config: SoakConfig, finish: Finish | None = None
) -> tuple[StreamStats, list[Sample], Ledger]:
    """Hold the streams for ``minutes`` with turns running; sample memory all along.

    ``finish`` gets the results before the stack stops (Ray's teardown has ended the
    process before a report written after it)."""
    stack_config = StackConfig(
        replicas=REPLICAS,
        kafka=False,
        gateway_options={"max_ongoing_requests": MAX_ONGOING},
        limits={"replica_max_open_streams": REPLICA_STREAMS},
    )
    stats, ledger = StreamStats(), Ledger()
    samples: list[Sample] = []
    async with start_stack(stack_config) as stack:
        tenants = await _tenants(stack, -(-config.streams // STREAMS_PER_TENANT))
        limits = httpx.Limits(max_connections=config.streams + 64, max_keepalive_connections=64)
        timeout = httpx.Timeout(30, read=None)  # a held stream reads for minutes
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=stack.url, limits=limits, timeout=timeout) as client:
            streams = await _open_streams(client, tenants, stats, stop, config.streams)
            senders = asyncio.create_task(_send_turns(stack.url, tenants, config, ledger, stop))
            await asyncio.sleep(config.warmup_s)
            started = time.monotonic()
            while time.monotonic() - started < config.minutes * 60:
                await _sample(samples, stats, started)
                print(f"soak: {_progress(samples[-1], stats)}", file=sys.stderr, flush=True)
                await asyncio.sleep(config.sample_every_s)
            await _sample(samples, stats, started)
            stop.set()
            await asyncio.gather(senders, *streams)
        if finish is not None:
            finish(stats, samples, ledger)
    return stats, samples, ledger


async def _send_turns(
    url: str,
    tenants: Sequence[tuple[str, list[str]]],
    config: SoakConfig,
    ledger: Ledger,
    stop: asyncio.Event,
) -> None:
    """``senders`` sessions of different tenants get a message every ``send_interval_s``."""
    load = LoadConfig(interval_s=config.send_interval_s)
    chosen = tenants[: config.senders]

    async def one(key: str, session_id: str) -> None:
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            await run_clients(client, [session_id], ledger, stop, load)

    await asyncio.gather(*(one(key, sessions[0]) for key, sessions in chosen))


def _progress(sample: Sample, stats: StreamStats) -> str:
    return (
        f"{sample.at_s:.0f} s: {sample.open_streams} streams open, {stats.events} events, "
        f"{len(stats.errors)} errors, gateway PSS {sample.gateway.pss / MIB:.0f} MiB, "
        f"hosts PSS {sample.hosts.pss / MIB:.0f} MiB"
    )


def _growth(first: int, last: int) -> str:
    return f"{(last - first) / first:+.1%}" if first else "-"


def report(
    config: SoakConfig, stats: StreamStats, samples: Sequence[Sample], ledger: Ledger
) -> str:
    """The soak section: settings, streams, turns, memory at the start and end of the hold."""
    first, last = samples[0], samples[-1]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    acked = len(ledger.acked())
    gateway_flat = abs(last.gateway.pss - first.gateway.pss) <= FLAT * first.gateway.pss
    hosts_flat = abs(last.hosts.pss - first.hosts.pss) <= FLAT * first.hosts.pss
    rows = [
        ["streams opened / asked", f"{stats.opened} / {config.streams}"],
        [
            "streams open at the first / last sample",
            f"{first.open_streams} / {last.open_streams}",
        ],
        ["stream errors (refused, ended early, transport)", str(len(stats.errors))],
        ["events received over all streams", str(stats.events)],
        ["messages sent / acked 202", f"{len(ledger.sends)} / {acked}"],
        ["5xx answers to the senders", str(ledger.count(500, 600))],
        [
            "gateway replicas PSS (RSS), start -> end of hold",
            f"{first.gateway.pss / MIB:.0f} ({first.gateway.rss / MIB:.0f}) -> "
            f"{last.gateway.pss / MIB:.0f} ({last.gateway.rss / MIB:.0f}) MiB, "
            f"{_growth(first.gateway.pss, last.gateway.pss)}",
        ],
        [
            "session hosts PSS (RSS), start -> end of hold",
            f"{first.hosts.pss / MIB:.0f} ({first.hosts.rss / MIB:.0f}) -> "
            f"{last.hosts.pss / MIB:.0f} ({last.hosts.rss / MIB:.0f}) MiB, "
            f"{_growth(first.hosts.pss, last.hosts.pss)}",
        ],
        ["memory flat within 10%", f"gateway {gateway_flat}, hosts {hosts_flat}"],
    ]
    errors = sorted(set(stats.errors))[:5]
    return "\n".join(
        [
            f"Command: `python -m benchmarks.soak --minutes {config.minutes:g}` (`make soak` runs "
            f"10 minutes), {stamp}, on {machine_description()}.",
            "",
            f"{config.streams} SSE streams (`GET /v1/sessions/{{id}}/events`) over "
            f"{-(-config.streams // STREAMS_PER_TENANT)} tenants ({STREAMS_PER_TENANT} each, "
            f"{STREAMS_PER_SESSION} per session) held for {config.minutes:g} minutes after a "
            f"{config.warmup_s:.0f} s warm-up, while {config.senders} sessions get a message "
            f"every {config.send_interval_s:g} s (their turns' events reach 5 streams each). "
            f"Gateway: {REPLICAS} replicas, `max_ongoing_requests` {MAX_ONGOING}, "
            f"`SA01_LIMITS_REPLICA_MAX_OPEN_STREAMS` {REPLICA_STREAMS} (the defaults, 64 and "
            f"48, hold 48 streams a replica: 1,000 streams would need 21 replicas; an SSE "
            "stream costs an idle async generator, so a replica holds hundreds, and the cap "
            "stays below max_ongoing_requests so short requests always find a slot); the "
            f"per-tenant limit stays at its default (16 >= {STREAMS_PER_TENANT}). Memory is the "
            "sum over the gateway replica processes and over the session host processes, "
            f"sampled every {config.sample_every_s:.0f} s.",
            "",
            markdown_table(["measure", "value"], rows),
            *(["", f"First errors: {'; '.join(errors)}"] if errors else []),
        ]
    )


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--warmup-s", type=float, default=60.0, help="before the first sample")
    parser.add_argument("--out", default="docs/reliability.md", help="'-': print only")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak and publish its section; exit 1 on a stream error or memory growth."""
    args = _parse(argv)
    config = SoakConfig(
        streams=args.streams, minutes=args.minutes, senders=args.senders, warmup_s=args.warmup_s
    )

    def finish(stats: StreamStats, samples: list[Sample], ledger: Ledger) -> None:
        publish(report(config, stats, samples, ledger), args.out, SECTION, TITLE)

    stats, samples, _ledger = asyncio.run(run_soak(config, finish))
    first, last = samples[0], samples[-1]
    flat = all(
        abs(b - a) <= FLAT * a
        for a, b in ((first.gateway.pss, last.gateway.pss), (first.hosts.pss, last.hosts.pss))
    )
    return 0 if flat and not stats.errors and stats.opened == config.streams else 1


if __name__ == "__main__":
    sys.exit(main())
