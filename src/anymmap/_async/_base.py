"""What the async maps share: the lock, bounds, copies, borrows and closing.

Every method delegates to the sync core (:class:`~anymmap._core._map.MapCore`); what this
layer adds is *where* the work runs (the event loop thread only for what cannot block on
the disk, a worker thread for the rest) and the :class:`~anymmap.RWLock` around borrows.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from anyio import WouldBlock
from anyio.abc import TaskGroup

from .._advice import check_advice
from .._backend import (
    ThreadWaiter,
    checkpoint,
    checkpoint_after,
    checkpoint_before,
    run_sync,
    shielded,
)
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
from .._core._map import INLINE_COPY_LIMIT, Borrowed, ProgressCallback
from .._errors import ClosedMapError, Uncopyable
from .._rwlock import MapLock, RWLock, _Guard

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self


_NOT_IN_MEMORY = (
    "a page of the range is not in memory (it would be read from the disk); "
    "'await {call}(...)' copies it in a worker thread"
)


FileCoreT = TypeVar("FileCoreT", bound=FileBackedCore)


class AsyncMap(MapHandle[CoreT]):
    """Base of the async maps.

    Copies and borrows take :attr:`lock` (reads share it, writes and writable borrows hold
    it alone); ``resize`` and ``aclose`` take it for writing, so they wait for borrows to
    end instead of failing.  Cheap queries stay synchronous.
    """

    __slots__ = ("_lock",)

    _lock: MapLock

    def _setup(self) -> None:
        self._lock = MapLock()

    @property
    def lock(self) -> RWLock:
        """The lock that guards this map's borrows; hold its read side to keep the map
        from being resized or closed across several calls."""
        return self._lock

    def _check_not_borrowing(self, what: str) -> None:
        if self._lock.held_by_current_task():
            raise RuntimeError(f"cannot {what} a map while this task borrows it")

    # -- copies -----------------------------------------------------------------------

    async def read_into(self, offset: int, buf: BufferLike) -> None:
        """Fill the writable buffer ``buf`` with the bytes of the map from ``offset`` on
        (as many bytes as ``buf`` holds: ``memoryview(buf).nbytes``, not ``len(buf)`` for a
        typed array).

        Copies of at most 1 MiB from memory run on the event loop thread; larger ones, and
        pages that are not in memory, are copied in a worker thread.

        :raises OutOfBoundsError: if the range is not inside the map
        :raises TypeError: if ``buf`` is not a writable, C-contiguous buffer
        :raises MappingFaultError: (an :exc:`OSError`, ``errno.EFAULT``) if a page of the
            range cannot be read: the file was truncated by another process, or the range
            touches a hole of a sparse map; the process lives on
        :raises RuntimeError: if the current task holds a writable borrow of this map (the copy
            would wait for itself), or another event loop is using the map
        :raises ClosedMapError: if the map is closed
        """
        dst: memoryview | None = None
        try:
            offset, dst = as_int(offset, "offset"), byte_view(buf, writable=True)
            await checkpoint_before()
            # A copy that does not yield needs no lock: no other task runs while it does.
            # This is the *_nowait copy inside a checkpoint, and the usual case.
            if self._lock.free_for_reading() and self._open_core().try_read(
                offset, dst, INLINE_COPY_LIMIT
            ):
                await checkpoint_after()
                return
            async with self._lock.read():
                rest = self._open_core().start_read(offset, dst)
                if rest is not None:
                    await run_sync(rest)
        except BaseException as exc:
            after_failed_copy(dst, buf, exc)
            del buf, dst  # (a traceback the caller keeps must not keep them)
            raise

    async def read(self, offset: int, length: int) -> bytes:
        """Return ``length`` bytes starting at ``offset`` (see :meth:`read_into`, also for
        what it raises)."""
        offset, length = as_int(offset, "offset"), as_int(length, "length")
        await checkpoint_before()
        if self._lock.free_for_reading():  # as in read_into
            data = self._open_core().read_bytes(offset, length)
            if isinstance(data, bytes):
                await checkpoint_after()
                return data
        async with self._lock.read():
            data = self._open_core().read_bytes(offset, length)
            return data if isinstance(data, bytes) else await run_sync(data)

    async def update_region(self, offset: int, data: BufferLike) -> None:
        """Copy the bytes-like ``data`` into the map at ``offset``, holding the write lock.

        :raises OutOfBoundsError: if the range is not inside the map
        :raises TypeError: if ``data`` is not a C-contiguous bytes-like object
        :raises ReadOnlyError: if the map is read-only
        :raises MappingFaultError: (an :exc:`OSError`, ``errno.EFAULT``) if a page of the
            range cannot be written: the file was truncated by another process, or the
            range touches a hole or a read-only piece of a sparse map; the process lives on
        :raises RuntimeError: if the current task holds a borrow of this map (the copy
            would wait for itself), or another event loop is using the map
        :raises ClosedMapError: if the map is closed
        """
        src: memoryview | None = None
        try:
            offset, src = as_int(offset, "offset"), byte_view(data, writable=False)
            self._open_core().check_writable()
            await checkpoint_before()
            if self._lock.free_for_writing() and self._open_core().try_write(  # as in read_into
                offset, src, INLINE_COPY_LIMIT
            ):
                await checkpoint_after()
                return
            async with self._lock.write():
                rest = self._open_core().start_write(offset, src)
                if rest is not None:
                    await run_sync(rest)
        except BaseException as exc:
            after_failed_copy(src, data, exc)
            del data, src  # (a traceback the caller keeps must not keep them)
            raise

    def read_into_nowait(self, offset: int, buf: BufferLike) -> None:
        """Copy into ``buf`` at once, on this thread, or raise :exc:`anyio.WouldBlock`.

        Raises WouldBlock while a task holds the write lock, or when a page of the range is
        not in memory (a file map) — never faults on the disk.  Copies of any size run
        here.  After WouldBlock the contents of ``buf`` are unspecified.
        """
        dst: memoryview | None = None
        lock, core = self._lock, self._core  # (_open_core inline: the hot path)
        try:
            dst = memoryview(buf) if type(buf) is bytearray else byte_view(buf, writable=True)
            if type(offset) is not int:  # (before the lock is looked at: see _busy)
                offset = as_int(offset, "offset")
            if not lock.free_for_reading():
                raise self._busy(writing=False)
            if not core.usable:
                core.check_open()
            if not core.try_read(offset, dst):
                raise WouldBlock(_NOT_IN_MEMORY.format(call="read_into"))
        except BaseException as exc:
            after_failed_copy(dst, buf, exc)
            del buf, dst  # (a traceback the caller keeps must not keep them)
            raise

    def update_region_nowait(self, offset: int, data: BufferLike) -> None:
        """Copy ``data`` into the map at once, on this thread, or raise
        :exc:`anyio.WouldBlock` while the lock is held or a page is not in memory."""
        src: memoryview | None = None
        lock, core = self._lock, self._core  # (_open_core inline: the hot path)
        try:
            src = memoryview(data) if type(data) is bytes else byte_view(data, writable=False)
            if type(offset) is not int:  # (before the lock is looked at: see _busy)
                offset = as_int(offset, "offset")
            if not lock.free_for_writing():
                raise self._busy(writing=True)
            if not core.usable:
                core.check_open()
            if not core.try_write(offset, src):
                raise WouldBlock(_NOT_IN_MEMORY.format(call="update_region"))
        except BaseException as exc:
            after_failed_copy(src, data, exc)
            del data, src  # (a traceback the caller keeps must not keep them)
            raise

    def _busy(self, writing: bool, then: str = "await the call to wait") -> Exception:
        """The error for a ``*_nowait`` copy that finds the lock taken: RuntimeError if
        the calling task holds it itself (waiting could never help), else WouldBlock
        (whose message ends with ``then``).  The arguments are converted before the lock
        is looked at: an ``__index__`` may take it (adversary round 73: one that took the
        write lock got its copy through inside it)."""
        if self._lock.held_by_current_task():
            if writing:
                return RuntimeError(
                    "this task borrows the map (as_slice or as_mut_slice); write through an "
                    "as_mut_slice view instead of through the map"
                )
            return RuntimeError(
                "this task holds the map's write lock (as_mut_slice); read through its view "
                "instead of through the map"
            )
        holder = "borrowed or being written" if writing else "being written"
        return WouldBlock(f"the map is {holder} by another task; {then}")

    # -- borrows ----------------------------------------------------------------------

    def as_slice(self, offset: int, length: int) -> AbstractAsyncContextManager[memoryview]:
        """Borrow a read-only view of ``[offset, offset + length)``::

            async with m.as_slice(0, 16) as view:
                header = bytes(view)

        The block holds the read lock; the view is released when it ends (using it later
        raises ``ValueError``).  A view touches the memory directly: unlike the copy
        methods, it is not protected against a mapped file being truncated meanwhile.
        """
        return _Borrow(self, offset, length, writable=False)

    def as_mut_slice(self, offset: int, length: int) -> AbstractAsyncContextManager[memoryview]:
        """Borrow a writable view of ``[offset, offset + length)``; the block holds the
        write lock.  See :meth:`as_slice`.

        :raises ReadOnlyError: if the map is read-only
        """
        self._open_core().check_writable()
        return _Borrow(self, offset, length, writable=True)

    # -- memory management ------------------------------------------------------------

    async def populate(
        self,
        offset: int = 0,
        length: int | None = None,
        *,
        write: bool = False,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Fault the pages of the range into memory, in a worker thread.

        Works in 16 MiB chunks, each a worker call of its own, and calls
        ``progress(done, total)`` after each, in the calling task (a plain callback; what
        it raises reaches the caller).  A cancellation takes effect once the chunk in
        progress is done (the pages faulted in so far stay in).  ``write=True`` also
        prepares the pages for writing (``MADV_POPULATE_WRITE``; on a shared file map that
        dirties every page).  Runs beside copies and borrows, as it changes no byte;
        ``resize`` and ``aclose`` wait for the chunk in progress, and the next chunk then
        raises ``ClosedMapError`` or ``OutOfBoundsError``.
        """
        check_populate_args(write, progress)
        core = self._open_core()
        if write:
            core.check_writable()  # before the range, as for every write
        start, n = core.check_span(offset, length)  # checked again once pinned
        if not n:
            await checkpoint()
            return
        # A worker call per chunk, not one for the range: a call in a worker is never
        # abandoned, and a deadline around a populate of 1 GiB waited for all of it
        # (up to 2 s; adversary round 53).  A thread hop costs about 0.1 ms, a chunk tens.
        done = 0
        while done < n:
            # (A worker call starts before it looks for a cancellation; on asyncio this
            # yields, where a native task.cancel() is delivered too.)
            await checkpoint_before()
            done = await run_sync(core.populate_chunk, start, n, done, write)
            if progress is not None:
                progress(done, n)

    async def advise(self, advice: int, offset: int = 0, length: int | None = None) -> None:
        """Give the kernel :class:`~anymmap.Advice` about the range (``madvise``), in a
        worker thread.  ``offset`` and ``length`` need not be page-aligned."""
        value = check_advice(advice)
        core = self._open_core()
        start, n = core.check_span(offset, length)  # checked again once pinned
        await run_sync(core.advise, value, start, n)

    async def _change_mapping(
        self, what: str, change: Callable[..., None], *args: object, stoppable: bool = False
    ) -> None:
        """Run ``change(*args)``, which changes what is mapped where, in a worker thread
        under the write lock (it waits for borrows and copies to end); ``stoppable``: see
        ``run_sync``."""
        self._check_not_borrowing(what)
        async with self._lock.write():
            self._open_core()
            await run_sync(change, *args, stoppable=stoppable)

    async def aclose(self) -> None:
        """Wait for borrows and copies to end, then unmap in a worker thread.

        Shielded from cancellation: a cancellation that arrives meanwhile is delivered
        once the map is closed.  Closing twice is fine.

        :raises BorrowError: if an object exported from a borrow is still alive (the map
            then stays open)
        :raises RuntimeError: if the calling task is inside a borrow of this map
        :raises WriteBackError: if a write-back of the map failed and no call raised it
            yet (the flushes that met it were cancelled, or it was another map's of the
            file); the map is closed all the same (once: raised by the next ``aclose``
            if this one was cancelled)
        """
        if not self._core.closed:
            self._check_not_borrowing("close")
            await shielded(self._close)
        else:
            await checkpoint()
        failed = self._core.unheard_failure()  # (after the cancellation, not in its cause)
        if failed is not None:
            raise failed

    async def _close(self) -> None:
        async with self._lock.write():
            await run_sync(self._core.close)
            self._closed()

    async def __aenter__(self) -> Self:
        return self

    if not TYPE_CHECKING:  # (a type checker refuses ``with`` on its own)

        def __enter__(self):
            name = type(self).__name__
            raise TypeError(
                f"{name} is an async context manager: use 'async with', or "
                f"anymmap.sync.{name} in blocking code"
            )

        def __exit__(self, *exc_info):  # pragma: no cover - __enter__ raises
            pass

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class ResizableAsyncMap(AsyncMap[CoreT]):
    """An async map whose size can change (anonymous and file maps)."""

    __slots__ = ()

    async def resize(self, new_size: int) -> None:
        """Grow or shrink the map once no borrow or copy is running.

        Runs in a worker thread and is never abandoned halfway.  The address may change
        (except for a ``strict`` map, which must grow in place: ``HintNotHonoredError``
        if the range after it is taken).  An anonymous map keeps
        its bytes up to the smaller size and reads zeros after.  A file map grows the file
        when it passes the file's end (allocating the blocks first) and cuts it when
        shrinking only if the map reached the end and no other anymmap map of the file in
        this process is open, being made or being resized (its borrows past the new end
        would die of SIGBUS); the new size is durable once a later ``flush()`` returns.

        :raises InvalidSizeError: if ``new_size`` is 0 or above 128 TiB
        :raises ReadOnlyError: if the map is a read-only or copy file map
        :raises BorrowError: if an object exported from a borrow is still alive
        :raises RuntimeError: if the calling task is inside a borrow of this map
        :raises HintNotHonoredError: if a ``strict`` map cannot grow in place
        """
        size = check_size(new_size)
        self._open_core().check_resizable()
        # (Stoppable: a growth that writes zeros ends early, undone, if cancelled.)
        await self._change_mapping("resize", self._core.resize, size, stoppable=True)


class DirectAccessAsyncMap(AsyncMap[CoreT]):
    """Single-instruction loads and stores (sparse maps and shared regions)."""

    __slots__ = ()

    def atomic_load(self, offset: int, size: int) -> int:
        """Load the unsigned ``size``-byte (1, 2, 4 or 8) value at ``offset`` with a single
        aligned load: another thread or process storing it at the same time is seen
        entirely or not at all, never torn.  No compare-and-swap is offered.

        Only over memory and file windows inside their file (a direct access cannot
        fault there); it touches the page at once, on this thread.  Unlike the copies, it
        is a direct access, as through a view: the file's size is checked just before,
        so a peer process that cuts the file at that very moment kills this one with
        SIGBUS.  Between processes that do not trust each other, use the copies.

        :raises ValueError: if ``size`` is another number or ``offset`` is not a multiple
            of it
        :raises MappingFaultError: over a hole, a pass-through piece, or past the end of
            a mapped file
        :raises anyio.WouldBlock: while another task holds the map's write lock (a
            writable borrow, a copy in a worker thread, or a change of pieces)
        :raises RuntimeError: while this task holds it (in its own ``as_mut_slice``)
        """
        offset, size = as_int(offset, "offset"), as_int(size, "size")  # (see _busy)
        if not self._lock.free_for_reading():
            raise self._busy(writing=False, then=_RETRY_DIRECT)
        return self._open_core().atomic_load(offset, size)

    def atomic_store(self, offset: int, size: int, value: int) -> None:
        """Store ``value`` in the ``size`` bytes at ``offset`` with a single aligned store
        (see :meth:`atomic_load`); read-only pieces raise
        :class:`~anymmap.MappingFaultError`.  ``value`` is converted before anything is
        checked, and the store counts in ``pending_bytes()`` of a region."""
        value = as_int(value, "value")  # (first of all: see _busy)
        offset, size = as_int(offset, "offset"), as_int(size, "size")
        if not self._lock.free_for_reading():
            raise self._busy(writing=False, then=_RETRY_DIRECT)
        self._open_core().atomic_store(offset, size, value)


_RETRY_DIRECT = "try again once it is done (the direct accesses do not wait)"


class FlushingAsyncMap(AsyncMap[FileCoreT]):
    """The flush family of the maps of files (file maps and shared regions)."""

    __slots__ = ()

    async def flush(self) -> None:
        """Write the map's dirty pages to the file and wait until they are durable
        (``msync(MS_SYNC)`` without the GIL; the event loop keeps running).

        Concurrent flushes of one map share their ``msync`` calls (group commit): the
        map's committer thread flushes every waiting range at once, and each call returns
        once an ``msync`` that started after it was made covered its range.  Cancelling a
        call returns at once; its range is flushed all the same.  A no-op for ``"r"`` and
        ``"copy"`` maps, whose pages never reach the file.

        :raises OSError: if the flush failed (``EIO``): every call whose range that flush
            covered gets it
        """
        core = self._open_core()
        await self._commit(core, 0, core.length)

    async def _flush_for_block(self) -> None:
        """:meth:`flush` for an ``auto_flush`` block: a write-back failure it meets is
        the block's to report (``FileBackedCore.auto_flush_error``), not heard yet."""
        core = self._open_core()
        await self._commit(core, 0, core.length, to_caller=False)

    async def flush_range(self, offset: int, length: int) -> None:
        """Like :meth:`flush`, for the bytes ``[offset, offset + length)``; the range need
        not be page-aligned.  Other dirty pages may be written as well."""
        core = self._open_core()
        start, n = core.check_range(offset, length)
        await self._commit(core, start, n)

    @staticmethod
    async def _commit(core: FileBackedCore, start: int, n: int, *, to_caller: bool = True) -> None:
        core.check_open()  # (an __index__ of the range may have closed it)
        if core.mode != "rw" or not n:
            core.check_written_back(to_caller=to_caller)  # (a flush of nothing, after a failure)
            await checkpoint()
            return
        waiter = ThreadWaiter()
        request = core.submit_commit(start, start + n, waiter.wake, waiter.scheduler)
        await waiter.wait()  # leaving early (cancelled) leaves the flush to the committer
        core.result_of(request, to_caller=to_caller)

    def pending_bytes(self) -> int:
        """How many bytes were written through this map (copies and writable borrows)
        since a durable flush last covered them; always 0 for ``"r"`` and ``"copy"``
        maps, whose writes never reach the file.

        Exact while at most 4,096 separate ranges are pending, for writes that
        succeeded: one that failed or raised ``WouldBlock`` counts its whole range (part
        of it may be in memory).  Past 4,096 ranges they are rounded out to whole pages,
        then coarser blocks, so the count may be too high (never too low) until a flush
        covers them."""
        return self._open_core().dirty.pending()

    def auto_flush(
        self, every: float = 0.05, every_bytes: int = 8 << 20
    ) -> AbstractAsyncContextManager[None]:
        """Flush in the background while the block runs: whenever ``every`` seconds
        passed with bytes pending, or as soon as ``every_bytes`` are pending
        (mmap-io's ``EveryMillis`` / ``EveryBytes``), and what is pending when it ends::

            async with m.auto_flush(every=0.05, every_bytes=8 << 20):
                ...  # writes become durable within about 50 ms

        The flushing task lives in a task group of the block's own: none outlives it.
        A background flush that fails ends the block with its error (the error itself,
        not an ``ExceptionGroup``; the block's own exception wins over it).  The final
        flush runs even when the block failed; if it fails (and no background flush
        did), its error is raised, chained to the block's own.

        :raises ValueError: for a bound that is not positive
        :raises RuntimeError: (on entry) if the map already flushes automatically
        """
        return _AutoFlush(self, *check_flush_policy(every, every_bytes))

    async def flush_async(self) -> None:
        """Start writing the map's dirty pages to the file and return without waiting.

        Not durable: it only gets writeback going
        (``sync_file_range(SYNC_FILE_RANGE_WRITE)``), so a later :meth:`flush` has less
        to wait for.  (``msync(MS_ASYNC)`` does nothing at all on Linux.)
        """
        await run_sync(self._open_core().flush, 0, None, False)

    async def flush_async_range(self, offset: int, length: int) -> None:
        """Like :meth:`flush_async`, for the bytes ``[offset, offset + length)``.  Not
        durable."""
        core = self._open_core()
        start, n = core.check_range(offset, length)  # checked again once pinned
        await run_sync(core.flush, start, n, False)


class _AutoFlush(Uncopyable):
    """``async with m.auto_flush():``.  A class, not an ``@asynccontextmanager``
    generator: on trio a Ctrl-C is raised wherever code trio does not know to be
    protected runs, and anymmap's code is marked protected but contextlib's is not.  One
    raised in contextlib's ``__aexit__`` never resumed the generator: its task group was
    then closed by trio's finalizer task ("Nursery stack corrupted") and the map stayed
    "already flushing" (adversary round 22).  Here the whole exit is anymmap's code: a
    Ctrl-C arrives at one of its awaits, and the claim is dropped in a ``finally``."""

    _group: TaskGroup | None = None

    def __init__(self, facade: FlushingAsyncMap[Any], interval: float, threshold: int) -> None:
        self._map = facade
        self._core: FileBackedCore = facade._open_core()
        self._interval = interval
        self._threshold = threshold
        self._wake: list[ThreadWaiter] = []
        #: What ended the flusher: a failed flush (or, on trio, a Ctrl-C raised in it).
        self._background: list[BaseException] = []
        self._entered = False
        #: The flusher waits for a first write (nothing is pending): any write wakes it.
        self._idle = False
        # One bound method, kept: the map holds its claim through a weak reference to it,
        # so that a block dropped without its exit gives the claim back.
        self._listener: Callable[[int], None] = self._written

    def _written(self, pending: int) -> None:
        """The map's listener (called by writes, on any thread)."""
        wake = self._wake
        if (pending >= self._threshold or self._idle) and wake:
            self._idle = False  # (once: the writes of a burst make no wake-up each)
            wake[0].wake_from_thread()

    async def _flush_in_background(self, scope: anyio.CancelScope) -> None:
        core, threshold = self._core, self._threshold
        try:
            while True:
                self._wake[:] = [ThreadWaiter()]
                if not core.dirty.pending():
                    # Nothing to flush: wait for a write, not for the interval (a tiny
                    # ``every`` spun the loop at 100 % CPU with nothing written,
                    # adversary round 29); the interval counts from the first write.
                    self._idle = True
                    try:
                        if not core.dirty.pending():  # (a write before the flag was up)
                            await self._wake[0].wait()
                    finally:
                        self._idle = False
                    self._wake[:] = [ThreadWaiter()]
                if core.dirty.pending() < threshold:
                    with anyio.move_on_after(self._interval):
                        await self._wake[0].wait()
                if core.dirty.pending():
                    await self._map._flush_for_block()
        except ClosedMapError:
            return  # the block closed the map: nothing left to flush through it
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # noqa: BLE001 - raised by the block's exit
            self._background.append(exc)
            scope.cancel()  # ends the block: its exit raises the error itself

    async def __aenter__(self) -> None:
        if self._entered:
            raise RuntimeError("this auto_flush() block was entered already")
        self._entered = True
        dirty = self._core.dirty
        dirty.claim_listener(self._listener)
        try:
            group = anyio.create_task_group()
            await group.__aenter__()
        except BaseException:
            dirty.drop_listener(self._listener)
            raise
        self._group = group
        try:
            group.start_soon(self._flush_in_background, group.cancel_scope)
        except BaseException as exc:
            # (No flusher: exit the group again, as the block's exit would.)
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        core, group = self._core, self._group
        final: BaseException | None = None
        try:
            if group is not None:
                self._group = None
                group.cancel_scope.cancel()
                # (Not told of the block's exception: it is raised below, not wrapped in
                # an ExceptionGroup.)
                try:
                    await group.__aexit__(None, None, None)
                except BaseException as raised:
                    # A Ctrl-C trio delivered at the group's wait comes out in a group:
                    # raise it as itself, for ``except KeyboardInterrupt``.
                    interrupt = _only_interrupts(raised)
                    if interrupt is None:
                        raise
                    raise interrupt from None
        finally:
            core.dirty.drop_listener(self._listener)  # (only if it is this block's)
            if not core.closed and core.dirty.pending():
                with anyio.CancelScope(shield=True):  # also when the block failed
                    try:
                        await self._map._flush_for_block()
                    except Exception as flush_error:  # noqa: BLE001 - raised below
                        final = flush_error
        # (The cancellation a failed background flush caused is not the block's own.)
        cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
        error = core.auto_flush_error(
            self._background, final, failed=exc is not None and not cancelled, ended=exc is None
        )
        if error is not None:
            raise error


def _only_interrupts(raised: BaseException) -> KeyboardInterrupt | None:
    """The first ``KeyboardInterrupt`` of an exception group made of nothing else (at
    any depth), or None."""
    inner = getattr(raised, "exceptions", None)
    if isinstance(raised, KeyboardInterrupt) or not isinstance(inner, tuple) or not inner:
        return None
    first: KeyboardInterrupt | None = None
    for exc in inner:
        found = exc if isinstance(exc, KeyboardInterrupt) else _only_interrupts(exc)
        if found is None:
            return None
        first = first or found
    return first


class _Borrow(Uncopyable):
    """The async context manager behind ``as_slice`` and ``as_mut_slice``.

    Its exit releases what its entry acquired, on behalf of the task that entered, even
    when another task runs the exit (an async generator finalized elsewhere).  It is
    entered once, as a ``contextlib.asynccontextmanager`` is: a second entry would
    overwrite what the first must release.
    """

    __slots__ = ("_borrowed", "_entered", "_guard", "_length", "_map", "_offset", "_writable")

    _borrowed: Borrowed
    _guard: _Guard

    def __init__(self, owner: AsyncMap[Any], offset: int, length: int, writable: bool):
        self._map = owner
        self._offset = as_int(offset, "offset")  # now: an __index__ must not run locked
        self._length = as_int(length, "length")
        self._writable = writable
        self._entered = False

    if not TYPE_CHECKING:  # (a type checker refuses ``with`` on its own)

        def __enter__(self):
            name = "as_mut_slice" if self._writable else "as_slice"
            raise TypeError(
                f"{name}() of an async map is an async context manager: use "
                f"'async with m.{name}(...)', or the blocking twin in anymmap.sync"
            )

        def __exit__(self, *exc_info):  # pragma: no cover - __enter__ raises
            pass

    async def __aenter__(self) -> memoryview:
        if self._entered:
            name = "as_mut_slice" if self._writable else "as_slice"
            raise RuntimeError(
                f"this {name}() borrow was entered already; call {name}() again for another"
            )
        self._entered = True
        lock = self._map._lock
        guard = lock.write() if self._writable else lock.read()
        await guard.__aenter__()
        self._guard = guard
        try:
            self._borrowed = self._map._open_core().borrow(
                self._offset, self._length, self._writable
            )
        except BaseException:
            guard.release()
            raise
        return self._borrowed[1].view

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        try:
            borrowed = self._borrowed
        except AttributeError:
            name = "as_mut_slice" if self._writable else "as_slice"
            raise RuntimeError(
                f"this {name}() borrow is not active (never entered, or ended already)"
            ) from None
        del self._borrowed  # nothing but the registry may keep its views once it ends
        try:
            escaped = self._map._core.end_borrow(borrowed)
        finally:
            del borrowed  # (a traceback through this frame must not hold the views)
            self._guard.release()
        if escaped and exc_type is None:  # the block's own exception wins
            raise escape_error()
