"""Reserved address space: a range nothing else can take, where pieces are placed.

A reservation is an anonymous ``PROT_NONE`` mapping with ``MAP_NORESERVE``: it costs no
memory and no swap, any access to it faults, and no other mapping of the process can land
inside it.  Pieces are then *placed* into it with ``MAP_FIXED``, which replaces exactly
the pages it covers and nothing outside the reservation, and *cleared* back to reserved.
Sparse maps are built this way, and shared regions, which grow inside their reservation
without their base address ever moving.
"""

from __future__ import annotations

from .._sys import os_impl
from ._copier import PAGE_SIZE
from ._placement import map_placed

#: The transparent huge page size on x86-64 and arm64 (4 KiB pages).
HUGE_PAGE = 2 << 20

_RESERVED = os_impl.MAP_PRIVATE | os_impl.MAP_ANONYMOUS | os_impl.MAP_NORESERVE


def reservation_alignment(length: int) -> int:
    """The alignment of a reservation of ``length`` bytes: the largest page size not above
    ``length`` (2 MiB, so that transparent huge pages can back aligned pieces, else the
    page size)."""
    return HUGE_PAGE if length >= HUGE_PAGE else PAGE_SIZE


def reserve(length: int, *, hint: int | None = None, strict: bool = False) -> int:
    """Reserve ``length`` bytes (a multiple of the page size) and return the address.

    Without a hint the address is aligned to :func:`reservation_alignment`; with one, the
    hint is where it goes (exactly, under ``strict``; see ``map_placed``).
    """
    align = reservation_alignment(length)
    if hint is not None or align <= PAGE_SIZE:
        return map_placed(length, os_impl.PROT_NONE, _RESERVED, -1, 0, hint, strict)
    # Reserve more than asked, then give back the unaligned head and the surplus tail.
    total = length + align - PAGE_SIZE
    addr = os_impl.mmap(0, total, os_impl.PROT_NONE, _RESERVED)
    start = -(-addr // align) * align
    if start > addr:
        os_impl.munmap(addr, start - addr)
    surplus = addr + total - (start + length)
    if surplus:
        os_impl.munmap(start + length, surplus)
    return start


def place(addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> None:
    """Map ``[addr, addr + length)`` (inside a reservation the caller owns) with
    ``MAP_FIXED``, replacing whatever was there."""
    # SAFETY: the range lies inside a reservation of ours: MAP_FIXED replaces only our
    # own pages, never another mapping of the process.
    os_impl.mmap(addr, length, prot, flags | os_impl.MAP_FIXED, fd, offset)


def clear(addr: int, length: int) -> None:
    """Give ``[addr, addr + length)`` back to the reservation: its pages and their bytes
    are gone, and any access faults."""
    place(addr, length, os_impl.PROT_NONE, _RESERVED)
