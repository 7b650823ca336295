from __future__ import annotations

import sys
from typing import Any

from .._backend import checkpoint, checkpoint_after, checkpoint_before, run_sync
from .._core._buffers import BufferLike
from .._core._checks import as_int, check_size
from .._core._files import FdArg, FileArg, as_fd, plain_file
from .._core._sparse import SparseCore, SparsePiece, check_file_offset, check_mmap_bits
from ._base import DirectAccessAsyncMap

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self


class SparseMapping(DirectAccessAsyncMap[SparseCore]):
    """
    A reserved range of address space, filled piece by piece, whose accessors fail with
    an error instead of crashing when they touch a hole (after the Rust crate ``sparse_mmap``)::

        async with await anymmap.SparseMapping.new(1 << 40) as m:  # 1 TiB, nothing committed
            await m.alloc(0, 1 << 20)                 # private memory
            await m.map_file(1 << 30, 4096, "data.bin")  # a window of a file
            await m.write_at(0, b"hello")
            await m.read_at(1 << 21, bytearray(8))    # a hole: MappingFaultError

    ``new(length)`` reserves ``length`` bytes rounded up to a whole number of pages
    (``len(m)`` says how many), with ``PROT_NONE`` and ``MAP_NORESERVE``: no memory, no
    swap, and no other mapping can land inside it.  Its base is aligned to 2 MiB when the
    length is at least 2 MiB (so transparent huge pages can back aligned pieces), else to
    the page size, and it never moves.

    Filling (``alloc``, ``map_zero``, ``map_file``, ``mmap``, ``mmap_anonymous``) and
    ``unmap`` take page-aligned offsets and lengths inside the map, run in a worker thread
    under the map's write lock, and replace whatever overlapped the range, as the
    kernel's ``MAP_FIXED`` does (the parts of older pieces outside it stay).  A copy
    (``read_at``/``read_into``/``read``, ``write_at``/``update_region``, ``fill_at``,
    ``read_plain`` and the ``*_nowait`` forms) that touches a hole, writes a read-only page,
    or reaches past the end of a mapped file raises :class:`~anymmap.MappingFaultError`
    naming the first offset it could not access; the bytes before it may have been
    copied.  Borrows (``as_slice``, ``as_mut_slice``) are refused over holes, read-only
    pieces (for writing), pass-through pieces and file pages past the end of the file.

    .. versionadded:: 0.1
    """

    __slots__ = ()

    _constructors = "'await anymmap.SparseMapping.new(length)' or 'await anymmap.MmapOptions(...).map_sparse()'"

    @classmethod
    async def new(cls, length: int) -> Self:
        """Reserve ``length`` bytes of address space (rounded up to whole pages).

        :raises InvalidSizeError: if ``length`` is 0 or above 128 TiB
        :raises OSError: if the kernel refuses (``ENOMEM``: no address space left)
        """
        size = check_size(length, "length")
        await checkpoint()
        return cls._create(SparseCore(size))

    def pieces(self) -> list[SparsePiece]:
        """What is mapped where, in order, holes included (for debugging and tests)."""
        return self._open_core().pieces()

    # -- filling holes ------------------------------------------------------------------

    async def alloc(self, offset: int, length: int) -> None:
        """Map private, writable, zero-filled memory at ``offset`` (pages are committed on
        first touch)."""
        core = self._open_core()
        start, n = core.check_piece_range(offset, length)
        await self._change_mapping("alloc", core.alloc, start, n)

    async def map_zero(self, offset: int, length: int) -> None:
        """Map read-only zero pages at ``offset``: reads give zeros, writes raise
        :class:`~anymmap.MappingFaultError`."""
        core = self._open_core()
        start, n = core.check_piece_range(offset, length)
        await self._change_mapping("map_zero", core.map_zero, start, n)

    async def map_file(
        self,
        offset: int,
        length: int,
        file: FileArg,
        file_offset: int = 0,
        *,
        writable: bool = False,
    ) -> None:
        """Map ``length`` bytes of ``file`` (a path, a descriptor or an object with
        ``fileno()``; the map keeps its own descriptor) from ``file_offset`` at ``offset``,
        shared: other processes see writes through a ``writable`` window, and it sees
        theirs.  Pages past the end of the file fault (an error for copies).

        :raises UnmappableFileError: if ``file`` is not a regular file or a block device
        :raises PermissionError: if it cannot be opened as ``writable`` asks
        """
        core = self._open_core()
        start, n = core.check_piece_range(offset, length)
        where = check_file_offset(file_offset, n)
        if not isinstance(writable, bool):
            raise TypeError("writable must be True or False")
        # (``file``'s own code runs here, not in the worker under the map's lock.)
        plain = plain_file(file)
        await self._change_mapping("map_file", core.map_file, start, n, plain, where, writable)

    async def mmap(
        self, offset: int, length: int, prot: int, flags: int, fd: FdArg, file_offset: int = 0
    ) -> None:
        """Map ``fd`` (a descriptor or an object with ``fileno()``) at ``offset`` with
        ``prot`` and ``flags`` passed through to ``mmap(2)``, ``MAP_FIXED`` forced.

        Refused with ``ValueError``: ``MAP_LOCKED`` (the pages could not be given back),
        ``MAP_FIXED_NOREPLACE``, ``MAP_GROWSDOWN`` (it would grow out of the reservation),
        ``MAP_HUGETLB`` with an offset or length that is not a multiple of its huge page
        size, ``MAP_ANONYMOUS`` (use :meth:`mmap_anonymous`), prot bits other than
        ``PROT_READ | PROT_WRITE | PROT_EXEC``, and flags without ``MAP_SHARED`` or
        ``MAP_PRIVATE``.  Copies go through the kernel: a page this mapping cannot give
        raises :class:`~anymmap.MappingFaultError`.

        :raises UnmappableFileError: unless ``fd`` is a regular file or a block device
            (as for :meth:`map_file`)
        """
        core = self._open_core()
        start, n = core.check_piece_range(offset, length)
        bits = check_mmap_bits(prot, flags)
        number = as_fd(fd, paths=False)
        where = check_file_offset(file_offset, n)
        await self._change_mapping("mmap", core.mmap, start, n, *bits, number, where)

    async def mmap_anonymous(self, offset: int, length: int, prot: int, flags: int) -> None:
        """Map anonymous memory at ``offset`` with ``prot`` and ``flags`` passed through
        to ``mmap(2)`` (``MAP_ANONYMOUS | MAP_FIXED`` forced); refused flags as for
        :meth:`mmap`."""
        core = self._open_core()
        start, n = core.check_piece_range(offset, length)
        bits = check_mmap_bits(prot, flags)
        await self._change_mapping("mmap_anonymous", core.mmap, start, n, *bits, None, 0)

    async def unmap(self, offset: int, length: int) -> None:
        """Turn the range back into a hole (reserved, nothing mapped): its bytes are gone.

        :raises BorrowError: if a view of the range escaped its borrow and is alive
        """
        core = self._open_core()
        start, n = core.check_piece_range(offset, length)
        await self._change_mapping("unmap", core.unmap, start, n)

    # -- sparse_mmap's accessors --------------------------------------------------------

    async def read_at(self, offset: int, buf: BufferLike) -> None:
        """Fill ``buf`` from ``offset``: :meth:`read_into` under ``sparse_mmap``'s name."""
        try:
            await self.read_into(offset, buf)
        except BaseException:
            del buf  # (a traceback the caller keeps must not keep it: see read_into)
            raise

    async def write_at(self, offset: int, data: BufferLike) -> None:
        """Write ``data`` at ``offset``: :meth:`update_region` under ``sparse_mmap``'s name."""
        try:
            await self.update_region(offset, data)
        except BaseException:
            del data  # (a traceback the caller keeps must not keep it: see read_into)
            raise

    async def fill_at(self, offset: int, value: int, length: int) -> None:
        """Write ``length`` bytes of ``value`` (0 to 255) at ``offset``."""
        offset, value = as_int(offset, "offset"), as_int(value, "value")
        length = as_int(length, "length")
        self._open_core().check_writable()
        await checkpoint_before()
        if (
            self._lock.free_for_writing()
            and self._open_core().start_fill(offset, value, length) is None
        ):
            await checkpoint_after()
            return
        async with self._lock.write():
            rest = self._open_core().start_fill(offset, value, length)
            if rest is not None:
                await run_sync(rest)

    async def read_plain(self, offset: int, fmt: str) -> Any:
        """Read one value of the :mod:`struct` format ``fmt`` (``"<Q"``, ``"d"``,
        ``"16s"``, ...) at ``offset``.

        :raises ValueError: if ``fmt`` is not a format of exactly one value
        """
        layout, size = SparseCore.plain_size(fmt)
        return SparseCore.plain_value(layout, await self.read(offset, size))
