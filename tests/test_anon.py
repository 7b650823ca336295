from __future__ import annotations

import asyncio
import ctypes
import gc
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import numpy as np
import pytest
from anyio import WouldBlock, wait_all_tasks_blocked

import anymmap
from anymmap import (
    AnonymousMmap,
    BorrowError,
    ClosedMapError,
    InvalidSizeError,
    OutOfBoundsError,
)

from ._helpers import (
    PAGE,
    TAG,
    TAG_AT,
    assert_loop_keeps_running,
    holds_tag,
    resident_fraction,
    wait_until,
)
from .conftest import ASYNCIO_BACKENDS

pytestmark = pytest.mark.anyio

SIZE = 3 * PAGE + 123  # not a multiple of the page size on purpose


@pytest.fixture
async def amap() -> AsyncIterator[AnonymousMmap]:
    async with await AnonymousMmap.new(SIZE) as m:
        yield m


# --- the basics ------------------------------------------------------------------------


async def test_new_is_zeroed_and_round_trips(amap: AnonymousMmap) -> None:
    assert len(amap) == SIZE
    assert not amap.is_empty()
    assert await amap.read(0, SIZE) == bytes(SIZE)
    await amap.update_region(10, b"hello")
    buf = bytearray(5)
    await amap.read_into(10, buf)
    assert buf == b"hello"
    assert await amap.read(8, 9) == b"\0\0hello\0\0"
    assert repr(amap).startswith("<anymmap.AnonymousMmap len=")


async def test_both_context_manager_forms() -> None:
    m = await AnonymousMmap.new(PAGE)
    async with m:
        await m.update_region(0, b"x")
    assert m.closed
    async with await AnonymousMmap.new(PAGE) as m2:
        assert await m2.read(0, 1) == b"\0"
    assert m2.closed


async def test_accepts_any_contiguous_buffer(amap: AnonymousMmap) -> None:
    await amap.update_region(0, np.arange(4, dtype=np.uint32))
    out = np.zeros(4, dtype=np.uint32)
    await amap.read_into(0, out)
    assert out.tolist() == [0, 1, 2, 3]
    await amap.update_region(16, memoryview(b"abcd"))
    await amap.update_region(20, bytearray(b"efgh"))
    view = memoryview(bytearray(8))
    await amap.read_into(16, view)
    assert view.tobytes() == b"abcdefgh"


@pytest.mark.parametrize(
    ("call", "error"),
    [
        pytest.param(lambda m: m.read_into(0, b"read-only"), TypeError, id="read_into bytes"),
        pytest.param(lambda m: m.read_into(0, "text"), TypeError, id="read_into str"),
        pytest.param(
            lambda m: m.read_into(0, memoryview(bytearray(8))[::2]), TypeError, id="strided mv"
        ),
        pytest.param(lambda m: m.read_into("0", bytearray(1)), TypeError, id="offset str"),
        pytest.param(lambda m: m.read(1.5, 2), TypeError, id="offset float"),
        pytest.param(lambda m: m.read(0, None), TypeError, id="length None"),
        pytest.param(lambda m: m.update_region(0, 123), TypeError, id="data int"),
        pytest.param(lambda m: m.update_region(0, "text"), TypeError, id="data str"),
        pytest.param(lambda m: m.advise(99999), ValueError, id="unknown advice"),
        pytest.param(lambda m: m.advise("random"), TypeError, id="advice str"),
        pytest.param(lambda m: m.read(True, 1), TypeError, id="offset bool"),
        pytest.param(lambda m: m.resize(True), TypeError, id="size bool"),
        pytest.param(lambda m: m.populate(write="yes"), TypeError, id="write str"),
    ],
)
async def test_bad_arguments(
    amap: AnonymousMmap, call: Callable[[AnonymousMmap], Awaitable[None]], error: type
) -> None:
    with pytest.raises(error):
        await call(amap)
    assert await amap.read(0, 4) == bytes(4)  # still usable


# --- the bounds matrix -----------------------------------------------------------------

# (offset, length, valid) around the end of a SIZE-byte map
RANGES = [
    pytest.param(0, 0, True, id="empty-at-0"),
    pytest.param(SIZE, 0, True, id="empty-at-len"),
    pytest.param(SIZE - 1, 1, True, id="exact-end"),
    pytest.param(0, SIZE, True, id="whole"),
    pytest.param(SIZE, 1, False, id="end+1"),
    pytest.param(SIZE - 1, 2, False, id="straddle-end"),
    pytest.param(SIZE + 1, 0, False, id="empty-past-len"),
    pytest.param(0, SIZE + 1, False, id="too-long"),
    pytest.param(-1, 1, False, id="negative-offset"),
    pytest.param(-(2**63), 1, False, id="huge-negative-offset"),
    pytest.param(2**63 - 1, 2, False, id="overflow-2**63"),
    pytest.param(2**64 + 5, 0, False, id="offset-2**64"),
]

Op = Callable[[AnonymousMmap, int, int], Awaitable[Any]]


async def _borrow(m: AnonymousMmap, offset: int, length: int, mutable: bool) -> None:
    cm = m.as_mut_slice(offset, length) if mutable else m.as_slice(offset, length)
    async with cm as view:
        assert len(view) == length


async def _sync_op(fn: Callable[[], object]) -> None:
    fn()


BUFFER_OPS: dict[str, Op] = {
    "read_into": lambda m, o, n: m.read_into(o, bytearray(n)),
    "update_region": lambda m, o, n: m.update_region(o, bytes(n)),
    "read_into_nowait": lambda m, o, n: _sync_op(lambda: m.read_into_nowait(o, bytearray(n))),
    "update_region_nowait": lambda m, o, n: _sync_op(lambda: m.update_region_nowait(o, bytes(n))),
}
LENGTH_OPS: dict[str, Op] = {
    "read": lambda m, o, n: m.read(o, n),
    "as_slice": lambda m, o, n: _borrow(m, o, n, mutable=False),
    "as_mut_slice": lambda m, o, n: _borrow(m, o, n, mutable=True),
    "populate": lambda m, o, n: m.populate(o, n),
    "advise": lambda m, o, n: m.advise(anymmap.Advice.NORMAL, o, n),
}


@pytest.mark.parametrize("op_name", [*BUFFER_OPS, *LENGTH_OPS])
@pytest.mark.parametrize(("offset", "length", "valid"), RANGES)
async def test_bounds_matrix(
    amap: AnonymousMmap, op_name: str, offset: int, length: int, valid: bool
) -> None:
    op = BUFFER_OPS.get(op_name) or LENGTH_OPS[op_name]
    if op_name in BUFFER_OPS and length > SIZE + 1:
        pytest.skip("would allocate a huge buffer")
    if valid:
        await op(amap, offset, length)
    else:
        with pytest.raises(OutOfBoundsError) as info:
            await op(amap, offset, length)
        assert isinstance(info.value, IndexError)
        assert (info.value.offset, info.value.length, info.value.total) == (offset, length, SIZE)
        assert f"offset={offset}" in str(info.value)
    # the map and its lock are untouched either way
    assert amap.lock.statistics() == anymmap.RWLockStatistics(0, None, 0, 0)
    await amap.update_region(SIZE - 1, b"!")
    assert await amap.read(SIZE - 1, 1) == b"!"


@pytest.mark.parametrize("name", list(LENGTH_OPS))
async def test_negative_length(amap: AnonymousMmap, name: str) -> None:
    with pytest.raises(OutOfBoundsError):
        await LENGTH_OPS[name](amap, 0, -1)


async def test_zero_length_is_a_no_op(amap: AnonymousMmap) -> None:
    await amap.update_region(SIZE, b"")
    assert await amap.read(SIZE, 0) == b""
    await amap.read_into(0, bytearray())
    amap.read_into_nowait(SIZE, bytearray())


# --- sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, -1, 2**47 + 1, 2**64])
async def test_bad_sizes(size: int) -> None:
    with pytest.raises(InvalidSizeError) as info:
        await AnonymousMmap.new(size)
    assert isinstance(info.value, ValueError)
    async with await AnonymousMmap.new(1) as m:
        with pytest.raises(InvalidSizeError):
            await m.resize(size)
        assert len(m) == 1


async def test_size_type() -> None:
    with pytest.raises(TypeError):
        await AnonymousMmap.new("4096")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await AnonymousMmap.new(4096.0)  # type: ignore[arg-type]


async def test_128_tib_is_the_limit_not_an_error_of_ours() -> None:
    # Exactly 128 TiB passes our check; the kernel then refuses (or grants) it.
    try:
        m = await AnonymousMmap.new(2**47)
    except anymmap.AnymmapError:  # pragma: no cover - the failure this test looks for
        pytest.fail("128 TiB was refused by anymmap's own size check")
    except OSError:
        pass  # ENOMEM from the kernel is fine
    else:
        await m.aclose()


# --- closed maps -----------------------------------------------------------------------

CLOSED_CALLS: dict[str, Callable[[AnonymousMmap], Awaitable[object]]] = {
    "read_into": lambda m: m.read_into(0, bytearray(1)),
    "read": lambda m: m.read(0, 1),
    "update_region": lambda m: m.update_region(0, b"x"),
    "read_into_nowait": lambda m: _sync_op(lambda: m.read_into_nowait(0, bytearray(1))),
    "update_region_nowait": lambda m: _sync_op(lambda: m.update_region_nowait(0, b"x")),
    "as_slice": lambda m: _borrow(m, 0, 1, mutable=False),
    "as_mut_slice": lambda m: _borrow(m, 0, 1, mutable=True),
    "populate": lambda m: m.populate(),
    "advise": lambda m: m.advise(anymmap.Advice.RANDOM),
    "resize": lambda m: m.resize(2 * PAGE),
    "as_ptr": lambda m: _sync_op(m.as_ptr),
    "len": lambda m: _sync_op(lambda: len(m)),
    "is_empty": lambda m: _sync_op(m.is_empty),
}


@pytest.mark.parametrize("name", list(CLOSED_CALLS))
async def test_closed_map(name: str) -> None:
    m = await AnonymousMmap.new(PAGE)
    addr = m.as_ptr()
    m.update_region_nowait(TAG_AT, TAG)
    await m.aclose()
    assert m.closed
    assert "closed" in repr(m)
    assert not holds_tag(addr)
    with pytest.raises(ClosedMapError, match="closed"):
        await CLOSED_CALLS[name](m)
    await m.aclose()  # twice is fine


async def test_close_waits_for_a_borrow() -> None:
    m = await AnonymousMmap.new(PAGE)
    closed = anyio.Event()

    async def closer() -> None:
        await m.aclose()
        closed.set()

    async with anyio.create_task_group() as tg:
        async with m.as_slice(0, 10) as view:
            tg.start_soon(closer)
            await wait_all_tasks_blocked()
            assert not closed.is_set()
            assert bytes(view) == bytes(10)  # still mapped
        await closed.wait()
    assert m.closed


@pytest.mark.parametrize("writable", [False, True])
async def test_a_borrow_entered_twice_is_refused_and_leaks_nothing(
    amap: AnonymousMmap, writable: bool
) -> None:
    """Regression test (adversary review): entering one ``as_slice()`` object twice
    overwrote the first entry's lock guard, and the lock stayed held for ever."""
    borrow = amap.as_mut_slice(0, 16) if writable else amap.as_slice(0, 16)
    async with borrow:
        with pytest.raises(RuntimeError, match="entered already"):
            async with borrow:
                pass
    stats = amap.lock.statistics()
    assert (stats.readers, stats.writer) == (0, None)
    with pytest.raises(RuntimeError, match="entered already"):
        async with borrow:
            pass
    await amap.update_region(0, b"free")  # nothing held


@pytest.mark.parametrize("writable", [False, True])
async def test_a_borrow_exited_twice_or_never_entered_says_so(
    amap: AnonymousMmap, writable: bool
) -> None:
    """Regression test (adversary review): ``__aexit__`` on a borrow that was never
    entered, or that ended already, raised a bare ``AttributeError``; it is the same
    ``RuntimeError`` as a second entry, and releases nothing it does not hold."""
    borrow = amap.as_mut_slice(0, 16) if writable else amap.as_slice(0, 16)
    with pytest.raises(RuntimeError, match="not active"):
        await borrow.__aexit__(None, None, None)
    async with borrow:
        pass
    with pytest.raises(RuntimeError, match="not active"):
        await borrow.__aexit__(None, None, None)
    async with amap.as_slice(0, 16):  # another reader: a stray exit must not release it
        with pytest.raises(RuntimeError, match="not active"):
            await borrow.__aexit__(None, None, None)
        assert amap.lock.statistics().readers == 1
    stats = amap.lock.statistics()
    assert (stats.readers, stats.writer) == (0, None)


async def test_close_from_inside_a_borrow_is_refused(amap: AnonymousMmap) -> None:
    async with amap.as_slice(0, 1):
        with pytest.raises(RuntimeError, match="borrows it"):
            await amap.aclose()
        with pytest.raises(RuntimeError, match="borrows it"):
            await amap.resize(PAGE)
    assert not amap.closed


# --- borrows ---------------------------------------------------------------------------


async def test_view_after_its_block_raises(amap: AnonymousMmap) -> None:
    async with amap.as_mut_slice(0, 8) as view:
        view[:] = b"12345678"
        kept = view
    with pytest.raises(ValueError, match="released"):
        kept[0]
    with pytest.raises(ValueError, match="released"):
        bytes(kept)
    async with amap.as_slice(0, 8) as ro:
        assert ro.readonly
        assert bytes(ro) == b"12345678"
        with pytest.raises(TypeError):
            ro[0] = 1


async def test_numpy_borrow_is_zero_copy_and_refused_after(amap: AnonymousMmap) -> None:
    async with amap.as_mut_slice(0, 16) as view:
        arr = np.frombuffer(view, dtype=np.uint8)
        assert not arr.flags.owndata
        arr[:4] = [1, 2, 3, 4]  # writes straight into the map
        assert arr.ctypes.data == amap.as_ptr()
        del arr
    assert await amap.read(0, 4) == b"\x01\x02\x03\x04"
    with pytest.raises(ValueError, match="released"):
        np.frombuffer(view, dtype=np.uint8)


async def test_escaped_export_is_reported_and_keeps_memory_mapped() -> None:
    m = await AnonymousMmap.new(PAGE)
    with pytest.raises(BorrowError, match="still alive"):
        async with m.as_mut_slice(0, 16) as view:
            arr = np.frombuffer(view, dtype=np.uint8)
    assert m.lock.statistics().readers == 0  # the lock was released anyway
    with pytest.raises(BorrowError):
        await m.aclose()
    with pytest.raises(BorrowError):
        await m.resize(2 * PAGE)
    arr[0] = 7  # the memory is still mapped
    assert await m.read(0, 1) == b"\x07"
    del arr
    await m.aclose()
    assert m.closed


async def test_escaped_slice_is_reported() -> None:
    m = await AnonymousMmap.new(PAGE)
    with pytest.raises(BorrowError):
        async with m.as_slice(0, 16) as view:
            head = view[:4]
    assert bytes(head) == bytes(4)
    del head
    await m.aclose()


async def test_resize_waits_for_a_borrow_then_succeeds(amap: AnonymousMmap) -> None:
    done = anyio.Event()

    async def grow() -> None:
        await amap.resize(8 * PAGE)
        done.set()

    await amap.update_region(0, b"keep me")
    async with anyio.create_task_group() as tg:
        async with amap.as_slice(0, 7) as view:
            tg.start_soon(grow)
            await wait_all_tasks_blocked()
            assert not done.is_set()
            assert len(amap) == SIZE
            assert bytes(view) == b"keep me"
        await done.wait()
    assert len(amap) == 8 * PAGE
    assert await amap.read(0, 7) == b"keep me"
    assert await amap.read(SIZE, 8 * PAGE - SIZE) == bytes(8 * PAGE - SIZE)


async def test_resize_keeps_data_and_zeroes_new_bytes(amap: AnonymousMmap) -> None:
    await amap.update_region(0, b"A" * SIZE)
    await amap.resize(100)
    assert len(amap) == 100
    assert await amap.read(0, 100) == b"A" * 100
    await amap.resize(SIZE)  # bytes between 100 and the page end were zeroed on shrink
    assert await amap.read(0, SIZE) == b"A" * 100 + bytes(SIZE - 100)
    big = 64 * 1024 * PAGE  # 256 MiB with 4 KiB pages: moves the map
    await amap.resize(big)
    assert await amap.read(0, 100) == b"A" * 100
    assert await amap.read(big - 10, 10) == bytes(10)


async def test_nowait_raises_while_a_writer_holds(amap: AnonymousMmap) -> None:
    entered = anyio.Event()
    leave = anyio.Event()

    async def writer() -> None:
        async with amap.as_mut_slice(0, 4) as view:
            view[:] = b"busy"
            entered.set()
            await leave.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        await entered.wait()
        with pytest.raises(WouldBlock):
            amap.read_into_nowait(0, bytearray(4))
        with pytest.raises(WouldBlock):
            amap.update_region_nowait(0, b"x")
        leave.set()
    buf = bytearray(4)
    amap.read_into_nowait(0, buf)
    assert buf == b"busy"


async def test_update_nowait_raises_while_a_reader_holds(amap: AnonymousMmap) -> None:
    async def borrow(task_status: anyio.abc.TaskStatus[None]) -> None:
        async with amap.as_slice(0, 4):
            task_status.started()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        await tg.start(borrow)
        buf = bytearray(4)
        amap.read_into_nowait(0, buf)  # readers share
        with pytest.raises(WouldBlock, match="borrowed or being written by another task"):
            amap.update_region_nowait(0, b"x")
        tg.cancel_scope.cancel()
    async with amap.as_slice(0, 4):  # in this task's own borrow, waiting cannot help
        with pytest.raises(RuntimeError):
            amap.update_region_nowait(0, b"x")


# --- worker-thread copies and cancellation -----------------------------------------------

BIG = 8 << 20  # above INLINE_COPY_LIMIT: copied in a worker thread


async def test_large_copies_round_trip() -> None:
    assert anymmap.INLINE_COPY_LIMIT < BIG
    payload = np.random.default_rng(7).integers(0, 256, BIG, dtype=np.uint8)
    async with await AnonymousMmap.new(BIG + PAGE) as m:
        await m.update_region(PAGE, payload)
        out = np.empty_like(payload)
        await m.read_into(PAGE, out)
        assert np.array_equal(out, payload)
        data = await m.read(PAGE, BIG)
        assert data == payload.tobytes()
        m.read_into_nowait(PAGE, out)  # nowait copies any size at once


async def test_cancelled_copy_waits_for_its_thread() -> None:
    """Cancellation while a big copy runs in a worker: the copy finishes, then Cancelled."""
    payload = b"\xab" * (64 << 20)
    async with await AnonymousMmap.new(len(payload)) as m:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(m.update_region, 0, payload)
                await wait_until(lambda: m.lock.statistics().writer is not None)
                scope.cancel()  # the copy is in (or about to enter) its worker thread
        assert scope.cancelled_caught
        assert m.lock.statistics() == anymmap.RWLockStatistics(0, None, 0, 0)
        # Either the copy had not started or it completed; it never stops halfway.
        tail = await m.read(len(payload) - 4, 4)
        head = await m.read(0, 4)
        assert head == tail


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_native_cancel_of_a_worker_copy_waits_for_it() -> None:
    import asyncio

    payload = b"\xcd" * (64 << 20)
    async with await AnonymousMmap.new(len(payload)) as m:
        task = asyncio.ensure_future(m.update_region(0, payload))
        first_byte = ctypes.c_char.from_address(m.as_ptr())
        await wait_until(lambda: first_byte.value == b"\xcd")  # the worker is copying
        task.cancel()
        task.cancel()  # twice, as a nervous caller would
        with pytest.raises(asyncio.CancelledError):
            await task
        # The worker had finished before the task gave up: the whole copy is there.
        assert await m.read(len(payload) - 1, 1) == b"\xcd"
        assert m.lock.statistics() == anymmap.RWLockStatistics(0, None, 0, 0)


async def test_aclose_under_cancellation_still_closes() -> None:
    m = await AnonymousMmap.new(64 << 20)
    await m.populate(write=True)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await m.aclose()
    assert scope.cancelled_caught
    assert m.closed


# --- populate, advise, options ---------------------------------------------------------


async def test_populate_reports_progress_and_pages_become_resident() -> None:
    size = 40 << 20  # three 16 MiB chunks
    calls: list[tuple[int, int]] = []
    async with await AnonymousMmap.new(size) as m:
        assert resident_fraction(m.as_ptr(), size) < 0.1
        await m.populate(write=True, progress=lambda done, total: calls.append((done, total)))
        assert resident_fraction(m.as_ptr(), size) == 1.0
    assert calls == [(16 << 20, size), (32 << 20, size), (size, size)]


async def test_populate_part_of_the_map() -> None:
    async with await AnonymousMmap.new(64 * PAGE) as m:
        await m.populate(10 * PAGE + 5, 3 * PAGE)
        assert resident_fraction(m.as_ptr() + 10 * PAGE, 4 * PAGE) == 1.0
        assert resident_fraction(m.as_ptr() + 20 * PAGE, 40 * PAGE) == 0.0


async def test_progress_callback_error_propagates() -> None:
    def boom(done: int, total: int) -> None:
        raise RuntimeError("stop")

    async with await AnonymousMmap.new(PAGE) as m:
        with pytest.raises(RuntimeError, match="stop"):
            await m.populate(progress=boom)
        await m.update_region(0, b"ok")


async def test_a_cancelled_populate_stops_after_the_chunk_in_progress() -> None:
    """Regression test (adversary round 53): the whole range was one worker call, which
    is never abandoned, so a deadline around a populate of 1 GiB waited for all of it.
    Cancelled as its first chunk is reported, it now faults in no other chunk."""
    size = 160 << 20  # ten 16 MiB chunks
    calls: list[int] = []
    async with await AnonymousMmap.new(size) as m:
        with anyio.CancelScope() as scope:

            def progress(done: int, total: int) -> None:
                calls.append(done)
                scope.cancel()

            await m.populate(write=True, progress=progress)
        assert scope.cancelled_caught
        assert calls == [16 << 20]  # (every chunk's, before)
        assert resident_fraction(m.as_ptr(), 16 << 20) == 1.0
        assert resident_fraction(m.as_ptr() + (16 << 20), size - (16 << 20)) < 0.1
        assert m.lock.statistics().writer is None
        await m.populate(32 << 20, 16 << 20)  # the map is whole: it goes on
        assert resident_fraction(m.as_ptr() + (32 << 20), 16 << 20) == 1.0


@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS)
async def test_a_natively_cancelled_populate_stops_after_the_chunk_in_progress() -> None:
    """The same with asyncio's own ``task.cancel()`` (``asyncio.timeout``, ``wait_for``),
    which anyio's cancel scopes do not see."""
    size = 64 << 20
    calls: list[int] = []
    task = asyncio.current_task()
    assert task is not None

    def progress(done: int, total: int) -> None:
        calls.append(done)
        task.cancel()

    async with await AnonymousMmap.new(size) as m:
        with pytest.raises(asyncio.CancelledError):
            await m.populate(write=True, progress=progress)
        if sys.version_info >= (3, 11):
            task.uncancel()  # (the request was met: the task goes on)
        assert calls == [16 << 20]
        assert resident_fraction(m.as_ptr() + (16 << 20), size - (16 << 20)) < 0.1


async def test_a_populate_of_nothing_is_a_checkpoint() -> None:
    async with await AnonymousMmap.new(PAGE) as m:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await m.populate(PAGE, 0)
        assert scope.cancelled_caught


async def test_discarding_advice_never_touches_bytes_outside_the_range() -> None:
    """Regression test: DONTNEED on an unaligned range used to widen it to whole pages."""
    async with await AnonymousMmap.new(4 * PAGE) as m:
        for advice in (anymmap.Advice.DONTNEED, anymmap.Advice.FREE):
            await m.update_region(0, b"K" * 4 * PAGE)
            await m.advise(advice, PAGE - 96, 200)  # inside no whole page: a no-op
            assert await m.read(0, 4 * PAGE) == b"K" * 4 * PAGE
            await m.advise(advice, PAGE - 1, 2 * PAGE + 2)  # wholly covers pages 1 and 2
            data = await m.read(0, 4 * PAGE)
            assert data[:PAGE] == b"K" * PAGE
            assert data[3 * PAGE :] == b"K" * PAGE
            if advice == anymmap.Advice.DONTNEED:
                assert data[PAGE : 3 * PAGE] == bytes(2 * PAGE)


async def test_advise_dontneed_zeroes_anonymous_memory(amap: AnonymousMmap) -> None:
    await amap.update_region(0, b"x" * SIZE)
    await amap.advise(anymmap.Advice.DONTNEED, 0, PAGE)
    assert await amap.read(0, PAGE) == bytes(PAGE)
    assert await amap.read(PAGE, 1) == b"x"
    await amap.advise(anymmap.Advice.SEQUENTIAL)
    import mmap

    await amap.advise(mmap.MADV_RANDOM)  # the stdlib constants work too


async def test_populate_does_not_stall_the_loop() -> None:
    size = 256 << 20
    async with await AnonymousMmap.new(size) as m:

        async def populate() -> None:
            await m.populate(write=True)

        async def give_the_pages_back() -> None:  # (populating again is real work)
            await m.advise(anymmap.Advice.DONTNEED)

        beat, took = await assert_loop_keeps_running(populate, give_the_pages_back)
        print(f"\npopulate 256 MiB: {took * 1e3:.1f} ms, worst loop lag {beat.worst * 1e3:.2f} ms")


async def test_unclosed_map_is_unmapped_when_collected() -> None:
    m = await AnonymousMmap.new(PAGE)
    addr = m.as_ptr()
    m.update_region_nowait(TAG_AT, TAG)
    assert holds_tag(addr)
    with pytest.warns(ResourceWarning, match="unclosed AnonymousMmap"):
        del m
    gc.collect()
    assert not holds_tag(addr)


async def test_collected_map_with_an_escaped_array_unmaps_after_the_array() -> None:
    m = await AnonymousMmap.new(PAGE)
    addr = m.as_ptr()
    m.update_region_nowait(TAG_AT, TAG)
    with pytest.raises(BorrowError):
        async with m.as_mut_slice(0, 8) as view:
            arr = np.frombuffer(view, dtype=np.uint8)
    with pytest.warns(ResourceWarning):
        del m
    del view
    gc.collect()
    assert holds_tag(addr)
    arr[:] = 1  # still safe to use
    del arr
    gc.collect()
    assert not holds_tag(addr)


async def test_as_ptr_points_at_the_data(amap: AnonymousMmap) -> None:
    import ctypes

    await amap.update_region(0, b"ptr")
    assert ctypes.string_at(amap.as_ptr(), 3) == b"ptr"


async def test_populate_fallback_for_kernels_before_5_14(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels without MADV_POPULATE_* get every page touched by a fault-safe read."""
    from anymmap._sys import _linux

    monkeypatch.setattr(_linux, "_populate_advice_supported", False)
    size = 3000 * PAGE  # more than one batch of 1024 pages
    async with await AnonymousMmap.new(size) as m:
        await m.update_region(5 * PAGE, b"kept")
        await m.populate(write=True)
        assert resident_fraction(m.as_ptr(), size) == 1.0
        assert await m.read(5 * PAGE, 4) == b"kept"  # contents unchanged


async def test_the_blocks_own_exception_wins_over_an_escape() -> None:
    m = await AnonymousMmap.new(PAGE)
    with pytest.raises(KeyError):  # noqa: PT012 - the borrow block is the subject
        async with m.as_slice(0, 16) as view:
            head = view[:4]
            raise KeyError("bad request")
    assert m.lock.statistics().readers == 0
    with pytest.raises(BorrowError):
        await m.aclose()  # the escape is still reported, here
    del head
    await m.aclose()
    assert m.closed


async def test_copies_run_in_call_order_and_honour_a_cancelled_scope(amap: AnonymousMmap) -> None:
    """The awaited copies that need no worker take no lock (nothing else runs while they
    copy); they still run in the order the calls were made (trio reorders tasks woken
    from a checkpoint: the copy comes before the yield there), and a cancelled scope
    stops them before they write."""
    order: list[bytes] = []

    async def write(name: bytes) -> None:
        order.append(name)
        await amap.update_region(0, name)

    for _ in range(8):  # trio reverses a batch of woken tasks half of the time
        order.clear()
        async with anyio.create_task_group() as tg:
            for name in (b"A", b"B", b"C", b"D"):
                tg.start_soon(write, name)
        assert await amap.read(0, 1) == order[-1]

    with anyio.CancelScope() as scope:
        scope.cancel()
        await amap.update_region(0, b"X")
    assert scope.cancelled_caught
    assert await amap.read(0, 1) == order[-1]
    buf = bytearray(1)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await amap.read_into(0, buf)
    assert scope.cancelled_caught
    assert buf == b"\0"
