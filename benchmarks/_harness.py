"""Shared helpers for the benchmarks: interleaved runs, best-of timing, markdown tables.

Every figure is the best (lowest) per-operation time over several interleaved rounds, so
that the candidates of one table see the same machine state; the ratios are what matter.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The event-loop heartbeat is shared with the tests, which assert on it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio
from tests._helpers import Heartbeat as Heartbeat
from tests._helpers import heartbeat as heartbeat


@dataclass
class Table:
    title: str
    columns: tuple[str, ...] = ("operation", "candidate", "time", "ratio")
    rows: list[tuple[str, ...]] = field(default_factory=list)

    def add(self, *row: str) -> None:
        self.rows.append(row)

    def render(self) -> str:
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) for i, c in enumerate(self.columns)]
        line = (
            "| " + " | ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True)) + " |"
        )
        sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        body = [
            "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + " |"
            for r in self.rows
        ]
        return "\n".join([f"### {self.title}", "", line, sep, *body, ""])


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


async def best_of(
    candidates: dict[str, Callable[[], Awaitable[None]]], *, ops: int, rounds: int
) -> dict[str, float]:
    """Run each candidate ``rounds`` times, interleaved; return its best seconds per op."""
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(rounds):
        for name, run in candidates.items():
            start = time.perf_counter()
            await run()
            best[name] = min(best[name], (time.perf_counter() - start) / ops)
    return best


def add_ratios(table: Table, operation: str, results: dict[str, float], baseline: str) -> None:
    """Add one row per candidate with its time as a multiple of ``baseline``'s."""
    base = results[baseline]
    for name, seconds in results.items():
        table.add(operation, name, fmt_time(seconds), f"{seconds / base:.2f}x")


def on_every_backend(main: Callable[..., Awaitable[None]], *args: Any) -> str | None:
    """Run ``main(label, *args)`` on asyncio, asyncio+uvloop and trio, one after the
    other; return a note if uvloop is not installed (its run is skipped)."""
    anyio.run(main, "asyncio", *args, backend="asyncio")
    note = None
    if importlib.util.find_spec("uvloop") is None:
        note = "(uvloop is not installed: asyncio+uvloop skipped)"
    else:
        anyio.run(
            main, "asyncio+uvloop", *args, backend="asyncio", backend_options={"use_uvloop": True}
        )
    anyio.run(main, "trio", *args, backend="trio")
    return note


# -- scratch files --------------------------------------------------------------------


def scratch_parent() -> Path:
    """Where the temporary directory goes: ANYMMAP_BENCH_DIR, else beside the checkout."""
    configured = os.environ.get("ANYMMAP_BENCH_DIR")
    return Path(configured) if configured else Path(__file__).resolve().parents[2]


def fs_type(path: Path) -> str:
    """The file system type of the mount holding ``path`` (from /proc/mounts)."""
    best, kind = "", "unknown"
    target = str(path.resolve())
    try:
        with open("/proc/mounts") as f:
            for line in f:
                fields = line.split()
                mount = fields[1]
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) > len(best):
                    best, kind = mount, fields[2]
    except OSError:
        pass
    return kind
