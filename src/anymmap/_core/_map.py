"""The sync core shared by every map type: one mapped range and the rules for using it.

A :class:`MapCore` owns the address range, hands out memoryviews of it, copies in and out,
and unmaps it.  It does no borrow locking of its own: the blocking twins (``anymmap.sync``)
wrap it in a thread lock, the async types in :class:`anymmap.RWLock`.  Operations that run
in a worker thread without that lock (flush, populate, advise) *pin* the core instead, and
``close`` / ``resize`` wait for the pins to drain.

Lifetime: the memory belongs to an *exporter*, a ctypes array placed over the range.  Every
memoryview handed out is taken from it, so each live view keeps it alive, and the range is
unmapped only when it dies (a ``weakref.finalize`` on the exporter) or on an explicit close
that first checks no view is left.  A view can therefore never outlive its memory.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pickle import PickleBuffer
from typing import ClassVar

from .._errors import (
    BorrowError,
    ClosedMapError,
    OutOfBoundsError,
    ReadOnlyError,
)
from .._sys import os_impl
from ._buffers import PinnedBuffer, new_bytes
from ._checks import as_int, check_range

PAGE_SIZE = os_impl.PAGE_SIZE

#: Copies up to this many bytes run on the calling (event loop) thread; larger ones go to a
#: worker thread with a GIL-free memmove.  1 MiB copies in about 30-80 µs here.
INLINE_COPY_LIMIT = 1 << 20

#: populate() works in chunks of this size and reports progress after each.
POPULATE_CHUNK = 16 << 20

ProgressCallback = Callable[[int, int], object]

#: Advice after which private pages read back as zeros (or as the file's data).
DISCARDING_ADVICE = frozenset({os_impl.MADV_DONTNEED, os_impl.MADV_FREE})


def page_floor(value: int) -> int:
    return value - value % PAGE_SIZE


def page_ceil(value: int) -> int:
    return -(-value // PAGE_SIZE) * PAGE_SIZE


def _exporter_type(length: int) -> type[ctypes.Array[ctypes.c_ubyte]]:
    # An array type of exactly `length` bytes, made fresh: `c_ubyte * n` would be cached by
    # ctypes forever, one type per length ever mapped.  About 10 µs per map or resize.
    return type("MappedBytes", (ctypes.Array,), {"_type_": ctypes.c_ubyte, "_length_": length})


def _unmap(addr: int, length: int, fork_guard: list[int]) -> None:
    # Runs when the exporter dies: no view of the range can exist any more.  In the child
    # of a fork after DONTFORK advice the range is not ours (see MapCore.forked_away).
    if fork_guard and fork_guard[0] != os.getpid():
        return
    try:
        os_impl.munmap(addr, length)
    except OSError:  # pragma: no cover - the range was ours; nothing sensible to do
        pass


# Borrow bases that could not be released when their borrow ended (see end_borrow).
_ESCAPED: list[memoryview] = []
_ESCAPED_LOCK = threading.Lock()


def _try_release(view: memoryview) -> bool:
    try:
        view.release()
    except BufferError:
        return False
    return True


def release_escaped(blocking: bool = True) -> None:
    """Release the parked borrow bases whose exports are gone."""
    if _ESCAPED and _ESCAPED_LOCK.acquire(blocking):
        try:
            _ESCAPED[:] = [view for view in _ESCAPED if not _try_release(view)]
        finally:
            _ESCAPED_LOCK.release()


def _after_gc(phase: str, info: dict[str, int]) -> None:
    # Escaped slices and arrays usually die in a collection; once they are gone, their
    # parked bases can go too, and with them the last reference to an unclosed map.
    # Never block here: the collection may have started inside release_escaped.
    if phase == "stop":
        release_escaped(blocking=False)


gc.callbacks.append(_after_gc)


class MapCore:
    """A mapped range and everything that can be done to it without a lock of its own."""

    #: Name used in error messages and reprs.
    kind: ClassVar[str] = "map"
    #: Whether the memory is private anonymous memory (no file behind it).
    anonymous: ClassVar[bool] = False

    def __init__(self, map_addr: int, map_len: int, delta: int, length: int, writable: bool):
        self._cond = threading.Condition(threading.Lock())
        self._pins = 0
        self._pinners: dict[int, int] = {}  # thread identity -> pins it holds
        self._remapping = False
        self._closed = False
        # The pid of the process that advised DONTFORK on part of the map (empty if none).
        self._fork_guard: list[int] = []
        self.writable = writable
        self._install(map_addr, map_len, delta, length)

    # -- lifetime ---------------------------------------------------------------------

    def _install(self, map_addr: int, map_len: int, delta: int, length: int) -> None:
        """Adopt ``[map_addr, map_addr + map_len)``, whose user part starts at ``delta``."""
        self.map_addr = map_addr
        self.map_len = map_len
        self.delta = delta
        self.length = length
        self.addr = map_addr + delta
        # SAFETY: the array describes exactly [addr, addr + length), which is mapped for as
        # long as the array lives (the finalizer below unmaps it only when it dies).
        exporter = _exporter_type(length).from_address(self.addr)
        self._finalizer = weakref.finalize(exporter, _unmap, map_addr, map_len, self._fork_guard)
        self._finalizer.atexit = False  # the OS reclaims it; views may outlive atexit
        self._exporter = exporter
        del exporter
        # References now: self._exporter and getrefcount's argument.  Each live view adds
        # one (through its managed buffer); _retire() compares against this.
        self._baseline = sys.getrefcount(self._exporter)
        self._view = memoryview(self._exporter).cast("B")

    def _retire(self) -> None:
        """Give up the exporter before the range is unmapped or moved.

        :raises BorrowError: if a view of the range is still alive
        """
        self._view.release()
        if sys.getrefcount(self._exporter) != self._baseline:
            gc.collect()  # a view kept alive only by a reference cycle
            release_escaped()
        leaked = sys.getrefcount(self._exporter) - self._baseline
        if leaked:
            self._view = memoryview(self._exporter).cast("B")
            raise BorrowError(
                f"{leaked} buffer(s) exported from this {self.kind} are still alive; drop "
                "every view, slice or array taken from a borrow before closing or resizing"
            )
        self._finalizer.detach()
        del self._exporter

    @property
    def closed(self) -> bool:
        return self._closed or self.forked_away()

    def forked_away(self) -> bool:
        """Whether this is the child of a fork made after part of the map was advised
        ``DONTFORK``: the memory is not in this process, so the map counts as closed
        here, and closing it must not unmap what the child may have put there since."""
        guard = self._fork_guard
        return bool(guard) and guard[0] != os.getpid()

    def check_open(self) -> None:
        """:raises ClosedMapError: if the map is closed, or its memory was not inherited"""
        if self._closed or self.forked_away():
            raise self.closed_error()

    def closed_error(self) -> ClosedMapError:
        if not self._closed and self.forked_away():
            return ClosedMapError(
                self.kind, "advised DONTFORK, so its memory is not in this child process"
            )
        return ClosedMapError(self.kind)

    def note_advice(self, advice: int, whole: bool) -> None:
        """Remember DONTFORK (and forget it after DOFORK over the whole map)."""
        if advice == os_impl.MADV_DONTFORK:
            self._fork_guard[:] = [os.getpid()]
        elif advice == os_impl.MADV_DOFORK and whole:
            self._fork_guard.clear()

    def close(self) -> None:
        """Unmap the range (idempotent); waits for pinned operations to finish.

        :raises BorrowError: if a view of the range is still alive (the map stays open)
        """
        if self.forked_away():
            self._closed = True  # nothing of it is mapped here
            self._finalizer.detach()
            return
        with self._exclusive() as proceed:
            if proceed:
                self._retire()
                self._unmap_now()
                self._closed = True

    def _unmap_now(self) -> None:
        os_impl.munmap(self.map_addr, self.map_len)

    @contextmanager
    def _exclusive(self) -> Iterator[bool]:
        """Hold off new pins and wait for the current ones; yields False if closed.

        :raises RuntimeError: if the calling thread holds a pin (it would wait for itself)
        """
        with self._cond:
            if self._closed:
                yield False
                return
            if threading.get_ident() in self._pinners:
                raise RuntimeError(
                    f"cannot close or resize a {self.kind} from inside one of its own calls "
                    "on the same thread"
                )
            self._remapping = True
            try:
                while self._pins:
                    self._cond.wait()
                yield True
            finally:
                self._remapping = False
                self._cond.notify_all()

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """Keep the range mapped at its address for the block (thread-safe).

        :raises ClosedMapError: if the map is closed
        """
        me = threading.get_ident()
        with self._cond:
            while self._remapping:
                self._cond.wait()
            if self._closed or self.forked_away():
                raise self.closed_error()
            self._pins += 1
            self._pinners[me] = self._pinners.get(me, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                self._pins -= 1
                if self._pinners[me] == 1:
                    del self._pinners[me]
                else:
                    self._pinners[me] -= 1
                if not self._pins:
                    self._cond.notify_all()

    def resize(self, length: int) -> None:
        raise NotImplementedError  # pragma: no cover - every map type defines it

    def check_resizable(self) -> None:
        """Raise if this map can never be resized (see FileCore)."""

    def check_writable(self) -> None:
        if not self.writable:
            raise ReadOnlyError(f"this {self.kind} is read-only")

    def check_range(self, offset: object, length: object) -> tuple[int, int]:
        """Return ``(offset, length)`` as ints inside the map, else raise (see _checks)."""
        if (
            type(offset) is int
            and type(length) is int
            and offset >= 0
            and length >= 0
            and offset + length <= self.length
        ):
            return offset, length  # the common case, without a call
        return check_range(offset, length, self.length)

    def check_span(self, offset: object, length: object | None) -> tuple[int, int]:
        """Like check_range; a length of None means "to the end of the map"."""
        if length is None:
            start = as_int(offset, "offset")
            if not 0 <= start <= self.length:
                raise OutOfBoundsError(start, None, self.length)
            return start, self.length - start
        return check_range(offset, length, self.length)

    # -- views ------------------------------------------------------------------------

    def view(self, offset: int, length: int, writable: bool) -> tuple[memoryview, memoryview]:
        """Start a borrow of ``[offset, offset + length)``: return ``(base, view)``.

        ``view`` is what the borrower gets.  It is exported from ``base`` through a
        ``PickleBuffer``, so anything still built on it when the borrow ends (a slice, a
        NumPy array) shows up as an export of ``base`` in :meth:`end_borrow`.
        """
        base = memoryview(self._exporter).cast("B")[offset : offset + length]
        if not writable:
            base = base.toreadonly()
        return base, memoryview(PickleBuffer(base))

    def end_borrow(self, base: memoryview, view: memoryview, *, report: bool = True) -> None:
        """End a borrow started by :meth:`view`.

        If something built on the view is still alive, ``base`` cannot be released: a
        slice or a NumPy array holds ``base``'s export through the view's managed buffer;
        an object that took its own export of the view (``PickleBuffer(view)``,
        ``struct.iter_unpack``, ``re.finditer``) keeps the view itself from being
        released.  What cannot be released is parked in a registry that is always
        reachable, so the memory stays mapped under it (close and resize refuse
        meanwhile), and so that the cyclic garbage collector never clears it while
        exported (CPython then crashes).  It is released once those objects are gone.

        :raises BorrowError: in that case, if ``report`` (a borrow whose block raised
            passes False: its own exception wins)
        """
        view_released = _try_release(view)  # fails if a PickleBuffer etc. wraps it
        if view_released and _try_release(base):
            return
        with _ESCAPED_LOCK:
            if not view_released:
                _ESCAPED.append(view)  # before base: releasing it frees base's export
            _ESCAPED.append(base)
        del base, view  # keep them out of the traceback's frames
        if report:
            raise BorrowError(
                "a slice or array made from the borrowed view is still alive at the end of "
                f"the borrow; the {self.kind} cannot be closed or resized until it is gone"
            )

    # -- copies -----------------------------------------------------------------------
    # Each copy direction has a *now* form, for the calling thread, that copies only what
    # it can without blocking on the disk or taking long, and a *blocking* form for a
    # worker thread that releases the GIL.  Ranges are checked by the caller.

    def read_now(self, offset: int, dst: memoryview, limit: int) -> int:
        """Copy into ``dst`` if it is at most ``limit`` bytes; return the bytes copied."""
        n = len(dst)
        if n > limit:
            return 0
        dst[:] = self._view[offset : offset + n]
        return n

    def read_bytes_now(self, offset: int, length: int, limit: int) -> bytes | None:
        """Return the bytes if they can be had without blocking, else None."""
        if length > limit:
            return None
        return bytes(self._view[offset : offset + length])

    # The blocking forms also pin the core: their caller's lock already keeps close and
    # resize away, and the pin makes sure of it even if that caller stopped waiting.

    def read_blocking(self, offset: int, dst: memoryview) -> None:
        with self.pinned(), PinnedBuffer(dst, writable=True) as pin:
            self._copy_out(pin.address, self.addr + offset, pin.nbytes)

    def write_now(self, offset: int, src: memoryview, limit: int) -> int:
        n = len(src)
        if n > limit:
            return 0
        self._view[offset : offset + n] = src
        return n

    def write_blocking(self, offset: int, src: memoryview) -> None:
        with self.pinned(), PinnedBuffer(src, writable=False) as pin:
            self._copy_in(self.addr + offset, pin.address, pin.nbytes)

    def read_bytes_blocking(self, offset: int, length: int) -> bytes:
        data, address = new_bytes(length)
        with self.pinned():
            self._copy_out(address, self.addr + offset, length)
        return data

    def _copy_out(self, dst: int, src: int, length: int) -> None:
        os_impl.memmove(dst, src, length)

    def _copy_in(self, dst: int, src: int, length: int) -> None:
        os_impl.memmove(dst, src, length)

    def _translate(self, exc: OSError, address: int) -> OSError:
        """The error to raise for a failed system call on the map at ``address``; file
        maps turn EFAULT into MappingFaultError."""
        return exc

    # -- memory management ------------------------------------------------------------

    def aligned(self, offset: int, length: int) -> tuple[int, int]:
        """The page-aligned absolute range covering ``[offset, offset + length)``."""
        start = page_floor(self.addr + offset)
        return start, page_ceil(self.addr + offset + length) - start

    def populate(self, start: int, n: int, write: bool, progress: ProgressCallback | None) -> None:
        """Fault the range in, chunk by chunk, calling ``progress(done, total)``.

        The arguments are plain ints, converted by the caller before anything is pinned
        (an ``__index__`` run inside a pin could close the map and wait for itself).
        Each chunk is checked and faulted in while the map is pinned; ``progress`` runs
        unpinned, so it may use the map (even close or resize it: the next chunk then
        raises ClosedMapError or OutOfBoundsError).
        """
        if write:
            self.check_writable()
        done = 0
        while done < n:
            step = min(POPULATE_CHUNK, n - done)
            with self.pinned():
                self.check_range(start + done, step)
                base, span = self.aligned(start + done, step)
                try:
                    os_impl.populate(base, span, write)
                except OSError as exc:
                    raise self._translate(exc, base) from None
            done += step
            if progress is not None:
                progress(done, n)

    def advise(self, advice: int, start: int, n: int) -> None:
        """``madvise`` the pages of the range: all pages it touches, except for advice that
        discards data (``DISCARDING_ADVICE``), which only covers the pages that lie wholly
        inside it, so no byte outside the range is ever lost."""
        if advice == os_impl.MADV_FREE and not self.anonymous:
            raise OSError(
                errno.EINVAL,
                f"Advice.FREE only applies to anonymous memory, not to a {self.kind}; use "
                "Advice.DONTNEED (or Advice.PAGEOUT) there",
            )
        if not n:
            return  # a zero-length range advises nothing (no page is "touched")
        with self.pinned():
            self.check_range(start, n)
            if advice in DISCARDING_ADVICE:
                base = page_ceil(self.addr + start)
                span = page_floor(self.addr + start + n) - base
                if span <= 0:
                    return
            else:
                base, span = self.aligned(start, n)
            os_impl.madvise(base, span, advice)
            self.note_advice(advice, whole=start == 0 and n == self.length)

    def resident(self, offset: int, length: int) -> bool:
        """Whether every page of the range is in memory (mincore)."""
        start, span = self.aligned(offset, length)
        return os_impl.resident(start, span)

    def describe(self) -> str:
        if self.closed:
            return "closed"
        return f"len={self.length} addr={self.addr:#x}"
