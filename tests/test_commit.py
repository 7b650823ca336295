"""Storage-engine durability: group commit, the flush policy, and files anymmap creates."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fractions
import gc
import math
import os
import pickle
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Literal, cast

import anyio
import numpy as np
import pytest
from anyio import wait_all_tasks_blocked

import anymmap
import anymmap.sync
from anymmap import MmapRaw
from anymmap._core._commit import CommitRequest, DirtyRanges, GroupCommit
from anymmap._sys import _linux

from ._child import check_child
from ._helpers import (
    PAGE,
    TAG,
    TAG_AT,
    holds_tag,
    unwritten_extents,
    unwritten_pages,
    wait_until,
)

pytestmark = pytest.mark.anyio

MiB = 1 << 20
RECORD = 4096


def record(i: int) -> bytes:
    return f"record {i:06d} ".encode().ljust(RECORD, b".")


# A second process reads the file (not the map) and checks the records it was told about.
_READER = """
import sys
path, count = sys.argv[1], int(sys.argv[2])
data = open(path, "rb").read()
bad = [i for i in range(count)
       if data[i * 4096 : (i + 1) * 4096] != f"record {i:06d} ".encode().ljust(4096, b".")]
print("bad", bad)
"""


def assert_another_process_reads_every_record(path: Path, count: int) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _READER, str(path), str(count)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "bad []"


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    return tmp_path / "log.bin"


# --- group commit ----------------------------------------------------------------------


async def test_concurrent_commits_share_msyncs(log_file: Path) -> None:
    """64 tasks each write and flush their own record: every acknowledged record is in the
    file for another process, and far fewer msyncs than commits ran."""
    committers = 64
    async with await MmapRaw.create(log_file, committers * RECORD) as m:
        acknowledged: list[int] = []
        written = [0]
        all_written = anyio.Event()

        async def commit(i: int) -> None:
            await m.update_region(i * RECORD, record(i))
            written[0] += 1
            if written[0] == committers:
                all_written.set()
            # (All flush in one loop round: without this, on trio on a fast disk, each
            # write's own checkpoint let every msync end before the next flush was
            # asked, once in a CI run: 64 msyncs.)
            await all_written.wait()
            await m.flush_range(i * RECORD, RECORD)
            acknowledged.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(committers):
                tg.start_soon(commit, i)
        assert sorted(acknowledged) == list(range(committers))
        stats = m._core.commit
        print(f"\n{committers} commits: {stats.msyncs} msyncs in {stats.batches} batches")
        # How many share an msync depends on the scheduling (16 of 64 on a busy machine,
        # 2 or 3 when idle); that they share it is certain: all submit within one loop
        # round, while the first msync is in flight.  The exact coalescing is checked on
        # the committer below.
        assert stats.msyncs < committers
        assert m.pending_bytes() == 0
    await anyio.to_thread.run_sync(assert_another_process_reads_every_record, log_file, committers)


def test_threads_of_the_twin_share_msyncs(log_file: Path) -> None:
    threads = 32
    with anymmap.sync.MmapRaw.create(log_file, threads * RECORD) as m:
        start = threading.Barrier(threads)
        errors: list[BaseException] = []

        def commit(i: int) -> None:
            try:
                start.wait()
                m.update_region(i * RECORD, record(i))
                m.flush_range(i * RECORD, RECORD)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        workers = [threading.Thread(target=commit, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert not errors
        assert m._core.commit.msyncs < threads  # shared: how widely depends on the load
    assert_another_process_reads_every_record(log_file, threads)


def test_requests_made_during_an_msync_share_the_next_one() -> None:
    """While one msync runs, 63 requests arrive: exactly one more msync, over their
    span, completes all of them."""
    calls: list[tuple[int, int]] = []
    inside, gate = threading.Event(), threading.Event()

    class Map:
        def sync(self, start: int, length: int) -> None:
            calls.append((start, length))
            if len(calls) == 1:
                inside.set()
                gate.wait(30)

        def entering(self) -> None:
            pass

    target = Map()
    commit = GroupCommit(target.sync, target.entering)
    first = threading.Event()
    commit.submit(0, 1, first.set)
    assert inside.wait(30)
    done = [threading.Event() for _ in range(63)]
    requests = [commit.submit(i, i + 1, event.set) for i, event in enumerate(done, 1)]
    gate.set()
    assert first.wait(30)
    assert all(event.wait(30) for event in done)
    for request in requests:
        request.result()
    assert calls == [(0, 1), (1, 63)]
    assert (commit.batches, commit.msyncs) == (2, 2)


def test_a_request_is_done_only_by_an_msync_that_started_after_it() -> None:
    """The durability rule, checked on the committer itself: requests made while an msync
    runs wait for the next one, whatever the timing."""
    started: list[int] = []  # the msync number each request saw in flight when made
    finished: dict[int, int] = {}
    gate = threading.Event()

    class Map:
        running = 0

        def sync(self, start: int, length: int) -> None:
            self.running += 1
            for i in range(start, start + length):
                finished.setdefault(i, self.running)
            gate.wait(0.001)

        def entering(self) -> None:
            pass

    target = Map()  # (the committer holds it weakly, as it holds a map)
    commit = GroupCommit(target.sync, target.entering)
    requests: list[CommitRequest] = []
    for i in range(300):
        started.append(target.running)
        done = threading.Event()
        requests.append(commit.submit(i, i + 1, done.set))
        if i % 7 == 0:
            done.wait()
    for request in requests:
        while not request.done:
            gate.wait(0.001)
        request.result()
    assert all(finished[i] > started[i] for i in range(300)), "a request rode an earlier msync"
    assert commit.msyncs < 300


async def test_a_cancelled_waiter_does_not_hurt_the_others(log_file: Path) -> None:
    async with await MmapRaw.create(log_file, 16 * RECORD) as m:
        for i in range(16):
            await m.update_region(i * RECORD, record(i))
        done: list[int] = []

        async def commit(i: int) -> None:
            await m.flush_range(i * RECORD, RECORD)
            done.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(16):
                if i % 2:
                    with anyio.CancelScope() as scope:
                        scope.cancel()  # cancelled before it even waits
                        await commit(i)
                else:
                    tg.start_soon(commit, i)
        assert sorted(done) == list(range(0, 16, 2))
        await wait_until(lambda: m.pending_bytes() == 0)  # the cancelled ones too
    assert_another_process_reads_every_record(log_file, 16)


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # (unclosed, on purpose)
async def test_a_cancelled_flush_of_a_map_dropped_unclosed_is_made_all_the_same(
    log_file: Path,
) -> None:
    """Regression test (adversary round 29): a flush cancelled after it was submitted is
    owed its msync, but when the map was then dropped without ``aclose()`` before the
    committer took the request, the committer found the map gone and flushed nothing.
    The request now holds the map until its msync is made."""
    log_file.write_bytes(bytes(4 * PAGE))
    m = await MmapRaw.map_raw(log_file)
    await m.update_region(0, b"owed")
    await m.update_region(TAG_AT, TAG)
    commit, addr = m._core.commit, m.as_ptr()
    gate, run = threading.Event(), commit._run

    def gated_run() -> None:  # the committer starts only once the map is dropped
        gate.wait()
        run()

    commit._run = gated_run  # type: ignore[method-assign]
    with anyio.move_on_after(0):
        await m.flush()
    del m
    gc.collect()
    gate.set()
    await wait_until(lambda: not commit.outstanding())
    assert list(commit.failed_batches) == []
    assert commit.msyncs == 1
    gc.collect()
    assert not holds_tag(addr)  # and then freed


@pytest.fixture
def failing_device(tmp_path: Path) -> Iterator[Path]:
    """A block device whose writes fail with EIO: a loop device over a sparse 16 MiB file
    on a 64 KiB tmpfs (the backing file cannot grow, so the loop driver reports I/O
    errors)."""
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tiny)], check=False
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        backing = tiny / "backing"
        with open(backing, "wb") as f:
            f.truncate(16 * MiB)
        made = subprocess.run(
            ["losetup", "--find", "--show", str(backing)], capture_output=True, check=False
        )
        if made.returncode:
            pytest.skip(f"cannot attach a loop device: {made.stderr.decode().strip()}")
        device = Path(made.stdout.decode().strip())
        try:
            yield device
        finally:
            subprocess.run(["losetup", "--detach", str(device)], check=False)
    finally:
        subprocess.run(["umount", "-l", str(tiny)], check=False)


async def test_an_io_error_reaches_every_waiter_it_concerns(failing_device: Path) -> None:
    """Every waiter whose range a failed msync covered gets the error, its own copy; the
    others do not.  (Which batches fail is the kernel's business: a page whose background
    writeback already failed is clean again and flushes "fine", as fsync does.)"""
    async with await MmapRaw.map_raw(failing_device) as m:
        await m.update_region(0, b"\xee" * 4 * MiB)
        outcomes: dict[int, OSError | None] = {}
        requests: dict[int, CommitRequest] = {}
        commit = m._core.commit
        submit = commit.submit

        def spy(
            start: int, end: int, wake: Callable[[], None], scheduler: Any = None, **mine: Any
        ) -> CommitRequest:
            request = submit(start, end, wake, scheduler, **mine)
            requests[start // MiB] = request
            return request

        commit.submit = spy  # type: ignore[method-assign]

        async def flush(i: int) -> None:
            try:
                await m.flush_range(i * MiB, MiB)
            except OSError as exc:
                outcomes[i] = exc
            else:
                outcomes[i] = None

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(flush, i)
        assert commit.failed_batches, "the failing device did not fail"
        for i, error in outcomes.items():
            failed = requests[i].batch in commit.failed_batches
            assert (error is not None) == failed, (i, error, requests[i].batch)
            if error is not None:
                assert error.errno == errno.EIO
        errors = [error for error in outcomes.values() if error is not None]
        assert len({id(error) for error in errors}) == len(errors)  # each its own exception


async def test_a_failed_write_back_fails_every_later_flush_of_the_map(
    failing_device: Path,
) -> None:
    """Regression test (adversary round 29): Linux reports a failed write-back to one
    ``msync`` of the open file and marks the pages it could not write clean, so the next
    flush returned success (and ``pending_bytes()`` dropped to 0) for data that never
    reached the disk; in a batch, the commit whose ``msync`` came first took the error of
    another's range, and that other was told durable.  The failure now stays with the
    map: every later durable flush, of any range, raises it."""
    async with await MmapRaw.map_raw(failing_device) as m:
        await m.update_region(0, b"\xee" * 4 * MiB)
        with pytest.raises(anymmap.WriteBackError) as first:
            await m.flush()
        assert first.value.errno == errno.EIO
        assert m.pending_bytes() == 4 * MiB
        for start in (3 * MiB, 0, 12 * MiB):  # failed pages, and others
            await m.update_region(start, b"again")
            with pytest.raises(anymmap.WriteBackError) as later:
                await m.flush_range(start, MiB)
            assert later.value.errno == errno.EIO
            assert "every durable flush of this map" in str(later.value)
        assert m.pending_bytes() >= 4 * MiB  # none of it is known to be on the disk

        errors: list[BaseException | None] = []

        async def flush(i: int) -> None:  # a batch of several, ranges far apart
            try:
                await m.flush_range(i * 4 * MiB, MiB)
            except OSError as exc:
                errors.append(exc)
            else:
                errors.append(None)

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(flush, i)
        assert all(isinstance(error, anymmap.WriteBackError) for error in errors), errors
        await m.flush_async()  # starting write-back promises nothing: not refused


async def test_a_write_back_failure_no_flush_raised_is_raised_by_the_close(
    failing_device: Path,
) -> None:
    """Regression test (adversary round 32): a flush cancelled after it was submitted
    still runs; its ``msync`` failed, no caller was left to hear it, and ``aclose()``
    returned normally with 2 of 3 MiB lost.  The close raises a write-back failure that
    no flush raised (the map is closed all the same), once."""
    m = await MmapRaw.map_raw(failing_device)
    await m.update_region(0, b"X" * 3 * MiB)
    commit = m._core.commit
    with anyio.CancelScope() as scope:
        # Cancelled before the call: it submits its flush (no checkpoint comes first),
        # then its wait ends at once, before any wake-up (when the scope was cancelled
        # after the batch was taken, the failed msync could wake it first under load).
        scope.cancel()
        await m.flush()
    assert scope.cancelled_caught
    await wait_until(lambda: bool(commit.failed_batches))  # its msync failed
    with pytest.raises(anymmap.WriteBackError) as failure:
        await m.aclose()
    assert failure.value.errno == errno.EIO
    assert m.closed
    await m.aclose()  # (once)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_cancelled_close_leaves_the_unheard_failure_to_the_next(
    failing_device: Path,
) -> None:
    """Regression test (adversary round 33): an ``aclose()`` cancelled by a native
    ``Task.cancel()`` while it closed raised the unheard write-back failure only as the
    ``__cause__`` of its ``CancelledError``, and the next close said nothing.  The
    cancelled one leaves it to the next."""
    m = await MmapRaw.map_raw(failing_device)
    await m.update_region(0, b"X" * 3 * MiB)
    commit = m._core.commit
    with anyio.CancelScope() as scope:
        # Cancelled before the call, as above: cancelled once the batch was taken, the
        # failed msync could wake the flush first on a busy machine (CPython 3.10 beside
        # three other test workers), and the flush heard the failure itself.
        scope.cancel()
        await m.flush()
    assert scope.cancelled_caught
    await wait_until(lambda: bool(commit.failed_batches))
    closing = asyncio.ensure_future(m.aclose())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert m.closed
    with pytest.raises(anymmap.WriteBackError):
        await m.aclose()
    await m.aclose()


def test_a_failure_a_shrink_raised_is_not_raised_again_by_the_close(
    failing_device: Path,
) -> None:
    """Regression test (adversary round 33): a shrinking ``resize`` of a device map
    flushes what it cuts off and raised that flush's failure; the close then raised it
    again."""
    with open(failing_device, "r+b") as device:
        m = anymmap.sync.MmapRaw.map_raw(device, length=16 * MiB)
        m.update_region(8 * MiB, b"Z" * 4 * MiB)
        with pytest.raises(anymmap.WriteBackError):
            m.resize(8 * MiB)
        m.close()  # (raised already, by the resize)
        assert m.closed


def test_a_failure_the_blocks_own_error_hid_is_raised_by_the_close(
    failing_device: Path,
) -> None:
    """Regression test (adversary round 33): the blocking twin's ``auto_flush`` block
    raised its own error over a failed background flush (the rule), and the failure was
    then heard by nobody: the close said nothing."""
    with open(failing_device, "r+b") as device:
        m = anymmap.sync.MmapRaw.map_raw(device, length=16 * MiB)
        with pytest.raises(KeyError), m.auto_flush(every=0.01, every_bytes=MiB):  # noqa: PT012
            m.update_region(0, b"\xee" * 4 * MiB)
            deadline = time.monotonic() + 20
            while not m._core.commit.failed_batches and time.monotonic() < deadline:
                time.sleep(0.01)
            raise KeyError("the block's own")
        with pytest.raises(anymmap.WriteBackError):
            m.close()
        m.close()


def test_a_failure_the_user_heard_inside_an_auto_flush_block_is_not_raised_again(
    failing_device: Path,
) -> None:
    """Regression test (adversary round 33): a flush of the user's raised the failure
    inside an ``auto_flush`` block whose background flush met it too and whose own
    error then ended it (the block's error wins); the block's exit took the failure for
    unheard, and the close raised it a second time."""
    with open(failing_device, "r+b") as device:
        m = anymmap.sync.MmapRaw.map_raw(device, length=16 * MiB)
        block = m.auto_flush(every=0.01, every_bytes=MiB)
        with pytest.raises(KeyError), block:  # noqa: PT012
            m.update_region(0, b"\xee" * 4 * MiB)
            with pytest.raises(anymmap.WriteBackError):
                m.flush()  # heard here
            m.update_region(2 * MiB, b"\xdd" * MiB)  # (for the background flush)
            deadline = time.monotonic() + 20
            while not block._flusher.failures and time.monotonic() < deadline:  # type: ignore[attr-defined]
                time.sleep(0.01)
            assert block._flusher.failures  # type: ignore[attr-defined]
            raise KeyError("the block's own")
        m.close()  # (heard already)


def test_a_failure_the_close_inside_an_auto_flush_block_raised_is_not_raised_again(
    failing_device: Path,
) -> None:
    """Regression test (adversary round 34): the block's background flush met the
    failure, the close inside the block raised it (the user handled it), and the
    block's end raised it a second time."""
    with open(failing_device, "r+b") as device:
        m = anymmap.sync.MmapRaw.map_raw(device, length=16 * MiB)
        block = m.auto_flush(every=0.01, every_bytes=MiB)
        with block:
            m.update_region(0, b"\xee" * 4 * MiB)
            deadline = time.monotonic() + 20
            while not block._flusher.failures and time.monotonic() < deadline:  # type: ignore[attr-defined]
                time.sleep(0.01)
            assert block._flusher.failures  # type: ignore[attr-defined]
            with pytest.raises(anymmap.WriteBackError):
                m.close()  # heard here
        assert m.closed


async def test_a_block_cut_short_by_a_failure_already_heard_still_raises_it(
    failing_device: Path,
) -> None:
    """Regression test (adversary round 34): another task's flush raised the failure
    (heard), then the block's background flush met it and cancelled the block; the
    block's end raised nothing, so the cancellation leaked out of the block and cut
    short the code after it.  A failure that cut the block short is raised."""
    m = await MmapRaw.map_raw(failing_device)
    await m.update_region(0, b"X" * 3 * MiB)
    with pytest.raises(anymmap.WriteBackError):
        await m.flush()  # heard
    after = False
    with pytest.raises(anymmap.WriteBackError):  # noqa: PT012
        async with m.auto_flush(every=0.01, every_bytes=MiB):
            await m.update_region(0, b"Y" * 2 * MiB)
            await anyio.sleep(30)  # (cancelled by the background flush's failure)
        after = True
    assert not after
    await m.aclose()  # (heard: quiet)


def test_two_threads_closing_one_map_raise_its_unheard_failure_once(tmp_path: Path) -> None:
    """Regression test (adversary round 33): two threads closing one map at once could
    both raise its unheard write-back failure (2 in 6,000 trials): the check and the
    mark were two steps.  (The failure is recorded by hand: a device that fails on cue
    does not fit 2,000 rounds.)"""
    path = tmp_path / "file"
    path.write_bytes(bytes(PAGE))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(2000):
            m = anymmap.sync.MmapRaw.map_raw(path)
            m._core._fail_write_back(OSError(errno.EIO, "Input/output error"))
            raised: list[BaseException] = []
            barrier = threading.Barrier(2)

            def close(
                m: anymmap.sync.MmapRaw = m,
                raised: list[BaseException] = raised,
                barrier: threading.Barrier = barrier,
            ) -> None:
                barrier.wait()
                try:
                    m.close()
                except anymmap.WriteBackError as exc:
                    raised.append(exc)

            threads = [threading.Thread(target=close) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert len(raised) == 1, raised
    finally:
        sys.setswitchinterval(interval)


def test_a_write_back_failure_of_another_map_is_raised_by_the_close(
    failing_device: Path,
) -> None:
    """The same for a map that never flushed, open when another map of the file failed
    (they share its pages), in the blocking twin; a map that raised it closes quietly."""
    with open(failing_device, "r+b") as device:
        failed = anymmap.sync.MmapRaw.map_raw(device, length=16 * MiB)
        other = anymmap.sync.MmapRaw.map_raw(device, length=16 * MiB)
        other.update_region(MiB, b"Y" * MiB)
        failed.update_region(0, b"X" * 3 * MiB)
        with pytest.raises(anymmap.WriteBackError):
            failed.flush()
        failed.close()  # it raised the failure already
        with pytest.raises(anymmap.WriteBackError):
            other.close()
        assert other.closed
        other.close()


async def test_a_failed_write_back_reaches_every_map_of_the_file_open_then(
    failing_device: Path,
) -> None:
    """Regression test (adversary round 30): two maps of one descriptor share its open
    file description, which the kernel tells of a failure once: the map that flushed
    first raised, and the other then flushed "fine" with its bytes lost.  Every map of
    the file open at the failure keeps it; a map made after starts clean (the way to
    write the data again).  A failed map still shrinks, and a flush of nothing raises."""
    with open(failing_device, "r+b") as device:
        first = await MmapRaw.map_raw(device, length=16 * MiB)
        second = await MmapRaw.map_raw(device, length=16 * MiB)
        async with first, second:
            await second.update_region(13 * MiB, b"\xee" * MiB)
            await first.update_region(0, b"\xee" * 4 * MiB)
            with pytest.raises(anymmap.WriteBackError):
                await first.flush()
            with pytest.raises(anymmap.WriteBackError):
                await second.flush_range(13 * MiB, MiB)
            assert second.pending_bytes() == MiB
            with pytest.raises(anymmap.WriteBackError):
                await first.flush_range(0, 0)
            await first.resize(8 * MiB)  # (its flush of what is cut off is skipped)
            assert len(first) == 8 * MiB
            async with await MmapRaw.map_raw(failing_device) as later:
                await later.flush()  # nothing written through it: nothing lost
                await later.flush_range(0, 0)


def _flush_at(
    start: threading.Barrier,
    m: anymmap.sync.MmapRaw,
    name: str,
    outcomes: dict[str, BaseException | None],
) -> None:
    start.wait()
    try:
        m.flush()
    except OSError as exc:
        outcomes[name] = exc
    else:
        outcomes[name] = None


def test_two_maps_of_one_descriptor_flushing_at_once_both_hear_of_a_failure(
    failing_device: Path,
) -> None:
    """Regression test (adversary round 31): two maps of one descriptor share its open
    file description, so the kernel tells one ``msync`` of the two of a failed
    write-back; when the other's was in flight at that moment it returned success (12
    of 20 runs), with its bytes lost, before the first could mark it failed.  An
    ``msync`` that succeeds now waits for those in flight beside it on the file, and
    fails if one of them failed."""
    with open(failing_device, "r+b") as device:
        device.write(b"\xee" * 2 * MiB)  # fill the backing file: every write fails now
        with contextlib.suppress(OSError):
            os.fsync(device.fileno())
        for _ in range(10):
            first = anymmap.sync.MmapRaw.map_raw(device, length=16 * MiB)
            second = anymmap.sync.MmapRaw.map_raw(device, length=16 * MiB)
            with first, second:
                first.update_region(4 * MiB, b"\xaa" * 2 * MiB)
                second.update_region(12 * MiB, b"\xbb" * MiB)
                start = threading.Barrier(2)
                outcomes: dict[str, BaseException | None] = {}
                threads = [
                    threading.Thread(target=_flush_at, args=(start, m, name, outcomes))
                    for name, m in (("first", first), ("second", second))
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                for error in outcomes.values():
                    assert isinstance(error, anymmap.WriteBackError), outcomes


def test_a_failed_map_closed_is_freed_while_another_map_of_the_file_is_open(
    failing_device: Path,
) -> None:
    """Regression test (adversary round 31): every map of the file kept the failed
    ``msync``'s own ``OSError``, whose traceback held the failing map's frames (and
    through its chain the caller's): a closed map and its caller's data stayed alive
    while another map of the file was open."""
    with anymmap.sync.MmapRaw.map_raw(failing_device) as other:
        failed = anymmap.sync.MmapRaw.map_raw(failing_device)
        failed.update_region(0, b"\xee" * 4 * MiB)
        with pytest.raises(anymmap.WriteBackError):
            failed.flush()
        with pytest.raises(anymmap.WriteBackError):
            other.flush()  # (it shares the failure)
        core = weakref.ref(failed._core)
        failed.close()
        del failed
        deadline = time.monotonic() + 10  # (the committer thread lingers after a batch)
        while gc.collect() is not None and core() is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert core() is None


_FORK_WITH_AN_MSYNC_IN_FLIGHT = """
    import os, sys
    import anymmap.sync

    m = anymmap.sync.MmapRaw.map_raw(sys.argv[1])
    syncs = m._core._syncs
    with syncs.cond:  # as a thread of the parent inside an msync's bookkeeping, with
        syncs.active.add(object())  # an msync in flight that the child never sees end
        pid = os.fork()
    if pid == 0:
        m.update_region(0, b"child")
        m.flush()  # waited for the parent's msync for good before
        os._exit(0)
    syncs.active.clear()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    m.close()
    print("ok")
"""


def test_a_forked_child_flushes_whatever_msyncs_the_parent_had_in_flight(
    tmp_path: Path,
) -> None:
    path = tmp_path / "file"
    path.write_bytes(bytes(4 * PAGE))
    check_child(_FORK_WITH_AN_MSYNC_IN_FLIGHT, str(path), timeout=20)
    assert path.read_bytes()[:5] == b"child"


_WAIT_INSIDE_AN_MSYNC_OF_THE_FILE = """
    import os, sys, threading, time
    import anymmap.sync

    path = sys.argv[1]
    a = anymmap.sync.MmapRaw.map_raw(path)
    b = anymmap.sync.MmapRaw.map_raw(path)
    syncs = a._core._syncs
    assert b._core._syncs is syncs
    # The main thread as inside a's msync (a signal handler runs there): its call in
    # flight, which every other msync of the file now waits for.
    interrupted = object()
    syncs.threads.add(threading.get_ident())
    with syncs.cond:
        syncs.active.add(interrupted)

    def flush_b():  # b's committer: its msync succeeds, then waits for a's, pinned
        b.update_region(0, b"b")
        b.flush_range(0, 1)

    flusher = threading.Thread(target=flush_b)
    flusher.start()
    while not b._core._pinners:  # (the committer's pin)
        time.sleep(0.001)
    refused = []
    for call in (
        b.close,
        lambda: b.resize(2 * 4096),
        lambda: b.flush_range(0, 1),
        lambda: b.auto_flush(every=0.001).__enter__(),  # its exit waits for its thread
    ):
        try:
            call()  # each would wait for b's committer, which waits for this thread
        except RuntimeError:
            refused.append(True)
    assert refused == [True, True, True, True], refused
    resizer = threading.Thread(target=b.resize, args=(2 * 4096,))  # waits for the pin
    resizer.start()
    while b._core._remapper is None and b._lock._writer is None:
        time.sleep(0.001)
    try:
        b.read(0, 1)  # would wait for the resize, which waits for b's committer
    except RuntimeError:
        refused.append(True)
    assert len(refused) == 5, refused
    with syncs.cond:  # a's msync ends
        syncs.active.discard(interrupted)
        syncs.cond.notify_all()
    syncs.threads.discard(threading.get_ident())
    flusher.join()
    resizer.join()
    assert len(b) == 2 * 4096
    b.flush()  # all usable
    b.close()
    a.close()
    print("ok")
"""


def test_a_wait_inside_an_msync_of_the_file_on_its_thread_is_refused(tmp_path: Path) -> None:
    """Regression test (adversary round 32): a signal handler that closed (or resized,
    or flushed) map B of a file while its thread was inside map A's ``msync`` waited for
    B's committer, which waited beside for A's ``msync``: the process hung.  Every such
    wait now raises ``RuntimeError``, and both maps go on."""
    path = tmp_path / "file"
    path.write_bytes(bytes(4 * PAGE))
    check_child(_WAIT_INSIDE_AN_MSYNC_OF_THE_FILE, str(path), timeout=20)


_EXIT_WITH_A_DAEMON_INSIDE_AN_MSYNC = """
    import os, sys, threading
    import anymmap.sync
    from anymmap._core import _file

    a = anymmap.sync.MmapRaw.map_raw(sys.argv[1])
    syncs = a._core._syncs
    inside = threading.Event()

    def daemon():  # stands for a daemon thread stopped at exit inside an msync of a
        if sys.argv[2] == "msync in flight":
            with syncs.cond:
                syncs.active.add(object())
        elif sys.argv[2] == "msync bookkeeping":
            syncs.cond.acquire()
        else:  # "record lookup": mapping the file
            _file._syncs_lock.acquire()
        inside.set()
        threading.Event().wait()

    threading.Thread(target=daemon, daemon=True).start()
    inside.wait()

    class FlushOnDrop:
        def __init__(self):
            self.me = self  # cyclic garbage: the last collection frees it

        def __del__(self):
            try:
                b = anymmap.sync.MmapRaw.map_raw(sys.argv[1])
                b.update_region(0, b"b")
                b.flush()
            except RuntimeError:
                os.write(1, b"refused\\n")

    FlushOnDrop()
    print("main ends", flush=True)
"""


@pytest.mark.parametrize("daemon", ["msync in flight", "msync bookkeeping", "record lookup"])
def test_a_finalizer_at_exit_never_waits_for_a_daemon_inside_an_msync_of_the_file(
    tmp_path: Path, daemon: str
) -> None:
    """Regression test (adversary rounds 32 and 33): a finalizer run by the interpreter's
    last collection that mapped a file and flushed the map waited for ever for a daemon
    thread stopped at exit inside an ``msync`` of another map of the file (its call in
    flight, or the lock of the file's msync bookkeeping) or inside the lookup of that
    bookkeeping (mapping the file): the process never exited.  It gets
    ``RuntimeError``."""
    path = tmp_path / "file"
    path.write_bytes(bytes(4 * PAGE))
    check_child(
        _EXIT_WITH_A_DAEMON_INSIDE_AN_MSYNC, str(path), daemon, expect="refused", timeout=20
    )


def test_threads_mapping_one_file_at_once_share_one_record_of_it(tmp_path: Path) -> None:
    """Regression test (adversary round 32): eight threads that mapped one fresh file at
    once made two records of its msyncs in 5 of 200 rounds (the lookup was not atomic),
    so a failed write-back of one map did not reach the maps of the other record, whose
    flushes then said durable.  Every map of the file now joins the one record."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # (threads switch inside the lookup, as under load)
    try:
        for round_ in range(300):
            path = tmp_path / f"f{round_}"
            path.write_bytes(bytes(PAGE))
            maps: list[anymmap.sync.MmapRaw] = []
            barrier = threading.Barrier(8)

            def open_one(
                path: Path, maps: list[anymmap.sync.MmapRaw], barrier: threading.Barrier
            ) -> None:
                barrier.wait()
                maps.append(anymmap.sync.MmapRaw.map_raw(path))

            threads = [
                threading.Thread(target=open_one, args=(path, maps, barrier)) for _ in range(8)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            records = {id(m._core._syncs) for m in maps}
            for m in maps:
                m.close()
            assert len(maps) == 8
            assert len(records) == 1, f"round {round_}: {len(records)} records of one file"
    finally:
        sys.setswitchinterval(interval)


def test_a_failed_write_back_fails_every_later_flush_of_the_twin(failing_device: Path) -> None:
    """The same for the blocking twin, whose threads share the committer."""
    with anymmap.sync.MmapRaw.map_raw(failing_device) as m:
        m.update_region(0, b"\xee" * 4 * MiB)
        with pytest.raises(anymmap.WriteBackError):
            m.flush()
        outcomes: list[BaseException | None] = []

        def flush(i: int) -> None:
            try:
                m.flush_range(i * MiB, MiB)
            except OSError as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)

        threads = [threading.Thread(target=flush, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(outcomes) == 8
        assert all(isinstance(error, anymmap.WriteBackError) for error in outcomes), outcomes
        assert m.pending_bytes() == 4 * MiB
    with pytest.raises(anymmap.WriteBackError):  # (pickled, as across processes)
        raise pickle.loads(pickle.dumps(anymmap.WriteBackError(errno.EIO, "I/O error")))


async def test_flush_of_a_closed_map_and_of_read_only_maps(log_file: Path) -> None:
    log_file.write_bytes(bytes(PAGE))
    async with await MmapRaw.map_raw(log_file, mode="r") as m:
        await m.flush()  # a documented no-op
    async with await MmapRaw.map_raw(log_file, mode="copy") as m:
        await m.update_region(0, b"private")
        await m.flush_range(0, 7)
        # never reaches the file: nothing is pending (auto_flush has nothing to do)
        assert m.pending_bytes() == 0
    assert log_file.read_bytes() == bytes(PAGE)
    m = await MmapRaw.map_raw(log_file)
    await m.aclose()
    with pytest.raises(anymmap.ClosedMapError):
        await m.flush()


# --- the flush policy --------------------------------------------------------------------


async def test_auto_flush_by_time_by_bytes_and_at_exit(log_file: Path, backend_name: str) -> None:
    def tasks() -> int:
        return len(asyncio.all_tasks()) if backend_name == "asyncio" else 0

    async with await MmapRaw.create(log_file, 64 * MiB) as m:
        before = tasks()
        async with m.auto_flush(every=0.02, every_bytes=4 * MiB):
            assert tasks() == before + (backend_name == "asyncio")
            await m.update_region(0, b"soon")
            assert m.pending_bytes() == 4
            await wait_until(lambda: m.pending_bytes() == 0)  # within `every`
            with pytest.raises(RuntimeError, match="already flushes"):
                async with m.auto_flush():
                    pass  # pragma: no cover
        assert tasks() == before  # nothing outlives the block

        async with m.auto_flush(every=3600, every_bytes=MiB):  # time never triggers here
            await m.update_region(MiB, bytes(2 * MiB))  # past every_bytes: flushed now
            await wait_until(lambda: m.pending_bytes() == 0)
            await m.update_region(0, b"at exit")
            assert m.pending_bytes() == 7
        assert m.pending_bytes() == 0  # flushed on the way out

        async with m.as_mut_slice(100, 4) as view:
            view[:] = b"view"
        assert m.pending_bytes() == 4  # writable borrows count
        with pytest.raises(ValueError, match="positive"):
            async with m.auto_flush(every=0):
                pass  # pragma: no cover
        with pytest.raises(TypeError):
            async with m.auto_flush(every="often"):  # type: ignore[arg-type]
                pass  # pragma: no cover
        # Regression (adversary round 24): an int past any float raised OverflowError.
        with pytest.raises(ValueError, match="positive"):
            async with m.auto_flush(every=-(10**400)):
                pass  # pragma: no cover
        async with m.auto_flush(every=10**400, every_bytes=cast(Any, np.int64(1))):  # as math.inf
            await m.update_region(0, b"z")
        # (round 25: a Fraction past any float raised TypeError; the error was 401 digits)
        async with m.auto_flush(every=cast(Any, fractions.Fraction(10**400))):
            pass
        with pytest.raises(ValueError, match=r"positive, not -1000.*\.\.\.$"):
            async with m.auto_flush(every=-(10**400)):
                pass  # pragma: no cover
        async with m.auto_flush(every=cast(Any, np.float32(0.5))):  # NumPy numbers are numbers
            pass


class _CountedPending:
    """Counts the calls of a map's ``dirty.pending()``: how often a flusher looked."""

    def __init__(self, core: Any) -> None:
        self.calls = 0
        self._pending = core.dirty.pending
        core.dirty.pending = self

    def __call__(self) -> int:
        self.calls += 1
        return cast(int, self._pending())


async def test_an_idle_auto_flush_waits_for_a_write_not_for_its_interval(
    log_file: Path,
) -> None:
    """Regression test (adversary round 29): with a tiny ``every`` and nothing written,
    the flusher woke at every interval (``every=1e-9``: 100 % of a core).  It now waits
    for the first write, and the interval counts from there."""
    log_file.write_bytes(bytes(4 * PAGE))
    async with await MmapRaw.map_raw(log_file) as m:
        counted = _CountedPending(m._core)
        async with m.auto_flush(every=0.001, every_bytes=1 << 40):
            await anyio.sleep(0.3)  # idle: 300 intervals
            looked = counted.calls
            assert looked <= 3, looked
            await m.update_region(0, b"written")
            await wait_until(lambda: m.pending_bytes() == 0)  # flushed after the write
            flushed = counted.calls
            await anyio.sleep(0.3)  # idle again
            assert counted.calls - flushed <= 3, counted.calls - flushed
        assert m.pending_bytes() == 0


def test_an_idle_auto_flush_of_the_twin_waits_for_a_write(log_file: Path) -> None:
    log_file.write_bytes(bytes(4 * PAGE))
    with anymmap.sync.MmapRaw.map_raw(log_file) as m:
        counted = _CountedPending(m._core)
        with m.auto_flush(every=0.001, every_bytes=1 << 40):
            time.sleep(0.3)
            looked = counted.calls
            assert looked <= 3, looked
            m.update_region(0, b"written")
            deadline = time.monotonic() + 30
            while m.pending_bytes() and time.monotonic() < deadline:
                time.sleep(0.001)
            assert m.pending_bytes() == 0
            flushed = counted.calls
            time.sleep(0.3)
            assert counted.calls - flushed <= 3, counted.calls - flushed


async def test_auto_flush_inside_a_failing_block_still_flushes(log_file: Path) -> None:
    async with await MmapRaw.create(log_file, MiB) as m:

        async def fail() -> None:
            async with m.auto_flush(every=3600):
                await m.update_region(0, b"kept")
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            await fail()
        assert m.pending_bytes() == 0


async def test_auto_flush_whose_end_was_cut_gives_its_claim_back(log_file: Path) -> None:
    """Regression test (adversary round 22, trio under a Ctrl-C storm): trio raises a
    ``KeyboardInterrupt`` wherever the code is, and one raised as the block's ``finally``
    began skipped the release of the map's auto-flush claim: every later ``auto_flush``
    raised "already flushes automatically", for good.  The claim is now held weakly by
    the block, so it is free once the block's frame is gone.  The interrupt is raised
    here by a profile hook, at the call of the release, where trio's handler raised it."""
    import gc

    async with await MmapRaw.create(log_file, MiB) as m:

        def hook(frame: Any, event: str, arg: object) -> None:
            if event == "call" and frame.f_code.co_name == "drop_listener":
                sys.setprofile(None)
                raise KeyboardInterrupt

        cut = False
        try:
            async with m.auto_flush(every=3600):
                await m.update_region(0, b"lost?")
                sys.setprofile(hook)
        except KeyboardInterrupt:
            cut = True
        finally:
            sys.setprofile(None)
        assert cut
        # (Once the loop has run the callbacks of the block's ended task, which refer to
        # its frames, and the collector has freed them.)
        await wait_all_tasks_blocked()
        gc.collect()
        async with m.auto_flush(every=3600):  # not "already flushes automatically"
            await m.update_region(0, b"kept")
        assert m.pending_bytes() == 0  # (the earlier write too: nothing was lost)


async def test_auto_flush_whose_flusher_could_not_start_exits_its_group(log_file: Path) -> None:
    """Regression test: a Ctrl-C (raised here by a profile hook, where asyncio's handler
    can raise it) as the block's entry started its flusher task left the entry's task
    group entered and the map "already flushes automatically", for good.  The entry now
    exits its group and gives the claim back before it raises."""
    async with await MmapRaw.create(log_file, MiB) as m:

        def hook(frame: Any, event: str, arg: object) -> None:
            if event == "call" and frame.f_code.co_name == "start_soon":
                sys.setprofile(None)
                raise KeyboardInterrupt

        sys.setprofile(hook)
        try:
            with pytest.raises(KeyboardInterrupt):
                async with m.auto_flush(every=3600):
                    pytest.fail("the block ran without its flusher")
        finally:
            sys.setprofile(None)
        with anyio.fail_after(30):  # (the task's cancel scopes are whole again)
            await wait_all_tasks_blocked()
            async with m.auto_flush(every=3600):  # not "already flushes automatically"
                await m.update_region(0, b"kept")
        assert m.pending_bytes() == 0


def test_auto_flush_of_the_twin(log_file: Path) -> None:
    def flushers() -> int:
        return sum(t.name == "anymmap auto flush" for t in threading.enumerate())

    with anymmap.sync.MmapRaw.create(log_file, 8 * MiB) as m:
        with m.auto_flush(every=0.01, every_bytes=MiB):
            assert flushers() == 1
            m.update_region(0, b"x")
            deadline = threading.Event()
            while m.pending_bytes():
                deadline.wait(0.001)
            m.update_region(0, b"at exit")
        assert m.pending_bytes() == 0
        assert flushers() == 0  # joined when the block ended


def test_auto_flush_of_the_twin_keeps_flushing_after_a_failure(failing_device: Path) -> None:
    """Regression test (adversary round 16): the twin's flusher thread ended at its first
    failed flush, and the block ran on with nothing flushing it (the async form cancels
    the block instead; a thread cannot).  It now flushes on, and the block's exit raises
    the first error.  (Which fails again: a failed write-back stays with the map.)"""
    with anymmap.sync.MmapRaw.map_raw(failing_device) as m:
        commit = m._core.commit
        # (the error comes at the block's exit)
        with pytest.raises(OSError) as info, m.auto_flush(every=0.01, every_bytes=1 << 40):  # noqa: PT012
            m.update_region(0, b"\xee" * 4 * MiB)
            pause, deadline = threading.Event(), time.monotonic() + 30
            while not commit.failed_batches and time.monotonic() < deadline:
                pause.wait(0.001)  # the device fails the first flushes
            assert commit.failed_batches, "the failing device did not fail"
            failed = len(commit.failed_batches)
            m.update_region(0, b"later")
            while len(commit.failed_batches) < failed + 2 and time.monotonic() < deadline:
                pause.wait(0.001)
            assert len(commit.failed_batches) >= failed + 2, "no flush after the failure"
            assert m.pending_bytes() == 4 * MiB  # nothing is known to be on the disk
        assert info.value.errno == errno.EIO


async def test_a_background_flush_failure_ends_the_async_block_with_the_error_itself(
    failing_device: Path,
) -> None:
    """Regression test: a failed background flush ended the async ``auto_flush`` block
    with an ``ExceptionGroup`` around the ``OSError`` (the twin raises the error itself),
    so ``except OSError`` around the block missed it.  Now the error itself ends it."""
    async with await MmapRaw.map_raw(failing_device) as m:
        with pytest.raises(OSError) as info:  # noqa: PT012
            async with m.auto_flush(every=0.01, every_bytes=1 << 40):
                await m.update_region(0, b"\xee" * 4 * MiB)
                await anyio.sleep(60)  # (ended at the first failure)
        assert info.value.errno == errno.EIO


async def test_a_failed_final_flush_is_raised_over_the_blocks_own_error(
    failing_device: Path,
) -> None:
    """The rule both forms follow when no background flush failed: the final flush runs
    after a block that raised, and its error is raised, chained to the block's own (the
    bytes are not durable: that must not go unseen)."""
    async with await MmapRaw.map_raw(failing_device) as m:
        with pytest.raises(OSError) as info:  # noqa: PT012
            async with m.auto_flush(every=3600, every_bytes=1 << 40):  # (no background flush)
                await m.update_region(0, b"\xee" * 4 * MiB)
                raise KeyError("the block's own")
        assert info.value.errno == errno.EIO
        assert isinstance(info.value.__context__, KeyError)
    with anymmap.sync.MmapRaw.map_raw(failing_device) as twin:
        with pytest.raises(OSError) as info, twin.auto_flush(every=3600, every_bytes=1 << 40):  # noqa: PT012
            twin.update_region(2 * MiB, b"\xdd" * MiB)  # (dirty again: fails again)
            raise KeyError("the block's own")
        assert info.value.errno == errno.EIO
        assert isinstance(info.value.__context__, KeyError)


async def test_the_blocks_own_error_wins_over_a_failed_final_flush(failing_device: Path) -> None:
    """Regression test (adversary round 23): after a background flush failed, an async
    ``auto_flush`` block that raised an error of its own (here on its cancellation)
    ended with the error of its final flush instead, which failed as well; the twin
    raises the block's own.  The write-back failure the block's error hid is raised by
    the close (adversary round 32: it went unheard)."""
    m = await MmapRaw.map_raw(failing_device)
    with pytest.raises(KeyError, match="the block's own"):  # noqa: PT012
        async with m.auto_flush(every=0.01, every_bytes=1 << 40):
            await m.update_region(0, b"\xee" * 4 * MiB)
            try:
                await anyio.sleep(60)  # (cancelled at the first failure)
            finally:
                # (Dirty again, so that the final flush fails too: a page whose
                # writeback failed is clean afterwards.  Past the first MiB, which
                # the device's tiny backing store could take.)
                m.update_region_nowait(2 * MiB, b"\xdd" * MiB)
                raise KeyError("the block's own")
    with pytest.raises(anymmap.WriteBackError):
        await m.aclose()
    await m.aclose()  # (once)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_ctrl_c_in_the_flusher_task_ends_the_block_as_a_keyboard_interrupt(
    log_file: Path,
) -> None:
    """Regression test (adversary round 22, trio under a Ctrl-C storm): trio raises a
    ``KeyboardInterrupt`` in whatever task runs, and one raised in the block's flusher
    task came out of the block as a ``BaseExceptionGroup``, which ``except
    KeyboardInterrupt`` does not catch.  A profile hook raises it where trio did, as the
    flusher calls ``flush``."""

    def hook(frame: Any, event: str, arg: object) -> None:
        caller = frame.f_back
        in_flusher = caller is not None and caller.f_code.co_name == "_flush_in_background"
        if event == "call" and frame.f_code.co_name == "_flush_for_block" and in_flusher:
            sys.setprofile(None)
            raise KeyboardInterrupt

    with anyio.fail_after(30):
        async with await MmapRaw.create(log_file, MiB) as m:
            with pytest.raises(KeyboardInterrupt):  # noqa: PT012
                sys.setprofile(hook)
                try:
                    async with m.auto_flush(every=0.001, every_bytes=1):
                        await m.update_region(0, b"x")
                        await anyio.sleep(30)
                finally:
                    sys.setprofile(None)
            async with m.auto_flush(every=3600):  # the claim was given back
                await m.update_region(0, b"y")
            assert m.pending_bytes() == 0


def test_auto_flush_of_the_twin_retries_at_its_interval_not_at_every_write(
    failing_device: Path,
) -> None:
    """Regression test (adversary round 17): after a failed flush the bytes stay pending,
    each write past ``every_bytes`` woke the flusher again, and it retried at every write
    (about 1,500 msync calls a second).  It now waits ``every`` seconds first."""
    with anymmap.sync.MmapRaw.map_raw(failing_device) as m:
        commit = m._core.commit
        with pytest.raises(OSError), m.auto_flush(every=3600, every_bytes=PAGE):  # noqa: PT012
            m.update_region(0, b"\xee" * 4 * MiB)
            pause, deadline = threading.Event(), time.monotonic() + 30
            while not commit.failed_batches and time.monotonic() < deadline:
                pause.wait(0.001)
            assert commit.failed_batches, "the failing device did not fail"
            pause.wait(0.05)  # (the failed flush's request is done with)
            batches = commit.batches
            for i in range(200):
                m.update_region(i * PAGE, b"\xab" * PAGE)
                pause.wait(0.0005)
            assert commit.batches == batches  # no retry before `every` has passed


def test_auto_flush_of_the_twin_by_bytes_only(log_file: Path) -> None:
    """Regression test (adversary round 18): ``every=math.inf`` (flush by bytes only)
    killed the twin's flusher thread with ``OverflowError`` (a wait longer than the
    platform allows), and nothing flushed in the background."""
    with (
        anymmap.sync.MmapRaw.create(log_file, MiB) as m,
        m.auto_flush(every=math.inf, every_bytes=PAGE),
    ):
        m.update_region(0, b"x" * PAGE)
        pause, deadline = threading.Event(), time.monotonic() + 30
        while m.pending_bytes() and time.monotonic() < deadline:
            pause.wait(0.001)
        assert m.pending_bytes() == 0


def test_a_twin_auto_flush_block_dropped_without_its_give_back_frees_its_claim(
    log_file: Path,
) -> None:
    """Regression test (adversary round 23, a Ctrl-C storm): a second Ctrl-C handled as
    the give-back of a block whose exit the first one skipped began cut that give-back;
    the block's thread then kept its own (weakly held) claim alive and flushed on until
    the map closed, and every later block raised "already flushes automatically".  The
    thread now follows its block: when the block goes, it is woken, gives the claim back
    and ends.  Here the give-back is disarmed by hand, as the cut left it."""
    from anymmap._sys import DISARMED

    def flushers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "anymmap auto flush"]

    with anymmap.sync.MmapRaw.create(log_file, MiB) as m:
        block = m.auto_flush(every=math.inf, every_bytes=1 << 40)  # (never wakes by itself)
        block.__enter__()
        (thread,) = flushers()
        block._on_drop = DISARMED  # type: ignore[attr-defined]
        del block
        thread.join(30)
        assert not thread.is_alive()
        assert m._core.dirty.listener is None
        with m.auto_flush(every=math.inf, every_bytes=1 << 40):  # not "already flushes"
            m.update_region(0, b"x")
        assert m.pending_bytes() == 0
    assert not flushers()


def test_auto_flush_of_the_twin_gives_its_claim_back_if_its_thread_cannot_start(
    log_file: Path,
) -> None:
    """Regression test (adversary round 20): the claim was taken before the ``try`` of
    the block, so a flusher thread that could not start (or a Ctrl-C inside
    ``Thread.start()``) left the map "already flushing" for good, and a thread started
    before a Ctrl-C ran forever, holding up the interpreter's exit."""
    with anymmap.sync.MmapRaw.create(log_file, MiB) as m:
        threading.stack_size(1 << 40)  # 1 TiB stacks: pthread_create fails
        try:
            with pytest.raises(RuntimeError, match="can't start new thread"), m.auto_flush():
                pass
        finally:
            threading.stack_size(0)
        with m.auto_flush(every=math.inf, every_bytes=PAGE):  # not "already flushing"
            m.update_region(0, b"x" * PAGE)
            pause, deadline = threading.Event(), time.monotonic() + 30
            while m.pending_bytes() and time.monotonic() < deadline:
                pause.wait(0.001)
            assert m.pending_bytes() == 0
    assert not [t for t in threading.enumerate() if t.name == "anymmap auto flush"]


def test_auto_flush_of_the_twin_admits_one_block_of_two_threads(log_file: Path) -> None:
    """Regression test (adversary round 19): two threads entering ``auto_flush`` of one
    map at once could both get past the "already flushes automatically" check (3 of
    every run of 300), and the first block to end switched off the other's flushing by
    size.  The check and the claim are one step now: one block gets in, the other raises,
    and the one that got in still flushes by size."""
    with anymmap.sync.MmapRaw.create(log_file, MiB) as m:
        old = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads as often as possible
        try:
            for _ in range(200):
                start = threading.Barrier(2)
                entered: list[Any] = []
                refused: list[BaseException] = []

                def enter(
                    start: threading.Barrier, entered: list[Any], refused: list[BaseException]
                ) -> None:
                    block = m.auto_flush(every=math.inf, every_bytes=PAGE)
                    start.wait()
                    try:
                        block.__enter__()
                    except RuntimeError as exc:
                        refused.append(exc)
                    else:
                        entered.append(block)

                threads = [
                    threading.Thread(target=enter, args=(start, entered, refused))
                    for _ in range(2)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                try:
                    assert len(entered) == 1, f"{len(entered)} blocks got in"
                    assert "already flushes automatically" in str(refused[0])
                    m.update_region(0, b"x" * PAGE)  # the block that got in flushes it
                    pause, deadline = threading.Event(), time.monotonic() + 30
                    while m.pending_bytes() and time.monotonic() < deadline:
                        pause.wait(0.001)
                    assert m.pending_bytes() == 0
                finally:
                    for block in entered:  # (their threads must end, pass or fail)
                        block.__exit__(None, None, None)
        finally:
            sys.setswitchinterval(old)


@pytest.mark.parametrize("size", [16, 3 * MiB], ids=["inline", "worker"])
async def test_a_write_counts_as_pending_only_once_its_bytes_are_in_memory(
    log_file: Path, size: int
) -> None:
    """Regression test (adversary review): a write was counted pending *before* its
    copy, so a flush that started between the two (auto_flush's, another task's) cleared
    the count without having seen the bytes: ``pending_bytes()`` said 0, auto_flush
    skipped its final flush, and the write was never made durable.  The moment a write
    is counted (when the auto-flush listener hears of it) its bytes are in the map."""
    data = bytes([7]) * size
    seen: list[bool] = []
    async with await MmapRaw.create(log_file, 4 * MiB) as m:
        core = m._core

        def listener(pending: int) -> None:  # called as each write is counted
            # (the map is open and pinned by the write that calls this)
            seen.append(ctypes.string_at(core.addr, size) == data)

        core.dirty.claim_listener(listener)
        try:
            await m.update_region(0, data)
            m.update_region_nowait(0, data[:16])
        finally:
            core.dirty.drop_listener(listener)
        assert seen
        assert all(seen), seen
        assert m.pending_bytes() == size


async def test_auto_flush_leaves_nothing_unwritten_after_a_large_write(
    tmp_path: Path, backend_name: str
) -> None:
    """Regression test (adversary review), seen from the kernel: after an ``auto_flush``
    block around a large write (copied in a worker while the flusher flushes every
    millisecond), no page of the file is left dirty in the page cache.  Before the fix
    the flusher's msync during the copy cleared the count, the final flush was skipped,
    and tens of thousands of pages stayed unwritten."""
    path = tmp_path / "big.bin"
    data = os.urandom(64 * MiB)
    async with await MmapRaw.create(path, 64 * MiB) as m:
        check = os.open(path, os.O_RDONLY)
        try:
            if unwritten_pages(check) is None:
                pytest.skip("this kernel has no cachestat(2)")
            async with m.auto_flush(every=0.001, every_bytes=1 << 40):
                await anyio.sleep(0.005)
                await m.update_region(0, data)
            assert m.pending_bytes() == 0
            assert unwritten_pages(check) == 0
        finally:
            os.close(check)


def test_auto_flush_of_the_twin_leaves_nothing_unwritten(tmp_path: Path) -> None:
    """The same for the blocking twin (its flusher is a thread)."""
    path = tmp_path / "big.bin"
    data = os.urandom(64 * MiB)
    with anymmap.sync.MmapRaw.create(path, 64 * MiB) as m:
        check = os.open(path, os.O_RDONLY)
        try:
            if unwritten_pages(check) is None:
                pytest.skip("this kernel has no cachestat(2)")
            with m.auto_flush(every=0.001, every_bytes=1 << 40):
                threading.Event().wait(0.005)
                m.update_region(0, data)
            assert m.pending_bytes() == 0
            assert unwritten_pages(check) == 0
        finally:
            os.close(check)


async def test_writes_through_a_region_value_count_as_pending(tmp_path: Path) -> None:
    """Regression test (adversary review): ``Region.write`` (the synchronous fault-safe
    write of ``region()``) was not counted by ``pending_bytes()``, so ``auto_flush`` never
    flushed it, not even when its block ended."""
    async with await anymmap.MmapRegion.create(tmp_path / "region", MiB) as r:
        r.region().write(PAGE, b"via Region.write")
        assert r.pending_bytes() == 16
        await r.flush()
        assert r.pending_bytes() == 0
        async with r.auto_flush(every=3600):
            r.region().write(2 * PAGE, b"flushed at exit")
            assert r.pending_bytes() == 15
        assert r.pending_bytes() == 0


async def test_closing_the_map_inside_auto_flush_ends_the_block_quietly(
    log_file: Path, backend_name: str
) -> None:
    """Regression test (adversary review): a map closed inside its own ``auto_flush``
    block made the background flusher's next flush raise ``ClosedMapError``, and the
    block ended with an ``ExceptionGroup`` (the twin: a bare ``ClosedMapError`` from its
    thread) although the body had finished.  The flusher now stops with the map."""
    m = await MmapRaw.create(log_file, MiB)
    async with m.auto_flush(every=3600, every_bytes=1):
        await m.update_region(0, b"abc")
        await m.aclose()
        # Bytes still pending at the close (whether the flusher got to them first is a
        # race): the flusher is woken and finds the map closed.
        m._core.dirty.add(0, 3)
        await anyio.sleep(0.02)
        await wait_all_tasks_blocked()
    assert m.closed

    twin = anymmap.sync.MmapRaw.map_raw(log_file)
    with twin.auto_flush(every=3600, every_bytes=1):
        twin.update_region(0, b"abc")
        twin.close()
        twin._core.dirty.add(0, 3)
        threading.Event().wait(0.02)
    assert twin.closed


async def test_closing_the_map_inside_auto_flush_makes_the_final_flush(log_file: Path) -> None:
    """Regression test (adversary round 21): a map closed inside its ``auto_flush``
    block skipped the block's final flush silently (the close does not flush, and the
    block found the map closed).  The close now makes what is pending durable, as it
    does for queued flushes."""
    m = await MmapRaw.create(log_file, MiB)
    async with m.auto_flush(every=3600, every_bytes=1 << 40):
        await m.update_region(0, b"abc")
        await m.aclose()
    assert m._core._closing_sync is None  # synced by the close, and it succeeded

    twin = anymmap.sync.MmapRaw.map_raw(log_file)
    with twin.auto_flush(every=3600, every_bytes=1 << 40):
        twin.update_region(0, b"abc")
        twin.close()
    assert twin._core._closing_sync is None


def test_a_flush_racing_a_close_after_a_failed_close_is_not_called_durable(
    log_file: Path,
) -> None:
    """Regression test (adversary round 23): a close that synced what was owed, then
    failed with ``BorrowError`` (a view still alive), left its "synced" mark behind; a
    flush that found the map closed by a later close (which owed nothing, so synced
    nothing) took that mark for a sync covering it and returned as if durable, with no
    ``msync`` after its write.  It raises ``ClosedMapError``, as without the failed close."""
    m = anymmap.sync.MmapRaw.create(log_file, 16 * PAGE)
    core = m._core
    m.update_region(0, b"a" * PAGE)
    m.flush()  # the committer lingers: the close below owes it a sync
    kept = None
    with pytest.raises(anymmap.BorrowError), m.as_slice(0, 16) as view:
        kept = view[:4]  # escapes the borrow
    with pytest.raises(anymmap.BorrowError):
        m.close()  # synced the whole map, then refused: the view is alive
    assert not m.closed
    del kept
    deadline = time.monotonic() + 30
    while core.commit.outstanding() and time.monotonic() < deadline:
        time.sleep(0.005)  # (the committer ends: nothing is owed any more)
    assert not core.commit.outstanding()
    m.update_region(0, b"b" * PAGE)

    # Another thread's flush passes its checks, then waits here until the map is closed.
    checked, closed = threading.Event(), threading.Event()
    real_check = core.check_can_wait

    def check_then_wait() -> None:
        real_check()
        checked.set()
        closed.wait(30)

    core.check_can_wait = check_then_wait  # type: ignore[method-assign]
    outcome: list[BaseException | None] = []

    def flush() -> None:
        try:
            m.flush()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - checked below
            outcome.append(exc)

    flusher = threading.Thread(target=flush)
    flusher.start()
    assert checked.wait(30)
    m.close()  # owes nothing: no sync
    closed.set()
    flusher.join(30)
    assert len(outcome) == 1
    assert isinstance(outcome[0], anymmap.ClosedMapError), outcome


def _check_the_close_flushed(core: Any, raised: OSError | None) -> None:
    # (A page whose background writeback failed already is clean again: the close's
    # flush then succeeds, and the block ends quietly; the device fails it first.)
    assert core._closing_sync is not False  # the close flushed
    if isinstance(core._closing_sync, OSError):
        assert raised is not None
        assert raised.errno == errno.EIO
    else:
        assert raised is None


async def test_a_failed_flush_at_a_close_inside_auto_flush_ends_the_block_with_it(
    failing_device: Path,
) -> None:
    m = await MmapRaw.map_raw(failing_device)
    raised: OSError | None = None
    try:
        async with m.auto_flush(every=3600, every_bytes=1 << 40):
            await m.update_region(0, b"\xee" * 4 * MiB)
            await m.aclose()
    except OSError as exc:
        raised = exc
    _check_the_close_flushed(m._core, raised)


def test_a_failed_flush_at_a_close_inside_auto_flush_of_the_twin(failing_device: Path) -> None:
    m = anymmap.sync.MmapRaw.map_raw(failing_device)
    raised: OSError | None = None
    try:
        with m.auto_flush(every=3600, every_bytes=1 << 40):
            m.update_region(0, b"\xee" * 4 * MiB)
            m.close()
    except OSError as exc:
        raised = exc
    _check_the_close_flushed(m._core, raised)


# --- files anymmap creates ---------------------------------------------------------------


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "by-name"])
@pytest.mark.parametrize("prefill", ["allocate", "zeros"])
async def test_create(
    tmp_path: Path, prefill: str, unnamed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (by-name: as on a file system without O_TMPFILE, where the file is made by name)
    monkeypatch.setattr(_linux, "_UNNAMED_FILES", unnamed)
    path = tmp_path / "new.bin"
    old = os.umask(0o022)
    try:
        async with await MmapRaw.create(path, 3 * PAGE + 1, prefill=prefill) as m:  # type: ignore[arg-type]
            assert len(m) == 3 * PAGE + 1
            assert await m.read(0, len(m)) == bytes(len(m))
            await m.update_region(0, b"created")
            await m.flush()
            await m.resize(8 * PAGE)  # growth makes blocks the same way
    finally:
        os.umask(old)
    info = os.stat(path)
    assert stat.S_IMODE(info.st_mode) == 0o644
    assert info.st_blocks * 512 >= 8 * PAGE  # real blocks, not a hole
    with pytest.raises(FileExistsError, match="exist_ok=True"):
        await MmapRaw.create(path, PAGE)
    async with await MmapRaw.create(path, PAGE, exist_ok=True) as m:
        assert len(m) == 8 * PAGE  # never shrunk
        assert await m.read(0, 7) == b"created"
    async with await MmapRaw.open_or_create(path, 16 * PAGE, mode=0o600) as m:
        assert len(m) == 16 * PAGE  # grown
    async with await MmapRaw.open_or_create(tmp_path / "other", PAGE, mode=0o600) as m:
        assert stat.S_IMODE(os.stat(tmp_path / "other").st_mode) == 0o600


_ZEROS_INTO_A_FILE_ITS_MODE_MAKES_READ_ONLY = """
    import os, sys
    import anymmap.sync
    from tests._helpers import unwritten_extents

    def unwritten(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            return unwritten_extents(fd)
        finally:
            os.close(fd)

    folder = sys.argv[1]
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)  # (nobody: root may open any file for writing)
    for mode in (0o644, 0o444):
        path = os.path.join(folder, f"{mode:o}")
        m = anymmap.sync.MmapRaw.create(path, 1 << 20, prefill="zeros", mode=mode)
        made = unwritten(path)
        m.resize(2 << 20)
        m.update_region((2 << 20) - 5, b"grown")
        m.flush()
        print(f"{mode:o}: unwritten after create {made}, after growth {unwritten(path)}")
        m.close()
    # A map of the caller's own descriptor (O_APPEND), whose file then became read-only:
    # the zeros go through the caller's open file, which must keep its offset.
    path = os.path.join(folder, "callers")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, b"head")
    os.lseek(fd, 1, os.SEEK_SET)
    os.chmod(path, 0o444)
    with anymmap.sync.MmapRaw.map_raw(fd, prefill="zeros") as m:
        m.resize(1 << 20)
    print(f"caller's offset {os.lseek(fd, 0, os.SEEK_CUR)}, unwritten {unwritten(path)}")
    os.close(fd)
    print("ok")
"""


def test_zeros_are_written_into_a_file_whose_mode_refuses_writing() -> None:
    """Regression test (adversary round 64): ``prefill="zeros"`` appends through a
    descriptor that ``changing_size`` opens again (``O_APPEND``), which the mode of a
    file made ``mode=0o444`` refuses to a user who is not root, and the blocks were
    quietly left allocated, unwritten, at create and at every growth (and the growth
    took no turn).  The map's own descriptor appends now (``RWF_APPEND``), and takes
    the turn."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the scenario as another user")
    folder = tempfile.mkdtemp(prefix="anymmap-nobody-", dir="/var/tmp")  # (on disk)
    try:
        os.chmod(folder, 0o777)
        probe = os.path.join(folder, "probe")
        fd = os.open(probe, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, 1 << 16)
            if not unwritten_extents(fd):
                pytest.skip("this file system shows no unwritten extents")
        finally:
            os.close(fd)
            os.unlink(probe)
        out = check_child(_ZEROS_INTO_A_FILE_ITS_MODE_MAKES_READ_ONLY, folder)
        assert out.splitlines()[:-1] == [
            "644: unwritten after create False, after growth False",
            "444: unwritten after create False, after growth False",
            "caller's offset 1, unwritten False",
        ]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_OPEN_OR_CREATE_A_READ_ONLY_FILE = """
    import os, sys, anyio, anymmap, anymmap.sync
    import anyio._backends._asyncio  # (now: nobody may not read what /root holds)

    folder = sys.argv[1]
    path = os.path.join(folder, "read-only")
    with open(path, "wb") as f:
        f.write(b"x" * 4096)
    os.chmod(path, 0o444)
    closed = os.path.join(folder, "closed")
    os.mkdir(closed, 0o555)
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)  # (nobody: root may open any file for writing)

    async def open_or_create(path):
        (await anymmap.MmapRaw.open_or_create(path, 4096)).close()

    for call in (anymmap.sync.MmapRaw.open_or_create, anyio.run):
        try:
            if call is anyio.run:
                anyio.run(open_or_create, path)
            else:
                call(path, 4096).close()
        except PermissionError as exc:
            assert "mode='r'" in str(exc) and "read-only" in str(exc), exc
        else:
            raise AssertionError("no PermissionError")
        # The folder's refusal is not the file's: no such advice.
        try:
            anymmap.sync.MmapRaw.open_or_create(os.path.join(closed, "f"), 4096)
        except PermissionError as exc:
            assert "mode='r'" not in str(exc), exc
        else:
            raise AssertionError("no PermissionError")
    assert anymmap.sync.MmapRaw.map_raw(path, mode="r").read(0, 1) == b"x"  # the advice
    print("ok")
"""


def test_open_or_create_of_a_file_its_mode_makes_read_only_says_what_to_do() -> None:
    """Regression test (adversary round 73): ``open_or_create`` of an existing file
    that the user may not write raised a bare ``PermissionError``, where ``map_raw`` of
    the same file says to pass ``mode='r'``; it gives that advice too."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the scenario as another user")
    folder = tempfile.mkdtemp(prefix="anymmap-nobody-")
    try:
        os.chmod(folder, 0o777)
        check_child(_OPEN_OR_CREATE_A_READ_ONLY_FILE, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def test_create_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(anymmap.InvalidSizeError):
        await MmapRaw.create(tmp_path / "zero", 0)
    with pytest.raises(ValueError, match="prefill"):
        await MmapRaw.create(tmp_path / "p", PAGE, prefill="lots")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode"):
        await MmapRaw.create(tmp_path / "m", PAGE, mode=0o70000)
    for special in (0o4755, 0o2755, 0o1777):  # (adversary round 21: 0o7777 made 0o7755)
        with pytest.raises(ValueError, match="setuid"):
            await MmapRaw.create(tmp_path / "m", PAGE, mode=special)
    with pytest.raises(TypeError):
        await MmapRaw.create(3, PAGE)  # type: ignore[arg-type]
    with pytest.raises(IsADirectoryError):
        await MmapRaw.create(tmp_path, PAGE, exist_ok=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("prefill", ["allocate", "zeros"])
def test_open_or_create_refuses_what_map_raw_refuses(
    tmp_path: Path, prefill: Literal["allocate", "zeros"]
) -> None:
    """Regression test (adversary review): ``open_or_create`` and ``create(exist_ok=True)``
    gave a socket a plain ``OSError(ENXIO)``, and opened a ``/proc`` file for writing and
    tried to allocate (or zero-fill) it before any check (``OSError(ESPIPE)``); both are
    ``UnmappableFileError`` naming what they are, as from ``map_raw``, before anything is
    written."""
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        for target, kind in ((tmp_path / "sock", "socket"), (Path("/proc/self/status"), "/proc")):
            with pytest.raises(anymmap.UnmappableFileError, match=kind):
                anymmap.sync.MmapRaw.open_or_create(target, 1 << 20)
            with pytest.raises(anymmap.UnmappableFileError, match=kind):
                anymmap.sync.MmapRaw.create(target, 1 << 20, exist_ok=True, prefill=prefill)


def test_open_or_create_opens_a_file_another_caller_creates_meanwhile(tmp_path: Path) -> None:
    """Regression test (adversary round 21): ``open_or_create`` opens, and creates if
    the open found nothing; a file another caller created between the two made it raise
    ``FileExistsError`` "pass exist_ok=True" (about 9% of the calls of six threads
    racing on one path).  It opens the file on the next turn."""
    path = tmp_path / "shared"
    misses: list[str] = []

    def hook(frame: Any, event: str, arg: Any) -> None:
        # As the first open(2) finds nothing, another caller creates the file.
        if event == "c_exception" and arg is os.open and not misses:
            misses.append(frame.f_code.co_name)
            path.write_bytes(b"theirs".ljust(PAGE, b"\0"))

    calls: list[Callable[[], anymmap.sync.MmapRaw]] = [
        lambda: anymmap.sync.MmapRaw.open_or_create(path, 2 * PAGE),
        lambda: anymmap.sync.MmapRaw.create(path, 2 * PAGE, exist_ok=True),
    ]
    for call in calls:
        path.unlink(missing_ok=True)
        misses.clear()
        sys.setprofile(hook)
        try:
            m = call()
        finally:
            sys.setprofile(None)
        assert misses == ["open_create"]
        with m:
            assert len(m) == 2 * PAGE  # theirs, grown to the size asked
            assert m.read(0, 6) == b"theirs"


_RACING_OPENER = """
    import os, sys, time
    import anymmap.sync as S
    folder, me, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    time.sleep(max(0.0, start - time.time()))  # (all begin together)
    for r in range(int(sys.argv[4])):
        path = os.path.join(folder, f"f{r}")
        prefill = "zeros" if r % 2 else "allocate"
        with S.MmapRaw.open_or_create(path, 2 * 4096, prefill=prefill) as m:
            m.update_region(me * 8, bytes([me + 1]) * 8)
            m.flush()
    print("ok")
"""


def test_open_or_create_from_racing_processes(tmp_path: Path) -> None:
    """Four processes call ``open_or_create`` on the same new paths at once (50 paths,
    half prefilled with zeros, half allocated): every call succeeds, all map one file
    (none replaced another's), and no creator's prefill wipes what a faster opener wrote
    meanwhile."""
    import concurrent.futures

    from ._child import check_child

    start, rounds = time.time() + 2, 50
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        runs = [
            pool.submit(
                check_child, _RACING_OPENER, str(tmp_path), str(me), str(start), str(rounds)
            )
            for me in range(4)
        ]
        for run in runs:
            run.result()
    for r in range(rounds):
        data = (tmp_path / f"f{r}").read_bytes()
        assert len(data) == 2 * PAGE
        assert data[:32] == b"".join(bytes([me + 1]) * 8 for me in range(4)), r


def test_create_through_a_dangling_link_says_so(tmp_path: Path) -> None:
    """Regression test (adversary round 21): a symbolic link to a missing file gave
    ``FileExistsError`` "pass exist_ok=True to map it anyway" even with
    ``exist_ok=True``; no file is created through a link, and the error says why."""
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "missing")
    with pytest.raises(FileExistsError, match="symbolic link"):
        anymmap.sync.MmapRaw.open_or_create(link, PAGE)
    with pytest.raises(FileExistsError, match="symbolic link"):
        anymmap.sync.MmapRaw.create(link, PAGE, exist_ok=True)
    # (Adversary round 67: it said "pass exist_ok=True to map it anyway".)
    with pytest.raises(FileExistsError, match=r"link to a missing file.*would not help"):
        anymmap.sync.MmapRaw.create(link, PAGE)
    assert not (tmp_path / "missing").exists()


async def test_a_cancelled_zero_prefill_stops_early_and_leaves_nothing(
    tmp_path: Path, backend_name: str
) -> None:
    """Regression test (adversary round 66): a cancellation of ``create`` or a growing
    ``resize`` with ``prefill="zeros"`` waited for every zero (6 s for 2 GiB on ext4).
    The zeros are written in steps, and a cancelled caller stops them at the next: the
    call ends well before the whole fill would have (the control: the same fill done,
    in the same test), undone (no file; the map and its file at their old size)."""
    size = 1024 * MiB  # (192 MiB filled in 0.19 s on a busy machine: too close to a stop)
    started = time.perf_counter()
    m = await MmapRaw.create(tmp_path / "control", size, prefill="zeros")
    whole = time.perf_counter() - started
    await m.aclose()
    (tmp_path / "control").unlink()

    async def cancelled(call: Callable[[], Awaitable[object]]) -> float:
        started = time.perf_counter()
        with anyio.move_on_after(0.01) as scope:
            await call()
        assert scope.cancelled_caught
        return time.perf_counter() - started

    path = tmp_path / "f"
    took = await cancelled(lambda: MmapRaw.create(path, size, prefill="zeros"))
    assert took < whole / 2, (took, whole)
    assert list(tmp_path.iterdir()) == []
    async with await MmapRaw.create(path, PAGE, prefill="zeros") as m:
        took = await cancelled(lambda: m.resize(size))
        assert took < whole / 2, (took, whole)
        assert (len(m), path.stat().st_size) == (PAGE, PAGE)
        await m.resize(2 * PAGE)  # (the map is usable)
    # An existing file's growth is cut back (its own mapping in the making not counted
    # as another map that may show the growth: round 70).
    took = await cancelled(lambda: MmapRaw.open_or_create(path, size, prefill="zeros"))
    assert took < whole / 2, (took, whole)
    assert path.stat().st_size == 2 * PAGE
    if backend_name == "asyncio":  # a native cancellation too
        path.unlink()
        started = time.perf_counter()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(MmapRaw.create(path, size, prefill="zeros"), 0.01)
        assert time.perf_counter() - started < whole / 2
        assert list(tmp_path.iterdir()) == []


def test_create_over_something_that_is_not_a_file_gives_advice_that_works(
    tmp_path: Path,
) -> None:
    """Regression test (adversary round 66): ``create`` over a directory, socket or
    device said "pass exist_ok=True to map it anyway", and with it the create failed
    all the same (round 68: a file in /proc too).  The message says what is there, and
    that exist_ok would not help."""
    (tmp_path / "dir").mkdir()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock"))
    try:
        cases: list[tuple[str | Path, str]] = [
            (tmp_path / "dir", "directory"),
            (tmp_path / "sock", "socket"),
            ("/dev/null", "character device"),
            ("/proc/self/status", "file in /proc, which cannot be mapped"),
        ]
        for path, kind in cases:
            with pytest.raises(FileExistsError, match=f"is a {kind}.*would not help"):
                anymmap.sync.MmapRaw.create(path, PAGE)
            with pytest.raises(OSError) as info:  # (the advice would not have helped)
                anymmap.sync.MmapRaw.create(path, PAGE, exist_ok=True)
            assert not isinstance(info.value, FileExistsError)
    finally:
        server.close()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # (round 69)
    with pytest.raises(FileExistsError, match=r"a loop of links.*would not help"):
        anymmap.sync.MmapRaw.create(tmp_path / "loop", PAGE)
    with pytest.raises(OSError) as info:
        anymmap.sync.MmapRaw.create(tmp_path / "loop", PAGE, exist_ok=True)
    assert info.value.errno == errno.ELOOP
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="pass exist_ok=True"):
        anymmap.sync.MmapRaw.create(tmp_path / "file", PAGE)
    anymmap.sync.MmapRaw.create(tmp_path / "file", PAGE, exist_ok=True).close()


async def test_create_on_a_full_disk_fails_at_once_and_leaves_nothing(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mounted = await anyio.run_process(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=False
    )
    if mounted.returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        for prefill in ("allocate", "zeros"):
            with pytest.raises(OSError, match="No space") as info:
                await MmapRaw.create(small / "big", 8 * MiB, prefill=prefill)
            assert info.value.errno == errno.ENOSPC
            assert list(small.iterdir()) == []
    finally:
        await anyio.run_process(["umount", "-l", str(small)], check=False)


# -- pending bytes that no flush could ever clear (adversary findings) ------------------


async def test_a_shrink_forgets_what_was_pending_past_the_new_end(log_file: Path) -> None:
    async with await MmapRaw.create(log_file, 16 * MiB) as m:
        await m.update_region(8 * MiB, b"x" * (8 * MiB))
        await m.update_region(0, b"y" * PAGE)
        await m.resize(MiB)
        assert m.pending_bytes() == PAGE  # only what the map still covers
        await m.flush()
        assert m.pending_bytes() == 0
        before = m._core.commit.msyncs
        async with m.auto_flush(every=10, every_bytes=PAGE):
            await anyio.sleep(0.2)  # nothing written: nothing to flush
        assert m._core.commit.msyncs - before <= 1  # it spun thousands of times before


async def test_shrinking_a_window_flushes_what_it_leaves_in_the_file(log_file: Path) -> None:
    """Regression test (adversary review): shrinking a window in the middle of a file
    (the file is not cut) forgot the bytes written past the new end, which stayed in
    the file, dirty; grown back over them, the map reported nothing pending and
    ``auto_flush`` left them unwritten.  The shrink now flushes them first."""
    with open(log_file, "wb") as f:
        f.write(bytes(16 * MiB))
        os.fsync(f.fileno())  # nothing dirty but what the map writes
    async with await MmapRaw.map_raw(log_file, offset=0, length=8 * MiB) as m:
        check = os.open(log_file, os.O_RDONLY)
        try:
            if unwritten_pages(check) is None:
                pytest.skip("this kernel has no cachestat(2)")
            await m.update_region(6 * MiB, b"important")
            await m.update_region(0, b"kept")
            if not unwritten_pages(check, 4 * MiB, 4 * MiB):  # (a sync by anyone writes back)
                pytest.skip("the kernel wrote the pages back before the shrink")
            await m.resize(2 * MiB)
            assert os.path.getsize(log_file) == 16 * MiB  # a window: the file is not cut
            assert m.pending_bytes() == 4
            assert unwritten_pages(check, 4 * MiB, 4 * MiB) == 0  # left behind: durable
            await m.resize(8 * MiB)
            assert await m.read(6 * MiB, 9) == b"important"
            async with m.auto_flush(every=10):
                pass
            assert m.pending_bytes() == 0
            assert unwritten_pages(check) == 0
        finally:
            os.close(check)


@pytest.mark.parametrize("mode", ["r", "copy"])
async def test_maps_whose_pages_never_reach_the_file_have_nothing_pending(
    log_file: Path, mode: str
) -> None:
    log_file.write_bytes(bytes(MiB))
    async with await MmapRaw.map_raw(log_file, mode=mode) as m:  # type: ignore[arg-type]
        if mode == "copy":
            await m.update_region(0, b"x" * PAGE)
            async with m.as_mut_slice(PAGE, PAGE) as view:
                view[:] = bytes(PAGE)
        assert m.pending_bytes() == 0
        before = m._core.commit.msyncs
        async with m.auto_flush(every=10, every_bytes=PAGE):
            await anyio.sleep(0.2)
        assert m._core.commit.msyncs == before


def test_a_flush_queued_before_a_shrink_flushes_what_is_left(log_file: Path) -> None:
    # The committer runs a request made before the shrink (a range then valid) after it:
    # it flushes what the map still covers instead of raising OutOfBoundsError.
    with anymmap.sync.MmapRaw.create(log_file, 16 * MiB) as m:
        m.update_region(16 * MiB - PAGE, b"z" * PAGE)
        m.resize(MiB)
        m._core._durable(16 * MiB - PAGE, PAGE)  # what the committer calls
        m._core._durable(MiB - 10, PAGE)
        assert m.pending_bytes() == 0


# --- what pending bytes cost ---------------------------------------------------------------


def test_random_writes_cost_the_same_with_many_ranges_pending() -> None:
    """Disjoint writes never merge: each write once re-sorted every range past 1,024 of
    them (a 4 KiB write into a big file took 127 µs instead of 8).  Compared with the
    same writes into an empty set, measured here.  (Past 4,096 separate ranges the count
    is rounded out to pages and coarser: it never falls below the bytes written.)"""
    from anymmap._core._commit import DirtyRanges

    def cost_of_writes(dirty: DirtyRanges, base: int) -> float:
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for i in range(500):
                dirty.add(base + 2 * i * PAGE, base + (2 * i + 1) * PAGE)
            best = min(best, time.perf_counter() - started)
            base += 1000 * PAGE
        return best

    crowded = DirtyRanges()
    for i in range(8192):  # disjoint: a page every other page
        crowded.add(2 * i * PAGE, (2 * i + 1) * PAGE)
    assert crowded.pending() >= 8192 * PAGE
    control = cost_of_writes(DirtyRanges(), 0)
    measured = cost_of_writes(crowded, 1 << 40)
    assert measured < 20 * control, (measured, control)
    assert crowded.pending() >= (8192 + 2500) * PAGE
    crowded.clean(0, 1 << 40, crowded.mark())
    assert crowded.pending() >= 2500 * PAGE


def test_many_disjoint_writes_are_counted_in_bounded_memory() -> None:
    """Regression test (adversary review): every disjoint write kept a range of its own
    until a flush (about 170 bytes each: 17 MB for 100,000 small random writes), and
    counting them sorted them all on the event loop thread.  Past 4,096 separate ranges
    they are now rounded out to pages (then coarser blocks): the count may be high,
    never low, and it is exact again once everything is flushed."""
    import random
    import tracemalloc

    from anymmap._core._commit import DirtyRanges

    rng = random.Random(7)
    dirty = DirtyRanges()
    starts = rng.sample(range(1 << 28), 100_000)  # disjoint 16-byte writes in 64 GiB
    tracemalloc.start()
    try:
        for i, page in enumerate(starts):
            dirty.add(page * 256, page * 256 + 16)
            if i % 10_000 == 0:
                assert dirty.pending() >= (i + 1) * 16
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 4 << 20, held
    counted = dirty.pending()
    assert 100_000 * 16 <= counted <= (1 << 36)
    # A write made while a flush runs stays pending after it, coarse or not.
    upto = dirty.mark()
    dirty.add(5 * PAGE + 1, 5 * PAGE + 2)
    dirty.clean(0, 1 << 36, upto)
    assert 1 <= dirty.pending() <= (1 << 36)
    dirty.clean(0, 1 << 36, dirty.mark())
    assert dirty.pending() == 0
    dirty.add(PAGE + 3, PAGE + 8)  # all flushed: exact again
    dirty.add(3 * PAGE, 3 * PAGE + 1)
    assert dirty.pending() == 6


async def test_pending_bytes_of_many_scattered_writes_through_a_map(tmp_path: Path) -> None:
    """The same through a real map: thousands of scattered writes into a sparse file
    count at least what was written and at most the map, and a flush clears them."""
    path = tmp_path / "scattered"
    size = 1 << 30
    with open(path, "wb") as f:
        f.truncate(size)
    async with await MmapRaw.map_raw(path) as m:
        for i in range(5000):  # more separate ranges than are counted exactly
            await m.update_region(i * 40 * PAGE + 7, b"xy")
        assert 10_000 <= m.pending_bytes() <= size
        await m.flush()
        assert m.pending_bytes() == 0
        await m.update_region(size - 3, b"abc")
        assert m.pending_bytes() == 3


def test_a_count_taken_inside_the_bookkeeping_is_never_too_low() -> None:
    """Regression test (adversary review): a write deferred because it was made inside
    the bookkeeping (by a finalizer) left the queue before it was counted, and a count
    taken by another finalizer in between missed it.  A trace function takes the count
    at every line of the drain that applies it, and of a write and a count after it."""
    dirty = DirtyRanges()
    dirty.add(0, 10)
    with dirty._lock:  # as a finalizer run inside add() holding the lock
        dirty.add(100, 1100)  # deferred
        assert dirty.pending() >= 1010
    counts: list[int] = []

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "line" and dirty._lock._is_owned():  # type: ignore[attr-defined]
            counts.append(dirty.pending())  # (nested: nothing drains)
        return local

    def hook(frame: Any, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename.endswith("_commit.py") else None

    sys.settrace(hook)
    try:
        dirty.add(5000, 5001)  # drains the deferred write first
        total = dirty.pending()
    finally:
        sys.settrace(None)
    assert total == 1011
    assert len(counts) > 10
    assert min(counts) >= 1010, counts
