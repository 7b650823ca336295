"""anymmap.SparseMapping: the price of never crashing, and what reserving and committing cost.

Run: python benchmarks/bench_sparse.py
(the scratch file goes to a temporary directory next to the checkout, on the real disk;
set ANYMMAP_BENCH_DIR to put it elsewhere)

1. Copies of 4 KiB and 1 MiB in and out of a SparseMapping of 1 GiB laid out as a hole, a
   1 MiB piece of private memory (``alloc``) at 64 MiB, a hole, a 4 MiB writable window
   of a file (``map_file``) at 128 MiB and a hole, so every copy finds its piece among
   five.  Reads with ``await m.read_at()`` and the synchronous ``m.read_into_nowait()``
   against the stdlib floor ``memoryview(buf)[:] = memoryview(mmap)[a:b]``; writes with
   ``await m.write_at()`` and ``m.update_region_nowait()`` against
   ``memoryview(mmap)[a:b] = data``.  The stdlib map is a ``mmap.mmap(-1, 1 MiB)`` for
   the private piece and a shared ``mmap.mmap(fd, 0)`` of the same file for the window.
   The file (written, fsynced and read through first, so every page is in the page
   cache) and every page of both private maps are touched before timing, so no copy
   faults or reads the shared zero page.  For the private piece a reference row gives
   the ``*_nowait`` copy of an AnonymousMmap (a map of one piece) of the same size.  The
   difference between the anymmap rows and the stdlib row is the price of never
   crashing: every copy checks its range, finds its pieces and, for the file window,
   goes through the kernel (``preadv(RWF_NOWAIT)`` to read, ``mincore`` and
   ``process_vm_writev`` to write); the stdlib copy of a hole or of a truncated file is
   SIGBUS.  Followed by the aim: a 4 KiB ``read_into_nowait`` out of the private piece
   takes at most 3x the stdlib copy.

2. Reserving 1 GiB and 1 TiB: ``await SparseMapping.new(n)`` followed by ``await
   m.aclose()`` (which unmaps in a worker thread), the same with the blocking twin
   ``anymmap.sync.SparseMapping`` (``new``, ``close``), and as a reference the stdlib
   ``mmap.mmap(-1, n, prot=PROT_NONE, flags=MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)``
   and ``close()`` (one ``mmap`` and one ``munmap``; anymmap also aligns the base to
   2 MiB, which costs two more ``munmap`` calls).  Followed by the aim: reserving 1 TiB
   (new and close) takes less than 10 ms.

3. ``alloc`` of 1 GiB at offset 0 of a fresh 1 TiB SparseMapping (``await m.alloc()``
   and the twin's ``m.alloc()``), against the stdlib ``mmap.mmap(-1, 1 GiB)`` (private
   anonymous memory, which touches no page either), with the resident set size
   (``/proc/self/statm``) read just before and just after: committing memory must touch
   no page.  As a control that the RSS figure sees touched pages, the last row then
   writes 1 MiB into the allocated piece (``await m.write_at()``).  Each map is closed
   between runs; the RSS columns are from the run whose RSS grew most.

Sections 1 and 2 report the best per-operation time over interleaved rounds (section 2:
one reservation per operation), section 3 the best of several runs.  Ratios are relative
to the first row (anymmap, 1.00x); below 1 is faster than it.  Sections run on asyncio,
asyncio+uvloop (if uvloop is installed) and trio.
"""

from __future__ import annotations

import mmap
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, __file__.rpartition("/")[0])

from _harness import Table, add_ratios, best_of, fmt_time, on_every_backend, scratch_parent

import anymmap
import anymmap.sync

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
PAGE = mmap.PAGESIZE

#: Section 1: the map, where its pieces lie, and copies per measurement, per size (each
#: batch takes roughly 2-100 ms on a slow core).
SPARSE_LENGTH = 1 * GiB
ALLOC_AT = 64 * MiB
ALLOC_SIZE = 1 * MiB
FILE_AT = 128 * MiB
FILE_SIZE = 4 * MiB
COPY_OPS = {4 * KiB: 10_000, 1 * MiB: 300}
ROUNDS = 5
#: Where copies start in their piece: 4 KiB ones a page in, 1 MiB ones at its start (the
#: private piece is 1 MiB).
OFFSET_IN_PIECE = {4 * KiB: PAGE, 1 * MiB: 0}

#: Section 2 (the aim is for the new + close of 1 TiB).
RESERVE_SIZES = (1 * GiB, 1 * TiB)
RESERVE_ROUNDS = 15
RESERVE_AIM = 10e-3

#: Section 3.
COMMIT_RESERVATION = 1 * TiB
COMMIT_SIZE = 1 * GiB
COMMIT_RUNS = 5
CONTROL_WRITE = 1 * MiB

MAP_NORESERVE: int = getattr(mmap, "MAP_NORESERVE", 0x4000)
PROT_NONE = 0

NOWAIT_READ = "anymmap read_into_nowait"
STDLIB_READ = "stdlib memoryview(buf)[:] = memoryview(mmap)[a:b]"

Candidates = dict[str, Callable[[], Awaitable[None]]]


def size_name(n: int) -> str:
    for unit, name in ((TiB, "TiB"), (GiB, "GiB"), (MiB, "MiB")):
        if n >= unit:
            return f"{n // unit} {name}"
    return f"{n // KiB} KiB"


def touched(n: int, fill: int) -> bytearray:
    """A bytearray of ``n`` bytes, every page of it written."""
    return bytearray([fill]) * n


def rss() -> int:
    """The resident set size of this process in bytes (the second field of statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def write_file(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data``, fsync it, and read it through (page cache)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    assert path.read_bytes() == data


# -- 1. copies ------------------------------------------------------------------------


async def reads(
    table: Table,
    m: anymmap.SparseMapping,
    piece: int,
    std: mmap.mmap,
    what: str,
    size: int,
    reference: anymmap.AnonymousMmap | None,
) -> float:
    """Add the rows of one read; return read_into_nowait's time over the stdlib copy's."""
    ops = COPY_OPS[size]
    at = OFFSET_IN_PIECE[size]
    start = piece + at
    expected = await m.read(start, size)
    assert expected == std[at : at + size]
    buf = touched(size, 0x5A)

    async def ours() -> None:
        for _ in range(ops):
            await m.read_at(start, buf)

    async def ours_nowait() -> None:
        for _ in range(ops):
            m.read_into_nowait(start, buf)

    async def stdlib_view() -> None:
        for _ in range(ops):
            memoryview(buf)[:] = memoryview(std)[at : at + size]

    cands: Candidates = {
        "anymmap await read_at": ours,
        NOWAIT_READ: ours_nowait,
        STDLIB_READ: stdlib_view,
    }
    if reference is not None:
        anon = reference

        async def one_piece() -> None:
            for _ in range(ops):
                anon.read_into_nowait(at, buf)

        cands["reference: AnonymousMmap read_into_nowait"] = one_piece
    results = await best_of(cands, ops=ops, rounds=ROUNDS)
    assert buf == expected
    add_ratios(table, f"read {size_name(size)}, {what}", results, next(iter(cands)))
    return results[NOWAIT_READ] / results[STDLIB_READ]


async def writes(
    table: Table,
    m: anymmap.SparseMapping,
    piece: int,
    std: mmap.mmap,
    what: str,
    size: int,
    reference: anymmap.AnonymousMmap | None,
) -> None:
    ops = COPY_OPS[size]
    at = OFFSET_IN_PIECE[size]
    start = piece + at
    data = bytes(touched(size, 0xC3))

    async def ours() -> None:
        for _ in range(ops):
            await m.write_at(start, data)

    async def ours_nowait() -> None:
        for _ in range(ops):
            m.update_region_nowait(start, data)

    async def stdlib_view() -> None:
        for _ in range(ops):
            memoryview(std)[at : at + size] = data

    cands: Candidates = {
        "anymmap await write_at": ours,
        "anymmap update_region_nowait": ours_nowait,
        "stdlib memoryview(mmap)[a:b] = data": stdlib_view,
    }
    if reference is not None:
        anon = reference

        async def one_piece() -> None:
            for _ in range(ops):
                anon.update_region_nowait(at, data)

        cands["reference: AnonymousMmap update_region_nowait"] = one_piece
    results = await best_of(cands, ops=ops, rounds=ROUNDS)
    assert await m.read(start, size) == data
    assert std[at : at + size] == data
    add_ratios(table, f"write {size_name(size)}, {what}", results, next(iter(cands)))


async def copies(label: str, out: list[str], path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    std_file = mmap.mmap(fd, 0)
    std_anon = mmap.mmap(-1, ALLOC_SIZE)
    std_anon[:] = touched(ALLOC_SIZE, 0xA5)
    table = Table(f"Copies on {label} (per copy, best of {ROUNDS})")
    try:
        async with (
            await anymmap.SparseMapping.new(SPARSE_LENGTH) as m,
            await anymmap.AnonymousMmap.new(ALLOC_SIZE) as anon,
        ):
            await m.alloc(ALLOC_AT, ALLOC_SIZE)
            await m.write_at(ALLOC_AT, std_anon)
            await anon.update_region(0, std_anon)
            await m.map_file(FILE_AT, FILE_SIZE, path, writable=True)
            assert [p.kind for p in m.pieces()] == ["hole", "private", "hole", "file", "hole"]
            prices: dict[int, float] = {}
            for size in COPY_OPS:
                prices[size] = await reads(table, m, ALLOC_AT, std_anon, "alloc piece", size, anon)
                await writes(table, m, ALLOC_AT, std_anon, "alloc piece", size, anon)
            for size in COPY_OPS:
                await reads(table, m, FILE_AT, std_file, "file window", size, None)
                await writes(table, m, FILE_AT, std_file, "file window", size, None)
    finally:
        std_anon.close()
        std_file.close()
        os.close(fd)
    out.append(table.render())
    floor = prices[4 * KiB]
    out.append(
        f"aim: 4 KiB read_into_nowait out of an alloc piece vs stdlib copy: {floor:.2f}x its "
        f"time (aim <= 3x): {'met' if floor <= 3 else 'MISSED'}\n"
    )


# -- 2. reserving -----------------------------------------------------------------------


async def reserving(label: str, out: list[str]) -> None:
    table = Table(
        f"Reserving address space on {label} (per reservation, best of {RESERVE_ROUNDS})"
    )
    aims: list[str] = []
    for size in RESERVE_SIZES:

        async def ours(n: int = size) -> None:
            m = await anymmap.SparseMapping.new(n)
            await m.aclose()

        async def twin(n: int = size) -> None:
            m = anymmap.sync.SparseMapping.new(n)
            m.close()

        async def stdlib(n: int = size) -> None:
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE
            mmap.mmap(-1, n, flags=flags, prot=PROT_NONE).close()

        cands: Candidates = {
            "anymmap await SparseMapping.new + aclose": ours,
            "anymmap.sync SparseMapping.new + close": twin,
            "stdlib mmap(PROT_NONE, MAP_NORESERVE) + close": stdlib,
        }
        results = await best_of(cands, ops=1, rounds=RESERVE_ROUNDS)
        add_ratios(table, f"reserve {size_name(size)}", results, next(iter(cands)))
        if size == TiB:
            for name in list(cands)[:2]:
                seconds = results[name]
                aims.append(
                    f"aim: reserve 1 TiB ({name.removeprefix('anymmap ')}): {fmt_time(seconds)} "
                    f"(aim < {fmt_time(RESERVE_AIM)}): "
                    f"{'met' if seconds < RESERVE_AIM else 'MISSED'}"
                )
    out.append(table.render())
    out.append("\n".join(aims) + "\n")


# -- 3. committing ----------------------------------------------------------------------


async def committing(label: str, out: list[str]) -> None:
    async def ours() -> tuple[float, int, int]:
        async with await anymmap.SparseMapping.new(COMMIT_RESERVATION) as m:
            before = rss()
            start = time.perf_counter()
            await m.alloc(0, COMMIT_SIZE)
            return time.perf_counter() - start, before, rss()

    async def twin() -> tuple[float, int, int]:
        with anymmap.sync.SparseMapping.new(COMMIT_RESERVATION) as m:
            before = rss()
            start = time.perf_counter()
            m.alloc(0, COMMIT_SIZE)
            return time.perf_counter() - start, before, rss()

    async def stdlib() -> tuple[float, int, int]:
        before = rss()
        start = time.perf_counter()
        std = mmap.mmap(-1, COMMIT_SIZE)
        seconds = time.perf_counter() - start
        after = rss()
        std.close()
        return seconds, before, after

    async def control() -> tuple[float, int, int]:
        async with await anymmap.SparseMapping.new(COMMIT_RESERVATION) as m:
            await m.alloc(0, COMMIT_SIZE)
            data = bytes(touched(CONTROL_WRITE, 0x7E))
            before = rss()
            start = time.perf_counter()
            await m.write_at(0, data)
            return time.perf_counter() - start, before, rss()

    runs: dict[str, Callable[[], Awaitable[tuple[float, int, int]]]] = {
        f"anymmap await alloc({size_name(COMMIT_SIZE)})": ours,
        f"anymmap.sync alloc({size_name(COMMIT_SIZE)})": twin,
        f"stdlib mmap.mmap(-1, {size_name(COMMIT_SIZE)})": stdlib,
        f"control: then write_at {size_name(CONTROL_WRITE)} into it": control,
    }
    best = dict.fromkeys(runs, float("inf"))
    worst: dict[str, tuple[int, int]] = dict.fromkeys(runs, (0, -1))
    for _ in range(COMMIT_RUNS):
        for name, run in runs.items():
            seconds, before, after = await run()
            best[name] = min(best[name], seconds)
            if after - before > worst[name][1] - worst[name][0]:
                worst[name] = (before, after)

    table = Table(
        f"Committing {size_name(COMMIT_SIZE)} on {label} (best of {COMMIT_RUNS}; RSS of the "
        f"run that grew most)",
        columns=("operation", "time", "RSS before", "RSS after", "RSS growth"),
    )
    for name in runs:
        before, after = worst[name]
        table.add(
            name,
            fmt_time(best[name]),
            f"{before / MiB:.1f} MiB",
            f"{after / MiB:.1f} MiB",
            f"{(after - before) / KiB:+.0f} KiB",
        )
    out.append(table.render())
    first = next(iter(runs))
    grew = worst[first][1] - worst[first][0]
    out.append(
        f"aim: alloc of {size_name(COMMIT_SIZE)} touches no page: RSS {grew / KiB:+.0f} KiB "
        f"(aim < 1 MiB): {'met' if grew < MiB else 'MISSED'}\n"
    )


async def main(label: str, out: list[str], path: Path) -> None:
    out.append(f"## {label}\n")
    await copies(label, out, path)
    await reserving(label, out)
    await committing(label, out)


def run() -> list[str]:
    out: list[str] = []
    with tempfile.TemporaryDirectory(prefix="anymmap-bench-", dir=scratch_parent()) as scratch:
        path = Path(scratch, "window.bin")
        write_file(path, random.Random(2).randbytes(FILE_SIZE))
        note = on_every_backend(main, out, path)
        if note:
            out.append(note + "\n")
    return out


if __name__ == "__main__":
    print(
        "# SparseMapping benchmark (ratios relative to the first row; below 1 is faster than it)\n"
    )
    for section in run():
        print(section)
