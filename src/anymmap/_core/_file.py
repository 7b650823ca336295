"""File-backed maps (seed 001, ``MmapRaw``): opening files safely, the flush family, and
resizing a map together with its file.

How copies stay fault-safe and off the disk on the event loop thread is the piece's
:class:`~anymmap._core._copier.FileCopier`; this module opens the file (never blocking,
refusing what cannot be mapped, by name), maps it, and keeps map and file consistent.
"""

from __future__ import annotations

import errno
import os
import sys
import weakref
from functools import partial
from typing import Literal, get_args

from .._errors import (
    InvalidSizeError,
    OutOfBoundsError,
    ReadOnlyError,
    UnmappableFileError,
    UnsupportedError,
)
from .._sys import os_impl
from ._checks import as_int, check_size
from ._copier import FileCopier, page_ceil, page_floor
from ._lifetime import Memory
from ._map import MapCore
from ._placement import map_placed

Mode = Literal["rw", "r", "copy"]
MODES: tuple[str, ...] = get_args(Mode)
#: What ``os_impl.file_kind`` says of the files that can be mapped.
MAPPABLE_KINDS = ("regular file", "block device")

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
                raise UnmappableFileError(name, os_impl.path_kind(file)) from None
            raise
    else:
        fd = os_impl.dup(as_fd(file))
    try:
        kind = os_impl.file_kind(fd)
        if kind == "directory":
            raise IsADirectoryError(errno.EISDIR, f"cannot map {name}: it is a directory")
        if kind not in MAPPABLE_KINDS:
            raise UnmappableFileError(name, kind)
        where = os_impl.UNMAPPABLE_FILE_SYSTEMS.get(os_impl.file_system(fd))
        if where is not None:
            raise UnmappableFileError(name, f"file in {where}")
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
        os_impl.close(fd)
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
        super().__init__(writable=mode != "r")
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
            os_impl.close(fd)
            raise

        self.fd = fd
        self.mode: Mode = mode
        self.fault_safe = fault_safe
        self.file_offset = start
        self._delta = delta  # from the page-aligned start of the mapping to byte 0
        self._fixed = strict
        self._block_device = os_impl.file_kind(fd) == "block device"
        self._fd_finalizer = weakref.finalize(self, os_impl.close, fd)
        self._install(addr, map_len, count)

    def _install(self, map_addr: int, map_len: int, length: int) -> None:
        """Adopt the mapping ``[map_addr, map_addr + map_len)``, whose byte ``delta`` is
        byte 0 of the map, ``length`` bytes long."""
        self.map_addr = map_addr
        self.map_len = map_len
        self.addr = map_addr + self._delta
        self.length = length
        self.memory = Memory(
            self.addr, length, partial(os_impl.munmap, map_addr, map_len), self._fork_guard
        )
        copier = FileCopier(
            self.memory,
            0,
            self.writable,
            fd=self.fd,
            file_offset=self.file_offset,
            shared=self.mode != "copy",
            fault_safe=self.fault_safe,
        )
        self._pieces = ((0, length, copier),)

    def describe(self) -> str:
        text = super().describe()
        return text if self.closed else f"{text} mode={self.mode!r} offset={self.file_offset}"

    def _unmap(self) -> None:
        os_impl.munmap(self.map_addr, self.map_len)

    def _release_resources(self) -> None:
        self._fd_finalizer()  # closes the fd

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
            if self.mode != "rw" or not n:
                return
            start, span = self.aligned(first, n)
            copier = self._pieces[0][2]
            try:
                if wait:
                    os_impl.sync_memory(start, span)
                else:
                    file_start = self.file_offset - self._delta + (start - self.map_addr)
                    os_impl.start_writeback(self.fd, file_start, span)
            except OSError as exc:
                raise self.fault_error(exc, copier, first, n) from None

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
        the file stay as they were.  The new size is durable once a later ``flush``
        returns (``msync(MS_SYNC)`` syncs what is needed to read the data back, size
        included).
        """
        self.check_resizable()
        with self.exclusive():
            old_length = self.length
            old_addr, old_map_len = self.map_addr, self.map_len
            old_size = os_impl.file_size(self.fd)
            cuts_file = (
                length < old_length
                and old_size <= self.file_offset + old_length
                and not self._block_device  # a device has the size it has
            )
            self.memory.retire()
            # The file changes first: growing or cutting it is what can fail (a full disk,
            # a sealed memfd, a block device), and then the map has not changed yet.
            # Remapping can then only fail for want of address space.
            try:
                if self._block_device:
                    if self.file_offset + length > old_size:
                        raise OutOfBoundsError(self.file_offset, length, old_size, "device")
                elif length > old_length:
                    os_impl.allocate(self.fd, self.file_offset + old_length, length - old_length)
                elif cuts_file:
                    os_impl.truncate(self.fd, self.file_offset + length)
                new_map_len = page_ceil(self._delta + length)
                addr = os_impl.remap(old_addr, old_map_len, new_map_len, not self._fixed)
            except BaseException:
                self._install(old_addr, old_map_len, old_length)
                if os_impl.file_size(self.fd) != old_size:
                    os_impl.truncate(self.fd, old_size)  # after a cut, the cut bytes read as 0
                raise
            self._install(addr, new_map_len, length)
