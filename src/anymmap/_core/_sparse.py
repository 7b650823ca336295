"""Sparse maps (seed 002, ``SparseMapping``): a reservation filled piece by piece.

The map is a reservation (see ``_reservation``) cut into pieces, each ``(offset, length,
copier)``: holes (reserved, nothing mapped), private memory, read-only zero pages,
windows of files, and whatever a pass-through ``mmap`` put there.  Filling a range
replaces the pieces it overlaps (the kernel's ``MAP_FIXED`` semantics), keeping what lies
outside it; :meth:`SparseCore.unmap` turns a range back into a hole.  Every copy goes
through the copier of each piece it crosses, so a hole, a read-only page or a window past
the end of its file raises :class:`~anymmap.MappingFaultError` instead of crashing.

The facades hold the map's write lock around every change of pieces and run it in a
worker thread; the core's ``exclusive()`` also waits for pinned work (populate, advise).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from functools import partial
from typing import Any, NamedTuple

from .._errors import BorrowError, MappingFaultError, OutOfBoundsError
from .._sys import os_impl, signals_held
from ._checks import as_int, check_file_end, check_size
from ._copier import (
    PAGE_SIZE,
    Copier,
    FileCopier,
    HoleCopier,
    KernelCopier,
    MemoryCopier,
    UnreadableCopier,
    mapping_file,
    page_ceil,
    register_window,
)
from ._files import PlainFile, check_mappable, open_fd
from ._lifetime import Memory
from ._map import INLINE_COPY_LIMIT, MapCore, Piece
from ._reservation import clear, place, reserve

_ANON_PRIVATE = os_impl.MAP_PRIVATE | os_impl.MAP_ANONYMOUS
_MAP_TYPES = os_impl.MAP_SHARED | os_impl.MAP_PRIVATE  # MAP_SHARED_VALIDATE is both bits
_PROTS = os_impl.PROT_READ | os_impl.PROT_WRITE | os_impl.PROT_EXEC

#: Flags a pass-through ``mmap`` refuses, and why.
_REFUSED_FLAGS = {
    os_impl.MAP_LOCKED: "MAP_LOCKED pins the pages: they could not be given back",
    os_impl.MAP_FIXED_NOREPLACE: "MAP_FIXED_NOREPLACE would refuse the reservation itself",
    os_impl.MAP_GROWSDOWN: "MAP_GROWSDOWN grows past the piece, out of the reservation",
}

FILL_CHUNK = 1 << 20


class SparsePiece(NamedTuple):
    """One piece of a :class:`~anymmap.SparseMapping`, as ``pieces()`` reports it.

    ``kind`` is ``"hole"`` (nothing mapped), ``"private"`` (``alloc``), ``"zero"``
    (``map_zero``), ``"file"`` (``map_file``) or ``"mmap"`` (a pass-through ``mmap`` or
    ``mmap_anonymous``); ``file`` names the file of a ``"file"`` piece.
    """

    offset: int
    length: int
    kind: str
    writable: bool
    file: str | None


def _check_aligned(value: int, what: str, unit: int = PAGE_SIZE) -> None:
    if value % unit:
        raise ValueError(f"{what} {value} is not a multiple of {unit}")


def check_file_offset(value: object, length: int) -> int:
    """``file_offset`` as a page-aligned offset a file can have, for a window of
    ``length`` bytes (checked already).

    :raises TypeError: if it is not an integer
    :raises ValueError: if it is negative, not page-aligned, or the window reaches past
        ``MAX_FILE_OFFSET`` (see :func:`check_file_end`)
    """
    offset = as_int(value, "file_offset")
    if offset < 0:
        raise ValueError(f"file_offset {offset} is negative")
    check_file_end(offset, offset + length)
    _check_aligned(offset, "file_offset")
    return offset


def check_mmap_bits(prot: object, flags: object) -> tuple[int, int]:
    """``prot`` and ``flags`` as the C ``int`` values ``mmap(2)`` takes.

    :raises TypeError: if they are not integers
    :raises ValueError: if one is negative or does not fit in a C ``int`` (below 2**31:
        ctypes would cut it silently)
    """
    bits = as_int(prot, "prot"), as_int(flags, "flags")
    for name, value in zip(("prot", "flags"), bits, strict=True):
        if not 0 <= value < 1 << 31:
            raise ValueError(
                f"{name} {value:#x} is not a set of mmap(2) bits (0 to 2**31 - 1, a C int)"
            )
    return bits


def _huge_page_size(flags: int) -> int:
    """The page size a ``MAP_HUGETLB`` mapping uses: the one encoded in the flags, else
    the system's default huge page size."""
    shift = (flags >> os_impl.MAP_HUGE_SHIFT) & 0x3F
    if shift:
        return 1 << shift
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("Hugepagesize:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - /proc is always there on Linux
        pass
    return 2 << 20  # pragma: no cover


class SparseCore(MapCore):
    kind = "sparse map"

    def __init__(self, length: int, *, hint: int | None = None, strict: bool = False) -> None:
        super().__init__(writable=True)
        size = page_ceil(length)
        self.length = size
        with signals_held():  # reserved means owned: a Ctrl-C in between would leak it
            self.addr = reserve(size, hint=hint, strict=strict)
            self.memory = Memory(self.addr, size, self._fork_guard)
        self._set_pieces(((0, size, HoleCopier(self.memory, 0, False, "hole")),))

    def _unmap(self) -> None:
        os_impl.munmap(self.addr, self.length)

    def _set_pieces(self, pieces: Sequence[Piece]) -> None:
        super()._set_pieces(pieces)
        # Which files the map shows now, for a shrink of another map of one of them
        # (``cut_if_alone``).  Set after the pieces: an unmapped window's pages are gone
        # by then, and a new one is still counted by ``mapping_file``.
        self.memory.files = frozenset(
            copier.identity for _, _, copier in pieces if copier.identity is not None
        )

    def _release_resources(self) -> None:
        for _, _, copier in self._pieces:
            if isinstance(copier, FileCopier):
                copier.file.close()
        self._set_pieces(())

    # -- what is where --------------------------------------------------------------

    def pieces(self) -> list[SparsePiece]:
        self.check_open()
        return [
            SparsePiece(offset, length, copier.kind, copier.writable, copier.label)
            for offset, length, copier in self._pieces
        ]

    def check_piece_range(self, offset: object, length: object) -> tuple[int, int]:
        """``(offset, length)`` as ints, page-aligned, non-empty and inside the map."""
        start = as_int(offset, "offset")
        n = check_size(length, "length")
        if start < 0 or start + n > self.length:
            raise OutOfBoundsError(start, n, self.length)
        _check_aligned(start, "offset")
        _check_aligned(n, "length")
        return start, n

    def _replace(
        self,
        start: int,
        n: int,
        make: Callable[[], Copier],
        map_it: Callable[[], None],
        release: Callable[[], None] | None = None,
    ) -> None:
        """Map ``[start, start + n)`` with ``map_it()`` and make it one piece, whose copier
        ``make()`` gives, replacing what overlapped it (the parts outside stay).

        If the kernel refuses the new mapping, the range stays as it was when the kernel
        refused before it unmapped anything (most refusals: argument, permission, size
        and feature checks); if the old pages are gone (``MAP_FIXED`` had removed them),
        the range is given back to the reservation, as a hole.  ``release`` lets go of
        what the new piece would have owned (its file) if it is not made.
        """
        made = False
        try:
            with self.exclusive():
                if self.memory.escaped_in(self.addr - self.memory.addr + start, n):
                    raise BorrowError(
                        "a view of this range escaped its borrow and is still alive; the "
                        "range cannot be remapped until it is gone"
                    )
                with signals_held():  # a Ctrl-C arrives once the pieces say what is mapped
                    placed = False
                    try:
                        map_it()
                        placed = True
                        copier = make()
                    except BaseException:
                        # (Refused before it unmapped anything: the old pieces and their
                        # bytes are still there.  A failed fill lost data it never had to.)
                        if placed or not os_impl.is_mapped(self.addr + start, n):
                            clear(self.addr + start, n)
                            hole = HoleCopier(self.memory, start, False, "hole")
                            self._set_range(start, n, hole)
                        raise
                    self._set_range(start, n, copier)
                    made = True
        except BaseException:
            if not made and release is not None:  # (made: a signal arrived meanwhile)
                with signals_held():
                    release()
            raise

    def _set_range(self, start: int, n: int, copier: Copier) -> None:
        """Make ``[start, start + n)`` one piece with ``copier``; trim what overlapped, and
        merge neighbours that are the same backing going on (an arena growing by ``alloc``
        stays one piece)."""
        end = start + n
        before: list[Piece] = []
        after: list[Piece] = []
        for first, size, old in self._pieces:
            last = first + size
            if last <= start:
                before.append((first, size, old))
            elif first >= end:
                after.append((first, size, old))
            else:
                if first < start:
                    before.append((first, start - first, old))
                if last > end:
                    after.append((end, last - end, old.moved(end - first)))
        pieces = before
        for piece in [(start, n, copier), *after]:
            if pieces and pieces[-1][2].continued_by(piece[2], pieces[-1][1]):
                first, size, kept = pieces[-1]
                pieces[-1] = (first, size + piece[1], kept)
            else:
                pieces.append(piece)
        self._set_pieces(tuple(pieces))

    # -- filling holes --------------------------------------------------------------

    def alloc(self, start: int, n: int) -> None:
        """Private, writable, zero-filled memory (pages are allocated on first touch)."""
        self._replace(
            start,
            n,
            lambda: MemoryCopier(self.memory, start, True, "private"),
            lambda: place(
                self.addr + start, n, os_impl.PROT_READ | os_impl.PROT_WRITE, _ANON_PRIVATE
            ),
        )

    def map_zero(self, start: int, n: int) -> None:
        """Read-only zero pages."""
        self._replace(
            start,
            n,
            lambda: MemoryCopier(self.memory, start, False, "zero"),
            lambda: place(self.addr + start, n, os_impl.PROT_READ, _ANON_PRIVATE),
        )

    def map_file(
        self, start: int, n: int, file: PlainFile, file_offset: int, writable: bool
    ) -> None:
        """A shared window of ``file`` (``writable``: writes reach the file);
        ``file_offset`` checked by :func:`check_file_offset`."""
        ref = open_fd(file, "rw" if writable else "r", read_only="writable=False")
        fd = ref.fd
        prot = os_impl.PROT_READ | (os_impl.PROT_WRITE if writable else 0)
        try:
            identity = os_impl.file_identity(fd)
        except BaseException:
            ref.close()
            raise
        # (Counted as a mapping of the file until the window is registered, so that no
        # shrink of another map in this process cuts the file under it meanwhile.)
        with mapping_file(identity):
            self._replace(
                start,
                n,
                lambda: FileCopier(
                    self.memory,
                    start,
                    writable,
                    file=ref,
                    file_offset=file_offset,
                    shared=True,
                    fault_safe=True,
                ),
                lambda: place(self.addr + start, n, prot, os_impl.MAP_SHARED, fd, file_offset),
                release=ref.close,
            )

    def mmap(
        self, start: int, n: int, prot: int, flags: int, fd: int | None, file_offset: int
    ) -> None:
        """Pass ``prot`` and ``flags`` through to ``mmap`` (``MAP_FIXED`` forced), for a
        file (``fd``) or, with ``fd=None``, anonymous memory; ``prot``, ``flags`` and
        ``file_offset`` checked by :func:`check_mmap_bits` and :func:`check_file_offset`."""
        if prot & ~_PROTS:
            raise ValueError(f"prot {prot:#x} has bits other than PROT_READ/WRITE/EXEC")
        for flag, why in _REFUSED_FLAGS.items():
            if flag and flags & flag:
                raise ValueError(f"refused flag: {why}")
        if not flags & _MAP_TYPES:
            raise ValueError("flags need MAP_SHARED, MAP_PRIVATE or MAP_SHARED_VALIDATE")
        if flags & os_impl.MAP_HUGETLB:
            size = _huge_page_size(flags)
            _check_aligned(start, "offset (MAP_HUGETLB)", size)
            _check_aligned(n, "length (MAP_HUGETLB)", size)
            if (self.addr + start) % size:  # (the base is aligned to 2 MiB at most)
                raise ValueError(
                    f"offset {start} (MAP_HUGETLB) is at address {self.addr + start:#x}, "
                    f"not a multiple of the huge page size {size}: the map's base "
                    f"{self.addr:#x} is not aligned to it"
                )
        if fd is None:
            flags |= os_impl.MAP_ANONYMOUS
            fd, file_offset = -1, 0
        elif flags & os_impl.MAP_ANONYMOUS:
            raise ValueError("MAP_ANONYMOUS with a file: use mmap_anonymous()")
        else:
            check_mappable(fd, f"descriptor {fd}")  # the same files as everywhere
        identity = None
        if fd >= 0:
            # As FileCopier does (copies between the piece and another map of the file),
            # before the piece exists: a signal between the two then leaves a
            # registration without its piece (a copy more), not the other way round.
            identity = os_impl.file_identity(fd)
            register_window(self.memory, identity)
        writable = bool(prot & os_impl.PROT_WRITE)
        kind = KernelCopier if prot & os_impl.PROT_READ else UnreadableCopier
        # (Counted as a mapping of the file until its piece says so: see map_file.)
        with nullcontext() if identity is None else mapping_file(identity):
            self._replace(
                start,
                n,
                lambda: kind(self.memory, start, writable, "mmap", identity),
                lambda: place(self.addr + start, n, prot, flags, fd, file_offset),
            )

    def unmap(self, start: int, n: int) -> None:
        """Turn the range back into a hole: the bytes are gone."""
        self._replace(
            start,
            n,
            lambda: HoleCopier(self.memory, start, False, "hole"),
            lambda: clear(self.addr + start, n),
        )

    def _mapped_spans(self, offset: int, length: int) -> Iterator[tuple[Copier, int, int]]:
        for copier, at, count, _ in self._spans(offset, length):
            if not isinstance(copier, HoleCopier):
                yield copier, at, count

    # -- sparse_mmap's accessors ----------------------------------------------------

    def start_fill(
        self, offset: object, value: object, length: object
    ) -> Callable[[], None] | None:
        """Write ``length`` bytes of ``value`` at ``offset``; like ``start_write``."""
        byte = as_int(value, "value")
        if not 0 <= byte <= 255:
            raise ValueError(f"value {byte} is not a byte (0 to 255)")
        start, n = self.check_range(offset, length)
        if n <= INLINE_COPY_LIMIT and self.try_write(start, memoryview(bytes([byte]) * n)):
            return None
        return partial(self._fill_blocking, start, byte, n)

    def _fill_blocking(self, start: int, byte: int, n: int) -> None:
        chunk = memoryview(bytes([byte]) * min(n, FILL_CHUNK))
        done = 0
        while done < n:
            step = min(len(chunk), n - done)
            self.write_blocking(start + done, chunk[:step])
            done += step

    @staticmethod
    def plain_size(fmt: object) -> tuple[struct.Struct, int]:
        """The ``struct`` format of a plain value, and its size (:meth:`plain_value`
        checks that it is one value, once the bytes are read: counting the values
        beforehand would build them from a buffer of that size, however large).

        :raises TypeError: if ``fmt`` is not a str
        :raises ValueError: if it is not a struct format, or one of 0 bytes
        """
        if not isinstance(fmt, str):
            raise TypeError(f"fmt must be a struct format string, not {type(fmt).__name__}")
        try:
            layout = struct.Struct(fmt)
        except (struct.error, UnicodeEncodeError) as exc:  # ("é": struct wants ASCII)
            raise ValueError(f"bad struct format {fmt!r}: {exc}") from None
        if not layout.size:  # (CPython's own unpack of "0p" raises SystemError)
            raise ValueError(f"struct format {fmt!r} is 0 bytes long: there is no value to read")
        return layout, layout.size

    @staticmethod
    def plain_value(layout: struct.Struct, data: bytes) -> Any:
        """The one value ``layout`` describes in ``data``.

        :raises ValueError: if the format describes more (or fewer) values than one
        """
        try:
            values = layout.unpack(data)
        except SystemError:  # CPython's own unpack of a "0p" field ("q0p")
            raise ValueError(f"struct cannot unpack {layout.format!r} (a 0p field)") from None
        if len(values) != 1:
            raise ValueError(f"format {layout.format!r} describes {len(values)} values, not one")
        return values[0]

    def check_borrowable(self, start: int, n: int, writable: bool) -> None:
        """A borrow must only cover pieces a direct access cannot fault in: memory, or
        file windows inside their file (checked now: a later truncation by another
        process is not protected, as for any view)."""
        if not n:
            return  # a zero-length borrow is a no-op anywhere, as a zero-length copy is
        for copier, at, count, _ in self._spans(start, n):
            if isinstance(copier, HoleCopier):
                why = "it covers a hole"
            elif writable and not copier.writable:
                why = "it covers a read-only piece"
            elif isinstance(copier, FileCopier) and not self._within_file(copier, at, count):
                why = "it covers pages past the end of a mapped file"
            elif not isinstance(copier, (MemoryCopier, FileCopier)):
                why = "it covers a pass-through mapping, which a view could fault on"
            else:
                continue
            raise MappingFaultError(
                copier.addr + at - self.addr,
                copier.addr + at,
                f"a {'writable ' if writable else ''}borrow of offset={start}, length={n} is "
                f"refused: {why}",
            )

    def describe(self) -> str:
        if self.closed:
            return "closed"
        mapped = sum(size for _, size, copier in self._pieces if copier.kind != "hole")
        return f"len={self.length} addr={self.addr:#x} mapped={mapped} pieces={len(self._pieces)}"
