"""File-backed maps (seed 001, ``MmapRaw``): opening files safely, the flush family, and
resizing a map together with its file.

How copies stay fault-safe and off the disk on the event loop thread is the piece's
:class:`~anymmap._core._copier.FileCopier`; this module opens the file (never blocking,
refusing what cannot be mapped, by name), maps it, and keeps map and file consistent.
"""

from __future__ import annotations

import copy
import errno
import os
import sys
import threading
import weakref
from collections.abc import Callable
from functools import partial
from typing import Literal, TypeVar, get_args

from .._errors import (
    ClosedMapError,
    InvalidSizeError,
    OutOfBoundsError,
    ReadOnlyError,
    UnsupportedError,
    WriteBackError,
)
from .._stopping import stop_point
from .._sys import collector_off, os_impl, signals_held
from ._checks import as_int, check_file_end, check_size
from ._commit import CommitRequest, DirtyRanges, GroupCommit, Scheduler
from ._copier import FileCopier, cut_if_alone, mapping_file, page_ceil, page_floor
from ._files import (
    MODES,
    FileRef,
    Mode,
    anchored,
    check_mappable,
    kind_at,
    label_of,
    name_of,
    open_fd,
    refused_open,
    remove_if_same,
)
from ._forks import renew_in_child
from ._lifetime import Memory
from ._map import MapCore
from ._placement import map_placed, remap_placed
from ._threadlock import HEAL_EVERY, STOPPED_AT_EXIT, new_condition, wait_unless_exiting

#: How a file's new blocks are made: allocated (``posix_fallocate``: instant, the blocks
#: are "unwritten" extents) or filled with zeros (written now: slower to make, but the
#: first write into each block needs no metadata change).  Measured here (ext4 in a VM;
#: ``benchmarks/bench_commit.py``): creating 64 MiB took about 1 ms against 43 ms; serial
#: first 4 KiB commits into the new blocks ran at 1,645 and 1,413 per second into
#: allocated blocks against 1,941 and 1,858 into zero-filled ones in two full runs, and
#: the other way round in shorter ones: no steady gain on this disk, so "allocate" (cheap
#: to create, cheap to grow) is the default.  On disks where a journal commit costs more
#: (PostgreSQL zero-fills its WAL for this reason), measure with that benchmark.
_M = TypeVar("_M", bound=MapCore)

Prefill = Literal["allocate", "zeros"]
PREFILLS: tuple[str, ...] = get_args(Prefill)


def check_prefill(prefill: object) -> None:
    if prefill not in PREFILLS:
        raise ValueError(f"prefill must be 'allocate' or 'zeros', not {prefill!r}")


#: How many bytes of zeros :func:`fill_file` writes between two stop points (about 50
#: ms on this VM's ext4 disk, 5 ms on tmpfs).
_ZERO_STEP = 16 << 20


def fill_file(
    fd: int,
    offset: int,
    length: int,
    prefill: Prefill,
    *,
    own: bool,
    alone: Callable[[Callable[[], None]], bool],
    grew: list[int] | None = None,
) -> None:
    """Give ``[offset, offset + length)`` of the file real blocks (growing it if needed);
    a full disk fails here (``ENOSPC``), not later as SIGBUS.

    What the file already holds is never changed, even while another map or process
    grows the file and writes into it: ``prefill="zeros"`` appends zeros at the end of
    the file (``O_APPEND``: at its end as it is at each write, never over bytes written
    there meanwhile), and the rest of the range (a window growing over existing bytes,
    or holes in them) is allocated, which changes no data.

    If it fails (a full disk; at a stop point, its async caller cancelled: see
    ``_stopping``), what this call added to the file is cut away again, if
    the file is still exactly as long as this call made it: the maps of anymmap that
    grow one file take turns, but another process may append to it meanwhile, and its
    bytes are never cut (adversary round 25: records a process appended and synced
    during a failed growth were cut away with it), but for one that lands between
    the check of the size and the cut (a process that is not anymmap takes no turn:
    README, "Resize").  A failed allocation that left the
    file longer is left so (its blocks read as zeros).

    The undoing cuts through ``alone`` (see :func:`cut_if_alone`): not while another
    mapping of the file in this process is open or being made, which may show the new
    part (adversary round 70: a map made by descriptor during a growth, which takes no
    turn, died of SIGBUS when the failed growth was cut); the zeros then stay.

    ``own``: ``fd`` is anymmap's own open file description, not a duplicate of the
    caller's (see ``changing_size``).  ``grew``: if this call grew the file (and no one
    else did meanwhile), the sizes before and after are appended to it, for a caller
    that undoes the growth if what follows fails (see :func:`uncut_file`).
    """
    with os_impl.changing_size(fd, own=own) as append:
        before = os_impl.file_size(fd)
        # The size this call made, as far as it knows (-1: not only it), and the size a
        # call in flight leaves if whole (-1: none), set before the call: a signal
        # handled as it returns raises before its size is recorded (adversary round
        # 69: a Ctrl-C left 4 GiB grown, then never cut).
        made = [before, -1]
        try:
            end = offset + length
            if prefill == "zeros" and end > before:
                # (Through fd itself if the file's mode refuses a descriptor that
                # appends: adversary round 64, zeros were silently not written.)
                through = fd if append is None else append
                # In steps, with a stop point after each: a cancelled async caller
                # waited for every step (see _stopping).
                step = before
                while (step := min(end, step + _ZERO_STEP)) < end:
                    os_impl.append_zeros(through, step, made)
                    stop_point()
                os_impl.append_zeros(through, end, made)
            if made[0] >= 0:
                made[1] = max(made[0], end)
            os_impl.allocate(fd, offset, length)  # (grows the file if appending could not)
            if made[0] >= 0:
                made[0] = made[1]
                if grew is not None and made[0] > before:
                    grew += (before, made[0])
        except BaseException:
            with signals_held():  # (a second Ctrl-C must not stop the undoing half-way)
                size = os_impl.file_size(fd)
                if made[0] >= 0 and size > before and size in made:
                    alone(partial(os_impl.truncate, fd, before))
            raise


def cut_file(
    fd: int,
    map_end: int,
    new_end: int,
    cut: list[int],
    then: Callable[[], None],
    alone: Callable[[Callable[[], None]], bool],
    *,
    own: bool,
) -> None:
    """Cut the file to ``new_end`` bytes if a map ending at ``map_end`` reaches its end,
    append its size before to ``cut`` and call ``then`` (the map's move to its new end);
    leave it if it goes on past the map (a window, or a file another map or process has
    grown meanwhile: that growth is not this map's to cut), or if ``alone`` (see
    :func:`cut_if_alone`) finds another mapping of the file in this process.  The maps
    of anymmap that change a file's size take turns, so the size is read and cut with no
    other map's growth in between.

    The cut, its record in ``cut`` and ``then`` are one section with signals held: a
    Ctrl-C between the cut and the map's move would leave the map reaching past the end
    of its file, and a second one could cut short the except path that finished the move.
    """
    with os_impl.changing_size(fd, own=own):
        size = os_impl.file_size(fd)
        if size > map_end:
            return
        with signals_held():
            if not alone(partial(os_impl.truncate, fd, new_end)):
                return
            cut.append(size)
            then()


def uncut_file(
    fd: int, end: int, size: int, *, own: bool, alone: Callable[[Callable[[], None]], bool]
) -> None:
    """Put the file back to ``size`` bytes if it is still ``end`` bytes long: undo
    :func:`cut_file` (the cut bytes read as zeros), or a growth whose map could not
    follow; not if the file has changed size since (another map grew it).  Cutting goes
    through ``alone``, as every cut does (see :func:`fill_file`)."""
    with os_impl.changing_size(fd, undoing=True, own=own), signals_held():
        if os_impl.file_size(fd) == end:
            put_back = partial(os_impl.truncate, fd, size)
            if size < end:
                alone(put_back)
            else:
                put_back()


def _exists(path: object, absolute: str) -> FileExistsError:
    """What an exclusive create of ``path`` raises: with the advice that fits what is
    there (adversary round 66: a directory, socket or device was told to pass
    ``exist_ok=True``, which then failed as well)."""
    try:
        kind = kind_at(absolute, follow=True)
        if kind is None and kind_at(absolute, follow=False) == "symbolic link":
            return FileExistsError(
                errno.EEXIST,
                f"{name_of(path)} exists and is a symbolic link to a missing file: a new "
                "file is never created through a link (exist_ok=True would not help)",
            )
        where = os_impl.UNMAPPABLE_FILE_SYSTEMS.get(os_impl.file_system(absolute))
    except OSError as exc:  # (a directory on the way that cannot be searched, say)
        if exc.errno == errno.ELOOP:  # (adversary round 69: a link to itself)
            return FileExistsError(
                errno.EEXIST,
                f"{name_of(path)} exists and is a symbolic link that never reaches a file "
                "(a loop of links): a new file is never created through a link "
                "(exist_ok=True would not help)",
            )
        kind = where = None
    if kind == "regular file" and where is not None:  # (a file in /proc, say)
        return FileExistsError(
            errno.EEXIST,
            f"{name_of(path)} exists and is a file in {where}, which cannot be mapped "
            "(exist_ok=True would not help)",
        )
    if kind in (None, "regular file"):  # (None: gone meanwhile)
        return FileExistsError(
            errno.EEXIST, f"{name_of(path)} exists; pass exist_ok=True to map it anyway"
        )
    return FileExistsError(
        errno.EEXIST,
        f"{name_of(path)} exists and is a {kind}: create and open_or_create make and map "
        "only regular files (exist_ok=True would not help)",
    )


def create_file(
    path: object,
    size: object,
    *,
    exist_ok: bool,
    prefill: object,
    mode: object,
    then: Callable[[FileRef, str | None], _M],
) -> _M:
    """Create ``path`` (``exist_ok``: or open it) and give it at least ``size`` bytes of
    real blocks; make the file and its name durable; return ``then(descriptor, made)``,
    a map of it (the descriptor is closed after it: the map has its own), where
    ``made`` is the absolute path if this call created the file and it is to be
    removed if the call is undone (not with ``exist_ok``), else None.

    Without ``exist_ok``, the file is made without a name where the file system can
    (``O_TMPFILE``: ext4, xfs, btrfs, tmpfs) and named only once it is whole and mapped
    (``FileExistsError`` if the path was taken meanwhile).

    An existing file is never shrunk.  If this call created the file and fails (also in
    ``then``, or as it returns), the map is closed and the file removed, if the path
    still names it (a peer may have put its own file there meanwhile) and unless
    ``exist_ok`` (a caller racing on the path may have opened it and be using it).
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path must be a path, not {type(path).__name__}")
    length = check_size(size)
    check_prefill(prefill)
    if not isinstance(exist_ok, bool):
        raise TypeError("exist_ok must be True or False")
    permissions = as_int(mode, "mode")
    if not 0 <= permissions <= 0o777:
        raise ValueError(
            f"mode {permissions:#o} is not a set of permission bits (0 to 0o777; a data "
            "file has no use for the setuid, setgid and sticky bits)"
        )
    ref: FileRef | None = None
    made: _M | None = None
    created = False
    ours: tuple[str, tuple[int, int]] | None = None  # (what to remove if the rest fails)
    # (Absolute first: another thread may chdir while the blocks are allocated, and the
    # name removed and whose directory is synced must be the one created.)
    absolute = anchored(os.fsdecode(path))
    directory = os.path.dirname(absolute)
    unnamed: int | None = None
    try:
        # (Opened means owned, and created means removed below if the rest fails: a
        # Ctrl-C in between would leak the descriptor or leave the file.)
        with signals_held():
            try:
                if not exist_ok:
                    # Made without a name where the file system can, and named only once
                    # it is whole and mapped: nobody opens it half made, and a failure
                    # before that leaves nothing to remove (once it had a name, an
                    # open_or_create that opened it meanwhile lost it with the undo).
                    unnamed = os_impl.open_unnamed(absolute, permissions)
                if unnamed is None:
                    fd, created = os_impl.open_create(
                        absolute, exclusive=not exist_ok, mode=permissions
                    )
                else:
                    fd, created = unnamed, True
            except FileExistsError:
                if exist_ok:  # (a dangling symbolic link: the message says so)
                    raise
                raise _exists(path, absolute) from None
            except PermissionError as exc:
                # An existing file that may not be written (adversary round 73: a bare
                # error, where map_raw gives this advice); else the folder refused it.
                try:
                    existing = exist_ok and kind_at(absolute, follow=True) == "regular file"
                except OSError:  # (a folder on the way that cannot be searched)
                    existing = False
                if not existing:
                    raise
                raise PermissionError(
                    exc.errno,
                    f"cannot open {name_of(path)} for writing ({exc.strerror}); to map it "
                    "for reading only, use map_raw(path, mode='r')",
                ) from None
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # a socket, which open(2) refuses this way
                    raise refused_open(name_of(path), path, ("regular file",)) from None
                raise
            ref = FileRef(fd, name_of(path))
            if created and not exist_ok and unnamed is None:
                ours = (absolute, os_impl.file_identity(fd))
        # Before anything is allocated or written: also no /proc or /sys file.
        check_mappable(fd, name_of(path), kinds=("regular file",))
        # Counted as a map of the file in the making from before it grows until it is
        # mapped: a shrink of another map of the file in this process in between cut
        # the growth away, and the map came out shorter than asked (adversary round 48).
        identity = os_impl.file_identity(fd)
        with (making := mapping_file(identity)):
            current = os_impl.file_size(fd)
            if length > current:
                alone = partial(cut_if_alone, None, identity, but=making)
                fill_file(fd, current, length - current, prefill, own=True, alone=alone)  # type: ignore[arg-type]
            if created or length > current:
                os_impl.fdatasync(fd)
            if unnamed is not None:
                made = then(ref, absolute)
                with signals_held():  # (named means removed below if the rest fails)
                    try:
                        os_impl.link_unnamed(fd, absolute)
                    except FileExistsError:  # (made by someone else meanwhile)
                        raise _exists(path, absolute) from None
                    ours = (absolute, os_impl.file_identity(fd))
            if created or length > current:
                os_impl.fsync_directory(directory)
            if made is None:
                made = then(ref, None if ours is None else ours[0])
        ref.close()
        return made  # (inside the try: a signal handled as it returns is undone)
    except BaseException:
        with signals_held():  # (a second Ctrl-C must not stop the undoing half-way)
            if made is not None:
                made.close()
            if ours is not None:
                remove_if_same(*ours)
        raise
    finally:
        if ref is not None:
            ref.close()


#: Errors of ``msync`` that say the call itself was wrong (a range not mapped, a bad
#: argument, locked pages), not that pages failed to reach the file.
_NOT_WRITE_BACK = frozenset((errno.ENOMEM, errno.EINVAL, errno.EBUSY, errno.EFAULT))


#: What a flush run inside an ``msync`` of its file on the same thread raises.
_SYNCING = (
    "a finalizer (__del__ or weakref callback) or signal handler that Python ran inside "
    "an msync of this file on this thread cannot flush, close or resize a map of the "
    "file, or wait for another thread's use of one: it would wait for the call it "
    "interrupted"
)


class _FileSyncs:
    """One file's maps in this process, its ``msync`` calls in flight, and how many failed.

    A failed write-back reaches every map of the file open at that moment (they share
    its pages: see :meth:`FileBackedCore._fail_write_back`).  And two maps of one open
    file description (``map_raw(fd)`` twice on one descriptor) share the kernel's one
    report of it: when one map's ``msync`` took it, the other's, in flight at the same
    moment, returned success for pages that may be lost, before the first could mark it
    failed (adversary round 31: 12 of 20 runs).  So an ``msync`` that succeeds waits for
    those that were in flight beside it, and counts as failed if one of them failed."""

    __slots__ = ("__weakref__", "active", "cond", "failed", "maps", "threads")

    def __init__(self) -> None:
        self.cond = new_condition()
        self.active: set[object] = set()
        #: The threads inside an ``msync`` of the file's (its bookkeeping included): a
        #: finalizer or signal handler run there that flushes a map of the file would
        #: wait for the call it interrupted (see :meth:`FileBackedCore.check_not_syncing`).
        self.threads: set[int] = set()
        self.failed = 0
        #: No lock for this one: adding is one step under the GIL, and the rare reader
        #: (a failed write-back) retries if a map was added while it copied the set.
        self.maps: weakref.WeakSet[FileBackedCore] = weakref.WeakSet()


#: By file identity, for as long as a map of the file holds its entry; the process
#: they belong to (a forked child starts afresh: see ``FileBackedCore.after_fork``).
_syncs: weakref.WeakValueDictionary[tuple[int, int], _FileSyncs] = weakref.WeakValueDictionary()
_syncs_pid = os.getpid()
#: Held while a record is looked up or made: ``WeakValueDictionary.setdefault`` is
#: Python code, and two threads mapping one file at once made two records (adversary
#: round 32: 5 of 200 rounds of 8 threads), so one map's failed write-back did not reach
#: the others.  Re-entrant: a finalizer run inside that maps the file looks up too.
_syncs_lock = threading.RLock()


def _renew_syncs_lock_in_child() -> None:
    global _syncs_lock
    _syncs_lock = threading.RLock()  # a thread of the parent may have held it


renew_in_child(_renew_syncs_lock_in_child)


def _check_free_at_exit(cond: threading.Condition | threading.RLock) -> None:
    """During the interpreter's finalization, raise if ``cond`` is held: no other thread
    runs Python then, so its holder is a daemon thread stopped for good inside a call
    (adversary round 32: a finalizer's flush at exit waited for one stopped in an
    ``msync`` of the same file).

    :raises RuntimeError: then
    """
    if not cond.acquire(blocking=False):
        raise RuntimeError(STOPPED_AT_EXIT)
    cond.release()


def _syncs_of(identity: tuple[int, int]) -> _FileSyncs:
    global _syncs_pid
    if sys.is_finalizing():  # (a daemon thread stopped inside would hold it for good)
        _check_free_at_exit(_syncs_lock)
    new = _FileSyncs()  # (made first: its allocation is where the collector may run)
    # The look-up and the store are one step for finalizers and signal handlers too: a
    # finalizer that the collector ran between them (both are Python code) mapped the
    # same file, found no record and stored its own, which this call then replaced: the
    # two maps of one file had two records, and one's failed write-back never reached
    # the other (adversary round 56).  (As in cut_if_alone.)
    with signals_held(), _syncs_lock, collector_off():
        if _syncs_pid != os.getpid():  # the parent's calls in flight are not here
            _syncs.clear()
            _syncs_pid = os.getpid()
        syncs = _syncs.get(identity)
        if syncs is None:
            syncs = _syncs[identity] = new
        return syncs


class FileBackedCore(MapCore):
    """A map of a file: what file maps and shared regions have in common (the flush
    family).  Subclasses set ``file``, ``fd``, ``mode`` and ``file_offset`` (the position
    in the file of byte 0 of the map)."""

    kind = "file map"
    file: FileRef
    fd: int
    mode: Mode
    file_offset: int

    def __init__(self, writable: bool) -> None:
        super().__init__(writable)
        #: Concurrent durable flushes share msyncs (see _commit).
        self.commit = GroupCommit(self._durable, self.check_not_syncing)
        #: What was written and not yet flushed (``pending_bytes()``).
        self.dirty = DirtyRanges()
        #: Set by close when it made the whole map durable for the commits still queued
        #: (None) or failed to (the error): see :meth:`_before_unmap`.
        self._closing_sync: BaseException | bool | None = False
        #: The first failed write-back (see :meth:`_msync`), kept for good, and whether
        #: a call of the user's raised it (else the close does: :meth:`unheard_failure`).
        self._write_back_failure: OSError | None = None
        self._write_back_heard = False
        #: The file's maps and msyncs in this process (set by :meth:`_join_file`).
        self._syncs = _FileSyncs()
        self._identity = (-1, -1)

    def _join_file(self) -> None:
        """Join the other maps of the file (subclasses call it once ``fd`` is set)."""
        self._identity = os_impl.file_identity(self.fd)
        self._syncs = _syncs_of(self._identity)
        self._syncs.maps.add(self)

    def after_fork_in_child(self, survivor: int) -> None:
        super().after_fork_in_child(survivor)
        self.commit.after_fork_in_child(survivor)
        self.dirty.after_fork_in_child()
        if self._identity != (-1, -1):  # (the parent's msyncs in flight are not here)
            self._syncs = _syncs_of(self._identity)
            self._syncs.maps.add(self)

    def note_write(self, start: int, n: int) -> None:
        if self.mode == "rw":  # the pages of "r" and "copy" maps never reach the file
            self.dirty.add(start, start + n)

    def submit_commit(
        self, start: int, end: int, wake: Callable[[], None], scheduler: Scheduler | None = None
    ) -> CommitRequest:
        """Queue a durable flush of ``[start, end)`` with the group committer (see
        ``GroupCommit.submit``)."""
        return self.commit.submit(
            start, end, wake, scheduler, sync=self._durable, entering=self.check_not_syncing
        )

    def _durable(self, start: int, n: int) -> None:
        """Make ``[start, start + n)`` durable, as far as the map still reaches (a shrink
        may have cut it meanwhile); for the group committer."""
        upto = self.dirty.mark()
        try:
            with self.pinned(join=True):
                start = min(start, self.length)
                n = max(min(n, self.length - start), 0)
                self.flush(start, n, wait=True)
        except ClosedMapError:
            # Closed since the request was made: the close flushed it, or says why not.
            if self._closing_sync is None:
                return
            if isinstance(self._closing_sync, BaseException):
                raise copy.copy(self._closing_sync) from None
            raise
        self.dirty.clean(start, start + n, upto)

    def _before_unmap(self) -> None:
        """Commits queued or running when the map is closed (a flush cancelled after it
        was submitted is still owed its msync) would find it closed: make all of it
        durable here, once, on the closing thread.  The same for bytes pending under an
        ``auto_flush`` block, whose final flush the close takes over (the block raises
        what it raised: :meth:`closing_error`)."""
        # (What an earlier close that then failed, with a view still alive, recorded is
        # not this close's: a request that finds the map closed must not take it for a
        # sync that covered it.)
        self._closing_sync = False
        owed = self.commit.owed() or (
            self.dirty.listener is not None and self.dirty.maybe_pending()
        )
        if self.mode != "rw" or not self.length or not owed:
            return
        try:
            self._sync_exclusive(0, self.length)
        except OSError as exc:
            self._closing_sync = exc
        else:
            self._closing_sync = None

    def closing_error(self) -> BaseException | None:
        """A copy of the error of the flush :meth:`_before_unmap` made, if it failed."""
        failed = self._closing_sync
        return copy.copy(failed) if isinstance(failed, BaseException) else None

    def auto_flush_error(
        self,
        background: list[BaseException],
        final: BaseException | None,
        *,
        failed: bool,
        ended: bool,
    ) -> BaseException | None:
        """What an ``auto_flush`` block's exit raises (both forms), once its flusher has
        stopped and the final flush ran, or None.  ``background``: the flusher's errors;
        ``final``: the final flush's; ``failed``: the block raised an error of its own
        (not the cancellation a failed background flush caused); ``ended``: it ran to
        its end.

        The block's own error wins over a background one (the first of which is raised
        otherwise, and the final flush's is then dropped); the final flush's is raised
        even over the block's own (chained to it); and if the block closed the map, the
        close made the final flush: its error.  A write-back failure that a call raised
        already is not raised again."""
        if background:
            error = None if failed else background[0]
        elif final is not None:
            error = final
        else:
            error = self.closing_error() if ended and self.closed else None
        # The block's flushes are the library's: a write-back failure they met is heard
        # if the block raises it, and not raised again by a block that ran to its end
        # if a call raised it already (the close inside the block, a flush of the
        # user's: adversary round 34); one that cut the block short is raised all the
        # same (else the cancellation it caused would leak out); if the block's own
        # error won, the close raises it.
        if isinstance(error, WriteBackError):
            if self._write_back_heard and ended:
                return None
            self._write_back_heard = True
        return error

    def _sync_exclusive(self, first: int, n: int) -> None:
        """``msync(MS_SYNC)`` of ``[first, first + n)`` from inside :meth:`exclusive`
        (where :meth:`flush`, which pins, cannot be called), errors translated as there.
        """
        try:
            self._msync(*self.aligned(first, n))
        except OSError as exc:
            raise self.fault_error(exc, self._pieces[0][2], first, n) from None

    def _msync(self, start: int, span: int) -> None:
        """``msync(MS_SYNC)`` of the addresses ``[start, start + span)``, where a failed
        write-back is kept: Linux reports it to one ``msync`` or ``fsync`` of the open
        file and marks the pages it could not write clean (or drops them), so the next
        ``msync`` returns success for data that is not on the disk (adversary round 29:
        a retried flush said durable with 21 of 32 MiB lost, and one commit of a batch
        took the error of another's range while that one was told durable).  The error
        belongs to the file, not to a range: every durable flush of the map raises
        :exc:`~anymmap.WriteBackError` from then on."""
        self.check_written_back()
        self.check_not_syncing()
        syncs, me, thread = self._syncs, object(), threading.get_ident()
        if sys.is_finalizing():  # (a finalizer run by the last collection: see below)
            _check_free_at_exit(syncs.cond)
        try:
            syncs.threads.add(thread)  # (one step under the GIL; before any lock is taken)
            self._msync_beside(syncs, me, start, span)
        finally:
            syncs.threads.discard(thread)

    def _msync_beside(self, syncs: _FileSyncs, me: object, start: int, span: int) -> None:
        error: OSError | None = None
        try:
            with syncs.cond:
                syncs.active.add(me)
                failures = syncs.failed
            os_impl.sync_memory(start, span)
        except OSError as exc:
            error = exc
            if exc.errno not in _NOT_WRITE_BACK:
                # Marked before the msyncs beside it are woken (below).  (A new error,
                # not ``exc``: its traceback would keep the caller's frames alive, and
                # every map of the file holds it: adversary round 31.)
                failure = OSError(exc.errno or errno.EIO, exc.strerror or str(exc))
                self._fail_write_back(failure)
        finally:
            with syncs.cond:
                syncs.active.discard(me)
                if error is not None and error.errno not in _NOT_WRITE_BACK:
                    syncs.failed += 1
                syncs.cond.notify_all()
        if error is not None:
            if error.errno in _NOT_WRITE_BACK:  # the call was wrong, not the write-back
                raise error
            self.check_written_back()
        with syncs.cond:
            beside = set(syncs.active)
            while beside & syncs.active:
                # (At exit, one beside it may be a daemon thread's that never ends.)
                wait_unless_exiting(syncs.cond, HEAL_EVERY)
            other_failed = syncs.failed != failures
        if other_failed:  # one beside it may have taken the kernel's report of ours
            self.check_written_back()  # (it marked this map too, if it was open)
            raise WriteBackError(errno.EIO, "a write-back of the file failed meanwhile")

    def check_not_syncing(self) -> None:
        """Refuse a wait for another thread's use of the map on a thread inside an
        ``msync`` of its file: a finalizer or signal handler run there.  An ``msync``
        waits for the file's others in flight (see :class:`_FileSyncs`) holding its
        map's pin (or its close), so such a wait is a wait for itself (adversary round
        32: a ``__del__`` that flushed map B of a file, run by a collection inside map
        A's bookkeeping on A's group-commit thread, waited for B's committer, which
        waited for A's call; a signal handler that closed B there waited for B's pin).
        Checked by a durable flush, a close or resize, and a pin or lock that would wait.

        :raises RuntimeError: then
        """
        if threading.get_ident() in self._syncs.threads:
            raise RuntimeError(_SYNCING)

    def check_written_back(self, *, to_caller: bool = False) -> None:
        """Raise :exc:`~anymmap.WriteBackError` if a write-back of the map failed
        (``to_caller``: to a flush's caller, who then has heard of it)."""
        failed = self._write_back_failure
        if failed is not None:
            if to_caller:
                self._write_back_heard = True
            raise WriteBackError(failed.errno or errno.EIO, failed.strerror or str(failed))

    def result_of(self, request: CommitRequest, *, to_caller: bool = True) -> None:
        """Raise the error of ``request``'s flush to its caller (a write-back failure
        raised so has been heard of, if ``to_caller``: not by an ``auto_flush`` block's
        own flush, whose exit decides)."""
        try:
            request.result()
        except WriteBackError:
            if to_caller:
                self._write_back_heard = True
            raise

    def unheard_failure(self) -> OSError | None:
        """A failed write-back that no flush raised to its caller (the flushes that met
        it were cancelled, or it was another map's: adversary round 32, a cancelled
        flush's failure then a close, and 2 of 3 MiB lost in silence), once."""
        with signals_held(), self._cond:  # (two threads closing at once: one raises)
            if self._write_back_heard:
                return None
            try:
                self.check_written_back(to_caller=True)
            except WriteBackError as exc:
                return exc
            return None

    def _fail_write_back(self, error: OSError) -> None:
        """Keep ``error`` for this map and for every other map of the same file open in
        this process now: they share the file's pages, so what one failed to write may be
        what another wrote (and the kernel tells one open file description once: two
        maps of one descriptor, adversary round 30).  Maps made later start clean: they
        are the way to write the data again."""
        while True:
            try:
                maps = list(self._syncs.maps)
            except RuntimeError:  # "changed size during iteration": a map made meanwhile
                continue
            break
        for other in maps:
            if getattr(other, "mode", None) != "rw" or other.closed:  # (or being made)
                continue
            if other._write_back_failure is None:
                other._write_back_failure = error
        self._write_back_failure = error

    # -- flush ------------------------------------------------------------------------

    def flush(self, first: int, n: int | None, wait: bool) -> None:
        """Write the dirty pages of the range back to the file.

        ``wait=True``: durable when it returns (``msync(MS_SYNC)``).  ``wait=False``: start
        writeback and return.  A no-op for read-only and copy maps, whose pages never
        reach the file.  ``n=None`` means to the end of the map, as long as it is now.
        """
        with self.pinned():
            if n is None:
                n = self.length - first
            self.check_range(first, n)
            if self.mode != "rw":
                return
            if not n:
                if wait:  # (durable for nothing: still not after a failed write-back)
                    self.check_written_back()
                return
            start, span = self.aligned(first, n)
            copier = self._pieces[0][2]
            try:
                if wait:
                    self._msync(start, span)
                else:
                    file_start = self.file_offset + (start - self.addr)
                    os_impl.start_writeback(self.fd, file_start, span)
            except OSError as exc:
                raise self.fault_error(exc, copier, first, n) from None


class FileCore(FileBackedCore):
    #: The absolute path and identity of the file, if ``MmapRaw.create`` made it.
    made_file: tuple[str, tuple[int, int]] | None = None

    def __init__(
        self,
        file: object,
        *,
        offset: object = 0,
        length: object = None,
        mode: Mode = "rw",
        fault_safe: bool = True,
        hint: int | None = None,
        strict: bool = False,
        populate: bool = False,
        no_reserve: bool = False,
        prefill: Prefill = "allocate",
        label: str | None = None,
        own_fd: bool = False,
    ) -> None:
        """``own_fd``: ``file`` is a descriptor anymmap opened, not the caller's own open
        file (see :attr:`FileRef.callers`)."""
        if not os_impl.SUPPORTED:
            raise UnsupportedError(f"anymmap file maps on {sys.platform}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}")
        check_prefill(prefill)
        if not isinstance(fault_safe, bool):
            raise TypeError("fault_safe must be True or False")
        start = as_int(offset, "offset")
        wanted = None if length is None else check_size(length, "length")
        super().__init__(writable=mode != "r")
        # The map owns the descriptor from here; it is closed if the map is not made.
        self.file = open_fd(file, mode, label)
        self.fd = fd = self.file.fd
        try:
            self._join_file()
            prot = os_impl.PROT_READ if mode == "r" else os_impl.PROT_READ | os_impl.PROT_WRITE
            flags = os_impl.MAP_PRIVATE if mode == "copy" else os_impl.MAP_SHARED
            if populate:
                flags |= os_impl.MAP_POPULATE
            if no_reserve:
                flags |= os_impl.MAP_NORESERVE
            self.mode: Mode = mode
            self.fault_safe = fault_safe
            self.file_offset = start
            self._delta = start - page_floor(start)  # from the mapping's start to byte 0
            self._fixed = strict
            self._block_device = os_impl.file_kind(fd) == "block device"
            #: How growth gets its blocks: "allocate" (posix_fallocate) or "zeros" (written).
            self.prefill: Prefill = prefill
            # The size is read and mapped in a shared turn with the maps that grow the file
            # (adversary round 26: a map of what a failing growth had appended was left
            # past the end of its file once the growth cut it back).  (A descriptor that
            # was passed in is the caller's open file: its OFD locks are theirs.)
            if own_fd:  # (its offset and locks are no one's)
                self.file.callers = False
            # (Counted as a mapping of the file from before its size is read: a shrink
            # of another map in this process must not cut it under this one.)
            with (
                mapping_file(self._identity),
                os_impl.reading_size(fd, borrowed=self.file.callers),
            ):
                size = os_impl.file_size(fd)
                if size == 0:
                    raise InvalidSizeError(0, f"cannot map an empty file ({name_of(file)})")
                if start < 0 or start >= size:
                    raise OutOfBoundsError(start, wanted, size, "file")
                if wanted is None:  # the rest of the file, maybe more than a map can be
                    count = check_size(size - start, f"the rest of {name_of(file)}")
                else:
                    count = wanted
                if start + count > size:
                    raise OutOfBoundsError(start, count, size, "file")
                map_len = page_ceil(self._delta + count)
                check_file_end(page_floor(start), page_floor(start) + map_len)
                with signals_held():  # mapped means owned: a Ctrl-C in between would leak it
                    addr = map_placed(map_len, prot, flags, fd, page_floor(start), hint, strict)
                    self._install(addr, map_len, count)
        except BaseException:
            self.file.close()
            raise

    def _install(self, map_addr: int, map_len: int, length: int) -> None:
        """Adopt the mapping ``[map_addr, map_addr + map_len)``, whose byte ``delta`` is
        byte 0 of the map, ``length`` bytes long."""
        self.map_addr = map_addr
        self.map_len = map_len
        self.addr = map_addr + self._delta
        self.length = length
        self.memory = Memory(self.addr, length, self._fork_guard, unmap=(map_addr, map_len))
        copier = FileCopier(
            self.memory,
            0,
            self.writable,
            file=self.file,
            file_offset=self.file_offset,
            shared=self.mode != "copy",
            fault_safe=self.fault_safe,
        )
        self._set_pieces(((0, length, copier),))

    def describe(self) -> str:
        text = super().describe()
        return text if self.closed else f"{text} mode={self.mode!r} offset={self.file_offset}"

    def _unmap(self) -> None:
        os_impl.munmap(self.map_addr, self.map_len)

    def _release_resources(self) -> None:
        self.file.close()

    def check_resizable(self) -> None:
        if self.mode != "rw":
            raise ReadOnlyError(f"only a map of mode 'rw' can be resized, not {self.mode!r}")

    # -- resize -----------------------------------------------------------------------

    def resize(self, length: int) -> None:
        """Make the map ``length`` bytes long, growing the file to match if needed.

        Growth allocates the new blocks first (``posix_fallocate``, or zeros written with
        ``prefill="zeros"``), so a full disk fails here with ``OSError(ENOSPC)`` and
        leaves file and map unchanged, instead of a later write dying with SIGBUS.
        Shrinking cuts the file to the map's new end only if the map reaches the end of
        the file and no other map of anymmap in this process shows the file, or is being
        made or resized (one of them could have a borrow past the new end: see
        ``cut_if_alone``); a window in the middle of a file never cuts it, nor
        does a map of a block device, and then what was written past the new end is
        flushed (durable) first, since this map can no longer flush it afterwards.  If
        the file cannot be grown or cut, or the map cannot follow (for want of address
        space), the map and the file stay as they were: the growth's turn (see
        ``changing_size``) is held until the map has followed, so a growth is undone with
        no other map's growth or mapping of the file in between.  Maps of one file that
        grow it at the same time take turns, and never overwrite or cut what the other
        grew and wrote.  The new size is durable once a
        later ``flush`` returns (``msync(MS_SYNC)`` syncs what is needed to read the data
        back, size included).
        """
        self.check_resizable()
        first_page = page_floor(self.file_offset)
        check_file_end(first_page, first_page + page_ceil(self._delta + length))
        with self.exclusive():
            old_length = self.length
            old_addr, old_map_len = self.map_addr, self.map_len
            old_size = os_impl.file_size(self.fd)
            identity = os_impl.file_identity(self.fd)
            own = not self.file.callers  # (a descriptor of anymmap's own: see fill_file)
            installed = False
            # The file changes first: growing or cutting it is what can fail (a full disk,
            # a sealed memfd, a block device), and then the map has not changed yet.
            # Remapping can then only fail for want of address space.
            cut: list[int] = []  # the file's size before this resize cut it, once it did

            def alone(cut_it: Callable[[], None]) -> bool:
                # (See cut_if_alone; this map's memory as it is then: a failed remap
                # installs the old mapping anew.)
                return cut_if_alone(self.memory, identity, cut_it)

            def remap() -> None:
                nonlocal installed
                new_map_len = page_ceil(self._delta + length)
                # The old memory is given up, moved and the new one recorded in one held
                # section, which puts the old one back if the move fails: nothing is left
                # for the except path below to undo (a second Ctrl-C can cut that short,
                # and the map was left with no memory at all).  Installed means recorded,
                # whatever arrives.  Counted as a mapping of the file in the making from
                # before the old memory is given up until the new one is registered: a
                # shrink of another map of the file in between found none and cut the
                # file under this map's new end (adversary round 47).
                with mapping_file(identity), signals_held():
                    self.memory.retire()
                    try:
                        addr = remap_placed(old_addr, old_map_len, new_map_len, self._fixed)
                    except BaseException:
                        self._install(old_addr, old_map_len, old_length)
                        raise
                    self._install(addr, new_map_len, length)
                    self.dirty.cut(length)  # this map can no longer flush past its end
                    installed = True

            try:
                # A view that outlives its borrow refuses the resize before the file changes.
                # (Held: a collection of views left in cycles runs here.)
                with signals_held():
                    self.memory.check_unborrowed()
                if self._block_device:
                    if self.file_offset + length > old_size:
                        raise OutOfBoundsError(self.file_offset, length, old_size, "device")
                elif length > old_length:
                    # The turn is held until the map has followed, so that a growth whose
                    # map cannot follow is undone with no other map's growth or mapping
                    # of the file in between (a Ctrl-C handled as the growth returned
                    # left the file grown under the old map; adversary round 69).
                    with os_impl.changing_size(self.fd, own=own):
                        grew: list[int] = []
                        try:
                            fill_file(
                                self.fd,
                                self.file_offset + old_length,
                                length - old_length,
                                self.prefill,
                                own=own,
                                alone=alone,
                                grew=grew,
                            )
                            remap()
                        except BaseException:
                            with signals_held():  # (a second Ctrl-C must not stop it)
                                if grew and not installed:  # (the turn is ours: no wait)
                                    uncut_file(self.fd, grew[1], grew[0], own=own, alone=alone)
                            raise
                elif length < old_length:
                    # (Another map of the file in this process, or one being made, keeps
                    # it whole: a borrow of it past the new end would die of SIGBUS.)
                    end = self.file_offset + old_length
                    cut_file(self.fd, end, self.file_offset + length, cut, remap, alone, own=own)
                if (
                    length < old_length
                    and not cut
                    and self.dirty.maybe_pending()
                    and self._write_back_failure is None  # (nothing is durable now)
                ):
                    # The bytes past the new end stay in the file: make what was written
                    # there durable now, while this map can still flush it (pending_bytes
                    # forgets it below, and would miss it if the map grew back over it).
                    try:
                        self._sync_exclusive(length, old_length - length)
                    except WriteBackError:
                        self._write_back_heard = True  # (raised to the resize's caller)
                        raise
                if not installed:  # (a cut moved the map already)
                    remap()
            except BaseException:
                if installed:  # a signal that arrived during the change: it is made
                    raise
                # A growth was undone above.  A cut is undone: the remap that followed it
                # failed.
                if cut:
                    uncut_file(self.fd, self.file_offset + length, cut[0], own=own, alone=alone)
                raise


def create_file_map(
    path: object,
    size: object,
    *,
    exist_ok: bool,
    prefill: object,
    mode: object,
    fault_safe: bool,
) -> FileCore:
    """``MmapRaw.create``: make the file (see :func:`create_file`) and map all of it."""
    if not isinstance(fault_safe, bool):  # (before an existing file is grown)
        raise TypeError("fault_safe must be True or False")

    def mapped(created_ref: FileRef, made: str | None) -> FileCore:
        core = FileCore(  # (the map has its own duplicate)
            created_ref.fd,
            mode="rw",
            fault_safe=fault_safe,
            prefill=prefill,  # type: ignore[arg-type]
            label=label_of(path),
            own_fd=True,  # (create_file opened it: a turn may be taken on it)
        )
        if made is not None:  # (for undo_create; see create_file for exist_ok)
            core.made_file = (made, os_impl.file_identity(created_ref.fd))
        return core

    return create_file(path, size, exist_ok=exist_ok, prefill=prefill, mode=mode, then=mapped)


def undo_create(core: FileCore) -> None:
    """Take back a ``create`` that succeeded but whose caller was cancelled (a native
    ``Task.cancel()``, see ``_backend.run_sync``): close the map, and remove the file if
    that call created it and the path still names it."""
    core.close()
    if core.made_file is not None:
        remove_if_same(*core.made_file)
