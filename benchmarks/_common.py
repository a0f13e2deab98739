"""Small helpers shared by the benchmark scripts: percentiles, process memory, the results file."""

from __future__ import annotations

import platform
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = [
    "KIB",
    "MIB",
    "Memory",
    "machine_description",
    "markdown_table",
    "memory_of",
    "percentile",
    "replace_section",
    "total_memory",
]

KIB = 1024
MIB = 1024 * 1024


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
