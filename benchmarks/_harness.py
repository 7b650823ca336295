"""Shared helpers for the benchmarks: interleaved runs, best-of timing, markdown tables.

Every figure is the best (lowest) per-operation time over several interleaved rounds, so
that the candidates of one table see the same machine state; the ratios are what matter.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

# The event-loop heartbeat is shared with the tests, which assert on it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
