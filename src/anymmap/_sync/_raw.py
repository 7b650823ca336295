from __future__ import annotations

import sys

from .._core._file import FileCore
from .._core._files import Mode
from .._core._handle import FileMapInfo
from ._base import ResizableSyncMap

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self


class MmapRaw(ResizableSyncMap[FileCore], FileMapInfo):
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

    def flush(self) -> None:
        """Write the dirty pages to the file; durable when it returns (``msync(MS_SYNC)``)."""
        self._open_core().flush(0, None, True)

    def flush_range(self, offset: int, length: int) -> None:
        """Like :meth:`flush`, for ``[offset, offset + length)`` (need not be aligned)."""
        core = self._open_core()
        core.flush(*core.check_range(offset, length), True)

    def flush_async(self) -> None:
        """Start writeback of the dirty pages and return; not durable."""
        self._open_core().flush(0, None, False)

    def flush_async_range(self, offset: int, length: int) -> None:
        """Start writeback of ``[offset, offset + length)`` and return; not durable."""
        core = self._open_core()
        core.flush(*core.check_range(offset, length), False)
