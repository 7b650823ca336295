"""What the blocking twins share: locking, bounds, copies, borrows and closing."""

from __future__ import annotations

import sys
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from functools import partial
from queue import Empty, SimpleQueue
from types import TracebackType
from typing import Any, TypeVar

from anyio import WouldBlock

from .._advice import check_advice
from .._core._buffers import BufferLike
from .._core._checks import (
    after_failed_copy,
    as_int,
    byte_view,
    check_flush_policy,
    check_populate_args,
    check_size,
)
from .._core._file import FileBackedCore
from .._core._handle import CoreT, MapHandle
from .._core._lifetime import escape_error
from .._core._map import MapCore, ProgressCallback
from .._core._threadlock import ThreadRWLock
from .._errors import ClosedMapError
from .._sys import DISARMED, Hold, start_thread, whole

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self


_NOT_IN_MEMORY = (
    "a page of the range is not in memory (it would be read from the disk); {call}() waits for it"
)


FileCoreT = TypeVar("FileCoreT", bound=FileBackedCore)


class SyncMap(MapHandle[CoreT]):
    """Base of the blocking maps.  Thread-safe: copies and borrows take a read-write lock
    (many readers or one writer), ``resize`` and ``close`` take it exclusively."""

    __slots__ = ("_lock",)

    def _setup(self) -> None:
        # A call made by a finalizer inside one of this map's pinned calls must not wait
        # for a writer (a resize or close may be waiting for that pin).
        self._lock = ThreadRWLock(before_wait=self._core.check_may_wait)

    # -- copies -----------------------------------------------------------------------

    def read_into(self, offset: int, buf: BufferLike) -> None:
        """Fill the writable buffer ``buf`` with the bytes of the map from ``offset`` on
        (as many bytes as ``buf`` holds: ``memoryview(buf).nbytes``, not ``len(buf)`` for a
        typed array).

        :raises OutOfBoundsError: if the range is not inside the map
        :raises TypeError: if ``buf`` is not a writable, C-contiguous buffer
        :raises MappingFaultError: (an :exc:`OSError`, ``errno.EFAULT``) if a page of the
            range cannot be read: the file was truncated by another process, or the range
            touches a hole of a sparse map; the process lives on
        :raises RuntimeError: if the calling thread holds a writable borrow of this map
            (the copy would wait for itself)
        :raises ClosedMapError: if the map is closed
        """
        dst: memoryview | None = None
        try:
            offset, dst = as_int(offset, "offset"), byte_view(buf, writable=True)
            with self._lock.read():
                self._open_core().read(offset, dst)
        except BaseException as exc:
            after_failed_copy(dst, buf, exc)
            del buf, dst  # (a traceback the caller keeps must not keep them)
            raise

    def read(self, offset: int, length: int) -> bytes:
        """Return ``length`` bytes starting at ``offset`` (raises as :meth:`read_into`)."""
        offset, length = as_int(offset, "offset"), as_int(length, "length")
        with self._lock.read():
            data = self._open_core().read_bytes(offset, length)
            return data if isinstance(data, bytes) else data()

    def update_region(self, offset: int, data: BufferLike) -> None:
        """Copy the bytes-like ``data`` into the map at ``offset``.

        :raises OutOfBoundsError: if the range is not inside the map
        :raises TypeError: if ``data`` is not a C-contiguous bytes-like object
        :raises ReadOnlyError: if the map is read-only
        :raises MappingFaultError: (an :exc:`OSError`, ``errno.EFAULT``) if a page of the
            range cannot be written: the file was truncated by another process, or the
            range touches a hole or a read-only piece of a sparse map; the process lives on
        :raises RuntimeError: if the calling thread holds a borrow of this map (the copy
            would wait for itself)
        :raises ClosedMapError: if the map is closed
        """
        src: memoryview | None = None
        try:
            offset, src = as_int(offset, "offset"), byte_view(data, writable=False)
            with self._lock.write():
                self._open_core().write(offset, src)
        except BaseException as exc:
            after_failed_copy(src, data, exc)
            del data, src  # (a traceback the caller keeps must not keep them)
            raise

    def read_into_nowait(self, offset: int, buf: BufferLike) -> None:
        """Like :meth:`read_into`, but raise :exc:`anyio.WouldBlock` instead of waiting for
        a writer or for the disk (the contents of ``buf`` are then unspecified)."""
        dst: memoryview | None = None
        try:
            offset, dst = as_int(offset, "offset"), byte_view(buf, writable=True)
            with self._lock.read(blocking=False):
                if not self._open_core().try_read(offset, dst):
                    raise WouldBlock(_NOT_IN_MEMORY.format(call="read_into"))
        except BaseException as exc:
            after_failed_copy(dst, buf, exc)
            del buf, dst  # (a traceback the caller keeps must not keep them)
            raise

    def update_region_nowait(self, offset: int, data: BufferLike) -> None:
        """Like :meth:`update_region`, but raise :exc:`anyio.WouldBlock` instead of waiting
        for a borrow or for the disk."""
        src: memoryview | None = None
        try:
            offset, src = as_int(offset, "offset"), byte_view(data, writable=False)
            with self._lock.write(blocking=False):
                if not self._open_core().try_write(offset, src):
                    raise WouldBlock(_NOT_IN_MEMORY.format(call="update_region"))
        except BaseException as exc:
            after_failed_copy(src, data, exc)
            del data, src  # (a traceback the caller keeps must not keep them)
            raise

    # -- borrows ----------------------------------------------------------------------

    def as_slice(self, offset: int, length: int) -> AbstractContextManager[memoryview]:
        """Borrow a read-only view of ``[offset, offset + length)`` for a ``with`` block.

        Holds the read lock for the block; the view is released when it ends.  Unlike the
        copy methods, a view of a file map is not protected against the file being
        truncated meanwhile: touching a page past the new end raises SIGBUS.
        """
        return _Borrow(self, as_int(offset, "offset"), as_int(length, "length"), False)

    def as_mut_slice(self, offset: int, length: int) -> AbstractContextManager[memoryview]:
        """Borrow a writable view of ``[offset, offset + length)`` for a ``with`` block.

        Holds the write lock for the block; see :meth:`as_slice`.
        """
        return _Borrow(self, as_int(offset, "offset"), as_int(length, "length"), True)

    # -- memory management ------------------------------------------------------------

    def populate(
        self,
        offset: int = 0,
        length: int | None = None,
        *,
        write: bool = False,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Fault the pages of the range into memory now (``MADV_POPULATE_READ``/``WRITE``).

        ``progress(done, total)`` is called after each 16 MiB chunk.
        """
        check_populate_args(write, progress)
        core = self._open_core()
        if write:
            core.check_writable()  # before the range, as for every write
        start, n = core.check_span(offset, length)
        core.populate(start, n, write, progress)

    def advise(self, advice: int, offset: int = 0, length: int | None = None) -> None:
        """Give the kernel :class:`~anymmap.Advice` about the range (``madvise``)."""
        value = check_advice(advice)
        core = self._open_core()
        start, n = core.check_span(offset, length)
        core.advise(value, start, n)

    def _change_mapping(self, change: Callable[..., None], *args: object) -> None:
        """Run ``change(*args)``, which changes what is mapped where, under the write lock
        (it waits for borrows and copies of other threads to end)."""
        with self._lock.write():
            self._open_core()
            change(*args)

    def close(self) -> None:
        """Wait for borrows and copies to finish, then unmap.  Closing twice is fine.

        :raises BorrowError: if an object exported from a borrow is still alive (the map
            then stays open)
        :raises WriteBackError: if a write-back of the map failed and no call raised it
            yet (the flushes that met it were cancelled, or it was another map's of the
            file); the map is closed all the same (once: a later close says nothing)
        """
        with self._lock.write():
            self._core.close()
            self._closed()
        failed = self._core.unheard_failure()
        if failed is not None:
            raise failed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.close()


class ResizableSyncMap(SyncMap[CoreT]):
    """A blocking map whose size can change (anonymous and file maps)."""

    __slots__ = ()

    def resize(self, new_size: int) -> None:
        """Grow or shrink the map once no borrow or copy is running; see
        :meth:`anymmap.AnonymousMmap.resize`."""
        size = check_size(new_size)
        self._open_core().check_resizable()
        with self._lock.write():
            self._open_core().resize(size)


class DirectAccessSyncMap(SyncMap[CoreT]):
    """Single-instruction loads and stores (sparse maps and shared regions)."""

    __slots__ = ()

    def atomic_load(self, offset: int, size: int) -> int:
        """A single aligned load; see :meth:`anymmap.SparseMapping.atomic_load`."""
        offset, size = as_int(offset, "offset"), as_int(size, "size")
        with self._lock.read():
            return self._open_core().atomic_load(offset, size)

    def atomic_store(self, offset: int, size: int, value: int) -> None:
        """A single aligned store; see :meth:`anymmap.SparseMapping.atomic_store`."""
        offset, size = as_int(offset, "offset"), as_int(size, "size")
        value = as_int(value, "value")
        with self._lock.read():
            self._open_core().atomic_store(offset, size, value)


class FlushingSyncMap(SyncMap[FileCoreT]):
    """The flush family of the blocking maps of files."""

    __slots__ = ()

    def flush(self) -> None:
        """Write the dirty pages to the file; durable when it returns.  Concurrent flushes
        from several threads share their ``msync`` calls (group commit); see
        :meth:`anymmap.MmapRaw.flush`."""
        core = self._open_core()
        self._commit(core, 0, core.length)

    def _flush_for_block(self) -> None:
        """:meth:`flush` for an ``auto_flush`` block: a write-back failure it meets is
        the block's to report (``FileBackedCore.auto_flush_error``), not heard yet."""
        core = self._open_core()
        self._commit(core, 0, core.length, to_caller=False)

    def flush_range(self, offset: int, length: int) -> None:
        """Like :meth:`flush`, for ``[offset, offset + length)`` (need not be aligned)."""
        core = self._open_core()
        start, n = core.check_range(offset, length)
        self._commit(core, start, n)

    @staticmethod
    def _commit(core: FileBackedCore, start: int, n: int, *, to_caller: bool = True) -> None:
        core.check_open()  # (an __index__ of the range may have closed it)
        if core.mode != "rw" or not n:
            core.check_written_back(to_caller=to_caller)  # (a flush of nothing, after a failure)
            return
        core.check_can_wait()  # the committer's pin would wait for this thread
        # A C queue, not a threading.Event: a Ctrl-C storm could cut the Event's Python
        # wait half-way and leave its lock taken, and the committer then waited for ever
        # to set it (and every later flush of the map with it).
        done: SimpleQueue[None] = SimpleQueue()
        request = core.submit_commit(start, start + n, partial(done.put, None))
        done.get()
        core.result_of(request, to_caller=to_caller)

    def pending_bytes(self) -> int:
        """Bytes written since a durable flush last covered them (0 for ``"r"`` and
        ``"copy"`` maps); see :meth:`anymmap.MmapRaw.pending_bytes`."""
        return self._open_core().dirty.pending()

    def auto_flush(
        self, every: float = 0.05, every_bytes: int = 8 << 20
    ) -> AbstractContextManager[None]:
        """Flush from a thread while the block runs, and what is pending at its end; see
        :meth:`anymmap.MmapRaw.auto_flush`.  The thread is joined before the block
        exits.  A background flush that fails does not end the block (a thread cannot):
        the thread retries at the interval, and the block's exit raises the first error
        (the block's own exception wins over it).

        :raises ValueError: for a bound that is not positive
        :raises RuntimeError: (on entry) if the map already flushes automatically
        """
        return _AutoFlush(self, *check_flush_policy(every, every_bytes))

    def flush_async(self) -> None:
        """Start writeback of the dirty pages and return; not durable."""
        self._open_core().flush(0, None, False)

    def flush_async_range(self, offset: int, length: int) -> None:
        """Start writeback of ``[offset, offset + length)`` and return; not durable."""
        core = self._open_core()
        core.flush(*core.check_range(offset, length), False)


class _AutoFlush(Hold):
    """``with m.auto_flush():`` of a blocking twin.  A class, not a ``@contextmanager``
    generator, for the reason :class:`_Borrow` gives: under a storm of Ctrl-C the
    generator form left the map's auto-flush claim taken ("already flushes
    automatically" for good) when a signal was handled as its ``__enter__`` returned.
    Here the give-back (drop the claim, stop the thread) is armed before the claim is
    taken, runs if anything raises in ``__enter__``, and runs when the hold is dropped
    if a signal skipped ``__exit__``.  Only ``__exit__`` joins the thread and flushes
    what is pending; the thread is a daemon, which a dropped hold's stop lets end."""

    _flusher: _Flusher | None = None

    def __init__(self, facade: FlushingSyncMap[Any], interval: float, threshold: int) -> None:
        self._map: FlushingSyncMap[Any] = facade
        self._interval = interval
        self._threshold = threshold

    def __enter__(self) -> None:
        if self._flusher is not None:
            raise RuntimeError("this auto_flush() block was entered already")
        self._map._open_core().check_not_syncing()  # (its exit waits for its thread)
        flusher = self._flusher = _Flusher(self._map, self._interval, self._threshold, self)
        try:
            # (Armed first: stopping is harmless before claim().  A partial, C code, like
            # the give-back of every hold: a bound method of a Python class would not be.)
            self._on_drop = partial(_Flusher.stop, flusher)
            flusher.claim()
            return  # (inside the try: a signal handled as it returns is undone)
        except BaseException:
            flusher.stop()
            self._on_drop = DISARMED
            raise

    def __exit__(self, exc_type: type[BaseException] | None, *exc_rest: object) -> None:
        self._on_drop()
        self._on_drop = DISARMED
        flusher = self._flusher
        if flusher is not None:
            flusher.finish(failed=exc_type is not None)


class _Flusher:
    """The thread of one ``auto_flush`` block and what it shares with the block.  It
    holds no reference to the block's hold, so that dropping the hold stops it."""

    def __init__(
        self, facade: FlushingSyncMap[Any], interval: float, threshold: int, block: _AutoFlush
    ) -> None:
        self._map = facade
        self._core: FileBackedCore = facade._open_core()
        self._interval = min(interval, threading.TIMEOUT_MAX)  # (every=inf: bytes only)
        self._threshold = threshold
        # A C queue, not a threading.Event, for the reason FlushingSyncMap._commit gives:
        # writes on the main thread wake the thread, and a Ctrl-C that cut an Event's
        # ``with`` left its lock taken, so the thread slept for good (and the next write
        # that woke it waited for ever).  Any item means "look again"; each wait empties it.
        self._wake: SimpleQueue[object] = SimpleQueue()
        # The block, weakly: a block dropped without its give-back (a second Ctrl-C
        # handled as the give-back began) wakes the thread as it goes (the callback is
        # C code), and the thread then ends and gives the claim back.  Without this the
        # thread kept its own claim alive for good (adversary round 23).
        self._block = weakref.ref(block, self._wake.put)
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.failures: list[BaseException] = []
        # One bound method, kept: the map recognises its listener by identity.
        self._listener: Callable[[int], None] = self._written
        #: The thread waits for a first write (nothing is pending): any write wakes it.
        self._idle = False

    def _written(self, pending: int) -> None:
        """The map's listener: wake the thread once enough bytes are pending, or at the
        first write while it waits for one."""
        if pending >= self._threshold or self._idle:
            self._idle = False  # (once: the writes of a burst make no wake-up each)
            self._wake.put(None)

    def claim(self) -> None:
        """Become the map's one auto-flush policy and start the thread.  A daemon thread,
        so that a block whose exit never ran cannot hold up the interpreter's exit."""
        self._core.dirty.claim_listener(self._listener)
        thread = threading.Thread(target=self._run, name="anymmap auto flush", daemon=True)
        self._thread = thread
        start_thread(thread)

    @whole
    def stop(self) -> None:
        """Give the claim back (only if it is ours) and tell the thread to end; any
        number of times, from any thread."""
        try:
            self._core.dirty.drop_listener(self._listener)
        finally:
            self._stopped = True
            self._wake.put(None)

    def finish(self, failed: bool) -> None:
        """After :meth:`stop`: wait for the thread, flush what is pending, and raise
        what :meth:`FileBackedCore.auto_flush_error` says."""
        thread, core = self._thread, self._core
        if thread is None or thread.ident is None:
            return  # (never started: the entry raised)
        thread.join()
        final: BaseException | None = None
        if not core.closed and core.dirty.pending():  # (also when the block failed)
            try:
                self._map._flush_for_block()
            except Exception as exc:  # noqa: BLE001 - raised below, by the rule
                final = exc
        error = core.auto_flush_error(self.failures, final, failed=failed, ended=not failed)
        if error is not None:
            raise error

    def _run(self) -> None:
        # A failed flush cannot end the block from this thread (the async form cancels
        # it): keep flushing, so that what the block writes next still becomes durable,
        # and raise the first error when the block ends.
        core, wait = self._core, self._interval
        failures = self.failures
        # (Closed: nothing to flush through it.  No longer the listener: the block's claim
        # was given back, by a stop() that a second signal may have cut short.)
        block = self._block
        while (
            not self._stopped
            and block() is not None
            and not core.closed
            and core.dirty.listener is self._listener
        ):
            if failures:  # retry at the interval, not at every write
                until = time.monotonic() + wait
                while not self._stopped and (left := until - time.monotonic()) > 0:
                    self._sleep(left)
                    if block() is None:
                        break
            elif not core.dirty.pending():
                # Nothing to flush: wait for a write (or the block's end), not for a
                # tiny interval (a wake-up every ``every`` seconds for nothing); the
                # interval counts from the first write.  (At least once a second: a
                # close of the map, which wakes nothing, ends the thread.)
                self._idle = True
                try:
                    if not core.dirty.pending():  # (a write before the flag was up)
                        self._sleep(max(wait, 1.0))
                finally:
                    self._idle = False
                continue
            elif core.dirty.pending() < self._threshold:
                self._sleep(wait)
            else:
                self._sleep(0)  # (forget the wakes this flush answers)
            if self._stopped or block() is None or not core.dirty.pending():
                continue
            try:
                self._map._flush_for_block()
            except ClosedMapError:
                return  # the block closed the map: nothing left to flush through it
            except Exception as exc:  # noqa: BLE001 - raised by the block's exit
                if not failures:
                    failures.append(exc)
        if block() is None:  # dropped without its give-back: give the claim back here
            core.dirty.drop_listener(self._listener)

    def _sleep(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a wake, then forget every wake so far."""
        wake = self._wake
        if timeout > 0:
            try:
                wake.get(timeout=timeout)
            except Empty:
                return
        with suppress(Empty):
            while True:
                wake.get_nowait()


class _Borrow(Hold):
    """A borrow's ``with`` block.  A class, not a ``@contextmanager`` generator: there a
    signal handled as the generator yielded (a Ctrl-C that arrived while the lock was
    awaited) raised inside contextlib, before the block, and the lock and the borrow
    stayed taken.  Here ``__enter__`` gives back what it took if anything raises in it;
    a signal handled after it returns is inside the block.  Entered by hand and dropped
    without an exit, or with an exit a signal skipped, it ends when it is dropped, as the
    collection of a generator-based context manager would (see ``ON_DROP``)."""

    _entered = False

    def __init__(self, facade: SyncMap[CoreT], offset: int, length: int, writable: bool) -> None:
        self._map: SyncMap[Any] = facade
        self._offset = offset
        self._length = length
        self._writable = writable

    def __enter__(self) -> memoryview:
        if self._entered:  # (a second entry would overwrite what the first must release)
            name = "as_mut_slice" if self._writable else "as_slice"
            raise RuntimeError(
                f"this {name}() borrow was entered already; call {name}() again for another"
            )
        self._entered = True
        lock = self._map._lock
        # (The end exits the hold whether or not it was entered: a Held's exit is then a
        # no-op, and so is its enter's if it raised.)
        parts: list[Any] = [lock.write() if self._writable else lock.read()]
        core: MapCore | None = None
        try:
            parts[0].__enter__()
            core = self._map._open_core()
            if self._writable:
                core.check_writable()
            borrowed = core.borrow(self._offset, self._length, self._writable)
            parts.append(borrowed)
            self._on_drop = partial(_end, core, parts)
            return borrowed[1].view  # (inside the try: a signal handled as it returns is undone)
        except BaseException:
            _end(core, parts)
            self._on_drop = DISARMED
            raise

    def __exit__(self, exc_type: type[BaseException] | None, *exc_rest: object) -> None:
        escaped = self._on_drop()
        self._on_drop = DISARMED
        if escaped and exc_type is None:  # (the block's own exception wins)
            raise escape_error()


def _end(core: MapCore | None, parts: list[Any]) -> bool:
    """End a borrow (its ``parts``: the lock's hold, then what ``borrow`` gave) and release
    the lock, once; return whether a view escaped."""
    if not parts:
        return False
    held, *borrowed = parts
    del parts[:]  # (no call since the check: it happens once)
    escaped = False
    try:
        if core is not None and borrowed:
            escaped = core.end_borrow(borrowed[0])
        del borrowed  # (a traceback through this frame must not hold the views)
    finally:
        held.__exit__(None, None, None)
    return escaped
