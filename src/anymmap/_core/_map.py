"""The sync core every map type is made of: ranges, pieces, copies, pins and closing.

A :class:`MapCore` is a map without a lock of its own and without an event loop: the
blocking twins (``anymmap.sync``) wrap it in a thread lock, the async types in
:class:`anymmap.RWLock`, and both call the same methods.  It owns

* the :class:`~anymmap._core._lifetime.Memory` (the mapped range and every view of it);
* the *pieces* that make up the map, each ``(offset, length, copier)``: one for an
  anonymous or file map, several for a sparse one; the copier of a piece was chosen for
  its backing when it was mapped (see ``_copier``);
* the copy handshake: :meth:`start_read` / :meth:`start_write` copy on the calling thread
  what needs no disk and no more than :data:`INLINE_COPY_LIMIT` bytes, and return the rest
  as a call for a worker thread (the async facade awaits it there; the sync one calls it);
* the one place where ``EFAULT`` becomes :class:`~anymmap.MappingFaultError`
  (:meth:`fault_error`), with the map offset and the cause the piece's copier gives;
* *pins*: operations that run in a worker thread without holding the facade's lock
  (flush, populate, advise) pin the core, and ``close`` / ``resize`` wait for the pins to
  drain.  A close or resize from a thread that holds a pin raises ``RuntimeError`` (it
  would wait for itself).

Offsets are checked (``check_range``) before any system call and converted to addresses
in one place (:meth:`_spans`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import ClassVar

from .._errors import ClosedMapError, MappingFaultError, OutOfBoundsError, ReadOnlyError
from .._sys import DISARMED, Hold, give_back_skipped, os_impl, signals_held, whole
from ._buffers import PinnedBuffer, new_bytes
from ._checks import as_int, check_range
from ._copier import (
    Copier,
    FileCopier,
    HoleCopier,
    MemoryCopier,
    page_ceil,
    page_floor,
    private_copy,
    put_back,
    shares_pages,
)
from ._forks import track
from ._lifetime import Loan, Memory
from ._threadlock import (
    HEAL_EVERY,
    check_not_held,
    held_here,
    new_condition,
    renewed,
    wait_unless_exiting,
)

PAGE_SIZE = os_impl.PAGE_SIZE

#: Copies up to this many bytes run on the calling (event loop) thread; larger ones go to a
#: worker thread with a GIL-free memmove.  1 MiB copies in about 30-80 µs here.
INLINE_COPY_LIMIT = 1 << 20

#: populate() works in chunks of this size and reports progress after each.
POPULATE_CHUNK = 16 << 20

ProgressCallback = Callable[[int, int], object]

#: Advice after which private pages read back as zeros (or as the file's data).
DISCARDING_ADVICE = frozenset({os_impl.MADV_DONTNEED, os_impl.MADV_FREE})

#: How often exclusive() looks whether the direct accesses in progress have ended.
_DIRECT_POLL = 0.0002

_get_ident = threading.get_ident

#: ``_fork_guard`` of a map lost in a fork (no process has pid 0).
_LOST_IN_A_FORK = 0

#: Sizes of the aligned loads and stores that are single instructions (see atomic_load).
ATOMIC_TYPES: dict[
    int, type[ctypes.c_uint8 | ctypes.c_uint16 | ctypes.c_uint32 | ctypes.c_uint64]
] = {
    1: ctypes.c_uint8,
    2: ctypes.c_uint16,
    4: ctypes.c_uint32,
    8: ctypes.c_uint64,
}

#: ``(offset, length, copier)`` of one piece of a map.
Piece = tuple[int, int, Copier]
#: A borrow in progress: its offset in the map and its loan (its views).
Borrowed = tuple[int, Loan]


class MapCore:
    """A map: its memory, its pieces and everything that can be done to it."""

    #: Name used in error messages and reprs.
    kind: ClassVar[str] = "map"
    #: Whether the memory is private anonymous memory (no file behind it).
    anonymous: ClassVar[bool] = False

    memory: Memory
    #: The address of byte 0 of the map, and its length.
    addr: int
    length: int

    def __init__(self, writable: bool) -> None:
        self._cond = new_condition()
        self._pinners: dict[int, int] = {}  # thread identity -> pins it holds (never 0)
        self._remapper: int | None = None  # the thread inside exclusive(), if any
        #: The threads inside a direct access (see :meth:`_direct_refused`).
        self._direct: list[int] = []
        self._closed = False
        #: False once the map may be unusable here (closed, or DONTFORK was advised): the
        #: facades' one-attribute test before they call :meth:`check_open`.
        self.usable = True
        # The pid of the process that advised DONTFORK on part of the map (empty if none).
        self._fork_guard: list[int] = []
        self._pieces: Sequence[Piece] = ()
        self._starts: list[int] = []  # the pieces' offsets, for bisect
        self.writable = writable
        track(self)

    def after_fork_in_child(self, survivor: int) -> None:
        """Keep only the pins of the thread that forked (see ``_forks``).  A map another
        thread was remapping or closing counts as closed here: its memory may be
        half-changed, so it is neither used nor unmapped (as after DONTFORK)."""
        self._cond = renewed(self._cond)
        pins = self._pinners.get(survivor, 0)
        self._pinners = {survivor: pins} if pins else {}
        # In place: a copy the survivor was in (a signal handler forked) removes itself
        # from this very list (adversary round 44: a new list kept it there for good,
        # and the child could never close or resize the map).
        self._direct[:] = [me for me in self._direct if me == survivor]
        if self._remapper not in (None, survivor):
            self._remapper = None
            self._fork_guard[:] = [_LOST_IN_A_FORK]
            self.memory.guard_changed()
            self.usable = False

    # -- state ------------------------------------------------------------------------

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
            raise self._closed_error()

    def _closed_error(self) -> ClosedMapError:
        if not self._closed and self.forked_away():
            if self._fork_guard[0] == _LOST_IN_A_FORK:
                why = "another thread was resizing or closing it when this process forked"
            else:
                why = "advised DONTFORK, so its memory is not in this child process"
            return ClosedMapError(self.kind, why)
        return ClosedMapError(self.kind)

    def note_advice(self, advice: int, whole: bool) -> None:
        """Remember DONTFORK (and forget it after DOFORK over the whole map)."""
        if advice == os_impl.MADV_DONTFORK:
            self._fork_guard[:] = [os.getpid()]
            self.memory.guard_changed()
            self.usable = False
        elif advice == os_impl.MADV_DOFORK and whole:
            self._fork_guard.clear()
            self.memory.guard_changed()
            self.usable = not self._closed

    def describe(self) -> str:
        if self.closed:
            return "closed"
        return f"len={self.length} addr={self.addr:#x}"

    # -- argument checks --------------------------------------------------------------

    def check_writable(self) -> None:
        if not self.writable:
            raise ReadOnlyError(f"this {self.kind} is read-only")

    def check_resizable(self) -> None:
        """Raise if this map can never be resized (see FileCore)."""

    def resize(self, length: int) -> None:
        raise NotImplementedError  # pragma: no cover - every resizable map type defines it

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
        # (Converted before the length is read: an __index__ may resize or close the map.)
        start, count = as_int(offset, "offset"), as_int(length, "length")
        return check_range(start, count, self.length)

    def check_span(self, offset: object, length: object | None) -> tuple[int, int]:
        """Like check_range; a length of None means "to the end of the map"."""
        if length is None:
            start = as_int(offset, "offset")
            if not 0 <= start <= self.length:
                raise OutOfBoundsError(start, None, self.length)
            return start, self.length - start
        start, count = as_int(offset, "offset"), as_int(length, "length")
        return check_range(start, count, self.length)

    # -- pins and exclusive access ----------------------------------------------------

    def pinned(self, join: bool = False) -> _Pinned:
        """Keep the map mapped at its address for the block (thread-safe).

        ``join``: for the group committer, which runs flushes that a thread holding a pin
        may be waiting for (a finalizer that flushes, run inside a pinned call): it may
        pin while a remapper waits as long as pins are held, since the remapper cannot
        start before they are released anyway.

        :raises ClosedMapError: if the map is closed
        """
        return _Pinned(self, join)

    def check_may_wait(self) -> None:
        """Raise if the calling thread must not wait for another thread's use of the map:
        it holds a pin (it is inside one of this map's calls, and a close or resize may
        wait for that very pin), or it is inside an ``msync`` of the map's file (see
        :meth:`check_not_syncing`).  What calls back in there is a finalizer or signal
        handler.

        :raises RuntimeError: if so
        """
        if threading.get_ident() in self._pinners:
            raise RuntimeError(
                f"a finalizer or signal handler run inside a call of a {self.kind} cannot "
                "wait for another thread's use of it (a close or resize may wait for this "
                "call)"
            )
        self.check_not_syncing()

    def check_not_syncing(self) -> None:
        """Raise if the calling thread is inside an ``msync`` of the map's file (maps of
        files: see ``FileBackedCore``); a no-op for other maps.

        :raises RuntimeError: if it is
        """

    def check_can_wait(self) -> None:
        """Raise if the calling thread may not wait for another thread's work on this map
        (a flush by the committer): it is closing or resizing it, or a finalizer runs
        inside its pin bookkeeping.

        :raises RuntimeError: if so
        """
        check_not_held(self._cond)
        self.check_not_remapping()
        self.check_not_syncing()

    def check_not_remapping(self, me: int | None = None) -> None:
        """Raise if the calling thread is inside :meth:`exclusive` (closing or resizing
        this map): a call made there, by a finalizer that the garbage collection of a
        close runs, would wait for the close, which waits for it.

        :raises RuntimeError: if it is
        """
        if self._remapper == (threading.get_ident() if me is None else me):
            raise RuntimeError(
                f"cannot use a {self.kind} from inside its own close or resize on the same "
                "thread (a __del__ or weakref callback run by the garbage collector there)"
            )

    def exclusive(self) -> _Exclusive:
        """Hold off new pins and wait for the current ones, to change the mapping.

        :raises ClosedMapError: if the map is closed
        :raises RuntimeError: if the calling thread holds a pin (it would wait for itself)
        """
        return _Exclusive(self)

    # -- closing ----------------------------------------------------------------------

    def close(self) -> None:
        """Unmap the map (idempotent); waits for pinned operations to finish.

        :raises BorrowError: if a view of it is still alive (the map stays open)
        """
        if self._closed:
            return
        if self.forked_away():
            self._closed = True  # nothing of it is mapped here
            self.memory.forget()
            self._release_resources()
            return
        with self.exclusive():
            self._before_unmap()
            with signals_held():  # closed means unmapped and let go, whatever arrives
                self.memory.retire()
                self._unmap()
                self._closed = True
                self.usable = False
                self._release_resources()

    def _before_unmap(self) -> None:
        """What to do while the map is still mapped and nobody else uses it (in close)."""

    def unheard_failure(self) -> OSError | None:
        """For :meth:`close`'s caller: a failure of the map's that no call raised yet
        (maps of files: a failed write-back), once; None for other maps."""
        return None

    def _unmap(self) -> None:
        raise NotImplementedError  # pragma: no cover - every map type defines it

    def _release_resources(self) -> None:
        """Let go of what the map holds besides its memory (a file descriptor)."""

    # -- pieces -----------------------------------------------------------------------

    def _set_pieces(self, pieces: Sequence[Piece]) -> None:
        """Adopt ``pieces``: in order, contiguous, covering the whole map."""
        self._pieces = pieces
        self._starts = [piece[0] for piece in pieces]

    def _spans(self, offset: int, length: int) -> Iterator[tuple[Copier, int, int, int]]:
        """``(copier, offset in its piece, count, position in the copy)`` for each piece
        that ``[offset, offset + length)`` crosses, in order; the range is checked."""
        pieces = self._pieces
        if len(pieces) == 1:
            start, _, copier = pieces[0]
            yield copier, offset - start, length, 0
            return
        end = offset + length
        for i in range(max(bisect_right(self._starts, offset) - 1, 0), len(pieces)):
            start, size, copier = pieces[i]
            if start >= end:
                break
            first = max(start, offset)
            yield copier, first - start, min(start + size, end) - first, first - offset

    def fault_error(self, exc: OSError, copier: Copier, offset: int, length: int) -> OSError:
        """The error for a system call that failed on ``[offset, offset + length)`` of the
        piece of ``copier``: ``EFAULT`` becomes :class:`~anymmap.MappingFaultError` with
        the map offset of the first page that is not there and why; other errors stay."""
        if exc.errno != errno.EFAULT:
            return exc
        asked = offset
        address = getattr(exc, "address", None)  # the exact page, when the call said it
        if address is not None and copier.addr <= address < copier.addr + offset + length:
            offset, length = address - copier.addr, 1
        first, cause = copier.fault(offset, length)
        first = max(first, asked)  # (a page's start may lie before the range asked for)
        cause = getattr(exc, "cause", None) or cause  # (a refusal that knows why)
        map_offset = copier.addr + first - self.addr
        return MappingFaultError(max(map_offset, 0), copier.addr + first, cause)

    # -- copies -----------------------------------------------------------------------

    def try_read(self, offset: object, dst: memoryview, limit: int | None = None) -> bool:
        """Copy into ``dst`` now, if it is at most ``limit`` bytes and no page has to come
        from the disk; return whether it did (if not, the contents of ``dst`` are
        unspecified).

        The hot path of every small copy: the usual case (an int offset, a range inside
        one piece) makes one Python call (:meth:`_copy_now`) before the copier's.
        """
        n = len(dst)
        start = offset if type(offset) is int else as_int(offset, "offset")
        if start < 0 or start + n > self.length:
            raise OutOfBoundsError(start, n, self.length)
        if limit is not None and n > limit:
            return False
        if (self.memory.twinned or self.exposed) and self._aliased(dst):  # (see _aliased)
            tmp = memoryview(bytearray(n))
            if not self._copy_now(start, n, tmp, False):
                return False
            self._put_back(dst, tmp, start)
            return True
        return self._copy_now(start, n, dst, False)

    def _enter_direct(self, me: int, start: int, n: int) -> None:
        """Enter a direct access to ``[start, start + n)`` (see :meth:`_direct_refused`)
        for the thread ``me``.  Called first thing inside a ``try`` whose ``finally``
        removes ``me`` from ``_direct`` right away (no call before it, and a ValueError
        ignored: a signal before the entry): entered outside it, or left through a
        function, a signal's exception raised there would leave ``me`` in ``_direct`` for
        good, and every close or resize of the map would be refused.  (:meth:`_copy_now`,
        the hot path, does it inline.)"""
        self._direct.append(me)
        if self._remapper is not None or start + n > self.length:
            self._direct_refused(me, start, n)

    def _direct_refused(self, me: int, start: int, n: int) -> None:
        """Raise unless the calling thread may touch ``[start, start + n)`` directly.

        A direct access (a copy on the calling thread, an atomic load or store) takes no
        pin, for speed: it enters ``_direct`` (a list: appending and removing are atomic
        under the GIL), then looks for a thread changing the mapping, and
        :meth:`exclusive` sets ``_remapper`` and then waits for ``_direct`` to empty.
        Whichever comes second sees the other.  The facades' locks already keep their own
        users from meeting a change; this stops the ones they cannot see, such as a task
        of a second event loop in another thread.

        :raises RuntimeError: if another thread is closing or changing the mapping
        :raises OutOfBoundsError: if it shrank the map since the range was checked
        """
        if self._remapper not in (None, me):
            raise RuntimeError(
                f"another thread is closing or changing this {self.kind}: a map's async "
                "API is for the tasks of one event loop at a time"
            )
        if start + n > self.length:
            raise OutOfBoundsError(start, n, self.length)

    def _piece_of(self, start: int, n: int) -> tuple[int, Copier] | None:
        """``(offset of its piece, copier)`` if ``[start, start + n)`` lies in one piece
        (the usual case, copied without ``_spans``' generator), else None."""
        pieces = self._pieces
        if len(pieces) == 1:
            first, _, copier = pieces[0]
            return first, copier
        first, size, copier = pieces[bisect_right(self._starts, start) - 1]
        return (first, copier) if start + n <= first + size else None

    def _copy_now(self, start: int, n: int, buf: memoryview, writing: bool) -> bool:
        """Copy between ``buf`` and ``[start, start + n)`` on this thread if no page of it
        can wait for the disk; False (nothing or part copied) if one could."""
        if not n:
            return True  # a no-op anywhere, even over a hole
        me = _get_ident()
        direct = self._direct
        try:
            direct.append(me)  # (_enter_direct, inline)
            if self._remapper is not None or start + n > self.length:
                self._direct_refused(me, start, n)
            pieces = self._pieces
            if len(pieces) == 1:
                first, _, copier = pieces[0]
            else:
                first, size, copier = pieces[bisect_right(self._starts, start) - 1]
                if start + n > first + size:
                    return self._copy_spans(start, n, buf, writing)
            try:
                if writing:
                    return copier.write_now(start - first, buf)
                return copier.read_now(start - first, buf)
            except OSError as exc:
                raise self.fault_error(exc, copier, start - first, n) from None
        finally:
            try:  # (see _enter_direct)
                direct.remove(me)
            except ValueError:
                pass

    def _copy_spans(self, start: int, n: int, buf: memoryview, writing: bool) -> bool:
        """:meth:`_copy_now` of a range over several pieces."""
        part = buf
        try:
            for copier, at, count, pos in self._spans(start, n):
                part = buf if count == n else buf[pos : pos + count]
                if not (copier.write_now(at, part) if writing else copier.read_now(at, part)):
                    return False
        except BaseException as exc:
            if part is not buf:  # (a traceback the caller keeps would keep it exported:
                part.release()  # adversary round 37)
            if isinstance(exc, OSError):
                raise self.fault_error(exc, copier, at, count) from None
            raise
        return True

    def start_read(self, offset: object, dst: memoryview) -> Callable[[], None] | None:
        """Copy into ``dst`` on this thread if that cannot wait for the disk or take long;
        else return the copy as a call for a worker thread."""
        start, n = self.check_range(offset, len(dst))
        if (self.memory.twinned or self.exposed) and self._aliased(dst):  # (see _aliased)
            tmp = memoryview(bytearray(n))
            rest = self.start_read(start, tmp)
            if rest is None:
                self._put_back(dst, tmp, start)
                return None
            return partial(self._then_put_back, rest, dst, tmp, start)
        if n <= INLINE_COPY_LIMIT and self._copy_now(start, n, dst, False):
            return None
        return partial(self.read_blocking, start, dst)

    def read(self, offset: object, dst: memoryview) -> None:
        """Copy into ``dst`` on this thread, whatever it takes."""
        rest = self.start_read(offset, dst)
        if rest is not None:
            rest()

    def read_blocking(self, start: int, dst: memoryview) -> None:
        if self._aliased(dst):  # (see _aliased)
            tmp = memoryview(bytearray(len(dst)))
            self.read_blocking(start, tmp)
            self._put_back(dst, tmp, start)
            return
        with self.pinned(), PinnedBuffer(dst, writable=True) as pin:
            self._read_to(pin.address, start, pin.nbytes)

    def _read_to(self, address: int, start: int, n: int) -> None:
        try:
            for copier, at, count, pos in self._spans(start, n):
                copier.read(address + pos, at, count)
        except OSError as exc:
            raise self.fault_error(exc, copier, at, count) from None

    def read_bytes(self, offset: object, length: object) -> bytes | Callable[[], bytes]:
        """The bytes of the range, or a call for a worker thread that returns them."""
        start, n = self.check_range(offset, length)
        if not n:
            return b""
        if n <= INLINE_COPY_LIMIT:
            me = _get_ident()
            try:
                self._enter_direct(me, start, n)
                one = self._piece_of(start, n)
                if one is not None:
                    first, copier = one
                    try:
                        data = copier.bytes_now(start - first, n)
                    except OSError as exc:
                        raise self.fault_error(exc, copier, start - first, n) from None
            finally:
                try:  # (see _enter_direct)
                    self._direct.remove(me)
                except ValueError:
                    pass
            if one is not None:
                if data is not None:
                    return data
            else:
                buf = bytearray(n)
                if self._copy_now(start, n, memoryview(buf), False):
                    return bytes(buf)
        return partial(self.read_bytes_blocking, start, n)

    def read_bytes_blocking(self, start: int, n: int) -> bytes:
        data, address = new_bytes(n)
        with self.pinned():
            self._read_to(address, start, n)
        return data

    def try_write(self, offset: object, src: memoryview, limit: int | None = None) -> bool:
        """Copy ``src`` into the map now, if it is at most ``limit`` bytes and no page has
        to come from the disk; return whether it did (if not, part of it may have been
        written)."""
        self.check_writable()
        start, n = self.check_range(offset, len(src))
        if limit is not None and n > limit:
            return False
        if (self.memory.twinned or self.exposed) and self._aliased(src):  # (see _aliased)
            src = self._private_copy(src, start)
        try:
            return self._copy_now(start, n, src, True)
        finally:
            self.note_write(start, n)  # after: see note_write

    def note_write(self, start: int, n: int) -> None:
        """``[start, start + n)`` was written (file maps count it as pending until a
        flush covers it).  Called once the bytes are in memory, also after a partial or
        failed copy, never before: a flush that starts between the note and the copy
        would count them durable without having seen them."""

    def start_write(self, offset: object, src: memoryview) -> Callable[[], None] | None:
        """Like :meth:`start_read`, the other way."""
        self.check_writable()
        start, n = self.check_range(offset, len(src))
        if (self.memory.twinned or self.exposed) and self._aliased(src):  # (see _aliased)
            src = self._private_copy(src, start)
        if n <= INLINE_COPY_LIMIT:
            try:
                if self._copy_now(start, n, src, True):
                    return None
            finally:
                self.note_write(start, n)  # (part of it may be written)
        return partial(self.write_blocking, start, src)

    def write(self, offset: object, src: memoryview) -> None:
        rest = self.start_write(offset, src)
        if rest is not None:
            rest()

    def write_blocking(self, start: int, src: memoryview) -> None:
        if self._aliased(src):  # (see _aliased)
            src = self._private_copy(src, start)
        with self.pinned(), PinnedBuffer(src, writable=False) as pin:
            try:
                for copier, at, count, pos in self._spans(start, pin.nbytes):
                    copier.write(at, pin.address + pos, count)
            except OSError as exc:
                raise self.fault_error(exc, copier, at, count) from None
            finally:
                self.note_write(start, pin.nbytes)  # after the copy: see note_write

    #: Whether this map's address was given out where a copy's buffer can come from: a
    #: borrow (its view may escape it, and its ``.obj`` chain leads to the whole memory),
    #: ``as_ptr()``, a Region.  Never cleared (it costs a look at the address of each
    #: copy's buffer, about 0.3 µs; none for ``bytes``/``bytearray``).
    exposed = False

    def _aliased(self, view: memoryview) -> bool:
        """Whether a copy with ``view`` must go through a private copy of it (see
        _copier.py): the buffer may show pages of this map's file through another map
        (``twinned``), or lie in this map's own memory (``exposed``).  A copy between a
        file's page cache and memory that shows the same pages is done by the kernel as
        a forward copy, not a ``memmove``: overlapping ranges came out wrong."""
        if type(view.obj) in (bytes, bytearray):
            return False
        if self.memory.twinned and shares_pages(view):
            return True
        return self.exposed and self._holds(view)

    def _holds(self, view: memoryview) -> bool:
        """Whether ``view`` lies (partly) in this map's own memory."""
        with PinnedBuffer(view, writable=False) as pin:
            return pin.address < self.addr + self.length and self.addr < pin.address + pin.nbytes

    def _private_copy(self, src: memoryview, start: int) -> memoryview:
        try:
            return private_copy(src)
        except OSError as exc:
            raise self._buffer_fault(exc, start) from None

    def _put_back(self, dst: memoryview, tmp: memoryview, start: int) -> None:
        try:
            put_back(dst, tmp)
        except OSError as exc:
            raise self._buffer_fault(exc, start) from None

    def _then_put_back(
        self, read: Callable[[], None], dst: memoryview, tmp: memoryview, start: int
    ) -> None:
        read()
        self._put_back(dst, tmp, start)

    def _buffer_fault(self, exc: OSError, start: int) -> OSError:
        """The error for a buffer (memory of a map) that faulted in a private copy."""
        if exc.errno != errno.EFAULT:
            return exc
        return MappingFaultError(
            start,
            self.addr + start,
            "the buffer could not be accessed: it is memory of a map whose file was "
            "truncated, or a hole",
        )

    # -- borrows ----------------------------------------------------------------------

    def borrow(self, offset: object, length: object, writable: bool) -> Borrowed:
        """Start a borrow of a range (checked); end it with :meth:`end_borrow`."""
        if writable:
            self.check_writable()
        start, n = self.check_range(offset, length)
        self.check_borrowable(start, n, writable)
        # A view's .obj chain leads to the whole memory, and a view or array may outlive
        # the borrow: from now on a copy's buffer may be this map's own memory.
        self.exposed = True
        at = self.addr - self.memory.addr + start  # in the memory
        return start, self.memory.borrow(at, n, writable)

    def check_borrowable(self, start: int, n: int, writable: bool) -> None:
        """Raise if a direct view of the range would not be safe to touch (sparse maps)."""

    def end_borrow(self, borrowed: Borrowed) -> bool:
        """End a borrow; return whether something built on its view is still alive (the
        caller then raises :func:`escape_error`, having dropped ``borrowed``)."""
        start, loan = borrowed
        if not loan.views[0].readonly:  # a writable borrow: its bytes count as written
            self.note_write(start, len(loan.views[0]))
        return loan.end()

    # -- direct single-instruction access ------------------------------------------

    def atomic_address(self, offset: object, size: object, store: bool) -> tuple[int, int]:
        """The address and width of an aligned 1, 2, 4 or 8-byte value in a piece where a
        direct access cannot fault.

        :raises ValueError: for another size, or an unaligned offset
        :raises MappingFaultError: for a hole, a read-only piece (``store``), a
            pass-through piece, or a file window past the end of its file
        """
        width = as_int(size, "size")
        if width not in ATOMIC_TYPES:
            raise ValueError(f"size must be 1, 2, 4 or 8, not {width}")
        start, _ = self.check_range(offset, width)
        if start % width:
            raise ValueError(f"offset {start} is not aligned to the size {width}")
        for copier, at, count, _ in self._spans(start, width):
            if isinstance(copier, MemoryCopier) or (
                isinstance(copier, FileCopier) and self._within_file(copier, at, count)
            ):
                if store and not copier.writable:
                    raise MappingFaultError(start, self.addr + start, "the page is read-only")
                if isinstance(copier, FileCopier):
                    # A page of a file may have no block yet (a sparse file): touching it
                    # allocates one (tmpfs: also to read), and on a full file system dies
                    # of SIGBUS.  Fault it in first, which reports that as EFAULT.
                    try:
                        os_impl.prepare_access(page_floor(copier.addr + at), store)
                    except OSError as exc:
                        raise self.fault_error(exc, copier, at, count) from None
            elif isinstance(copier, (HoleCopier, FileCopier)):
                raise MappingFaultError(start, self.addr + start, copier.fault(at, count)[1])
            else:
                raise MappingFaultError(
                    start,
                    self.addr + start,
                    "direct access to a pass-through mapping is not offered; use read_at",
                )
        return self.addr + start, width

    def atomic_load(self, offset: object, size: object) -> int:
        """The unsigned ``size``-byte value at ``offset``, read with one aligned load."""
        width, start = as_int(size, "size"), as_int(offset, "offset")  # before the entry
        me = _get_ident()
        try:
            self._enter_direct(me, 0, 0)
            return _load(*self.atomic_address(start, width, store=False))
        finally:
            try:  # (see _enter_direct)
                self._direct.remove(me)
            except ValueError:
                pass

    def atomic_store(self, offset: object, size: object, value: object) -> None:
        """Store ``value`` in the ``size`` bytes at ``offset`` with one aligned store."""
        # Converted first: an __index__ may cut the file, or close the map and wait.
        number = as_int(value, "value")
        width, start = as_int(size, "size"), as_int(offset, "offset")
        me = _get_ident()
        try:
            self._enter_direct(me, 0, 0)
            address, width = self.atomic_address(start, width, store=True)
            if not 0 <= number < 1 << (8 * width):
                raise ValueError(f"value {number} does not fit in {width} unsigned byte(s)")
            _store(address, width, number)
        finally:
            try:  # (see _enter_direct)
                self._direct.remove(me)
            except ValueError:
                pass
        self.note_write(address - self.addr, width)

    @staticmethod
    def _within_file(copier: FileCopier, at: int, count: int) -> bool:
        return copier.file_offset + at + count <= page_ceil(os_impl.file_size(copier.fd))

    # -- memory management ------------------------------------------------------------

    def aligned(self, offset: int, length: int) -> tuple[int, int]:
        """The page-aligned absolute range covering ``[offset, offset + length)``."""
        start = page_floor(self.addr + offset)
        return start, page_ceil(self.addr + offset + length) - start

    def _mapped_spans(self, offset: int, length: int) -> Iterator[tuple[Copier, int, int]]:
        """``(copier, offset in its piece, count)`` of the pieces with memory behind them
        in the range (sparse maps leave holes out)."""
        for copier, at, count, _ in self._spans(offset, length):
            yield copier, at, count

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
            done = self.populate_chunk(start, n, done, write)
            if progress is not None:
                progress(done, n)

    def populate_chunk(self, start: int, n: int, done: int, write: bool) -> int:
        """The next chunk of :meth:`populate` of ``[start, start + n)``, pinned: at most
        ``POPULATE_CHUNK`` bytes from ``start + done``; returns the new ``done``.  The whole
        range is checked again, so a map shrunk under the call reports the caller's range."""
        step = min(POPULATE_CHUNK, n - done)
        with self.pinned():
            self.check_range(start, n)
            for copier, at, count in self._mapped_spans(start + done, step):
                base = page_floor(copier.addr + at)
                span = page_ceil(copier.addr + at + count) - base
                try:  # (read-only pieces of a sparse map are populated for reading)
                    os_impl.populate(base, span, write and copier.writable)
                except OSError as exc:
                    raise self.fault_error(exc, copier, at, count) from None
        return done + step

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
            for copier, at, count in self._mapped_spans(start, n):
                if advice in DISCARDING_ADVICE:
                    base = page_ceil(copier.addr + at)
                    span = page_floor(copier.addr + at + count) - base
                else:
                    base = page_floor(copier.addr + at)
                    span = page_ceil(copier.addr + at + count) - base
                if span <= 0:
                    continue
                try:
                    os_impl.madvise(base, span, advice)
                except OSError as exc:
                    raise self.fault_error(exc, copier, at, count) from None
            self.note_advice(advice, whole=start == 0 and n == self.length)


def _load(address: int, width: int) -> int:
    # SAFETY: atomic_address checked that the value is aligned and lies in a piece where
    # a direct access cannot fault (a file window: inside the file when checked; a peer
    # cutting the file at that moment is documented as fatal, as for views); ctypes copies
    # a fixed-size scalar with one memcpy of that size, which compiles to a single load on
    # x86-64 and arm64.
    return ATOMIC_TYPES[width].from_address(address).value


def _store(address: int, width: int, number: int) -> None:
    # SAFETY: as in _load, and atomic_address checked that the piece is writable.
    ATOMIC_TYPES[width].from_address(address).value = number


# -- the two sides of a map's condition ---------------------------------------------------
#
# Classes, not @contextmanager generators: a generator's acquisition ends inside
# contextlib's __enter__, where a signal handled as next() returns (Ctrl-C that arrived
# during the wait) raised before the block was entered, and the pin or the exclusive
# hold was never given back (every later close waited for ever).  Here __enter__ undoes
# what it took if anything raises in it, and a signal handled after it returns is
# inside the block, whose __exit__ gives it back.  Each records what it took in one
# store, so the undo can tell whether it happened.  One handled as __exit__ begins skips
# the release: the hold is then given back when it is dropped (ON_DROP, in
# anymmap._sys._signals, says how without a Python __del__).


class _Pinned(Hold):
    def __init__(self, core: MapCore, join: bool) -> None:
        self._core = core
        self._join = join

    def __enter__(self) -> None:
        core = self._core
        me = threading.get_ident()
        check_not_held(core._cond)
        held = -1  # the pins this thread held before
        due = [False]
        unpin = partial(_unpin, core, me, due)
        try:
            with core._cond:
                core.check_not_remapping(me)
                # A thread that holds a pin already may nest another (a flush inside the
                # group committer's pin): a remapper waiting for the outer pin would wait
                # for ever.
                while (
                    core._remapper is not None
                    and me not in core._pinners
                    and not (self._join and core._pinners)
                ):
                    core.check_not_syncing()  # (only when it would wait: the hot path)
                    wait_unless_exiting(core._cond, HEAL_EVERY)
                core.check_open()
                held = core._pinners.get(me, 0)
                core._pinners[me] = held + 1
                due[0] = True
            self._on_drop = unpin
            return  # (inside the try: a signal handled as it returns is undone)
        except BaseException:
            # (No call until the hold is armed: see Held.__enter__.)
            pinners = core._pinners
            if held >= 0 and (pinners[me] if me in pinners else 0) == held + 1:  # noqa: SIM401 - no call
                due[0] = True  # (counted, then a signal's handler raised)
            self._on_drop = unpin  # (interrupted, the give-back happens at the drop)
            unpin()
            self._on_drop = DISARMED
            raise


@whole
def _unpin(core: MapCore, me: int, due: list[bool]) -> None:
    """Give back a :class:`_Pinned`'s pin for ``me`` if ``due``, once."""
    if me == threading.get_ident() and held_here(core._cond):
        # A drop by a collection inside the condition's own bookkeeping on the pin's
        # thread, which may be counting a pin of its own.
        return
    with core._cond:
        if not due[0]:
            return
        due[0] = False  # (and no call until the count is right)
        pins = core._pinners[me]
        if pins == 1:
            del core._pinners[me]
            if not core._pinners:
                core._cond.notify_all()
        else:
            core._pinners[me] = pins - 1


class _Exclusive(Hold):
    def __init__(self, core: MapCore) -> None:
        self._core = core

    def __enter__(self) -> None:
        core = self._core
        me = threading.get_ident()
        check_not_held(core._cond)
        if core._remapper == me or me in core._pinners:  # (only this thread makes that so)
            give_back_skipped()
        core.check_not_remapping(me)  # (so a _remapper of `me` below is this call's)
        core.check_not_syncing()
        due = [False]
        release = partial(_release_exclusive, core, due)
        try:
            with core._cond:
                core.check_open()
                if me in core._pinners or me in core._direct:
                    raise RuntimeError(
                        f"cannot close or resize a {core.kind} from inside one of its own "
                        "calls on the same thread"
                    )
                while core._remapper is not None:  # another thread's close or resize
                    wait_unless_exiting(core._cond, HEAL_EVERY)
                    core.check_open()
                core._remapper = me
                due[0] = True
                self._on_drop = release
                while core._pinners:
                    wait_unless_exiting(core._cond, HEAL_EVERY)
                # Direct accesses take no pin; they are short and never wait, so poll.
                while core._direct:
                    wait_unless_exiting(core._cond, _DIRECT_POLL)
            # The condition is free during the change: a thread stopped inside it at exit
            # (a daemon thread) must not keep a finalizer's call from failing cleanly.
            return  # (inside the try: a signal handled as it returns is undone)
        except BaseException:
            # (No call until the hold is armed: see Held.__enter__.)
            if core._remapper == me:
                due[0] = True
            self._on_drop = release  # (interrupted, the give-back happens at the drop)
            release()
            self._on_drop = DISARMED
            raise


def _release_exclusive(core: MapCore, due: list[bool]) -> None:
    """Give back an :class:`_Exclusive` hold if ``due``, once."""
    if not due[0]:  # (given back already: a drop after an exit a signal cut short)
        return
    # (Held: once begun, the release is whole, and it happens once.)
    with signals_held(), core._cond:
        if due[0]:
            due[0] = False
            core._remapper = None
            core._cond.notify_all()
