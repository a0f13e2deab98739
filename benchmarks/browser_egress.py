"""Browser navigation with and without the egress proxy, and the cost of a fresh browser per lease.

Run: ``.venv/bin/python -m benchmarks.browser_egress`` (``--quick`` for a small run that only
prints).

Two :class:`~actors.browser.BrowserActor` objects run in this process (no Ray: the figure is the
browser path alone), configured alike (same user, same sandbox, same policy allowing 127.0.0.1)
except that the baseline has ``unsafe_no_egress_proxy`` set, so its Chromium connects directly,
as before the proxy existed. Both alternate ``browser_navigate`` between two local pages served
by this script on 127.0.0.1, each page loading a stylesheet, a script and an image (four requests
per navigation, each one decided by the proxy), in interleaved rounds so that machine noise hits
both alike. The ratio of the p50s is the proxy's cost (target < 1.2x).

Also timed: ``reset`` (what the pool runs between two leases: a new Chromium on a new, empty
profile) and the first navigation after it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from actors.browser import BrowserActor
from agentcluster.config import BrowserSettings, prepare_offline_environment
from agentcluster.tools import DefaultNetworkPolicy, ToolInvocation
from benchmarks._common import DOC_TITLE, machine_description, markdown_table, percentile, publish

SECTION = "## Browser egress proxy"
TARGET_RATIO = 1.2

PAGE = """<!doctype html><title>{name}</title><link rel="stylesheet" href="/style.css?{name}">
<script src="/script.js?{name}"></script><h1>{name}</h1><img src="/pixel.svg?{name}" alt="x">
<p>A local page with three subresources.</p>"""
ASSETS = {
    "/style.css": ("text/css", "h1 { color: #335; }"),
    "/script.js": ("text/javascript", "document.documentElement.dataset.ok = '1';"),
    "/pixel.svg": ("image/svg+xml", '<svg xmlns="http://www.w3.org/2000/svg" width="1"/>'),
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        kind, body = ASSETS.get(path, ("text/html", PAGE.format(name=path.strip("/") or "a")))
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")  # every navigation fetches everything
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextmanager
def page_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def invocation(url: str) -> ToolInvocation:
    return ToolInvocation(
        tenant_id="bench",
        session_id="bench",
        turn_id="turn",
        agent="bench",
        tool_call_id=uuid.uuid4().hex[:8],
        tool="browser_navigate",
        arguments={"url": url},
    )


async def navigate(actor: BrowserActor, url: str) -> float:
    started = time.perf_counter()
    outcome = await actor.execute(invocation(url))
    elapsed = (time.perf_counter() - started) * 1000.0
    if not outcome.ok:
        raise SystemExit(f"browser_navigate {url} failed: {outcome.error}")
    return elapsed


@dataclass
class Report:
    command: str
    navigations: dict[str, list[float]] = field(default_factory=dict)
    resets: list[float] = field(default_factory=list)
    after_reset: list[float] = field(default_factory=list)
    proxied_requests: int = 0
    seconds: float = 0.0


def new_actor(unsafe_no_egress_proxy: bool) -> BrowserActor:
    settings = BrowserSettings(action_timeout_s=30.0, unsafe_no_egress_proxy=unsafe_no_egress_proxy)
    policy = functools.partial(DefaultNetworkPolicy, allow_cidrs=["127.0.0.1/32"])
    return BrowserActor(settings, policy_factory=policy)


async def measure(args: argparse.Namespace, report: Report, site: str) -> None:
    actors = {"direct (baseline)": new_actor(True), "through the proxy": new_actor(False)}
    try:
        for actor in actors.values():
            await actor.health()
            for page in ("warm-a", "warm-b"):
                await navigate(actor, f"{site}/{page}")
        for name in actors:
            report.navigations[name] = []
        for round_index in range(args.rounds):
            for name, actor in actors.items():
                for index in range(args.per_round):
                    page = f"{site}/p{round_index}-{index}"
                    report.navigations[name].append(await navigate(actor, page))
        proxied = actors["through the proxy"]
        for index in range(args.resets):
            started = time.perf_counter()
            await proxied.reset()
            report.resets.append((time.perf_counter() - started) * 1000.0)
            report.after_reset.append(await navigate(proxied, f"{site}/fresh-{index}"))
        report.proxied_requests = int((await proxied.health())["egress"]["allowed"])
    finally:
        for actor in actors.values():
            await actor.stop()


def fmt(value: float) -> str:
    return f"{value:.1f}"


def markdown(report: Report) -> str:
    base = percentile(report.navigations["direct (baseline)"], 50)
    rows = []
    for name, samples in report.navigations.items():
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        rows.append([f"`browser_navigate`, {name}", fmt(p50), fmt(p99), f"{p50 / base:.2f}x"])
    rows.append(["`reset` (new Chromium, new profile)", *_p50_p99(report.resets), ""])
    rows.append(["first `browser_navigate` after `reset`", *_p50_p99(report.after_reset), ""])
    ratio = percentile(report.navigations["through the proxy"], 50) / base
    verdict = "met" if ratio < TARGET_RATIO else "NOT met"
    count = len(report.navigations["direct (baseline)"])
    return "\n".join(
        [
            f"Command: `{report.command}`",
            "",
            f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Machine: {machine_description()}.",
            "",
            markdown_table(
                ["browser action (in process)", "p50 ms", "p99 ms", "p50 / baseline"], rows
            ),
            "",
            f"Target: navigation through the proxy < {TARGET_RATIO}x direct: **{verdict}** "
            f"({ratio:.2f}x).",
            "",
            f"Method: two browser actors in one process (no Ray), alike (Chromium as the same "
            f"unprivileged uid with its sandbox, same policy) except that the baseline sets "
            f"`SA01_BROWSER_UNSAFE_NO_EGRESS_PROXY` (Chromium connects directly, as before the "
            f"proxy); {count} navigations each, in interleaved rounds, each to a new URL of a "
            f"local page with a stylesheet, a script and an image (`Cache-Control: no-store`: "
            f"four requests per navigation, {report.proxied_requests} decided by the proxy in "
            f"all). `reset` is what the pool runs between two leases. Run time "
            f"{report.seconds:.0f} s.",
            "",
            "The old path also ran Chromium as root with `--no-sandbox`; both rows here run it "
            "sandboxed as uid 65534, so the ratio isolates the proxy. The old `reset` cleared "
            "cookies and the storage of the origins it had seen in place (tens of ms) but missed "
            "iframe origins and other state; the new one pays a Chromium start per lease, while "
            "the pool member is `resetting`.",
        ]
    )


def _p50_p99(samples: list[float]) -> list[str]:
    return [fmt(percentile(samples, 50)), fmt(percentile(samples, 99))]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.browser_egress", description=__doc__
    )
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    parser.add_argument("--per-round", type=int, default=10, help="navigations per actor a round")
    parser.add_argument("--resets", type=int, default=5, help="fresh-browser resets timed")
    parser.add_argument(
        "--out", default=None, help="file to update (default docs/benchmarks.md; '-': none)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes; prints only")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.per_round, args.resets = 2, 5, 2
    if args.out is None:
        args.out = "-" if args.quick else "docs/benchmarks.md"
    if args.rounds < 1 or args.per_round < 2 or args.resets < 1:
        parser.error("--rounds >= 1, --per-round >= 2 and --resets >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    report = Report(" ".join([".venv/bin/python -m benchmarks.browser_egress", *argv]))
    prepare_offline_environment()
    started = time.monotonic()
    with page_server() as site:
        asyncio.run(measure(args, report, site))
    report.seconds = time.monotonic() - started
    publish(markdown(report), args.out, SECTION, DOC_TITLE)


if __name__ == "__main__":
    main()
