"""anymmap.MmapRegion: growing a shared region without moving it, how fast another process
follows the growth, and a message round trip through a region against a pipe and a socket.

Run: python benchmarks/bench_region.py
(the growing files go to a temporary directory next to the checkout, on the real disk,
not on /dev/shm: a tmpfs backs allocated blocks with memory, so 16 GiB there would be
16 GiB of RAM; set ANYMMAP_BENCH_DIR to put them elsewhere.  Section 3's one-page region
goes to /dev/shm.)

1. Growth from 1 GiB to 16 GiB in 1 GiB steps of a region file created on the disk
   (``MmapRegion.create(path, 1 GiB, max_size=16 GiB)``): the time of each ``await
   region.resize(n)`` (which allocates the new blocks with ``posix_fallocate`` in a worker
   thread, then maps them right after the old ones, inside the reservation), of each
   ``region.resize(n)`` of the blocking twin ``anymmap.sync.MmapRegion``, and of the
   stdlib way the seed grew a region: ``os.posix_fallocate`` of the new gigabyte, then
   ``close()`` of the old ``mmap.mmap`` and a new ``mmap.mmap(fd, n)`` of the whole file
   (the kernel picks a new address: the base moves).  After each step (untimed) the base
   address is compared with the one before it and 8 bytes are written at the new tail.
   Each candidate runs 5 times, interleaved, each time on a fresh file (deleted after);
   a step's figure is its best over the runs.  The per-step table is followed by min /
   median / max over the 15 steps, how many of the 75 steps moved the base, and the
   aims: anymmap's step cost is flat (the slowest step takes at most 3x the fastest) and
   its base never moves.  The blocks come from whatever file system the disk has:
   ``posix_fallocate`` is most of every row's cost, and its own cost varies.

2. How long a guest process takes to see growth: a host grows a region on the disk from
   1 GiB to 16 GiB in 1 GiB steps with ``await region.resize(n)`` and writes 8 bytes at
   the new tail; after each step it tells three guests, real second processes attached
   to the file and driven over pipes, one after the other.  Each guest times (in the
   guest, with ``time.perf_counter``) what it does to follow, then reads the new tail and
   checks it: ``region.check_and_remap()`` of ``anymmap.sync.MmapRegion``, ``await
   region.check_and_remap()`` of ``anymmap.MmapRegion`` on the same event loop as the
   host (mapping the new pages runs in a worker thread), and, as the stdlib reference,
   ``os.fstat`` then ``close()`` and a new ``mmap.mmap(fd, size)``.  Reported: min /
   median / max over the 15 steps and how many steps moved the guest's base; then the
   common poll, a ``check_and_remap()`` that finds no growth (one ``fstat``; the async one
   adds a checkpoint), as the best per-call time of 5 rounds of 10,000 (stdlib: an
   ``os.fstat(fd).st_size`` compared with the map's length).  No aim.

3. The round trip of a 64-byte message between two processes, without an event loop:
   through a one-page region on /dev/shm, where each side spins on its own
   ``anymmap.sync.MmapRegion`` handle (the ping side writes the message with
   ``update_region_nowait`` into its slot, the pong side spins on ``read_into_nowait`` of
   that slot until it holds the expected message, then writes it back into a second slot,
   where the ping side spins the same way; these are the fault-safe copies: on a tmpfs,
   which refuses ``RWF_NOWAIT``, each read is a ``mincore`` and a ``pread``, each write a
   ``mincore`` and a ``process_vm_writev``), against
   ``multiprocessing.Pipe`` (``send_bytes`` / ``recv_bytes``), a ``socket.socketpair``
   of ``AF_UNIX`` stream sockets (``sendall`` / ``recv_into`` until 64 bytes) and, as
   the floor of shared memory, two stdlib ``mmap.mmap`` of the same file spinning the
   same way with slice copies.  The message is its 8-byte sequence number repeated 8
   times; a reader accepts only the whole expected message, so a torn copy (the end
   already new, the start still old) is counted and read again, never taken.  Each
   transport makes 1,000 round trips of warm-up, then 10,000 timed one by one; reported
   are the median, the 99th percentile and the ratio of medians to the region's.  The
   busy-waiting rows keep both cores of a 2-core machine busy (one process each), which
   is fine for two processes but would not be with more peers than cores: when any third
   process wants a core, a spinning side loses its own for a scheduler tick, which shows
   in their 99th percentile.  The pipe and socket rows sleep in the kernel between
   messages.  No aim.

Sections 1 and 2 run on asyncio, asyncio+uvloop (if uvloop is installed) and trio;
section 3 once.
"""

from __future__ import annotations

import ctypes
import faulthandler
import mmap
import multiprocessing.connection
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
from anyio import WouldBlock
from anyio.streams.buffered import BufferedByteReceiveStream

sys.path.insert(0, __file__.rpartition("/")[0])

from _harness import Table, fmt_time, fs_type, on_every_backend, scratch_parent

import anymmap
import anymmap.sync

GiB = 1 << 30

#: Sections 1 and 2: the sizes the regions go through.
GROWTH_START = 1 * GiB
GROWTH_STEP = 1 * GiB
GROWTH_END = 16 * GiB
GROWTH_RUNS = 5
#: The aim: the slowest anymmap step takes at most this many times the fastest.
FLAT_AIM = 3.0
TAIL = 8  # bytes written at each new end, and read back by the guests

#: Section 2: the no-growth poll.
POLL_OPS = 10_000
POLL_ROUNDS = 5

#: Section 3 (a side that spins longer than HANG seconds dumps its stack and exits: the
#: other side died).
HANG = 120.0
MESSAGE = 64
PING_AT = 0  # the ping side's slot
PONG_AT = 128  # the pong side's slot, two cache lines further
WARMUP = 1_000
ROUND_TRIPS = 10_000


def steps() -> list[int]:
    return list(range(GROWTH_START + GROWTH_STEP, GROWTH_END + 1, GROWTH_STEP))


def shm_parent() -> str | None:
    """Where section 3's region goes: /dev/shm if there is one, else the default."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else None


def stdlib_base(m: mmap.mmap) -> int:
    """The address of a stdlib map's first byte (the buffer export ends at once)."""
    byte = ctypes.c_char.from_buffer(m)
    try:
        return ctypes.addressof(byte)
    finally:
        del byte


def tail_of(size: int) -> bytes:
    """What goes into the last ``TAIL`` bytes of a region of ``size`` bytes."""
    return size.to_bytes(TAIL, "little")


def message(seq: int) -> bytes:
    """Section 3's message number ``seq``: its sequence number, 8 times."""
    return seq.to_bytes(8, "little") * (MESSAGE // 8)


def spread(times: list[float]) -> tuple[str, str, str]:
    return (
        fmt_time(min(times)),
        fmt_time(statistics.median(times)),
        fmt_time(max(times)),
    )


# -- 1. growth ----------------------------------------------------------------------------


@dataclass
class Growth:
    """One candidate's runs: the best time of each step, and how many steps moved."""

    best: list[float] = field(default_factory=lambda: [float("inf")] * len(steps()))
    moved: int = 0
    total: int = 0  # steps run, over all the runs

    def add(self, times: list[float], moved: int) -> None:
        self.best = [min(a, b) for a, b in zip(self.best, times, strict=True)]
        self.moved += moved
        self.total += len(times)


async def grow_ours(path: Path) -> tuple[list[float], int]:
    times: list[float] = []
    moved = 0
    async with await anymmap.MmapRegion.create(path, GROWTH_START, max_size=GROWTH_END) as r:
        first = base = r.as_ptr()
        before = r.region()  # a Region taken before any growth
        for size in steps():
            start = time.perf_counter()
            await r.resize(size)
            times.append(time.perf_counter() - start)
            moved += r.as_ptr() != base
            base = r.as_ptr()
            await r.update_region(size - TAIL, tail_of(size))
        assert before.address == first
        assert await r.read(GROWTH_END - TAIL, TAIL) == tail_of(GROWTH_END)
    assert not path.exists()  # the creator owned it and deleted it at close
    return times, moved


async def grow_twin(path: Path) -> tuple[list[float], int]:
    times: list[float] = []
    moved = 0
    with anymmap.sync.MmapRegion.create(path, GROWTH_START, max_size=GROWTH_END) as r:
        base = r.as_ptr()
        for size in steps():
            start = time.perf_counter()
            r.resize(size)
            times.append(time.perf_counter() - start)
            moved += r.as_ptr() != base
            base = r.as_ptr()
            r.update_region(size - TAIL, tail_of(size))
        assert r.read(GROWTH_END - TAIL, TAIL) == tail_of(GROWTH_END)
    assert not path.exists()
    return times, moved


async def grow_stdlib(path: Path) -> tuple[list[float], int]:
    times: list[float] = []
    moved = 0
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.posix_fallocate(fd, 0, GROWTH_START)
        m = mmap.mmap(fd, GROWTH_START)
        try:
            base = stdlib_base(m)
            for size in steps():
                start = time.perf_counter()
                os.posix_fallocate(fd, len(m), size - len(m))
                m.close()
                m = mmap.mmap(fd, size)
                times.append(time.perf_counter() - start)
                moved += stdlib_base(m) != base
                base = stdlib_base(m)
                m[size - TAIL : size] = tail_of(size)
            assert m[GROWTH_END - TAIL : GROWTH_END] == tail_of(GROWTH_END)
        finally:
            m.close()
    finally:
        os.close(fd)
        path.unlink()
    return times, moved


async def growth(label: str, out: list[str], scratch: Path) -> None:
    candidates: dict[str, Callable[[Path], Awaitable[tuple[list[float], int]]]] = {
        "anymmap await resize": grow_ours,
        "anymmap.sync resize": grow_twin,
        "stdlib fallocate + close + mmap": grow_stdlib,
    }
    results = {name: Growth() for name in candidates}
    for _ in range(GROWTH_RUNS):
        for name, grow in candidates.items():
            times, moved = await grow(scratch / "growing.bin")
            results[name].add(times, moved)

    per_step = Table(
        f"Growth 1 GiB -> 16 GiB on {label}: each step's time (best of {GROWTH_RUNS} runs)",
        columns=("step", *candidates),
    )
    for i, size in enumerate(steps()):
        per_step.add(
            f"{(size - GROWTH_STEP) // GiB} -> {size // GiB} GiB",
            *(fmt_time(results[name].best[i]) for name in candidates),
        )
    out.append(per_step.render())

    summary = Table(
        f"Growth 1 GiB -> 16 GiB on {label}: over the 15 steps",
        columns=("candidate", "min", "median", "max", "max / min", "steps that moved the base"),
    )
    for name, result in results.items():
        summary.add(
            name,
            *spread(result.best),
            f"{max(result.best) / min(result.best):.2f}x",
            f"{result.moved} of {result.total}",
        )
    out.append(summary.render())
    aims = []
    for name in list(candidates)[:2]:
        result = results[name]
        flat = max(result.best) / min(result.best)
        aims.append(
            f"aim: {name.removeprefix('anymmap ')} step cost flat: the slowest step "
            f"{flat:.2f}x the fastest (aim <= {FLAT_AIM:.0f}x): "
            f"{'met' if flat <= FLAT_AIM else 'MISSED'}"
        )
        aims.append(
            f"aim: {name.removeprefix('anymmap ')} base unchanged at every step: moved at "
            f"{result.moved} of {result.total}: {'met' if result.moved == 0 else 'MISSED'}"
        )
    out.append("\n".join(aims) + "\n")


# -- 2. a guest following the growth ----------------------------------------------------------


class Guest:
    """A second process attached to a region file, driven one line at a time."""

    def __init__(self, process: anyio.abc.Process) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self.process = process
        self.stdin = process.stdin
        self.stdout = BufferedByteReceiveStream(process.stdout)

    @classmethod
    async def start(cls, kind: str, path: Path) -> Guest:
        command = [sys.executable, __file__, "--guest", kind, str(path)]
        guest = cls(await anyio.open_process(command, stderr=None))
        ready = await guest.line()
        assert ready == "attached", ready
        return guest

    async def line(self) -> str:
        return (await self.stdout.receive_until(b"\n", 1 << 16)).decode()

    async def ask(self, command: str) -> str:
        await self.stdin.send(command.encode() + b"\n")
        return await self.line()

    async def close(self) -> None:
        await self.stdin.aclose()  # the guest ends at the end of its input
        code = await self.process.wait()
        await self.process.aclose()
        assert code == 0, f"a guest exited with status {code}"


async def following(label: str, out: list[str], scratch: Path) -> None:
    kinds = {
        "anymmap.sync check_and_remap()": "sync",
        f"anymmap await check_and_remap() ({label})": label,
        "stdlib fstat + close + mmap": "stdlib",
    }
    follow: dict[str, list[float]] = {name: [] for name in kinds}
    moved = dict.fromkeys(kinds, 0)
    polls: dict[str, float] = {}
    path = scratch / "shared.bin"
    async with await anymmap.MmapRegion.create(path, GROWTH_START, max_size=GROWTH_END) as host:
        guests = {name: await Guest.start(kind, path) for name, kind in kinds.items()}
        try:
            base = host.as_ptr()
            for size in steps():
                await host.resize(size)
                await host.update_region(size - TAIL, tail_of(size))
                for name, guest in guests.items():
                    seconds, did_move = (await guest.ask(f"follow {size}")).split()
                    follow[name].append(float(seconds))
                    moved[name] += did_move == "moved"
            assert host.as_ptr() == base
            for name, guest in guests.items():
                polls[name] = float(await guest.ask(f"poll {POLL_OPS} {POLL_ROUNDS}"))
        finally:
            for guest in guests.values():
                await guest.close()
    assert not path.exists()

    table = Table(
        f"A guest process following the growth 1 GiB -> 16 GiB on {label} (timed in the guest)",
        columns=(
            "guest",
            "follow: min",
            "median",
            "max",
            "steps that moved its base",
            f"poll, no growth (best of {POLL_ROUNDS} x {POLL_OPS})",
        ),
    )
    for name in kinds:
        table.add(
            name, *spread(follow[name]), f"{moved[name]} of {len(steps())}", fmt_time(polls[name])
        )
    out.append(table.render())


def best_per_call(call: Callable[[], object], ops: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(ops):
            call()
        best = min(best, (time.perf_counter() - start) / ops)
    return best


def guest_sync(path: str) -> None:
    with anymmap.sync.MmapRegion.attach(path) as region:
        base = region.as_ptr()
        print("attached", flush=True)
        for line in sys.stdin:
            command, *args = line.split()
            if command == "follow":
                size = int(args[0])
                start = time.perf_counter()
                grew = region.check_and_remap()
                seconds = time.perf_counter() - start
                assert grew
                assert len(region) == size
                assert region.read(size - TAIL, TAIL) == tail_of(size)
                where = "moved" if region.as_ptr() != base else "same"
                print(seconds, where, flush=True)
            elif command == "poll":

                def poll() -> None:
                    assert not region.check_and_remap()

                print(best_per_call(poll, int(args[0]), int(args[1])), flush=True)


async def guest_async(path: str) -> None:
    async with await anymmap.MmapRegion.attach(path) as region:
        base = region.as_ptr()
        print("attached", flush=True)
        while line := await anyio.to_thread.run_sync(sys.stdin.readline):
            command, *args = line.split()
            if command == "follow":
                size = int(args[0])
                start = time.perf_counter()
                grew = await region.check_and_remap()
                seconds = time.perf_counter() - start
                assert grew
                assert len(region) == size
                assert await region.read(size - TAIL, TAIL) == tail_of(size)
                where = "moved" if region.as_ptr() != base else "same"
                print(seconds, where, flush=True)
            elif command == "poll":
                ops, rounds = int(args[0]), int(args[1])
                best = float("inf")
                for _ in range(rounds):
                    start = time.perf_counter()
                    for _ in range(ops):
                        assert not await region.check_and_remap()
                    best = min(best, (time.perf_counter() - start) / ops)
                print(best, flush=True)


def guest_stdlib(path: str) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    m = mmap.mmap(fd, 0)
    try:
        print("attached", flush=True)
        for line in sys.stdin:
            command, *args = line.split()
            if command == "follow":
                size = int(args[0])
                base = stdlib_base(m)
                start = time.perf_counter()
                now = os.fstat(fd).st_size
                if now > len(m):
                    m.close()
                    m = mmap.mmap(fd, now)
                seconds = time.perf_counter() - start
                assert len(m) == size
                assert m[size - TAIL : size] == tail_of(size)
                where = "moved" if stdlib_base(m) != base else "same"
                print(seconds, where, flush=True)
            elif command == "poll":

                def poll(m: mmap.mmap = m) -> None:
                    assert os.fstat(fd).st_size <= len(m)

                print(best_per_call(poll, int(args[0]), int(args[1])), flush=True)
    finally:
        m.close()
        os.close(fd)


def guest_main(kind: str, path: str) -> None:
    if kind == "sync":
        guest_sync(path)
    elif kind == "stdlib":
        guest_stdlib(path)
    elif kind == "asyncio+uvloop":
        anyio.run(guest_async, path, backend="asyncio", backend_options={"use_uvloop": True})
    else:
        anyio.run(guest_async, path, backend=kind)


# -- 3. round trips -----------------------------------------------------------------------


@dataclass
class Trips:
    times: list[float]  # seconds per timed round trip
    torn: int = 0  # reads that saw a message half written, on this side


class Transport:
    """One side of a way to move 64-byte messages: send one, wait for one."""

    torn = 0

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def wait_for(self, expected: bytes, buf: bytearray) -> None:
        raise NotImplementedError


class RegionSide(Transport):
    def __init__(self, region: anymmap.sync.MmapRegion, mine: int, theirs: int) -> None:
        self.region, self.mine, self.theirs = region, mine, theirs

    def send(self, data: bytes) -> None:
        try:
            self.region.update_region_nowait(self.mine, data)
        except WouldBlock:  # a page not in memory: not after the first write
            self.region.update_region(self.mine, data)

    def wait_for(self, expected: bytes, buf: bytearray) -> None:
        read, at, tail = self.region.read_into_nowait, self.theirs, expected[-8:]
        while True:
            try:
                read(at, buf)
            except WouldBlock:
                continue
            if buf == expected:
                return
            if buf[-8:] == tail:
                self.torn += 1


class StdlibMmapSide(Transport):
    def __init__(self, m: mmap.mmap, mine: int, theirs: int) -> None:
        self.m, self.mine, self.theirs = m, mine, theirs

    def send(self, data: bytes) -> None:
        self.m[self.mine : self.mine + MESSAGE] = data

    def wait_for(self, expected: bytes, buf: bytearray) -> None:
        m, start, end, tail = self.m, self.theirs, self.theirs + MESSAGE, expected[-8:]
        while True:
            got = m[start:end]
            if got == expected:
                return
            if got[-8:] == tail:
                self.torn += 1


class PipeSide(Transport):
    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn

    def send(self, data: bytes) -> None:
        self.conn.send_bytes(data)

    def wait_for(self, expected: bytes, buf: bytearray) -> None:
        assert self.conn.recv_bytes() == expected


class SocketSide(Transport):
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def wait_for(self, expected: bytes, buf: bytearray) -> None:
        view, got = memoryview(buf), 0
        while got < MESSAGE:
            n = self.sock.recv_into(view[got:])
            assert n, "the peer closed the socket"
            got += n
        assert buf == expected


def ping(side: Transport) -> Trips:
    buf = bytearray(MESSAGE)
    times: list[float] = []
    clock = time.perf_counter
    for seq in range(1, WARMUP + ROUND_TRIPS + 1):
        data = message(seq)
        start = clock()
        side.send(data)
        side.wait_for(data, buf)
        times.append(clock() - start)
    return Trips(times[WARMUP:], side.torn)


def pong(side: Transport) -> int:
    buf = bytearray(MESSAGE)
    for seq in range(1, WARMUP + ROUND_TRIPS + 1):
        data = message(seq)
        side.wait_for(data, buf)
        side.send(data)
    return side.torn


def pong_main(kind: str, where: str) -> None:
    faulthandler.dump_traceback_later(HANG, exit=True)
    side: Transport
    if kind == "region":
        with anymmap.sync.MmapRegion.attach(where) as region:
            print("attached", flush=True)
            torn = pong(RegionSide(region, PONG_AT, PING_AT))
    elif kind == "mmap":
        with open(where, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
            print("attached", flush=True)
            torn = pong(StdlibMmapSide(m, PONG_AT, PING_AT))
    elif kind == "pipe":
        side = PipeSide(multiprocessing.connection.Connection(int(where)))
        print("attached", flush=True)
        torn = pong(side)
    else:
        side = SocketSide(socket.socket(fileno=int(where)))
        print("attached", flush=True)
        torn = pong(side)
    print(torn, flush=True)


@contextmanager
def ponging(kind: str, where: str, pass_fds: tuple[int, ...] = ()) -> Iterator[Callable[[], int]]:
    """Start the pong process; yield a function that waits for it and returns its torn
    read count."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--pong", kind, where],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        pass_fds=pass_fds,
    )
    assert process.stdout is not None
    stdout = process.stdout

    def finish() -> int:
        torn = int(stdout.readline())
        assert process.wait(60) == 0
        return torn

    try:
        assert stdout.readline().strip() == "attached"
        yield finish
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stdout.close()


def trip_region(path: str) -> tuple[Trips, int]:
    with (
        anymmap.sync.MmapRegion.create(path, mmap.PAGESIZE) as region,
        ponging("region", path) as finish,
    ):
        trips = ping(RegionSide(region, PING_AT, PONG_AT))
        return trips, finish()


def trip_mmap(path: str) -> tuple[Trips, int]:
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m, ponging("mmap", path) as finish:
        trips = ping(StdlibMmapSide(m, PING_AT, PONG_AT))
        return trips, finish()


def trip_pipe() -> tuple[Trips, int]:
    mine, theirs = multiprocessing.Pipe()
    try:
        with ponging("pipe", str(theirs.fileno()), (theirs.fileno(),)) as finish:
            theirs.close()
            trips = ping(PipeSide(mine))
            return trips, finish()
    finally:
        mine.close()
        theirs.close()


def trip_socket() -> tuple[Trips, int]:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with mine, theirs, ponging("socket", str(theirs.fileno()), (theirs.fileno(),)) as finish:
        theirs.close()
        trips = ping(SocketSide(mine))
        return trips, finish()


def round_trips(out: list[str]) -> None:
    faulthandler.dump_traceback_later(HANG, exit=True)
    with tempfile.TemporaryDirectory(prefix="anymmap-bench-", dir=shm_parent()) as scratch:
        region_path = os.path.join(scratch, f"channel-{secrets.token_hex(4)}")
        runs: dict[str, Callable[[], tuple[Trips, int]]] = {
            "anymmap.sync.MmapRegion, both sides spin": lambda: trip_region(region_path),
            "multiprocessing.Pipe send_bytes / recv_bytes": trip_pipe,
            "socket.socketpair(AF_UNIX) sendall / recv_into": trip_socket,
        }
        results = {name: run() for name, run in runs.items()}
        # The stdlib floor needs a file of a page: the region's is gone with its owner.
        with open(region_path, "wb") as f:
            f.write(bytes(mmap.PAGESIZE))
        name = "reference: stdlib mmap.mmap of the same file, both sides spin"
        results[name] = trip_mmap(region_path)
        os.unlink(region_path)

    table = Table(
        f"Round trip of a {MESSAGE}-byte message between two processes (each of "
        f"{ROUND_TRIPS} after {WARMUP} of warm-up)",
        columns=("transport", "median", "99th percentile", "ratio", "torn reads (ping, pong)"),
    )
    base = statistics.median(next(iter(results.values()))[0].times)
    for name, (trips, pong_torn) in results.items():
        median = statistics.median(trips.times)
        table.add(
            name,
            fmt_time(median),
            fmt_time(statistics.quantiles(trips.times, n=100)[98]),
            f"{median / base:.2f}x",
            f"{trips.torn}, {pong_torn}",
        )
    out.append(table.render())
    faulthandler.cancel_dump_traceback_later()


# -- running ------------------------------------------------------------------------------


async def main(label: str, out: list[str], scratch: Path) -> None:
    out.append(f"## {label}\n")
    await growth(label, out, scratch)
    await following(label, out, scratch)


def run() -> list[str]:
    out: list[str] = []
    parent = scratch_parent()
    with tempfile.TemporaryDirectory(prefix="anymmap-bench-", dir=parent) as name:
        scratch = Path(name)
        out.append(f"(growing files in {parent}, a {fs_type(parent)} file system)\n")
        note = on_every_backend(main, out, scratch)
        if note:
            out.append(note + "\n")
        assert list(scratch.iterdir()) == []
    out.append("## No event loop\n")
    round_trips(out)
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--guest"]:
        guest_main(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["--pong"]:
        pong_main(sys.argv[2], sys.argv[3])
    else:
        print(
            "# MmapRegion benchmark (ratios relative to the first row; below 1 is faster "
            "than it)\n"
        )
        for section in run():
            print(section)
