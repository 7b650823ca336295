"""The blocking twins in anymmap.sync: same behaviour, plus thread safety."""

from __future__ import annotations

import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from anyio import WouldBlock
from hypothesis import given, settings
from hypothesis import strategies as st

import anymmap
from anymmap import BorrowError, ClosedMapError, OutOfBoundsError
from anymmap.sync import AnonymousMmap, MmapOptions, MmapRaw

from ._helpers import PAGE, TAG, TAG_AT, holds_tag, resident_fraction


def test_round_trip_and_context_manager() -> None:
    with AnonymousMmap.new(PAGE + 1) as m:
        assert len(m) == PAGE + 1
        m.update_region(PAGE - 2, b"abc")
        assert m.read(PAGE - 2, 3) == b"abc"
        buf = bytearray(3)
        m.read_into(PAGE - 2, buf)
        assert buf == b"abc"
        m.read_into_nowait(PAGE - 2, buf)
        m.update_region_nowait(0, b"z")
        with m.as_mut_slice(0, 2) as view:
            view[1:2] = b"y"
        with m.as_slice(0, 2) as view:
            assert bytes(view) == b"zy"
        assert repr(m).startswith("<anymmap.sync.AnonymousMmap len=")
    assert m.closed
    m.close()


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.read_into(-1, bytearray(1)),
        lambda m: m.read(PAGE, 1),
        lambda m: m.read(0, -1),
        lambda m: m.update_region(2**63 - 1, b"ab"),
        lambda m: m.read_into_nowait(PAGE + 1, bytearray()),
        lambda m: m.update_region_nowait(PAGE - 1, b"ab"),
        lambda m: m.as_slice(0, PAGE + 1).__enter__(),
        lambda m: m.as_mut_slice(-5, 1).__enter__(),
        lambda m: m.populate(1, PAGE),
        lambda m: m.advise(anymmap.Advice.NORMAL, PAGE + 1),
    ],
)
def test_bounds(call: Callable[[AnonymousMmap], object]) -> None:
    with AnonymousMmap.new(PAGE) as m:
        with pytest.raises(OutOfBoundsError):
            call(m)
        m.update_region(0, b"still fine")


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.read_into(0, bytearray(1)),
        lambda m: m.read(0, 1),
        lambda m: m.update_region(0, b"x"),
        lambda m: m.read_into_nowait(0, bytearray(1)),
        lambda m: m.update_region_nowait(0, b"x"),
        lambda m: m.as_slice(0, 1).__enter__(),
        lambda m: m.as_mut_slice(0, 1).__enter__(),
        lambda m: m.populate(),
        lambda m: m.advise(anymmap.Advice.NORMAL),
        lambda m: m.resize(2 * PAGE),
        lambda m: m.as_ptr(),
        len,
    ],
)
def test_closed(call: Callable[[AnonymousMmap], object]) -> None:
    m = AnonymousMmap.new(PAGE)
    m.close()
    with pytest.raises(ClosedMapError):
        call(m)


def test_direct_construction_is_refused() -> None:
    with pytest.raises(TypeError, match=r"use 'anymmap\.sync\.AnonymousMmap\.new\(size\)'"):
        AnonymousMmap(4096)


def test_escaped_array_blocks_close_and_unmaps_later() -> None:
    m = AnonymousMmap.new(PAGE)
    addr = m.as_ptr()
    m.update_region(TAG_AT, TAG)
    with pytest.raises(BorrowError), m.as_mut_slice(0, 4) as view:
        arr = np.frombuffer(view, dtype=np.uint8)
    with pytest.raises(BorrowError):
        m.close()
    arr[0] = 9
    assert m.read(0, 1) == b"\x09"
    del arr
    m.close()
    assert not holds_tag(addr)


def test_resize() -> None:
    with AnonymousMmap.new(PAGE) as m:
        m.update_region(0, b"data")
        m.resize(100 * PAGE)
        assert len(m) == 100 * PAGE
        assert m.read(0, 4) == b"data"
        assert m.read(99 * PAGE, PAGE) == bytes(PAGE)
        m.resize(2)
        assert m.read(0, 2) == b"da"


def test_populate_progress_in_the_calling_thread() -> None:
    calls: list[tuple[int, int, str]] = []
    with AnonymousMmap.new(20 << 20) as m:
        m.populate(
            write=True,
            progress=lambda d, t: calls.append((d, t, threading.current_thread().name)),
        )
        assert resident_fraction(m.as_ptr(), 20 << 20) == 1.0
    me = threading.current_thread().name
    assert calls == [(16 << 20, 20 << 20, me), (20 << 20, 20 << 20, me)]


def test_a_populate_whose_map_shrinks_under_it_names_the_callers_range() -> None:
    """Regression test (adversary round 58): a map shrunk between two chunks of a populate
    raised OutOfBoundsError naming the internal 16 MiB chunk, a range never passed."""
    with AnonymousMmap.new(48 << 20) as m:

        def shrink(done: int, total: int) -> None:
            m.resize(20 << 20)  # the next chunk, [16 MiB, 32 MiB), is no longer all there

        with pytest.raises(OutOfBoundsError, match=f"offset=0, length={48 << 20} is outside"):
            m.populate(progress=shrink)
        with pytest.raises(OutOfBoundsError, match=f"offset={PAGE}, length={32 << 20} is "):
            m.populate(PAGE, 32 << 20)  # (and before the first chunk, as ever)


def test_options_map_anon() -> None:
    with MmapOptions().len(3 * PAGE).populate(True).map_anon() as m:
        assert type(m) is AnonymousMmap
        assert resident_fraction(m.as_ptr(), 3 * PAGE) == 1.0


# --- threads ---------------------------------------------------------------------------

RECORD = 4096
RECORDS = 16


def test_eight_threads() -> None:
    """Writers fill whole records with one byte value, readers check they never see a
    mixed record, borrowers do the same through views, and a resizer grows the map."""
    m = AnonymousMmap.new(RECORD * RECORDS)
    stop = time.monotonic() + 1.5
    errors: list[BaseException] = []
    counts = dict.fromkeys(("write", "read", "borrow", "nowait", "resize"), 0)

    def uniform(data: bytes | bytearray | memoryview) -> bool:
        return bytes(data) == bytes(data[:1]) * len(data)

    def guard(fn: Callable[[random.Random], None]) -> Callable[[int], None]:
        def run(seed: int) -> None:
            rng = random.Random(seed)
            try:
                while time.monotonic() < stop:
                    fn(rng)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        return run

    @guard
    def writer(rng: random.Random) -> None:
        i = rng.randrange(RECORDS)
        m.update_region(i * RECORD, bytes([rng.randrange(256)]) * RECORD)
        counts["write"] += 1

    @guard
    def reader(rng: random.Random) -> None:
        i = rng.randrange(RECORDS)
        buf = bytearray(RECORD)
        m.read_into(i * RECORD, buf)
        assert uniform(buf), "torn record"
        counts["read"] += 1

    @guard
    def borrower(rng: random.Random) -> None:
        i = rng.randrange(RECORDS)
        if rng.random() < 0.5:
            with m.as_slice(i * RECORD, RECORD) as view:
                assert uniform(view)
        else:
            with m.as_mut_slice(i * RECORD, RECORD) as view:
                view[:] = bytes([rng.randrange(256)]) * RECORD
        counts["borrow"] += 1

    @guard
    def nowaiter(rng: random.Random) -> None:
        # (Counted whether it copied or raised WouldBlock: with seven threads queueing
        # for the lock in turn, it may never find it free and unclaimed.)
        buf = bytearray(RECORD)
        counts["nowait"] += 1
        try:
            m.read_into_nowait(rng.randrange(RECORDS) * RECORD, buf)
        except WouldBlock:
            return
        assert uniform(buf)

    @guard
    def resizer(rng: random.Random) -> None:
        m.resize(RECORD * RECORDS + rng.randrange(8) * PAGE)
        counts["resize"] += 1
        time.sleep(0.001)

    threads = [
        threading.Thread(target=fn, args=(seed,))
        for seed, fn in enumerate(
            [writer, writer, reader, reader, borrower, borrower, nowaiter, resizer]
        )
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    m.close()
    assert not errors, errors
    assert all(counts.values()), counts


def test_close_waits_for_another_threads_borrow() -> None:
    m = AnonymousMmap.new(PAGE)
    inside = threading.Event()
    leave = threading.Event()
    seen: list[bytes] = []

    def borrow() -> None:
        with m.as_slice(0, 4) as view:
            inside.set()
            leave.wait(5)
            seen.append(bytes(view))

    t = threading.Thread(target=borrow)
    t.start()
    inside.wait(5)
    closer = threading.Thread(target=m.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # blocked behind the borrow
    with pytest.raises(WouldBlock):
        m.update_region_nowait(0, b"x")
    leave.set()
    t.join(5)
    closer.join(5)
    assert m.closed
    assert seen == [bytes(4)]


def test_nested_reads_in_one_thread_do_not_deadlock_behind_a_writer() -> None:
    m = AnonymousMmap.new(PAGE)
    writer_done = threading.Event()

    def write() -> None:
        m.update_region(0, b"w")
        writer_done.set()

    with m.as_slice(0, 1):
        t = threading.Thread(target=write)
        t.start()
        deadline = time.monotonic() + 5
        while len(m._lock._queue) != 1:  # the writer has queued up
            assert time.monotonic() < deadline
            time.sleep(0)
        with m.as_slice(0, 1) as again:  # must not wait behind the queued writer
            assert bytes(again) == b"\0"
        assert not writer_done.is_set()
        with pytest.raises(RuntimeError):
            m.update_region(0, b"x")  # upgrading would deadlock: refused
    t.join(5)
    assert m.read(0, 1) == b"w"
    m.close()


@pytest.mark.parametrize("loop", ["resize", "update_region"])
@pytest.mark.parametrize("victim", ["update_region", "read"])
def test_a_thread_looping_on_the_lock_cannot_starve_a_waiting_one(
    tmp_path: Path, loop: str, victim: str
) -> None:
    """Regression test (adversary review): a thread that took the write lock in a loop
    (resizes, writes) kept it for as long as it looped: releasing woke the waiting
    thread, but the looping one, still holding the GIL, took the lock again first.  Now
    the lock is handed to the waiting thread in arrival order: the looping thread gets
    at most a turn or two more before the single waiting call has finished."""
    m = MmapRaw.create(tmp_path / "f", 2 << 20)
    queued = threading.Event()
    done = threading.Event()
    turns_after_queueing = []

    def looping() -> None:
        for n in range(20_000):
            if done.is_set():
                return
            if loop == "resize":
                m.resize((1 << 20) * (1 + n % 2))
            else:
                m.update_region(4096, b"y" * 64)
            if queued.is_set():
                turns_after_queueing.append(n)

    def waiting() -> None:
        if victim == "read":
            m.read(0, 1)
        else:
            m.update_region(0, b"x")
        done.set()

    looper = threading.Thread(target=looping)
    looper.start()
    waiter = threading.Thread(target=waiting)
    waiter.start()
    while not done.is_set() and not m._lock._queue:
        time.sleep(0)
    queued.set()
    waiter.join(30)
    looper.join(30)
    assert done.is_set()
    assert len(turns_after_queueing) <= 3, len(turns_after_queueing)
    m.close()


def test_an_exception_while_queued_for_the_lock_leaves_nothing_behind() -> None:
    """A signal handler that raises (Ctrl-C) while the main thread waits in the lock's
    queue: the waiter leaves the queue, and whoever comes next gets the lock."""
    m = AnonymousMmap.new(PAGE)
    holding, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with m.as_mut_slice(0, 1):
            holding.set()
            leave.wait(30)

    class Interrupted(Exception):
        pass

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(30)

    def read_until_interrupted() -> None:  # (the timer armed inside pytest.raises)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        m.read(0, 1)  # queued behind the holder until the signal

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with pytest.raises(Interrupted):
            read_until_interrupted()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not m._lock._queue
    leave.set()
    holder.join(30)
    assert m.read(0, 1) == b"\0"
    m.update_region(0, b"x")
    m.close()


def test_a_release_cut_short_by_an_exception_still_hands_the_lock_over() -> None:
    """Regression test (adversary review): a KeyboardInterrupt landing inside the lock's
    hand-over (after the release freed it, before the next waiter was granted) left the
    queued thread asleep for ever, and every later call queued behind it.  A trace
    function raises at the first line of the hand-over, deterministically; the waiter
    now notices within a moment and takes the lock."""
    m = AnonymousMmap.new(PAGE)
    lock = m._lock
    done = threading.Event()

    def write() -> None:
        m.update_region(0, b"w")
        done.set()

    def interrupt(frame: Any, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code.co_name == "_hand_over":
            raise KeyboardInterrupt
        return None

    def borrow_and_interrupt_its_release() -> None:
        with m.as_mut_slice(0, 1):
            writer.start()
            while not lock._queue:  # the writer is queued behind this borrow
                time.sleep(0.001)
            sys.settrace(interrupt)

    writer = threading.Thread(target=write)
    with pytest.raises(KeyboardInterrupt):
        borrow_and_interrupt_its_release()
    sys.settrace(None)
    assert lock._writer is None  # released, not handed over
    assert not lock._readers
    writer.join(30)
    assert done.is_set()
    assert m.read(0, 1) == b"w"
    m.close()


# --- a model check ---------------------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(-5, 3 * PAGE), st.binary(max_size=300)),
        st.tuples(st.just("read"), st.integers(-5, 3 * PAGE), st.integers(-2, 300)),
        st.tuples(st.just("resize"), st.integers(0, 3 * PAGE), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(size=st.integers(1, 2 * PAGE + 7), program=ops)
def test_behaves_like_a_bytearray(size: int, program: list[tuple[str, int, object]]) -> None:
    model = bytearray(size)
    with AnonymousMmap.new(size) as m:
        for op, offset, arg in program:
            if op == "write":
                assert isinstance(arg, bytes)
                ok = offset >= 0 and offset + len(arg) <= len(model)
                if ok:
                    m.update_region(offset, arg)
                    model[offset : offset + len(arg)] = arg
                else:
                    with pytest.raises(OutOfBoundsError):
                        m.update_region(offset, arg)
            elif op == "read":
                assert isinstance(arg, int)
                ok = offset >= 0 and arg >= 0 and offset + arg <= len(model)
                if ok:
                    assert m.read(offset, arg) == bytes(model[offset : offset + arg])
                else:
                    with pytest.raises(OutOfBoundsError):
                        m.read(offset, arg)
            elif offset == 0:
                with pytest.raises(anymmap.InvalidSizeError):
                    m.resize(offset)
            else:
                m.resize(offset)
                model = model[:offset] + bytearray(max(0, offset - len(model)))
            assert len(m) == len(model)
        assert m.read(0, len(model)) == bytes(model)


def test_progress_callback_may_close_the_map() -> None:
    """Regression test: progress ran while the map was pinned, so close() deadlocked."""
    m = AnonymousMmap.new(64 << 20)
    outcome: list[BaseException] = []

    def progress(done: int, total: int) -> None:
        if done >= 16 << 20:
            m.close()

    def run() -> None:
        try:
            m.populate(progress=progress)
        except ClosedMapError as exc:
            outcome.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "populate deadlocked"
    assert m.closed
    assert len(outcome) == 1


@pytest.mark.parametrize("writable", [False, True])
def test_a_sync_borrow_entered_twice_is_refused(writable: bool) -> None:
    """Regression test (adversary round 14): a sync borrow object could be entered twice
    (the async one refuses); the second entry took the place of the first, whose read
    lock was given back while its view was still live, so another thread could write
    under it."""
    with anymmap.sync.AnonymousMmap.new(1 << 16) as m:
        borrow = m.as_mut_slice(0, 16) if writable else m.as_slice(0, 16)
        with borrow as view:
            with pytest.raises(RuntimeError, match="entered already"), borrow:
                pass
            assert len(view) == 16
            assert m._lock._writer == threading.get_ident() or m._lock._readers
        assert not m._lock._readers
        assert m._lock._writer is None
        with pytest.raises(RuntimeError, match="entered already"), borrow:
            pass
        m.update_region(0, b"free")  # nothing held
