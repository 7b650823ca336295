"""What the blocking twins share: locking, bounds, copies, borrows and closing."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

from anyio import WouldBlock

from .._advice import check_advice
from .._core._buffers import BufferLike
from .._core._checks import as_int, byte_view, check_flush_policy, check_populate_args, check_size
from .._core._file import FileBackedCore
from .._core._handle import CoreT, MapHandle
from .._core._lifetime import escape_error
from .._core._map import MapCore, ProgressCallback
from .._core._threadlock import ThreadRWLock
from .._errors import ClosedMapError
from .._sys import DISARMED, Hold

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
        self._lock = ThreadRWLock(before_wait=self._core.check_not_pinned_here)

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
        offset, dst = as_int(offset, "offset"), byte_view(buf, writable=True)
        with self._lock.read():
            self._open_core().read(offset, dst)

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
        offset, src = as_int(offset, "offset"), byte_view(data, writable=False)
        with self._lock.write():
            self._open_core().write(offset, src)

    def read_into_nowait(self, offset: int, buf: BufferLike) -> None:
        """Like :meth:`read_into`, but raise :exc:`anyio.WouldBlock` instead of waiting for
        a writer or for the disk (the contents of ``buf`` are then unspecified)."""
        offset, dst = as_int(offset, "offset"), byte_view(buf, writable=True)
        with self._lock.read(blocking=False):
            if not self._open_core().try_read(offset, dst):
                raise WouldBlock(_NOT_IN_MEMORY.format(call="read_into"))

    def update_region_nowait(self, offset: int, data: BufferLike) -> None:
        """Like :meth:`update_region`, but raise :exc:`anyio.WouldBlock` instead of waiting
        for a borrow or for the disk."""
        offset, src = as_int(offset, "offset"), byte_view(data, writable=False)
        with self._lock.write(blocking=False):
            if not self._open_core().try_write(offset, src):
                raise WouldBlock(_NOT_IN_MEMORY.format(call="update_region"))

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
        """
        with self._lock.write():
            self._core.close()
            self._closed()

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

    def flush_range(self, offset: int, length: int) -> None:
        """Like :meth:`flush`, for ``[offset, offset + length)`` (need not be aligned)."""
        core = self._open_core()
        start, n = core.check_range(offset, length)
        self._commit(core, start, n)

    @staticmethod
    def _commit(core: FileBackedCore, start: int, n: int) -> None:
        if core.mode != "rw" or not n:
            return
        core.check_can_wait()  # the committer's pin would wait for this thread
        done = threading.Event()
        request = core.commit.submit(start, start + n, done.set)
        done.wait()
        request.result()

    def pending_bytes(self) -> int:
        """Bytes written since a durable flush last covered them (0 for ``"r"`` and
        ``"copy"`` maps); see :meth:`anymmap.MmapRaw.pending_bytes`."""
        return self._open_core().dirty.pending()

    @contextmanager
    def auto_flush(self, every: float = 0.05, every_bytes: int = 8 << 20) -> Iterator[None]:
        """Flush from a thread while the block runs, and what is pending at its end; see
        :meth:`anymmap.MmapRaw.auto_flush`.  The thread is joined before the block
        exits."""
        core = self._open_core()
        interval, threshold = check_flush_policy(every, every_bytes)
        wake = threading.Event()
        stop = False
        failures: list[BaseException] = []

        def written(pending: int) -> None:
            if pending >= threshold:
                wake.set()

        def flusher() -> None:
            # A failed flush cannot end the block from this thread (the async form
            # cancels it): keep flushing, so that what the block writes next still
            # becomes durable, and raise the first error when the block ends.
            wait = min(interval, threading.TIMEOUT_MAX)  # (every=inf: bytes only)
            while not stop and not core.closed:  # (closed: nothing to flush through it)
                if failures:  # retry at the interval, not at every write
                    until = time.monotonic() + wait
                    while not stop and time.monotonic() < until:
                        wake.wait(until - time.monotonic())
                        wake.clear()
                elif core.dirty.pending() < threshold:
                    wake.wait(wait)
                wake.clear()
                if stop or not core.dirty.pending():
                    continue
                try:
                    self.flush()
                except ClosedMapError:
                    return  # the block closed the map: nothing left to flush through it
                except Exception as exc:  # noqa: BLE001 - raised by the block's exit
                    if not failures:
                        failures.append(exc)

        # The claim is inside the try, and given back first thing in its finally (it is
        # dropped only if it is this block's): a Ctrl-C in thread.start(), or a thread
        # that cannot start, left it taken and the thread running.  A daemon thread, so
        # that a block whose exit never ran cannot hold up the interpreter's exit.
        thread = None
        try:
            core.dirty.claim_listener(written)
            thread = threading.Thread(target=flusher, name="anymmap auto flush", daemon=True)
            thread.start()
            yield
        finally:
            try:
                core.dirty.drop_listener(written)
            finally:
                stop = True
                wake.set()
                if thread is not None and thread.ident is not None:
                    thread.join()
            if thread is not None and not core.closed and core.dirty.pending():
                try:
                    self.flush()
                except Exception:
                    if not failures:
                        raise
                    # (the first error is the one the block's exit raises)
        if failures:
            raise failures[0]

    def flush_async(self) -> None:
        """Start writeback of the dirty pages and return; not durable."""
        self._open_core().flush(0, None, False)

    def flush_async_range(self, offset: int, length: int) -> None:
        """Start writeback of ``[offset, offset + length)`` and return; not durable."""
        core = self._open_core()
        core.flush(*core.check_range(offset, length), False)


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
