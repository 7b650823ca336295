from __future__ import annotations

import sys

from .._backend import checkpoint
from .._core._anon import AnonCore
from .._core._checks import check_size
from ._base import ResizableAsyncMap

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self


class AnonymousMmap(ResizableAsyncMap[AnonCore]):
    """
    Private, zero-filled anonymous memory (``mmap(MAP_PRIVATE | MAP_ANONYMOUS)``).

    ::

        async with await anymmap.AnonymousMmap.new(4096) as m:
            await m.update_region(0, b"hello")
            assert await m.read(0, 5) == b"hello"

    Copies are bounds-checked and locked; ``as_slice`` / ``as_mut_slice`` borrow views
    under the map's :class:`~anymmap.RWLock`.  :class:`anymmap.MmapOptions` creates one
    with a hint address, populated, or without swap reservation.

    .. versionadded:: 0.1
    """

    __slots__ = ()

    _constructors = (
        "'await anymmap.AnonymousMmap.new(size)' or 'await anymmap.MmapOptions(...).map_anon()'"
    )

    @classmethod
    async def new(cls, size: int) -> Self:
        """Map ``size`` bytes of zero-filled memory (the kernel zeroes each page on first
        touch).

        :raises InvalidSizeError: if ``size`` is 0 or above 128 TiB
        :raises OSError: if the kernel refuses (``ENOMEM``)
        """
        length = check_size(size)
        await checkpoint()
        return cls._create(AnonCore(length))
