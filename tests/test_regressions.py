"""Regression tests for the hangs, crashes and wrong results found by adversarial testing.

Each test says what it guards.  Scenarios that crashed or hung the process run in a child
process (see ``_child``), so that a regression shows as an exit status and a stack dump.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import gc
import math
import mmap
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

import anyio
import anyio.abc
import numpy as np
import pytest

import anymmap
import anymmap.sync
from anymmap._core import _copier

from ._child import RUNNERS, check_child
from ._helpers import PAGE, unwritten_pages
from .conftest import ASYNCIO_BACKENDS

# -- hangs ------------------------------------------------------------------------------

_LOOP_ENDS_WHILE_WORKERS_RUN = """
    import os, sys, tempfile
    import anyio, anymmap
    from tests._child import exit_if_a_thread_is_left, run_loop, spawn_detached

    RUNNER, ENDING, WORK = sys.argv[1:4]
    path = tempfile.mktemp()

    async def copies(m):
        async with m:
            while True:
                await m.read(0, 2 << 20)  # above the inline limit: a worker thread

    async def flushes(m):
        async with m:
            while True:
                await m.update_region(0, b"x" * 64)
                await m.flush()

    def spawn(coro):
        spawn_detached(RUNNER, coro)

    async def main():
        for _ in range(6):
            if WORK == "copy":
                m = await anymmap.AnonymousMmap.new(4 << 20)
                spawn(copies(m))
            else:
                m = await anymmap.MmapRaw.map_raw(path)
                spawn(flushes(m))
        await anyio.sleep(0.01)
        if ENDING == "raises":
            raise RuntimeError("main failed")

    with open(path, "wb") as f:
        f.truncate(4096)
    for run in range(25):
        try:
            run_loop(RUNNER, main)
        except RuntimeError as exc:
            assert str(exc) == "main failed", exc
        # Every worker thread must have been told to stop: a stuck one waits forever,
        # and the interpreter would wait for it at exit.
        exit_if_a_thread_is_left(run)
    os.unlink(path)
    print("ok")
"""


@pytest.mark.parametrize("work", ["copy", "flush"])
@pytest.mark.parametrize("ending", ["returns", "raises"])
@pytest.mark.parametrize("runner", RUNNERS)
def test_interpreter_exits_when_the_loop_ends_during_worker_calls(
    runner: str, ending: str, work: str
) -> None:
    """Regression test: the interpreter hung at exit (12 of 45 runs) when a task still used
    a map as the loop ended; anyio's worker thread waited for a stop that never came,
    because the caller resumed before anyio's own task (the root of that worker) ended."""
    check_child(_LOOP_ENDS_WHILE_WORKERS_RUN, runner, ending, work)


_BORROW_ENDED_ELSEWHERE = """
    import gc, sys, threading
    import anyio, anymmap, anymmap.sync

    BACKEND, WRITABLE = sys.argv[1], sys.argv[2] == "mut"

    async def main():
        m = await anymmap.AnonymousMmap.new(4096)

        async def records():
            borrow = m.as_mut_slice(0, 16) if WRITABLE else m.as_slice(0, 16)
            async with borrow as view:
                yield bytes(view)
                yield bytes(view)

        async for _ in records():
            break  # no aclosing(): the generator is finalized by another task
        gc.collect()
        with anyio.fail_after(10):
            while m.lock.locked():  # the finalizer task runs the borrow's exit
                await anyio.sleep(0.01)
            await m.update_region(0, b"after")  # a writer gets in
            await m.resize(8192)
            await m.aclose()
        with anyio.fail_after(10):  # a direct release by a non-owner is still refused
            lock = anymmap.RWLock()
            await lock.acquire_read()
            async with anyio.create_task_group() as tg:
                async def other():
                    try:
                        lock.release_read()
                    except RuntimeError:
                        print("refused")
                tg.start_soon(other)
            lock.release_read()

    anyio.run(main, backend=BACKEND)

    m = anymmap.sync.AnonymousMmap.new(4096)
    def records():
        with (m.as_mut_slice(0, 16) if WRITABLE else m.as_slice(0, 16)) as view:
            yield bytes(view)
    gen = records()
    next(gen)
    closer = threading.Thread(target=gen.close)
    closer.start()
    closer.join()
    m.update_region(0, b"after")
    m.resize(8192)
    m.close()
    print("ok")
"""


@pytest.mark.parametrize("kind", ["read", "mut"])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_borrow_ended_by_another_task_or_thread_releases_its_lock(
    backend: str, kind: str
) -> None:
    """Regression test: an async generator finalized by another task (or a generator closed
    by another thread) inside a borrow raised "not holding the read lock" in the borrow's
    exit and left the lock held forever: every writer, resize and aclose then hung."""
    out = check_child(_BORROW_ENDED_ELSEWHERE, backend, kind)
    assert "refused" in out


_INDEX_CALLS_BACK = """
    import os, sys, tempfile
    import anyio, anyio.from_thread, anymmap, anymmap.sync

    path = tempfile.mktemp()
    with open(path, "wb") as f:
        f.truncate(1 << 16)

    class Evil:
        # An offset whose __index__ closes or resizes the map it is passed to.
        def __init__(self, action):
            self.action = action
        def __index__(self):
            self.action()
            return 0

    CALLS = {
        "advise": lambda m, i: m.advise(anymmap.Advice.RANDOM, i, 4096),
        "populate": lambda m, i: m.populate(i, 4096),
        "flush_range": lambda m, i: m.flush_range(i, 4096),
        "flush_async_range": lambda m, i: m.flush_async_range(i, 4096),
        "read": lambda m, i: m.read(i, 16),
        "update_region": lambda m, i: m.update_region(i, b"x"),
        "resize": lambda m, i: m.resize(i),
    }
    outcomes = set()
    for name, call in CALLS.items():
        for action in ("close", "resize"):
            m = anymmap.sync.MmapRaw.map_raw(path)
            act = m.close if action == "close" else (lambda: m.resize(1 << 15))
            try:
                call(m, Evil(act))
            except (RuntimeError, anymmap.AnymmapError) as exc:
                outcomes.add(type(exc).__name__)
            m.close()

    async def main():
        for name, call in CALLS.items():
            m = await anymmap.MmapRaw.map_raw(path)
            # From a worker thread this would wait for the map's own call: a deadlock.
            evil = Evil(lambda: anyio.from_thread.run(m.aclose))
            with anyio.fail_after(10):
                try:
                    await call(m, evil)
                except (RuntimeError, anymmap.AnymmapError) as exc:
                    outcomes.add(type(exc).__name__)
                await m.aclose()

    anyio.run(main)
    anyio.run(main, backend="trio")
    os.unlink(path)
    print(sorted(outcomes))
    print("ok")
"""


def test_index_that_closes_or_resizes_the_map_never_hangs() -> None:
    """Regression test: ``advise``, ``populate`` and ``flush_range`` pinned the map, then
    converted their arguments; an ``__index__`` that closed or resized the map waited for
    the pin its own thread held, for ever.  Arguments are now converted before pinning,
    and closing or resizing from inside a pinned call raises ``RuntimeError``."""
    check_child(_INDEX_CALLS_BACK, timeout=30)


def test_a_range_is_checked_against_the_map_its_index_left(tmp_path: Path) -> None:
    """Regression test (adversary round 23): ``flush_range`` checked its range against
    the length the map had before the ``__index__`` of an argument shrank it, and
    returned as if durable for a range no longer in the map; a zero-length
    ``flush_range`` whose ``__index__`` closed the map returned on a closed map."""
    path = tmp_path / "f"
    path.write_bytes(bytes(16 * PAGE))

    class Index:
        def __init__(self, action: Callable[[], object], value: int) -> None:
            self.action, self.value = action, value

        def __index__(self) -> int:
            self.action()
            return self.value

    with anymmap.sync.MmapRaw.map_raw(path) as m:
        with pytest.raises(anymmap.OutOfBoundsError):
            m.flush_range(Index(lambda: m.resize(PAGE), 8 * PAGE), 100)  # type: ignore[arg-type]
        with pytest.raises(anymmap.OutOfBoundsError):
            m.flush_async_range(8 * PAGE, Index(lambda: m.resize(PAGE), 100))  # type: ignore[arg-type]
        assert len(m) == PAGE
    m = anymmap.sync.MmapRaw.map_raw(path)
    with pytest.raises(anymmap.ClosedMapError):
        m.flush_range(0, Index(m.close, 0))  # type: ignore[arg-type]


_INDEX_CONVERTED_FIRST = """
    import os, tempfile
    import anyio, anymmap, anymmap.sync

    PAGE = 4096
    path = tempfile.mktemp()
    with open(path, "wb") as f:
        f.truncate(4 * PAGE)

    class Evil:
        # An offset whose __index__ closes or resizes the map it is passed to, and
        # counts how often it was asked.
        def __init__(self, action):
            self.action, self.calls = action, 0
        def __index__(self):
            self.calls += 1
            self.action()
            return 0

    def copies(m, i):
        return {
            "read": lambda: m.read(i, 16),
            "read_into": lambda: m.read_into(i, bytearray(16)),
            "update_region": lambda: m.update_region(i, b"x"),
            "read_into_nowait": lambda: m.read_into_nowait(i, bytearray(16)),
            "update_region_nowait": lambda: m.update_region_nowait(i, b"x"),
            "as_slice": lambda: m.as_slice(i, 16).__enter__(),
            "as_mut_slice": lambda: m.as_mut_slice(i, 16).__enter__(),
        }

    def sparse_calls(m, i):
        return {
            "fill_at": lambda: m.fill_at(i, 7, 16),
            "read_plain": lambda: m.read_plain(i, "<Q"),
            "read_at": lambda: m.read_at(i, bytearray(16)),
            "write_at": lambda: m.write_at(i, b"x"),
            "atomic_load": lambda: m.atomic_load(i, 8),
            "atomic_store": lambda: m.atomic_store(i, 8, 1),
        }

    # The blocking twins: the argument is converted before the lock is taken, so the
    # close happens first and the call finds a closed map; a resize happens first and
    # the call goes on on the resized map.
    for name in copies(None, None):
        m = anymmap.sync.MmapRaw.map_raw(path)
        evil = Evil(m.close)
        try:
            copies(m, evil)[name]()
        except anymmap.ClosedMapError:
            pass
        else:
            raise AssertionError(f"{name}: no ClosedMapError")
        assert evil.calls == 1, (name, evil.calls)
        m = anymmap.sync.MmapRaw.map_raw(path)
        evil = Evil(lambda: m.resize(2 * PAGE))
        copies(m, evil)[name]()
        assert evil.calls == 1 and len(m) == 2 * PAGE, (name, evil.calls)
        m.close()
        with open(path, "wb") as f:
            f.truncate(4 * PAGE)

    for name in sparse_calls(None, None):
        m = anymmap.sync.SparseMapping.new(4 * PAGE)
        m.alloc(0, PAGE)
        evil = Evil(m.close)
        try:
            sparse_calls(m, evil)[name]()
        except anymmap.ClosedMapError:
            pass
        else:
            raise AssertionError(f"{name}: no ClosedMapError")
        assert evil.calls == 1, (name, evil.calls)

    # The async maps: an argument is converted once, whichever path the copy takes
    # (a copy that finds the lock taken used to convert it again under the lock).
    async def main():
        m = await anymmap.MmapRaw.map_raw(path)
        big = (1 << 20) + 1  # above the inline limit: the copy is finished under the lock
        for call in (
            lambda i: m.read(i, big),
            lambda i: m.read_into(i, bytearray(big)),
            lambda i: m.update_region(i, bytes(big)),
        ):
            evil = Evil(lambda: None)
            await call(evil)
            assert evil.calls == 1, evil.calls
        evil = Evil(lambda: None)
        async with m.as_mut_slice(evil, 16):
            pass
        assert evil.calls == 1, evil.calls
        await m.aclose()

    with open(path, "wb") as f:
        f.truncate(4 << 20)
    anyio.run(main)
    anyio.run(main, backend="trio")
    os.unlink(path)
    print("ok")
"""


def test_index_is_converted_before_any_lock_is_taken() -> None:
    """Regression test (adversary review): the blocking twins' copies, borrows, atomics
    and ``fill_at`` converted their offsets under the map's lock, so an ``__index__`` that
    closed or resized the map failed with "this thread already holds the lock" although
    the README says arguments are converted before anything is pinned; the async copies
    converted an offset a second time when the lock was taken."""
    check_child(_INDEX_CONVERTED_FIRST, timeout=30)


_FLUSH_RACING_RESIZE = """
    import os, tempfile, threading, time
    import anymmap.sync

    m = anymmap.sync.MmapRaw.create(os.path.join(tempfile.mkdtemp(), "f"), 1 << 20)
    core = m._core

    # Deterministic: a thread holding a pin takes another while a resize waits for the
    # first one to end (the group committer's pin, then flush's own).
    outer = threading.Event()
    def pin_twice():
        with core.pinned():
            outer.set()
            while core._remapper is None:  # the resize below is waiting for this pin
                time.sleep(0.001)
            with core.pinned():
                pass
    t = threading.Thread(target=pin_twice)
    t.start()
    outer.wait()
    m.resize(1 << 19)
    t.join()

    # The race as users meet it: flushes from one thread, resizes from another.
    stop = False
    def flusher():
        while not stop:
            m.flush_range(0, 4096)
    t = threading.Thread(target=flusher)
    t.start()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        m.resize(1 << 20)
        m.resize(1 << 19)
    stop = True
    t.join()
    m.close()
    print("ok")
"""


def test_a_flush_racing_a_resize_never_deadlocks() -> None:
    """Regression test (adversary review): the group committer pinned the map, then
    ``flush`` pinned it again; a resize or close that began between the two waited for
    the outer pin while the inner one waited for the resize: both, and every later call
    on the map, waited for ever.  A thread that holds a pin may now nest another."""
    check_child(_FLUSH_RACING_RESIZE, timeout=30)


#: A map ``m``, the exceptions ignored in finalizers (``errors``), and cyclic garbage
#: whose ``__del__`` flushes ``m``.
_FLUSH_ON_DROP = """
    import gc, os, sys, tempfile, threading
    import anymmap, anymmap.sync

    m = anymmap.sync.MmapRaw.create(os.path.join(tempfile.mkdtemp(), "f"), 1 << 20)
    errors = []
    sys.unraisablehook = lambda u: errors.append(type(u.exc_value).__name__)

    class FlushOnDrop:
        def __init__(self):
            self.me = self  # cyclic garbage: freed by whichever thread collects
        def __del__(self):
            m.flush()  # "make it durable when the owner goes away"
"""

_FINALIZER_FLUSHES = (
    _FLUSH_ON_DROP
    + """
    # 1. The garbage collection that close() runs (a view escaped into a cycle) calls
    #    the finalizer on the closing thread, inside the close.
    owner = FlushOnDrop()
    try:
        with m.as_slice(0, 16) as view:
            owner.header = view[:4]  # escapes into the cycle
    except anymmap.BorrowError:
        pass
    del owner, view
    m.close()
    assert m.closed
    assert errors == ["RuntimeError"], errors

    # 2. A collection on the group-commit thread calls it there (low thresholds make
    #    the committer's own allocations collect).
    m = anymmap.sync.MmapRaw.create(os.path.join(tempfile.mkdtemp(), "g"), 1 << 20)
    for k in range(1, 300):
        gc.collect()
        gc.disable()
        gc.set_threshold(k)
        FlushOnDrop()
        gc.enable()
        m.update_region(k * 64, b"x" * 64)
        m.flush()
    gc.set_threshold(700)
    gc.collect()
    m.flush()  # the committer still works
    m.close()
    print("ok")
"""
)


def test_a_finalizer_that_flushes_never_deadlocks() -> None:
    """Regression test (adversary review): a ``__del__`` that flushes the map, run by the
    garbage collection that ``close()`` itself runs, waited for the close that waited
    for it; run on the group-commit thread, it waited for that thread's own lock, and
    no flush of the map returned again.  Both now raise ``RuntimeError`` (reported as
    an exception ignored in ``__del__``) and the map goes on."""
    check_child(_FINALIZER_FLUSHES, timeout=60)  # (300 collections and flushes: slow under load)


_FINALIZER_FLUSHES_AS_THE_COMMITTER_STARTS = (
    _FLUSH_ON_DROP
    + """
    # A collection in the committer thread's own start-up, before Thread.start() has seen
    # it start (the moment is chosen by running it from a step of that start-up, which
    # allocates and may collect there anyway).
    real = threading.Thread._set_native_id
    def set_native_id(self):
        if self.name == "anymmap group commit" and collect_there:
            collect_there.clear()
            gc.collect()
        real(self)
    threading.Thread._set_native_id = set_native_id
    for k in range(3):
        collect_there = [True]
        FlushOnDrop()
        m.update_region(k * 64, b"x" * 64)
        m.flush()  # starts the committer (the one before has ended: it lingers briefly)
        while m._core.commit.outstanding():
            threading.Event().wait(0.01)
    assert errors == ["RuntimeError"] * 3, errors
    m.flush()  # the committer still works
    m.close()
    print("ok")
"""
)


def test_a_finalizer_that_flushes_as_the_committer_starts_never_deadlocks() -> None:
    """Regression test (CI, CPython 3.10): the thread that starts the group committer
    holds the committer's condition until ``Thread.start()`` has seen the new thread
    start, and a collection in the new thread's own start-up ran a ``__del__`` that
    flushed the map there: it waited for the condition, and both threads waited for
    ever.  It now raises ``RuntimeError``, as on the committer thread itself."""
    check_child(_FINALIZER_FLUSHES_AS_THE_COMMITTER_STARTS, timeout=30)


_FINALIZER_FLUSHES_ANOTHER_MAP_OF_THE_FILE = """
    import gc, os, sys, tempfile, threading
    import anymmap.sync

    path = os.path.join(tempfile.mkdtemp(), "f")
    a = anymmap.sync.MmapRaw.create(path, 1 << 20)
    b = anymmap.sync.MmapRaw.map_raw(path)
    seen = []
    sys.unraisablehook = lambda u: seen.append(type(u.exc_value).__name__)

    class FlushOnDrop:
        def __init__(self):
            self.me = self  # cyclic garbage: freed by whichever thread collects

        def __del__(self):
            b.update_region(8, b"b")
            b.flush_range(8, 1)  # works, or RuntimeError: never a wait for itself
            seen.append("ok")

    def collect_at(k, call):
        gc.collect()
        gc.disable()
        gc.set_threshold(k)
        FlushOnDrop()
        gc.enable()
        try:
            call()
        finally:
            gc.set_threshold(700)
            gc.collect()

    # 1. On a's group-commit thread, inside a's msync (a flush from another thread).
    for k in range(1, 200):
        a.update_region(0, b"a")
        thread = threading.Thread(target=collect_at, args=(k, a.flush))
        thread.start()
        thread.join()
    # 2. On the main thread, inside the msync that a's close makes for an auto_flush
    #    block's pending bytes (where a signal handler would run too).
    for k in range(1, 200):
        a = anymmap.sync.MmapRaw.map_raw(path)
        with a.auto_flush(every=1000):
            a.update_region(4096, b"a" * 4096)
            collect_at(k, a.close)
    assert set(seen) <= {"ok", "RuntimeError"}, set(seen)
    a = anymmap.sync.MmapRaw.map_raw(path)
    a.update_region(0, b"c")
    a.flush()  # both maps still work
    b.flush()
    assert b.read(0, 9) == b"c" + bytes(7) + b"b"
    a.close()
    b.close()
    print("ok")
"""


def test_a_finalizer_that_flushes_another_map_of_the_file_never_deadlocks() -> None:
    """Regression test (adversary round 32): a ``__del__`` that flushed map B of a file,
    run by a garbage collection inside map A's ``msync`` (on A's group-commit thread, or
    in the msync of A's ``close()``, where a signal handler runs too), waited for B's
    committer, which waited for A's call in flight: the process hung.  Such a flush now
    raises ``RuntimeError`` (reported as an exception ignored in ``__del__``), and both
    maps go on."""
    check_child(_FINALIZER_FLUSHES_ANOTHER_MAP_OF_THE_FILE, timeout=40)


_FINALIZER_FLUSHES_AT_EXIT = """
    import os, tempfile
    import anymmap.sync

    m = anymmap.sync.MmapRaw.create(os.path.join(tempfile.mkdtemp(), "f"), 1 << 20)
    m.update_region(0, b"durable")

    class Record:
        def __init__(self):
            self.me = self  # cyclic garbage: the interpreter's last collection frees it
            self.m = m

        def __del__(self):
            self.m.flush()
            os.write(1, b"pending %d\\n" % self.m.pending_bytes())

    Record()
    print("main ends")
"""


def test_a_finalizer_that_flushes_at_interpreter_exit_finishes() -> None:
    """Regression test (adversary review): a ``__del__`` that flushes, run by the
    interpreter's last garbage collection, started the group-commit thread, and on
    3.11 ``Thread.start`` then waits for ever for a thread that can no longer run: the
    process never exited.  Such a flush now runs on the finalizing thread."""
    check_child(_FINALIZER_FLUSHES_AT_EXIT, expect="pending 0", timeout=20)


_A_FINALIZER_IN_A_CYCLE_WITH_ITS_MAP = """
    import gc, os, sys
    import anyio
    import anymmap
    from anymmap import sync as S
    from tests._helpers import TAG, TAG_AT, holds_tag

    how = sys.argv[1]
    d = os.environ["ANYMMAP_CHILD_SHM"]
    path = os.path.join(d, "f")
    with open(path, "wb") as f:
        f.write(bytes(1 << 16))
    seen = []

    def fds():
        return sorted(os.listdir("/proc/self/fd"))

    class Owner:  # a user's object in a reference cycle, using its map in __del__
        def __init__(self, close):
            self.me = self
            self.close = close

        def __del__(self):
            m = self.m
            try:
                assert not m.closed
                if how == "sync":
                    m.update_region(0, b"bye")
                    data = m.read(0, 3)
                    with m.as_slice(0, 3) as view:
                        assert bytes(view) == data
                    if hasattr(m, "flush"):  # (its group commit's weak reference is dead)
                        m.flush()
                        assert m.pending_bytes() == 0
                else:
                    m.update_region_nowait(0, b"bye")
                    buf = bytearray(3)
                    m.read_into_nowait(0, buf)
                    data = bytes(buf)
                seen.append(data)
                if self.close:
                    m.close() if how == "sync" else m._core.close()
            except BaseException as exc:
                seen.append(exc)
                raise

    def sync_maps():
        yield S.AnonymousMmap.new(1 << 16)
        yield S.MmapRaw.map_raw(path)
        sparse = S.SparseMapping.new(1 << 17)
        sparse.alloc(0, 1 << 16)
        sparse.map_file(1 << 16, 1 << 16, path, writable=True)
        yield sparse
        yield S.MmapRegion.create(os.path.join(d, "r"), 1 << 16, replace=True)

    async def async_maps():
        return [
            await anymmap.AnonymousMmap.new(1 << 16),
            await anymmap.MmapRaw.map_raw(path),
            await anymmap.MmapRegion.create(os.path.join(d, "r"), 1 << 16, replace=True),
        ]

    def attempt(maps, before):
        addrs = []
        gc.disable()  # (the collection below is the one that frees the cycles)
        for i, m in enumerate(maps):
            addrs.append(m.as_ptr())
            m.update_region_nowait(TAG_AT, TAG)
            for close in (False, True):
                if i % 2:  # the owner made first, then the map given to it
                    owner = Owner(close)
                    owner.m = m
                else:  # the map made first (the collector meets them in another order)
                    owner = Owner.__new__(Owner)
                    owner.m = m
                    owner.__init__(close)
                del owner
        del maps[:], m
        gc.collect()
        gc.enable()
        assert seen == [b"bye"] * len(seen) and len(seen) == 2 * len(addrs), seen
        assert not any(holds_tag(addr) for addr in addrs)  # unmapped once garbage
        assert fds() == before  # and every descriptor closed, once

    if how == "sync":
        before = fds()
        attempt(list(sync_maps()), before)
    else:
        async def main():
            before = fds()
            attempt(await async_maps(), before)
        anyio.run(main, backend=how)
    print("ok")
"""


@pytest.mark.parametrize("how", ["sync", "asyncio", "trio"])
def test_a_finalizer_in_a_cycle_with_its_map_finds_it_whole(how: str) -> None:
    """Regression test (adversary round 51: SIGSEGV in 9 of 9 runs): the cyclic collector
    runs the finalizers of a cycle in no set order, and a user's ``__del__`` in a cycle
    with a map ran after the map's own drop had unmapped its memory and closed its
    descriptor: its copy or borrow died of SIGSEGV, and its ``close()`` unmapped and
    closed again what other maps had been given since.  And its flush raised
    ``ClosedMapError`` on the open map (the group commit's weak reference to it was
    already dead).  The drops are kept reachable until the map is garbage, so they run
    after every finalizer; the flush uses the map the caller has."""
    check_child(_A_FINALIZER_IN_A_CYCLE_WITH_ITS_MAP, how, timeout=40)


_A_CYCLES_FINALIZER_SHRINKS_OR_RESURRECTS_A_MAP = """
    import gc, os, sys
    from anymmap import sync as S
    from tests._helpers import TAG, TAG_AT, holds_tag

    how = sys.argv[1]
    path = os.path.join(os.environ["ANYMMAP_CHILD_SHM"], "f")
    P = 4096
    with open(path, "wb") as f:
        f.write(b"x" * (2 * P))
    saved, seen = [], []

    class Owner:
        def __init__(self, **maps):
            self.__dict__.update(maps)
            self.me = self

        def __del__(self):
            if how == "shrink":  # two maps of the file in the cycle: one shrinks
                self.a.resize(P)
                with self.b.as_slice(P, P) as view:  # (SIGBUS before: the file was cut)
                    seen.append(bytes(view[:1]))
            elif "c" not in self.__dict__:  # resurrects its map
                saved.append(self.m)
            else:  # uses the resurrected map in a second cycle
                with self.c.as_slice(P, P) as view:  # (SIGSEGV before: unmapped)
                    seen.append(bytes(view[:1]))
                self.c.close()  # (unmapped what a new map had been given, before)

    if how == "shrink":
        Owner(a=S.MmapRaw.map_raw(path), b=S.MmapRaw.map_raw(path))
        gc.collect()
        sparse = S.SparseMapping.new(2 * P)
        sparse.map_file(0, 2 * P, path)
        Owner(a=S.MmapRaw.map_raw(path), b=sparse)
        del sparse
        gc.collect()
        assert seen == [b"x", b"x"], seen
        assert os.path.getsize(path) == 2 * P
    else:
        Owner(m=S.MmapRaw.map_raw(path))
        gc.collect()
        m = saved.pop()
        with S.MmapRaw.map_raw(path) as other:
            other.resize(P)  # m maps the file: not cut under it
        assert os.path.getsize(path) == 2 * P
        with m.as_slice(P, P) as view:  # (SIGBUS before)
            assert bytes(view[:1]) == b"x"
        addr = m.as_ptr()
        m.update_region(TAG_AT, TAG)
        Owner(c=m)
        del m
        gc.collect()
        assert seen == [b"x"], seen
        assert not holds_tag(addr)
    print("ok")
"""


@pytest.mark.parametrize("how", ["shrink", "resurrect"])
def test_a_cycles_finalizer_that_shrinks_or_resurrects_a_map_crashes_nothing(how: str) -> None:
    """Regression test (adversary round 52, 3 of 3 runs each): weak references to
    cyclic garbage are cleared before the finalizers run, and never come back if a
    finalizer resurrects the object.  A finalizer's shrink of one map of a file cut it
    under another map of the file in the same cycle (SIGBUS in its borrow); a map a
    finalizer resurrected was no longer seen by other maps' shrinks (SIGBUS), and in a
    second cycle its memory was unmapped before that cycle's finalizer borrowed it
    (SIGSEGV).  Registrations now also hold the map's array weakly (it outlives the
    finalizers), and the keeper's weak reference is to a token the map holds, which
    is not tracked by the collector."""
    check_child(_A_CYCLES_FINALIZER_SHRINKS_OR_RESURRECTS_A_MAP, how, timeout=40)


_A_GLOBALS_FINALIZER_FLUSHES_ITS_OWN_MAP_AT_EXIT = """
    import os, sys
    from anymmap import sync as S

    path = os.path.join(os.environ["ANYMMAP_CHILD_SHM"], "f")

    class Holder:  # a module global: freed with the module's dict, as cyclic garbage
        def __init__(self):
            self.m = S.MmapRaw.create(path, 1 << 16)

        def __del__(self):
            self.m.update_region(0, b"from __del__")
            self.m.flush()  # (ClosedMapError on the open map before)
            assert self.m.pending_bytes() == 0
            self.m.close()
            os.write(1, b"ok\\n")

    H = Holder()
    print("main ends")
"""


def test_a_globals_finalizer_flushes_its_own_map_at_exit() -> None:
    """Regression test (adversary round 51, 3 of 3 interpreters): the ``__del__`` of a
    module global that flushed its own map at interpreter exit, where the module's dict
    is freed as cyclic garbage, got ``ClosedMapError`` on the open map and flushed
    nothing (the group commit reached the map through a weak reference, cleared before
    any finalizer runs)."""
    check_child(_A_GLOBALS_FINALIZER_FLUSHES_ITS_OWN_MAP_AT_EXIT, timeout=20)


_CALLBACK_INSIDE_A_PIN_WHILE_ANOTHER_THREAD_RESIZES = """
    import os, sys, tempfile, threading, time
    import anymmap.sync

    m = anymmap.sync.MmapRaw.create(os.path.join(tempfile.mkdtemp(), "f"), 64 << 20)
    me = threading.get_ident()
    outcomes = []
    resizer = threading.Thread(target=m.resize, args=(128 << 20,))

    def callback():
        # Runs inside populate's pin, as a __del__ or signal handler would, while
        # another thread's resize waits for that pin.
        resizer.start()
        while m._core._remapper is None:
            time.sleep(0.001)
        m.flush()  # the committer joins the pin this thread holds
        outcomes.append("flushed")
        for call in (lambda: m.read(0, 10), lambda: m.update_region(0, b"y")):
            try:
                call()  # would wait for the resize's write lock, which waits for us
            except RuntimeError:
                outcomes.append("RuntimeError")

    def local(frame, event, arg):
        pinned = me in m._core._pinners and not m._core._cond._is_owned()
        if event == "line" and not outcomes and pinned:
            outcomes.append("inside a pin")
            callback()
        return local

    sys.settrace(lambda frame, event, arg: local)
    try:
        m.populate(0, 64 << 20)
    finally:
        sys.settrace(None)
    resizer.join()
    assert len(m) == 128 << 20
    assert outcomes == ["inside a pin", "flushed", "RuntimeError", "RuntimeError"], outcomes
    m.update_region(0, b"z")
    m.flush()
    m.close()
    print("ok")
"""


def test_a_callback_inside_a_pin_never_deadlocks_a_resize() -> None:
    """Regression test (adversary review): a finalizer run inside a pinned call while another thread's ``resize``
    waited for that pin: a flush waited for the committer, whose pin waited for the
    resize; a read waited for the resize's write lock.  Three threads, for ever.  The
    committer now joins the pins already held, and a lock wait from inside a pin
    raises ``RuntimeError``.  (A trace function stands in for the finalizer, to land
    inside the pin every time.)"""
    check_child(_CALLBACK_INSIDE_A_PIN_WHILE_ANOTHER_THREAD_RESIZES, timeout=30)


_FLUSH_INSIDE_A_COUNT_WHILE_ANOTHER_THREAD_RESIZES = """
    import os, sys, tempfile, threading, time
    import anymmap.sync

    m = anymmap.sync.MmapRaw.create(os.path.join(tempfile.mkdtemp(), "f"), 1 << 20)
    m.update_region(0, b"data")
    m.update_region(1 << 19, b"past the new end")
    dirty = m._core.dirty
    outcomes = []

    def callback():
        # Inside pending_bytes(), holding its lock, as a __del__ would be: another
        # thread shrinks the map (and must forget what lies past the new end), then
        # this thread flushes.
        resizer = threading.Thread(target=m.resize, args=(1 << 18,))
        resizer.start()
        while m._core._remapper is None and resizer.is_alive():
            time.sleep(0.001)
        time.sleep(0.2)  # (time for it to reach the bookkeeping; no result depends on it)
        try:
            m.flush()
            outcomes.append("flushed")
        except RuntimeError:
            outcomes.append("RuntimeError")
        outcomes.append(resizer)

    def local(frame, event, arg):
        if event == "line" and not outcomes and dirty._lock._is_owned():
            callback()
        return local

    sys.settrace(lambda frame, event, arg: local if frame.f_code.co_name == "pending" else None)
    try:
        m.pending_bytes()
    finally:
        sys.settrace(None)
    outcomes[-1].join()
    assert len(m) == 1 << 18, len(m)
    assert m.pending_bytes() == 0, m.pending_bytes()  # the cut was applied, then flushed
    print(outcomes[0])
    m.close()
    print("ok")
"""


def test_a_flush_inside_a_count_never_deadlocks_a_resize() -> None:
    """Regression test (adversary review): a finalizer that flushed while its thread was
    inside ``pending_bytes()`` (holding the pending-bytes lock) waited for the committer,
    whose pin waited for a resize on another thread, which waited for that lock to
    forget what lay past the new end: three threads, for ever.  A resize no longer
    waits for that lock (the change is queued for its holder)."""
    check_child(_FLUSH_INSIDE_A_COUNT_WHILE_ANOTHER_THREAD_RESIZES, timeout=30)


_FLUSH_WHILE_STARTING_THE_COMMITTER = """
    import os, sys, tempfile, time
    import anymmap.sync

    m = anymmap.sync.MmapRaw.create(os.path.join(tempfile.mkdtemp(), "f"), 1 << 20)
    m.update_region(0, b"data")
    outcomes = []

    def local(frame, event, arg):
        if event == "line" and not outcomes:
            try:  # as a __del__ run while this thread starts the committer thread
                m.flush()
                outcomes.append("flushed")
            except RuntimeError:
                outcomes.append("RuntimeError")
        return local

    commit = m._core.commit
    while commit._committer_pid:  # no committer runs (create's own flush lingers)
        time.sleep(0.005)
    sys.settrace(lambda frame, event, arg: local if frame.f_code.co_name == "_start_committer" else None)
    try:
        m.flush()  # starts the committer
    finally:
        sys.settrace(None)
    assert outcomes, "the callback never ran"
    m.flush()
    assert m.pending_bytes() == 0
    m.close()
    print("ok")
"""


def test_a_flush_while_this_thread_starts_the_committer_never_hangs() -> None:
    """Regression test (adversary review): a finalizer that flushed while its own
    thread was starting the group-commit thread queued its request and waited for a
    committer that the interrupted frame had not started yet.  The committer is now
    started inside the queue's lock, so such a flush raises ``RuntimeError``."""
    check_child(_FLUSH_WHILE_STARTING_THE_COMMITTER, timeout=30)


_FINALIZER_FLUSHES_AT_EXIT_DURING_A_RESIZE = """
    import os, sys, tempfile, threading, time
    import anymmap.sync

    path = os.path.join(tempfile.mkdtemp(), "f")
    m = anymmap.sync.MmapRaw.create(path, 1 << 20, prefill="zeros")
    os.unlink(path)  # (nothing left behind: the map keeps the file open)
    os.rmdir(os.path.dirname(path))
    m.update_region(0, b"record")
    resizer = threading.Thread(target=m.resize, args=(4 << 30,), daemon=True)
    resizer.start()  # writes 4 GiB of zeros: still inside the resize at exit

    class Flusher:
        def __init__(self):
            self.cycle = self  # freed by the interpreter's last collection

        def __del__(self):
            try:
                m.flush()
                os.write(1, b"flushed\\n")
            except RuntimeError:
                os.write(1, b"RuntimeError\\n")

    Flusher()
    while m._core._remapper is None:
        time.sleep(0.001)
    print("main ends")
"""


def test_a_finalizer_at_exit_never_waits_for_a_stopped_daemon_thread() -> None:
    """Regression test (adversary review): a finalizer that flushed during the
    interpreter's last collection, while a daemon thread (stopped at exit) was inside
    the map's resize, waited for it for ever.  A wait that can never end at exit now
    raises ``RuntimeError``."""
    out = check_child(
        _FINALIZER_FLUSHES_AT_EXIT_DURING_A_RESIZE, expect="RuntimeError", timeout=30
    )
    assert "main ends" in out


_CALLBACK_INSIDE_THE_BOOKKEEPING = """
    import os, sys, tempfile, threading
    import anyio, anymmap, anymmap.sync

    # A trace function runs, between two lines, exactly where the garbage collector may
    # run a __del__ or the interpreter a signal handler: inside the pending-bytes and
    # pin bookkeeping, with their locks held.  Round j calls back into the map at the
    # j-th line run there, so the rounds visit every line of it.
    BOOKKEEPING = ("_commit.py", "_map.py", "_threadlock.py")
    outcomes = {}
    countdown = [0]

    def tracing(callback):
        def local(frame, event, arg):
            if event == "line":
                countdown[0] -= 1
                if countdown[0] == 0:
                    try:
                        callback()
                        outcomes["ok"] = outcomes.get("ok", 0) + 1
                    except RuntimeError:
                        outcomes["RuntimeError"] = outcomes.get("RuntimeError", 0) + 1
            return local
        def hook(frame, event, arg):
            if frame.f_code.co_filename.endswith(BOOKKEEPING):
                return local
            return None
        return hook

    data = bytes(range(256)) * 16
    m = anymmap.sync.MmapRaw.create(os.path.join(tempfile.mkdtemp(), "f"), 1 << 22)
    for name, callback in [
        ("flush", m.flush),
        ("pending_bytes", m.pending_bytes),
        ("write", lambda: m.update_region(1 << 21, b"nested")),
    ]:
        sys.settrace(tracing(callback))
        try:
            for j in range(1, 150):
                countdown[0] = j
                m.update_region(j * 4096, data)
                m.pending_bytes()
                m.flush_range(j * 4096, 4096)
        finally:
            sys.settrace(None)
        m.flush()
        assert m.pending_bytes() == 0, (name, m.pending_bytes())
        assert m.read(4096, 4096) == data
        assert m.read(1 << 21, 6) == (b"nested" if name == "write" else bytes(6))
    assert outcomes.get("ok", 0) > 100, outcomes
    m.close()

    async def main():
        a = await anymmap.MmapRaw.create(os.path.join(tempfile.mkdtemp(), "g"), 1 << 20)
        async with a:
            sys.settrace(tracing(lambda: (a.pending_bytes(), a.update_region_nowait(0, b"x"))))
            try:
                for j in range(1, 100):
                    countdown[0] = j
                    await a.update_region(j * 4096, data)
                    a.pending_bytes()
            finally:
                sys.settrace(None)
            await a.flush()
            assert a.pending_bytes() == 0
            assert await a.read(4096, 4096) == data

    anyio.run(main)
    print(outcomes, file=sys.stderr)
    print("ok")
"""


def test_a_callback_inside_the_bookkeeping_never_deadlocks() -> None:
    """Regression test (adversary review): a ``__del__`` or signal handler that ran while
    a write or ``pending_bytes()`` held the pending-bytes lock and called ``flush()``,
    ``pending_bytes()`` or a write waited for that lock for ever (itself, or the
    committer that waited for it).  Such a call now works (a write inside is counted
    once the outer call is done; a count inside is an upper bound), or raises
    ``RuntimeError`` where it would wait for its own thread.  A trace function makes
    the callbacks land inside every line of the bookkeeping, deterministically."""
    check_child(_CALLBACK_INSIDE_THE_BOOKKEEPING, timeout=30)


_ATOMIC_STORE_ON_A_FULL_FILE_SYSTEM = """
    import os, sys
    import anymmap, anymmap.sync

    directory = sys.argv[1]
    with open(os.path.join(directory, "filler"), "wb") as f:  # fill the file system
        try:
            f.write(b"\\1" * (4 << 20))
        except OSError:
            pass
    path = os.path.join(directory, "sparse")
    with open(path, "wb") as f:
        f.truncate(1 << 20)  # all hole: no block behind any page
    os.chmod(path, 0o600)

    m = anymmap.sync.SparseMapping.new(1 << 22)
    m.map_file(0, 1 << 20, path, writable=True)
    r = anymmap.sync.MmapRegion.attach(path)  # as a peer that grew it with ftruncate
    for target in (m, r):
        try:
            target.atomic_store(8192, 8, 1)
        except anymmap.MappingFaultError as exc:
            assert exc.offset == 8192, exc
        else:
            raise AssertionError("a store into a page the file system cannot provide")
        try:  # tmpfs allocates a page to read a hole too: full, it cannot
            assert target.atomic_load(8192, 8) == 0
        except anymmap.MappingFaultError as exc:
            assert exc.offset == 8192, exc
    m.close()
    r.close()
    print("ok")
"""


def test_an_atomic_store_on_a_full_file_system_raises(tmp_path: Path) -> None:
    """Regression test (adversary review): ``atomic_store`` into a page of a sparse file
    (a ``map_file`` window, a region a peer grew with ``ftruncate``) on a full file
    system died of SIGBUS, while the copies to the same page raised
    ``MappingFaultError`` (so did ``atomic_load`` of such a hole on tmpfs).  The page is
    now faulted in first, which reports it as ``MappingFaultError``."""
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)]
    if subprocess.run(mount, check=False).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        check_child(_ATOMIC_STORE_ON_A_FULL_FILE_SYSTEM, str(small), timeout=30)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


_FIFO = """
    import os, sys, tempfile
    import anyio, anymmap, anymmap.sync

    fifo = os.path.join(tempfile.mkdtemp(), "fifo")
    os.mkfifo(fifo)
    for mode in ("r", "copy", "rw"):
        try:
            anymmap.sync.MmapRaw.map_raw(fifo, mode=mode)
        except anymmap.UnmappableFileError as exc:
            assert "FIFO" in str(exc), exc
        else:
            raise AssertionError("a FIFO was mapped")

    async def main():
        with anyio.fail_after(10):
            try:
                await anymmap.MmapRaw.map_raw(fifo, mode="r")
            except anymmap.UnmappableFileError:
                pass

    anyio.run(main)
    os.unlink(fifo)
    print("ok")
"""


def test_mapping_a_fifo_is_refused_at_once() -> None:
    """Regression test: ``map_raw`` of a FIFO in mode ``"r"`` or ``"copy"`` blocked for
    ever in ``open()``, waiting for a writer, and no cancellation could end it."""
    check_child(_FIFO, timeout=30)


# -- crashes ----------------------------------------------------------------------------

_UNSAFE_READS_OF_A_TRUNCATED_FILE = """
    import os, subprocess, sys, tempfile
    import anyio, anymmap, anymmap.sync

    directory, mode = sys.argv[1], sys.argv[2]
    SIZE = 4 << 20
    path = tempfile.mktemp(dir=directory)

    def truncate(size):  # another process cuts the file
        subprocess.run([sys.executable, "-c", f"import os; os.truncate({path!r}, {size})"], check=True)

    async def main():
        errors = 0
        for n in (100, 8192, 2 << 20):  # inline copies, and one for a worker thread
            with open(path, "wb") as f:
                f.write(os.urandom(SIZE))
            async with await anymmap.MmapRaw.map_raw(path, mode=mode, fault_safe=False) as m:
                assert len(await m.read(0, n)) == n  # warm
                truncate(0)
                for call in (
                    lambda: m.read(SIZE - n, n),
                    lambda: m.read_into(SIZE - n, bytearray(n)),
                ):
                    try:
                        await call()
                    except anymmap.MappingFaultError:
                        errors += 1
                try:
                    m.read_into_nowait(SIZE - n, bytearray(n))
                except (anymmap.MappingFaultError, anyio.WouldBlock):
                    errors += 1
        return errors

    assert anyio.run(main) == 9
    with open(path, "wb") as f:
        f.write(os.urandom(SIZE))
    with anymmap.sync.MmapRaw.map_raw(path, mode=mode, fault_safe=False) as m:
        truncate(4096)
        try:
            m.read(0, 8192)
        except anymmap.MappingFaultError:
            pass
        else:
            raise AssertionError("read past the end of the file")
    os.unlink(path)
    print("ok")
"""


@pytest.mark.parametrize("mode", ["rw", "r"])
@pytest.mark.parametrize("fs", ["disk", "tmpfs"])
def test_reads_of_shared_maps_are_fault_safe_even_with_fault_safe_false(
    tmp_path: Path, shm_path: Path, fs: str, mode: str
) -> None:
    """Regression test: with ``fault_safe=False`` a read of a truncated ``"r"`` or ``"rw"``
    map died of SIGBUS (a short ``pread`` fell through to a plain ``memmove``), although
    the documentation says those reads stay fault-safe."""
    directory = str(tmp_path if fs == "disk" else shm_path)
    check_child(_UNSAFE_READS_OF_A_TRUNCATED_FILE, directory, mode)


_OBJECT_BUFFERS = """
    import array, ctypes, gc, pickle, sys
    import anyio, numpy as np, anymmap, anymmap.sync

    def buffers():
        yield np.array([1, "a"], dtype=object)
        yield np.zeros(2, dtype=[("n", "i4"), ("o", "O")])
        yield (ctypes.py_object * 2)(1, 2)
        yield (ctypes.c_void_p * 2)()
        yield (ctypes.c_char_p * 2)()  # format "<z": found by the adversary review
        yield (ctypes.c_wchar_p * 2)()  # "<Z"
        yield (ctypes.CFUNCTYPE(ctypes.c_int) * 2)()  # "X{}"

        class Named(ctypes.Structure):
            _fields_ = [("name", ctypes.c_char_p), ("n", ctypes.c_int)]

        yield (Named * 2)()  # "T{<z:name:<i:n:}"

        # Found by adversary round 35, each a crash once the field was touched: ctypes
        # exports a union or a packed structure as opaque "B" items of its own size,
        # and a field name may hold the ":" that ends names in the format.
        class Union(ctypes.Union):
            _fields_ = [("o", ctypes.py_object), ("i", ctypes.c_long)]

        class Packed(ctypes.Structure):
            _pack_ = 1
            _fields_ = [("a", ctypes.c_uint8), ("p", ctypes.c_void_p)]

        class Colon(ctypes.Structure):
            _fields_ = [("p:", ctypes.c_int32), ("q", ctypes.py_object)]  # T{<i:p::<O:q:}

        class Tricky(ctypes.Structure):  # names that pair the colons up again
            _fields_ = [("a:b", ctypes.c_int), ("q", ctypes.py_object), ("c:d", ctypes.c_int)]

        class Inherited(Packed):  # the pointer is the base class's field
            _fields_ = [("n", ctypes.c_int)]

        yield Union()
        yield (Union * 3)()
        yield Packed()
        yield Colon()
        yield Tricky()
        yield (Inherited * 2)()

        # Round 36: the same laundered as bytes, a field list changed after the type
        # was laid out, and a nesting too deep to walk (a RecursionError before).
        yield memoryview(Union()).cast("B")
        yield pickle.PickleBuffer(memoryview(Union()).cast("B"))
        yield np.frombuffer(Union(), np.uint8)
        fields = [("tag", ctypes.c_int), ("payload", ctypes.py_object)]
        Template = type("Template", (ctypes.Structure,), {"_fields_": fields})
        fields[1] = ("payload", ctypes.c_double)
        yield Template()

        class Hidden(list):
            def __iter__(self):
                return iter(())

        class Sneaky(ctypes.Union):
            _fields_ = Hidden([("n", ctypes.c_long), ("o", ctypes.py_object)])

        yield Sneaky()
        # Round 37: ctypes' own byte view of such an object, and NumPy's strided view.
        record = Colon()
        yield (ctypes.c_char * ctypes.sizeof(record)).from_buffer(record)
        yield np.frombuffer((ctypes.c_ubyte * ctypes.sizeof(record)).from_buffer(record), np.uint8)
        yield np.lib.stride_tricks.as_strided(np.frombuffer(Union(), np.uint8), shape=(8,))
        deep = ctypes.c_int
        for level in range(3000):  # (plain, but too deep to walk: refused)
            deep = type(f"Deep{level}", (ctypes.Structure,), {"_fields_": [("f", deep)]})
        yield deep()
        # Round 38: a NumPy object array as bytes ("B": its dtype tells), and (3.12+) a
        # class whose __buffer__ returns such bytes (CPython's wrapper hid the owner).
        objects = np.array(["a", "b", "c", "d"], dtype=object)
        yield memoryview(objects).cast("B")
        yield np.frombuffer(memoryview(objects).cast("B"), np.uint8)
        yield memoryview(np.zeros(2, dtype=[("n", "i8"), ("o", "O")])).cast("B")
        yield Exporter(lambda: memoryview(Colon()).cast("B"))
        yield Exporter(lambda: memoryview(objects).cast("B"))
        yield Exporter(lambda: memoryview(Exporter(lambda: memoryview(Union()).cast("B"))))
        # Round 39: a walk past the old bound of 256 steps, links read through attributes
        # a subclass redefines, an object array in the middle of the walk, and (3.12+)
        # NumPy over a __buffer__ object (it keeps the object, not the view it gave).
        laundered = (ctypes.py_object * 4)(*"abcd")
        for _ in range(129):
            laundered = (ctypes.c_char * ctypes.sizeof(laundered)).from_buffer(laundered)
        yield laundered

        class Shadowed(ctypes.c_char * 32):
            _objects = None

        yield Shadowed.from_buffer((ctypes.py_object * 4)(*"abcd"))

        class LyingBase(np.ndarray):
            @property
            def base(self):
                return bytearray(32)

        class LyingDtype(np.ndarray):
            @property
            def dtype(self):
                return np.dtype(np.uint8)

        yield memoryview(objects.view(LyingBase)).cast("B")
        yield memoryview(objects.view(LyingDtype)).cast("B")

        class Interface:
            __array_interface__ = {
                "shape": (4,), "typestr": "|O", "data": bytearray(32), "version": 3
            }

        yield memoryview(np.asarray(Interface())).cast("B")
        if sys.version_info >= (3, 12):
            yield np.frombuffer(Exporter(lambda: memoryview(objects).cast("B")), np.uint8)
        deep = memoryview(objects).cast("B")
        for _ in range(129):
            deep = Exporter(lambda inner=deep: memoryview(inner))
        yield deep
        # Round 40: a field or element of a ctypes object (it shares its memory), a
        # union whose _fields_ were cleared or replaced after the layout, an array of
        # unions retyped, a metaclass's __mro__, and (3.12+) NumPy over a __buffer__
        # object that answers differently when asked again.
        class Overlay(ctypes.Union):
            _fields_ = [("raw", ctypes.c_ubyte * 32), ("objs", ctypes.py_object * 4)]

        overlay = Overlay()
        overlay.objs = (ctypes.py_object * 4)(*"abcd")
        yield overlay.raw
        yield ((ctypes.c_ubyte * 8) * 4).from_buffer((ctypes.py_object * 4)(*"abcd"))[0]
        yield (Overlay * 2)()[1].raw
        for change in ("clear", "replace"):
            Changed = type("Changed", (ctypes.Union,), {"_fields_": list(Overlay._fields_)})
            if change == "clear":
                Changed._fields_.clear()
            else:
                try:
                    Changed._fields_ = [("raw", ctypes.c_ubyte * 32)]
                except AttributeError:  # ("_fields_ is final", after it was set)
                    pass
            yield Changed()
        Retyped = Overlay * 2
        Retyped._type_ = ctypes.c_ubyte * 32
        yield Retyped()

        class Lying(type(ctypes.Union)):
            @property
            def __mro__(cls):
                return (object,)

        yield Lying("Hidden", (ctypes.Union,), {"_fields_": list(Overlay._fields_)})()
        if sys.version_info >= (3, 12):
            answers = [memoryview(objects).cast("B"), memoryview(bytearray(32))]
            yield np.frombuffer(Exporter(lambda: answers.pop(0)), np.uint8)
        # Round 41: more changes to a union's class after ctypes laid it out: _fields_
        # deleted, emptied beside an _anonymous_, and the _type_ of a py_object or
        # c_void_p subclass, or of a py_object array type, used as its field.
        Deleted = type("Deleted", (ctypes.Union,), {"_fields_": list(Overlay._fields_)})
        del Deleted._fields_
        yield Deleted()
        Emptied = type("Emptied", (ctypes.Union,), {"_fields_": list(Overlay._fields_)})
        Emptied._fields_.clear()
        Emptied._anonymous_ = ()
        yield Emptied()
        for pointer_type in (ctypes.py_object, ctypes.c_void_p):
            Sub = type("Sub", (pointer_type,), {})
            Holder = type("Holder", (ctypes.Union,), {"_fields_": [("raw", ctypes.c_ubyte * 8), ("p", Sub)]})
            Sub._type_ = "B"
            yield Holder()
        Objects = type("Objects", (ctypes.Array,), {"_type_": ctypes.py_object, "_length_": 4})
        Holder = type("Holder", (ctypes.Union,), {"_fields_": [("raw", ctypes.c_ubyte * 32), ("o", Objects)]})
        Objects._type_ = ctypes.c_ubyte
        yield Holder()
        # Round 42: the same past 1 MiB (the layout was not read there), and a metaclass
        # whose == and hash made a py_object structure find a plain one's verdict.
        Big = ctypes.py_object * ((1 << 20) // ctypes.sizeof(ctypes.py_object) + 1)
        Big._type_ = ctypes.c_ssize_t
        yield type("Huge", (ctypes.Structure,), {"_fields_": [("objs", Big)]})()

        class SameNames(type(ctypes.Structure)):
            def __eq__(cls, other):
                return isinstance(other, SameNames)

            def __hash__(cls):
                return 0

        Plain = SameNames("Plain", (ctypes.Structure,), {"_fields_": [("v", ctypes.c_ssize_t)]})
        try:
            anymmap.sync.AnonymousMmap.new(4096).read_into(0, Plain())  # (its verdict kept)
        except TypeError:
            raise AssertionError("a plain structure was refused") from None
        yield SameNames("Holding", (ctypes.Structure,), {"_fields_": [("v", ctypes.py_object)]})()

    class Exporter:  # (a buffer from 3.12 on, PEP 688; before, refused as no buffer)
        def __init__(self, make):
            self.make = make

        def __buffer__(self, flags):
            return self.make()

    async def main():
        async with await anymmap.AnonymousMmap.new(4096) as m:
            await m.update_region(0, b"\\xff" * 4096)
            for buf in buffers():
                for call in (
                    lambda: m.read_into(0, buf),
                    lambda: m.update_region(0, buf),
                ):
                    try:
                        await call()
                    except TypeError as exc:
                        assert "references" in str(exc) or (
                            sys.version_info < (3, 12) and isinstance(buf, Exporter)
                        ), exc
                    else:
                        raise AssertionError(f"accepted {buf!r}")
                try:
                    m.read_into_nowait(0, buf)
                except TypeError:
                    pass
                else:
                    raise AssertionError(f"accepted {buf!r}")
                del buf
                gc.collect()
            # Plain structured data is fine, whatever its fields are called.
            plain = np.zeros(2, dtype=[("Ocean", "f8"), ("P", "i4"), ("zX", "c8")])
            await m.read_into(0, plain)

            class PlainUnion(ctypes.Union):
                _fields_ = [("f", ctypes.c_double), ("n", ctypes.c_uint64)]

            await m.read_into(0, (PlainUnion * 2)())  # plain data, whatever ctypes exports
            await m.read_into(0, memoryview(PlainUnion()).cast("B"))
            await m.read_into(0, np.frombuffer(bytearray(PlainUnion()), np.uint8))
            await m.read_into(0, array.array("B", bytes(8)))
            await m.read_into(0, (ctypes.c_char * 8).from_buffer(PlainUnion()))
            await m.read_into(0, np.zeros(2, dtype=np.complex128))  # "Zd": plain numbers
            # A union of unions 30 deep (2**30 visits of its types, before round 40).
            tree = ctypes.c_ubyte * 8
            for level in range(30):
                tree = type(f"Tree{level}", (ctypes.Union,), {"_fields_": [("a", tree), ("b", tree)]})
            await m.read_into(0, tree())

            class Named(ctypes.Structure):  # a plain field of a plain structure is fine
                _fields_ = [("name", ctypes.c_ubyte * 16), ("n", ctypes.c_int)]

            await m.read_into(0, Named().name)
            # A wide plain structure under nested arrays, and a field deep in it (round 41:
            # judged again at every level, seconds; now each type once, and kept).
            wide = type("Wide", (ctypes.Structure,), {"_fields_": [(f"f{i}", ctypes.c_uint8) for i in range(4000)]})
            nested = wide
            for _ in range(20):
                nested = nested * 1
            inner = nested()
            for _ in range(20):
                inner = inner[0]
            await m.read_into(0, inner)
            await m.read_into(0, nested())
            # Round 42: NumPy's padding fields (all named ""), a field given a second
            # name in a subclass, and no zeroed instance made (its __del__ ran).
            aligned = np.dtype([("a", "<i4"), ("b", "<f8"), ("c", "u1", (3,))], align=True)
            await m.read_into(0, (np.ctypeslib.as_ctypes_type(aligned) * 4)())

            class Base(ctypes.Structure):
                _fields_ = [("w", ctypes.c_int)]

            class Alias(Base):
                width = Base.w

            await m.read_into(0, Alias())
            deleted = []

            class Handle(ctypes.Structure):
                _fields_ = [("fd", ctypes.c_int)]

                def __del__(self):
                    deleted.append(self)

            handle = Handle()
            await m.read_into(0, handle)
            assert not deleted, "the check made (and dropped) an instance of the class"

            class Anonymous(ctypes.Structure):  # its union's fields are laid out in it too
                _anonymous_ = ("u",)
                _fields_ = [("u", PlainUnion), ("count", ctypes.c_int)]

            await m.read_into(0, Anonymous())
            if sys.version_info >= (3, 12):  # a __buffer__ over plain memory is fine
                target = bytearray(8)
                await m.read_into(0, Exporter(lambda: memoryview(target)))
                await m.read_into(0, Exporter(lambda: memoryview(PlainUnion()).cast("B")))
                await m.update_region(0, Exporter(lambda: memoryview(b"\\x01" * 8)))
                assert await m.read(0, 8) == b"\\x01" * 8
                await m.read_into(0, target)
                assert target == b"\\x01" * 8

    anyio.run(main)
    with anymmap.sync.AnonymousMmap.new(4096) as m:
        m.update_region(0, b"\\xff" * 4096)
        for buf in buffers():
            try:
                m.read_into(0, buf)
            except TypeError:
                pass
            else:
                raise AssertionError(f"accepted {buf!r}")
    gc.collect()
    print("ok")
"""


def test_buffers_that_hold_references_are_refused() -> None:
    """Regression test: ``read_into`` of a NumPy object array cast its ``O`` format to
    bytes, overwrote the object pointers, and the process died when the array was freed
    (and, later, the same with ctypes string and function pointer arrays)."""
    check_child(_OBJECT_BUFFERS)


_SYSTEM_EXIT_FROM_A_PROGRESS_CALLBACK = """
    import sys
    import anyio, anymmap
    from tests._child import run_loop

    seen = []

    async def main():
        m = await anymmap.AnonymousMmap.new(48 << 20)

        def progress(done, total):
            raise SystemExit(3)

        try:
            await m.populate(0, None, progress=progress)
        except SystemExit as exc:  # (was CancelledError on asyncio)
            seen.append(exc.code)
        assert m.lock.statistics().writer is None
        await m.update_region(0, b"x")
        await m.aclose()
        await anyio.sleep(0.01)  # the loop goes on: nothing escaped it
        seen.append("after")

    run_loop(sys.argv[1], main)
    assert seen == [3, "after"], seen
    print("ok")
"""


@pytest.mark.parametrize("runner", RUNNERS)
def test_system_exit_from_a_progress_callback_reaches_the_caller(runner: str) -> None:
    """Regression test (adversary round 35): a ``populate`` progress callback runs on
    the event loop thread, where anyio raises a ``SystemExit`` or ``KeyboardInterrupt``
    out of the loop (asyncio's rule for callbacks): the caller got a
    ``CancelledError`` nobody asked for, and the exit came out of the runner later.
    It now reaches the caller, as any error of the callback does."""
    check_child(_SYSTEM_EXIT_FROM_A_PROGRESS_CALLBACK, runner, timeout=60)


_STOP_ITERATION_IN_A_WORKER = """
    import sys
    import anyio, anymmap
    from tests._child import run_loop

    class File:
        def fileno(self):
            raise StopIteration("fileno")

    async def main():
        m = await anymmap.AnonymousMmap.new(48 << 20)
        ticks = iter(())
        for call in (
            lambda: m.populate(0, None, progress=lambda done, total: next(ticks)),
            lambda: anymmap.MmapRaw.map_raw(File()),
        ):
            with anyio.fail_after(20):
                try:
                    await call()
                except RuntimeError as exc:
                    assert isinstance(exc.__cause__, StopIteration), repr(exc)
                else:
                    raise AssertionError("no error")
        await m.aclose()

    run_loop(sys.argv[1], main)
    print("ok")
"""


@pytest.mark.parametrize("runner", RUNNERS)
def test_stop_iteration_in_a_worker_call_reaches_the_caller(runner: str) -> None:
    """Regression test (adversary round 36): on asyncio a worker call that raised
    ``StopIteration`` (a progress callback's exhausted ``next()``, a ``fileno()``)
    could not be put into the caller's future, which then waited for ever (a
    ``fail_after`` around it did not help: the wait for a worker is not abandoned).
    It is a ``RuntimeError`` from the ``StopIteration``, as PEP 479 makes it."""
    check_child(_STOP_ITERATION_IN_A_WORKER, runner, timeout=60)


class _PackedPair(ctypes.Structure):
    """5-byte items that ctypes exports as format ``"B"`` of item size 5."""

    _pack_ = 1
    _fields_ = (("a", ctypes.c_uint8), ("b", ctypes.c_uint32))


@pytest.mark.anyio
async def test_buffers_of_items_wider_than_their_format_are_copied_whole(
    tmp_path: Path,
) -> None:
    """Regression test (adversary round 35): an array of 4 packed 5-byte structures
    (``len`` 4, 20 bytes, format ``"B"``) was checked as 4 bytes and copied as 20 by the
    kernel paths (a read 16 bytes past the end of a file window, a ``Region.write``
    over its neighbour), copied as 4 by others (silently short), and refused with a
    raw ``ValueError`` by the memory paths.  Every path copies its 20 bytes, and a
    range is checked in bytes."""
    data = bytes(range(1, 21))
    path = tmp_path / "file"
    path.write_bytes(b"\xee" * PAGE + b"OUTSIDE!" * 4)
    raw = await anymmap.MmapRaw.map_raw(path, length=PAGE)
    copy = await anymmap.MmapRaw.map_raw(path, mode="copy", length=PAGE)
    anon = await anymmap.AnonymousMmap.new(PAGE)
    region = await anymmap.MmapRegion.create(tmp_path / "region", 2 * PAGE)
    async with raw, copy, anon, region:
        for m in (raw, anon, region):
            after = await m.read(28, 4)
            await m.update_region(8, (_PackedPair * 4).from_buffer_copy(data))
            assert await m.read(8, 24) == data + after
            m.update_region_nowait(40, (_PackedPair * 4).from_buffer_copy(data))
            assert await m.read(40, 20) == data
        for m in (raw, copy, anon, region):
            out = (_PackedPair * 4)()
            await m.read_into(8, out)
            assert bytes(out) == await m.read(8, 20)
            out = (_PackedPair * 4)()
            m.read_into_nowait(8, out)
            assert bytes(out) == await m.read(8, 20)
            with pytest.raises(anymmap.OutOfBoundsError):
                await m.read_into(len(m) - 4, (_PackedPair * 4)())
            with pytest.raises(anymmap.OutOfBoundsError):
                m.read_into_nowait(len(m) - 4, (_PackedPair * 4)())
        view = region.region()
        with pytest.raises(anymmap.OutOfBoundsError):
            view.write(view.length - 4, (_PackedPair * 4).from_buffer_copy(data))
        assert await region.read(len(region) - 4, 4) == bytes(4)
    with anymmap.sync.AnonymousMmap.new(PAGE) as twin:
        twin.update_region(0, (_PackedPair * 4).from_buffer_copy(data))
        out = (_PackedPair * 4)()
        twin.read_into(0, out)
        assert bytes(out) == data
        with pytest.raises(anymmap.OutOfBoundsError):
            twin.update_region(PAGE - 4, out)


@pytest.mark.anyio
@pytest.mark.parametrize("size", [PAGE, 4 << 20])  # on the loop thread, in a worker
async def test_a_view_released_while_a_copy_waits_is_a_type_error(size: int) -> None:
    """Regression test (adversary round 35): a memoryview that another task released
    (and whose bytearray it then freed) while an awaited copy waited for its turn made
    the copy raise a raw ``ValueError``.  It is the documented ``TypeError`` for such a
    buffer, the copy touches no freed memory, and the map and its lock are untouched.
    (The twins' blocking copies check the same after their lock wait.)"""
    async with await anymmap.AnonymousMmap.new(size) as m:
        await m.update_region(0, b"m" * size)
        for direction in ("read", "write"):
            backing = bytearray(b"b" * size)
            view = memoryview(backing)
            # The copy waits behind a borrow: a writable one for a read, any for a write.
            borrow = m.as_mut_slice(0, 1) if direction == "read" else m.as_slice(0, 1)
            async with anyio.create_task_group() as tg, borrow:
                tg.start_soon(_copy_through, m, direction, view)
                await anyio.wait_all_tasks_blocked()
                view.release()  # the caller's own view: allowed
                backing.clear()  # and the memory under it: free to go
            assert m.lock.statistics() == anymmap.RWLockStatistics(0, None, 0, 0)
            assert await m.read(0, size) == b"m" * size


def test_a_view_released_while_a_blocking_copy_waits_is_a_type_error() -> None:
    """The same in the blocking twin: another thread releases the view while the copy
    waits for the lock."""
    with anymmap.sync.AnonymousMmap.new(PAGE) as m:
        for direction in ("read", "write"):
            backing = bytearray(PAGE)
            view = memoryview(backing)
            raised: list[BaseException] = []
            copy = m.read_into if direction == "read" else m.update_region

            def run(
                copy: Callable[[int, memoryview], None] = copy,
                view: memoryview = view,
                raised: list[BaseException] = raised,
            ) -> None:
                try:
                    copy(0, view)
                except BaseException as exc:  # noqa: BLE001 - checked below
                    raised.append(exc)

            borrow = m.as_mut_slice(0, 1) if direction == "read" else m.as_slice(0, 1)
            with borrow:
                thread = threading.Thread(target=run)
                thread.start()
                while not m._lock._queue:  # (until the copy waits for the lock)
                    thread.join(0.001)
                view.release()
                backing.clear()
            thread.join()
            assert len(raised) == 1, raised
            assert isinstance(raised[0], TypeError), raised
            assert "released" in str(raised[0])


_DERIVED_FROM_A_BORROW: dict[str, Callable[[memoryview], Any]] = {
    "the view": lambda view: view,
    "a cast": lambda view: view.cast("I"),
    "a slice": lambda view: view[0 : len(view)],
    "a NumPy array": lambda view: np.frombuffer(view, np.uint8),
}


@pytest.mark.anyio
@pytest.mark.parametrize("nowait", [False, True])
@pytest.mark.parametrize("derive", list(_DERIVED_FROM_A_BORROW))
async def test_a_failed_copys_kept_error_does_not_pin_its_buffer(
    derive: str, nowait: bool
) -> None:
    """Regression test (adversary round 36): a copy that failed on a cast, slice or
    NumPy array of another map's borrowed view, its error kept by the caller, kept that
    buffer alive through the traceback (the call's frames held it and the view made of
    it), so the borrow's end raised ``BorrowError``.  The call lets go of both; the
    same in the blocking twin."""
    make = _DERIVED_FROM_A_BORROW[derive]
    kept: list[BaseException] = []
    async with (
        await anymmap.AnonymousMmap.new(PAGE) as m,
        await anymmap.AnonymousMmap.new(PAGE) as other,
        other.as_mut_slice(0, PAGE) as view,  # (its end raised BorrowError)
    ):
        try:
            if nowait:
                m.read_into_nowait(100, make(view))
            else:
                await m.read_into(100, make(view))
        except anymmap.OutOfBoundsError as exc:
            kept.append(exc)
    with (
        anymmap.sync.AnonymousMmap.new(PAGE) as a,
        anymmap.sync.AnonymousMmap.new(PAGE) as b,
        b.as_slice(0, PAGE) as twin_view,
    ):
        try:
            if nowait:
                a.update_region_nowait(100, make(twin_view))
            else:
                a.update_region(100, make(twin_view))
        except anymmap.OutOfBoundsError as exc:
            kept.append(exc)
    assert len(kept) == 2, kept


@pytest.mark.anyio
async def test_a_copy_cancelled_in_its_lock_wait_leaves_its_buffer_at_once() -> None:
    """Regression test (adversary round 36): a copy cancelled while it waited for the
    lock kept its bytearray exported until the cyclic collector ran (its view sat in
    a reference cycle of the cancellation's traceback): the bytearray could not be
    resized meanwhile."""
    async with await anymmap.AnonymousMmap.new(PAGE) as m:
        for copy in (m.read_into, m.update_region):
            buffer = bytearray(64)
            gc.disable()
            try:
                async with m.as_mut_slice(0, 8):
                    with anyio.CancelScope() as scope:
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(copy, 0, buffer)
                            await anyio.wait_all_tasks_blocked()
                            scope.cancel()
                buffer.append(0)  # (BufferError while it is still exported)
            finally:
                gc.enable()


@pytest.mark.anyio
async def test_kept_errors_of_pieced_region_and_refused_copies_pin_nothing(
    tmp_path: Path,
) -> None:
    """Regression test (adversary round 37): the same through a copy over two pieces of
    a sparse map (its slice of the buffer for each piece), ``Region``'s copies, and a
    buffer refused with ``TypeError`` (``byte_view``'s own view of it): the kept error
    made another map's borrow end with ``BorrowError``, or a read-only ``mmap`` that
    could not be closed."""
    kept: list[BaseException] = []
    async with (
        await anymmap.SparseMapping.new(2 * PAGE) as sparse,
        await anymmap.MmapRegion.create(tmp_path / "region", PAGE) as region,
        await anymmap.AnonymousMmap.new(2 * PAGE) as other,
    ):
        await sparse.alloc(0, PAGE)  # then a hole
        for make in _DERIVED_FROM_A_BORROW.values():
            async with other.as_mut_slice(0, 2 * PAGE) as view:
                try:
                    await sparse.read_at(0, make(view))
                except anymmap.MappingFaultError as exc:
                    kept.append(exc)
                try:
                    sparse.read_into_nowait(0, make(view))
                except anymmap.MappingFaultError as exc:
                    kept.append(exc)
                try:
                    region.region().read_into(100, make(view))
                except anymmap.OutOfBoundsError as exc:
                    kept.append(exc)
                try:
                    await region.read_into(0, np.frombuffer(view, np.uint8)[::2])
                except TypeError as exc:
                    kept.append(exc)
    assert len(kept) == 4 * len(_DERIVED_FROM_A_BORROW), kept
    path = tmp_path / "file"
    path.write_bytes(bytes(PAGE))
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as ro:
        async with await anymmap.AnonymousMmap.new(PAGE) as m:
            try:
                await m.read_into(0, ro)  # (read-only: refused)
            except TypeError as exc:
                kept.append(exc)
    assert isinstance(kept[-1], TypeError)  # and the mmap closed above


async def _copy_through(m: anymmap.AnonymousMmap, direction: str, view: memoryview) -> None:
    copy = m.read_into if direction == "read" else m.update_region
    with pytest.raises(TypeError, match="released"):
        await copy(0, view)


@pytest.mark.anyio
async def test_buffers_python_cannot_export_are_type_errors() -> None:
    """Regression test: a released memoryview and a NumPy datetime64 array raised
    ``ValueError`` (the documented error for a bad buffer is ``TypeError``), and an empty
    array of more than one dimension was refused instead of being a no-op."""
    released = memoryview(bytearray(4))
    released.release()
    async with await anymmap.AnonymousMmap.new(PAGE) as m:
        for bad in (released, np.zeros(2, dtype="M8[s]")):
            with pytest.raises(TypeError, match="cannot be used as a buffer"):
                await m.read_into(0, bad)
            with pytest.raises(TypeError, match="cannot be used as a buffer"):
                await m.update_region(0, bad)
        await m.read_into(0, np.zeros((0, 2, 3)))
        await m.update_region(PAGE, np.zeros((2, 0)))


_RAW_FORK = """
    import ctypes, os, sys, tempfile
    import anymmap.sync

    path = tempfile.mktemp()
    with open(path, "wb") as f:
        f.write(b"parent" + bytes(4090))

    with anymmap.sync.MmapRaw.map_raw(path, mode="copy") as private:
        private.update_region(0, b"PARENT")  # private: only this process sees it
        with anymmap.sync.MmapRaw.map_raw(path) as shared:
            # glibc's fork(), unlike os.fork(), skips Python's at-fork hooks.  (Through
            # PyDLL, which keeps the GIL: a fork while another thread held the GIL would
            # leave the child without one.)
            pid = ctypes.PyDLL(None).fork()
            if pid == 0:
                private.update_region(0, b"child!")
                ok = private.read(0, 6) == b"child!"
                os._exit(0 if ok else 5)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, status
            assert private.read(0, 6) == b"PARENT", private.read(0, 6)
            assert shared.read(0, 6) == b"parent"
    os.unlink(path)
    print("ok")
"""


def test_a_raw_fork_child_never_writes_into_its_parent() -> None:
    """Regression test: the pid used by ``process_vm_writev`` was cached and only reset by
    ``os.register_at_fork``; after a fork that skips Python's hooks, a child's copies went
    into its parent's private memory."""
    check_child(_RAW_FORK)


_DONTFORK = """
    import ctypes, gc, mmap, os, sys
    import anyio, anymmap
    from tests._helpers import TAG, TAG_AT, holds_tag, is_mapped

    FORK = sys.argv[1]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long)

    async def child_side(m, other):
        assert m.closed
        for call in (lambda: m.read(0, 16), lambda: m.update_region(0, b"x"),
                     lambda: m.advise(anymmap.Advice.NORMAL)):
            try:
                await call()
            except anymmap.ClosedMapError as exc:
                assert "DONTFORK" in str(exc), exc
            else:
                raise AssertionError("used a map whose memory is gone")
        try:
            m.read_into_nowait(0, bytearray(1))
        except anymmap.ClosedMapError:
            pass
        else:
            raise AssertionError("used a map whose memory is gone")
        assert await other.read(0, 5) == b"other"  # maps without the advice still work
        await m.aclose()

    async def setup():
        m = await anymmap.AnonymousMmap.new(1 << 20)
        other = await anymmap.AnonymousMmap.new(4096)
        await other.update_region(0, b"other")
        await m.advise(anymmap.Advice.DONTFORK)
        return m, other

    async def parent_side(m):
        assert not m.closed
        await m.update_region(0, b"parent")
        await m.aclose()

    m, other = anyio.run(setup)
    addr = m.as_ptr()
    pid = os.fork() if FORK == "os.fork" else ctypes.PyDLL(None).fork()  # keeps the GIL
    if pid == 0:
        try:
            anyio.run(child_side, m, other)
            # Something else of the child's now lives where the map was: dropping the
            # map must not unmap it.
            # (MAP_FIXED_NOREPLACE: if the child's own allocations, a worker thread's
            # stack or an arena, took the freed range already, that is the something.)
            # The check after the drop is by a tag in our page: what took the range
            # otherwise (an arena) may be freed by the collection.
            placed = libc.mmap(addr, 4096, 3, 0x22 | 0x100000, -1, 0)
            if placed == addr:
                ctypes.memmove(addr + TAG_AT, TAG, len(TAG))
            else:
                assert ctypes.get_errno() == 17 and is_mapped(addr), (placed, addr)
            del m
            gc.collect()
            assert placed != addr or holds_tag(addr)
        except BaseException as exc:
            print("child:", repr(exc), flush=True)
            os._exit(7)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    anyio.run(parent_side, m)
    print("ok")
"""


@pytest.mark.parametrize("fork", ["os.fork", "raw fork"])
def test_a_map_advised_dontfork_is_closed_in_a_child(fork: str) -> None:
    """Regression test: after ``advise(Advice.DONTFORK)`` and a fork, the child's map said
    ``closed=False`` and ``read()`` died of SIGSEGV (the memory is not in the child)."""
    check_child(_DONTFORK, fork)


_WRAPPED_VIEWS = """
    import gc, pickle, re, struct
    import anyio, anymmap, anymmap.sync

    WRAPPERS = {
        "PickleBuffer": lambda view: pickle.PickleBuffer(view),
        "struct.iter_unpack": lambda view: struct.iter_unpack("<I", view),
        "re.finditer": lambda view: re.finditer(rb"a", view),
    }

    def check_released(view):
        try:
            view[0]
        except ValueError:
            return
        raise AssertionError("the view is still usable after its wrapper died")

    async def main():
        for name, wrap in WRAPPERS.items():
            m = await anymmap.AnonymousMmap.new(4096)
            await m.update_region(0, b"abcd" * 4)
            try:
                async with m.as_slice(0, 16) as view:
                    wrapper = wrap(view)
            except anymmap.BorrowError:
                pass
            else:
                raise AssertionError(f"{name}: no BorrowError")
            try:
                await m.aclose()  # the memory must stay mapped under the wrapper
            except anymmap.BorrowError:
                pass
            else:
                raise AssertionError(f"{name}: closed under a live export")
            if name == "PickleBuffer":
                assert bytes(memoryview(wrapper)) == b"abcd" * 4
            cycle = [wrapper, view]
            cycle.append(cycle)
            del wrapper, cycle
            gc.collect()
            check_released(view)
            del view
            await m.aclose()

    anyio.run(main)
    anyio.run(main, backend="trio")
    for name, wrap in WRAPPERS.items():
        m = anymmap.sync.AnonymousMmap.new(4096)
        try:
            with m.as_slice(0, 16) as view:
                wrapper = wrap(view)
        except anymmap.BorrowError:
            pass
        else:
            raise AssertionError(f"{name}: no BorrowError")
        cycle = [wrapper, view]
        cycle.append(cycle)
        del wrapper, view, cycle
        gc.collect()
        m.close()
    print("ok")
"""


def test_views_wrapped_by_their_own_exporter_are_borrow_errors() -> None:
    """Regression test: a view wrapped by something holding its own export
    (``PickleBuffer``, ``struct.iter_unpack``, ``re.finditer``) that outlived the borrow
    ended the block with a plain ``BufferError`` and left the borrow's base unparked, so
    a reference cycle through it could crash the garbage collector."""
    check_child(_WRAPPED_VIEWS)


_TWO_EVENT_LOOPS_SHARE_A_MAP = """
    import sys, threading
    import anyio, anymmap, trio  # (imported under a storm of thread switches, trio takes s)

    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    SIZE = 8 << 20
    sm = None

    async def make():
        global sm
        sm = await anymmap.SparseMapping.new(SIZE)
        await sm.alloc(0, SIZE)

    anyio.run(make)  # this loop ends: the next one, in any thread, may adopt the map
    stop = threading.Event()
    refused = []

    async def remap():
        try:
            for _ in range(3000):
                if stop.is_set():
                    break
                await sm.unmap(0, SIZE)
                await sm.alloc(0, SIZE)
                await anyio.sleep(0.0005)
        except RuntimeError as exc:
            refused.append(str(exc))
        finally:
            stop.set()

    async def access():
        buf = bytearray(4096)
        try:
            while not stop.is_set():
                try:
                    for k in range(64):
                        sm.atomic_load(8 * k, 8)
                    sm.read_into_nowait(0, buf)
                except (anyio.WouldBlock, anymmap.MappingFaultError):
                    pass
                await anyio.sleep(0)
        except RuntimeError as exc:
            refused.append(str(exc))
        finally:
            stop.set()

    other = threading.Thread(target=anyio.run, args=(access,), kwargs={"backend": sys.argv[1]})
    other.start()
    anyio.run(remap, backend=sys.argv[2])
    other.join()
    assert len(refused) == 1, refused
    assert "event loop in another thread" in refused[0], refused

    async def later():  # once the other loop has ended, the map moves on with the next
        await sm.alloc(0, SIZE)  # (the remapping loop may have been stopped after unmap)
        assert sm.atomic_load(0, 8) == 0
        await sm.aclose()

    anyio.run(later)
    print("ok")
"""


@pytest.mark.parametrize(
    ("accessing", "remapping"), [("asyncio", "asyncio"), ("trio", "asyncio"), ("asyncio", "trio")]
)
def test_a_second_event_loop_is_refused_not_crashed(accessing: str, remapping: str) -> None:
    """Regression test (adversary review): a map used by two event loops in two threads
    at once died of SIGSEGV: one loop's direct accesses (``atomic_load``) found the lock
    free and touched memory that the other loop's ``unmap`` was removing in a worker
    thread.  The map now belongs to one running event loop: a task of another loop gets
    ``RuntimeError`` until that loop has ended."""
    check_child(_TWO_EVENT_LOOPS_SHARE_A_MAP, accessing, remapping, timeout=60)


def test_a_map_in_use_never_passes_to_a_loop_in_another_thread() -> None:
    """A later loop in the thread that made the map is not seen by the test of whether
    the map's loop still runs; a task of another thread's loop is still refused while a
    task of that later loop holds the lock (here: a borrow), and gets the map after."""
    import threading

    async def make() -> anymmap.AnonymousMmap:
        return await anymmap.AnonymousMmap.new(1 << 16)

    m = anyio.run(make)
    borrowed, tried = threading.Event(), threading.Event()
    outcomes: list[str] = []

    async def borrow() -> None:
        async with m.as_slice(0, 16):
            borrowed.set()
            await anyio.to_thread.run_sync(tried.wait)

    async def other() -> None:
        try:
            await m.read(0, 1)
        except RuntimeError as exc:
            outcomes.append(str(exc))
        try:  # the map's lock itself, taken by hand (RWLock's inline fast path)
            await m.lock.acquire_read()
        except RuntimeError as exc:
            outcomes.append(str(exc))
        for nowait in (m.lock.acquire_read_nowait, m.lock.acquire_write_nowait):
            try:  # (adversary round 18: these skipped the check, and a release from here
                # handed the lock to a waiter of the other loop without waking it)
                nowait()
            except RuntimeError as exc:  # noqa: PERF203 - two calls
                outcomes.append(str(exc))
        tried.set()

    thread = threading.Thread(target=lambda: (borrowed.wait(), anyio.run(other)))
    thread.start()
    anyio.run(borrow)
    thread.join()
    assert len(outcomes) == 4, outcomes
    assert all("lock is held by a task of an event loop" in o for o in outcomes), outcomes

    async def after() -> None:  # the borrowing loop has ended: the map moves on
        assert await m.read(0, 1) == b"\0"
        await m.aclose()

    thread = threading.Thread(target=anyio.run, args=(after,))
    thread.start()
    thread.join()
    assert m.closed


_A_NEW_THREAD_WITH_AN_OLD_IDENTITY = """
    import sys, threading, time
    import anyio, anymmap

    backend = sys.argv[1]
    holder, outcome = {}, {}

    def first():  # makes the map in a loop of its own, then its thread ends
        async def main():
            holder["m"] = await anymmap.SparseMapping.new(1 << 22)

        holder["ident"] = threading.get_ident()
        anyio.run(main, backend=backend)

    thread = threading.Thread(target=first)
    thread.start()
    thread.join()
    m = holder["m"]
    running, stop = threading.Event(), threading.Event()

    def second():  # a loop in a new thread that got the first one's identity
        if threading.get_ident() != holder["ident"]:
            return

        async def main():
            await m.alloc(0, 1 << 21)
            running.set()
            while not stop.is_set():
                async with m.as_mut_slice(0, 4096) as view:
                    view[0] = 1
                await anyio.sleep(0)

        anyio.run(main, backend=backend)

    deadline = time.monotonic() + 5  # (a busy machine may not reuse the identity soon)
    while time.monotonic() < deadline:
        thread = threading.Thread(target=second)
        thread.start()
        # (Until it runs its loop or ends: one that got the identity runs until stopped,
        # and on a busy machine may take longer than any fixed wait to start its loop.)
        while thread.is_alive() and not running.wait(0.01):
            pass
        if running.is_set():
            break
        thread.join()
    else:
        print("no thread got the identity again: nothing to check")
        print("ok")
        sys.exit(0)

    def third():
        async def main():
            taken, until = 0, time.monotonic() + 1
            while time.monotonic() < until:
                try:
                    async with m.as_slice(0, 4096):
                        taken += 1
                except RuntimeError:
                    pass
                await anyio.sleep(0)
            outcome["taken"] = taken

        anyio.run(main, backend=backend)
        stop.set()

    other = threading.Thread(target=third)
    other.start()
    other.join()
    thread.join()
    assert outcome["taken"] == 0, outcome  # two loops never shared the map
    print("ok")
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_thread_with_a_finished_threads_identity_is_not_the_maps_loop(backend: str) -> None:
    """Regression test (adversary review): the map knew its loop by its thread's identity
    only, and a new thread may get the identity of one that has ended: its loop passed
    for the map's, a loop in a third thread took the map while it ran, and the two
    loops' tasks shared the lock (hanging in 2 of 3 runs).  A task that takes the lock
    now shows its loop, not only its thread."""
    check_child(_A_NEW_THREAD_WITH_AN_OLD_IDENTITY, backend, timeout=40)


_DIRECT_ACCESS_MEETS_A_REMAP = """
    import sys, threading, time
    import anymmap, anymmap.sync

    # The core under both facades, without their locks (as at the instant a map passes
    # from one event loop to the next): a direct access must never touch memory while
    # another thread changes the mapping.
    SIZE = 1 << 20
    m = anymmap.sync.SparseMapping.new(SIZE)
    m.alloc(0, SIZE)
    core = m._core
    stop = threading.Event()
    seen = {}

    def remap():
        for _ in range(500):
            core.unmap(0, SIZE)
            core.alloc(0, SIZE)
            time.sleep(0.0002)
        stop.set()

    def access():
        buf = memoryview(bytearray(1 << 16))
        while not stop.is_set():
            for call in (
                lambda: core.atomic_load(4096, 8),
                lambda: core.atomic_store(8192, 8, 7),
                lambda: core.try_read(0, buf),
                lambda: core.try_write(1 << 19, buf),
                lambda: core.read_bytes(0, 4096),
            ):
                try:
                    call()
                    seen["ok"] = seen.get("ok", 0) + 1
                except (RuntimeError, anymmap.MappingFaultError) as exc:
                    seen[type(exc).__name__] = seen.get(type(exc).__name__, 0) + 1

    threads = [threading.Thread(target=f) for f in (remap, access)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen.get("RuntimeError"), seen  # the two met, and the access stood back
    m.close()
    print(seen, file=sys.stderr)
    print("ok")
"""


def test_a_direct_access_never_meets_a_change_of_the_mapping() -> None:
    """Regression test for the one above, at the core: the copies and atomics that take
    no pin (for speed) now register for the instant they touch memory, and a close or
    change of the mapping waits for them; one that finds a change under way raises
    ``RuntimeError``.  Without that, a task of the next event loop could race the last
    change made for the previous one."""
    check_child(_DIRECT_ACCESS_MEETS_A_REMAP, timeout=60)


# -- wrong results ----------------------------------------------------------------------


@pytest.mark.parametrize("prefill", ["zeros", "allocate"])
def test_two_maps_growing_one_file_never_zero_each_others_writes(
    tmp_path: Path, prefill: Literal["zeros", "allocate"]
) -> None:
    """Regression test (adversary review): two maps of one file growing it at once with
    ``prefill="zeros"`` lost data (7 to 24 runs in 200): one read the file's size, the
    other grew the file, wrote and flushed its bytes, and then the first wrote its zeros
    over them.  Zeros are now appended (``O_APPEND``: at the end of the file as it is at
    each write), and the two growers take turns, so the file ends at the size asked."""
    import threading

    path = tmp_path / "f"
    start, grow = 1 << 16, 1 << 22
    for _ in range(200):
        path.write_bytes(b"\1" * start)
        a = anymmap.sync.MmapRaw.map_raw(path, prefill=prefill)
        b = anymmap.sync.MmapRaw.map_raw(path, prefill=prefill)
        both = threading.Barrier(2)

        def grow_and_write(m: anymmap.sync.MmapRaw = a, both: threading.Barrier = both) -> None:
            both.wait()
            m.resize(start + grow)
            m.update_region(start + grow - 4096, b"A" * 4096)
            m.flush()

        def grow_only(m: anymmap.sync.MmapRaw = b, both: threading.Barrier = both) -> None:
            both.wait()
            m.resize(start + grow)

        threads = [threading.Thread(target=grow_and_write), threading.Thread(target=grow_only)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        try:
            assert a.read(start + grow - 4096, 4096) == b"A" * 4096
            assert b.read(start + grow - 4096, 4096) == b"A" * 4096
            assert a.read(0, start) == b"\1" * start
            assert path.stat().st_size == start + grow  # neither grew it past the size asked
        finally:
            a.close()
            b.close()


def test_zeros_appended_while_another_process_appends(tmp_path: Path) -> None:
    """The same, against a second process that appends records to the file while a map
    grows it with zeros: every record it wrote is still there, in order."""
    import subprocess
    import sys

    path = tmp_path / "f"
    path.write_bytes(b"\1" * 4096)
    records = 3000
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import os, sys, time\n"
                "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)\n"
                f"for i in range(1, {records + 1}):\n"
                "    os.write(fd, i.to_bytes(4, 'little') * 16)\n"
                "    if i % 16 == 0:\n"
                "        time.sleep(0.0005)\n"
            ),
            str(path),
        ]
    )
    m = anymmap.sync.MmapRaw.map_raw(path, prefill="zeros")
    try:
        grown = 0
        while writer.poll() is None:
            m.resize(path.stat().st_size + 3 * 4096)  # past the end the writer appends at
            grown += 1
        assert writer.wait() == 0
    finally:
        m.close()
    data = path.read_bytes()
    position = 0
    for i in range(1, records + 1):
        position = data.find(i.to_bytes(4, "little") * 16, position)
        assert position >= 0, f"record {i} was overwritten ({grown} growths)"


def test_a_failed_growth_never_cuts_another_maps_growth(tmp_path: Path) -> None:
    """Regression test (adversary review): a resize whose growth failed (a full disk) cut
    the file back to the size it saw when it started, cutting away what another map of
    the file had grown and written meanwhile.  A failed growth now cuts only what it
    added itself.  A trace function lands the other map's growth at that instant."""
    import subprocess
    import sys

    small = tmp_path / "small"
    small.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)]
    if subprocess.run(mount, check=False).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    maps: list[anymmap.sync.MmapRaw] = []
    try:
        path = small / "f"
        path.write_bytes(b"\1" * (1 << 20))
        a = anymmap.sync.MmapRaw.map_raw(path)
        maps.append(a)
        b = anymmap.sync.MmapRaw.map_raw(path)
        maps.append(b)

        def other_map_grows(frame: object, event: str, arg: object) -> None:
            if event == "call" and getattr(frame, "f_code").co_name == "fill_file":  # noqa: B009
                sys.settrace(None)
                a.resize(2 << 20)
                a.update_region((2 << 20) - 4096, b"A" * 4096)
                a.flush()

        sys.settrace(other_map_grows)
        try:
            with pytest.raises(OSError) as caught:
                b.resize(16 << 20)  # more than the file system holds
        finally:
            sys.settrace(None)
        assert caught.value.errno == errno.ENOSPC
        assert path.stat().st_size == 2 << 20
        assert a.read((2 << 20) - 4096, 4096) == b"A" * 4096
        assert len(b) == 1 << 20
    finally:
        for m in maps:
            m.close()  # (a map keeps the file system busy)
        subprocess.run(["umount", "-l", str(small)], check=False)


_SHRINK = """
    import os, sys, time
    from anymmap.sync import MmapRaw

    path, until = sys.argv[1], time.monotonic() + 2
    m = MmapRaw.map_raw(path)
    print("mapped", flush=True)  # (mapped later, it would cover the other's growth)
    while time.monotonic() < until:
        m.resize(64 * 4096)
        m.resize(32 * 4096)  # reaches the end of the file it saw: cuts it, unless grown
    m.close()
    print("ok")
"""


def test_a_shrink_never_cuts_another_maps_growth(tmp_path: Path) -> None:
    """Regression test (adversary review): a map that shrinks cuts the file if it reached
    the file's end, but it decided so from a size read before anything else, and cut
    without taking turns with other maps: another process's map that had grown the file
    past that end, written and flushed, lost it (about 9% of steps).  The size is now
    read and cut while the maps of the file take turns."""
    import struct
    import subprocess
    import sys

    from ._child import _PRELUDE, _ROOT

    path = tmp_path / "f"
    path.write_bytes(bytes(32 * 4096))
    source = _PRELUDE.format(timeout=30.0, root=_ROOT) + textwrap.dedent(_SHRINK)
    shrinker = subprocess.Popen(
        [sys.executable, "-c", source, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert shrinker.stdout is not None
    assert shrinker.stdout.readline() == "mapped\n"
    m = anymmap.sync.MmapRaw.map_raw(path)
    steps = lost = 0
    try:
        while shrinker.poll() is None:
            size = 65 * 4096  # past anything the other map reaches
            m.resize(size)
            m.update_region(size - 8, struct.pack("<Q", steps))
            m.flush()
            with path.open("rb") as f:
                f.seek(size - 8)
                lost += f.read(8) != struct.pack("<Q", steps)
            m.resize(32 * 4096)  # this one reaches the end: its own cut
            steps += 1
    finally:
        m.close()
    assert shrinker.wait() == 0
    assert shrinker.stdout.read() == "ok\n"
    shrinker.stdout.close()
    assert steps > 10
    assert not lost, f"{lost} of {steps} flushed writes were cut away"


@pytest.mark.parametrize("prefill", ["allocate", "zeros"])
@pytest.mark.parametrize("foreign", [True, False], ids=["another-writer", "alone"])
def test_a_failed_growth_never_cuts_what_another_writer_appended(
    tmp_path: Path, prefill: str, foreign: bool
) -> None:
    """Regression test (adversary round 25): a growth that failed (a full disk, a
    Ctrl-C) cut the file back to its size before, and with it the records another
    process had appended and synced meanwhile (10 of 10 runs with ``prefill="zeros"``,
    about 10,000 records each).  It now cuts back only a file exactly as long as it made
    it; alone, it still leaves the file as it was."""
    path = tmp_path / "log"
    record = b"SYNCED RECORD 42"

    def hook(frame: Any, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_name == "allocate":
            sys.setprofile(None)
            if foreign:  # another writer appends and syncs (O_APPEND, as loggers do)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                os.write(fd, record)
                os.fsync(fd)
                os.close(fd)
            raise KeyboardInterrupt  # (and the growth fails)

    with anymmap.sync.MmapRaw.create(path, PAGE, prefill=cast(Any, prefill)) as m:
        m.update_region(0, b"mine")
        sys.setprofile(hook)
        try:
            with pytest.raises(KeyboardInterrupt):
                m.resize(64 * PAGE)
        finally:
            sys.setprofile(None)
        assert len(m) == PAGE  # the map is as it was
        data = path.read_bytes()
        assert data[:4] == b"mine"
        if foreign:
            assert record in data  # (not cut away)
        else:
            assert len(data) == PAGE  # alone: cut back as before


_GROWTH_UNDER_A_PROGRAMS_LOCK = """
    import os, subprocess, sys
    import anymmap.sync
    from anymmap._sys import _linux

    _linux._GROWTH_LOCK_PATIENCE = 3600.0  # (a wait for the lock would hang: the timeout)
    path = sys.argv[1]
    m = anymmap.sync.MmapRaw.create(path, 4096)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
         "fcntl.lockf(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()", path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline() == "locked\\n"
    m.resize(1 << 20)  # grows: goes on at once past the program's own lock
    m.update_region((1 << 20) - 1, b"x")
    m.resize(4096)  # cuts
    with anymmap.sync.MmapRaw.open_or_create(path, 2 << 20) as other:  # grows
        assert len(other) == 2 << 20
    holder.communicate("")
    m.close()
    print("ok")
"""


def test_a_growth_does_not_wait_for_a_lock_the_program_holds_on_its_file(
    tmp_path: Path,
) -> None:
    """Regression test (adversary round 25): the maps of a file take turns to change its
    size with an OFD lock on one byte of it; a whole-file ``lockf`` another process held
    (a single-instance guard, say) covers that byte, and every ``resize`` and growing
    ``open_or_create`` waited 30 s for it.  Only another growth's turn is waited for now.
    (The wait is made endless here, so that one would show as the child's timeout.)"""
    check_child(_GROWTH_UNDER_A_PROGRAMS_LOCK, str(tmp_path / "f"), timeout=30)


_A_MAP_MADE_DURING_A_FAILING_GROWTH = """
    import errno, os, select, subprocess, sys, textwrap
    import anymmap.sync

    PEER = '''
    import sys
    import anymmap.sync

    path, how = sys.argv[1], sys.argv[2]
    if how == "check_and_remap":
        region = anymmap.sync.MmapRegion.attach(path)
    print("ready", flush=True)
    sys.stdin.readline()
    if how == "map_raw":
        m = anymmap.sync.MmapRaw.map_raw(path)
    elif how == "open_or_create":
        m = anymmap.sync.MmapRaw.open_or_create(path, 4096)
    elif how == "attach":
        m = anymmap.sync.MmapRegion.attach(path)
    else:
        region.check_and_remap()
        m = region
    print(len(m), flush=True)
    sys.stdin.readline()
    '''
    path, how = sys.argv[1], sys.argv[2]
    m = anymmap.sync.MmapRaw.create(path, 4096, prefill="zeros")
    peer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(PEER), path, how],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert peer.stdout.readline() == "ready\\n"
    early = []

    def fail_once_appended(frame, event, arg):
        # The zeros are appended and the growth holds its turn: the peer maps the file
        # now, or waits for the turn.  Then the growth fails as on a full disk.
        if event == "call" and frame.f_code.co_name == "allocate":
            assert os.path.getsize(path) == 8 << 20
            peer.stdin.write("go\\n")
            peer.stdin.flush()
            if select.select([peer.stdout], [], [], 1.0)[0]:
                early.append(peer.stdout.readline())
            raise OSError(errno.ENOSPC, "no space left, as it were")

    sys.settrace(fail_once_appended)
    try:
        m.resize(8 << 20)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    else:
        raise AssertionError("the growth did not fail")
    finally:
        sys.settrace(None)
    assert os.path.getsize(path) == 4096  # cut back
    seen = early[0] if early else peer.stdout.readline()
    assert seen == "4096\\n", f"the peer mapped {seen.strip()} bytes of a 4096-byte file"
    peer.communicate("end\\n")
    assert peer.returncode == 0
    m.close()
    print("ok")
"""


@pytest.mark.parametrize("how", ["map_raw", "open_or_create", "attach", "check_and_remap"])
def test_a_map_made_during_a_failing_growth_does_not_outlive_its_file(
    tmp_path: Path, how: str
) -> None:
    """Regression test (adversary round 26): a growth that fails cuts back what it
    appended, if the file is as long as it made it; another process that mapped the file
    meanwhile (``map_raw``, ``open_or_create`` of the existing file, a region's ``attach``
    or ``check_and_remap``) took no turn, and was left with a map past the end of its
    file (``MappingFaultError`` from its copies, SIGBUS through a view).  Mapping now
    takes a shared turn with the growths, and maps what the failed growth left."""
    check_child(_A_MAP_MADE_DURING_A_FAILING_GROWTH, str(tmp_path / "f"), how, timeout=30)


_AN_EXCLUSIVE_CREATE_RACED_BY_OPEN_OR_CREATE = """
    import errno, os, subprocess, sys
    import anymmap.sync

    PEER = (
        "import sys, anymmap.sync\\n"
        "with anymmap.sync.MmapRaw.open_or_create(sys.argv[1], 4096) as m:\\n"
        "    m.update_region(0, b'peer record')\\n"
        "    m.flush()\\n"
        "print('done', flush=True)\\n"
    )
    path, at = sys.argv[1], sys.argv[2]
    ran = []

    def peer_at(frame, event, arg):
        # While the exclusive create allocates its blocks ("allocate", then it fails as
        # on a full disk) or is about to name its file ("link_unnamed"), another
        # process calls open_or_create on the path, and writes and flushes a record.
        if event == "call" and frame.f_code.co_name == at and not ran:
            ran.append(subprocess.run(
                [sys.executable, "-c", PEER, path], capture_output=True, text=True,
            ))
            if at == "allocate":
                raise OSError(errno.ENOSPC, "no space left, as it were")

    sys.settrace(peer_at)
    try:
        anymmap.sync.MmapRaw.create(path, 8 << 20, prefill="zeros")
    except OSError as exc:
        want = errno.ENOSPC if at == "allocate" else errno.EEXIST
        assert exc.errno == want, exc
    else:
        raise AssertionError("the create did not fail")
    finally:
        sys.settrace(None)
    assert ran and ran[0].stdout == "done\\n", ran
    with open(path, "rb") as f:  # the peer's file, whole, where it made it
        assert f.read() == b"peer record" + bytes(4096 - 11)
    print("ok")
"""


@pytest.mark.parametrize("at", ["allocate", "link_unnamed"])
def test_an_open_or_create_racing_a_failing_create_keeps_its_file(at: str) -> None:
    """Regression test (documented as not covered in round 26): an exclusive ``create``
    that failed removed its file, and with it what an ``open_or_create`` in another
    process had opened in the meantime and written (it lived on only in that map).
    The file is now made without a name (``O_TMPFILE``) and named only once whole and
    mapped: the peer makes its own file, and a create that then finds the path taken
    raises ``FileExistsError``.  (On tmpfs, which has ``O_TMPFILE``: the disk
    under ``tmp_path`` may not.)"""
    shm = tempfile.mkdtemp(dir="/dev/shm")
    try:
        check_child(
            _AN_EXCLUSIVE_CREATE_RACED_BY_OPEN_OR_CREATE, os.path.join(shm, "f"), at, timeout=30
        )
    finally:
        shutil.rmtree(shm, ignore_errors=True)


_A_TURN_INSIDE_A_TURN_OF_THE_SAME_THREAD = """
    import os, sys
    import anymmap.sync
    from anymmap._sys import _linux

    _linux._GROWTH_LOCK_PATIENCE = 3600.0  # (a wait for the lock would hang: the timeout)
    path, case = sys.argv[1], sys.argv[2]
    m = anymmap.sync.MmapRaw.create(path, 4096, prefill="zeros")
    other = anymmap.sync.MmapRaw.map_raw(path)
    done = []

    def inside(frame, event, arg):
        # What a signal handler or a finalizer might do on this thread: map the file
        # inside a growth of it, or grow it inside a mapping of it.
        if event != "call" or done:
            return
        if case == "map in growth" and frame.f_code.co_name == "append_zeros":
            done.append(anymmap.sync.MmapRaw.map_raw(path))
            done.append(anymmap.sync.MmapRaw.open_or_create(path, 4096))
        elif case == "growth in map" and frame.f_code.co_name == "map_placed":
            other.resize(1 << 20)
            done.append(other)

    sys.settrace(inside)
    try:
        if case == "map in growth":
            m.resize(1 << 20)
        else:
            anymmap.sync.MmapRaw.map_raw(path).close()
    finally:
        sys.settrace(None)
    assert done, "the hook never ran"
    assert os.path.getsize(path) == 1 << 20
    print("ok")
"""


@pytest.mark.parametrize("case", ["map in growth", "growth in map"])
def test_a_turn_inside_a_turn_of_the_same_thread_does_not_wait(tmp_path: Path, case: str) -> None:
    """Regression test (adversary round 27): a signal handler or finalizer that mapped a
    file while its thread was inside a growth of it (or grew it inside a mapping) waited
    for its own thread's turn, 30 s.  A thread now goes on without a turn it holds."""
    check_child(_A_TURN_INSIDE_A_TURN_OF_THE_SAME_THREAD, str(tmp_path / "f"), case, timeout=30)


_A_PARENT_KILLED_DURING_A_GROWTH = """
    import os, signal, subprocess, sys
    import anymmap.sync
    from anymmap._sys import _linux

    _linux._GROWTH_LOCK_PATIENCE = 3600.0  # (a wait for the lock would hang: the timeout)
    path = sys.argv[1]
    GROWER = (
        "import os, signal, sys, anymmap.sync\\n"
        "m = anymmap.sync.MmapRaw.create(sys.argv[1], 4096, prefill='zeros')\\n"
        "def fork_and_die(frame, event, arg):\\n"
        "    if event == 'call' and frame.f_code.co_name == 'append_zeros':\\n"
        "        pid = os.fork()\\n"
        "        if pid == 0:\\n"
        "            sys.settrace(None)\\n"
        "            os.read(0, 1)\\n"  # (lives on until told)
        "            os._exit(0)\\n"
        "        print(pid, flush=True)\\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\\n"
        "sys.settrace(fork_and_die)\\n"
        "m.resize(1 << 20)\\n"
    )
    grower = subprocess.Popen(
        [sys.executable, "-c", GROWER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    child = int(grower.stdout.readline())
    assert grower.wait() == -signal.SIGKILL
    # The grower died inside its growth; its child lives on, with the grower's
    # descriptors.  Nothing here waits for it:
    with anymmap.sync.MmapRaw.map_raw(path) as m:
        m.resize(4 << 20)
    with anymmap.sync.MmapRaw.open_or_create(path, 8 << 20) as m:
        assert len(m) == 8 << 20
    grower.stdin.close()  # (the child's stdin too: it ends)
    os.kill(child, signal.SIGKILL)
    print("ok")
"""


def test_a_child_of_a_process_killed_during_a_growth_does_not_keep_its_turn(
    tmp_path: Path,
) -> None:
    """Regression test (adversary round 27): a child forked during a growth shares the
    descriptor by which the parent takes its turn; when the parent was killed before
    letting go, the child kept the turn, and every map and growth of the file waited for
    the child to end (30 s each).  A forked child now closes the descriptors of the
    turns in flight (without unlocking: the parent's turn goes on while it lives)."""
    check_child(_A_PARENT_KILLED_DURING_A_GROWTH, str(tmp_path / "f"), timeout=30)


def test_mapping_a_descriptor_leaves_its_owners_ofd_locks_alone(tmp_path: Path) -> None:
    """Regression test (adversary round 27): mapping a descriptor passed in (``map_raw``
    of an fd, a region's ``attach_fd``) took the shared turn on the caller's own open
    file and then unlocked the turn's byte, punching a hole into the caller's whole-file
    OFD lock.  The turn is now taken on a descriptor opened for it."""
    path = tmp_path / "f"
    path.write_bytes(bytes(PAGE))
    whole_file = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, whole_file)
        anymmap.sync.MmapRaw.map_raw(fd).close()
        anymmap.sync.MmapRegion.attach_fd(fd).close()
        assert _turn_byte_lock(path) == fcntl.F_WRLCK  # the caller's lock still covers it
    finally:
        os.close(fd)


def test_create_refuses_a_path_it_cannot_name_before_allocating(tmp_path: Path) -> None:
    """Regression test (adversary round 27): an exclusive ``create`` makes its file
    without a name and names it at the end; a name too long was found out only then,
    after the whole file was allocated (and the error named ``'3'``, the descriptor the
    name was linked from).  Such a path is refused first, as it was before."""
    shm = tempfile.mkdtemp(dir="/dev/shm")  # (tmpfs: 1 TiB could never be allocated)
    try:
        too_long = os.path.join(shm, "x" * 300)
        with pytest.raises(OSError) as info:
            anymmap.sync.MmapRaw.create(too_long, 1 << 40)
        assert info.value.errno == errno.ENAMETOOLONG
        assert info.value.filename == too_long
        for path, error in [("", FileNotFoundError), (f"{shm}/new/", IsADirectoryError)]:
            with pytest.raises(error):
                anymmap.sync.MmapRaw.create(path, PAGE)
        assert os.listdir(shm) == []
    finally:
        shutil.rmtree(shm, ignore_errors=True)


_FORK_DURING_A_GROWTH = """
    import fcntl, os, struct, sys, threading
    import anymmap.sync

    m = anymmap.sync.MmapRaw.create(sys.argv[1], 1 << 20, prefill="zeros")
    child = []
    hold, release = os.pipe()

    def fork_inside(frame, event, arg):  # once the growth holds its turn: fork
        if event == "call" and frame.f_code.co_name == "append_zeros" and not child:
            pid = os.fork()
            if pid == 0:
                os.read(hold, 1)  # a long-lived child, until the parent says
                os._exit(0)
            child.append(pid)

    sys.settrace(fork_inside)
    m.resize(8 << 20)
    sys.settrace(None)
    assert child, "the growth never appended"
    # The turn is free again although the child lives: another descriptor can take it.
    fd = os.open(sys.argv[1], os.O_RDWR)
    request = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 1 << 62, 1, 0)
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)  # BlockingIOError if still held
    os.close(fd)
    os.write(release, b"x")
    os.waitpid(child[0], 0)
    m.close()
    print("ok")
"""


def test_a_child_forked_during_a_growth_does_not_keep_the_files_turn(tmp_path: Path) -> None:
    """Regression test (adversary review): a fork while another thread grew a file left
    the child holding the descriptor, and with it the lock by which maps take turns to
    change the file's size: every later growth waited 5 s and then went on without it.
    The lock is now released explicitly, which frees it in the child too."""
    check_child(_FORK_DURING_A_GROWTH, str(tmp_path / "f"), timeout=30)


ADVICE = [a for a in anymmap.Advice if a not in (anymmap.Advice.FREE,)]


@pytest.mark.parametrize("advice", ADVICE, ids=lambda a: a.name)
@pytest.mark.parametrize("kind", ["anonymous", "file", "strict"])
def test_resize_works_after_advice_on_part_of_the_map(
    tmp_path: Path, kind: str, advice: anymmap.Advice
) -> None:
    """Regression test: advice on part of a map split its mapping in the kernel, and every
    later growing ``resize`` failed with ``OSError(EFAULT)`` ("mremap: Bad address"); a
    zero-length advice at the end, documented as a no-op, advised a page too."""
    size = 4 * PAGE + 1
    m: anymmap.sync.MmapRaw | anymmap.sync.AnonymousMmap
    if kind == "file":
        path = tmp_path / "f"
        path.write_bytes(bytes(size))
        m = anymmap.sync.MmapRaw.map_raw(path)
    elif kind == "strict":
        probe = anymmap.sync.AnonymousMmap.new(1 << 24)  # find a free range, then free it
        hint = probe.as_ptr()
        probe.close()
        m = anymmap.sync.MmapOptions(len=size, hint=hint, strict=True).map_anon()
    else:
        m = anymmap.sync.AnonymousMmap.new(size)
    with m:
        m.update_region(0, bytes(range(256)) * (size // 256) + b"!")
        before = m.read(0, size)
        m.advise(advice, size, 0)  # zero-length: nothing at all
        m.advise(advice, PAGE + 10, PAGE)  # a range in the middle: the mapping splits
        m.advise(advice, 3 * PAGE, 5)
        for new_size in (size + 3 * PAGE, 1 << 20, 8 << 20, 2 * PAGE, 9 * PAGE):
            m.resize(new_size)
            assert len(m) == new_size
            keep = min(size, new_size, 2 * PAGE)
            got = m.read(0, keep)
            if advice in (anymmap.Advice.DONTNEED, anymmap.Advice.PAGEOUT) and kind != "file":
                continue  # discarded or paged out: private pages may read as zeros
            assert got == before[:keep]
        m.update_region(new_size - 1, b"z")
        assert m.read(new_size - 1, 1) == b"z"


@pytest.mark.parametrize("seal", ["shrink", "grow"])
def test_a_failed_resize_leaves_map_and_file_as_they_were(seal: str) -> None:
    """Regression test: with a memfd sealed against shrinking, ``resize`` raised but
    ``len(m)`` was already the new size while the file kept the old one."""
    fd = os.memfd_create("sealed", os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, 4 * PAGE)
        os.pwrite(fd, bytes(range(256)) * (4 * PAGE // 256), 0)
        fcntl.fcntl(
            fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK if seal == "shrink" else fcntl.F_SEAL_GROW
        )
        with anymmap.sync.MmapRaw.map_raw(fd) as m:
            # (The bare EPERM named neither the seal nor the change: adversary round 62.)
            with pytest.raises(PermissionError, match=f"sealed \\(F_SEAL_{seal.upper()}\\)"):
                m.resize(PAGE if seal == "shrink" else 8 * PAGE)
            assert len(m) == 4 * PAGE
            assert os.fstat(fd).st_size == 4 * PAGE
            assert m.read(0, 4 * PAGE) == bytes(range(256)) * (4 * PAGE // 256)
            m.update_region(4 * PAGE - 1, b"!")
            m.resize(3 * PAGE + 1 if seal == "grow" else 4 * PAGE)  # still usable
    finally:
        os.close(fd)


# -- errors a newcomer found unclear ----------------------------------------------------


def test_refusals_of_a_sealed_file_and_a_closed_descriptor_say_why() -> None:
    """Regression test (adversary round 62): a ``"rw"`` map of a memfd sealed against
    writing raised a bare ``PermissionError('mmap: Operation not permitted')``, and a
    map of a closed descriptor a bare ``EBADF``; the errors now say what is wrong."""
    fd = os.memfd_create("sealed", os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, 4 * PAGE)
        os.pwrite(fd, b"sealed", 0)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
        with pytest.raises(PermissionError, match=r"sealed \(F_SEAL_WRITE\).*read-only"):
            anymmap.sync.MmapRaw.map_raw(fd)
        for mode in ("r", "copy"):  # what the message proposes works
            with anymmap.sync.MmapRaw.map_raw(fd, mode=mode) as m:
                assert m.read(0, 6) == b"sealed"
    finally:
        os.close(fd)
    closed = os.open(os.devnull, os.O_RDONLY)
    os.close(closed)
    with pytest.raises(OSError, match=f"{closed} is not an open file descriptor") as info:
        anymmap.sync.MmapRaw.map_raw(closed)
    assert info.value.errno == errno.EBADF
    with anymmap.sync.SparseMapping.new(PAGE) as sparse:  # (round 63: a bare EBADF here)
        with pytest.raises(OSError, match=f"{closed} is not an open file descriptor"):
            sparse.mmap(0, PAGE, mmap.PROT_READ, mmap.MAP_SHARED, closed)
        with pytest.raises(OSError, match=f"{closed} is not an open file descriptor"):
            sparse.map_file(0, PAGE, closed)


@pytest.mark.anyio
async def test_copies_through_the_map_inside_the_tasks_own_borrow() -> None:
    """Regression test: ``read_into_nowait`` inside the task's own ``as_mut_slice`` raised
    ``WouldBlock`` with an empty message, though waiting could never help."""
    async with await anymmap.AnonymousMmap.new(PAGE) as m:
        async with m.as_mut_slice(0, 4) as view:
            view[:] = b"mine"
            with pytest.raises(RuntimeError, match="view"):
                m.read_into_nowait(0, bytearray(1))
            with pytest.raises(RuntimeError, match="view"):
                m.update_region_nowait(0, b"x")
            with pytest.raises(RuntimeError):
                await m.read(0, 1)
            with pytest.raises(RuntimeError):
                await m.update_region(0, b"x")
        async with m.as_slice(0, 4) as view:
            assert await m.read(0, 4) == b"mine"  # reading again is fine
            m.read_into_nowait(0, bytearray(4))
            with pytest.raises(RuntimeError, match="as_mut_slice"):
                m.update_region_nowait(0, b"x")
            with pytest.raises(RuntimeError):
                await m.update_region(0, b"x")

        async def hold(task_status: anyio.abc.TaskStatus[None]) -> None:
            async with m.as_mut_slice(0, 1):
                task_status.started()
                await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            await tg.start(hold)
            with pytest.raises(anyio.WouldBlock, match="another task"):
                m.read_into_nowait(0, bytearray(1))
            tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_unclear_errors_now_say_what_to_do(tmp_path: Path) -> None:
    """Regression tests: each of these raised a bare or misleading error."""
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(4 * PAGE))
    async with await anymmap.MmapRaw.map_raw(path) as m:
        with pytest.raises(TypeError, match="not str"):
            await m.update_region(0, cast(Any, "abc"))
        with pytest.raises(TypeError, match="progress must be a callable"):
            await m.populate(progress=1)  # type: ignore[arg-type]
        with pytest.raises(OSError, match=r"Advice\.FREE only applies to anonymous") as info:
            await m.advise(anymmap.Advice.FREE)
        assert info.value.errno == errno.EINVAL
        await m.advise(cast(Any, np.int32(anymmap.Advice.RANDOM)))
    fd = os.open(path, os.O_RDWR)
    try:
        async with await anymmap.MmapRaw.map_raw(cast(Any, np.int64(fd))) as m:
            assert len(m) == 4 * PAGE
    finally:
        os.close(fd)
    hint = anymmap.MmapOptions(len=PAGE, hint=1 << 50, strict=True)
    with pytest.raises(anymmap.InvalidHintError, match="user address space"):
        await hint.map_anon()


@pytest.mark.anyio
async def test_never_written_tmpfs_pages_read_without_waiting() -> None:
    """Regression test: ``read_into_nowait`` on never-written tmpfs pages raised
    ``WouldBlock`` for ever (``mincore`` calls a hole "not in memory"), until populate()."""
    with tempfile.NamedTemporaryFile(dir="/dev/shm") as f:
        f.truncate(64 * PAGE)
        f.flush()
        async with await anymmap.MmapRaw.map_raw(f.name) as m:
            buf = bytearray(b"x" * 3 * PAGE)
            m.read_into_nowait(PAGE + 5, buf)
            assert buf == bytes(3 * PAGE)
            await m.update_region(0, b"data")  # a page with data, then holes
            out = bytearray(4)
            m.read_into_nowait(0, out)
            assert out == b"data"


_ATOMIC_VALUE_CUTS_THE_FILE = """
    import os, tempfile
    import anyio, anymmap, anymmap.sync

    directory = tempfile.mkdtemp(dir=os.environ["ANYMMAP_CHILD_SHM"])

    class Cuts:
        def __init__(self, fd):
            self.fd = fd

        def __index__(self):
            os.ftruncate(self.fd, 0)  # as a peer would, at the worst moment
            return 1

    def must_fault(store):
        try:
            store()
        except anymmap.MappingFaultError:
            pass
        else:
            raise AssertionError("stored past the end of the file")

    async def main():
        async with await anymmap.MmapRegion.create(f"{directory}/a", 8192) as m:
            must_fault(lambda: m.atomic_store(4096, 8, Cuts(m.fileno())))
        path = f"{directory}/window"
        with open(path, "wb") as f:
            f.write(bytes(8192))
        async with await anymmap.SparseMapping.new(1 << 20) as m:
            await m.map_file(0, 8192, path, writable=True)
            fd = os.open(path, os.O_RDWR)
            must_fault(lambda: m.atomic_store(4096, 8, Cuts(fd)))
            os.close(fd)

    anyio.run(main)
    with anymmap.sync.MmapRegion.create(f"{directory}/b", 8192) as m:
        must_fault(lambda: m.atomic_store(4096, 8, Cuts(m.fileno())))
    os.unlink(f"{directory}/window")
    os.rmdir(directory)
    print("ok")
"""


def test_an_atomic_value_that_cuts_the_file_is_converted_first() -> None:
    """Regression test: ``atomic_store`` checked the address, then converted ``value``;
    an ``__index__`` that cut the file in between turned the store into SIGBUS."""
    check_child(_ATOMIC_VALUE_CUTS_THE_FILE)


@pytest.mark.anyio
async def test_an_atomic_store_to_a_region_is_pending_until_flushed(tmp_path: Path) -> None:
    async with await anymmap.MmapRegion.create(tmp_path / "r", PAGE) as m:
        m.atomic_store(8, 8, 1)
        assert m.pending_bytes() == 8
        await m.flush()
        assert m.pending_bytes() == 0


@pytest.mark.anyio
@pytest.mark.parametrize("prefill", ["zeros", "allocate"])
async def test_growing_a_window_keeps_the_bytes_the_file_already_has(
    tmp_path: Path, prefill: str
) -> None:
    """Regression test (adversary review): growing a window map made with
    ``prefill="zeros"`` over bytes the file already held wrote zeros over them.  The
    part of the growth inside the file is now only allocated; zeros go past its end."""
    path = tmp_path / "data.bin"
    existing = os.urandom(3 * PAGE + 100)  # the window grows over it, then past its end
    path.write_bytes(bytes(PAGE) + existing)
    async with await anymmap.MmapRaw.map_raw(
        path,
        offset=0,
        length=PAGE,
        prefill=prefill,  # type: ignore[arg-type]
    ) as m:
        await m.resize(6 * PAGE)
        assert await m.read(PAGE, len(existing)) == existing
        assert await m.read(PAGE + len(existing), 6 * PAGE - PAGE - len(existing)) == bytes(
            6 * PAGE - PAGE - len(existing)
        )
    assert path.read_bytes() == bytes(PAGE) + existing + bytes(6 * PAGE - PAGE - len(existing))
    with anymmap.sync.MmapRaw.map_raw(path, offset=0, length=PAGE, prefill=prefill) as s:  # type: ignore[arg-type]
        s.resize(2 * PAGE)
        assert s.read(PAGE, PAGE) == existing[:PAGE]


@pytest.mark.anyio
async def test_the_async_maps_synchronous_copies_refuse_other_threads() -> None:
    """Regression test (adversary review): ``read_into_nowait`` called from a worker
    thread (``anyio.to_thread.run_sync``) while a task unmapped and re-allocated the
    piece crashed the process (SIGSEGV): off the event loop the map's lock cannot keep
    the change from unmapping memory under the copy.  The synchronous copies and direct
    accesses of the async maps now raise ``RuntimeError`` there (and still work through
    ``anyio.from_thread.run_sync``, which runs them on the loop)."""
    async with await anymmap.SparseMapping.new(1 << 20) as m:
        await m.alloc(0, 1 << 20)
        buf = bytearray(16)
        calls = [
            lambda: m.read_into_nowait(0, buf),
            lambda: m.update_region_nowait(0, b"x"),
            lambda: m.atomic_load(0, 8),
            lambda: m.atomic_store(0, 8, 1),
        ]
        for call in calls:
            with pytest.raises(RuntimeError, match="from a task of its event loop"):
                await anyio.to_thread.run_sync(call)

        def on_the_loop() -> None:
            for call in calls:
                anyio.from_thread.run_sync(call)

        await anyio.to_thread.run_sync(on_the_loop)
        assert m.atomic_load(0, 8) == 1
        m.read_into_nowait(0, buf)  # and, as ever, from the task itself


@pytest.mark.anyio
async def test_a_cancelled_flush_is_durable_even_if_the_map_is_closed_at_once(
    tmp_path: Path,
) -> None:
    """Regression test (adversary review): a cancelled ``flush_range`` is flushed all
    the same, the README says; but closing the map right after made the committer find
    it closed, and the range stayed dirty (10 of 10 runs with another flush running).
    Closing now makes the map durable when commits are still queued or running."""
    path = tmp_path / "log.bin"
    for busy in (False, True):
        m = await anymmap.MmapRaw.create(path, 64 << 20, exist_ok=True)
        check = os.open(path, os.O_RDONLY)
        try:
            if unwritten_pages(check) is None:
                pytest.skip("this kernel has no cachestat(2)")
            async with anyio.create_task_group() as tg:
                if busy:  # the committer is inside another task's flush
                    await m.update_region(32 << 20, os.urandom(16 << 20))
                    tg.start_soon(m.flush)
                    await anyio.sleep(0.002)
                await m.update_region(0, os.urandom(1 << 20))
                with anyio.move_on_after(0):
                    await m.flush_range(0, 1 << 20)  # submitted, then cancelled
                await m.aclose()
            assert unwritten_pages(check, 0, 1 << 20) == 0
        finally:
            os.close(check)
            await m.aclose()


@pytest.mark.anyio
async def test_an_async_progress_callback_is_refused_up_front() -> None:
    """Regression test (adversary review): ``populate(progress=<async def>)`` never ran
    the callback on asyncio (a coroutine dropped per chunk) and failed after the first
    chunk on trio.  It is refused before anything is done, on every backend."""

    async def progress(done: int, total: int) -> None:
        pass  # pragma: no cover - never called

    class AsyncCallable:
        async def __call__(self, done: int, total: int) -> None:
            pass  # pragma: no cover - never called

    async with await anymmap.AnonymousMmap.new(1 << 20) as m:
        for callback in (progress, AsyncCallable()):
            with pytest.raises(TypeError, match="plain function"):
                await m.populate(progress=callback)
        seen: list[int] = []
        await m.populate(progress=lambda done, total: seen.append(done))
        assert seen


_BORROW_ENDED_BY_A_COLLECTION_INSIDE_THE_PARKING = """
    import sys
    import anymmap
    import anymmap.sync as S
    from anymmap._core import _lifetime

    def holder(m):
        with m.as_mut_slice(0, 64) as view:
            yield view

    a = S.AnonymousMmap.new(4096)
    first = holder(a)
    kept_a = next(first)[:8]  # escapes: the borrow's views are parked when it ends
    try:
        first.close()
    except anymmap.BorrowError:
        pass
    b = S.AnonymousMmap.new(4096)
    second = holder(b)
    kept_b = next(second)[:8]
    outcomes = []

    def hook(frame, event, arg):
        # Inside the parking's own bookkeeping (it holds its lock), the collector closes
        # a generator suspended in a borrow whose view escaped, as it may at any
        # allocation.
        if frame.f_code is _lifetime._Escape.release.__code__ and not outcomes:
            outcomes.append("inside")
            try:
                second.close()
            except anymmap.BorrowError:
                pass
            outcomes.append("closed")
        return None

    sys.settrace(hook)
    try:
        _lifetime.release_escaped()
    finally:
        sys.settrace(None)
    assert outcomes == ["inside", "closed"], outcomes
    assert any(e.memory is b._core.memory for e in _lifetime._ESCAPED)  # parked
    try:
        b.close()
    except anymmap.BorrowError:
        pass
    else:
        raise AssertionError("closed under an escaped view")
    del kept_a, kept_b
    _lifetime.release_escaped()
    a.close()
    b.close()  # both borrows' views were released: nothing escaped is left
    print("ok")
"""


def test_a_borrow_ended_inside_the_parking_bookkeeping_never_waits_for_itself() -> None:
    """Regression test (adversary round 10): a garbage collection run while a thread held
    the lock of the parked-views registry could close a generator suspended inside a
    borrow whose view escaped; the borrow's exit parked its view under the same lock,
    and the thread waited for itself for ever.  (A trace function stands in for the
    collection, to land inside the bookkeeping every time.)"""
    check_child(_BORROW_ENDED_BY_A_COLLECTION_INSIDE_THE_PARKING, timeout=30)


def _fail_after_a_peer_replaced(path: Path, step: str) -> Callable[..., Any]:
    """A profile hook: when anymmap calls ``step``, another program atomically puts its
    own file at ``path``, and then the call fails (a Ctrl-C, as ``step`` begins)."""
    other = path.with_name("someone else's")
    other.write_bytes(b"someone else's data")

    def hook(frame: Any, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_name == step:
            sys.setprofile(None)
            os.replace(other, path)
            raise KeyboardInterrupt

    return hook


@pytest.mark.parametrize(
    ("kind", "step"),
    [("raw", "fill_file"), ("raw", "fdatasync"), ("region", "allocate"), ("region", "place")],
)
def test_a_failed_create_never_removes_a_file_another_program_put_there(
    tmp_path: Path, kind: str, step: str
) -> None:
    """Regression test (adversary round 24): a ``create`` that failed after it made its
    file removed whatever the path named by then: another program's file, put there
    (``rename``) while the create allocated its blocks, was deleted.  The undo now
    removes the file only if the path still names the one the create made."""
    path = tmp_path / "f"
    create = anymmap.sync.MmapRaw.create if kind == "raw" else anymmap.sync.MmapRegion.create
    sys.setprofile(_fail_after_a_peer_replaced(path, step))
    try:
        with pytest.raises(KeyboardInterrupt):
            create(path, 1 << 20)
    finally:
        sys.setprofile(None)
    assert path.read_bytes() == b"someone else's data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_removing_a_file_never_deletes_one_renamed_over_it_after_the_check(
    tmp_path: Path,
) -> None:
    """Regression test (adversary round 24, the same bug through a narrower gap): the
    removal of a file anymmap made (a failed ``create``'s undo, a ``MANUAL`` region's
    close) checked that the path still named that file, then unlinked the path; a
    peer's ``rename`` over the path between the two had its file deleted (1 run in 10
    of the adversary's probe: a rename over a file being allocated waits for the
    allocation, and lands right after the check).  Here the peer renames as the check
    returns.  The file is now renamed aside before it is unlinked, and the peer's linked
    back."""
    from anymmap._core._files import remove_if_same

    path = tmp_path / "f"
    path.write_bytes(b"ours")
    identity = (path.stat().st_dev, path.stat().st_ino)
    other = tmp_path / "other"
    other.write_bytes(b"someone else's data")
    moved: list[bool] = []

    def hook(frame: Any, event: str, arg: object) -> None:
        if event == "return" and frame.f_code.co_name == "path_identity" and not moved:
            moved.append(True)
            sys.setprofile(None)
            os.replace(other, path)  # the peer, right after the check

    sys.setprofile(hook)
    try:
        remove_if_same(str(path), identity)
    finally:
        sys.setprofile(None)
    assert moved, "no check was made"
    assert path.read_bytes() == b"someone else's data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # (nothing left aside)
    remove_if_same(str(path), identity)  # not ours: left alone
    assert path.read_bytes() == b"someone else's data"
    remove_if_same(str(path), (path.stat().st_dev, path.stat().st_ino))  # ours: removed
    assert list(tmp_path.iterdir()) == []


def test_a_file_whose_path_is_near_path_max_is_still_removed(tmp_path: Path) -> None:
    """Regression test (adversary round 25): the removal renames a file aside to a name
    30 bytes long in its directory; for a file whose path was within that of PATH_MAX
    (4,095 bytes) the rename failed with ENAMETOOLONG, silently, and the file stayed (a
    failed ``create``, a ``MANUAL`` region's close).  It is then unlinked by name."""
    deep = tmp_path
    while len(str(deep)) < 4080:  # (components of at most 250 bytes: NAME_MAX is 255)
        deep = deep / ("d" * min(250, 4080 - len(str(deep)) - 1))
    deep.mkdir(parents=True)
    path = deep / "f"  # (fits; a 30-byte name beside it would not)
    assert len(str(path)) == 4082

    def hook(frame: Any, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_name == "fill_file":
            sys.setprofile(None)
            raise KeyboardInterrupt

    sys.setprofile(hook)
    try:
        with pytest.raises(KeyboardInterrupt):
            anymmap.sync.MmapRaw.create(path, PAGE)
    finally:
        sys.setprofile(None)
    assert list(deep.iterdir()) == []
    with anymmap.sync.MmapRegion.create(path, PAGE):
        assert path.exists()
    assert list(deep.iterdir()) == []


@pytest.mark.parametrize("kind", ["raw-failed", "region", "region-replace", "region-auto"])
def test_a_chdir_during_the_create_of_a_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Regression test (adversary round 25): another thread's ``chdir`` while a region
    was created at a relative path made the region record its path against the new
    directory: its ``MANUAL`` close and ``AUTO`` unlink removed nothing, and
    ``replace=True`` failed and left its temporary file; a failed ``MmapRaw.create``
    likewise.  The path is made absolute before the file is created.  (The chdir comes
    from a profile hook here, as the blocks are allocated.)"""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(home)
    step = "fill_file" if kind == "raw-failed" else "allocate"

    def hook(frame: Any, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_name == step:
            sys.setprofile(None)
            os.chdir(elsewhere)
            if kind == "raw-failed":
                raise KeyboardInterrupt

    sys.setprofile(hook)
    try:
        if kind == "raw-failed":
            with pytest.raises(KeyboardInterrupt):
                anymmap.sync.MmapRaw.create("f", PAGE)
        else:
            cleanup = (
                anymmap.FileCleanup.AUTO if kind == "region-auto" else anymmap.FileCleanup.MANUAL
            )
            replace = kind == "region-replace"
            with anymmap.sync.MmapRegion.create("r", PAGE, cleanup, replace=replace):
                assert [p.name for p in home.iterdir()] == ([] if "auto" in kind else ["r"])
    finally:
        sys.setprofile(None)
    assert list(home.iterdir()) == []
    assert list(elsewhere.iterdir()) == []


def test_a_relative_path_through_a_symbolic_link_names_what_the_kernel_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression test (adversary round 26): round 25 made paths absolute with
    ``os.path.abspath``, which drops ``link/..`` by the letters; through a symbolic link
    that is another directory than the kernel's, so ``MmapRegion.create("link/../f")``
    made ``f`` beside the link, and ``attach`` of the same path mapped another file.
    Paths are now only anchored at the current directory."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "a" / "b")
    monkeypatch.chdir(tmp_path)
    with anymmap.sync.MmapRegion.create("link/../f", PAGE) as host:
        assert (tmp_path / "a" / "f").exists()  # where open(2) puts it
        assert not (tmp_path / "f").exists()
        host.update_region(0, b"host")
        with anymmap.sync.MmapRegion.attach("link/../f") as guest:
            assert guest.read(0, 4) == b"host"  # the same file
    assert not (tmp_path / "a" / "f").exists()  # removed at close (MANUAL)
    with anymmap.sync.MmapRaw.create("link/../g", PAGE):
        assert (tmp_path / "a" / "g").exists()


def test_a_failed_or_undone_open_or_create_keeps_the_file_it_made(
    tmp_path: Path,
) -> None:
    """Regression test (adversary round 24): a failed ``open_or_create`` (or
    ``create(exist_ok=True)``) removed the file it had made, though a caller racing on
    the path may have opened that file meanwhile, as the README promises, and made
    records durable in it: they were lost with the file.  The file is now kept; a later
    call completes it."""
    path = tmp_path / "f"
    # The racing caller opens the file while the first one allocates its blocks.
    joined: list[anymmap.sync.MmapRaw] = []

    def hook(frame: Any, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_name == "fill_file" and not joined:
            sys.setprofile(None)
            joined.append(anymmap.sync.MmapRaw.open_or_create(path, PAGE))
            joined[0].update_region(0, b"a durable record")
            joined[0].flush()
            joined[0].close()
            raise KeyboardInterrupt  # (and then the first one fails)

    sys.setprofile(hook)
    try:
        with pytest.raises(KeyboardInterrupt):
            anymmap.sync.MmapRaw.open_or_create(path, 1 << 20)
    finally:
        sys.setprofile(None)
    assert path.read_bytes()[:16] == b"a durable record"
    with anymmap.sync.MmapRaw.open_or_create(path, 1 << 20) as m:  # completes it
        assert len(m) == 1 << 20
        assert m.read(0, 16) == b"a durable record"


def test_a_whole_file_larger_than_a_map_can_be_is_refused(shm_path: Path) -> None:
    """Regression test (adversary round 12): mapping a whole (sparse) file of more than
    128 TiB raised ``OSError(ENOMEM)`` from ``mmap`` instead of the documented
    ``InvalidSizeError``, which an explicit ``length`` of that size got."""
    path = shm_path / "huge"
    with open(path, "wb") as f:
        f.truncate((128 << 40) + PAGE)  # (tmpfs: no blocks)
    with pytest.raises(anymmap.InvalidSizeError, match="128 TiB"):
        anymmap.sync.MmapRaw.map_raw(path)
    with pytest.raises(anymmap.InvalidSizeError, match="128 TiB"):
        anymmap.sync.MmapRaw.open_or_create(path, PAGE)


def test_a_bad_fault_safe_is_refused_before_an_existing_file_grows(tmp_path: Path) -> None:
    """Regression test (adversary round 13): ``open_or_create`` and
    ``create(exist_ok=True)`` with a ``fault_safe`` that is not a bool grew the existing
    file before they raised ``TypeError``."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * PAGE)
    with pytest.raises(TypeError, match="fault_safe"):
        anymmap.sync.MmapRaw.open_or_create(path, 1 << 20, fault_safe="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fault_safe"):
        anymmap.sync.MmapRaw.create(path, 1 << 20, exist_ok=True, fault_safe=1)  # type: ignore[arg-type]
    assert path.read_bytes() == b"x" * PAGE


def test_the_gc_hook_leaves_other_callbacks_their_stop_phase() -> None:
    """Regression test (adversary round 14): the hook that releases parked views removed
    itself from ``gc.callbacks`` while the collector was running that list, which it
    walks by index, so the callback after it never saw that collection's "stop" (a
    profiler's pause timer would never end).  Its entry now stays, idle."""
    import gc

    m = anymmap.sync.AnonymousMmap.new(1 << 16)
    with pytest.raises(anymmap.BorrowError), m.as_slice(0, 16) as v:
        kept = np.frombuffer(v, dtype=np.uint8)  # escapes: the view is parked
    phases: list[str] = []

    def after(phase: str, info: dict[str, int]) -> None:
        phases.append(phase)

    gc.callbacks.append(after)
    try:
        del kept  # the next collection releases the parked view, and the hook goes idle
        gc.collect()
        assert phases == ["start", "stop"]
        assert not [c for c in gc.callbacks if getattr(c, "__module__", "").startswith("anymmap")]
    finally:
        gc.callbacks.remove(after)
    m.close()


_OVERLAP_SIZE = 3 << 20  # past INLINE_COPY_LIMIT (1 MiB): the worker-thread copies too
_OVERLAP_PATTERN = bytes((i * 7 + 3) & 255 for i in range(_OVERLAP_SIZE))


def _overlap_expected(writing: bool, at: int, shift: int, n: int) -> bytes:
    expected = bytearray(_OVERLAP_PATTERN)
    if writing:  # map b's [at + shift, +n) = map a's [at, +n), as memmove would
        expected[at + shift : at + shift + n] = _OVERLAP_PATTERN[at : at + n]
    else:  # a view of map a's [at, +n) = map b's [at + shift, +n)
        expected[at : at + n] = _OVERLAP_PATTERN[at + shift : at + shift + n]
    return bytes(expected)


@pytest.mark.parametrize("fault_safe", [True, False], ids=["fault_safe", "unsafe"])
@pytest.mark.parametrize("n", [64, 20_000, (1 << 20) + 4096])
@pytest.mark.parametrize("shift", [8, -5000])
@pytest.mark.parametrize(
    "how", ["update_region", "update_region_nowait", "read_into", "read_into_nowait"]
)
def test_a_copy_between_two_maps_of_one_file_behaves_as_memmove(
    tmp_path: Path, how: str, shift: int, n: int, fault_safe: bool
) -> None:
    """Regression test (adversary round 16): a borrow of map ``a`` given to a copy of map
    ``b`` of the same file, over ranges that overlap in the file, came out smeared (the
    copy went forward over physical pages it had just written: 30 of 72 such copies were
    wrong).  Such a copy now goes through a private copy of the buffer."""
    path = tmp_path / "f"
    path.write_bytes(_OVERLAP_PATTERN)
    at, writing = 1 << 20, how.startswith("update")
    with (
        anymmap.sync.MmapRaw.map_raw(path) as a,
        anymmap.sync.MmapRaw.map_raw(path, fault_safe=fault_safe) as b,
    ):
        borrow = a.as_slice(at, n) if writing else a.as_mut_slice(at, n)
        with borrow as view:
            try:
                getattr(b, how)(at + shift, view)
            except anyio.WouldBlock:  # (a *_nowait copy too big for the calling thread)
                assert how.endswith("_nowait")
                assert n > 1 << 20
                return
        assert b.read(0, _OVERLAP_SIZE) == _overlap_expected(writing, at, shift, n)


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["update_region", "read_into", "Region.write", "Region.read_into"])
async def test_a_copy_between_a_region_and_its_attachment_behaves_as_memmove(
    tmp_path: Path, how: str
) -> None:
    """The same through the async API, between a region and its attachment in this
    process, for a copy small enough for the event loop thread and one for a worker."""
    path = tmp_path / "region"
    async with await anymmap.MmapRegion.create(path, _OVERLAP_SIZE) as host:
        await host.update_region(0, _OVERLAP_PATTERN)
        async with await anymmap.MmapRegion.attach(path) as guest:
            writing = how.endswith("write") or how == "update_region"
            for n in (4096, (1 << 20) + 4096):
                await host.update_region(0, _OVERLAP_PATTERN)
                borrow = guest.as_slice(4096, n) if writing else guest.as_mut_slice(4096, n)
                shift = 8 if writing else -8  # (the direction a forward copy smears)
                async with borrow as view:
                    if how.startswith("Region."):  # the synchronous by-address helpers
                        getattr(host.region(), how[len("Region.") :])(4096 + shift, view)
                    else:
                        await getattr(host, how)(4096 + shift, view)
                expected = _overlap_expected(writing, 4096, shift, n)
                assert await host.read(0, _OVERLAP_SIZE) == expected


def _own_buffer(m: Any, at: int, n: int, writable: bool, source: str) -> Any:
    """A NumPy array over ``m``'s own bytes ``[at, at + n)``: one that escaped a borrow,
    or one built from ``as_ptr()``."""
    if source == "as_ptr":
        import ctypes

        return np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(m.as_ptr() + at))
    if source == "obj_chain":  # the raw object behind a borrow of one other byte
        with m.as_slice(len(m) - 1, 1) as view:
            raw = view.obj.obj
        return np.frombuffer(raw, np.uint8)[at : at + n]
    borrow = m.as_mut_slice(at, n) if writable else m.as_slice(at, n)
    with pytest.raises(anymmap.BorrowError), borrow as view:
        kept = np.frombuffer(view, np.uint8)  # outlives the borrow (documented: parked)
    return kept


@pytest.mark.parametrize("source", ["escaped", "as_ptr", "obj_chain"])
@pytest.mark.parametrize("n", [20_000, (1 << 20) + 4096])
@pytest.mark.parametrize("shift", [8, -5000])
@pytest.mark.parametrize(
    "how", ["update_region", "update_region_nowait", "read_into", "read_into_nowait"]
)
def test_a_copy_within_one_file_map_behaves_as_memmove(
    shm_path: Path, how: str, shift: int, n: int, source: str
) -> None:
    """Regression test (adversary round 19): an array over the map's own bytes (escaped
    from a borrow, or built from ``as_ptr()``) given to a copy of the same file map, over
    overlapping ranges, came out smeared from the first overlapping byte on: the kernel
    copy between the page cache and memory showing the same pages goes forward, not as
    ``memmove``.  Only the Region helpers and the worker-thread copies checked for it."""
    path = shm_path / "f"
    path.write_bytes(_OVERLAP_PATTERN)
    at, writing = 1 << 20, how.startswith("update")
    with anymmap.sync.MmapRaw.map_raw(path) as m:
        # update_region(at + shift, m[at:]) or read_into(at + shift, into m[at:])
        buf = _own_buffer(m, at, n, writable=not writing, source=source)
        try:
            getattr(m, how)(at + shift, buf)
        except anyio.WouldBlock:  # (a *_nowait copy may refuse; none here is cold)
            pytest.fail(f"{how} of {n} bytes refused")
        del buf
        if writing:
            expected = _overlap_expected(True, at, shift, n)
        else:  # m[at : at + n] = m[at + shift : ...]
            expected = _overlap_expected(False, at, shift, n)
        assert m.read(0, _OVERLAP_SIZE) == expected


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["raw", "region", "sparse window"])
async def test_an_escaped_array_copied_into_its_own_map_async(shm_path: Path, kind: str) -> None:
    """The same through the async API on each file-backed map type, for a copy on the
    event loop thread (inline) and one in a worker."""
    path = shm_path / "f"
    size = _OVERLAP_SIZE
    path.write_bytes(_OVERLAP_PATTERN)
    m: Any
    if kind == "raw":
        m = await anymmap.MmapRaw.map_raw(path)
    elif kind == "region":
        path.unlink()
        m = await anymmap.MmapRegion.create(path, size)
        await m.update_region(0, _OVERLAP_PATTERN)
    else:
        m = await anymmap.SparseMapping.new(size)
        await m.map_file(0, size, path, writable=True)
    async with m:
        for n in (20_000, (1 << 20) + 4096):
            await m.update_region(0, _OVERLAP_PATTERN)
            with pytest.raises(anymmap.BorrowError):
                async with m.as_slice(4096, n) as view:
                    buf = np.frombuffer(view, np.uint8)  # outlives the borrow
            await m.update_region(4096 + 100, buf)
            del buf
            assert await m.read(0, size) == _overlap_expected(True, 4096, 100, n)


def test_a_pass_through_mmap_of_a_file_counts_as_a_second_map_of_it(tmp_path: Path) -> None:
    """Regression test (adversary round 17): a sparse map's ``mmap(MAP_SHARED, fd)`` piece
    was not known as a mapping of its file, so copies between it and another map of
    the file over overlapping ranges still smeared, both ways."""
    import mmap

    path = tmp_path / "f"
    path.write_bytes(_OVERLAP_PATTERN[: 16 * PAGE])
    with (
        anymmap.sync.MmapRaw.map_raw(path) as raw,
        anymmap.sync.SparseMapping.new(16 * PAGE) as sparse,
        open(path, "r+b") as f,
    ):
        sparse.mmap(0, 16 * PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, f.fileno())
        n = 2000
        with raw.as_slice(PAGE, n) as view:  # sparse[PAGE + 8 :] = raw[PAGE :]
            sparse.update_region(PAGE + 8, view)
        expected = _overlap_expected(True, PAGE, 8, n)[: 16 * PAGE]
        assert sparse.read(0, 16 * PAGE) == expected
        with raw.as_mut_slice(2 * PAGE, n) as view:  # raw[2 PAGE :] = sparse[2 PAGE - 8 :]
            sparse.read_into(2 * PAGE - 8, view)
        after = bytearray(expected)
        after[2 * PAGE : 2 * PAGE + n] = after[2 * PAGE - 8 : 2 * PAGE - 8 + n]
        assert raw.read(0, 16 * PAGE) == after


@pytest.mark.parametrize("shift", [8, -8])
def test_a_regions_helpers_copy_a_borrow_of_the_same_region_as_memmove(
    tmp_path: Path, shift: int
) -> None:
    """Regression test (adversary round 17): ``Region.write`` / ``read_into`` take no
    lock, so a borrow of the same region could be their buffer, and the copy smeared
    (the map's own methods refuse it: the borrow holds the lock)."""
    with anymmap.sync.MmapRegion.create(tmp_path / "r", 4 * PAGE) as r:
        r.update_region(0, _OVERLAP_PATTERN[: 4 * PAGE])
        n = 2 * PAGE
        with r.as_slice(PAGE, n) as view:
            r.region().write(PAGE + shift, view)
        assert r.read(0, 4 * PAGE) == _overlap_expected(True, PAGE, shift, n)[: 4 * PAGE]
        r.update_region(0, _OVERLAP_PATTERN[: 4 * PAGE])
        # (a read-only borrow is refused as a target, as any read-only buffer is)
        with r.as_slice(PAGE, n) as view, pytest.raises(TypeError):
            r.region().read_into(PAGE + shift, view)
        region = r.region()
        with r.as_mut_slice(PAGE, n) as view:
            region.read_into(PAGE + shift, view)  # view = region[PAGE + shift :]
        assert r.read(0, 4 * PAGE) == _overlap_expected(False, PAGE, shift, n)[: 4 * PAGE]


def test_a_buffer_in_a_truncated_twin_is_a_mapping_fault_and_others_pay_nothing(
    tmp_path: Path,
) -> None:
    """Regression test (adversary round 17): a copy whose buffer is a borrow of a second
    map of the file, after another process cut the file under it, raised a bare
    ``OSError(EFAULT)`` from the private copy (``MappingFaultError`` now, naming the
    buffer).  And while a file is mapped twice, only the maps of that file look at
    their buffers: a map of another file does not."""
    path = tmp_path / "f"
    path.write_bytes(_OVERLAP_PATTERN[: 4 * PAGE])
    other = tmp_path / "other"
    other.write_bytes(bytes(PAGE))
    with (
        anymmap.sync.MmapRaw.map_raw(path) as a,
        anymmap.sync.MmapRaw.map_raw(path) as b,
        anymmap.sync.MmapRaw.map_raw(other) as c,
    ):
        assert a._core.memory.twinned
        assert b._core.memory.twinned
        assert not c._core.memory.twinned
        with a.as_slice(2 * PAGE, PAGE) as view:
            os.truncate(path, PAGE)  # (this process; the kernel cannot tell)
            with pytest.raises(anymmap.MappingFaultError) as info:
                b.update_region(0, view)
            assert "the buffer" in info.value.cause
            with pytest.raises(anymmap.MappingFaultError):
                c.update_region(0, view)  # (not a twin: the kernel copy faults on it)


def test_many_maps_of_one_file_are_registered_without_recounting_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression test: every map of a file recounted all the file's maps when it was
    made (opening 4,000 maps of one file took 5 s, 4,000 x 4,000 looks).  The maps of a
    twinned file are counted again only when their list doubles, so the closed ones are
    still dropped: a map opened and closed in a loop next to a long-lived one leaves the
    registry small."""
    path = tmp_path / "f"
    path.write_bytes(bytes(PAGE))
    recounts = 0
    recount = _copier._recount

    def counting(identities: Any) -> None:
        nonlocal recounts
        recounts += 1
        recount(identities)

    monkeypatch.setattr(_copier, "_recount", counting)
    with anymmap.sync.MmapRaw.map_raw(path) as kept:
        identity = os.stat(path).st_dev, os.stat(path).st_ino
        for _ in range(300):
            with anymmap.sync.MmapRaw.map_raw(path) as m:
                assert m._core.memory.twinned
                assert kept._core.memory.twinned
        assert len(_copier._windows[identity]) <= 4  # (two live at most: kept, m)
        recounts = 0
        maps = [anymmap.sync.MmapRaw.map_raw(path) for _ in range(500)]
        assert all(m._core.memory.twinned for m in maps)
        assert recounts <= 12  # (at 4, 8, ... 512 maps, and a sweep when they doubled)
        for m in maps:
            m.close()
        kept.read_into(0, np.zeros(8, np.uint8))  # (a foreign buffer: maps are counted)
        assert not kept._core.memory.twinned
        assert len(_copier._windows[identity]) == 1


def test_the_twin_registry_forgets_files_no_longer_mapped(tmp_path: Path) -> None:
    """Regression test (adversary round 33): the registry of maps by file kept an entry
    for every file ever mapped once (20,000 files left 20,200 entries); it is swept
    as registrations accumulate."""
    before = len(_copier._windows)
    for i in range(600):
        path = tmp_path / f"f{i}"
        path.write_bytes(bytes(PAGE))
        with anymmap.sync.MmapRaw.map_raw(path):
            pass
    assert len(_copier._windows) <= before + 200, len(_copier._windows)


_FINALIZER_INSIDE_THE_TWIN_REGISTRY = """
    import array, os
    import anymmap.sync
    from anymmap._core import _copier
    from tests._child import collecting_inside_recounts

    path = os.path.join(os.environ["ANYMMAP_CHILD_SHM"], "f")
    with open(path, "wb") as f:
        f.truncate(1 << 16)
    a = anymmap.sync.MmapRaw.map_raw(path)
    b = anymmap.sync.MmapRaw.map_raw(path)
    anymmap.sync.MmapRaw.map_raw(path).close()  # a closed twin: the next copy recounts
    made = []
    errors = []
    PATTERN = bytes(range(1, 65))

    class Bomb:
        def __init__(self):
            self.me = self

        def __del__(self):  # run by a collection inside the registry's lock
            try:
                b.update_region(0, array.array("B", PATTERN))  # recounts the twins
                made.append(anymmap.sync.MmapRaw.map_raw(path))  # registers a window
                with a.as_slice(0, 4096) as view:  # an overlapping copy between twins
                    made[0].update_region(8, view[:64])
            except Exception as exc:
                errors.append(repr(exc))

    with collecting_inside_recounts():
        Bomb()
        kept = [anymmap.sync.MmapRaw.map_raw(path) for _ in range(8)]  # recounts inside
    assert not errors, errors
    assert made, "the finalizer did not run"
    assert a.read(0, 72) == PATTERN[:8] + PATTERN, a.read(0, 72)  # as memmove would
    assert not _copier._deferred
    identity = os.stat(path).st_dev, os.stat(path).st_ino
    assert id(made[0]._core.memory) in _copier._windows[identity]
    for m in (a, b, *made, *kept):
        m.close()
    print("ok")
"""


def test_a_finalizer_inside_the_twin_registry_maps_and_copies() -> None:
    """Regression test (adversary round 33): a finalizer run by a garbage collection
    inside the registry of maps of one file (under its lock, on the same thread) that
    copied into a map of a file mapped twice, or mapped the file, waited for the lock
    its own thread held: the process hung.  The copy goes on with the twins as they
    are, the new map is registered by the call it interrupted, and a copy between
    twins still moves bytes as ``memmove`` would."""
    check_child(_FINALIZER_INSIDE_THE_TWIN_REGISTRY, timeout=30)


_FINALIZER_MAPS_INSIDE_A_RECOUNT_OF_THE_TWINS = """
    import array, os
    import anymmap.sync
    from anymmap._core import _copier
    from tests._child import collecting_inside_recounts

    root = os.environ["ANYMMAP_CHILD_SHM"]
    g, f = os.path.join(root, "g"), os.path.join(root, "f")
    with open(g, "wb") as out:
        out.truncate(1 << 16)
    data = bytes(range(256)) * 1024
    with open(f, "wb") as out:
        out.write(data)
    y1, y2 = anymmap.sync.MmapRaw.map_raw(g), anymmap.sync.MmapRaw.map_raw(g)
    anymmap.sync.MmapRaw.map_raw(g).close()  # a closed twin: y1's next copy recounts
    x = anymmap.sync.MmapRaw.map_raw(f)
    opened = []

    class Bomb:
        def __init__(self):
            self.me = self

        def __del__(self):  # inside the recount: maps f a second time, a page on
            opened.append(anymmap.sync.MmapRaw.map_raw(f, offset=4096))

    with collecting_inside_recounts():
        Bomb()
        y1.update_region(0, array.array("b", b"y" * 64))  # recounts; the finalizer runs
    d = opened[0]
    assert not _copier._deferred
    assert any(ref() is d._core.memory for ref in _copier._twins)
    model = bytearray(data)
    src, dst, n = 8192, 8192 + 100, 40000  # overlapping ranges of the file
    with d.as_slice(src - 4096, n) as view:
        x.update_region(dst, view)
    model[dst : dst + n] = model[src : src + n]
    assert x.read(0, len(data)) == bytes(model), "not as memmove"
    for m in (x, d, y1, y2):
        m.close()
    print("ok")
"""


def test_a_map_made_by_a_finalizer_inside_a_recount_of_the_twins_is_a_twin() -> None:
    """Regression test (adversary round 33, on the fix above): a map made by a finalizer
    run inside the recount a copy makes (``shares_pages``) was left to that call, which
    never registered it: an overlapping copy between it and the file's other map was
    not as ``memmove``.  Every holder of the registry's lock registers what was left."""
    check_child(_FINALIZER_MAPS_INSIDE_A_RECOUNT_OF_THE_TWINS, timeout=30)


def test_a_registration_left_by_a_finalizer_survives_a_recount(tmp_path: Path) -> None:
    """Regression test (adversary round 34): a map registered while its thread held the
    registry's lock (a finalizer's) waits to be finished; a recount made meanwhile (by
    another thread's copy) rebuilt the twins without it, and copies between it and an
    overlapping map of the file went direct (472 of 50,000 wrong).  It stays a twin."""
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 64)
    with anymmap.sync.MmapRaw.map_raw(path) as x, _copier._windows_lock:
        z = anymmap.sync.MmapRaw.map_raw(path, offset=PAGE)  # left for later: lock held
        assert _copier._deferred
        _copier._recount(list(_copier._windows))  # what another holder does meanwhile
        twins = {id(ref()) for ref in _copier._twins}
        assert id(z._core.memory) in twins
        assert id(x._core.memory) in twins
        assert x._core.memory.twinned
        assert z._core.memory.twinned
        z.close()
    with anymmap.sync.MmapRaw.map_raw(path):  # the next holder of the lock finishes it
        assert not _copier._deferred


_EXIT_WITH_A_DAEMON_INSIDE_THE_TWIN_REGISTRY = """
    import array, os, threading
    import anymmap.sync
    from anymmap._core import _copier

    path = os.path.join(os.environ["ANYMMAP_CHILD_SHM"], "f")
    with open(path, "wb") as f:
        f.truncate(1 << 16)
    a = anymmap.sync.MmapRaw.map_raw(path)
    anymmap.sync.MmapRaw.map_raw(path).close()  # a closed twin: the next copy recounts
    inside = threading.Event()

    def daemon():  # stands for a daemon thread stopped at exit inside the registry
        with _copier._windows_lock:
            inside.set()
            threading.Event().wait()

    threading.Thread(target=daemon, daemon=True).start()
    inside.wait()

    class AtExit:
        def __init__(self):
            self.me = self  # cyclic garbage: the last collection frees it

        def __del__(self):
            b = anymmap.sync.MmapRaw.map_raw(path)
            a.update_region(0, array.array("B", b"at exit"))
            os.write(1, b"done %r\\n" % b.read(0, 7))

    AtExit()
    print("main ends", flush=True)
"""


def test_a_finalizer_at_exit_never_waits_for_a_daemon_inside_the_twin_registry() -> None:
    """Regression test (adversary round 33): a finalizer run by the interpreter's last
    collection that mapped a file, or copied into a map of a file mapped twice, waited
    for ever for a daemon thread stopped at exit inside the registry of maps of one
    file: the process never exited."""
    check_child(_EXIT_WITH_A_DAEMON_INSIDE_THE_TWIN_REGISTRY, expect="done b'at exit'", timeout=20)


_RELEASE_BY_HAND_IN_A_FORKED_CHILD = """
    import os, sys
    import trio, anymmap

    async def main():
        m = await anymmap.AnonymousMmap.new(4096)
        await m.lock.acquire_read()
        pid = os.fork()
        if pid == 0:  # trio runs the parent's task on in the child: its hold was dropped
            try:
                m.lock.release_read()
            except BaseException as exc:
                print("release_read raised", repr(exc), flush=True)
                os._exit(1)
            print("ok", flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        m.lock.release_read()
        await m.aclose()
        print("ok")

    trio.run(main)
"""


def test_a_release_by_hand_of_a_hold_dropped_at_a_fork_is_a_no_op() -> None:
    """Regression test (adversary round 18): in a child forked from a trio task, the
    release of a hold the fork dropped was a no-op through a guard but raised
    ``RuntimeError`` through ``m.lock.release_read()``."""
    check_child(_RELEASE_BY_HAND_IN_A_FORKED_CHILD, timeout=60)


_TWINS_ACROSS_A_FORK = """
    import os, sys, threading, time
    import anymmap.sync as S
    from anymmap._core import _copier

    PAGE = 4096
    path = os.path.join(os.environ["ANYMMAP_CHILD_SHM"], "f")
    pattern = bytes((i * 7 + 3) & 255 for i in range(16 * PAGE))
    with open(path, "wb") as f:
        f.write(pattern)
    a = S.MmapRaw.map_raw(path)
    for _ in range(5):
        # Another thread is inside the registry (making a map) at the instant of the fork.
        held, forked = threading.Event(), threading.Event()

        def registering():
            with _copier._windows_lock:
                held.set()
                forked.wait()

        thread = threading.Thread(target=registering)
        thread.start()
        held.wait()
        pid = os.fork()  # (a raw fork from a threaded process, as multiprocessing does)
        if pid == 0:
            try:
                a.update_region(0, pattern)
                b = S.MmapRaw.map_raw(path)  # registers in the child: the lock is renewed
                with a.as_slice(PAGE, 2000) as view:
                    b.update_region(PAGE + 8, view)
                expected = bytearray(pattern)
                expected[PAGE + 8 : PAGE + 2008] = pattern[PAGE : PAGE + 2000]
                os._exit(0 if b.read(0, 16 * PAGE) == expected else 3)
            except BaseException:
                os._exit(4)
        forked.set()
        thread.join()
        deadline = time.monotonic() + 20
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                raise AssertionError("a forked child hung")
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(status) == 0, status
    a.close()
    print("ok")
"""


def test_two_maps_of_one_file_in_a_child_forked_while_maps_are_made() -> None:
    """Hostile test of the file-window registry: a child forked while another thread
    holds the registry's lock makes a second map of a file and copies between the two
    over overlapping ranges: no hang (the lock is renewed in the child), ``memmove``
    bytes."""
    check_child(_TWINS_ACROSS_A_FORK, timeout=90)


def _cancel_when_done(
    monkeypatch: pytest.MonkeyPatch, module: Any, name: str, cancel: Any, linger: float = 0.0
) -> None:
    """Make the worker call ``module.name`` cancel its caller (``cancel``, run on the event
    loop) right after its work is done, before its result reaches the caller: the moment
    a cancellation can no longer stop it; then wait ``linger`` seconds before it returns.
    (A seam around anymmap's own function; the system calls are real.)"""
    import time

    real = getattr(module, name)

    def done_then_cancel(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        anyio.from_thread.run_sync(cancel)
        time.sleep(linger)
        return result

    monkeypatch.setattr(module, name, done_then_cancel)


@pytest.mark.anyio
@pytest.mark.parametrize("linger", [0.0, 0.1], ids=["returning", "lingering"])
async def test_a_create_cancelled_after_its_work_returns_its_map(
    shm_path: Path, monkeypatch: pytest.MonkeyPatch, linger: float
) -> None:
    """Regression test (adversary round 19): a cancellation that arrived while
    ``MmapRegion.create(replace=True)`` ran in its worker was raised once the worker had
    renamed the new file over the old one, and the finished map was dropped: when the
    collector freed it, its FileCleanup.MANUAL finalizer deleted the path (50 of 50
    runs lost the file, on asyncio and trio).  ``MmapRaw.create`` left its file and an
    unclosed map the same way.  Under a cancelled scope, a constructor whose work is done
    now returns its map, and the scope raises at the next ``await``.  "lingering": the
    worker returns 0.1 s after the cancellation, while the wait of a call that can stop
    early looks for a cancelled scope every 20 ms (adversary round 67: on asyncio, a
    scope found cancelled so was taken for a native cancellation, and the finished
    ``MmapRaw.create`` was undone).
    """
    import gc

    import anyio.lowlevel

    import anymmap._async._raw
    import anymmap._async._region

    path = shm_path / "region"
    path.write_bytes(b"old")
    got: list[Any] = []
    # (One scope each: in a scope cancelled already, a constructor makes nothing.)
    with anyio.CancelScope() as scope:
        _cancel_when_done(
            monkeypatch, anymmap._async._region, "create_region", scope.cancel, linger
        )
        got.append(await anymmap.MmapRegion.create(path, 1 << 20, replace=True))
        await anyio.lowlevel.checkpoint()  # the cancellation is delivered here
        pytest.fail("not cancelled")
    assert scope.cancelled_caught
    with anyio.CancelScope() as scope:
        _cancel_when_done(
            monkeypatch, anymmap._async._raw, "create_file_map", scope.cancel, linger
        )
        got.append(await anymmap.MmapRaw.create(shm_path / "raw", 1 << 20))
        await anyio.lowlevel.checkpoint()
        pytest.fail("not cancelled")
    assert scope.cancelled_caught
    region, raw = got  # both returned, though cancelled
    assert region.path == str(path)
    assert len(region) == 1 << 20
    assert not region.closed
    assert (shm_path / "raw").stat().st_size == 1 << 20
    await raw.aclose()
    gc.collect()
    assert path.stat().st_size == 1 << 20  # the new region's file: nothing deleted it
    await region.aclose()  # its owner deletes it (FileCleanup.MANUAL), as it said
    assert not path.exists()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS, indirect=True)
async def test_a_zero_fill_stopped_for_a_scope_shielded_since_is_done_after_all(
    shm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression test (adversary round 68, 3 of 3 runs on asyncio and uvloop): a zero
    prefill stopped because a scope around the caller was cancelled, and a scope between
    them was shielded before the stop was seen (anyio lets a live scope's shield be
    switched on): nothing cancelled the caller any more, and an internal AssertionError
    reached it.  The call is done again, to the end, and returns its map.  (A seam
    around the first stop point orders the steps; the system calls are real.)"""
    import time

    import anymmap._core._file
    from anymmap import _stopping

    scopes: dict[str, anyio.CancelScope] = {}
    real = _stopping.stop_point
    first = [True]

    def stop_point() -> None:
        if first[0]:
            first[0] = False
            anyio.from_thread.run_sync(scopes["outer"].cancel)
            stop = _stopping._local.check.__self__  # (the wait's _Stop)
            deadline = time.monotonic() + 10
            while not stop.requested and time.monotonic() < deadline:
                time.sleep(0.001)  # until the wait has seen the cancelled scope
            assert stop.requested
            anyio.from_thread.run_sync(setattr, scopes["middle"], "shield", True)
        real()

    monkeypatch.setattr(anymmap._core._file, "stop_point", stop_point)
    path = shm_path / "f"
    with anyio.CancelScope() as scopes["outer"], anyio.CancelScope() as scopes["middle"]:
        m = await anymmap.MmapRaw.create(path, 64 << 20, prefill="zeros")
    assert not first[0]  # (the seam ran)
    assert scopes["outer"].cancel_called
    assert (len(m), path.stat().st_size) == (64 << 20, 64 << 20)
    await m.aclose()


def _slow_after_work(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
    """Make the worker call ``module.name`` take 0.2 s more once its work is done (a
    seam around anymmap's own function), so that a short timeout expires meanwhile."""
    import time

    real = getattr(module, name)

    def done_then_wait(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        time.sleep(0.2)
        return result

    monkeypatch.setattr(module, name, done_then_wait)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS, indirect=True)
@pytest.mark.parametrize("also_a_scope", [False, True], ids=["timeout", "timeout+move_on_after"])
async def test_a_native_cancel_of_a_finished_create_undoes_it_and_is_delivered_once(
    shm_path: Path, monkeypatch: pytest.MonkeyPatch, also_a_scope: bool
) -> None:
    """Regression test (adversary round 20): a native ``Task.cancel()`` (here
    ``asyncio.wait_for``'s and ``asyncio.timeout``'s) caught while a constructor's worker
    finished was asked again of the task so that the map could be returned; before
    Python 3.13 ``uncancel()`` cannot withdraw that request, so it escaped the timeout
    block (the block ended without TimeoutError, and the next ``await`` after it was
    cancelled with nothing asking: 10 of 10), and with an anyio scope cancelled too it
    was lost (the block ran on to its end).  Now the finished work is undone (the map
    closed, the file it created removed) and the cancellation raised, once."""
    import asyncio

    import anymmap._async._raw

    _slow_after_work(monkeypatch, anymmap._async._raw, "create_file_map")
    path = shm_path / "raw"
    task = asyncio.current_task()
    assert task is not None

    async def under_a_timeout() -> None:
        async with _timeout(0.01):
            with anyio.move_on_after(0.01 if also_a_scope else math.inf):
                await anymmap.MmapRaw.create(path, 1 << 20)
            await anyio.sleep(5)  # (reached only if the cancellation was lost)

    with pytest.raises(asyncio.TimeoutError):  # (a lost cancellation: the 5 s sleep ends)
        await under_a_timeout()
    assert not path.exists()  # undone: the file it made is gone
    if sys.version_info >= (3, 11):
        assert task.cancelling() == 0
    await anyio.sleep(0.01)  # no cancellation is left pending for a later await
    with pytest.raises(asyncio.TimeoutError):  # the same through wait_for, with no await after
        await asyncio.wait_for(anymmap.MmapRaw.create(path, 1 << 20), 0.01)
    assert not path.exists()
    await anyio.sleep(0.01)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS, indirect=True)
async def test_a_native_cancel_of_a_finished_open_or_create_keeps_the_file(
    shm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression test (adversary round 24): the undo of a natively cancelled
    ``open_or_create`` removed the file it had made, though a caller racing on the path
    may have it (as the README promises) and have made records durable in it.  The map
    is closed; the file stays."""
    import asyncio

    import anymmap._async._raw

    _slow_after_work(monkeypatch, anymmap._async._raw, "create_file_map")
    path = shm_path / "raw"
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(anymmap.MmapRaw.open_or_create(path, 1 << 20), 0.01)
    assert path.stat().st_size == 1 << 20
    with pytest.raises(asyncio.TimeoutError):  # (and create(exist_ok=True) the same)
        await asyncio.wait_for(anymmap.MmapRaw.create(shm_path / "x", PAGE, exist_ok=True), 0.01)
    assert (shm_path / "x").stat().st_size == PAGE


def _timeout(seconds: float) -> Any:
    """``asyncio.timeout`` (3.11+), or the same made by hand before."""
    import asyncio
    import contextlib

    @contextlib.asynccontextmanager
    async def by_hand() -> Any:
        task = asyncio.current_task()
        assert task is not None
        handle = asyncio.get_running_loop().call_later(seconds, task.cancel)
        try:
            yield
        except asyncio.CancelledError:
            raise asyncio.TimeoutError from None
        finally:
            handle.cancel()

    if sys.version_info >= (3, 11):
        return asyncio.timeout(seconds)
    else:  # (an else: a type check for either version sees no dead code)
        return by_hand()


@pytest.mark.parametrize("access", ["O_PATH", "O_WRONLY"])
def test_a_descriptor_that_cannot_read_is_refused_clearly(tmp_path: Path, access: str) -> None:
    """Regression test (adversary round 27): an ``O_PATH`` descriptor, whose access bits
    read as ``O_RDONLY``, passed the check for ``mode="r"`` and failed later with a bare
    ``OSError(EBADF)``; it is refused as a descriptor not open for reading."""
    path = tmp_path / "f"
    path.write_bytes(bytes(PAGE))
    fd = os.open(path, getattr(os, access))
    try:
        for mode in ("r", "rw", "copy"):
            with pytest.raises(PermissionError, match="not open for reading"):
                anymmap.sync.MmapRaw.map_raw(fd, mode=mode)
        with pytest.raises(PermissionError, match="not open for reading"):
            anymmap.sync.MmapRegion.attach_fd(fd)
    finally:
        os.close(fd)


_A_CHILD_FORKED_INSIDE_ITS_GROWTH_GOES_ON = """
    import os, sys
    import anymmap.sync

    path = sys.argv[1]
    m = anymmap.sync.MmapRaw.create(path, 4096, prefill="zeros")
    pid = []

    def fork_inside(frame, event, arg):  # as a signal handler could, inside the growth
        if event == "call" and frame.f_code.co_name == "append_zeros" and not pid:
            pid.append(os.fork())

    sys.settrace(fork_inside)
    m.resize(8 << 20)  # both processes finish it
    sys.settrace(None)
    m.update_region((8 << 20) - 1, b"x")
    m.close()
    if pid[0] == 0:
        os._exit(0)
    assert os.waitpid(pid[0], 0)[1] == 0, "the child's growth failed"
    with anymmap.sync.MmapRaw.map_raw(path) as m:  # and the turn is free
        m.resize(16 << 20)
    print("ok")
"""


def test_a_child_forked_inside_its_own_growth_can_finish_it(tmp_path: Path) -> None:
    """Regression test: a forked child lets go of the turns in flight (see
    ``test_a_child_of_a_process_killed_during_a_growth_does_not_keep_its_turn``), but
    the thread that forked goes on in the child, inside its growth: its descriptor must
    stay usable (reopened without the lock), not be closed under it."""
    check_child(_A_CHILD_FORKED_INSIDE_ITS_GROWTH_GOES_ON, str(tmp_path / "f"), timeout=30)


def _turn_byte_lock(path: Path) -> int:
    """The kind of lock on the growth turn's byte that another descriptor sees."""
    fd = os.open(path, os.O_RDONLY)
    try:
        probe = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 1 << 62, 1, 0)
        kind: int = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_OFD_GETLK, probe))[0]
        return kind
    finally:
        os.close(fd)


_A_FORK_WHILE_A_TURN_IS_BEING_TAKEN = """
    import os, sys, threading, time
    import anymmap.sync

    path = sys.argv[1]
    m = anymmap.sync.MmapRaw.create(path, 4096, prefill="zeros")
    in_gap, leave_gap, in_growth, end_growth = (threading.Event() for _ in range(4))

    def hook(frame, event, arg):
        # Holds the growing thread right after it opened its turn's descriptor, then
        # inside its growth.
        if event != "call":
            return
        if frame.f_code.co_name == "_turns_of_this_thread" and not in_gap.is_set():
            in_gap.set()
            leave_gap.wait()
        elif frame.f_code.co_name == "append_zeros" and not in_growth.is_set():
            in_growth.set()
            end_growth.wait()

    def grow():
        sys.settrace(hook)
        m.resize(1 << 20)

    grower = threading.Thread(target=grow)
    grower.start()
    in_gap.wait()
    r, w = os.pipe()
    forked = []

    def fork():
        pid = os.fork()
        if pid == 0:  # once the growth holds its turn: does this child share it?
            status = 4
            try:
                os.read(r, 1)
                status = 3 if any(map(locked, os.listdir("/proc/self/fdinfo"))) else 0
            finally:
                os._exit(status)
        forked.append(pid)

    def locked(n):
        try:
            with open(f"/proc/self/fdinfo/{n}") as f:
                return "OFDLCK" in f.read()
        except FileNotFoundError:  # (the listing's own descriptor)
            return False

    forker = threading.Thread(target=fork)
    forker.start()
    time.sleep(0.2)  # (so that the fork comes in the gap: if later, it proves less)
    leave_gap.set()
    in_growth.wait()
    forker.join()
    os.write(w, b"x")
    status = os.waitpid(forked[0], 0)[1]
    end_growth.set()
    grower.join()
    assert os.waitstatus_to_exitcode(status) == 0, "the child has the growth's turn"
    print("ok")
"""


def test_a_fork_while_a_turn_is_being_taken_leaves_the_child_without_it(
    tmp_path: Path,
) -> None:
    """Regression test (adversary round 28): a fork that came between a turn's descriptor
    being opened and being recorded left the child a descriptor no fork hook knew of;
    the parent then locked it, and if killed mid-growth, left its turn to the child.
    Opening and recording are now one step with respect to fork."""
    check_child(_A_FORK_WHILE_A_TURN_IS_BEING_TAKEN, str(tmp_path / "f"), timeout=30)


def test_a_fork_leaves_the_parents_shared_turn_alone(tmp_path: Path) -> None:
    """Regression test (adversary round 28): the fork hook unlocked the shared turn of a
    mapping under way in the parent (the child shares that map's open file
    description), so the parent mapped on without it.  The child now only forgets it."""
    path = tmp_path / "f"
    path.write_bytes(bytes(2 * PAGE))
    inside, go = threading.Event(), threading.Event()
    seen: list[int] = []

    def hook(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_name == "map_placed" and not inside.is_set():
            inside.set()
            go.wait()

    def map_it() -> None:
        sys.settrace(hook)
        try:
            anymmap.sync.MmapRaw.map_raw(path, mode="r").close()
        finally:
            sys.settrace(None)

    mapper = threading.Thread(target=map_it)
    mapper.start()
    try:
        inside.wait()
        seen.append(_turn_byte_lock(path))
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        seen.append(_turn_byte_lock(path))
    finally:
        go.set()
        mapper.join()
    assert seen == [fcntl.F_RDLCK, fcntl.F_RDLCK]
    assert _turn_byte_lock(path) == fcntl.F_UNLCK


_A_LEASED_DESCRIPTOR_MAPPED = """
    import fcntl, os, sys
    import anymmap.sync

    path = sys.argv[1]
    with open(path, "wb") as f:
        f.write(bytes(8192))
    fd = os.open(path, os.O_RDONLY)
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    anymmap.sync.MmapRaw.map_raw(fd, mode="r").close()
    assert fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_RDLCK
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    os.close(fd)
    fd = os.open(path, os.O_RDWR)
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    anymmap.sync.MmapRaw.map_raw(fd).close()
    anymmap.sync.MmapRegion.attach_fd(fd).close()
    assert fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_WRLCK
    print("ok")
"""


def test_mapping_a_leased_descriptor_keeps_the_lease(tmp_path: Path) -> None:
    """Regression test (adversary round 28): the shared turn of ``map_raw(fd)`` and
    ``attach_fd(fd)`` opened the file again, which broke the caller's own lease: the
    call waited out the lease's break (45 s) and the lease was gone.  A descriptor
    passed in now takes no turn."""
    check_child(_A_LEASED_DESCRIPTOR_MAPPED, str(tmp_path / "f"), timeout=30)


_WORKER_CALL_KEEPS_NOTHING = """
    import inspect, sys, threading
    import anyio, anymmap
    from anyio._backends._asyncio import WorkerThread
    from tests._child import run_loop

    # Hold anyio's worker thread where it has reported a call's outcome but not yet let
    # go of the call (its "del result, exception"), until the caller has looked at its
    # buffer: the window a loaded machine opens at random, opened every time.
    lines, first = inspect.getsourcelines(WorkerThread.run)
    (window,) = [first + i for i, line in enumerate(lines) if "del result, exception" in line]
    armed, paused, looked = threading.Event(), threading.Event(), threading.Event()

    def local(frame, event, arg):
        if event == "line" and frame.f_lineno == window and armed.is_set():
            armed.clear()
            paused.set()
            looked.wait(20)
        return local

    def tracer(frame, event, arg):
        return local if frame.f_code is WorkerThread.run.__code__ else None

    threading.settrace(tracer)
    SIZE = 2 << 20  # (above INLINE_COPY_LIMIT: the copies run in a worker thread)

    async def main():
        async with await anymmap.AnonymousMmap.new(SIZE) as m:
            for copy in (m.read_into, m.update_region):
                buffer = bytearray(SIZE)
                armed.set()
                await copy(0, buffer)
                assert paused.wait(20), "the worker thread never reached the window"
                paused.clear()
                try:
                    buffer.append(0)
                except BufferError:
                    print(f"{copy.__name__}: the worker thread still exports the buffer")
                    sys.exit(1)
                finally:
                    looked.set()
                looked.clear()

    run_loop(sys.argv[1], main)
    print("ok")
"""


@pytest.mark.parametrize("runner", ["asyncio", "uvloop"])
def test_a_worker_call_keeps_nothing_of_its_buffer_once_it_returns(runner: str) -> None:
    """Regression test (3a5dcff, found by the suite under two CPU hogs): anyio's worker
    thread kept the call it ran (and so the copy's view of the caller's buffer) for a
    moment after reporting its outcome, so a caller that resumed in that moment found its
    buffer still exported (``BufferError`` resizing it; a borrow whose view was copied
    from ended with ``BorrowError``).  The call now lets go of its function and arguments
    as it returns.  (On trio, trio's worker thread lets go before it reports.)"""
    check_child(_WORKER_CALL_KEEPS_NOTHING, runner)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="__buffer__ (PEP 688) is 3.12+")
def test_the_error_of_a_buffer_method_reaches_the_caller() -> None:
    """Regression test (adversary round 39): a class whose ``__buffer__`` raised
    ``TypeError`` had its message replaced by "a bytes-like object is required"."""

    class Refusing:
        def __buffer__(self, flags: int) -> memoryview:
            raise TypeError("not while the device is busy")

    with anymmap.sync.AnonymousMmap.new(PAGE) as m:
        with pytest.raises(TypeError, match="not while the device is busy"):
            m.read_into(0, Refusing())
        with pytest.raises(TypeError, match="not while the device is busy"):
            m.update_region(0, Refusing())


@pytest.mark.anyio
async def test_an_error_inside_the_buffer_check_is_a_type_error_and_lets_go() -> None:
    """Regression test (adversary round 40): whatever the check of a buffer's owner
    raised (a ``base`` or ``__array_interface__`` property of a ``bytearray`` subclass,
    a malformed ``_fields_`` entry) escaped as it was, instead of the documented
    ``TypeError``, and the buffer stayed exported while the caller kept the error."""

    class Raising(bytearray):
        @property
        def __array_interface__(self) -> dict[str, object]:
            raise RuntimeError("boom")

    kept: list[BaseException] = []
    async with await anymmap.AnonymousMmap.new(PAGE) as m:
        buffer = Raising(32)
        for call in (m.read_into, m.update_region):
            with pytest.raises(TypeError, match="cannot be traced") as caught:
                await call(0, buffer)
            kept.append(caught.value)
        with pytest.raises(TypeError, match="cannot be traced") as caught:
            m.read_into_nowait(0, buffer)
        kept.append(caught.value)
        buffer.append(0)  # (BufferError while an export is kept)


_A_CLOSED_LOOP_LEFT_A_BORROW = """
    import asyncio, gc, sys, threading
    import anymmap
    loop_kind, where = sys.argv[1:]
    new_loop = asyncio.new_event_loop
    if loop_kind == "uvloop":
        import uvloop
        new_loop = uvloop.new_event_loop

    def run(main):
        loop = new_loop()
        try:
            return loop.run_until_complete(main())
        finally:
            loop.close()

    async def make():
        return await anymmap.AnonymousMmap.new(1 << 16)

    m = run(make)
    # A loop closed without cancelling its tasks (a hand-made runner, as older code
    # has): one is suspended inside a borrow, another waits to resize behind it.
    old = new_loop()
    async def borrower():
        async with m.as_mut_slice(0, 8) as view:
            view[0] = 7
            await asyncio.sleep(3600)
    async def resizer():
        await m.resize(1 << 17)
    tasks = [old.create_task(borrower()), old.create_task(resizer())]
    old.run_until_complete(asyncio.sleep(0.05))
    assert m.lock.locked()
    old.close()

    async def later():
        assert await m.read(0, 1) == b"\\x07"  # (before: waited for ever behind the resize)
        for call in (lambda: m.resize(1 << 17), m.aclose):
            try:  # the borrow's view is alive in the abandoned task's frame
                await call()
            except anymmap.BorrowError:
                pass
            else:
                raise AssertionError("the memory under a live view was unmapped")
        assert not m.closed and not m.lock.locked()
        async with m.as_slice(0, 1) as view:
            assert bytes(view) == b"\\x07"
        return True

    if where == "same thread":
        assert run(later)
    else:
        done = []
        thread = threading.Thread(target=lambda: done.append(run(later)))
        thread.start()
        thread.join()
        assert done == [True]
    del tasks, old
    gc.collect()  # the abandoned tasks (and their views) go
    async def close():
        await m.aclose()
    run(close)
    assert m.closed
    print("ok")
"""


@pytest.mark.parametrize("where", ["same thread", "another thread"])
@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_loop_closed_inside_a_borrow_does_not_keep_the_lock(loop_kind: str, where: str) -> None:
    """Regression test: an asyncio loop closed without cancelling its tasks (not
    ``asyncio.run``, which cancels them) left a task suspended inside a borrow holding
    the map's lock, and a second task's resize waiting for it: every later call of the
    map in a new loop (``read``, ``resize``, ``aclose``) waited for ever.  The tasks of a
    closed loop never run again, so the next loop that takes the map drops their holds;
    the borrow's view, still alive in the abandoned frame, keeps the memory mapped
    (``resize`` and ``aclose`` raise ``BorrowError``) until the task is collected."""
    check_child(_A_CLOSED_LOOP_LEFT_A_BORROW, loop_kind, where, timeout=40)


_A_SHRINK_UNDER_ANOTHER_MAPS_BORROW = """
    import os, sys
    import anyio, anymmap
    from anymmap import sync as S

    other_kind = sys.argv[1]
    d = os.environ["ANYMMAP_CHILD_SHM"]
    path = os.path.join(d, "f")
    N = 1 << 16
    with open(path, "wb") as f:
        f.write(b"y" * N)

    async def main():
        a = await anymmap.MmapRaw.map_raw(path)
        if other_kind == "raw":
            b = await anymmap.MmapRaw.map_raw(path)
        elif other_kind == "region":
            b = await anymmap.MmapRegion.attach(path)
        else:
            b = await anymmap.SparseMapping.new(1 << 20)
            await b.map_file(0, N, path)
        async with b.as_slice(0, N) as view:
            await a.resize(4096)  # the file is mapped by b too: it is not cut
            assert (len(a), os.path.getsize(path)) == (4096, N)
            assert view[N - 1] == ord("y")  # (SIGBUS before)
        assert await b.read(N - 1, 1) == b"y"
        await b.aclose()
        await a.aclose()
        alone = await anymmap.MmapRaw.map_raw(path)
        await alone.resize(2048)  # the only map of the file: it cuts
        assert os.path.getsize(path) == 2048
        await alone.aclose()

    def sync_main():
        a = S.MmapRaw.map_raw(path)
        b = S.MmapRaw.map_raw(path)
        with b.as_slice(0, N) as view:
            a.resize(4096)
            assert (len(a), os.path.getsize(path)) == (4096, N)
            assert view[N - 1] == ord("y")
        b.close()
        a.close()
        with S.MmapRaw.map_raw(path) as alone:
            alone.resize(2048)
        assert os.path.getsize(path) == 2048

    sync_main() if other_kind == "sync" else anyio.run(main)
    print("ok")
"""


@pytest.mark.parametrize("other_kind", ["raw", "region", "sparse", "sync"])
def test_a_shrink_never_cuts_the_file_under_another_maps_borrow(other_kind: str) -> None:
    """Regression test (adversary round 46, 20 of 20): a shrinking ``resize`` of one map
    cut the file under a borrow of another map of the same file in the same process (a
    second ``MmapRaw``, a region attached to it, a sparse map's window), and reading the
    borrowed view died of SIGBUS.  The file is now cut only when no other map of this
    process shows it."""
    check_child(_A_SHRINK_UNDER_ANOTHER_MAPS_BORROW, other_kind, timeout=40)


_A_SHRINK_RACING_A_NEW_MAP = """
    import mmap, os, sys, threading
    from anymmap import MappingFaultError, sync as S

    how = sys.argv[1]
    d = os.environ["ANYMMAP_CHILD_SHM"]
    path = os.path.join(d, "f")
    P = 4096
    with open(path, "wb") as f:
        f.write(b"x" * (4 * P))
    a = S.MmapRaw.map_raw(path)
    ROUNDS = 1000
    done = threading.Event()
    counts = [0, 0]

    def shrinker():
        # ROUNDS, and on until the other thread made a map (on a busy machine it may not
        # have been scheduled yet: once, 1000 rounds went by with none).
        while counts[0] < ROUNDS or (counts[1] == 0 and counts[0] < 50 * ROUNDS):
            a.resize(P)
            a.resize(4 * P)
            counts[0] += 1
            if done.is_set():
                break
        done.set()

    def new_map(fd):
        if how == "path":
            return S.MmapRaw.map_raw(path)
        if how == "fd":
            return S.MmapRaw.map_raw(fd)
        if how == "region":
            return S.MmapRegion.attach(path)
        size = os.fstat(fd).st_size
        sparse = S.SparseMapping.new(1 << 20)
        sparse.map_file(0, -(-size // P) * P, path)
        return sparse

    def resizer():  # (another map of the file, moving between two lengths)
        with S.MmapRaw.map_raw(path) as b:
            while not done.is_set():
                b.resize(2 * P)
                b.resize(3 * P)
                with b.as_slice(2 * P, P) as v:
                    sum(v[::512])  # SIGBUS here if the file was cut under it
                counts[1] += 1

    def windows():  # (one sparse map, its windows of the file come and go)
        fd = os.open(path, os.O_RDWR)
        with S.SparseMapping.new(1 << 20) as sparse:
            k = 0
            while not done.is_set():
                k += 1
                size = os.fstat(fd).st_size
                n = -(-size // P) * P
                try:
                    if k % 2:
                        sparse.map_file(0, n, path)
                    else:
                        sparse.mmap(0, n, mmap.PROT_READ, mmap.MAP_SHARED, fd)
                except ValueError:  # (the file was being cut: an empty window)
                    continue
                if size > P:
                    try:
                        if k % 2:
                            with sparse.as_slice(size - P, P) as v:
                                sum(v[::512])  # SIGBUS here if the file was cut under it
                        else:  # (a pass-through piece is read through the kernel)
                            sparse.read(size - P, P)
                    except MappingFaultError:  # (a window past the end of the file)
                        pass
                sparse.unmap(0, n)
                counts[1] += 1
        os.close(fd)

    def mapper():
        if how == "resize":
            return resizer()
        if how == "sparse-windows":
            return windows()
        fd = os.open(path, os.O_RDWR)
        while not done.is_set():
            try:
                b = new_map(fd)
            except ValueError:  # (the file was being cut: "cannot map an empty file")
                continue
            with b:
                n = len(b) if how != "sparse" else os.fstat(fd).st_size
                if n > P:
                    try:
                        with b.as_slice(n - P, P) as v:
                            sum(v[::512])  # SIGBUS here if the file was cut under it
                    except Exception as e:  # (a sparse window past the end is refused)
                        if how != "sparse":
                            raise
                counts[1] += 1
        os.close(fd)

    threads = [threading.Thread(target=shrinker), threading.Thread(target=mapper)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a.close()
    assert counts[1] > 0, counts
    print("ok")
"""


@pytest.mark.parametrize("how", ["path", "fd", "region", "sparse", "sparse-windows", "resize"])
def test_a_shrink_never_cuts_the_file_under_a_map_being_made(how: str) -> None:
    """Regression test (adversary round 47, 6 of 6 runs died of SIGBUS): a shrinking
    ``resize`` checked for other maps of the file in this process, then cut it; a map
    of the file made by another thread in between (by path, by descriptor, a region's
    ``attach``) read the old size and mapped it, and a borrow of its last page died of
    SIGBUS.  A map in the making counts from before it reads the size, and the check
    and the cut are one section: the new map either keeps the file whole or reads the
    size the cut left.  The same for another map's own resize (9 of 9 runs): between
    giving up its old memory and registering the new one it was not seen at all.
    (``sparse-windows``: one sparse map whose windows of the file come and go, counted
    only while one shows the file.)"""
    check_child(_A_SHRINK_RACING_A_NEW_MAP, how, timeout=60)


_A_SPARSE_MAP_COUNTS_ONLY_THE_WINDOWS_IT_SHOWS = """
    import mmap, os
    from anymmap import sync as S

    d = os.environ["ANYMMAP_CHILD_SHM"]
    P = 4096
    path, other = os.path.join(d, "f"), os.path.join(d, "g")
    for name in (path, other):
        with open(name, "wb") as f:
            f.write(b"x" * (4 * P))

    def cut_by_shrink():  # whether a shrink of another map of the file cuts it
        with S.MmapRaw.map_raw(path) as a:
            a.resize(P)
            cut = os.path.getsize(path) == P
        with open(path, "r+b") as f:
            f.truncate(4 * P)
        return cut

    fd = os.open(path, os.O_RDWR)
    with S.SparseMapping.new(16 * P) as sparse:
        # What shows the file keeps it whole (a borrow of it past the new end would die)
        sparse.map_file(0, 4 * P, path)
        assert not cut_by_shrink()
        sparse.mmap(8 * P, 4 * P, mmap.PROT_READ, mmap.MAP_SHARED, fd)
        sparse.unmap(0, 4 * P)
        assert not cut_by_shrink()  # (the pass-through window still shows it)
        assert sparse.read(12 * P - 1, 1) == b"x"
        # ... and what no longer does, does not: unmapped, replaced, or in part
        sparse.alloc(8 * P, 4 * P)
        assert cut_by_shrink()
        sparse.map_file(0, 4 * P, path)
        sparse.map_file(0, 2 * P, other)
        assert not cut_by_shrink()  # (its back half is still a window of the file)
        sparse.map_file(2 * P, 2 * P, other, file_offset=2 * P)
        assert cut_by_shrink()
        sparse.map_file(4 * P, 4 * P, path)
        sparse.map_zero(4 * P, 4 * P)
        assert cut_by_shrink()
        kinds = [(p.kind, p.file) for p in sparse.pieces()]
        assert kinds == [
            ("file", other), ("file", other), ("zero", None), ("private", None), ("hole", None)
        ], kinds
    os.close(fd)
    print("ok")
"""


def test_a_sparse_map_keeps_uncut_only_the_files_it_shows_now() -> None:
    """Regression test (a limitation documented since round 46): a sparse map that had
    once shown a window of a file kept every shrink of another map of that file from
    cutting it until the sparse map was closed, even once the window was unmapped or
    replaced.  The sparse map now says which files its pieces show (after a window's
    pages are gone; a new window counts as being made until its piece says so), and a
    shrink cuts the file unless a live window shows it."""
    check_child(_A_SPARSE_MAP_COUNTS_ONLY_THE_WINDOWS_IT_SHOWS, timeout=40)


_A_FINALIZER_MAPS_THE_FILE_DURING_A_SHRINK = """
    import gc, os, sys
    from anymmap import sync as S

    d = os.environ["ANYMMAP_CHILD_SHM"]
    P = 4096
    path = os.path.join(d, "f")
    hits = 0
    for k in range(1, 60):  # the k-th collection inside the shrink's check maps the file
        with open(path, "wb") as f:
            f.write(b"x" * (4 * P))
        a = S.MmapRaw.map_raw(path)
        made, seen = [], [0]

        def finalizer_maps(phase, info):  # as a __del__ of cyclic garbage would
            if made or phase != "start":
                return
            frame = sys._getframe()
            while frame is not None and frame.f_code.co_name != "cut_if_alone":
                frame = frame.f_back
            if frame is not None:
                seen[0] += 1
                if seen[0] == k:
                    made.append(S.MmapRaw.map_raw(path))

        gc.callbacks.append(finalizer_maps)
        gc.set_threshold(1)
        try:
            a.resize(P)
        finally:
            gc.set_threshold(700)
            gc.callbacks.remove(finalizer_maps)
        size = os.path.getsize(path)
        for m in made:
            hits += 1
            # (A borrow of its last page would die of SIGBUS.)
            assert len(m) <= size, f"collection {k}: a map of {len(m)} bytes, file {size}"
            m.close()
        a.close()
    assert hits, "no finalizer ran inside the shrink"  # (else the test tests nothing)
    print("ok")
"""


def test_a_finalizer_that_maps_the_file_during_a_shrink_is_never_cut_under() -> None:
    """Regression test (adversary round 48, SIGBUS 5 of 5): a finalizer that the collector
    ran inside a shrink's "is another map of the file open or being made" check, on the
    same thread, could map the file there without being counted (it cannot take the
    lock its thread holds) and be registered only later; the shrink then cut the file
    under the new map.  The collector is now off for the check and the cut."""
    check_child(_A_FINALIZER_MAPS_THE_FILE_DURING_A_SHRINK, timeout=60)


_OPEN_OR_CREATE_RACING_A_SHRINK = """
    import os, threading
    from anymmap import sync as S

    d = os.environ["ANYMMAP_CHILD_SHM"]
    P = 4096
    path = os.path.join(d, "f")
    with open(path, "wb") as f:
        f.write(b"x" * P)
    done = threading.Event()
    short = []

    def opener():
        for _ in range(3000):
            with S.MmapRaw.open_or_create(path, 8 * P) as m:
                if len(m) < 8 * P:
                    short.append(len(m))
        done.set()

    def shrinker():
        while not done.is_set():
            with S.MmapRaw.map_raw(path) as m:
                if len(m) > P:
                    m.resize(P)

    threads = [threading.Thread(target=opener), threading.Thread(target=shrinker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not short, f"{len(short)} of 3000 maps shorter than asked: {sorted(set(short))}"
    print("ok")
"""


def test_open_or_create_never_returns_a_map_shorter_than_asked() -> None:
    """Regression test (adversary round 48, about 1 call in 90 with a shrink of another
    map of the file running beside it): ``open_or_create(path, size)`` grew the file,
    then mapped what the file held, and a shrink that cut it in between gave a map
    shorter than ``size``.  It counts as a map being made from before it grows the file
    until it is mapped."""
    check_child(_OPEN_OR_CREATE_RACING_A_SHRINK, timeout=60)


_A_LOOP_CLOSED_DURING_A_WORKER_CALL = """
    import asyncio, sys
    import anymmap
    loop_kind, what = sys.argv[1:]
    new_loop = asyncio.new_event_loop
    if loop_kind == "uvloop":
        import uvloop
        new_loop = uvloop.new_event_loop
    loop = new_loop()
    m = loop.run_until_complete(anymmap.AnonymousMmap.new(256 << 20))
    calls = {
        "read": lambda: m.read(0, 128 << 20),
        "update_region": lambda: m.update_region(0, bytes(64 << 20)),
        "resize": lambda: m.resize(512 << 20),
    }
    async def op():
        await calls[what]()  # (large: in a worker thread)
    loop.create_task(op())
    loop.run_until_complete(asyncio.sleep(0.005))
    loop.stop()
    loop.close()  # without cancelling the task: the interpreter must still exit
    print("ok")
"""


@pytest.mark.parametrize("what", ["read", "update_region", "resize"])
@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_the_interpreter_exits_after_a_loop_closed_during_a_worker_call(
    loop_kind: str, what: str
) -> None:
    """Regression test (adversary round 46: 15 of 15 runs hung): a loop closed without
    cancelling a task whose large copy or resize ran in a worker thread.  anyio stops a
    worker when the task it took for the loop's root ends; when the
    ``run_until_complete`` task had ended before the worker was made, that was
    anymmap's own helper task, pending for ever, and the interpreter waited for the
    (non-daemon) worker at exit.  anymmap now stops, at exit, the workers of a closed
    loop that ran its calls."""
    check_child(_A_LOOP_CLOSED_DURING_A_WORKER_CALL, loop_kind, what, timeout=20)


def test_the_keepers_token_is_not_tracked_by_the_collector() -> None:
    """What the fix for adversary rounds 51 and 52 rests on: the token a map's keeper
    holds takes weak references and is not tracked by the cyclic collector, so the weak
    reference to it is not cleared with the garbage's before the finalizers run (a
    CPython that tracked code objects would bring the SIGSEGV back)."""
    from anymmap._sys import is_kept, keep_until_dropped, let_go

    class Dropper:
        pass

    kept = keep_until_dropped(Dropper())
    token, key = kept
    assert not gc.is_tracked(token)
    assert key() is token
    assert is_kept(kept)
    let_go(kept)
    assert not is_kept(kept)
    del token, kept
    assert key() is None


_A_POPULATE_OVER_AN_UNREADABLE_PIECE = """
    import anyio, anymmap
    from tests._helpers import rss_bytes

    async def main():
        async with await anymmap.SparseMapping.new(1 << 21) as m:
            await m.mmap_anonymous(0, 4096, 0, 0x02)  # PROT_NONE, MAP_PRIVATE
            for write in (False, True):
                try:
                    await m.populate(0, 4096, write=write)
                except anymmap.MappingFaultError as exc:
                    assert "not readable" in exc.cause, exc.cause
                else:
                    raise AssertionError("populated a PROT_NONE piece")
        size = 32 << 20
        async with await anymmap.AnonymousMmap.new(size) as a:
            before = rss_bytes()
            await a.populate(write=True)
            grew = rss_bytes() - before
            assert grew >= size * 0.9, f"populate(write=True) committed {grew >> 20} MiB"

    anyio.run(main)
    print("ok")
"""


def test_a_populate_over_an_unreadable_piece_leaves_the_advice_on() -> None:
    """Regression test (adversary round 54): ``madvise`` says ``EINVAL`` for a range whose
    protection forbids the access as well as on a kernel without ``MADV_POPULATE_*``,
    and any ``EINVAL`` turned the advice off for the whole process: a later
    ``populate(write=True)`` only faulted pages in for reading (committed nothing), and
    an ``atomic_store`` into a hole of a full file system died of SIGBUS.  The kernel is
    now asked once, on a page of anymmap's own."""
    check_child(_A_POPULATE_OVER_AN_UNREADABLE_PIECE, timeout=60)


def test_read_into_nowait_copies_more_than_one_read_call_can(tmp_path: Path) -> None:
    """Regression test (adversary round 54): one ``preadv(RWF_NOWAIT)`` copies at most
    2 GiB - 4 KiB, and ``read_into_nowait`` took that short count for a page not in
    memory: a cached range longer than that raised ``WouldBlock`` every time."""
    size = (2 << 30) + (1 << 20)
    with open("/proc/meminfo", encoding="ascii") as f:
        available = next(int(line.split()[1]) << 10 for line in f if "MemAvailable" in line)
    if available < 3 * size:
        pytest.skip(f"needs {3 * size >> 30} GiB of free memory (the copy and the cache)")
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.truncate(size)  # holes: the reads below cache zero pages, no disk I/O
    fd = os.open(path, os.O_RDONLY)
    try:
        if not anymmap._sys.os_impl.nowait_reads(fd):
            pytest.skip("the file system of tmp_path refuses RWF_NOWAIT reads")
        chunk = bytearray(64 << 20)
        done = 0
        while done < size:
            done += os.preadv(fd, [chunk], done)
        del chunk
    finally:
        os.close(fd)
    with anymmap.sync.MmapRaw.map_raw(path, mode="r") as m:
        dst = bytearray(size)
        dst[-1] = 1
        m.read_into_nowait(0, dst)  # (raised WouldBlock)
        assert dst[-1] == 0
        del dst


_A_HANDLERS_COPY_INSIDE_A_COPY = """
    import os, signal, sys, tempfile, time
    from anymmap.sync import MmapRaw

    d = tempfile.mkdtemp(prefix="anymmap-child-")
    a = MmapRaw.create(os.path.join(d, "a"), 1 << 16)
    b = MmapRaw.create(os.path.join(d, "b"), 1 << 16)
    a.update_region(0, bytes(4096))
    b.update_region(0, bytes(4096))
    handled = 0
    busy = False

    def handler(signum, frame):
        global handled, busy
        if busy:  # (one inside its own write to b would raise RuntimeError: documented)
            return
        busy = True
        try:
            handled += 1
            b.update_region_nowait(0, b"H" * 64)
        finally:
            busy = False

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 200e-6, 200e-6)
    lost = writes = 0
    deadline = time.monotonic() + 20  # (a bound on the run, not a figure checked)
    try:
        while handled < 1000 and not lost and time.monotonic() < deadline:
            for i in range(1000):
                data = (writes + i).to_bytes(16, "little")
                a.update_region_nowait(0, data)
                if a.read(0, 16) != data:
                    lost += 1
                    break
            writes += 1000
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        a.close(); b.close()
        for name in ("a", "b"):
            os.unlink(os.path.join(d, name))
        os.rmdir(d)
    assert not lost, f"a write returned but was not done, after {handled} handlers"
    assert handled >= 100, handled
    print("ok")
"""


def test_a_handlers_copy_inside_a_copy_of_another_map_loses_nothing() -> None:
    """Regression test (adversary round 55: a write lost within 5 to 59 handler runs):
    the fault-safe copies kept their iovecs in a per-thread scratch, filled before the
    pid call at whose return Python runs signal handlers.  A handler's copy through
    another map refilled them, and the outer write then copied the handler's bytes,
    counted them as its own and returned with its write never done.  Each copy has
    its own iovecs now."""
    check_child(_A_HANDLERS_COPY_INSIDE_A_COPY, timeout=60)


@pytest.mark.parametrize("how", ["map_raw", "attach_fd", "map_file"])
def test_a_map_of_the_callers_descriptor_never_moves_its_offset_or_changes_its_flags(
    shm_path: Path, how: str
) -> None:
    """Regression test (adversary round 55): a map made from the caller's descriptor
    keeps a ``dup`` of it, which shares its file offset, and a copy meeting a page not
    in memory on tmpfs looked for holes with ``lseek(SEEK_DATA)``: the caller's next
    ``write`` went 512 KiB further on.  A dup of the caller's is never walked now.
    Round 64: the dup shares the status flags too, and making the map cleared the
    caller's ``O_NONBLOCK`` (meant for a path anymmap opened itself)."""
    path = shm_path / "log"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o600)
    try:
        os.ftruncate(fd, 1 << 20)
        os.pwrite(fd, b"Z", 512 << 10)  # data at 512 KiB, holes around it
        assert os.write(fd, b"record-1;") == 9
        with contextlib.ExitStack() as stack:
            if how == "map_raw":
                m: Any = stack.enter_context(anymmap.sync.MmapRaw.map_raw(fd, mode="r"))
            elif how == "attach_fd":
                m = stack.enter_context(anymmap.sync.MmapRegion.attach_fd(fd))
            else:
                m = stack.enter_context(anymmap.sync.SparseMapping.new(1 << 21))
                m.map_file(0, 1 << 20, fd)
            assert m.read(256 << 10, 8) == bytes(8)  # a hole, not in memory
            assert m.read(512 << 10, 1) == b"Z"
            assert os.lseek(fd, 0, os.SEEK_CUR) == 9
            assert not os.get_blocking(fd)
        assert os.write(fd, b"record-2;") == 9
        assert os.pread(fd, 18, 0) == b"record-1;record-2;"
    finally:
        os.close(fd)


_MAPS_MADE_BY_A_HANDLER_INSIDE_MAP_MAKING = """
    import signal
    import anymmap.sync as S

    made, armed = 0, [True]

    def handler(signum, frame):
        global made
        signal.setitimer(signal.ITIMER_REAL, 0)  # (no handler inside itself)
        if not armed[0]:  # (a signal pending as the loop disarmed: it must not re-arm)
            return
        m = S.AnonymousMmap.new(4096)
        m.update_region(0, b"y")
        m.close()
        made += 1
        signal.setitimer(signal.ITIMER_REAL, 0.00015)

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.00015)
    for i in range(20000):
        S.AnonymousMmap.new(4096).close()
    armed[0] = False
    signal.setitimer(signal.ITIMER_REAL, 0)
    assert made >= 100, made
    print("ok")
"""


def test_a_map_made_by_a_handler_while_a_map_is_made_never_waits() -> None:
    """Regression test (adversary round 56: a hang after 235 to 384 handler maps): every
    new map is tracked for fork children under a plain lock, and a signal handler (or a
    finalizer) run inside that section whose map was tracked too waited for the lock
    its own thread held.  The append needs no lock now; the pruning is skipped if
    taken."""
    check_child(_MAPS_MADE_BY_A_HANDLER_INSIDE_MAP_MAKING, timeout=60)


_A_HANDLERS_HAND_OVER_INSIDE_A_HAND_OVER = """
    import asyncio, signal, threading
    import anymmap

    N = 3000
    outer, inner = [], []

    async def make():
        for _ in range(N):
            outer.append(await anymmap.AnonymousMmap.new(4096))
            inner.append(await anymmap.AnonymousMmap.new(4096))

    # Made by a loop in a thread that has ended: each map passes to the next loop
    # that uses it (a hand-over), as when one anyio.run follows another in a new thread.
    t = threading.Thread(target=asyncio.run, args=(make(),))
    t.start()
    t.join()
    used, armed = 0, [True]

    def handler(signum, frame):
        global used
        signal.setitimer(signal.ITIMER_REAL, 0)  # (no handler inside itself)
        if not armed[0]:  # (a signal pending as main() disarmed: it must not re-arm)
            return
        if inner:
            inner.pop().update_region_nowait(0, b"inner")  # another map, handed over
            used += 1
        signal.setitimer(signal.ITIMER_REAL, 0.0001)

    async def main():
        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.0001)
        for m in outer:
            m.update_region_nowait(0, b"outer")
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        assert await outer[-1].read(0, 5) == b"outer"

    asyncio.run(main())
    assert used >= 10, used
    print("ok")
"""


def test_a_handlers_call_inside_a_hand_over_to_this_loop_never_waits() -> None:
    """Regression test (adversary round 56: a hang within the first few handler calls):
    a map whose lock passes to this thread's event loop holds a plain lock for the
    hand-over, and a signal handler (or finalizer) run inside it whose call of another
    map was a hand-over too waited for its own thread.  The lock is re-entrant now."""
    check_child(_A_HANDLERS_HAND_OVER_INSIDE_A_HAND_OVER, timeout=60)


_A_FINALIZERS_MAP_OF_THE_FILE_INSIDE_ITS_RECORD_LOOK_UP = """
    import errno, gc, os, shutil, sys, tempfile
    import anymmap, anymmap.sync as S

    tmp = tempfile.mkdtemp(prefix="anymmap-child-")
    current = [None]
    inner = []

    def inside_the_record_look_up():
        # (Picks the moment: the collector runs this inside _syncs_of, as the file's
        # record is being made; by chance that is once in many runs.)
        f, names = sys._getframe(2), set()
        while f is not None:
            names.add(f.f_code.co_name)
            if f.f_code.co_name == "__init__" and type(f.f_locals.get("self")).__name__ == "_FileSyncs":
                names.add("_FileSyncs")
            f = f.f_back
        return {"_FileSyncs", "_syncs_of"} <= names

    class Cycle:
        def __init__(self):
            self.me = self

        def __del__(self):
            path = current[0]
            if path is not None and not inner and inside_the_record_look_up():
                inner.append(S.MmapRaw.map_raw(path))
            Cycle()

    rounds = 0
    try:
        for i in range(20):
            path = os.path.join(tmp, f"f{i}")
            with open(path, "wb") as f:
                f.write(bytes(4096))
            inner.clear()
            current[0] = path
            gc.set_threshold(1)
            Cycle()
            outer = S.MmapRaw.map_raw(path)
            gc.set_threshold(700)
            current[0] = None
            gc.collect()
            for m in inner:
                rounds += 1
                # the kernel's report of a failed write-back, as _msync records it
                outer._core._fail_write_back(OSError(errno.EIO, "Input/output error"))
                try:
                    m.flush()
                except anymmap.WriteBackError:
                    pass
                else:
                    raise AssertionError("the other map of the file flushed 'durable'")
                try:
                    m.close()
                except anymmap.WriteBackError:
                    pass
            try:
                outer.close()
            except anymmap.WriteBackError:
                pass
    finally:
        gc.set_threshold(700)
        current[0] = None
        for m in inner:
            try:
                m.close()
            except anymmap.WriteBackError:
                pass
        gc.collect()
        shutil.rmtree(tmp, ignore_errors=True)
    assert rounds >= 5, rounds
    print("ok")
"""


def test_a_finalizers_map_of_the_file_inside_its_record_look_up_shares_it() -> None:
    """Regression test (adversary round 56: 50 of 50 rounds): the look-up of a file's
    shared record and the store of a new one were Python code with an allocation in
    between, where a finalizer mapped the same file, found no record and stored its
    own, which the outer call then replaced: one map's failed write-back never reached
    the other, whose flushes said durable.  The two are one step now."""
    check_child(_A_FINALIZERS_MAP_OF_THE_FILE_INSIDE_ITS_RECORD_LOOK_UP, timeout=60)


_OUT_OF_DESCRIPTORS_AS_A_FILE_CHANGES_SIZE = """
    import errno, os, resource
    from anymmap import sync as S

    path = os.path.join(os.environ["ANYMMAP_CHILD_SHM"], "f")
    m = S.MmapRaw.create(path, 1 << 16, prefill="zeros")
    m.update_region(0, b"kept")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def is_open(fd):
        try:
            os.fstat(fd)
            return True
        except OSError:
            return False

    top = max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1
    filler = [os.open(os.devnull, os.O_RDONLY) for fd in range(top) if not is_open(fd)]
    resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))  # not one descriptor left
    for size in (1 << 20, 4096):  # a growth, a cut
        try:
            m.resize(size)
        except OSError as exc:
            assert exc.errno == errno.EMFILE, exc
        else:
            raise AssertionError(f"resized to {size} without a turn on the file's size")
        assert len(m) == os.path.getsize(path) == 1 << 16  # nothing changed
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    for fd in filler:
        os.close(fd)
    m.resize(1 << 20)
    assert os.path.getsize(path) == 1 << 20 and m.read(0, 4) == b"kept"
    m.close()
    print("ok")
"""


def test_a_growth_or_cut_out_of_descriptors_raises_and_changes_nothing() -> None:
    """Regression test (adversary round 59): with no descriptor left, a resize could not
    open the file for its turn on the file's size, and went on without it (and without
    ``prefill="zeros"``): the turn is what keeps another map's failing growth, or a
    shrink, from cutting this growth away.  It raises ``EMFILE`` now, as the
    constructors do, with the map and the file unchanged."""
    check_child(_OUT_OF_DESCRIPTORS_AS_A_FILE_CHANGES_SIZE, timeout=60)


_OUT_OF_DESCRIPTORS_ERRORS_NAME_THE_CALLERS_FILE = """
    import errno, os, resource
    from anymmap import sync as S

    here = os.environ["ANYMMAP_CHILD_SHM"]
    old = os.path.join(here, "old")
    with open(old, "wb") as f:
        f.write(b"x" * 4096)
    m = S.MmapRaw.map_raw(old)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    calls = {
        "create": lambda k: S.MmapRaw.create(os.path.join(here, f"new{k}"), 4096).close(),
        "open_or_create": lambda k: S.MmapRaw.open_or_create(old, 8192 << k).close(),
        "resize": lambda k: m.resize(16384 << k),
        "open_or_create, grown already": lambda k: S.MmapRaw.open_or_create(old, 4096).close(),
    }
    failed = set()
    for free in range(4):
        for name, call in calls.items():
            filler = []
            try:
                while True:
                    filler.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                pass
            for _ in range(free):
                os.close(filler.pop())
            try:
                call(free)
            except OSError as exc:
                assert exc.errno == errno.EMFILE, (name, free, exc)
                assert exc.filename in (None, old, os.path.join(here, f"new{free}")), (
                    name, free, exc)
                # Named after the caller's file, or saying what the descriptor was for.
                assert exc.filename or exc.strerror.endswith(")"), (name, free, exc)
                failed.add(name)
            finally:
                for fd in filler:
                    os.close(fd)
    assert failed == set(calls), failed  # (each ran out somewhere)
    m.close()
    print("ok")
"""


def test_out_of_descriptors_errors_never_name_an_internal_path() -> None:
    """Regression test (adversary round 61): out of descriptors, ``create``,
    ``open_or_create`` and ``resize`` raised ``EMFILE`` named after a path of anymmap's
    own (``/proc/self/fd/255``, ``/proc/self/fd``: the descriptors it opens to name a new
    file and to take its turn on a file's size), which the caller never passed.  The
    error names the caller's file, or none."""
    check_child(_OUT_OF_DESCRIPTORS_ERRORS_NAME_THE_CALLERS_FILE, timeout=60)


_A_COMMITTER_THAT_DIES = """
    import copy, os, sys, threading, types
    import anyio
    import anymmap
    from anymmap import sync as S
    from anymmap._core import _commit

    how = sys.argv[1]
    path = os.path.join(os.environ["ANYMMAP_CHILD_SHM"], "f")
    with open(path, "wb") as f:
        f.write(bytes(1 << 16))
    real, died = _commit._clusters, []
    threading.excepthook = lambda args: died.append(args.exc_type)

    def no_copy(exc):  # (round 60: the dying committer's own clean-up runs out too)
        raise MemoryError

    def dying(batch):  # the committer's own bookkeeping fails, once
        _commit._clusters = real
        raise MemoryError

    def kill_the_committer(copy_fails):
        _commit._clusters = dying
        _commit.copy = types.SimpleNamespace(copy=no_copy) if copy_fails else copy
        return AssertionError("the flush the committer died serving succeeded")

    if how == "sync":
        with S.MmapRaw.map_raw(path) as m:
            for copy_fails in (False, True):
                m.update_region(0, b"x")
                failed = kill_the_committer(copy_fails)
                try:
                    m.flush()
                except MemoryError:
                    pass
                else:
                    raise failed
                m.update_region(0, b"y")
                m.flush()  # (waited for ever: the committer's place was taken by a dead thread)
                assert m.pending_bytes() == 0
    else:
        async def main():
            async with await anymmap.MmapRaw.map_raw(path) as m:
                for copy_fails in (False, True):
                    await m.update_region(0, b"x")
                    failed = kill_the_committer(copy_fails)
                    try:
                        await m.flush()
                    except MemoryError:
                        pass
                    else:
                        raise failed
                    await m.update_region(0, b"y")
                    await m.flush()
                    assert m.pending_bytes() == 0
        anyio.run(main, backend=how)
    assert died == [MemoryError, MemoryError], died
    with open(path, "rb") as f:
        assert f.read(1) == b"y"
    print("ok")
"""


@pytest.mark.parametrize("how", ["sync", "asyncio", "trio"])
def test_a_committer_that_dies_fails_its_requests_and_gives_its_place_up(how: str) -> None:
    """Regression test (adversary round 59: a failed allocation, injected): an exception
    that ended the group-commit thread left the committer's place taken by a thread that
    was gone, and every flush of the map, the one it was serving included, waited for
    ever.  Its requests now get the exception, and the next flush starts a committer.
    (The same round found a failed allocation in ``submit`` between taking the place and
    the ``try`` that gives it back; the allocation comes first now.)  And when copying
    the exception for each request fails too, the requests still get it (round 60: they
    were never woken)."""
    check_child(_A_COMMITTER_THAT_DIES, how, timeout=30)


_GROWS_UNTIL_STOPPED = """
import sys, anymmap.sync as S
m = S.MmapRaw.map_raw(sys.argv[1], prefill="zeros")
print("growing", flush=True)
m.resize(8 << 30)  # (stopped long before it is done)
"""


def _stopped_mid_growth(path: Path) -> subprocess.Popen[str]:
    """A process that grows the file ``path`` (a map of anymmap's, zeros written), stopped
    (``SIGSTOP``) as the file has begun to grow: it holds the file's growth turn."""
    size = path.stat().st_size
    holder = subprocess.Popen(
        [sys.executable, "-c", _GROWS_UNTIL_STOPPED, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "growing\n"
        deadline = time.monotonic() + 30
        while path.stat().st_size == size and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(holder.pid, signal.SIGSTOP)
        while time.monotonic() < deadline:
            with open(f"/proc/{holder.pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "T":  # (stopped)
                    return holder
            time.sleep(0.001)
        raise AssertionError("the growing process did not stop")
    except BaseException:
        _end(holder)
        raise


def _end(process: subprocess.Popen[str]) -> None:
    process.kill()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


@pytest.mark.anyio
async def test_a_cancelled_call_waiting_for_another_growth_of_its_file_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression test (adversary round 69, every run on asyncio and trio): a call that
    waits for its turn to change or read the size of a file another process is growing
    (``map_raw``, ``open_or_create`` of the file, ``resize``; round 70: a region's
    ``attach`` and ``check_and_remap``; round 72: a region's ``resize``, which takes a
    turn since round 71) waited out the turn's whole
    patience (30 s with the holder stopped) under a 50 ms deadline.  The wait is a stop
    point now: each call ends well before the patience runs out (the control: the same
    wait, not cancelled, in this test; the patience shortened to 2 s), and has done
    nothing."""
    import anymmap._sys._linux

    monkeypatch.setattr(anymmap._sys._linux, "_GROWTH_LOCK_PATIENCE", 2.0)
    path = tmp_path / "f"
    path.write_bytes(b"a" * PAGE)
    async with (
        await anymmap.MmapRaw.map_raw(path) as resized,
        await anymmap.MmapRegion.attach(path) as follower,
    ):
        holder = _stopped_mid_growth(path)
        try:
            size = path.stat().st_size
            started = time.perf_counter()
            await (await anymmap.MmapRaw.map_raw(path, mode="r")).aclose()  # after the patience
            control = time.perf_counter() - started

            calls: list[Callable[[], Any]] = [
                lambda: anymmap.MmapRaw.map_raw(path),
                lambda: anymmap.MmapRaw.open_or_create(path, size + (64 << 20)),
                lambda: resized.resize(2 * PAGE),
                lambda: anymmap.MmapRegion.attach(path),  # (round 70)
                follower.check_and_remap,
                lambda: follower.resize(2 * PAGE),  # (round 72)
            ]
            for call in calls:
                started = time.perf_counter()
                got = None
                with anyio.move_on_after(0.05) as scope:
                    got = await call()
                took = time.perf_counter() - started
                if isinstance(got, (anymmap.MmapRaw, anymmap.MmapRegion)):  # (done: the
                    await got.aclose()  # code before, after the patience)
                assert scope.cancelled_caught
                assert took < control / 4, (took, control)
            assert (len(resized), len(follower), path.stat().st_size) == (PAGE, PAGE, size)
        finally:
            _end(holder)


def test_an_undoing_waits_for_its_turn_even_in_a_stopped_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression test (found in review of round 69's fix): with the wait for a turn a
    stop point, the undoing of a cut (a shrink whose remap failed) in a call whose
    async caller was cancelled stopped at its own wait when another process held the
    turn, and the file stayed cut under a map that reaches past it.  An undoing's wait
    is no stop point: it waits (here the patience, shortened) and undoes; a growth's
    wait in the same stopped call does stop."""
    from functools import partial

    import anymmap._sys._linux
    from anymmap._core._file import fill_file, uncut_file
    from anymmap._stopping import StopRequested, run_stoppable

    def stopped() -> None:
        raise StopRequested

    def alone(cut: Callable[[], None]) -> bool:
        cut()
        return True

    monkeypatch.setattr(anymmap._sys._linux, "_GROWTH_LOCK_PATIENCE", 0.5)
    path = tmp_path / "f"
    path.write_bytes(b"a" * PAGE)
    holder = _stopped_mid_growth(path)
    try:
        size = path.stat().st_size
        fd = os.open(path, os.O_RDWR)
        try:
            grow = partial(fill_file, fd, size, PAGE, "allocate", own=False, alone=alone)
            with pytest.raises(StopRequested):
                run_stoppable(stopped, grow)
            assert path.stat().st_size == size
            run_stoppable(
                stopped, partial(uncut_file, fd, size, size + PAGE, own=False, alone=alone)
            )
        finally:
            os.close(fd)
        assert path.stat().st_size == size + PAGE
    finally:
        _end(holder)


_A_MAP_MADE_DURING_A_FAILED_GROWTH = """
import os, threading
import anymmap
from anymmap.sync import AnonymousMmap, MmapOptions, MmapRaw

MiB = 1 << 20
path = os.path.join(os.environ["ANYMMAP_CHILD_SHM"], "f")
MmapRaw.create(path, MiB).close()
fd = os.open(path, os.O_RDWR)
for attempt in range(20):
    # A strict map whose growth cannot be followed: a neighbour lies 2 MiB on.
    probe = AnonymousMmap.new(8 * MiB)
    addr = probe.as_ptr()
    probe.close()
    m = MmapOptions().with_hint(addr).strict(True).map_raw(path, prefill="zeros")
    neighbour = MmapOptions().len(MiB).with_hint(addr + 2 * MiB).strict(True).map_anon()
    kept, stop = [], threading.Event()

    def mapper():  # another thread maps the file by descriptor (no turn) as it grows
        while not stop.is_set() and not kept:
            other = MmapRaw.map_raw(fd)
            if len(other) > MiB:
                kept.append(other)
            else:
                other.close()

    thread = threading.Thread(target=mapper)
    thread.start()
    try:
        m.resize(64 * MiB)
    except anymmap.HintNotHonoredError:
        pass
    stop.set()
    thread.join()
    assert len(m) == MiB
    if kept:
        other = kept[0]
        assert os.stat(path).st_size >= len(other)  # the growth stayed under it
        with other.as_slice(len(other) - 16, 16) as view:
            assert bytes(view) == bytes(16)  # (a SIGBUS before)
        break
    for each in (m, neighbour):
        each.close()
    os.ftruncate(fd, MiB)
else:
    raise AssertionError("the other thread never mapped the file mid-growth")
print("ok")
"""


def test_a_failed_growth_is_not_cut_under_a_map_made_meanwhile() -> None:
    """Regression test (adversary round 70, 4 of 4 runs; new for a failed remap in round
    69's fix, older for a cancelled growth): the undoing of a growth cut the file back
    even though another map of it in this process had been made meanwhile by descriptor
    (which takes no turn) and reached into the growth: its borrow died of SIGBUS.  The
    undoing cuts only if no other mapping of the file in the process is open or being
    made (as a shrink does); else the zeros stay."""
    check_child(_A_MAP_MADE_DURING_A_FAILED_GROWTH, timeout=60)


_A_REGION_GROWN_DURING_ANOTHER_PROCESS_S_FAILED_GROWTH = """
import os, subprocess, sys, time
from anymmap.sync import MmapRaw, MmapRegion

MiB = 1 << 20
path = os.path.join(os.environ["ANYMMAP_CHILD_SHM"], "f")
MmapRaw.create(path, MiB, mode=0o600).close()
# The other process: growths that fail (a strict map's neighbour), one after another.
other = subprocess.Popen([sys.executable, "-c", '''
import sys, anymmap
from anymmap.sync import AnonymousMmap, MmapOptions
MiB = 1 << 20
for _ in range(200):
    probe = AnonymousMmap.new(1 << 30)
    addr = probe.as_ptr()
    probe.close()
    try:
        m = MmapOptions().with_hint(addr).strict(True).map_raw(sys.argv[1], prefill="zeros")
    except anymmap.HintNotHonoredError:
        continue
    after = addr + (len(m) + 2 * MiB) // MiB * MiB  # (a neighbour past its pages)
    try:
        nb = MmapOptions().len(MiB).with_hint(after).strict(True).map_anon()
    except anymmap.HintNotHonoredError:
        m.close()
        continue
    try:
        m.resize(256 * MiB)
    except anymmap.HintNotHonoredError:
        print("failed", flush=True)
    m.close()
    nb.close()
''', path], stdout=subprocess.PIPE, text=True)
region = MmapRegion.attach(path, max_size=512 * MiB)
deadline = time.monotonic() + 30
while (size := os.stat(path).st_size) <= 8 * MiB:  # a growth under way
    assert time.monotonic() < deadline
region.resize(size & ~4095)
assert other.stdout.readline() == "failed\\n"  # (the one under way, or the next)
assert other.stdout.readline() == "failed\\n"
other.kill()
other.wait()
assert os.stat(path).st_size >= len(region), (os.stat(path).st_size, len(region))
with region.as_slice(len(region) - 16, 16) as view:
    assert bytes(view) == bytes(16)  # (a SIGBUS before)
region.close()
print("ok")
"""


def test_a_region_grown_during_another_process_s_failed_growth_keeps_its_file() -> None:
    """Regression test (adversary round 71, 5 of 5 runs, SIGBUS): a region's ``resize``
    took no turn, so a region grown to the size another process's map had reached
    during a growth that then failed was cut under when that growth was undone.  It
    takes its turn now: it waits for the growth and its undoing, then grows the file
    itself."""
    check_child(_A_REGION_GROWN_DURING_ANOTHER_PROCESS_S_FAILED_GROWTH, timeout=60)


@pytest.mark.anyio
async def test_nowait_calls_convert_their_arguments_before_looking_at_the_lock() -> None:
    """Regression test (adversary round 73): the ``*_nowait`` copies and the atomics
    looked at the lock before converting their arguments, so an ``__index__`` that took
    the map's write lock got its copy through inside it, where the same call with a
    plain int raises ``RuntimeError`` (README, "Inside your own borrow")."""
    async with await anymmap.SparseMapping.new(PAGE) as m:  # (one with atomics)
        await m.alloc(0, PAGE)

        class TakesTheWriteLock:
            def __index__(self) -> int:
                m.lock.acquire_write_nowait()
                return 0

        def evil() -> Any:  # (an int to the type checker)
            return TakesTheWriteLock()

        calls: dict[str, Callable[[], object]] = {
            "read_into_nowait": lambda: m.read_into_nowait(evil(), bytearray(4)),
            "update_region_nowait": lambda: m.update_region_nowait(evil(), b"ab"),
            "atomic_load": lambda: m.atomic_load(evil(), 8),
            "atomic_store": lambda: m.atomic_store(evil(), 8, 1),
            "atomic_store's value": lambda: m.atomic_store(0, 8, evil()),
        }
        for name, call in calls.items():
            with pytest.raises(RuntimeError, match="this task"):
                call()
            assert m.lock.statistics().writer is not None, name  # (taken by __index__)
            m.lock.release_write()
        assert await m.read(0, 8) == bytes(8)  # nothing written
