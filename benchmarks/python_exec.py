"""python_exec: what the bubblewrap sandbox costs per call.

Run: ``.venv/bin/python -m benchmarks.python_exec`` (``--quick`` for a small run that only
prints; ``--baseline-only`` on an older checkout to time its sandbox the same way).

Figures, interleaved in rounds in one run (``--samples`` each, sequential, in this process):

* baseline: the same trivial snippet (``print(6 * 7)``) in a bare ``python3 -I -S -c``
  subprocess: what any out-of-process execution pays (fork, exec, interpreter start);
* ``PythonSandbox.run`` of that snippet in an empty session workspace: the sandbox as
  python_exec uses it (bwrap namespaces, setpriv, the per-run cgroup where writable, the runner,
  the workspace tar in and out and its check);
* the same with a workspace of 100 files of 10 KiB (1 MiB) that the code reads and leaves as is.

With ``--before DIR`` (a checkout of an earlier commit, e.g. ``git worktree add /tmp/before
<commit>``) it also times that checkout's ``PythonSandbox.run`` on the same snippet, in a child
process importing from DIR, right after the rounds above: the before/after figure.

Target (issue 12): trivial snippet p50 under 150 ms on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from agentcluster.tools._sandbox import PythonSandbox, SandboxLimits
from benchmarks._common import DOC_TITLE, machine_description, markdown_table, percentile, publish

SECTION = "## python_exec sandbox"
TARGET_P50_MS = 150.0
SNIPPET = "print(6 * 7)"
READER = "import os\nprint(sum(len(open(f).read()) for f in os.listdir('.')))"


async def _bare(python: str) -> None:
    process = await asyncio.create_subprocess_exec(
        python,
        "-I",
        "-S",
        "-c",
        SNIPPET,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert out == b"42\n", out


def _sandboxed(sandbox: PythonSandbox, code: str, workspace: Path) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        result = await sandbox.run(code, workspace)
        assert result.exit_code == 0 and result.stopped == "ok", result

    return call


async def _measure(samples: int) -> tuple[dict[str, list[float]], str]:
    sandbox = PythonSandbox(SandboxLimits(cpu_s=10, memory_mb=512, wall_s=30))
    status = await sandbox.status()
    if not status.ready:
        raise SystemExit(f"python_exec sandbox unavailable here: {status.detail}")
    root = Path(tempfile.mkdtemp(prefix="bench-python-exec-"))
    empty, filled = root / "empty", root / "filled"
    empty.mkdir()
    filled.mkdir()
    for index in range(100):
        (filled / f"f{index:03}.txt").write_text("x" * 10_240)
    paths: dict[str, Callable[[], Awaitable[None]]] = {
        "bare `python3 -I -S -c` subprocess (baseline)": lambda: _bare("/usr/bin/python3"),
        "python_exec sandbox, empty workspace": _sandboxed(sandbox, SNIPPET, empty),
        "python_exec sandbox, 100 files / 1 MiB workspace": _sandboxed(sandbox, READER, filled),
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for call in paths.values():
            await call()  # warm up each path once
        for _ in range(samples):
            for name, call in paths.items():
                started = time.perf_counter()
                await call()
                times[name].append((time.perf_counter() - started) * 1000)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return times, status.summary()


_BEFORE_SCRIPT = """
import asyncio, json, sys, tempfile, time
from pathlib import Path
from agentcluster.tools._sandbox import PythonSandbox, SandboxLimits

async def main(samples):
    sandbox = PythonSandbox(SandboxLimits(cpu_s=10, memory_mb=512, wall_s=30))
    workspace = Path(tempfile.mkdtemp())
    await sandbox.run("print(6 * 7)", workspace)
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        result = await sandbox.run("print(6 * 7)", workspace)
        times.append((time.perf_counter() - started) * 1000)
        assert result.exit_code == 0, result
    print(json.dumps(times))

asyncio.run(main(int(sys.argv[1])))
"""


def _measure_before(checkout: Path, samples: int) -> list[float]:
    """The sandbox of another checkout, timed in a child process that imports from it."""
    environment = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run(
        [sys.executable, "-c", _BEFORE_SCRIPT, str(samples)],
        cwd=checkout,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    times: list[float] = json.loads(done.stdout.strip().splitlines()[-1])
    return times


def _commit(checkout: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or str(checkout)


def _report(
    times: dict[str, list[float]], isolation: str, samples: int, seconds: float, command: str
) -> str:
    baseline = percentile(next(iter(times.values())), 50)
    rows = [
        [
            name,
            f"{percentile(values, 50):.1f}",
            f"{percentile(values, 99):.1f}",
            f"{percentile(values, 50) / baseline:.2f}x",
        ]
        for name, values in times.items()
    ]
    sandbox_p50 = percentile(times["python_exec sandbox, empty workspace"], 50)
    verdict = "met" if sandbox_p50 < TARGET_P50_MS else "NOT met"
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"Command: `{command}`",
            "",
            f"Date: {date}. Machine: {machine_description()}. Sandbox: {isolation}.",
            "",
            markdown_table(["path", "p50 ms", "p99 ms", "p50 / baseline"], rows),
            "",
            "Targets:",
            "",
            f"- Trivial snippet p50 < {TARGET_P50_MS:.0f} ms: **{verdict}** "
            f"({sandbox_p50:.1f} ms).",
            "",
            f"Method: {samples} sequential samples per path from one process, in rounds "
            "interleaved with the baseline; each sandboxed run is a fresh bwrap (namespaces, "
            "tmpfs mounts, the runner) with the workspace packed in, and the result packed out, "
            f"checked and swapped in. Run time {seconds:.0f} s.",
        ]
    )


def main() -> None:
    """Measure and publish (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="20 samples, print only")
    parser.add_argument("--out", default="docs/benchmarks.md", help="'-' to only print")
    parser.add_argument("--before", type=Path, help="an earlier checkout to time as well")
    args = parser.parse_args()
    samples = 20 if args.quick else args.samples
    started = time.monotonic()
    times, isolation = asyncio.run(_measure(samples))
    if args.before is not None:
        label = (
            f"before: the sandbox of commit {_commit(args.before)} (separate process, after the "
            "rounds)"
        )
        times[label] = _measure_before(args.before.resolve(), samples)
    command = ".venv/bin/python -m benchmarks.python_exec"
    if args.before is not None:
        command += f" --before {args.before}"
    text = _report(times, isolation, samples, time.monotonic() - started, command)
    publish(text, "-" if args.quick else args.out, SECTION, DOC_TITLE)


if __name__ == "__main__":
    main()
