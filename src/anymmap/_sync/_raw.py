from __future__ import annotations

import sys

from .._core._file import FileCore
from .._core._files import Mode
from .._core._handle import FileMapInfo
from ._base import FlushingSyncMap, ResizableSyncMap

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self


class MmapRaw(FlushingSyncMap[FileCore], ResizableSyncMap[FileCore], FileMapInfo):
    """
    The blocking twin of :class:`anymmap.MmapRaw`: same methods, no ``await``.  Copies are
    fault-safe in the same way; all work runs in the calling thread.

    .. versionadded:: 0.1
    """

    __slots__ = ()

    _constructors = (
        "'anymmap.sync.MmapRaw.map_raw(file, ...)' or "
        "'anymmap.sync.MmapOptions(...).map_raw(file)'"
    )

    @classmethod
    def map_raw(
        cls,
        file: object,
        *,
        offset: int = 0,
        length: int | None = None,
        mode: Mode = "rw",
        fault_safe: bool = True,
    ) -> Self:
        """Map ``file``; see :meth:`anymmap.MmapRaw.map_raw`."""
        return cls._create(
            FileCore(file, offset=offset, length=length, mode=mode, fault_safe=fault_safe)
        )
