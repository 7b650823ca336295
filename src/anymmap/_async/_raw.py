from __future__ import annotations

import sys
from functools import partial

from .._backend import run_sync
from .._core._file import FileCore, Prefill, create_file_map, undo_create
from .._core._files import FileArg, Mode, PathArg
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
        file: FileArg,
        *,
        offset: int = 0,
        length: int | None = None,
        mode: Mode = "rw",
        fault_safe: bool = True,
        prefill: Prefill = "allocate",
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
        :param prefill: how :meth:`resize` gives the file new blocks: ``"allocate"``
            (``posix_fallocate``) or ``"zeros"`` (written); see :meth:`create`
        :raises InvalidSizeError: if the file is empty
        :raises OutOfBoundsError: if ``offset`` is at or past the end of the file, or
            ``offset + length`` is
        :raises OSError: if the file cannot be opened or mapped
        """
        core = await run_sync(
            partial(
                FileCore,
                file,
                offset=offset,
                length=length,
                mode=mode,
                fault_safe=fault_safe,
                prefill=prefill,
            ),
            undo=FileCore.close,
            stoppable=True,  # (a zero prefill ends early if cancelled)
        )
        return cls._create(core)

    @classmethod
    async def create(
        cls,
        path: PathArg,
        size: int,
        *,
        exist_ok: bool = False,
        prefill: Prefill = "allocate",
        mode: int = 0o644,
        fault_safe: bool = True,
    ) -> Self:
        """Create the file ``path`` of ``size`` bytes and map all of it ``"rw"``, in a
        worker thread (mmap-io's ``create_rw``).

        The file is made with permissions ``mode`` minus the umask, without a name
        (``O_TMPFILE``; where the file system cannot, with ``O_CREAT | O_EXCL``), and is
        named only once it is whole and mapped (``FileExistsError`` if the path was
        taken meanwhile); its blocks are allocated before it is mapped, so a full disk
        fails here (``OSError(ENOSPC)``, and no file is left) instead of a later write
        dying of SIGBUS; then the file and its directory are synced, so the new name
        survives a crash.  ``prefill`` says how the blocks are made, here and by later
        growth: ``"allocate"`` (``posix_fallocate``, the default: instant) or ``"zeros"``
        (written now: slower to create, and on some disks the first commit into each
        block is faster; ``benchmarks/bench_commit.py`` measures both).

        :param exist_ok: map an existing file instead of refusing it (it is grown to
            ``size`` if shorter, never shrunk; the whole file is mapped).  A call that
            fails then keeps a file it made: a caller racing on the path may have it.
        :raises FileExistsError: if ``path`` exists and not ``exist_ok``
        :raises InvalidSizeError: if ``size`` is 0 or above 128 TiB
        """
        core = await run_sync(
            partial(
                create_file_map,
                path,
                size,
                exist_ok=exist_ok,
                prefill=prefill,
                mode=mode,
                fault_safe=fault_safe,
            ),
            undo=undo_create,
            stoppable=True,  # (a zero prefill ends early if cancelled)
        )
        return cls._create(core)

    @classmethod
    async def open_or_create(
        cls,
        path: PathArg,
        size: int,
        *,
        prefill: Prefill = "allocate",
        mode: int = 0o644,
        fault_safe: bool = True,
    ) -> Self:
        """Map ``path``, creating it with ``size`` bytes if it does not exist (mmap-io's
        ``open_or_create``): :meth:`create` with ``exist_ok=True``."""
        return await cls.create(
            path, size, exist_ok=True, prefill=prefill, mode=mode, fault_safe=fault_safe
        )
