"""File-backed maps (seed 001, ``MmapRaw``): the flush family and fault-safe copies.

Two dangers shape this module.  A page of a mapped file that is not in memory makes a copy
wait for the disk, so the copies that run on the event loop thread first make sure they
will not (``preadv(RWF_NOWAIT)`` or ``mincore``) and leave the rest to a worker thread.  And
a file truncated under the map turns every access past its new end into SIGBUS, so copies
go through the kernel (``preadv``, ``process_vm_readv``/``writev``), which reports
``EFAULT`` instead; :class:`~anymmap.MappingFaultError` carries that to the caller.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import sys
import weakref
from collections.abc import Callable
from typing import Literal, get_args

from .._errors import (
    ClosedMapError,
    InvalidSizeError,
    MappingFaultError,
    OutOfBoundsError,
    ReadOnlyError,
    UnmappableFileError,
    UnsupportedError,
)
from .._sys import os_impl
from ._anon import map_placed
from ._buffers import PinnedBuffer
from ._checks import as_int, check_size
from ._map import MapCore, page_ceil, page_floor

Mode = Literal["rw", "r", "copy"]
MODES: tuple[str, ...] = get_args(Mode)

_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


file_size = os_impl.file_size

_PATH_TYPES = (str, bytes, os.PathLike)


def _name_of(file: object) -> str:
    if isinstance(file, _PATH_TYPES):
        return repr(os.fsdecode(file))
    if isinstance(file, int):
        return f"file descriptor {file}"
    return repr(file)


def as_fd(file: object) -> int:
    """The descriptor number of an int-like or of an object with ``fileno()``.

    :raises TypeError: for anything else (``bool`` included)
    :raises OSError: ``EBADF`` for a number no descriptor can have
    """
    fileno = getattr(file, "fileno", None)
    if fileno is not None and not isinstance(file, int):
        file = fileno()
    if isinstance(file, bool) or not hasattr(type(file), "__index__"):
        raise TypeError(
            f"file must be a path, a file descriptor or have fileno(), not {type(file).__name__}"
        )
    fd = as_int(file, "file descriptor")
    if not 0 <= fd < 1 << 31:
        raise OSError(errno.EBADF, f"{fd} is not a file descriptor")
    return fd


def open_fd(file: object, mode: Mode) -> tuple[int, int]:
    """Open what ``file`` names (a path, an fd, or an object with ``fileno()``) for a map
    of ``mode``; return a descriptor that the map owns (a given fd is duplicated) and the
    size of the file.

    Never blocks: a path is opened with ``O_NONBLOCK`` (a FIFO would wait for a writer),
    and anything that is not a regular file or a block device is refused.

    :raises UnmappableFileError: for a FIFO, socket, character device or /proc file
    :raises PermissionError: if the file or fd does not allow the access ``mode`` needs
    """
    writable = mode == "rw"
    name = _name_of(file)
    if isinstance(file, _PATH_TYPES):
        try:
            fd = os_impl.open_nonblocking(file, writable)
        except PermissionError as exc:
            if not writable:
                raise
            raise PermissionError(
                exc.errno,
                f"cannot open {name} for writing ({exc.strerror}); to map it for reading "
                "only, pass mode='r' (or mode='copy' for private writes)",
            ) from None
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # a socket, which open(2) refuses this way
                raise UnmappableFileError(name, os_impl.file_kind(os.stat(file).st_mode)) from None
            raise
    else:
        fd = os.dup(as_fd(file))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, f"cannot map {name}: it is a directory")
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISBLK(info.st_mode)):
            raise UnmappableFileError(name, os_impl.file_kind(info.st_mode))
        where = os_impl.UNMAPPABLE_FILE_SYSTEMS.get(os_impl.file_system(fd))
        if where is not None:
            raise UnmappableFileError(name, f"a file in {where}")
        readable, can_write = os_impl.access_mode(fd)
        if not readable or (writable and not can_write):
            need = "reading and writing" if writable else "reading"
            hint = " (or map it with mode='r' or mode='copy')" if writable and readable else ""
            raise PermissionError(
                errno.EACCES,
                f"{name} is not open for {need}; a map of mode {mode!r} needs it{hint}",
            )
        os_impl.set_blocking(fd)
        return fd, os_impl.file_size(fd)
    except BaseException:
        os.close(fd)
        raise


class FileCore(MapCore):
    kind = "file map"

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
    ) -> None:
        if not os_impl.SUPPORTED:
            raise UnsupportedError(f"anymmap file maps on {sys.platform}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}")
        if not isinstance(fault_safe, bool):
            raise TypeError("fault_safe must be True or False")
        start = as_int(offset, "offset")
        wanted = None if length is None else check_size(length, "length")
        fd, size = open_fd(file, mode)
        try:
            if size == 0:
                raise InvalidSizeError(0, f"cannot map an empty file ({_name_of(file)})")
            if start < 0 or start >= size:
                raise OutOfBoundsError(start, wanted, size, "file")
            count = size - start if wanted is None else wanted
            if start + count > size:
                raise OutOfBoundsError(start, count, size, "file")

            base = page_floor(start)
            delta = start - base
            map_len = page_ceil(delta + count)
            prot = os_impl.PROT_READ if mode == "r" else os_impl.PROT_READ | os_impl.PROT_WRITE
            flags = os_impl.MAP_PRIVATE if mode == "copy" else os_impl.MAP_SHARED
            if populate:
                flags |= os_impl.MAP_POPULATE
            if no_reserve:
                flags |= os_impl.MAP_NORESERVE
            addr = map_placed(map_len, prot, flags, fd, base, hint, strict)
        except BaseException:
            os.close(fd)
            raise

        self.fd = fd
        self.mode: Mode = mode
        self.fault_safe = fault_safe
        self.file_offset = start
        self._fixed = strict
        self._block_device = stat.S_ISBLK(os.fstat(fd).st_mode)
        # read(2) copies what a shared map shows (a private copy map may differ), unless
        # the descriptor was opened with O_DIRECT, which wants aligned buffers and offsets.
        self._pread = mode != "copy" and not os_impl.is_direct(fd)
        self._pread_nowait = self._pread and _RWF_NOWAIT is not None
        # On tmpfs a page that is not in memory is either swapped out or a hole never
        # written, and a hole reads as zeros with no I/O: the *_nowait reads check.
        self._holes_are_free = self._pread and os_impl.file_system(fd) == "tmpfs"
        # Reads of shared maps are fault-safe whatever fault_safe says (documented).
        self._safe_reads = fault_safe or mode != "copy"
        self._fd_finalizer = weakref.finalize(self, os.close, fd)
        super().__init__(addr, map_len, delta, count, writable=mode != "r")

    def describe(self) -> str:
        text = super().describe()
        return text if self.closed else f"{text} mode={self.mode!r} offset={self.file_offset}"

    def _unmap_now(self) -> None:
        super()._unmap_now()
        self._fd_finalizer()  # closes the fd

    # -- copies on the calling thread -------------------------------------------------

    def read_now(self, offset: int, dst: memoryview, limit: int) -> int:
        n = len(dst)
        if n > limit or not n:
            return 0
        if self._pread_nowait:
            # One syscall: copies from the page cache if every page is there, else EAGAIN
            # or a short count; it never waits for the disk and never faults.
            try:
                got = os.preadv(self.fd, (dst,), self.file_offset + offset, _RWF_NOWAIT)  # type: ignore[arg-type]
            except BlockingIOError:
                return 0
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                self._pread_nowait = False  # e.g. tmpfs: use the mincore path from now on
            else:
                if got == n:
                    return n
                if self._past_end(offset + got):
                    # The file ends inside the range: copy what the map really shows
                    # (zeros to the end of the last page) or fail with EFAULT.
                    self._copy_out(self._address_of(dst, got), self.addr + offset + got, n - got)
                    return n
                return got
        if not self.resident(offset, n):
            self._raise_if_past_end(offset, n)
            if not (
                self._holes_are_free and os_impl.is_hole(self.fd, self.file_offset + offset, n)
            ):
                return 0
        if self._safe_reads:
            self._copy_out(self._address_of(dst, 0), self.addr + offset, n)
        else:
            dst[:] = self._view[offset : offset + n]
        return n

    def write_now(self, offset: int, src: memoryview, limit: int) -> int:
        n = len(src)
        if n > limit or not n:
            return 0
        if not self.resident(offset, n):
            self._raise_if_past_end(offset, n)
            return 0
        if self.fault_safe:
            with PinnedBuffer(src, writable=False) as pin:
                self._copy_in(self.addr + offset, pin.address, n)
        else:
            self._view[offset : offset + n] = src
        return n

    def read_bytes_now(self, offset: int, length: int, limit: int) -> bytes | None:
        if length > limit:
            return None
        buf = bytearray(length)
        return bytes(buf) if self.read_now(offset, memoryview(buf), limit) == length else None

    @staticmethod
    def _address_of(view: memoryview, skip: int) -> int:
        # SAFETY: `view` is a writable buffer the caller holds for the whole copy.
        return ctypes.addressof(ctypes.c_char.from_buffer(view)) + skip

    def _past_end(self, offset: int) -> bool:
        """Whether ``offset`` (in the map) is at or past the current end of the file."""
        return self.file_offset + offset >= file_size(self.fd)

    def _raise_if_past_end(self, offset: int, length: int) -> None:
        """Raise the fault error if the range reaches a page past the end of the file.

        Used where a copy would otherwise be sent to a worker or refused with WouldBlock:
        a page past the end will never come into memory.
        """
        size = file_size(self.fd)
        last_page_end = page_ceil(self.delta + size - self.file_offset)
        if self.delta + offset + length > last_page_end:
            address = self.map_addr + max(last_page_end, self.delta + offset)
            raise MappingFaultError(address, f"the file was truncated to {size} bytes")

    # -- copies through the kernel --------------------------------------------------

    def _copy_out(self, dst: int, src: int, length: int) -> None:
        if self._pread:
            # A shared map shows the page cache: read(2) copies the same bytes, fault-safe,
            # and reads cold pages ahead faster than page faults do.
            got = os_impl.pread(self.fd, dst, length, self.file_offset + (src - self.addr))
            if got == length:
                return
            # Past the end of the file: what the map shows there (zeros up to the end of
            # the file's last page) or EFAULT, through the kernel like every shared read.
            dst, src, length = dst + got, src + got, length - got
        elif not self._safe_reads:
            os_impl.memmove(dst, src, length)
            return
        self._fault_safe_copy(os_impl.read_memory, dst, src, length, src)

    def _copy_in(self, dst: int, src: int, length: int) -> None:
        if self.fault_safe:
            self._fault_safe_copy(os_impl.write_memory, dst, src, length, dst)
        else:
            os_impl.memmove(dst, src, length)

    def _fault_safe_copy(
        self, copy: Callable[[int, int, int], None], dst: int, src: int, n: int, mapped: int
    ) -> None:
        """Copy with ``copy`` (through the kernel); ``mapped`` is the map side."""
        try:
            copy(dst, src, n)
        except OSError as exc:
            raise self._translate(exc, mapped) from None

    def _translate(self, exc: OSError, address: int) -> OSError:
        if exc.errno != errno.EFAULT:
            return exc
        address = getattr(exc, "address", address)  # the page that failed, when known
        size = file_size(self.fd)
        file_position = self.file_offset + (address - self.addr)
        if file_position >= page_ceil(size):
            why = f"the file was truncated to {size} bytes"
        else:
            why = "the file system could not provide the page (out of space, or an I/O error)"
        return MappingFaultError(address, why)

    # -- flush ------------------------------------------------------------------------

    def flush(self, first: int, n: int | None, wait: bool) -> None:
        """Write the dirty pages of the range back to the file.

        ``wait=True``: ``msync(MS_SYNC)``, durable when it returns.  ``wait=False``: start
        writeback (``sync_file_range(SYNC_FILE_RANGE_WRITE)``) and return.  A no-op for
        read-only and copy maps, whose pages never reach the file.
        """
        with self.pinned():
            if n is None:  # the whole map, as long as it is now
                n = self.length - first
            self.check_range(first, n)
            if self.mode != "rw" or not n:
                return
            start, span = self.aligned(first, n)
            if wait:
                os_impl.msync(start, span, os_impl.MS_SYNC)
            else:
                file_start = self.file_offset - self.delta + (start - self.map_addr)
                os_impl.sync_file_range(self.fd, file_start, span, os_impl.SYNC_FILE_RANGE_WRITE)

    def check_resizable(self) -> None:
        if self.mode != "rw":
            raise ReadOnlyError(f"only a map of mode 'rw' can be resized, not {self.mode!r}")

    # -- resize -----------------------------------------------------------------------

    def resize(self, length: int) -> None:
        """Make the map ``length`` bytes long, growing the file to match if needed.

        Growth allocates the new blocks first (``posix_fallocate``), so a full disk fails
        here with ``OSError(ENOSPC)`` and leaves file and map unchanged, instead of a later
        write dying with SIGBUS.  Shrinking cuts the file to the map's new end only if the
        map reached the end of the file; a window in the middle of a file never cuts it,
        nor does a map of a block device.  If the file cannot be grown or cut, the map and
        the file stay as they were.
        The new size is durable once a later ``flush`` returns (``msync(MS_SYNC)`` syncs
        what is needed to read the data back, size included).
        """
        self.check_resizable()
        with self._exclusive() as still_open:
            if not still_open:
                raise ClosedMapError(self.kind)
            old_length = self.length
            old_addr, old_map_len = self.map_addr, self.map_len
            old_size = file_size(self.fd)
            cuts_file = (
                length < old_length
                and old_size <= self.file_offset + old_length
                and not self._block_device  # a device has the size it has
            )
            self._retire()
            # The file changes first: growing or cutting it is what can fail (a full disk,
            # a sealed memfd, a block device), and then the map has not changed yet.
            # Remapping can then only fail for want of address space.
            try:
                if self._block_device:
                    if self.file_offset + length > old_size:
                        raise OutOfBoundsError(self.file_offset, length, old_size, "device")
                elif length > old_length:
                    os.posix_fallocate(self.fd, self.file_offset + old_length, length - old_length)
                elif cuts_file:
                    os.ftruncate(self.fd, self.file_offset + length)
                new_map_len = page_ceil(self.delta + length)
                addr = os_impl.remap(old_addr, old_map_len, new_map_len, not self._fixed)
            except BaseException:
                self._install(old_addr, old_map_len, self.delta, old_length)
                if file_size(self.fd) != old_size:
                    os.ftruncate(self.fd, old_size)  # after a cut, the cut bytes read as 0
                raise
            self._install(addr, new_map_len, self.delta, length)
