"""Private anonymous memory (seed 000, ``AnonymousMmap``)."""

from __future__ import annotations

import ctypes
import errno

from .._errors import ClosedMapError, HintNotHonoredError, InvalidHintError
from .._sys import os_impl
from ._map import MapCore, page_ceil

_RW = os_impl.PROT_READ | os_impl.PROT_WRITE
USER_ADDRESS_SPACE = os_impl.USER_ADDRESS_SPACE


def map_placed(
    length: int, prot: int, flags: int, fd: int, offset: int, hint: int | None, strict: bool
) -> int:
    """mmap, honouring an address hint; under ``strict`` the hint must be met exactly.

    ``strict`` uses ``MAP_FIXED_NOREPLACE``, never ``MAP_FIXED`` (which would replace
    whatever is mapped there).  A kernel that ignores the flag treats the address as a plain
    hint, so the result is checked too.

    :raises HintNotHonoredError: under ``strict``, if the range is taken
    """
    if hint is None:
        if strict:
            raise InvalidHintError("strict placement needs a hint address (with_hint)")
        return os_impl.mmap(0, length, prot, flags, fd, offset)

    if strict:
        flags |= os_impl.MAP_FIXED_NOREPLACE
    try:
        addr = os_impl.mmap(hint, length, prot, flags, fd, offset)
    except OSError as exc:
        if strict and exc.errno == errno.EEXIST:
            raise HintNotHonoredError(hint) from None
        if strict and exc.errno == errno.ENOMEM and hint + length > USER_ADDRESS_SPACE:
            raise InvalidHintError(
                f"cannot map {length} bytes at hint {hint:#x}: the range passes the end of "
                f"the user address space ({USER_ADDRESS_SPACE:#x})"
            ) from None
        raise
    if strict and addr != hint:
        os_impl.munmap(addr, length)
        raise HintNotHonoredError(hint, addr)
    return addr


class AnonCore(MapCore):
    kind = "anonymous map"
    anonymous = True

    def __init__(
        self,
        length: int,
        *,
        hint: int | None = None,
        strict: bool = False,
        populate: bool = False,
        no_reserve: bool = False,
    ) -> None:
        flags = os_impl.MAP_PRIVATE | os_impl.MAP_ANONYMOUS
        if populate:
            flags |= os_impl.MAP_POPULATE
        if no_reserve:
            flags |= os_impl.MAP_NORESERVE
        map_len = page_ceil(length)
        addr = map_placed(map_len, _RW, flags, -1, 0, hint, strict)
        self._fixed = strict
        super().__init__(addr, map_len, 0, length, writable=True)

    def resize(self, length: int) -> None:
        """Grow or shrink with ``mremap``; the contents up to the smaller length stay, the
        rest reads as zeros.  The address may change, except for a ``strict`` map, which
        must grow in place (``OSError(ENOMEM)`` if it cannot)."""
        with self._exclusive() as still_open:
            if not still_open:
                raise ClosedMapError(self.kind)
            self._retire()
            old_addr, old_map_len = self.map_addr, self.map_len
            new_map_len = page_ceil(length)
            try:
                addr = os_impl.remap(old_addr, old_map_len, new_map_len, not self._fixed)
            except BaseException:
                self._install(old_addr, old_map_len, 0, self.length)
                raise
            if length < new_map_len:
                # SAFETY: the slack after the new end is ours; zero it so that a later
                # growth reads zeros there, as for fresh pages.
                ctypes.memset(addr + length, 0, new_map_len - length)
            self._install(addr, new_map_len, 0, length)
