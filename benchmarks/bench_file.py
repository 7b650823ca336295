"""File maps (anymmap.MmapRaw): random reads, the cost of fault safety, and flush/read lag.

Run: python benchmarks/bench_file.py
(scratch files go to a temporary directory next to the checkout, on the real disk; set
ANYMMAP_BENCH_DIR to put them elsewhere, but not on a tmpfs such as /dev/shm)

1. Random 4 KiB reads from a warm 64 MiB file (written, fsynced and read through first, so
   every page is in the page cache), at 4096 offsets from ``random.Random(0)``: three in
   four page-aligned, one in four not (those span two pages).  ``await m.read_into()`` and
   ``m.read_into_nowait()`` on a ``"rw"`` MmapRaw against aiofile (asyncio only: ``await
   f.read_bytes(4096, o)`` on an ``aiofile.AIOFile`` opened once, which reads through
   caio, the kernel's native async I/O, with no thread hop: io_uring where the kernel
   allows it), aiofiles (asyncio only: ``await f.seek(o); await f.read(4096)`` on a file
   opened once, and the same inside ``async with aiofiles.open(path, "rb") as f`` for
   every read), ``anyio.open_file`` (seek + read on a file opened once) and the stdlib
   floor ``memoryview(buf)[:] = memoryview(mmap)[a:b]``.  aiofile runs twice when caio's
   default ring has an SQPOLL kernel thread (what a user gets by default): as is, and on a
   plain ring (``caio.AsyncioContext(sqpoll=False)``), where a read of a cached page
   completes inside the submitting call, without yielding to the loop.  The SQPOLL thread
   polls for 100 ms after the last read, and a busy second core makes thread hops several
   times cheaper (on a VM above all), so that row runs its rounds alone, first, and the
   others start once the thread sleeps.  The peers read the first 1024 offsets per round;
   the three in-memory copies also run more rounds over all 4096, and keep their best.
   Followed by the project's aims (``read_into_nowait`` at least 100x faster than
   aiofiles, at least 10x faster than aiofile and at most 3x the stdlib copy; ``await
   read_into`` at least 25x faster than aiofiles and at least 4x faster than aiofile),
   checked against both aiofiles patterns and every aiofile row, and by the caio backend
   aiofile used.

2. The cost of fault safety on a 4 KiB copy at the same offsets: ``read_into_nowait`` and
   ``update_region_nowait`` on a ``"rw"`` and a ``"copy"`` map made with
   ``fault_safe=True`` and ``fault_safe=False``, against the stdlib copy on a stdlib map of
   the same kind (shared, ``ACCESS_COPY``).  Reads of shared maps use ``preadv(RWF_NOWAIT)``
   either way; the others check ``mincore`` and then copy with ``process_vm_readv/writev``
   (fault-safe) or a plain memoryview copy.

3. The worst lateness of a task sleeping 1 ms in a loop (the event loop's lag) while
   256 MiB of dirty pages are flushed: ``await m.flush()`` against the naive ``await
   anyio.to_thread.run_sync(stdlib_mmap.flush)`` (the stdlib holds the GIL through
   ``msync``).  Each run first dirties the whole map (untimed), then times the flush.  A
   row that only sleeps 100 ms shows the lag of an idle loop on this machine.

4. Starting writeback early: dirty 64 MiB then ``await m.flush_range(0, n)``, against the
   same with ``await m.flush_async_range(0, n)`` right after the write, and against a log
   writer's pattern (16 batches of 4 MiB, each followed by ``flush_async_range`` of that
   batch).  Reported: the final ``flush_range`` alone and the total from the first write.

5. Cold read: the 256 MiB file evicted from the page cache (fsync, then
   ``posix_fadvise(POSIX_FADV_DONTNEED)`` while nothing maps it; ``mincore`` on a fresh map
   confirms it), then the loop's worst lag during ``await m.read_into(0, buf)`` of the
   whole map into a pre-touched buffer against the naive ``await
   anyio.to_thread.run_sync(...)`` of a stdlib memoryview copy.  Each run maps the file
   anew after the eviction, before the timing starts.

Sections 1 and 2 report the best per-operation time over interleaved rounds; sections 3-5
the median of several runs.  Ratios are relative to the first row (anymmap, 1.00x); below
1 is faster than it.  Sections run on asyncio, asyncio+uvloop (if uvloop is installed)
and trio.  Flush and cold-read times depend heavily on the storage (a VM disk backed by
the host's cache is far faster than a real one); the lag figures are the point.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.to_thread

sys.path.insert(0, __file__.rpartition("/")[0])

from _harness import (
    Table,
    add_ratios,
    best_of,
    fmt_time,
    fs_type,
    heartbeat,
    on_every_backend,
    scratch_parent,
)

import anymmap
import anymmap.sync

if TYPE_CHECKING:
    from aiofile import AIOFile

KiB = 1 << 10
MiB = 1 << 20
PAGE = mmap.PAGESIZE

READ_FILE_SIZE = 64 * MiB
READ_SIZE = 4 * KiB
#: Random offsets of the 4 KiB copies in sections 1 and 2.
OFFSETS = 4096
#: One offset in this many is not page-aligned.
UNALIGNED_EVERY = 4
#: The peers (aiofile, aiofiles, anyio) read only this many of them (the first ones) per round.
PEER_OFFSETS = 1024
ROUNDS = 5
#: The in-memory copies of section 1 then run this many more rounds over every offset.
LOCAL_ROUNDS = 15
LOCAL = (AWAITED, NOWAIT, STDLIB, FLOOR) = (
    "anymmap await read_into",
    "anymmap read_into_nowait",
    "stdlib memoryview(buf)[:] = memoryview(mmap)[a:b]",
    # What an awaited copy cannot go below: one pass of the event loop (asyncio.sleep(0),
    # trio's cancel-shielded checkpoint), then the copy that does not wait.
    "one bare pass of the event loop + read_into_nowait (the floor of an awaited copy)",
)
AIOFILE = "aiofile read_bytes (file opened once)"
AIOFILE_PLAIN = "aiofile read_bytes, caio ring without SQPOLL (file opened once)"
#: How long the peers wait after aiofile's SQPOLL rounds: caio lets its kernel thread poll
#: for 100 ms (sq_thread_idle) after the last read before it sleeps.
SQPOLL_SETTLE = 0.25
AIOFILES_ONCE = "aiofiles seek + read (file opened once)"
AIOFILES_EACH = "aiofiles open + seek + read + close (per read)"
FAULT_ROUNDS = 7

FLUSH_SIZE = 256 * MiB
LAG_RUNS = 3

PIPELINE_SIZE = 64 * MiB
PIPELINE_BATCH = 4 * MiB
PIPELINE_RUNS = 5

Candidates = dict[str, Callable[[], Awaitable[None]]]


def bare_pass() -> Callable[[], Awaitable[None]]:
    """One pass of the event loop and nothing else (what every awaited call pays), for
    the running loop."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # trio
        import trio

        return trio.lowlevel.cancel_shielded_checkpoint
    return partial(asyncio.sleep, 0)


def size_name(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB else f"{n // KiB} KiB"


def touched(n: int, fill: int) -> bytearray:
    """A bytearray of ``n`` bytes, every page of it written."""
    return bytearray([fill]) * n


def random_offsets(file_size: int) -> list[int]:
    rng = random.Random(0)
    pages = (file_size - READ_SIZE) // PAGE + 1
    return [
        rng.randrange(file_size - READ_SIZE + 1)
        if i % UNALIGNED_EVERY == UNALIGNED_EVERY - 1
        else rng.randrange(pages) * PAGE
        for i in range(OFFSETS)
    ]


# -- scratch files --------------------------------------------------------------------


def write_file(path: Path, size: int, data: bytes | None = None) -> None:
    """Create ``path`` with ``size`` bytes (``data`` repeated, or zeros) and fsync it."""
    chunk = data if data is not None else bytes(MiB)
    with open(path, "wb") as f:
        f.writelines(chunk[: size - start] for start in range(0, size, len(chunk)))
        f.flush()
        os.fsync(f.fileno())


def warm(path: Path) -> None:
    """Read the whole file so that every page is in the page cache."""
    buf = bytearray(MiB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache; nothing may map it meanwhile."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
_libc.mincore.restype = ctypes.c_int


def cached_fraction(path: Path) -> float:
    """Fraction of the file's pages in the page cache, by mincore(2) on a fresh map (which
    reads nothing)."""
    with anymmap.sync.MmapRaw.map_raw(path, mode="r") as m:
        pages = (len(m) + PAGE - 1) // PAGE
        vec = ctypes.create_string_buffer(pages)
        if _libc.mincore(m.as_ptr(), len(m), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        return sum(b & 1 for b in vec.raw[:pages]) / pages


# -- 1. random reads --------------------------------------------------------------------


async def random_reads(label: str, out: list[str], path: Path) -> None:
    warm(path)
    offsets = random_offsets(READ_FILE_SIZE)
    buf = touched(READ_SIZE, 0x5A)
    fd = os.open(path, os.O_RDONLY)
    std = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    closers: list[Callable[[], Awaitable[None]]] = []
    try:
        m = await anymmap.MmapRaw.map_raw(path)
        closers.append(m.aclose)
        afile = await anyio.open_file(path, "rb")
        closers.append(afile.aclose)
        peer: Any = None
        natives: dict[str, AIOFile] = {}
        sqpoll = False
        backend = ""
        if label != "trio":
            import aiofile
            import aiofiles
            import caio

            peer = await aiofiles.open(path, "rb")
            closers.append(peer.close)
            natives[AIOFILE] = aiofile.AIOFile(path, "rb")
            # The loop's caio context, which that file reads through.
            context = aiofile.aio.get_default_context()
            backend = type(context).__module__.removesuffix("_asyncio")
            sqpoll = bool(getattr(context.context, "sqpoll", False))
            if sqpoll:
                backend += " with an SQPOLL kernel thread"
                ring = caio.AsyncioContext(sqpoll=False)

                async def close_ring() -> None:
                    ring.close()

                closers.append(close_ring)
                natives[AIOFILE_PLAIN] = aiofile.AIOFile(path, "rb", context=ring)
            for native in natives.values():
                await native.open()
                closers.append(native.close)

        def candidates(offs: list[int]) -> Candidates:
            async def ours() -> None:
                for o in offs:
                    await m.read_into(o, buf)

            async def ours_nowait() -> None:
                for o in offs:
                    m.read_into_nowait(o, buf)

            def aiofile_once(native: AIOFile) -> Callable[[], Awaitable[None]]:
                async def run() -> None:
                    for o in offs:
                        await native.read_bytes(READ_SIZE, o)

                return run

            async def aiofiles_once() -> None:
                for o in offs:
                    await peer.seek(o)
                    await peer.read(READ_SIZE)

            async def aiofiles_each() -> None:
                import aiofiles

                for o in offs:
                    async with aiofiles.open(path, "rb") as f:
                        await f.seek(o)
                        await f.read(READ_SIZE)

            async def anyio_file() -> None:
                for o in offs:
                    await afile.seek(o)
                    await afile.read(READ_SIZE)

            async def stdlib_view() -> None:
                for o in offs:
                    memoryview(buf)[:] = memoryview(std)[o : o + READ_SIZE]

            async def floor() -> None:
                one_pass = bare_pass()
                for o in offs:
                    await one_pass()
                    m.read_into_nowait(o, buf)

            cands: Candidates = {AWAITED: ours, NOWAIT: ours_nowait}
            for name, native in natives.items():
                cands[name] = aiofile_once(native)
            if peer is not None:
                cands[AIOFILES_ONCE] = aiofiles_once
                cands[AIOFILES_EACH] = aiofiles_each
            cands["anyio.open_file seek + read (file opened once)"] = anyio_file
            cands[STDLIB] = stdlib_view
            cands[FLOOR] = floor
            return cands

        # Each candidate reads what the file holds (checked on a few offsets first).
        for o in offsets[: UNALIGNED_EVERY * 4]:
            expected = os.pread(fd, READ_SIZE, o)
            m.read_into_nowait(o, buf)
            assert buf == expected, o
            await m.read_into(o, buf)
            assert buf == expected, o
            await afile.seek(o)
            assert await afile.read(READ_SIZE) == expected, o
            for native in natives.values():
                assert await native.read_bytes(READ_SIZE, o) == expected, o

        # Everything over the first PEER_OFFSETS offsets (the thread-hopping peers take
        # 0.1-0.5 ms a read, aiofile 4-40 µs), then the in-memory copies again over all of
        # them, with more rounds; each row keeps its best figure.  aiofile on an SQPOLL ring
        # goes first and alone: its polling kernel thread would speed up the thread hops.
        peers = candidates(offsets[:PEER_OFFSETS])
        order = list(peers)
        alone = {AIOFILE: peers.pop(AIOFILE)} if sqpoll else {}
        results = await best_of(alone, ops=PEER_OFFSETS, rounds=ROUNDS)
        if alone:
            await anyio.sleep(SQPOLL_SETTLE)
        results.update(await best_of(peers, ops=PEER_OFFSETS, rounds=ROUNDS))
        results = {name: results[name] for name in order}
        local = {name: run for name, run in candidates(offsets).items() if name in LOCAL}
        for name, seconds in (await best_of(local, ops=len(offsets), rounds=LOCAL_ROUNDS)).items():
            results[name] = min(results[name], seconds)
    finally:
        for close in reversed(closers):
            await close()
        std.close()
        os.close(fd)

    table = Table(
        f"Random {size_name(READ_SIZE)} reads from a warm {size_name(READ_FILE_SIZE)} file on "
        f"{label} (per read; best of {ROUNDS} rounds of {PEER_OFFSETS}, and for the "
        f"in-memory copies also of {LOCAL_ROUNDS} rounds of {len(offsets)})"
    )
    add_ratios(
        table,
        f"read {size_name(READ_SIZE)}, 1 in {UNALIGNED_EVERY} unaligned",
        results,
        AWAITED,
    )
    out.append(table.render())

    def aim(name: str, rival: str, goal: float) -> str:
        times = results[rival] / results[name]
        verdict = "met" if times >= goal else "MISSED"
        return (
            f"aim: {name.removeprefix('anymmap ')} vs {rival}: {times:.0f}x faster "
            f"(aim >= {goal:.0f}x): {verdict}"
        )

    lines: list[str] = []
    if peer is None:
        lines.append("aim: vs aiofiles and aiofile: n/a (neither runs on trio)")
    else:
        for rival in (AIOFILES_ONCE, AIOFILES_EACH):
            lines.append(aim(NOWAIT, rival, 100))
            lines.append(aim(AWAITED, rival, 25))
        for rival in natives:
            lines.append(aim(NOWAIT, rival, 10))
            lines.append(aim(AWAITED, rival, 4))
        lines.append(f"(aiofile's default context: {backend})")
    lines.append(
        f"await read_into takes {fmt_time(results[AWAITED] - results[NOWAIT])} more than "
        f"read_into_nowait; a bare pass of the loop takes "
        f"{fmt_time(results[FLOOR] - results[NOWAIT])} of that"
    )
    floor = results[NOWAIT] / results[STDLIB]
    lines.append(
        f"aim: read_into_nowait vs stdlib copy: {floor:.2f}x its time (aim <= 3x): "
        f"{'met' if floor <= 3 else 'MISSED'}"
    )
    out.append("\n".join(lines) + "\n")


# -- 2. the cost of fault safety -----------------------------------------------------


async def fault_safety_of(
    table: Table, path: Path, mode: Literal["rw", "copy"], access: int, offsets: list[int]
) -> None:
    buf = touched(READ_SIZE, 0x5A)
    data = bytes(touched(READ_SIZE, 0xC3))
    fd = os.open(path, os.O_RDWR)
    std = mmap.mmap(fd, 0, access=access)
    try:
        async with (
            await anymmap.MmapRaw.map_raw(path, mode=mode, fault_safe=True) as safe,
            await anymmap.MmapRaw.map_raw(path, mode=mode, fault_safe=False) as unsafe,
        ):

            def reader(m: anymmap.MmapRaw) -> Callable[[], Awaitable[None]]:
                async def run() -> None:
                    for o in offsets:
                        m.read_into_nowait(o, buf)

                return run

            def writer(m: anymmap.MmapRaw) -> Callable[[], Awaitable[None]]:
                async def run() -> None:
                    for o in offsets:
                        m.update_region_nowait(o, data)

                return run

            async def stdlib_read() -> None:
                for o in offsets:
                    memoryview(buf)[:] = memoryview(std)[o : o + READ_SIZE]

            async def stdlib_write() -> None:
                for o in offsets:
                    std[o : o + READ_SIZE] = data

            reads: Candidates = {
                "anymmap read_into_nowait, fault_safe=True": reader(safe),
                "anymmap read_into_nowait, fault_safe=False": reader(unsafe),
                "stdlib memoryview(buf)[:] = memoryview(mmap)[a:b]": stdlib_read,
            }
            writes: Candidates = {
                "anymmap update_region_nowait, fault_safe=True": writer(safe),
                "anymmap update_region_nowait, fault_safe=False": writer(unsafe),
                "stdlib mmap[a:b] = data": stdlib_write,
            }
            for direction, cands in (("read", reads), ("write", writes)):
                results = await best_of(cands, ops=len(offsets), rounds=FAULT_ROUNDS)
                add_ratios(
                    table,
                    f"{direction} {size_name(READ_SIZE)}, {mode!r} map",
                    results,
                    next(iter(cands)),
                )
            assert await safe.read(offsets[-1], READ_SIZE) == data
            assert await unsafe.read(offsets[-1], READ_SIZE) == data
    finally:
        std.close()
        os.close(fd)


async def fault_safety(label: str, out: list[str], path: Path) -> None:
    offsets = random_offsets(READ_FILE_SIZE)
    table = Table(
        f"Cost of fault safety, {size_name(READ_SIZE)} copies on {label} "
        f"(per copy, best of {FAULT_ROUNDS} rounds of {len(offsets)})"
    )
    await fault_safety_of(table, path, "rw", mmap.ACCESS_WRITE, offsets)
    await fault_safety_of(table, path, "copy", mmap.ACCESS_COPY, offsets)
    out.append(table.render())


# -- event-loop lag ---------------------------------------------------------------------


def lag_table(
    title: str,
    time_column: str,
    worst: dict[str, list[float]],
    total: dict[str, list[float]],
) -> Table:
    table = Table(title, columns=("method", "worst lag", time_column, "lag ratio"))
    base = statistics.median(next(iter(worst.values())))
    for name, runs in worst.items():
        w = statistics.median(runs)
        table.add(name, fmt_time(w), fmt_time(statistics.median(total[name])), f"{w / base:.2f}x")
    return table


# -- 3. loop lag while flushing --------------------------------------------------------


async def flush_lag(label: str, out: list[str], path: Path) -> None:
    chunks = FLUSH_SIZE // MiB
    fd = os.open(path, os.O_RDWR)
    std = mmap.mmap(fd, 0)
    try:
        async with await anymmap.MmapRaw.map_raw(path) as m:

            async def dirty_ours(fill: int) -> None:
                chunk = bytes(touched(MiB, fill))
                for i in range(chunks):
                    await m.update_region(i * MiB, chunk)

            async def dirty_stdlib(fill: int) -> None:
                chunk = bytes(touched(MiB, fill))
                for i in range(chunks):
                    std[i * MiB : (i + 1) * MiB] = chunk

            async def nothing(fill: int) -> None:
                pass

            async def stdlib_flush() -> None:
                await anyio.to_thread.run_sync(std.flush)

            async def idle() -> None:
                await anyio.sleep(0.1)

            methods: dict[
                str, tuple[Callable[[int], Awaitable[None]], Callable[[], Awaitable[None]]]
            ] = {
                "anymmap await m.flush()": (dirty_ours, m.flush),
                "stdlib to_thread.run_sync(mmap.flush)": (dirty_stdlib, stdlib_flush),
                "reference: idle, sleep(0.1)": (nothing, idle),
            }
            worst: dict[str, list[float]] = {name: [] for name in methods}
            total: dict[str, list[float]] = {name: [] for name in methods}
            await m.flush()
            fill = 0
            for _ in range(LAG_RUNS):
                for name, (dirty, flush) in methods.items():
                    fill += 1
                    await dirty(fill & 0xFF)
                    async with heartbeat() as beat:
                        start = time.perf_counter()
                        await flush()
                        total[name].append(time.perf_counter() - start)
                    worst[name].append(beat.worst)
    finally:
        std.close()
        os.close(fd)

    out.append(
        lag_table(
            f"Event-loop lag while flushing {size_name(FLUSH_SIZE)} of dirty pages on {label} "
            f"(median of {LAG_RUNS})",
            "flush time",
            worst,
            total,
        ).render()
    )
    ours = statistics.median(worst["anymmap await m.flush()"])
    naive = statistics.median(worst["stdlib to_thread.run_sync(mmap.flush)"])
    naive_flush = statistics.median(total["stdlib to_thread.run_sync(mmap.flush)"])
    out.append(
        f"aim: await m.flush() worst lag {fmt_time(ours)} (aim <= 5 ms): "
        f"{'met' if ours <= 0.005 else 'MISSED'}; the naive way stalls {fmt_time(naive)} "
        f"(its msync took {fmt_time(naive_flush)})\n"
    )


# -- 4. flush_async_range before flush_range ----------------------------------------------


async def pipelined_flush(label: str, out: list[str], path: Path) -> None:
    n = PIPELINE_SIZE
    patterns = [bytes(touched(n, 0x11)), bytes(touched(n, 0x22))]
    async with await anymmap.MmapRaw.map_raw(path, length=n) as m:

        async def flush_only(data: bytes) -> float:
            await m.update_region(0, data)
            start = time.perf_counter()
            await m.flush_range(0, n)
            return time.perf_counter() - start

        async def async_first(data: bytes) -> float:
            await m.update_region(0, data)
            await m.flush_async_range(0, n)
            start = time.perf_counter()
            await m.flush_range(0, n)
            return time.perf_counter() - start

        async def batches(data: bytes) -> float:
            view = memoryview(data)
            for at in range(0, n, PIPELINE_BATCH):
                await m.update_region(at, view[at : at + PIPELINE_BATCH])
                await m.flush_async_range(at, PIPELINE_BATCH)
            start = time.perf_counter()
            await m.flush_range(0, n)
            return time.perf_counter() - start

        methods: dict[str, Callable[[bytes], Awaitable[float]]] = {
            "write, flush_range": flush_only,
            "write, flush_async_range, flush_range": async_first,
            f"{n // PIPELINE_BATCH} x (write {size_name(PIPELINE_BATCH)}, flush_async_range), "
            "flush_range": batches,
        }
        final: dict[str, list[float]] = {name: [] for name in methods}
        total: dict[str, list[float]] = {name: [] for name in methods}
        await m.flush()
        runs = 0
        for _ in range(PIPELINE_RUNS):
            for name, method in methods.items():
                runs += 1
                start = time.perf_counter()
                final[name].append(await method(patterns[runs % 2]))
                total[name].append(time.perf_counter() - start)
        assert await m.read(n - READ_SIZE, READ_SIZE) == patterns[runs % 2][-READ_SIZE:]

    table = Table(
        f"Dirty {size_name(n)}, then flush_range(0, n) on {label} (median of {PIPELINE_RUNS})",
        columns=("method", "final flush_range", "total (write + flush)", "flush ratio"),
    )
    base = statistics.median(next(iter(final.values())))
    for name in methods:
        f = statistics.median(final[name])
        table.add(name, fmt_time(f), fmt_time(statistics.median(total[name])), f"{f / base:.2f}x")
    out.append(table.render())


# -- 5. loop lag during a cold read ----------------------------------------------------


async def cold_read(label: str, out: list[str], path: Path, buf: bytearray) -> None:
    size = path.stat().st_size
    assert len(buf) == size

    async def ours() -> Callable[[], Awaitable[None]]:
        m = await anymmap.MmapRaw.map_raw(path, mode="r")

        async def read() -> None:
            try:
                await m.read_into(0, buf)
            finally:
                await m.aclose()

        return read

    async def naive() -> Callable[[], Awaitable[None]]:
        fd = os.open(path, os.O_RDONLY)
        std = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        os.close(fd)

        def copy() -> None:
            with memoryview(std) as src:
                memoryview(buf)[:] = src

        async def read() -> None:
            try:
                await anyio.to_thread.run_sync(copy)
            finally:
                std.close()

        return read

    methods: dict[str, Callable[[], Awaitable[Callable[[], Awaitable[None]]]]] = {
        "anymmap await m.read_into(0, buf)": ours,
        "stdlib to_thread.run_sync(memoryview copy)": naive,
    }
    worst: dict[str, list[float]] = {name: [] for name in methods}
    total: dict[str, list[float]] = {name: [] for name in methods}
    still_cached: list[float] = []
    with open(path, "rb") as f:
        f.seek(size - READ_SIZE)
        expected_tail = f.read(READ_SIZE)
    for _ in range(LAG_RUNS):
        for name, prepare in methods.items():
            evict(path)
            still_cached.append(cached_fraction(path))
            read = await prepare()  # maps the file; no page is read yet
            buf[-READ_SIZE:] = bytes(READ_SIZE)
            async with heartbeat() as beat:
                start = time.perf_counter()
                await read()
                total[name].append(time.perf_counter() - start)
            worst[name].append(beat.worst)
            assert buf[-READ_SIZE:] == expected_tail, name

    out.append(
        lag_table(
            f"Event-loop lag during a cold read of {size_name(size)} on {label} "
            f"(median of {LAG_RUNS})",
            "read time",
            worst,
            total,
        ).render()
    )
    if max(still_cached) > 0:
        out.append(
            f"(warning: up to {max(still_cached):.0%} of the sampled pages were still cached "
            "after eviction)\n"
        )


# -- main ---------------------------------------------------------------------------------


async def main(label: str, out: list[str], small: Path, big: Path, buf: bytearray) -> None:
    out.append(f"## {label}\n")
    await random_reads(label, out, small)
    await fault_safety(label, out, small)
    await flush_lag(label, out, big)
    await pipelined_flush(label, out, small)
    await cold_read(label, out, big, buf)


def run() -> list[str]:
    out: list[str] = []
    parent = scratch_parent()
    with tempfile.TemporaryDirectory(prefix="anymmap-bench-", dir=parent) as scratch:
        out.append(f"(scratch files in {parent}, a {fs_type(parent)} file system)\n")
        small = Path(scratch, "small.bin")
        big = Path(scratch, "big.bin")
        write_file(small, READ_FILE_SIZE, random.Random(1).randbytes(READ_FILE_SIZE))
        write_file(big, FLUSH_SIZE)
        buf = touched(FLUSH_SIZE, 0x5A)
        args = (out, small, big, buf)
        note = on_every_backend(main, *args)
        if note:
            out.append(note + "\n")
    return out


if __name__ == "__main__":
    print("# File-map benchmark (ratios relative to the first row; below 1 is faster than it)\n")
    for section in run():
        print(section)
