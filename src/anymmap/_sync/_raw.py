from __future__ import annotations

import sys

from .._core._file import FileCore, Prefill, create_file_map
from .._core._files import FileArg, Mode, PathArg
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
        file: FileArg,
        *,
        offset: int = 0,
        length: int | None = None,
        mode: Mode = "rw",
        fault_safe: bool = True,
        prefill: Prefill = "allocate",
    ) -> Self:
        """Map ``file``; see :meth:`anymmap.MmapRaw.map_raw`."""
        return cls._create(
            FileCore(
                file,
                offset=offset,
                length=length,
                mode=mode,
                fault_safe=fault_safe,
                prefill=prefill,
            )
        )

    @classmethod
    def create(
        cls,
        path: PathArg,
        size: int,
        *,
        exist_ok: bool = False,
        prefill: Prefill = "allocate",
        mode: int = 0o644,
        fault_safe: bool = True,
    ) -> Self:
        """Create and map a file; see :meth:`anymmap.MmapRaw.create`."""
        return cls._create(
            create_file_map(
                path, size, exist_ok=exist_ok, prefill=prefill, mode=mode, fault_safe=fault_safe
            )
        )

    @classmethod
    def open_or_create(
        cls,
        path: PathArg,
        size: int,
        *,
        prefill: Prefill = "allocate",
        mode: int = 0o644,
        fault_safe: bool = True,
    ) -> Self:
        """Map ``path``, creating it if needed; see :meth:`anymmap.MmapRaw.open_or_create`."""
        return cls.create(
            path, size, exist_ok=True, prefill=prefill, mode=mode, fault_safe=fault_safe
        )
