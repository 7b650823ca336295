from __future__ import annotations

import sys
from functools import partial

from .._backend import run_sync
from .._core._file import FileCore
from .._core._files import Mode
from .._core._handle import FileMapInfo
from ._base import FlushingAsyncMap, ResizableAsyncMap

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self


class MmapRaw(FlushingAsyncMap[FileCore], ResizableAsyncMap[FileCore], FileMapInfo):
    """
    A file mapped into memory, with an awaitable flush that never stalls the event loop.

    ::

        async with await anymmap.MmapRaw.map_raw("data.bin") as m:
            await m.update_region(0, b"record")
            await m.flush_range(0, 6)  # durable when this returns

    Copies (``read_into``, ``read``, ``update_region`` and their ``*_nowait`` forms) are
    fault-safe: if another process truncates the file under the map, they raise
    :class:`~anymmap.MappingFaultError` (``errno.EFAULT``) instead of killing the process
    with SIGBUS.  On the event loop thread they only copy pages already in memory; pages
    that would have to be read from the disk are copied in a worker thread, and the
    ``*_nowait`` forms raise :exc:`anyio.WouldBlock` for them.  Borrowed views
    (``as_slice``) touch the memory directly and have no such protection.

    :meth:`aclose` does not flush: call :meth:`flush` first when the data must be durable.

    .. versionadded:: 0.1
    """

    __slots__ = ()

    _constructors = (
        "'await anymmap.MmapRaw.map_raw(file, ...)' or "
        "'await anymmap.MmapOptions(...).map_raw(file)'"
    )

    @classmethod
    async def map_raw(
        cls,
        file: object,
        *,
        offset: int = 0,
        length: int | None = None,
        mode: Mode = "rw",
        fault_safe: bool = True,
    ) -> Self:
        """Map ``length`` bytes of ``file`` starting at ``offset``, in a worker thread.

        :param file: a path, an integer file descriptor, or an object with ``fileno()``
            (descriptors are duplicated: the map owns its own)
        :param offset: any byte offset into the file (aligned internally)
        :param length: bytes to map; default the rest of the file
        :param mode: ``"rw"`` (shared, writes reach the file), ``"r"`` (writes raise
            :class:`~anymmap.ReadOnlyError`) or ``"copy"`` (private copy-on-write: writes
            stay in this process and the file never changes)
        :param fault_safe: copy through the kernel so that a truncated file raises
            :class:`~anymmap.MappingFaultError`.  ``False`` makes 4 KiB writes about twice
            as fast and a truncated file fatal (SIGBUS); reads of ``"rw"`` and ``"r"``
            maps are fault-safe at no extra cost either way.
        :raises InvalidSizeError: if the file is empty
        :raises OutOfBoundsError: if ``offset`` is at or past the end of the file, or
            ``offset + length`` is
        :raises OSError: if the file cannot be opened or mapped
        """
        core = await run_sync(
            partial(FileCore, file, offset=offset, length=length, mode=mode, fault_safe=fault_safe)
        )
        return cls._create(core)
