"""Shared regions (seed 003, ``MmapRegion``): a file mapped shared by several processes,
that grows without its base address ever moving.

A region reserves ``max_size`` bytes of address space once (see ``_reservation``) and maps
the file at the start of it; growth maps the file's new pages right after the old ones,
inside the reservation.  So addresses, views and :class:`Region` values taken before a
growth stay valid; nothing is ever remapped elsewhere.  The copies are those of any file
map (``FileCopier``): a peer that truncates the file makes them raise
:class:`~anymmap.MappingFaultError`, never SIGBUS.

Files are created ``O_CREAT | O_EXCL | O_NOFOLLOW`` with mode 0600 and their blocks
allocated (a full disk fails in ``create``, not later as SIGBUS); attaching refuses
symbolic links, anything but a regular file, and by default files another user owns or
others may write.
"""

from __future__ import annotations

import atexit
import enum
import errno
import os
import secrets
import sys
import threading
import weakref
from contextlib import suppress
from dataclasses import dataclass, field

from .._errors import InvalidSizeError, Uncopyable
from .._sys import os_impl, signals_held
from ._buffers import BufferLike
from ._checks import MAX_SIZE, after_failed_copy, byte_view, check_range, check_size
from ._copier import FileCopier, mapping_file, page_ceil
from ._file import FileBackedCore
from ._files import (
    FileRef,
    adopt,
    anchored,
    as_fd,
    check_mappable,
    kind_at,
    label_of,
    name_of,
    refused_open,
    remove_if_same,
)
from ._forks import renew_in_child
from ._lifetime import Memory
from ._reservation import place, reserve
from ._threadlock import check_not_held

_RW = os_impl.PROT_READ | os_impl.PROT_WRITE

#: The address space a region reserves by default: 64 GiB, or four times the file if that
#: is more.  Address space is cheap on 64-bit (128 TiB); only what is mapped costs.
DEFAULT_MAX_SIZE = 64 << 30


class FileCleanup(enum.Enum):
    """What happens to a region's file.

    .. versionadded:: 0.1
    """

    #: The owner (the creator, until it calls ``release_ownership()``) deletes the file
    #: when it closes the region.
    MANUAL = "manual"
    #: The path is unlinked as soon as the region is mapped: the memory lives while some
    #: process maps it; peers attach through a descriptor (``attach_fd``).
    AUTO = "auto"


def default_max_size(size: int) -> int:
    return min(max(DEFAULT_MAX_SIZE, 4 * size), MAX_SIZE)


def region_limit(size: int, max_size: object) -> int:
    """The address space a region of ``size`` bytes reserves (``max_size`` rounded up to
    pages, or the default).

    :raises InvalidSizeError: if ``size`` is larger
    """
    limit = page_ceil(
        default_max_size(size) if max_size is None else check_size(max_size, "max_size")
    )
    if size > limit:
        raise InvalidSizeError(size, f"the file is larger than max_size ({limit} bytes)")
    return limit


class _OwnedFile:
    """A region file this process owns, or is making: deleted when its region closes or
    is garbage, and at the interpreter's exit (:func:`_delete_at_exit`) if still there.

    ``owner`` is the pid of the process that owns it (0: none), so that a forked child
    closing its copy of the region leaves the file alone.  Owned files are kept in
    :data:`_OWNED` (the file only, not its region, which stays free to be garbage), and
    taking ownership and deleting happen under :data:`_OWNED_LOCK`, as does the exit's
    deletion: a thread making or closing a region as the interpreter exits (a daemon
    thread) either finishes its change before the exit deletes what is owned, or finds
    the exit begun and leaves it to the exit (a close) or makes nothing (a create).  Before, the exit's pass over the finalizers of
    ``weakref.finalize`` ran alongside such a thread, and the file of a region it was
    making, or made after the pass, stayed for good once the exit froze the thread
    (adversary round 64: a file left in /dev/shm in 18 of 20 runs).
    """

    __slots__ = ("identity", "owner", "path")

    def __init__(self, path: str, identity: tuple[int, int]) -> None:
        self.path = path  # (absolute: the process may chdir meanwhile)
        self.identity = identity
        self.owner = 0

    def own(self, owner: bool) -> None:
        """Own the file (this process deletes it) or not.

        :raises RuntimeError: to own it once the interpreter's exit deleted what was owned
        """
        if not owner:  # (no lock: an exit deleting it meanwhile is as good)
            self.owner = 0
            _OWNED.discard(self)
            return
        _check_not_exiting(self.path)  # (see remove: no lock taken once it began)
        with _OWNED_LOCK:
            _check_not_exiting(self.path)
            _arm_for_multiprocessing_exit()
            self.owner = os.getpid()
            _OWNED.add(self)

    def remove(self) -> None:
        """Unlink the path if this process owns the file and the path still names it (a
        peer may have replaced it: never delete someone else's file); then own it no
        more.

        Once the exit began, this does nothing, and takes no lock: the exit deletes (or
        has deleted) every file still owned when it began, and a daemon thread that the
        exit froze as it took the lock would keep it for good (a close in a ``__del__``
        run by the interpreter's finalization then waited for ever: adversary round 65).
        (Not even forgetting the file: a daemon thread's close that forgot it while the
        exit went through the files left it on disk.)"""
        if _exiting:
            return
        with _OWNED_LOCK:
            self._remove()

    def _remove(self) -> None:  # (with the lock held)
        with signals_held():  # (whole: a Ctrl-C must not stop it half-way)
            owner, self.owner = self.owner, 0
            _OWNED.discard(self)
            if owner == os.getpid():
                remove_if_same(self.path, self.identity)


#: Held while ownership of a region file changes and while the exit deletes what is owned
#: (re-entrant: a finalizer run inside a change may close another region).
_OWNED_LOCK = threading.RLock()
#: The region files this process owns or is making (see _OwnedFile).
_OWNED: set[_OwnedFile] = set()
#: Set, under the lock, as the interpreter's exit deletes what is owned: nothing is owned
#: after that (a daemon thread making a region then gets RuntimeError).
_exiting = False


def _check_not_exiting(path: str) -> None:
    """Refuse to own (or make) the region file ``path`` once the exit began (checked
    before taking the lock, and again with it held)."""
    if _exiting:
        raise RuntimeError(
            f"cannot own {name_of(path)} while the interpreter exits: its exit has "
            "deleted the region files this process owned already, and nothing would "
            "delete this one"
        )


@atexit.register
def _delete_at_exit() -> None:
    global _exiting
    # (Signals held for the whole pass: a Ctrl-C during the exit stopped it after the
    # file it was deleting, and every other file stayed; adversary round 65.)
    with _OWNED_LOCK, signals_held():
        _exiting = True
        for owned in list(_OWNED):
            with suppress(Exception):  # (one file's error must not keep the others)
                owned._remove()


#: The process whose multiprocessing exit runs :func:`_delete_at_exit` (0: none).
_armed_in = 0


def _arm_for_multiprocessing_exit() -> None:  # (with _OWNED_LOCK held)
    """In a child that ``multiprocessing`` started, have its exit delete what is owned.

    Such a child started by fork or forkserver ends with ``os._exit`` once its own exit
    function has run, and no ``atexit`` handler runs: a ``FileCleanup.MANUAL`` region it
    left open kept its file in /dev/shm (adversary round 66: 4 of 4 runs; a spawned
    child exits normally).  That exit function runs ``multiprocessing.util.Finalize``
    callbacks with an exit priority; the deletion is one, registered the first time
    the process owns a file (after the child's start cleared what it inherited), and
    run after those of higher priority (pools, managers).  It runs before the child
    joins its non-daemon threads, as everything multiprocessing finalizes does: a
    region made by one of those after it raises ``RuntimeError``."""
    global _armed_in
    pid = os.getpid()
    if _armed_in == pid:
        return
    util = sys.modules.get("multiprocessing.util")
    process = sys.modules.get("multiprocessing.process")
    if util is None or process is None or process.parent_process() is None:
        return  # (not a child of multiprocessing: its exit runs atexit handlers)
    util.Finalize(None, _delete_at_exit, exitpriority=-100)
    _armed_in = pid


def _renew_lock_in_child() -> None:
    global _OWNED_LOCK
    _OWNED_LOCK = threading.RLock()  # (one held by a thread of the parent: never let go)


renew_in_child(_renew_lock_in_child)


class RegionCore(FileBackedCore):
    kind = "shared region"

    def __init__(
        self,
        file: FileRef,
        path: str | None,
        *,
        max_size: object,
        where: str | None = None,
    ) -> None:
        """Map ``file``, which the region then owns (its creator closes it if this
        fails: one owner, so that it is never closed twice).  ``where``: ``path`` made
        absolute before the file was opened (the process may chdir meanwhile)."""
        super().__init__(writable=True)
        self.mode = "rw"
        self.file_offset = 0
        self.path = path
        self.file = file
        self.fd = fd = file.fd
        self._join_file()
        # (A shared turn, and counted as a mapping of the file until it is registered:
        # see FileCore.)
        with mapping_file(self._identity):
            with os_impl.reading_size(fd, borrowed=file.callers):
                size = os_impl.file_size(fd)
                if size == 0:
                    raise InvalidSizeError(0, f"cannot map an empty file ({file.name})")
                self.max_size = limit = region_limit(size, max_size)
                with signals_held():  # reserved means owned: a Ctrl-C in between would leak
                    self.addr = reserve(limit)
                    try:
                        place(self.addr, page_ceil(size), _RW, os_impl.MAP_SHARED, fd)
                    except BaseException:
                        os_impl.munmap(self.addr, limit)
                        raise
                    self.memory = Memory(self.addr, limit, self._fork_guard)
            self._copier = FileCopier(
                self.memory, 0, True, file=self.file, file_offset=0, shared=True, fault_safe=True
            )
        self._grow = threading.RLock()  # (re-entrant only to tell re-entry: _growing)
        self._mapped = page_ceil(size)
        self._set_length(size)
        # Deleting the file: at close if this process owns it, when the region is
        # garbage (as tempfile does), and at exit (an owner that never closed still
        # removes its file, as the resource tracker of multiprocessing.shared_memory
        # tries to, without leaks).
        self._file = _OwnedFile(
            where or (anchored(path) if path else ""), os_impl.file_identity(fd)
        )
        self._cleanup = weakref.finalize(self, self._file.remove)
        self._cleanup.atexit = False  # (_delete_at_exit does it, in turn with the makers)

    def after_fork_in_child(self, survivor: int) -> None:
        super().after_fork_in_child(survivor)
        self._grow = threading.RLock()  # (re-entrant only to tell re-entry: _growing)

    def _set_length(self, size: int) -> None:
        self.length = size
        self._set_pieces(((0, size, self._copier),))

    def describe(self) -> str:
        if self.closed:
            return "closed"
        return f"len={self.length} addr={self.addr:#x} max_size={self.max_size}"

    # -- ownership ----------------------------------------------------------------------

    @property
    def owner(self) -> bool:
        return self._file.owner == os.getpid()

    def set_owner(self, owner: bool) -> None:
        """Delete the file at close (True) or not; only a region opened by path can.

        :raises ValueError: to own a region attached by descriptor (it has no path)
        :raises RuntimeError: to own it while the interpreter exits (see _OwnedFile)
        """
        if owner and self.path is None:
            raise ValueError(
                f"{self.file.name} was attached by descriptor: there is no path to delete "
                "when it closes"
            )
        self._file.own(owner)

    def unlink_now(self) -> None:
        """Remove the path at once (``FileCleanup.AUTO``); the memory stays mapped."""
        self._file.remove()

    # -- closing ------------------------------------------------------------------------

    def _unmap(self) -> None:
        os_impl.munmap(self.addr, self.max_size)

    def _release_resources(self) -> None:
        self._file.remove()  # unlinks the path if this process owns the file
        self._cleanup.detach()
        self.file.close()

    # -- growth -------------------------------------------------------------------------

    def resize(self, length: int) -> None:
        """Grow to ``length`` bytes: allocate the file's new blocks, then map them after
        the old ones.  The same length is a no-op.

        :raises ValueError: to shrink
        :raises InvalidSizeError: past ``max_size``
        :raises OSError: ``ENOSPC`` if the blocks cannot be allocated (nothing changes)
        """
        with self.pinned(), self._growing():
            if length < self.length:
                raise ValueError(
                    f"a shared region only grows: {length} is less than its {self.length} bytes"
                )
            if length == self.length:
                return
            self._check_fits(length)
            # In a turn with the other maps that change the file's size (adversary round
            # 71: without one, a region grown to the size a failing growth of another
            # process's map had reached was cut under when that growth was undone, and
            # its borrow died of SIGBUS).
            with os_impl.changing_size(self.fd, own=not self.file.callers):
                # From where the file ends now, if a peer cut it below the map: no gap of
                # unallocated blocks may stay under the map.
                start = min(self.length, os_impl.file_size(self.fd))
                os_impl.allocate(self.fd, start, length - start)
                self._map_to(length)

    def check_and_remap(self) -> bool:
        """Follow the file's growth by another process: map what it gained and return
        True, or return False if it did not grow.  A borrow of the old part may stay alive
        meanwhile (growth only adds pages after the end).

        :raises InvalidSizeError: if the file grew past this region's ``max_size``
        """
        with self.pinned(), self._growing():
            if not self.grew():
                return False
            with os_impl.reading_size(self.fd, borrowed=self.file.callers):  # (see FileCore)
                size = os_impl.file_size(self.fd)
                if size <= self.length:  # (a failed growth cut back what it appended)
                    return False
                self._check_fits(size)
                self._map_to(size)
                return True

    def _growing(self) -> threading.RLock:
        """The growth lock, for one growth at a time.

        :raises RuntimeError: if this thread is inside a growth already (a signal handler
            or finalizer that grows the region from inside its own growth)
        """
        check_not_held(self._grow)
        return self._grow

    def grew(self) -> bool:
        """Whether the file is longer than the map (cheap: one ``fstat``)."""
        return os_impl.file_size(self.fd) > self.length

    def _check_fits(self, length: int) -> None:
        if length > self.max_size:
            raise InvalidSizeError(
                length,
                f"a region can grow to its max_size of {self.max_size} bytes (the address "
                "space reserved for it); create or attach it with a larger max_size",
            )

    def _map_to(self, length: int) -> None:
        mapped = page_ceil(length)
        with signals_held():  # a Ctrl-C arrives once the growth is recorded
            if mapped > self._mapped:
                # SAFETY: the new pages go right after the mapped ones, in the reservation.
                place(
                    self.addr + self._mapped,
                    mapped - self._mapped,
                    _RW,
                    os_impl.MAP_SHARED,
                    self.fd,
                    self._mapped,
                )
                self._mapped = mapped
            self._copier.note_file_size(length)  # a later cut below this is a truncation
            self._set_length(length)

    # -- Region values ------------------------------------------------------------------

    def region(self) -> Region:
        self.check_open()
        self.exposed = True  # a copy may now be given memory at its address
        return Region(self.addr, self.length, self)


@dataclass(frozen=True)
class Region(Uncopyable):
    """A region's memory by address, as ``shm-primitives``' ``Region``: ``address`` and ``length``
    (the region's length when it was taken), with bounds-checked, fault-safe copies.

    It never goes stale while the region is open: growth maps new pages after the old
    ones and never moves them, so ``address`` stays valid (it covers only the first
    ``length`` bytes; take a new one to see the growth).  After the region is closed its
    copies raise :class:`~anymmap.ClosedMapError` and ``address`` must not be used.

    The copies are synchronous and run on the calling thread (in async code, prefer the
    region's own awaitable copies, which keep the event loop off the disk).

    .. versionadded:: 0.1
    """

    address: int
    length: int
    _core: RegionCore = field(repr=False, compare=False)

    def read_into(self, offset: int, buf: BufferLike) -> None:
        """Fill ``buf`` with the bytes from ``offset`` on (as many as ``buf`` holds).

        :raises OutOfBoundsError: outside ``[0, length)``
        :raises MappingFaultError: if another process truncated the file under it
        """
        dst = None
        try:
            dst = byte_view(buf, writable=True)
            start, _ = self._check(offset, len(dst))
            self._core.read_blocking(start, dst)
        except BaseException as exc:
            after_failed_copy(dst, buf, exc)
            del buf, dst  # (a traceback the caller keeps must not keep them)
            raise

    def write(self, offset: int, data: BufferLike) -> None:
        """Copy the bytes-like ``data`` to ``offset``; see :meth:`read_into`."""
        src = None
        try:
            src = byte_view(data, writable=False)
            start, _ = self._check(offset, len(src))
            self._core.write_blocking(start, src)
        except BaseException as exc:
            after_failed_copy(src, data, exc)
            del data, src  # (a traceback the caller keeps must not keep them)
            raise

    def _check(self, offset: object, length: int) -> tuple[int, int]:
        core = self._core
        core.check_open()
        # (Bounded by the region's own length too: a Region made by hand or by
        # dataclasses.replace with a longer length copied into the maps after it:
        # adversary round 36.)
        return check_range(offset, length, min(self.length, core.length))


# -- opening ------------------------------------------------------------------------------


#: What ``MmapRegion.create(replace=True)`` replaces (never a directory, a device, a
#: FIFO or a socket: adversary round 50, a block device node was renamed over and then
#: deleted at close).
_REPLACEABLE = ("regular file", "symbolic link")


def create_region(
    path: object,
    size: object,
    cleanup: FileCleanup,
    *,
    max_size: object = None,
    replace: bool = False,
) -> RegionCore:
    """Create ``path`` (mode 0600, its blocks allocated) and map it as a region."""
    if not isinstance(cleanup, FileCleanup):
        raise TypeError(f"cleanup must be an anymmap.FileCleanup, not {type(cleanup).__name__}")
    if not isinstance(replace, bool):
        raise TypeError("replace must be True or False")
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path must be a path, not {type(path).__name__}")
    length = check_size(size)
    target = os.fsdecode(os.fspath(path))
    # (Absolute first: another thread may chdir while the blocks are allocated, and
    # the name renamed, owned and removed must be the one created.)
    absolute = where = anchored(target)
    region_limit(length, max_size)  # (a bad max_size must not replace anything)
    if replace:
        # Build the new file beside the old one, then rename it over: the path changes
        # atomically, and a symbolic link there is replaced, never followed.  (A name of
        # its own, not the path's plus a suffix: a name near NAME_MAX would be too long.)
        kind = kind_at(absolute, follow=False)
        if kind not in (None, *_REPLACEABLE):
            raise FileExistsError(
                errno.EEXIST,
                f"{name_of(target)} exists and is a {kind}: replace=True replaces only a "
                "regular file or a symbolic link",
            )
        where = os.path.join(os.path.dirname(absolute), f".anymmap-{secrets.token_hex(8)}.new")
    file: FileRef | None = None
    identity: tuple[int, int] | None = None
    core: RegionCore | None = None
    making: _OwnedFile | None = None
    made = False
    try:
        # Created means owned, until made: removed again below if the rest fails, or by
        # the interpreter's exit if it comes first (see _OwnedFile).
        _check_not_exiting(absolute)  # (see _OwnedFile.remove: no lock once it began)
        with _OWNED_LOCK, signals_held():
            _check_not_exiting(absolute)
            try:
                file = adopt(lambda: os_impl.open_new(where, 0o600), label_of(target))
            except FileExistsError:
                if replace:  # (our own name, taken: as unlikely as it gets)
                    raise
                kind = kind_at(absolute, follow=False) or "file"
                hint = (
                    "pass replace=True to replace it"
                    if kind in _REPLACEABLE
                    else "which replace=True does not replace either"
                )
                raise FileExistsError(
                    errno.EEXIST, f"{name_of(target)} exists (a {kind}), {hint}"
                ) from None
            identity = os_impl.file_identity(file.fd)
            making = _OwnedFile(where, identity)
            making.own(True)
        os_impl.allocate(file.fd, 0, length)
        # The map is made before the name changes: if it fails, a file replace=True
        # would have replaced is still there.
        core = RegionCore(file, target, max_size=max_size, where=absolute)
        _check_not_exiting(absolute)  # (the exit deleted `where` already)
        with _OWNED_LOCK, signals_held():  # renamed means owned: deleted at close
            core.set_owner(True)  # (RuntimeError if the exit began: it deleted `where`)
            if replace:
                os_impl.rename(where, absolute)
            making.own(False)
            made = True
    except BaseException:
        with signals_held():  # (a second Ctrl-C must not stop the undoing half-way)
            if core is not None:
                if made:  # a signal as the region was made: the old file is gone, keep this
                    core.set_owner(False)
                core.close()
            # (Unless renamed, or replaced by someone else's file meanwhile.)
            if making is not None:
                making.remove()
            elif identity is not None:
                remove_if_same(where, identity)
            if file is not None:
                file.close()
        raise
    if cleanup is FileCleanup.AUTO:
        core.unlink_now()
    return core


def attach_region(
    path: object, *, max_size: object = None, trust_others: bool = False
) -> RegionCore:
    """Map the existing region file ``path`` at its current size."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path must be a path, not {type(path).__name__}")
    if not isinstance(trust_others, bool):
        raise TypeError("trust_others must be True or False")
    name = name_of(path)
    target = os.fsdecode(os.fspath(path))  # (take_ownership() may delete it)
    absolute = anchored(target)  # (before the open: see create_region)
    try:
        file = adopt(lambda: os_impl.open_no_follow(absolute, writable=True), label_of(path))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(
                errno.ELOOP, f"{name} is a symbolic link; attach() does not follow links"
            ) from None
        if exc.errno == errno.ENXIO:  # a socket
            raise refused_open(name, path, ("regular file",)) from None
        raise
    fd = file.fd
    try:
        _check_regular(fd, name)
        os_impl.set_blocking(fd)  # (opened O_NONBLOCK: a FIFO would have waited)
        if not trust_others:
            owner, mode = os_impl.file_owner(fd)
            me = os_impl.current_uid()
            if owner != me:
                raise PermissionError(
                    errno.EACCES,
                    f"{name} belongs to user {owner}, not to this process's user {me}; pass "
                    "trust_others=True to attach anyway",
                )
            if mode & 0o022:
                raise PermissionError(
                    errno.EACCES,
                    f"{name} may be written by its group or others (mode {mode:#o}); pass "
                    "trust_others=True to attach anyway",
                )
        return RegionCore(file, target, max_size=max_size, where=absolute)
    except BaseException:
        file.close()
        raise


def attach_region_fd(fd: object, *, max_size: object = None) -> RegionCore:
    """Map the region file open as ``fd`` (duplicated: the region keeps its own)."""
    number = as_fd(fd, paths=False)
    name = name_of(number)
    file = adopt(lambda: os_impl.dup(number), label_of(number), callers=True)
    try:
        _check_regular(file.fd, name)
        return RegionCore(file, None, max_size=max_size)
    except BaseException:
        file.close()
        raise


def _check_regular(fd: int, name: str) -> None:
    check_mappable(fd, name, kinds=("regular file",))
    readable, writable = os_impl.access_mode(fd)
    if not (readable and writable):
        raise PermissionError(errno.EACCES, f"{name} is not open for reading and writing")
