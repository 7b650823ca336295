"""Durable commits of file maps (group commit) against the usual ways, and prefill.

Run: python benchmarks/bench_commit.py
(scratch files go to a temporary directory next to the checkout, on the real disk; set
ANYMMAP_BENCH_DIR to put them elsewhere, but not on a tmpfs such as /dev/shm, where a
sync costs nothing)

0. The physical anchor: ``os.pwrite`` of 4 KiB into one block followed by
   ``os.fdatasync``, in a loop on one thread, without an event loop: what one durable
   write at a time costs on this disk.

1. Durable commits per second and the p50 / p99 latency of one commit, for 1, 8 and 64
   concurrent committers (tasks).  Each committer, in a loop, writes its own 4 KiB record
   (its number and a sequence number, then filler) into its own slot (committer ``i``
   at byte ``i * 4096``) and waits until it is durable; every candidate has a file of 64
   slots of its own, made the same way (``posix_fallocate``, then synced: what
   ``MmapRaw.create`` does by default).  Every committer commits once, untimed, before
   the timing starts, so every slot's block is written and its page in memory; then the
   committers run for a fixed time, and the rate is the commits finished over the time
   until the last committer stopped.  The candidates:

   * anymmap with group commit: ``await m.update_region(off, rec); await
     m.flush_range(off, 4096)`` on a map made by ``MmapRaw.create``: the committers'
     waiting ranges share ``msync`` calls (the figures after the tables: how many
     batches and ``msync`` calls the timed commits took, from ``m._core.commit``);
   * anymmap with one ``msync`` per call, how ``flush_range`` worked before group commit:
     ``await m.update_region(off, rec)`` then ``await anyio.to_thread.run_sync(
     m._core.flush, off, 4096, True)`` (``FileBackedCore.flush`` is the internal path
     the group committer calls; it is reached here only to compare with it);
   * aiofiles, asyncio only: ``await f.seek(off); await f.write(rec)`` then ``await
     anyio.to_thread.run_sync(os.fdatasync, f.fileno())``, each committer on a handle of
     its own opened once (``aiofiles.open(path, "r+b", buffering=0)``: a handle keeps its
     own position, so concurrent seek + write pairs cannot cross, and unbuffered, so
     ``write`` reaches the file without a ``flush`` hop).  aiofiles runs its calls in the
     loop's default executor (at most ``min(32, cores + 4)`` threads);
   * ``anyio.open_file`` the same way (its calls run in anyio's worker threads);
   * aiofile, asyncio only: ``await afp.write_bytes(rec, off); await afp.fdsync()`` on
     one ``aiofile.AIOFile`` shared by the committers (a positioned write needs no
     handle of its own), through caio, the kernel's native async I/O with no thread hop.
     When caio's default ring has an SQPOLL kernel thread (what a user gets by
     default), aiofile runs twice: as is, and on a plain ring
     (``caio.AsyncioContext(sqpoll=False)``).  The SQPOLL thread polls for 100 ms after
     the last request and, on a machine with 2 cores, would take one away from (or
     speed up the thread hops of) whatever runs next, so in every round the default
     ring runs first and alone, and the others start once its thread sleeps;
   * sqlite3 in WAL mode with ``synchronous=FULL``: ``REPLACE INTO records VALUES
     (slot, rec)`` (a 4 KiB blob), one transaction per commit (autocommit), through
     ``anyio.to_thread.run_sync``, on one connection shared by the committers
     (``check_same_thread=False``) whose statements an ``anyio.Lock`` serializes: what
     most async code does (aiosqlite serves a connection with one thread the same way).

   Each table keeps, for each candidate, the better of 2 interleaved runs of 0.75 s.
   The rows "on asyncio+uvloop" and "on trio" are group commit again on those loops
   (aiofiles and aiofile run on asyncio only).  During the 64-committer runs a task
   sleeping 1 ms in a loop measures the event loop's worst lag (the worse of the 2 runs);
   the "idle loop" rows give the same measure over as long with nothing else running,
   what the machine itself adds.
   At the end every file's slots are checked to hold the last record of their committer.

2. The prefill question.  ``MmapRaw.create`` of a 64 MiB file with ``prefill="allocate"``
   (``posix_fallocate``: unwritten extents, so the first write into each block also
   changes the file's metadata) and with ``prefill="zeros"`` (zeros written and synced
   now): the create time, then 2048 serial commits (``update_region`` of 4 KiB then
   ``flush_range`` of it, one at a time) into fresh blocks in order from the start, then
   the same 2048 slots rewritten.  Best of 2 interleaved runs, each on a new file.

3. How group commit flushes a batch: its ranges closer than ``GAP_LIMIT`` (256 MiB) share
   one ``msync`` over their span, clean pages included.  64 pages at random 4 KiB slots of
   a 64 MiB and of a 1 GiB file made by ``MmapRaw.create`` (written and flushed once
   first), rewritten, then made durable by one ``msync`` over their span against 64
   ``msync`` calls of 4 KiB, both in one worker thread (``m._core.flush``); and one
   ``msync`` of the whole 1 GiB map with no page dirty.  Median of 3 runs each.

4. The aims: with 64 committers, group commit makes at least 3x the commits per second
   of one ``msync`` per call, and more than sqlite3, aiofiles and every aiofile row; the
   event loop's worst lag during the 64-committer group-commit run is at most 5 ms.

5. Not measured here, tried once (2026-12-07, at e372ad3): the event loop's thread lets
   go of the GIL in every system call of a copy (``mincore``, ``process_vm_writev``), and
   when a worker thread (the committer) is waiting for it, the loop thread then waits for
   the worker's turn: 10 to 20 us per call under cProfile.  Keeping the GIL through those
   calls (``ctypes.PyDLL``) raised the 64-committer rate from about 18,000 to 28,500 a
   second and halved the CPU per commit, but a task writing 4 KiB in a loop beside 16
   committers then left the committer thread only Python's switch interval (5 ms) for
   each of its turns: 22 commits a second against 7,855 (letting go once every 100 us
   instead: 700).  Fairness to the worker threads won; every call lets go of the GIL.

6. Also not measured here (2026-12-07, at 32b7629): where the 64-committer loop lag comes
   from.  Each ``_run_once`` pass of the loop timed (wall and thread CPU): most take
   0.2 ms, and the longest 5 to 13 ms, with 30 to 64 tasks ready, of which the loop's
   thread ran 1.5 to 5 ms (30 to 75 us of CPU per task step, a commit taking two) and
   waited the rest, for the GIL or for a core (two cores, shared with the committer
   thread and the kernel's writeback and journal threads).  Waking a batch's waiters 16
   or 8 per pass (each chunk scheduled after the last) left the worst lag as it was
   (6.0-15.6 ms against 6.2-8.3 ms in 3 alternating runs) and cost 5 to 12% of the
   rate; keeping the GIL through the copy's two system calls made the longest passes
   all CPU but no shorter (see point 5 for why every call lets go of it).  Dropping the
   signal-holding section from a request queued for a busy committer (32b7629) cut the
   loop's CPU per commit from 69-72 us to 50-52 us (same run, alternating).

Commit rates depend on the disk above all (a VM disk backed by the host's cache syncs far
faster than a real one): compare the rows with the anchor, and with each other.
"""

from __future__ import annotations

import os
import random
import sqlite3
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.to_thread

sys.path.insert(0, __file__.rpartition("/")[0])

from _harness import Table, fmt_time, fs_type, heartbeat, on_every_backend, scratch_parent

import anymmap

if TYPE_CHECKING:
    from aiofile import AIOFile

KiB = 1 << 10
MiB = 1 << 20

RECORD = 4 * KiB
#: Slots per file: one per committer of the largest count.
SLOTS = 64
COMMITTERS = (1, 8, 64)
#: The committer count whose runs also measure the event loop's lag.
LAG_AT = 64
#: Seconds of one timed run, and runs per candidate and committer count.
DURATION = 0.75
ROUNDS = 2
#: How long the others wait after aiofile's SQPOLL runs: caio lets its kernel thread poll
#: for 100 ms (sq_thread_idle) after the last request before it sleeps.
SQPOLL_SETTLE = 0.25

PREFILL_SIZE = 64 * MiB
PREFILL_COMMITS = 2048
PREFILL_ROUNDS = 2
SPAN_SIZES = (64 * MiB, 1024 * MiB)
SPAN_PAGES = 64
SPAN_RUNS = 3

PREFILLS: tuple[Literal["allocate", "zeros"], ...] = ("allocate", "zeros")

GROUP = "anymmap update_region + flush_range (group commit)"
PER_CALL = "anymmap update_region + to_thread(core.flush) (one msync per call)"
AIOFILES = "aiofiles seek + write + to_thread(os.fdatasync) (handle per committer)"
ANYIO = "anyio.open_file seek + write + to_thread(os.fdatasync) (handle per committer)"
AIOFILE = "aiofile write_bytes + fdsync (caio default ring)"
AIOFILE_SQPOLL = "aiofile write_bytes + fdsync (caio default ring, SQPOLL)"
AIOFILE_PLAIN = "aiofile write_bytes + fdsync (caio ring without SQPOLL)"
SQLITE = "sqlite3 WAL, synchronous=FULL, REPLACE via to_thread (one shared connection)"
IDLE = "reference: idle loop, the heartbeat alone"
#: The rows of the commit tables, in order.
ORDER = [
    GROUP,
    PER_CALL,
    AIOFILES,
    ANYIO,
    AIOFILE,
    AIOFILE_SQPOLL,
    AIOFILE_PLAIN,
    SQLITE,
    f"{GROUP} on asyncio+uvloop",
    f"{GROUP} on trio",
    IDLE,
    f"{IDLE} on asyncio+uvloop",
    f"{IDLE} on trio",
]
ANCHOR = "os.pwrite 4 KiB + os.fdatasync, one thread, no event loop"

_HEADER = struct.Struct("<QQ")
_FILLER = bytes(range(256)) * (RECORD // 256)


def record(slot: int, sequence: int) -> bytes:
    """The 4 KiB record a committer writes: its slot and sequence number, then filler."""
    return _HEADER.pack(slot, sequence) + _FILLER[_HEADER.size :]


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def size_name(n: int) -> str:
    return f"{n // (1 << 30)} GiB" if n >= 1 << 30 else f"{n // MiB} MiB"


def rate_text(rate: float) -> str:
    return f"{rate:,.0f}"


# -- scratch files --------------------------------------------------------------------


def make_file(path: Path, size: int) -> None:
    """Create ``path`` with ``size`` bytes of allocated blocks, synced (as ``MmapRaw.create``
    does by default)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.posix_fallocate(fd, 0, size)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def stored_headers(path: Path, slots: int) -> list[tuple[int, int]]:
    """The (slot, sequence) header of the first ``slots`` slots of a file."""
    with open(path, "rb") as f:
        data = f.read(slots * RECORD)
    return [_HEADER.unpack_from(data, i * RECORD) for i in range(slots)]


# -- 0. the anchor -------------------------------------------------------------------------


@dataclass
class Run:
    rate: float
    p50: float
    p99: float
    lag: float | None = None
    msyncs: int = 0
    batches: int = 0
    commits: int = 0


def summarize(latencies: list[float], elapsed: float) -> Run:
    ordered = sorted(latencies)
    return Run(
        rate=len(ordered) / elapsed,
        p50=percentile(ordered, 0.5),
        p99=percentile(ordered, 0.99),
        commits=len(ordered),
    )


def anchor(scratch: Path) -> Run:
    """4 KiB pwrite + fdatasync into one block, in a loop on this thread."""
    path = scratch / "anchor.bin"
    make_file(path, RECORD)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    best: Run | None = None
    try:
        os.pwrite(fd, record(0, 0), 0)
        os.fdatasync(fd)
        sequence = 0
        for _ in range(ROUNDS):
            latencies: list[float] = []
            start = time.perf_counter()
            deadline = start + DURATION
            while time.perf_counter() < deadline:
                sequence += 1
                rec = record(0, sequence)
                began = time.perf_counter()
                os.pwrite(fd, rec, 0)
                os.fdatasync(fd)
                latencies.append(time.perf_counter() - began)
            run = summarize(latencies, time.perf_counter() - start)
            if best is None or run.rate > best.rate:
                best = run
    finally:
        os.close(fd)
        path.unlink()
    assert best is not None
    return best


# -- 1. the committers -----------------------------------------------------------------


class Target:
    """One way of committing records: ``commit(slot, rec)`` returns once ``rec`` is durable
    in ``slot``."""

    name: str
    #: Each committer's last sequence number in the latest run (checked once closed).
    last: list[int]

    async def commit(self, slot: int, rec: bytes) -> None:
        raise NotImplementedError

    def counters(self) -> tuple[int, int]:
        """(msyncs, batches) so far, for group commit; zeros for the others."""
        return 0, 0

    async def aclose(self) -> None:
        raise NotImplementedError

    def headers(self, slots: int) -> list[tuple[int, int]]:
        """The headers stored in the first ``slots`` slots (once closed)."""
        raise NotImplementedError


class MapTarget(Target):
    def __init__(self, name: str, path: Path, m: anymmap.MmapRaw, per_call: bool) -> None:
        self.name = name
        self.path = path
        self.m = m
        self.per_call = per_call

    @classmethod
    async def open(cls, name: str, path: Path, per_call: bool) -> MapTarget:
        return cls(name, path, await anymmap.MmapRaw.create(path, SLOTS * RECORD), per_call)

    async def commit(self, slot: int, rec: bytes) -> None:
        offset = slot * RECORD
        await self.m.update_region(offset, rec)
        if self.per_call:
            # The internal one-msync-per-call path (what flush_range did before group
            # commit), reached only for this comparison.
            await anyio.to_thread.run_sync(self.m._core.flush, offset, RECORD, True)
        else:
            await self.m.flush_range(offset, RECORD)

    def counters(self) -> tuple[int, int]:
        commit = self.m._core.commit
        return commit.msyncs, commit.batches

    async def aclose(self) -> None:
        await self.m.aclose()

    def headers(self, slots: int) -> list[tuple[int, int]]:
        return stored_headers(self.path, slots)


class HandleTarget(Target):
    """aiofiles or anyio.open_file: seek + write on a handle per committer, then
    fdatasync in a worker thread."""

    def __init__(
        self, name: str, path: Path, handles: list[Any], close: Callable[[Any], Awaitable[None]]
    ) -> None:
        self.name = name
        self.path = path
        self.handles = handles
        self._close = close

    @classmethod
    async def open(
        cls,
        name: str,
        path: Path,
        opener: Callable[[Path], Awaitable[Any]],
        close: Callable[[Any], Awaitable[None]],
    ) -> HandleTarget:
        make_file(path, SLOTS * RECORD)
        handles = [await opener(path) for _ in range(SLOTS)]
        return cls(name, path, handles, close)

    async def commit(self, slot: int, rec: bytes) -> None:
        f = self.handles[slot]
        await f.seek(slot * RECORD)
        await f.write(rec)
        await anyio.to_thread.run_sync(os.fdatasync, f.fileno())

    async def aclose(self) -> None:
        for f in self.handles:
            await self._close(f)

    def headers(self, slots: int) -> list[tuple[int, int]]:
        return stored_headers(self.path, slots)


class AiofileTarget(Target):
    def __init__(self, name: str, path: Path, afp: AIOFile) -> None:
        self.name = name
        self.path = path
        self.afp = afp

    @classmethod
    async def open(cls, name: str, path: Path, context: Any) -> AiofileTarget:
        import aiofile

        make_file(path, SLOTS * RECORD)
        afp = aiofile.AIOFile(path, "r+b", context=context)
        await afp.open()
        return cls(name, path, afp)

    async def commit(self, slot: int, rec: bytes) -> None:
        await self.afp.write_bytes(rec, slot * RECORD)
        await self.afp.fdsync()

    async def aclose(self) -> None:
        await self.afp.close()

    def headers(self, slots: int) -> list[tuple[int, int]]:
        return stored_headers(self.path, slots)


class SqliteTarget(Target):
    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self.lock = anyio.Lock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        assert mode == "wal", mode
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE records (slot INTEGER PRIMARY KEY, data BLOB NOT NULL)")

    def _replace(self, slot: int, rec: bytes) -> None:
        self.db.execute("REPLACE INTO records VALUES (?, ?)", (slot, rec))

    async def commit(self, slot: int, rec: bytes) -> None:
        async with self.lock:
            await anyio.to_thread.run_sync(self._replace, slot, rec)

    async def aclose(self) -> None:
        self.db.close()

    def headers(self, slots: int) -> list[tuple[int, int]]:
        db = sqlite3.connect(self.path)
        try:
            rows = dict(db.execute("SELECT slot, data FROM records WHERE slot < ?", (slots,)))
        finally:
            db.close()
        return [_HEADER.unpack_from(rows[i]) for i in range(slots)]


async def timed_run(target: Target, committers: int, lag: bool) -> tuple[Run, list[int]]:
    """Every committer commits once (untimed), then all commit in a loop for DURATION
    seconds.  Returns the run and each committer's last sequence number."""
    async with anyio.create_task_group() as tg:
        for slot in range(committers):
            tg.start_soon(target.commit, slot, record(slot, 0))
    msyncs, batches = target.counters()
    latencies: list[float] = []
    last = [0] * committers
    deadline = 0.0

    async def committer(slot: int) -> None:
        sequence = 0
        while time.perf_counter() < deadline:
            sequence += 1
            rec = record(slot, sequence)
            began = time.perf_counter()
            await target.commit(slot, rec)
            latencies.append(time.perf_counter() - began)
        last[slot] = sequence

    async with AsyncExitStack() as stack:
        beat = await stack.enter_async_context(heartbeat()) if lag else None
        start = time.perf_counter()
        deadline = start + DURATION
        async with anyio.create_task_group() as tg:
            for slot in range(committers):
                tg.start_soon(committer, slot)
        elapsed = time.perf_counter() - start
    run = summarize(latencies, elapsed)
    if beat is not None:
        run.lag = beat.worst
    after_msyncs, after_batches = target.counters()
    run.msyncs, run.batches = after_msyncs - msyncs, after_batches - batches
    return run, last


@dataclass
class Results:
    #: committers -> candidate -> the best run (its lag: the worst over the runs)
    cells: dict[int, dict[str, Run]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    prefill: dict[str, dict[str, Run]] = field(default_factory=dict)
    create: dict[str, float] = field(default_factory=dict)
    #: (what, file size) -> seconds of each run
    spans: dict[tuple[str, int], list[float]] = field(default_factory=dict)

    def keep(self, committers: int, name: str, run: Run) -> None:
        row = self.cells.setdefault(committers, {})
        old = row.get(name)
        if old is None:
            row[name] = run
            return
        lag = None if run.lag is None else max(run.lag, old.lag or 0.0)
        best = old if old.rate >= run.rate else run
        best.lag = lag
        row[name] = best


async def open_targets(scratch: Path, label: str, stack: AsyncExitStack) -> list[list[Target]]:
    """The candidates of ``label``'s loop, in groups: each group but the last runs alone
    and is followed by a pause (aiofile's SQPOLL ring)."""
    suffix = "" if label == "asyncio" else f" on {label}"
    group = await MapTarget.open(GROUP + suffix, scratch / f"group-{label}.bin", per_call=False)
    targets: list[Target] = [group]
    if label != "asyncio":
        stack.push_async_callback(check_and_close, group)
        return [targets]
    import aiofile
    import aiofiles
    import caio

    targets.append(await MapTarget.open(PER_CALL, scratch / "per-call.bin", per_call=True))

    async def open_aiofiles(path: Path) -> Any:
        return await aiofiles.open(path, "r+b", buffering=0)

    async def close_aiofiles(f: Any) -> None:
        await f.close()

    async def open_anyio(path: Path) -> Any:
        return await anyio.open_file(path, "r+b", buffering=0)

    async def close_anyio(f: Any) -> None:
        await f.aclose()

    targets += [
        await HandleTarget.open(AIOFILES, scratch / "aiofiles.bin", open_aiofiles, close_aiofiles),
        await HandleTarget.open(ANYIO, scratch / "anyio.bin", open_anyio, close_anyio),
    ]
    default = aiofile.aio.get_default_context()
    sqpoll = bool(getattr(default.context, "sqpoll", False))
    alone: list[Target] = []
    if sqpoll:
        alone.append(await AiofileTarget.open(AIOFILE_SQPOLL, scratch / "aiofile.bin", default))
        ring = caio.AsyncioContext(sqpoll=False)
        stack.callback(ring.close)
        targets.append(await AiofileTarget.open(AIOFILE_PLAIN, scratch / "plain.bin", ring))
    else:
        targets.append(await AiofileTarget.open(AIOFILE, scratch / "aiofile.bin", default))
    targets.append(SqliteTarget(SQLITE, scratch / "records.sqlite"))
    for target in [*alone, *targets]:
        stack.push_async_callback(check_and_close, target)
    return [alone, targets] if alone else [targets]


async def check_and_close(target: Target) -> None:
    """Close ``target``, then check that each slot holds its committer's last record."""
    await target.aclose()
    last = getattr(target, "last", [])
    assert target.headers(len(last)) == list(enumerate(last)), target.name


async def commits(label: str, results: Results, scratch: Path) -> None:
    async with AsyncExitStack() as stack:
        groups = await open_targets(scratch, label, stack)
        if label == "asyncio":
            import aiofile

            default = aiofile.aio.get_default_context()
            backend = type(default).__module__.removesuffix("_asyncio")
            if getattr(default.context, "sqpoll", False):
                backend += " with an SQPOLL kernel thread"
            results.notes.append(f"(aiofile's default context: {backend})")
        for committers in COMMITTERS:
            for _ in range(ROUNDS):
                for i, group in enumerate(groups):
                    for target in group:
                        run, target.last = await timed_run(
                            target, committers, committers == LAG_AT
                        )
                        results.keep(committers, target.name, run)
                    if i < len(groups) - 1:
                        await anyio.sleep(SQPOLL_SETTLE)
                if committers == LAG_AT:
                    async with heartbeat() as beat:
                        await anyio.sleep(DURATION)
                    idle = IDLE if label == "asyncio" else f"{IDLE} on {label}"
                    results.keep(committers, idle, Run(rate=0.0, p50=0.0, p99=0.0, lag=beat.worst))


# -- 2. prefill --------------------------------------------------------------------------


async def serial_commits(m: anymmap.MmapRaw, sequence: int) -> Run:
    latencies: list[float] = []
    start = time.perf_counter()
    for slot in range(PREFILL_COMMITS):
        offset = slot * RECORD
        rec = record(slot, sequence)
        began = time.perf_counter()
        await m.update_region(offset, rec)
        await m.flush_range(offset, RECORD)
        latencies.append(time.perf_counter() - began)
    return summarize(latencies, time.perf_counter() - start)


async def prefill(results: Results, scratch: Path) -> None:
    for _ in range(PREFILL_ROUNDS):
        for how in PREFILLS:
            path = scratch / f"prefill-{how}.bin"
            start = time.perf_counter()
            m = await anymmap.MmapRaw.create(path, PREFILL_SIZE, prefill=how)
            took = time.perf_counter() - start
            try:
                first = await serial_commits(m, 1)
                again = await serial_commits(m, 2)
                assert await m.read(RECORD, _HEADER.size) == _HEADER.pack(1, 2)
            finally:
                await m.aclose()
                path.unlink()
            results.create[how] = min(results.create.get(how, took), took)
            runs = results.prefill.setdefault(how, {})
            for kind, run in (("first", first), ("rewrite", again)):
                if kind not in runs or run.rate > runs[kind].rate:
                    runs[kind] = run


# -- 3. one msync over a span --------------------------------------------------------


SPAN = f"one msync over the span of the {SPAN_PAGES} pages"
EACH = f"{SPAN_PAGES} msync calls of 4 KiB"
CLEAN = "one msync of the whole map, no page dirty"


async def spans(results: Results, scratch: Path) -> None:
    for size in SPAN_SIZES:
        path = scratch / "span.bin"
        m = await anymmap.MmapRaw.create(path, size)
        try:
            await span_runs(results, m, size)
        finally:
            await m.aclose()
            path.unlink()


async def span_runs(results: Results, m: anymmap.MmapRaw, size: int) -> None:
    core = m._core
    slots = sorted(random.Random(0).sample(range(size // RECORD), SPAN_PAGES))
    offsets = [slot * RECORD for slot in slots]
    start, end = offsets[0], offsets[-1] + RECORD

    def one_span() -> None:
        core.flush(start, end - start, True)

    def each() -> None:
        for offset in offsets:
            core.flush(offset, RECORD, True)

    def whole() -> None:
        core.flush(0, size, True)

    for offset in offsets:  # the first write into each block, untimed
        await m.update_region(offset, record(0, 0))
    await m.flush()
    sequence = 0
    for _ in range(SPAN_RUNS):
        for what, sync in ((SPAN, one_span), (EACH, each)):
            sequence += 1
            for offset in offsets:
                await m.update_region(offset, record(offset // RECORD, sequence))
            began = time.perf_counter()
            await anyio.to_thread.run_sync(sync)
            results.spans.setdefault((what, size), []).append(time.perf_counter() - began)
    if size == SPAN_SIZES[-1]:
        for _ in range(SPAN_RUNS):
            began = time.perf_counter()
            await anyio.to_thread.run_sync(whole)
            results.spans.setdefault((CLEAN, size), []).append(time.perf_counter() - began)


async def main(label: str, results: Results, scratch: Path) -> None:
    await commits(label, results, scratch)
    if label == "asyncio":
        await prefill(results, scratch)
        await spans(results, scratch)


# -- report ------------------------------------------------------------------------------


def commit_tables(results: Results, out: list[str]) -> None:
    for committers, row in results.cells.items():
        lag = committers == LAG_AT
        columns: tuple[str, ...] = ("candidate", "commits/s", "p50", "p99", "rate ratio")
        if lag:
            columns += ("worst loop lag",)
        noun = "committer" if committers == 1 else "committers"
        table = Table(
            f"Durable 4 KiB commits, {committers} concurrent {noun} (best of {ROUNDS} runs "
            f"of {DURATION} s; rate ratio: commits/s relative to the first row)",
            columns=columns,
        )
        base = row[GROUP].rate
        for name in sorted(row, key=ORDER.index):
            run = row[name]
            if name.startswith(IDLE):
                table.add(name, "-", "-", "-", "-", fmt_time(run.lag or 0.0))
                continue
            cells: tuple[str, ...] = (
                name,
                rate_text(run.rate),
                fmt_time(run.p50),
                fmt_time(run.p99),
                f"{run.rate / base:.2f}x",
            )
            if lag:
                cells += (fmt_time(run.lag or 0.0),)
            table.add(*cells)
        out.append(table.render())
    lines = []
    for committers, row in results.cells.items():
        for name in sorted(row, key=ORDER.index):
            run = row[name]
            if GROUP not in name or not run.batches:
                continue
            where = name.removeprefix(GROUP).removeprefix(" on ") or "asyncio"
            lines.append(
                f"group commit, {committers} committers on {where}: {run.commits:,} commits "
                f"in {run.batches:,} batches and {run.msyncs:,} msyncs "
                f"({run.commits / max(run.msyncs, 1):.1f} commits per msync)"
            )
    out.append("\n".join([*lines, *results.notes]) + "\n")


def prefill_table(results: Results, out: list[str]) -> None:
    table = Table(
        f"prefill: MmapRaw.create of {PREFILL_SIZE // MiB} MiB, then {PREFILL_COMMITS} "
        f"serial 4 KiB commits into fresh blocks, then rewritten (best of {PREFILL_ROUNDS})",
        columns=(
            "prefill",
            "create",
            "first writes/s",
            "p50",
            "p99",
            "rewrites/s",
            "p50 (rewrite)",
            "p99 (rewrite)",
        ),
    )
    for how in PREFILLS:
        first, again = results.prefill[how]["first"], results.prefill[how]["rewrite"]
        table.add(
            repr(how),
            fmt_time(results.create[how]),
            rate_text(first.rate),
            fmt_time(first.p50),
            fmt_time(first.p99),
            rate_text(again.rate),
            fmt_time(again.p50),
            fmt_time(again.p99),
        )
    out.append(table.render())
    allocate, zeros = results.prefill["allocate"]["first"], results.prefill["zeros"]["first"]
    out.append(
        f"first writes into allocated blocks run at {allocate.rate / zeros.rate:.2f}x the "
        f"rate into zero-filled ones; creating with 'allocate' takes "
        f"{results.create['allocate'] / results.create['zeros']:.2f}x the time of 'zeros'\n"
    )


def span_table(results: Results, out: list[str]) -> None:
    table = Table(
        f"{SPAN_PAGES} dirty 4 KiB pages at random slots, made durable (median of "
        f"{SPAN_RUNS}; ratio relative to one msync over the span)",
        columns=("file", "method", "time", "ratio"),
    )
    for size in SPAN_SIZES:
        base = statistics.median(results.spans[SPAN, size])
        for what in (SPAN, EACH, CLEAN):
            if (what, size) in results.spans:
                took = statistics.median(results.spans[what, size])
                table.add(size_name(size), what, fmt_time(took), f"{took / base:.2f}x")
    out.append(table.render())


def aims(results: Results, out: list[str]) -> None:
    row = results.cells[LAG_AT]
    group = row[GROUP]
    lines = []
    times = group.rate / row[PER_CALL].rate
    lines.append(
        f"aim: group commit vs one msync per call, {LAG_AT} committers: {times:.1f}x the "
        f"commits/s (aim >= 3x): {'met' if times >= 3 else 'MISSED'}"
    )
    for rival in (SQLITE, AIOFILES, AIOFILE, AIOFILE_SQPOLL, AIOFILE_PLAIN):
        if rival in row:
            times = group.rate / row[rival].rate
            lines.append(
                f"aim: group commit vs {rival}, {LAG_AT} committers: {times:.2f}x the "
                f"commits/s (aim > 1x): {'met' if times > 1 else 'MISSED'}"
            )
    worst = group.lag or 0.0
    lines.append(
        f"aim: event loop's worst lag during the {LAG_AT}-committer group-commit run: "
        f"{fmt_time(worst)} (aim <= 5 ms): {'met' if worst <= 0.005 else 'MISSED'} "
        f"(the idle loop's: {fmt_time(row[IDLE].lag or 0.0)}; one msync per call: "
        f"{fmt_time(row[PER_CALL].lag or 0.0)})"
    )
    out.append("\n".join(lines) + "\n")


def run() -> list[str]:
    out: list[str] = []
    results = Results()
    parent = scratch_parent()
    with tempfile.TemporaryDirectory(prefix="anymmap-bench-", dir=parent) as scratch_dir:
        scratch = Path(scratch_dir)
        out.append(f"(scratch files in {parent}, a {fs_type(parent)} file system)\n")
        floor = anchor(scratch)
        note = on_every_backend(main, results, scratch)
        if note:
            results.notes.append(note)
    table = Table(
        f"The disk's own rate (best of {ROUNDS} runs of {DURATION} s)",
        columns=("anchor", "commits/s", "p50", "p99"),
    )
    table.add(ANCHOR, rate_text(floor.rate), fmt_time(floor.p50), fmt_time(floor.p99))
    out.append(table.render())
    commit_tables(results, out)
    prefill_table(results, out)
    span_table(results, out)
    aims(results, out)
    best = results.cells[LAG_AT][GROUP].rate
    out.append(
        f"(group commit with {LAG_AT} committers: {best / floor.rate:.1f}x the anchor's "
        "durable writes per second)\n"
    )
    return out


if __name__ == "__main__":
    print("# Durable-commit benchmark (group commit; rate ratios relative to the first row)\n")
    for section in run():
        print(section)
