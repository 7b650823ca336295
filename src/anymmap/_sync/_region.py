from __future__ import annotations

import sys

from .._core._checks import check_size
from .._core._files import FdArg, PathArg
from .._core._handle import RegionInfo
from .._core._region import (
    FileCleanup,
    RegionCore,
    attach_region,
    attach_region_fd,
    create_region,
)
from ._base import DirectAccessSyncMap, FlushingSyncMap

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self


class MmapRegion(FlushingSyncMap[RegionCore], DirectAccessSyncMap[RegionCore], RegionInfo):
    """
    The blocking twin of :class:`anymmap.MmapRegion`: same methods, no ``await``.

    .. versionadded:: 0.1
    """

    __slots__ = ()

    _constructors = (
        "'anymmap.sync.MmapRegion.create(path, size)', 'anymmap.sync.MmapRegion.attach(path)' "
        "or 'anymmap.sync.MmapRegion.attach_fd(fd)'"
    )

    @classmethod
    def create(
        cls,
        path: PathArg,
        size: int,
        cleanup: FileCleanup = FileCleanup.MANUAL,
        *,
        max_size: int | None = None,
        replace: bool = False,
    ) -> Self:
        """Create and map a region file; see :meth:`anymmap.MmapRegion.create`."""
        return cls._create(create_region(path, size, cleanup, max_size=max_size, replace=replace))

    @classmethod
    def attach(
        cls, path: PathArg, *, max_size: int | None = None, trust_others: bool = False
    ) -> Self:
        """Map an existing region file; see :meth:`anymmap.MmapRegion.attach`."""
        return cls._create(attach_region(path, max_size=max_size, trust_others=trust_others))

    @classmethod
    def attach_fd(cls, fd: FdArg, *, max_size: int | None = None) -> Self:
        """Map the region file open as ``fd``; see :meth:`anymmap.MmapRegion.attach_fd`."""
        return cls._create(attach_region_fd(fd, max_size=max_size))

    def resize(self, new_size: int) -> None:
        """Grow the region; see :meth:`anymmap.MmapRegion.resize`."""
        self._change_mapping(self._open_core().resize, check_size(new_size))

    def check_and_remap(self) -> bool:
        """Follow growth by another process; see :meth:`anymmap.MmapRegion.check_and_remap`."""
        core = self._open_core()
        return core.grew() and core.check_and_remap()
