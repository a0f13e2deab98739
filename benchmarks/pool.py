"""Actor pools and browser actors: warm lease latency, browser action latency, PSS per browser.

Run: ``.venv/bin/python -m benchmarks.pool`` (``--quick`` for a small run that only prints).

Figures:

* warm pool leases (``--leases`` samples per path, sequential, from this driver): ``lease`` alone
  (the first lease of a key: one call to the pool manager actor), ``lease`` of a key already held
  (the sticky path, which also refreshes the idle timer), and ``lease`` + ``release``; next to
  them, measured interleaved in the same run, the baseline: a no-op call to an async actor of the
  same kind as the members (one Ray round trip);
* browser actions through a pooled :class:`~actors.browser.BrowserActor` on a local page served
  by this script on 127.0.0.1 (``--actions`` samples each): ``browser_navigate``,
  ``browser_state``, ``browser_click`` (a button that changes the page without navigating), end
  to end from the driver, beside the actor's own ``health`` call as the Ray baseline;
* memory per browser actor: PSS of the actor process plus its Chromium processes, with one and
  with two browser actors running.

Starts its own local Ray and stops it at the end; every pool is shut down (which stops its
Chromium processes) before that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import re
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psutil
import ray

from actors.browser import BrowserActor
from actors.pool import ActorPool, PoolConfig, PoolSpec
from agentcluster.config import BrowserSettings, prepare_offline_environment
from agentcluster.tools import DefaultNetworkPolicy, ToolInvocation, ToolOutcome
from benchmarks._common import (
    DOC_TITLE,
    MIB,
    Memory,
    machine_description,
    markdown_table,
    percentile,
    publish,
    total_memory,
)

SECTION = "## Actor pools and browser actors"
TARGET_LEASE_P50_MS = 2.0
NAMESPACE = "agentcluster-bench"
PAGE = b"""<!doctype html><html><head><title>Bench page</title></head><body>
<h1>Bench page</h1><p id="out">not clicked</p>
<button id="go" onclick="document.getElementById('out').textContent = 'clicked ' + Date.now()">
Click me</button><a href="/page?next">next page</a>
<form><label>Name <input name="name"></label><select name="c"><option>Red</option></select></form>
</body></html>"""


class Member:
    """A cheap pool member: answers health() and a no-op ping()."""

    async def health(self) -> bool:
        return True

    async def ping(self) -> None:
        return None


# -- measuring ----------------------------------------------------------------------------------


@dataclass
class Samples:
    """Latencies in ms, by path."""

    by_path: dict[str, list[float]] = field(default_factory=dict)

    def add(self, path: str, ms: float) -> None:
        self.by_path.setdefault(path, []).append(ms)

    def p(self, path: str, q: float) -> float:
        return percentile(self.by_path[path], q)


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await call()
    return (time.perf_counter() - started) * 1000.0


async def wait_idle(pool: ActorPool, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (await pool.stats()).idle < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"pool {pool.name}: {count} idle members not ready in {timeout_s} s")
        await asyncio.sleep(0.2)


# -- part 1: warm pool leases -------------------------------------------------------------------


async def lease_latencies(rounds: int, per_round: int) -> Samples:
    config = PoolConfig(
        name=f"bench-{uuid.uuid4().hex[:6]}", min_size=2, max_size=2, scale_down_after_s=3600
    )
    pool = ActorPool.start(PoolSpec(config=config, actor_class=Member, namespace=NAMESPACE))
    baseline: Any = ray.remote(Member).options(num_cpus=0, namespace=NAMESPACE).remote()
    samples = Samples()
    try:
        await wait_idle(pool, 2, 60)
        await baseline.health.remote()
        for _ in range(rounds):  # interleaved: the machine's noise hits every path alike
            await lease_round(pool, baseline, per_round, samples)
    finally:
        await pool.shutdown()
        ray.kill(baseline)
    return samples


async def lease_round(pool: ActorPool, baseline: Any, count: int, samples: Samples) -> None:
    for _ in range(count):
        samples.add("baseline", await timed(lambda: baseline.ping.remote()))
    for _ in range(count):
        key = uuid.uuid4().hex
        started = time.perf_counter()
        lease = await pool.lease(key)
        samples.add("lease", (time.perf_counter() - started) * 1000.0)
        samples.add("sticky", await timed(functools.partial(pool.lease, key)))
        await pool.release(lease)
    for _ in range(count):

        async def lease_and_release() -> None:
            await pool.release(await pool.lease())

        samples.add("lease+release", await timed(lease_and_release))


# -- part 2 and 3: browsers ---------------------------------------------------------------------


class PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        # Chromium may drop a connection it no longer needs (a prefetch, the favicon).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextmanager
def page_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), PageHandler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def invocation(tool: str, **arguments: Any) -> ToolInvocation:
    return ToolInvocation(
        tenant_id="bench",
        session_id="bench",
        turn_id="turn",
        agent="bench",
        tool_call_id=uuid.uuid4().hex[:8],
        tool=tool,
        arguments=arguments,
    )


async def act(member: Any, tool: str, **arguments: Any) -> ToolOutcome:
    outcome: ToolOutcome = await member.execute.remote(invocation(tool, **arguments))
    if not outcome.ok:
        raise SystemExit(f"{tool} failed: {outcome.error}")
    return outcome


def browser_memory(actor_pid: int) -> Memory:
    """PSS/USS/RSS of a browser actor's process and all its descendants (Chromium)."""
    process = psutil.Process(actor_pid)
    pids = [actor_pid, *(child.pid for child in process.children(recursive=True))]
    return total_memory(pids)


@dataclass
class BrowserReport:
    samples: Samples
    one: Memory
    two_each: Memory
    processes_per_browser: int


async def browser_figures(actions: int) -> BrowserReport:
    settings = BrowserSettings(action_timeout_s=30.0)
    config = PoolConfig(name=f"bench-browser-{uuid.uuid4().hex[:6]}", min_size=1, max_size=2)
    spec = PoolSpec(
        config=config,
        actor_class=BrowserActor,
        # The page is on loopback: the default network policy refuses it unless allowed.
        kwargs={
            "settings": settings,
            "policy_factory": functools.partial(DefaultNetworkPolicy, allow_cidrs=["127.0.0.1/32"]),
        },
        namespace=NAMESPACE,
    )
    pool = ActorPool.start(spec, lease_timeout_s=120)
    try:
        await wait_idle(pool, 1, 120)
        with page_server() as url:
            first = await pool.lease("first")
            samples = await browser_actions(first.member, url, actions)
            health = await first.member.health.remote()
            one = browser_memory(health["actor_pid"])
            processes = len(psutil.Process(health["actor_pid"]).children(recursive=True))
            second = await pool.lease("second")
            await act(second.member, "browser_navigate", url=f"{url}/page")
            await act(first.member, "browser_navigate", url=f"{url}/page")
            pids = [(await lease.member.health.remote())["actor_pid"] for lease in (first, second)]
            both = browser_memory(pids[0]) + browser_memory(pids[1])
    finally:
        await pool.shutdown()
    return BrowserReport(samples, one, both.per(2), processes)


async def browser_actions(member: Any, url: str, count: int) -> Samples:
    samples = Samples()
    await act(member, "browser_navigate", url=f"{url}/page")  # warm-up
    for n in range(count):
        target = f"{url}/page?{n}"
        samples.add("health", await timed(lambda: member.health.remote()))
        navigate = functools.partial(act, member, "browser_navigate", url=target)
        samples.add("navigate", await timed(navigate))
        started = time.perf_counter()
        state = await act(member, "browser_state")
        samples.add("state (end to end)", (time.perf_counter() - started) * 1000.0)
        samples.add("state", state.latency_ms)  # the same call, timed inside the actor
        page = state.result["page"] if isinstance(state.result, dict) else ""
        button = re.search(r"\[(\d+)\]<button", page)
        if button is None:
            raise SystemExit(f"no button on the bench page: {page}")
        click = functools.partial(act, member, "browser_click", index=int(button.group(1)))
        samples.add("click", await timed(click))
    return samples


# -- report -------------------------------------------------------------------------------------


@dataclass
class Report:
    command: str
    leases: Samples
    browser: BrowserReport | None
    seconds: float
    lease_samples: int


def fmt(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:,.1f}"


def lease_table(samples: Samples) -> str:
    base50, base99 = samples.p("baseline", 50), samples.p("baseline", 99)
    rows = [["no-op call to an async actor (baseline)", fmt(base50), fmt(base99), "1.00x"]]
    names = {
        "lease": "`lease(key)`, first lease of a key",
        "sticky": "`lease(key)` while the key's lease is held (sticky)",
        "lease+release": "`lease()` + `release()`",
    }
    for path, label in names.items():
        p50, p99 = samples.p(path, 50), samples.p(path, 99)
        rows.append([label, fmt(p50), fmt(p99), f"{p50 / base50:.2f}x"])
    return markdown_table(
        ["warm pool, from the driver", "p50 ms", "p99 ms", "p50 / baseline"], rows
    )


def browser_table(report: BrowserReport) -> str:
    samples = report.samples
    labels = {
        "health": "`health` call (Ray round trip, baseline)",
        "navigate": "`browser_navigate` (local page)",
        "state (end to end)": "`browser_state` (page just loaded)",
        "state": "the same `browser_state` calls, timed inside the actor",
        "click": "`browser_click` (button, no navigation)",
    }
    rows = [
        [label, fmt(samples.p(path, 50)), fmt(samples.p(path, 99))]
        for path, label in labels.items()
    ]
    return markdown_table(["browser action", "p50 ms", "p99 ms"], rows)


def memory_lines(report: BrowserReport) -> list[str]:
    one, two = report.one, report.two_each
    return [
        "- `browser_click` includes browser-use 0.11.13's wait of up to 0.5 s for a download "
        "that the click might start (`_execute_click_with_download_detection`), on every click.",
        f"- Memory per browser actor (actor process + its {report.processes_per_browser} "
        f"Chromium processes): one running: {one.pss / MIB:,.0f} MiB PSS "
        f"({one.uss / MIB:,.0f} MiB USS, {one.rss / MIB:,.0f} MiB RSS); two running: "
        f"{two.pss / MIB:,.0f} MiB PSS each ({two.uss / MIB:,.0f} MiB USS).",
    ]


def markdown(report: Report) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    p50 = report.leases.p("lease", 50)
    verdict = "met" if p50 <= TARGET_LEASE_P50_MS else "missed"
    parts = [
        f"Command: `{report.command}`",
        "",
        f"Date: {when}. Machine: {machine_description()}.",
        "",
        lease_table(report.leases),
        "",
    ]
    if report.browser is not None:
        parts += [browser_table(report.browser), "", *memory_lines(report.browser), ""]
    parts += [
        "Targets:",
        "",
        f"- Warm pool lease p50 <= {TARGET_LEASE_P50_MS:g} ms: **{verdict}** ({fmt(p50)} ms).",
        "",
        f"Method: one local Ray (`num_cpus=2`); {report.lease_samples} sequential samples per "
        "lease path from the driver, in rounds interleaved with the baseline; a pool of 2 warm "
        "members (a class with async `health` and `ping`); `lease` = one call to the pool "
        "manager actor, which returns the lease with the member's actor handle. Browser "
        "actions: one pooled browser actor on a page served on 127.0.0.1 by the benchmark, "
        "each action timed from the driver (`ray` call + the action) except the row timed "
        "inside the actor. Memory: `memory_full_info` of the actor process and its descendants. "
        f"Run time {report.seconds:.0f} s.",
    ]
    return "\n".join(parts)


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pool", description=__doc__)
    parser.add_argument("--leases", type=int, default=1000, help="samples per lease path")
    parser.add_argument("--actions", type=int, default=30, help="samples per browser action")
    parser.add_argument("--no-browser", action="store_true", help="skip the browser figures")
    parser.add_argument(
        "--out", default=None, help="file to update (default docs/benchmarks.md; '-': none)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes; prints only")
    args = parser.parse_args(argv)
    if args.quick:
        args.leases, args.actions = 100, 5
    if args.out is None:
        args.out = "-" if args.quick else "docs/benchmarks.md"
    if args.leases < 10 or args.actions < 2:
        parser.error("--leases must be >= 10 and --actions >= 2")
    return args


async def run(args: argparse.Namespace, command: str) -> Report:
    started = time.monotonic()
    rounds = 5
    leases = await lease_latencies(rounds, max(args.leases // rounds, 1))
    print("leases measured", file=sys.stderr)
    browser = None if args.no_browser else await browser_figures(args.actions)
    samples = len(leases.by_path["lease"])
    return Report(command, leases, browser, time.monotonic() - started, samples)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = " ".join([".venv/bin/python -m benchmarks.pool", *argv])
    prepare_offline_environment()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = asyncio.run(run(args, command))
    finally:
        ray.shutdown()
    publish(markdown(report), args.out, SECTION, DOC_TITLE)


if __name__ == "__main__":
    main()
