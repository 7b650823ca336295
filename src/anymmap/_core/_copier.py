"""Copies in and out of mapped memory that never crash the process, chosen once per piece.

A map is made of one or more *pieces*, each backed one way (private anonymous memory, a
window of a file, a hole of a sparse map, ...).  When a piece is mapped it gets the
:class:`Copier` that suits its backing, and every copy in or out of it goes through that
copier; nothing re-tests the backing per call:

=====================  =============================  ======================================
copier                 reads                          writes
=====================  =============================  ======================================
:class:`MemoryCopier`  memoryview copy / ``memmove``  the same (read-only pieces: EFAULT)
(private anonymous     (it cannot fault)
memory)
:class:`FileCopier`    shared: ``pread`` from the     ``process_vm_writev`` (fault-safe) or
(a file window)        page cache; private (copy      a plain copy under ``fault_safe=False``
                       maps): ``process_vm_readv``
                       or, under ``fault_safe=False``,
                       a plain copy
:class:`KernelCopier`  ``process_vm_readv``           ``process_vm_writev``
(any other backing)
:class:`HoleCopier`    EFAULT                         EFAULT
(nothing mapped)
=====================  =============================  ======================================

Each copier has two speeds.  ``read_now`` / ``write_now`` run on the calling thread (the
event loop's, for the async maps) and copy only if no page has to come from the disk
(``preadv(RWF_NOWAIT)`` or ``mincore``); they return False otherwise, having copied
nothing the caller relies on.  ``read`` / ``write`` block, without the GIL, for a worker
thread.  A page that is not there (a file truncated by another process, a hole) makes any
of them raise ``OSError(EFAULT)`` with the failing ``address`` when known, never a signal;
the map turns that into :class:`~anymmap.MappingFaultError` in one place, asking the
copier *why* (:meth:`Copier.fault`).  Offsets given to a copier are relative to its piece.
"""

from __future__ import annotations

import copy
import errno
import sys
import threading
import weakref
from collections.abc import Callable, Iterable
from functools import partial
from typing import ClassVar

from .._sys import DISARMED, Hold, collector_off, os_impl, signals_held
from ._buffers import PinnedBuffer, new_bytes
from ._files import FileRef
from ._forks import renew_in_child
from ._lifetime import Memory
from ._threadlock import held_here

PAGE_SIZE = os_impl.PAGE_SIZE


def page_floor(value: int) -> int:
    return value - value % PAGE_SIZE


def page_ceil(value: int) -> int:
    return -(-value // PAGE_SIZE) * PAGE_SIZE


def efault(address: int, what: str, cause: str | None = None) -> OSError:
    """The error a copier raises for a page that is not there (``address`` included), or
    that it refuses for a known ``cause`` (which the map's error then gives)."""
    error = OSError(errno.EFAULT, f"{what} at {address:#x}: Bad address")
    error.address = address  # type: ignore[attr-defined]
    error.cause = cause  # type: ignore[attr-defined]
    return error


def address_of(view: memoryview) -> int:
    """The address of a writable buffer's first byte (the caller holds it meanwhile)."""
    with PinnedBuffer(view, writable=True) as pin:
        return pin.address


# -- two mappings of one file ---------------------------------------------------------
#
# Two maps of one file (a region attached twice, a file mapped by two MmapRaw) show the
# same physical pages at two addresses.  A copy between them whose ranges overlap in the
# file cannot see the overlap (memmove and the kernel compare addresses, not pages) and
# would smear, re-reading bytes it has just written.  So every file window registers its
# mapping under the file's identity; a mapping of a file that has two of them is
# ``twinned``, and a copy in or out of it whose buffer lies in such a mapping goes
# through a private copy of the buffer first (see ``MapCore.try_read``).
# Over-approximations (a mapping since unmapped, a buffer in the other file's map) only
# cost that extra copy.


#: file identity -> weak references to the mappings (``Memory``) of its windows, by
#: ``id`` (a sparse map may show one file in several windows: it counts once); how many
#: of them lived at the file's last recount; the identities of files mapped more than
#: once and their mappings (the twins); registrations left for the next one (see
#: ``_may_lock``); and the lock of these (maps are made in any thread; no user code runs
#: under it, but a finalizer or signal handler may: it is never entered twice).
_windows: dict[tuple[int, int], dict[int, _WindowRef]] = {}
_counted: dict[tuple[int, int], int] = {}
_twinned_files: set[tuple[int, int]] = set()
_twins: list[_WindowRef] = []
_deferred: list[tuple[_WindowRef, tuple[int, int]]] = []
_windows_lock = threading.RLock()
#: Registrations since every file's list was last swept (a file mapped once and closed
#: is not looked at again otherwise: its entry stayed, adversary round 33).
_since_sweep = 0
_after_sweep = 0  # mappings in the registry after that sweep


def _renew_lock_in_child() -> None:
    global _windows_lock
    _windows_lock = threading.RLock()  # a thread of the parent may have held it
    # The parent's maps in the making (other threads') never finish here: counted on,
    # they would keep every shrink in the child from cutting their files.  (The forking
    # thread's own, if it forked from inside one, gives back what is no longer there.)
    _being_mapped.clear()


def _may_lock() -> bool:
    """Whether the calling thread may take ``_windows_lock`` now: not from inside it (a
    finalizer or signal handler run there, which maps a file or copies: adversary round
    33, the thread waited for itself), nor at interpreter exit while a daemon thread
    stopped inside it holds it for good."""
    if held_here(_windows_lock):
        return False
    if sys.is_finalizing():
        if not _windows_lock.acquire(blocking=False):
            return False
        _windows_lock.release()
    return True


renew_in_child(_renew_lock_in_child)


def _live(memory: Memory | None) -> bool:
    return memory is not None and not memory.retired


class _WindowRef(weakref.ref[Memory]):
    """A registration: a weak reference to the :class:`Memory`, and one to its array,
    which lives (mapped) while the memory does and, in cyclic garbage, for as long as a
    finalizer of the cycle may still use it (``keep_until_dropped``).  The collector
    clears the weak references to the garbage before any finalizer runs, and one that
    resurrects the map never gets its registration back: the array's says the file is
    still mapped (adversary round 52: a shrink run by such a finalizer, or after the
    resurrection, cut the file under another map of the cycle, SIGBUS)."""

    __slots__ = ("array",)
    array: weakref.ref[object]


def _window_ref(memory: Memory) -> _WindowRef:
    ref = _WindowRef(memory)
    ref.array = weakref.ref(memory.array())
    return ref


def _mapped(ref: _WindowRef) -> bool:
    """Whether the registration's memory may still be mapped (see ``_WindowRef``)."""
    memory = ref()
    return _live(memory) if memory is not None else ref.array() is not None


def _shows(memory: Memory | None, identity: tuple[int, int]) -> bool:
    """Whether ``memory`` (registered under ``identity``) may still show that file: a
    sparse map keeps count of the files its pieces show (``Memory.files``: updated
    after a window's pages are gone, and before a new one is no longer counted by
    :class:`mapping_file`)."""
    if not _live(memory):
        return False
    assert memory is not None
    return memory.files is None or identity in memory.files


def _recount(identities: Iterable[tuple[int, int]]) -> None:
    """Drop the gone mappings of the files ``identities``, list the twins again and mark
    the mappings concerned (under the lock).  Costs a look at those files' mappings and
    at the twins, not at every map."""
    global _twins
    touched: list[Memory] = []
    for identity in identities:
        live = {key: ref for key, ref in _windows.get(identity, {}).items() if _mapped(ref)}
        touched += [memory for memory in (ref() for ref in live.values()) if memory is not None]
        if live:
            _windows[identity] = live
            _counted[identity] = len(live)
        else:
            _windows.pop(identity, None)
            _counted.pop(identity, None)
        if len(live) > 1:
            _twinned_files.add(identity)
        else:
            _twinned_files.discard(identity)
    _twins = [ref for identity in _twinned_files for ref in _windows[identity].values()]
    # A registration left by a finalizer and not finished yet counts as a twin of its
    # file's mappings until it is (adversary round 34: another thread's recount dropped
    # it meanwhile, and copies between it and an overlapping map went direct).
    for ref, identity in _deferred:  # (one a finalizer adds meanwhile is seen too)
        _twins += [ref, *_windows.get(identity, {}).values()]
    twinned = {id(memory) for memory in (ref() for ref in _twins) if memory is not None}
    for memory in touched:  # (a map may have windows of several files: any twin counts)
        memory.twinned = id(memory) in twinned


def register_window(memory: Memory, identity: tuple[int, int]) -> None:
    """Note that ``memory`` maps (part of) the file ``identity``.  A file already twinned
    only gains a twin (a map opened a thousand times must not cost a million looks); the
    file's mappings are counted again when it becomes twinned, and when its list has
    doubled since the last count, which drops the closed ones.  (Signals held: a Ctrl-C
    half-way would leave the mapping registered but not marked.)"""
    global _twins
    ref = _window_ref(memory)
    with signals_held():
        if not _may_lock():
            # Registered by the call this one interrupted, before it returns; until
            # then the mapping counts as a twin of every other mapping of the file.
            others = list(_windows.get(identity, {}).values())
            _deferred.append((ref, identity))
            _twins = [*_twins, ref, *others]
            for other in (each() for each in others):
                if other is not None:
                    other.twinned = True
            memory.twinned = True
            return
        with _windows_lock:
            _register(ref, identity)
            _register_deferred()


def _register_deferred() -> None:
    """Register what a finalizer or signal handler left (under the lock, by whoever
    holds it: a registration, or a recount of ``shares_pages``)."""
    while _deferred:
        _register(*_deferred.pop())


def _register(ref: _WindowRef, identity: tuple[int, int]) -> None:
    global _twins, _since_sweep, _after_sweep
    _since_sweep += 1
    if _since_sweep > max(64, _after_sweep):  # (amortized: a look per registration)
        _recount(list(_windows))
        _since_sweep, _after_sweep = 0, sum(map(len, _windows.values()))
    memory = ref()
    if memory is None:
        return
    refs = _windows.setdefault(identity, {})
    known = refs.get(id(memory))
    if known is not None and known() is memory:
        return
    refs[id(memory)] = ref
    if identity in _twinned_files and len(refs) <= 2 * _counted.get(identity, 0):
        memory.twinned = True
        _twins = [*_twins, ref]  # (replaced, never changed: see ``shares_pages``)
    else:
        _recount((identity,))


# -- shrinking a file no other mapping shows ------------------------------------------
#
# A map's shrink cuts its file only if no other mapping of this process shows the file
# (a borrow of it past the new end would die of SIGBUS, adversary round 46).  A mapping
# being made reads the file's size and maps that much before it is registered: a cut in
# between left a new map reaching past the end of its file, and its borrow died of
# SIGBUS (adversary round 47, a thread mapping the file anew while another shrank it).
# So a mapping in the making is counted (``mapping_file``) from before it reads the size
# until it is registered, and the check and the cut are one section under the
# registry's lock (``cut_if_alone``): a mapping is either counted there, and nothing is
# cut, or begins after the cut and reads the new size.

#: The mappings being made now: ``id`` of their :class:`mapping_file` -> the file's
#: identity.  (Keyed by hold, so that giving one back is a ``dict.pop``: C code, no
#: Python frame where a second Ctrl-C could cut it short, and a second pop is a no-op.)
_being_mapped: dict[int, tuple[int, int]] = {}


class mapping_file(Hold):  # (lower case: used like a function, ``with mapping_file(id):``)
    """For the block: a mapping of the file ``identity`` is being made (its size read and
    that much mapped and registered), so no shrink of this process cuts the file
    meanwhile.  Given back when dropped if a signal skipped the exit (see ``Hold``)."""

    def __init__(self, identity: tuple[int, int]) -> None:
        self._identity = identity

    def __enter__(self) -> None:
        key = id(self)
        try:
            with signals_held():
                if _may_lock():
                    # (Waits for a check and cut under way: this mapping then reads the
                    # size the cut left.)
                    with _windows_lock:
                        _being_mapped[key] = self._identity
                else:  # (a finalizer inside the registry's lock: no check runs meanwhile)
                    _being_mapped[key] = self._identity
                self._on_drop = partial(_being_mapped.pop, key, None)
        except BaseException:
            # A signal handled as the held section ended, once registered: no __exit__
            # follows, and the caller's undoing found its own mapping still in the making
            # and left a failed growth (round 70's signal-at-every-point test).  (No
            # Python call until it is given back.)
            _being_mapped.pop(key, None)
            self._on_drop = DISARMED
            raise


def cut_if_alone(
    memory: Memory | None,
    identity: tuple[int, int],
    cut: Callable[[], None],
    *,
    but: mapping_file | None = None,
) -> bool:
    """Call ``cut`` (the file's truncation) unless a mapping of this process other than
    ``memory`` may show the file ``identity``, or is being made (see
    :class:`mapping_file`; ``but``: the caller's own, not counted), with no mapping begun
    in between; return whether it did.
    Errs towards not cutting: a registration a finalizer left counts, as does a sparse
    map's window being unmapped (its pieces say so once its pages are gone).

    The collector is off for the section: a finalizer it ran there could map the file
    on this thread (not counted: it cannot take the lock this thread holds, and
    registered only later) after the check, and the cut was made under it (adversary
    round 48, SIGBUS).  Signal handlers are held off; no other finalizer runs here.
    """
    with signals_held():
        if not _may_lock():
            return False
        with _windows_lock, collector_off():
            _recount((identity,))
            _register_deferred()
            own = id(but)
            if any(key != own and made == identity for key, made in _being_mapped.items()):
                return False
            for ref in _windows.get(identity, {}).values():
                other = ref()
                if other is None and _mapped(ref):  # (see _WindowRef)
                    return False
                if other is not memory and _shows(other, identity):
                    return False
            cut()
            return True


def shares_pages(view: memoryview) -> bool:
    """Whether ``view``'s bytes may lie in a mapping of a file that another mapping also
    shows (then a copy between the two must not be direct).  Asked only by a map whose
    own memory is ``twinned``, for a buffer that is not ``bytes``/``bytearray`` (see
    ``MapCore._aliased``); costs a look at each such mapping, not at every map."""
    twins = [ref() for ref in _twins]  # (a list that is replaced, never changed)
    if not all(_live(memory) for memory in twins):  # one was closed or freed since
        with signals_held():
            if _may_lock():  # (else the twins as they are: a few more look, that is all)
                with _windows_lock:
                    _recount(list(_twinned_files))
                    _register_deferred()
                    twins = [ref() for ref in _twins]
    if not twins:
        return False
    with PinnedBuffer(view, writable=False) as pin:
        start, end = pin.address, pin.address + pin.nbytes
    return any(
        memory is not None and memory.addr < end and start < memory.addr + memory.length
        for memory in twins
    )


def private_copy(view: memoryview) -> memoryview:
    """A copy of ``view``'s bytes in memory of its own (read through the kernel: the
    buffer is another map's memory, whose file may have been truncated)."""
    data, address = new_bytes(len(view))
    with PinnedBuffer(view, writable=False) as pin:
        os_impl.read_memory(address, pin.address, pin.nbytes)
    return memoryview(data)


def put_back(dst: memoryview, src: memoryview) -> None:
    """Copy ``src`` into ``dst``, another map's memory (through the kernel, as above)."""
    with PinnedBuffer(dst, writable=True) as out, PinnedBuffer(src, writable=False) as pin:
        os_impl.write_memory(out.address, pin.address, pin.nbytes)


class Copier:
    """How bytes move in and out of one piece of a map (see the module docstring).

    ``memory`` is the map's :class:`Memory`; the piece starts ``base`` bytes into it, at
    the address ``addr``.
    """

    __slots__ = ("addr", "base", "identity", "kind", "memory", "writable")

    #: What :meth:`fault` says when it knows nothing better.
    cause: ClassVar[str] = "the page could not be accessed"

    def __init__(
        self,
        memory: Memory,
        base: int,
        writable: bool,
        kind: str,
        identity: tuple[int, int] | None = None,
    ) -> None:
        self.memory = memory
        self.base = base
        self.addr = memory.addr + base
        self.writable = writable
        #: What the piece is, for ``pieces()``: "anonymous", "zero", "file", ...
        self.kind = kind
        #: The file the piece shows (``os_impl.file_identity``), if any.
        self.identity = identity

    def moved(self, by: int) -> Copier:
        """The same copier for the part of the piece that starts ``by`` bytes later (when
        the front of a piece is replaced)."""
        other = copy.copy(self)
        other.base += by
        other.addr += by
        return other

    @property
    def label(self) -> str | None:
        """What backs the piece, for ``pieces()`` (a file's name), if anything."""
        return None

    def continued_by(self, other: Copier, length: int) -> bool:
        """Whether ``other``, for the piece right after this one's ``length`` bytes, is
        the same backing going on (then the two pieces can be one)."""
        return False

    def read_now(self, offset: int, dst: memoryview) -> bool:
        raise NotImplementedError  # pragma: no cover

    def write_now(self, offset: int, src: memoryview) -> bool:
        raise NotImplementedError  # pragma: no cover

    def read(self, dst: int, offset: int, length: int) -> None:
        os_impl.read_memory(dst, self.addr + offset, length)

    def write(self, offset: int, src: int, length: int) -> None:
        os_impl.write_memory(self.addr + offset, src, length)

    def bytes_now(self, offset: int, length: int) -> bytes | None:
        """The bytes of the range if :meth:`read_now` can have them, else None."""
        buf = bytearray(length)
        return bytes(buf) if self.read_now(offset, memoryview(buf)) else None

    def fault(self, offset: int, length: int) -> tuple[int, str]:
        """Where in ``[offset, offset + length)`` a copy that failed with EFAULT first hit
        a page that is not there, and why."""
        return offset, self.cause

    def _read_only(self, offset: int) -> OSError:
        return efault(self.addr + offset, "write to a read-only page", "the page is read-only")


class MemoryCopier(Copier):
    """Private anonymous memory: it is always there, so plain copies are safe.

    A read-only piece (zero pages of a sparse map) refuses writes with EFAULT.
    """

    __slots__ = ()

    def continued_by(self, other: Copier, length: int) -> bool:
        return (
            type(other) is type(self)
            and other.kind == self.kind
            and other.writable == self.writable
            and other.base == self.base + length
        )

    cause = "the page is read-only"

    def read_now(self, offset: int, dst: memoryview) -> bool:
        start = self.base + offset
        dst[:] = self.memory.view[start : start + len(dst)]
        return True

    def bytes_now(self, offset: int, length: int) -> bytes:
        start = self.base + offset
        return bytes(self.memory.view[start : start + length])

    def write_now(self, offset: int, src: memoryview) -> bool:
        if not self.writable:
            raise self._read_only(offset)
        start = self.base + offset
        self.memory.view[start : start + len(src)] = src
        return True

    def read(self, dst: int, offset: int, length: int) -> None:
        # SAFETY: private anonymous pages cannot fault; the caller pins both ranges.
        os_impl.memmove(dst, self.addr + offset, length)

    def write(self, offset: int, src: int, length: int) -> None:
        if not self.writable:
            raise self._read_only(offset)
        # SAFETY: as in read().
        os_impl.memmove(self.addr + offset, src, length)


class KernelCopier(Copier):
    """Any backing anymmap did not choose (a pass-through ``mmap``): every copy goes
    through the kernel, and pages not in memory are left to a worker thread."""

    __slots__ = ()

    cause = "the page is not mapped, is protected, or its file was truncated"

    def read_now(self, offset: int, dst: memoryview) -> bool:
        n = len(dst)
        if not self.resident(offset, n):
            return False
        self.read(address_of(dst), offset, n)
        return True

    def write_now(self, offset: int, src: memoryview) -> bool:
        if not self.writable:  # (no wait can help: not "not in memory")
            raise self._read_only(offset)
        n = len(src)
        if not self.resident(offset, n):
            return False
        with PinnedBuffer(src, writable=False) as pin:
            self.write(offset, pin.address, n)
        return True

    def write(self, offset: int, src: int, length: int) -> None:
        if not self.writable:  # (a read-only pass-through piece: say so)
            raise self._read_only(offset)
        os_impl.write_memory(self.addr + offset, src, length)

    def resident(self, offset: int, length: int) -> bool:
        start = page_floor(self.addr + offset)
        return os_impl.resident(start, page_ceil(self.addr + offset + length) - start)


class UnreadableCopier(KernelCopier):
    """A pass-through piece mapped without ``PROT_READ`` (``PROT_NONE``, execute-only,
    write-only): the kernel refuses every read of it, so a copy that cannot wait refuses
    at once instead of saying "not in memory" for ever."""

    __slots__ = ()

    cause = "the page is not readable (mapped without PROT_READ)"

    def read_now(self, offset: int, dst: memoryview) -> bool:
        raise efault(self.addr + offset, "read", self.cause)

    def read(self, dst: int, offset: int, length: int) -> None:
        raise efault(self.addr + offset, "read", self.cause)

    def _read_only(self, offset: int) -> OSError:
        return efault(self.addr + offset, "write", "the page is not accessible (its protection)")


class HoleCopier(Copier):
    """Nothing is mapped here (reserved address space): every access is a fault."""

    __slots__ = ()

    def continued_by(self, other: Copier, length: int) -> bool:
        return type(other) is HoleCopier

    cause = "nothing is mapped there (a hole)"

    def read_now(self, offset: int, dst: memoryview) -> bool:
        raise efault(self.addr + offset, "read")

    def write_now(self, offset: int, src: memoryview) -> bool:
        raise efault(self.addr + offset, "write")

    def read(self, dst: int, offset: int, length: int) -> None:
        raise efault(self.addr + offset, "read")

    def write(self, offset: int, src: int, length: int) -> None:
        raise efault(self.addr + offset, "write")


class FileCopier(KernelCopier):
    """A window of a file, shared (``"rw"``, ``"r"``) or private (``"copy"``).

    Shared pages are the page cache, so reads are ``pread`` from the file: fault-safe
    whatever ``fault_safe`` says, and faster than page faults for cold pages.  Past the end
    of the file (after another process truncated it) the map shows zeros up to the end of
    the file's last page and nothing after; those reads go through the kernel.
    """

    __slots__ = (
        "_holes_free",
        "_mapped_size",
        "_nowait",
        "_pread",
        "_safe_reads",
        "_shared_flags",
        "fault_safe",
        "fd",
        "file",
        "file_offset",
    )

    def __init__(
        self,
        memory: Memory,
        base: int,
        writable: bool,
        *,
        file: FileRef,
        file_offset: int,
        shared: bool,
        fault_safe: bool,
    ) -> None:
        identity = os_impl.file_identity(file.fd)
        super().__init__(memory, base, writable, "file", identity)
        self.file = file  # keeps the descriptor open for as long as the piece needs it
        fd = self.fd = file.fd
        register_window(memory, identity)
        self.file_offset = file_offset  # of the piece's first byte
        self._mapped_size = os_impl.file_size(
            fd
        )  # to tell a truncation from a window past the end
        self.fault_safe = fault_safe
        # Reads of a shared map are fault-safe whatever fault_safe says (README, "Faults").
        self._safe_reads = shared or fault_safe
        # read(2) copies what a shared map shows (a private copy map may differ), unless
        # the descriptor was opened with O_DIRECT, which wants aligned buffers and offsets.
        self._pread = shared and not os_impl.is_direct(fd)
        self._nowait = self._pread and os_impl.nowait_reads(fd)
        # A duplicate of the caller's descriptor shares its status flags, and O_DIRECT
        # may be turned on later: each read looks (see _direct_since).
        self._shared_flags = self._pread and file.callers
        # On tmpfs a page that is not in memory is either swapped out or a hole never
        # written, and a hole reads as zeros and takes a write with no I/O: copies on
        # this thread check.  Not through the caller's descriptor: finding holes
        # (SEEK_DATA) moves the file offset, which a dup shares with the caller.
        # (A device node in /dev is on devtmpfs, whose magic is tmpfs's: files only.)
        self._holes_free = (
            self._pread
            and not file.callers
            and os_impl.file_system(fd) == "tmpfs"
            and os_impl.file_kind(fd) == "regular file"
        )

    # -- on the calling thread --------------------------------------------------------

    def read_now(self, offset: int, dst: memoryview) -> bool:
        n = len(dst)
        if self._shared_flags:
            self._direct_since(None)
        if self._nowait:
            # One syscall: copies from the page cache if every page is there, else a short
            # count or -1; it never waits for the disk and never faults.
            try:
                got = os_impl.pread_nowait(self.fd, dst, self.file_offset + offset)
            except OSError as exc:
                if not self._direct_since(exc):
                    raise
                return self.read_now(offset, dst)
            if got == n:
                return True
            if got < 0 or not self._past_end(offset + got):
                return False
            # The file ends inside the range: copy what the map really shows there.
            self._read_past_end(address_of(dst) + got, offset + got, n - got)
            return True
        if not self.resident(offset, n):
            self._raise_if_past_end(offset, n)
            if not self._in_memory_or_holes(offset, n):
                return False
        if self._safe_reads:
            self.read(address_of(dst), offset, n)
        else:
            start = self.base + offset
            dst[:] = self.memory.view[start : start + n]
        return True

    def write_now(self, offset: int, src: memoryview) -> bool:
        if not self.writable:  # (a read-only window of a sparse map)
            raise self._read_only(offset)
        n = len(src)
        if not self.resident(offset, n):
            self._raise_if_past_end(offset, n)
            # (A fresh region in /dev/shm refused every first write, adversary round 29.)
            if not self._in_memory_or_holes(offset, n):
                return False
        if self.fault_safe:
            with PinnedBuffer(src, writable=False) as pin:
                os_impl.write_memory(self.addr + offset, pin.address, n)
        else:
            start = self.base + offset
            self.memory.view[start : start + n] = src
        return True

    def _in_memory_or_holes(self, offset: int, length: int) -> bool:
        """On tmpfs, whether no page of the range needs I/O: each is in memory or in a
        hole (never written, or allocated and never written), which reads as zeros and
        takes a write with no I/O; a page that is neither is swapped out."""
        if not self._holes_free:
            return False
        start = self.file_offset + offset  # (file offsets; ``resident`` takes the piece's)
        for first, end in os_impl.data_extents(self.fd, start, length):
            if not self.resident(first - self.file_offset, end - first):
                return False
        return True

    # -- blocking, without the GIL ----------------------------------------------------

    def read(self, dst: int, offset: int, length: int) -> None:
        if self._shared_flags:
            self._direct_since(None)
        if self._pread:
            try:
                got = os_impl.pread(self.fd, dst, length, self.file_offset + offset)
            except OSError as exc:
                if not self._direct_since(exc):
                    raise
                return self.read(dst, offset, length)
            if got < length:
                self._read_past_end(dst + got, offset + got, length - got)
        elif self._safe_reads:  # (a shared map whose descriptor has O_DIRECT)
            os_impl.read_memory(dst, self.addr + offset, length)
        else:
            # SAFETY: fault_safe=False: the caller accepted SIGBUS on a truncated file.
            os_impl.memmove(dst, self.addr + offset, length)

    def _direct_since(self, exc: OSError | None) -> bool:
        """After ``exc`` from a read of the file (None: before a read), whether
        ``O_DIRECT`` was turned on since the map was made (by the caller, on its own
        descriptor, whose status flags the map's duplicate shares; or by a peer that was
        given a region's); then reads go through the memory from now on, as for a map
        made with it.  A direct read wants aligned buffers and offsets (adversary round
        73: every other read failed with a bare ``EINVAL``), and reads the device even
        for pages in memory (round 74: a ``*_nowait`` copy waited for the disk on the
        event loop's thread)."""
        if (exc is not None and exc.errno != errno.EINVAL) or not os_impl.is_direct(self.fd):
            return False
        self._pread = self._nowait = self._holes_free = self._shared_flags = False
        return True

    def write(self, offset: int, src: int, length: int) -> None:
        if not self.writable:
            raise self._read_only(offset)
        if self.fault_safe:
            os_impl.write_memory(self.addr + offset, src, length)
        else:
            # SAFETY: as in read().
            os_impl.memmove(self.addr + offset, src, length)

    # -- the end of the file ----------------------------------------------------------

    def _read_past_end(self, dst: int, offset: int, length: int) -> None:
        # Zeros up to the end of the file's last page, EFAULT after: through the kernel,
        # like every read of a shared map, whatever fault_safe says.
        os_impl.read_memory(dst, self.addr + offset, length)

    def _past_end(self, offset: int) -> bool:
        """Whether ``offset`` (in the piece) is at or past the current end of the file."""
        return self.file_offset + offset >= os_impl.file_size(self.fd)

    def _raise_if_past_end(self, offset: int, length: int) -> None:
        """Raise EFAULT if the range reaches a page past the end of the file: such a page
        will never come into memory, so WouldBlock or a worker thread would not help."""
        last_page_end = page_ceil(os_impl.file_size(self.fd)) - self.file_offset
        if offset + length > last_page_end:
            raise efault(self.addr + max(offset, last_page_end), "access")

    def note_file_size(self, size: int) -> None:
        """The file grew to ``size`` through the map: a later fault below it is a
        truncation."""
        self._mapped_size = max(self._mapped_size, size)

    def moved(self, by: int) -> Copier:
        other = super().moved(by)
        assert isinstance(other, FileCopier)
        other.file_offset += by
        return other

    @property
    def label(self) -> str | None:
        return self.file.name

    def continued_by(self, other: Copier, length: int) -> bool:
        return (
            isinstance(other, FileCopier)
            and other.file is self.file
            and other.writable == self.writable
            and other.fault_safe == self.fault_safe
            and other.base == self.base + length
            and other.file_offset == self.file_offset + length
        )

    def fault(self, offset: int, length: int) -> tuple[int, str]:
        size = os_impl.file_size(self.fd)
        last_page_end = page_ceil(size) - self.file_offset  # in the piece
        if offset + length > last_page_end:
            # (A block device that shrinks is not seen as cut: README, "Faults".)
            if os_impl.file_kind(self.fd) == "block device":
                why = f"the page lies past the end of the device ({size} bytes)"
            elif size < self._mapped_size:
                why = f"the file was truncated to {size} bytes"
            else:
                why = f"the page lies past the end of the file ({size} bytes)"
            return max(offset, last_page_end), why
        if os_impl.is_immutable(self.fd):  # (adversary round 73: it said "out of space")
            return offset, "the file is immutable (chattr +i): its pages refuse writes"
        return offset, "the file system could not provide the page (out of space, or an I/O error)"
