"""Copies in and out of anymmap.AnonymousMmap, and event-loop lag while populating.

Run: python benchmarks/bench_copy.py

1. Copies of 4 KiB, 1 MiB and 64 MiB out of an AnonymousMmap of that size with
   ``await m.read_into()`` and the synchronous ``m.read_into_nowait()``, against the stdlib
   floor (a slice of ``memoryview(stdlib_mmap)`` on a ``mmap.mmap(-1, size)``) and
   ``numpy.copyto()`` between two arrays (the memory-bandwidth limit); then the write
   direction (``await m.update_region()`` against stdlib slice assignment) for 4 KiB and
   64 MiB.  The stdlib read is measured twice: ``buf[:] = memoryview(mmap)[a:b]`` with a
   bytearray ``buf``, which CPython first copies into a temporary bytearray (so it is no
   floor for large copies), and ``memoryview(buf)[:] = ...``, a single memcpy.  Every page
   is written before timing, so no copy faults or reads the shared zero page.  Times are
   the best per-copy time over interleaved rounds; ratios are relative to the anymmap row
   (1.00x), below 1 is faster than us.

2. The worst lateness of a task sleeping 1 ms in a loop (the event loop's lag) while
   256 MiB of anonymous memory is mapped and populated for writing: ``await
   m.populate(write=True)`` on a fresh AnonymousMmap, against a stdlib
   ``mmap.mmap(..., flags=MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE)`` made in a worker
   thread and, where the stdlib has ``mmap.MADV_POPULATE_WRITE``, a stdlib
   ``madvise(MADV_POPULATE_WRITE)`` in a worker thread.  Each figure is the median of
   3 runs; every map is unmapped between runs.

Sections run on asyncio, asyncio+uvloop (if uvloop is installed) and trio.
"""

from __future__ import annotations

import mmap
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import anyio.to_thread
import numpy as np

sys.path.insert(0, __file__.rpartition("/")[0])

from _harness import Table, add_ratios, best_of, fmt_time, heartbeat, on_every_backend

import anymmap

KiB = 1 << 10
MiB = 1 << 20
ROUNDS = 5
#: Copies per measurement, per size: each batch takes roughly 0.05-0.3 s on a slow core.
READ_OPS = {4 * KiB: 40_000, 1 * MiB: 3_000, 64 * MiB: 12}
WRITE_OPS = {4 * KiB: 40_000, 64 * MiB: 12}
OFFSET = 0

POPULATE_SIZE = 256 * MiB
LAG_RUNS = 3
#: The stdlib has it from Python 3.13 (where the kernel does); None before.
MADV_POPULATE_WRITE: int | None = getattr(mmap, "MADV_POPULATE_WRITE", None)

Candidates = dict[str, Callable[[], Awaitable[None]]]
Closer = Callable[[], Awaitable[None]]


def size_name(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB else f"{n // KiB} KiB"


def touched(n: int, fill: int) -> bytearray:
    """A bytearray of ``n`` bytes, every page of it written."""
    return bytearray([fill]) * n


def touched_array(n: int, fill: int) -> np.ndarray[tuple[int], np.dtype[np.uint8]]:
    array: np.ndarray[tuple[int], np.dtype[np.uint8]] = np.empty(n, dtype=np.uint8)
    array.fill(fill)
    return array


# -- 1. copies ------------------------------------------------------------------------


async def reads(table: Table, size: int, ops: int) -> None:
    pattern = bytes(touched(size, 0xA5))
    buf = touched(size, 0x5A)
    src = touched_array(size, 0xA5)
    dst = touched_array(size, 0x5A)
    std = mmap.mmap(-1, size)
    std[:] = pattern
    end = OFFSET + size
    try:
        async with await anymmap.AnonymousMmap.new(size) as m:
            await m.update_region(0, pattern)

            async def ours() -> None:
                for _ in range(ops):
                    await m.read_into(OFFSET, buf)

            async def ours_nowait() -> None:
                for _ in range(ops):
                    m.read_into_nowait(OFFSET, buf)

            async def stdlib() -> None:
                for _ in range(ops):
                    buf[:] = memoryview(std)[OFFSET:end]

            async def stdlib_view() -> None:
                for _ in range(ops):
                    memoryview(buf)[:] = memoryview(std)[OFFSET:end]

            async def numpy_copyto() -> None:
                for _ in range(ops):
                    np.copyto(dst, src)

            cands: Candidates = {
                "anymmap read_into (await)": ours,
                "anymmap read_into_nowait": ours_nowait,
                "stdlib buf[:] = memoryview(mmap)[a:b]": stdlib,
                "stdlib memoryview(buf)[:] = memoryview(mmap)[a:b]": stdlib_view,
                "numpy.copyto (bandwidth)": numpy_copyto,
            }
            results = await best_of(cands, ops=ops, rounds=ROUNDS)
            assert buf == pattern
    finally:
        std.close()
    add_ratios(table, f"read {size_name(size)}", results, next(iter(cands)))


async def writes(table: Table, size: int, ops: int) -> None:
    data = bytes(touched(size, 0xC3))
    src = touched_array(size, 0xC3)
    dst = touched_array(size, 0x3C)
    std = mmap.mmap(-1, size)
    std[:] = touched(size, 0x3C)
    end = OFFSET + size
    try:
        async with await anymmap.AnonymousMmap.new(size) as m:
            await m.update_region(0, touched(size, 0x3C))

            async def ours() -> None:
                for _ in range(ops):
                    await m.update_region(OFFSET, data)

            async def stdlib() -> None:
                for _ in range(ops):
                    std[OFFSET:end] = data

            async def numpy_copyto() -> None:
                for _ in range(ops):
                    np.copyto(dst, src)

            cands: Candidates = {
                "anymmap update_region (await)": ours,
                "stdlib mmap[a:b] = data": stdlib,
                "numpy.copyto (bandwidth)": numpy_copyto,
            }
            results = await best_of(cands, ops=ops, rounds=ROUNDS)
            assert await m.read(OFFSET, size) == data
    finally:
        std.close()
    add_ratios(table, f"write {size_name(size)}", results, next(iter(cands)))


# -- 2. event-loop lag during populate ------------------------------------------------


async def ours_populate() -> Closer:
    m = await anymmap.AnonymousMmap.new(POPULATE_SIZE)
    await m.populate(write=True)
    return m.aclose


def stdlib_closer(std: mmap.mmap) -> Closer:
    async def close() -> None:
        await anyio.to_thread.run_sync(std.close)

    return close


async def stdlib_map_populate() -> Closer:
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
    std = await anyio.to_thread.run_sync(lambda: mmap.mmap(-1, POPULATE_SIZE, flags=flags))
    return stdlib_closer(std)


async def stdlib_madvise_populate(advice: int) -> Closer:
    std = mmap.mmap(-1, POPULATE_SIZE)
    await anyio.to_thread.run_sync(std.madvise, advice)
    return stdlib_closer(std)


async def idle() -> Closer:
    await anyio.sleep(0.1)
    return anyio.lowlevel.checkpoint


async def lag(label: str, out: list[str]) -> None:
    methods: dict[str, Callable[[], Awaitable[Closer]]] = {
        "anymmap AnonymousMmap.new() + populate(write=True)": ours_populate,
        "stdlib mmap(MAP_POPULATE) in to_thread": stdlib_map_populate,
    }
    if MADV_POPULATE_WRITE is not None:
        advice = MADV_POPULATE_WRITE
        methods["stdlib mmap + madvise(MADV_POPULATE_WRITE) in to_thread"] = lambda: (
            stdlib_madvise_populate(advice)
        )
    methods["reference: idle, sleep(0.1)"] = idle

    worst: dict[str, list[float]] = {name: [] for name in methods}
    total: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(LAG_RUNS):
        for name, make in methods.items():
            async with heartbeat() as beat:
                start = time.perf_counter()
                close = await make()
                total[name].append(time.perf_counter() - start)
            await close()
            worst[name].append(beat.worst)

    table = Table(
        f"Event-loop lag while populating {size_name(POPULATE_SIZE)} on {label} "
        f"(median of {LAG_RUNS})",
        columns=("method", "worst lag", "total time", "lag ratio"),
    )
    base = statistics.median(worst[next(iter(methods))])
    for name in methods:
        w = statistics.median(worst[name])
        table.add(name, fmt_time(w), fmt_time(statistics.median(total[name])), f"{w / base:.2f}x")
    out.append(table.render())


async def main(label: str, out: list[str]) -> None:
    table = Table(f"Copies on {label} (per copy, best of {ROUNDS})")
    for size, ops in READ_OPS.items():
        await reads(table, size, ops)
    for size, ops in WRITE_OPS.items():
        await writes(table, size, ops)
    out.append(table.render())
    await lag(label, out)


def run() -> list[str]:
    out: list[str] = []
    note = on_every_backend(main, out)
    if note:
        out.append(note + "\n")
    return out


if __name__ == "__main__":
    print("# Copy benchmark (ratios relative to the anymmap row; below 1 is faster than us)\n")
    if MADV_POPULATE_WRITE is None:
        print(
            f"(mmap.MADV_POPULATE_WRITE is missing on Python {sys.version.split()[0]}: "
            "the stdlib madvise row is skipped)\n"
        )
    for section in run():
        print(section)
