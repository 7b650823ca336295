from __future__ import annotations

import sys
from typing import Any

from .._core._buffers import BufferLike
from .._core._checks import as_int, check_size
from .._core._files import FdArg, FileArg, as_fd, plain_file
from .._core._sparse import SparseCore, SparsePiece, check_file_offset, check_mmap_bits
from ._base import DirectAccessSyncMap

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self


class SparseMapping(DirectAccessSyncMap[SparseCore]):
    """
    The blocking twin of :class:`anymmap.SparseMapping`: same methods, no ``await``.
    Safe to share between threads: changes of pieces wait for borrows and copies.

    .. versionadded:: 0.1
    """

    __slots__ = ()

    _constructors = (
        "'anymmap.sync.SparseMapping.new(length)' or 'anymmap.sync.MmapOptions(...).map_sparse()'"
    )

    @classmethod
    def new(cls, length: int) -> Self:
        """Reserve ``length`` bytes of address space; see :meth:`anymmap.SparseMapping.new`."""
        return cls._create(SparseCore(check_size(length, "length")))

    def pieces(self) -> list[SparsePiece]:
        """What is mapped where, in order, holes included."""
        return self._open_core().pieces()

    def alloc(self, offset: int, length: int) -> None:
        """Map private, writable, zero-filled memory at ``offset``."""
        core = self._open_core()
        self._change_mapping(core.alloc, *core.check_piece_range(offset, length))

    def map_zero(self, offset: int, length: int) -> None:
        """Map read-only zero pages at ``offset``."""
        core = self._open_core()
        self._change_mapping(core.map_zero, *core.check_piece_range(offset, length))

    def map_file(
        self,
        offset: int,
        length: int,
        file: FileArg,
        file_offset: int = 0,
        *,
        writable: bool = False,
    ) -> None:
        """Map a shared window of ``file``; see :meth:`anymmap.SparseMapping.map_file`."""
        core = self._open_core()
        start, n = core.check_piece_range(offset, length)
        if not isinstance(writable, bool):
            raise TypeError("writable must be True or False")
        where = check_file_offset(file_offset, n)
        # (``file``'s own code runs here, not under the map's lock.)
        self._change_mapping(core.map_file, start, n, plain_file(file), where, writable)

    def mmap(
        self, offset: int, length: int, prot: int, flags: int, fd: FdArg, file_offset: int = 0
    ) -> None:
        """Pass-through ``mmap(2)`` of ``fd``; see :meth:`anymmap.SparseMapping.mmap`."""
        core = self._open_core()
        start, n = core.check_piece_range(offset, length)
        bits = check_mmap_bits(prot, flags)
        number = as_fd(fd, paths=False)
        where = check_file_offset(file_offset, n)
        self._change_mapping(core.mmap, start, n, *bits, number, where)

    def mmap_anonymous(self, offset: int, length: int, prot: int, flags: int) -> None:
        """Pass-through anonymous ``mmap(2)``; see :meth:`anymmap.SparseMapping.mmap`."""
        core = self._open_core()
        start, n = core.check_piece_range(offset, length)
        self._change_mapping(core.mmap, start, n, *check_mmap_bits(prot, flags), None, 0)

    def unmap(self, offset: int, length: int) -> None:
        """Turn the range back into a hole: its bytes are gone."""
        core = self._open_core()
        self._change_mapping(core.unmap, *core.check_piece_range(offset, length))

    def read_at(self, offset: int, buf: BufferLike) -> None:
        """:meth:`read_into` under ``sparse_mmap``'s name."""
        try:
            self.read_into(offset, buf)
        except BaseException:
            del buf  # (a traceback the caller keeps must not keep it: see read_into)
            raise

    def write_at(self, offset: int, data: BufferLike) -> None:
        """:meth:`update_region` under ``sparse_mmap``'s name."""
        try:
            self.update_region(offset, data)
        except BaseException:
            del data  # (a traceback the caller keeps must not keep it: see read_into)
            raise

    def fill_at(self, offset: int, value: int, length: int) -> None:
        """Write ``length`` bytes of ``value`` (0 to 255) at ``offset``."""
        offset, value = as_int(offset, "offset"), as_int(value, "value")
        length = as_int(length, "length")
        with self._lock.write():
            rest = self._open_core().start_fill(offset, value, length)
            if rest is not None:
                rest()

    def read_plain(self, offset: int, fmt: str) -> Any:
        """Read one value of the :mod:`struct` format ``fmt`` at ``offset``."""
        layout, size = SparseCore.plain_size(fmt)
        return SparseCore.plain_value(layout, self.read(offset, size))
