"""Measurements the tests (and the benchmarks) make on the real process; no mocks of the OS."""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel

PAGE = os.sysconf("SC_PAGE_SIZE")
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
_libc.mincore.restype = ctypes.c_int


def resident_fraction(addr: int, length: int) -> float:
    """Fraction of the pages of [addr, addr + length) in memory, by mincore(2)."""
    start = addr - addr % PAGE
    pages = (addr + length - start + PAGE - 1) // PAGE
    vec = ctypes.create_string_buffer(pages)
    if _libc.mincore(start, pages * PAGE, vec) != 0:
        raise OSError(ctypes.get_errno(), "mincore")
    return sum(b & 1 for b in vec.raw[:pages]) / pages


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class _CacheStat(ctypes.Structure):
    _fields_ = [  # struct cachestat (linux/mman.h)
        ("nr_cache", ctypes.c_uint64),
        ("nr_dirty", ctypes.c_uint64),
        ("nr_writeback", ctypes.c_uint64),
        ("nr_evicted", ctypes.c_uint64),
        ("nr_recently_evicted", ctypes.c_uint64),
    ]


_SYS_CACHESTAT = 451  # the same number on every architecture (Linux 6.5+)


def unwritten_pages(fd: int, offset: int = 0, length: int = 0) -> int | None:
    """The pages of the file open as ``fd`` (of ``[offset, offset + length)``; length 0:
    to the end) that are dirty or under writeback in the page cache, by cachestat(2);
    None where the kernel lacks it.  (The kernel tracks dirtiness per folio, and a
    folio may be larger than a page: keep the places compared megabytes apart.)"""
    whole = (ctypes.c_uint64 * 2)(offset, length)  # struct cachestat_range
    out = _CacheStat()
    # SAFETY: both structures live in this frame for the call; the kernel writes only
    # sizeof(struct cachestat) bytes into ``out``.
    if _libc.syscall(_SYS_CACHESTAT, fd, ctypes.byref(whole), ctypes.byref(out), 0) != 0:
        return None
    return int(out.nr_dirty + out.nr_writeback)


_FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap)
_FIEMAP_FLAG_SYNC = 0x1
_FIEMAP_EXTENT_LAST = 0x1
_FIEMAP_EXTENT_UNWRITTEN = 0x800
_FIEMAP_HEADER = struct.Struct("=QQIIII")  # fm_start, fm_length, fm_flags, mapped, count, -
_FIEMAP_EXTENT = struct.Struct("=QQQQQI12x")  # logical, physical, length, -, -, fe_flags


def unwritten_extents(fd: int) -> bool | None:
    """Whether the file open as ``fd`` has unwritten extents (blocks allocated by
    ``posix_fallocate`` and not written yet), by the FS_IOC_FIEMAP ioctl after a sync;
    None where the file system cannot say (tmpfs)."""
    start = 0
    while True:
        count = 64
        buf = bytearray(_FIEMAP_HEADER.size + count * _FIEMAP_EXTENT.size)
        _FIEMAP_HEADER.pack_into(buf, 0, start, 2**64 - 1 - start, _FIEMAP_FLAG_SYNC, 0, count, 0)
        try:
            fcntl.ioctl(fd, _FS_IOC_FIEMAP, buf, True)
        except OSError:
            return None
        mapped = _FIEMAP_HEADER.unpack_from(buf)[3]
        if not mapped:
            return False
        for i in range(mapped):
            logical, _, length, _, _, flags = _FIEMAP_EXTENT.unpack_from(
                buf, _FIEMAP_HEADER.size + i * _FIEMAP_EXTENT.size
            )
            if flags & _FIEMAP_EXTENT_UNWRITTEN:
                return True
            if flags & _FIEMAP_EXTENT_LAST:
                return False
            start = logical + length


def is_mapped(addr: int) -> bool:
    """Whether addr lies in any mapping of this process (/proc/self/maps)."""
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                return True
    return False


TAG = os.urandom(16)
"""A random tag a test writes at offset ``TAG_AT`` of a map, to ask later whether that
map is still mapped (``holds_tag``): once a map is unmapped, the kernel gives its
addresses to the next mapping anyone makes (a Python arena, a thread's stack), so
"is anything mapped there" cannot tell a leaked map from a new one."""
TAG_AT = 8  # (page offset 8 is never an allocator's user data: a pool or chunk header)


def holds_tag(addr: int) -> bool:
    """Whether the map whose first byte was at ``addr`` (page-aligned) is still mapped:
    whether ``TAG`` still lies at ``addr + TAG_AT``, read through /proc/self/mem (which
    reports an unmapped or inaccessible address as an error, never a fault)."""
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    try:
        return os.pread(fd, len(TAG), addr + TAG_AT) == TAG
    except OSError:
        return False
    finally:
        os.close(fd)


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Checkpoint until ``predicate()`` holds: for states that wait_all_tasks_blocked()
    cannot see, such as a task whose work is in a worker thread right now."""
    with anyio.fail_after(10):
        while not predicate():
            await anyio.lowlevel.checkpoint()


class Heartbeat:
    """A task that sleeps 1 ms in a loop and records how late it wakes up."""

    def __init__(self) -> None:
        self.lags: list[float] = []

    @property
    def worst(self) -> float:
        return max(self.lags, default=0.0)

    async def run(self) -> None:
        while True:
            before = time.perf_counter()
            await anyio.sleep(0.001)
            self.lags.append(time.perf_counter() - before - 0.001)


async def assert_loop_keeps_running(
    operation: Callable[[], Awaitable[None]],
    prepare: Callable[[], Awaitable[None]] | None = None,
    attempts: int = 2,
) -> tuple[Heartbeat, float]:
    """Run ``operation`` under a heartbeat (after ``prepare``, outside it) and check it
    with :func:`assert_loop_kept_running`; returns the heartbeat and the duration.

    A stall the operation causes happens at every run; one that a busy machine's
    scheduling causes (a 176 ms gap in a 330 ms read, once, with two test runs and an
    adversary's probes sharing two cores) rarely twice: so it passes if one of
    ``attempts`` runs does.
    """
    for _ in range(attempts):
        if prepare is not None:
            await prepare()
        async with heartbeat() as beat:
            start = time.perf_counter()
            await operation()
            took = time.perf_counter() - start
        if beat.lags and beat.worst < took / 2:
            break
    assert_loop_kept_running(beat, took)
    return beat, took


def assert_loop_kept_running(beat: Heartbeat, took: float) -> None:
    """The event loop was never stalled for a large part of an operation that took
    ``took`` seconds.

    The operation's own duration is the control: a loop blocked by it (the GIL held
    through a system call, a page fault on the loop thread) misses its heartbeat for
    about ``took``; a free loop misses it only by scheduling noise, which grows with
    the machine's load as ``took`` does.  No absolute figure: those are in benchmarks/.
    """
    assert beat.lags, "the heartbeat never ran"
    assert beat.worst < took / 2, (
        f"the loop stalled for {beat.worst * 1e3:.1f} ms of a {took * 1e3:.1f} ms operation"
    )


@asynccontextmanager
async def heartbeat() -> AsyncIterator[Heartbeat]:
    beat = Heartbeat()
    async with anyio.create_task_group() as tg:
        tg.start_soon(beat.run)
        await anyio.sleep(0.01)  # let it settle
        beat.lags.clear()
        yield beat
        # Give the heartbeat a chance to wake (and record the lag) after the work ended.
        await anyio.sleep(0.005)
        tg.cancel_scope.cancel()


async def at_a_free_address(
    free_address: Callable[[], Awaitable[int]], attempt: Callable[[int], Awaitable[bool]]
) -> None:
    """Run ``attempt(addr)`` at an address just freed by ``free_address()`` until it
    returns True (it returns False when the address was no longer free).  Between
    freeing an address and mapping at it, another thread of the process (a worker
    starting, an allocator) may take part of it, so a few fresh addresses are tried."""
    import pytest

    for _ in range(10):
        if await attempt(await free_address()):
            return
    pytest.fail("no freed address stayed free in 10 tries")
