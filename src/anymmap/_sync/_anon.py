from __future__ import annotations

import sys

from .._core._anon import AnonCore
from .._core._checks import check_size
from ._base import ResizableSyncMap

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self


class AnonymousMmap(ResizableSyncMap[AnonCore]):
    """
    The blocking twin of :class:`anymmap.AnonymousMmap`: same methods, no ``await``,
    ``with`` instead of ``async with``.  Safe to share between threads.

    .. versionadded:: 0.1
    """

    __slots__ = ()

    _constructors = (
        "'anymmap.sync.AnonymousMmap.new(size)' or 'anymmap.sync.MmapOptions(...).map_anon()'"
    )

    @classmethod
    def new(cls, size: int) -> Self:
        """Map ``size`` bytes of zero-filled memory.

        :raises InvalidSizeError: if ``size`` is 0 or above 128 TiB
        """
        return cls._create(AnonCore(check_size(size)))
