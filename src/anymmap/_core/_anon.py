"""Private anonymous memory (seed 000, ``AnonymousMmap``)."""

from __future__ import annotations

from .._sys import os_impl, signals_held
from ._copier import MemoryCopier, page_ceil
from ._lifetime import Memory
from ._map import MapCore
from ._placement import map_placed, remap_placed

_RW = os_impl.PROT_READ | os_impl.PROT_WRITE


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
        super().__init__(writable=True)
        flags = os_impl.MAP_PRIVATE | os_impl.MAP_ANONYMOUS
        if populate:
            flags |= os_impl.MAP_POPULATE
        if no_reserve:
            flags |= os_impl.MAP_NORESERVE
        map_len = page_ceil(length)
        self._fixed = strict
        with signals_held():  # mapped means owned: a Ctrl-C in between would leak it
            addr = map_placed(map_len, _RW, flags, -1, 0, hint, strict)
            self._install(addr, map_len, length)

    def _install(self, addr: int, map_len: int, length: int) -> None:
        """Adopt the mapping ``[addr, addr + map_len)``, of which the map is the first
        ``length`` bytes."""
        self.map_len = map_len
        self.addr = addr
        self.length = length
        self.memory = Memory(addr, length, self._fork_guard, unmap=(addr, map_len))
        self._set_pieces(((0, length, MemoryCopier(self.memory, 0, True, "anonymous")),))

    def _unmap(self) -> None:
        os_impl.munmap(self.addr, self.map_len)

    def resize(self, length: int) -> None:
        """Grow or shrink with ``mremap``; the contents up to the smaller length stay, the
        rest reads as zeros.  The address may change, except for a ``strict`` map, which
        must grow in place (``HintNotHonoredError`` if the range after it is taken)."""
        # (Signals held: a Ctrl-C right after mremap must not lose the new address.)
        with self.exclusive(), signals_held():
            self.memory.retire()
            old_addr, old_map_len = self.addr, self.map_len
            new_map_len = page_ceil(length)
            try:
                addr = remap_placed(old_addr, old_map_len, new_map_len, self._fixed)
            except BaseException:
                self._install(old_addr, old_map_len, self.length)
                raise
            if length < new_map_len:
                # The slack after the new end is ours; zero it so that a later growth
                # reads zeros there, as for fresh pages.
                os_impl.memset(addr + length, 0, new_map_len - length)
            self._install(addr, new_map_len, length)
