from __future__ import annotations

import sys
from functools import partial

from .._backend import checkpoint, run_sync
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
from ._base import DirectAccessAsyncMap, FlushingAsyncMap

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self


class MmapRegion(FlushingAsyncMap[RegionCore], DirectAccessAsyncMap[RegionCore], RegionInfo):
    """
    A file shared between processes that grows without its base address moving (after the Rust
    crate ``shm-primitives``)::

        # the host
        async with await anymmap.MmapRegion.create("/dev/shm/jobs", 1 << 20) as region:
            await region.update_region(0, b"hello")
            await region.resize(2 << 20)          # guests follow with check_and_remap()

        # a guest, in another process
        async with await anymmap.MmapRegion.attach("/dev/shm/jobs") as region:
            if await region.check_and_remap():    # the host grew it
                ...

    Each region reserves ``max_size`` bytes of address space when it is created or
    attached (default: 64 GiB, or four times the file if that is more; address space
    costs nothing until mapped) and maps the file at the start of it; growth maps the new
    pages right after, so ``as_ptr()``, views, NumPy arrays and :class:`Region` values
    taken before a growth stay valid.  Growing past ``max_size`` raises
    :class:`~anymmap.InvalidSizeError`.

    A path on ``/dev/shm`` keeps the region in memory only (the documented choice for
    memory-only regions); elsewhere it is a file on that file system.  Either way its
    blocks are allocated when it is created or grown, so on ``/dev/shm`` its whole size
    is taken from memory at once (and a region too big for it fails then, not later).

    ``max_size`` belongs to each handle, not to the file: a peer that attaches reserves
    its own (default as above, from the size it finds), and learns that the host grew
    past it from :class:`~anymmap.InvalidSizeError` in :meth:`check_and_remap`; give
    every side the same ``max_size`` when the growth is known.  Regions are always
    mapped for reading and writing (there is no read-only attach).
    :meth:`check_and_remap` follows growth only: after a peer cut the file, it returns
    False and copies past the cut raise :class:`~anymmap.MappingFaultError`.  The copies,
    borrows, flush family and fault safety are those of :class:`~anymmap.MmapRaw`: a peer
    that truncates the file makes copies raise :class:`~anymmap.MappingFaultError`.

    .. versionadded:: 0.1
    """

    __slots__ = ()

    _constructors = (
        "'await anymmap.MmapRegion.create(path, size)', "
        "'await anymmap.MmapRegion.attach(path)' or 'await anymmap.MmapRegion.attach_fd(fd)'"
    )

    @classmethod
    async def create(
        cls,
        path: PathArg,
        size: int,
        cleanup: FileCleanup = FileCleanup.MANUAL,
        *,
        max_size: int | None = None,
        replace: bool = False,
    ) -> Self:
        """Create the file ``path`` and map it, in a worker thread.

        The file is made with ``O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC`` and mode
        0600 whatever the umask, and its blocks are allocated, so a full disk fails here
        (``OSError(ENOSPC)``) and not later as SIGBUS.  With ``FileCleanup.MANUAL`` this
        process owns the file and deletes it when it closes the region (see
        :meth:`release_ownership`); with ``FileCleanup.AUTO`` the path is unlinked at once.

        :raises FileExistsError: if ``path`` exists, also as a symbolic link, unless
            ``replace`` (which builds and maps the file beside it, then renames it over:
            a symbolic link there is replaced, never followed, and a failure leaves what
            was there)
        :raises InvalidSizeError: if ``size`` is 0 or above ``max_size``
        :raises RuntimeError: in a thread still running once the interpreter's exit has
            deleted the files regions owned (a daemon thread)
        """
        core = await run_sync(
            partial(create_region, path, size, cleanup, max_size=max_size, replace=replace),
            undo=RegionCore.close,
        )
        return cls._create(core)

    @classmethod
    async def attach(
        cls, path: PathArg, *, max_size: int | None = None, trust_others: bool = False
    ) -> Self:
        """Map the existing region file ``path`` at its current size, in a worker thread.

        Refused: a symbolic link (``OSError(ELOOP)``), anything but a regular file
        (:class:`~anymmap.UnmappableFileError`; a directory: ``IsADirectoryError``), an
        empty file (:class:`~anymmap.InvalidSizeError`), and, unless ``trust_others``, a
        file owned by another user or writable by its group or others
        (``PermissionError``).  An attached region never deletes the file.
        """
        core = await run_sync(
            partial(attach_region, path, max_size=max_size, trust_others=trust_others),
            undo=RegionCore.close,
            stoppable=True,  # (a wait for another map's growth of the file ends if cancelled)
        )
        return cls._create(core)

    @classmethod
    async def attach_fd(cls, fd: FdArg, *, max_size: int | None = None) -> Self:
        """Map the region file open as ``fd`` (a descriptor or an object with
        ``fileno()``, for example received over a UNIX socket with ``socket.recv_fds``);
        the region keeps its own duplicate."""
        core = await run_sync(
            partial(attach_region_fd, fd, max_size=max_size), undo=RegionCore.close
        )
        return cls._create(core)

    async def resize(self, new_size: int) -> None:
        """Grow the region (and the file) to ``new_size`` bytes, in a worker thread, under
        the write lock; the new blocks are allocated first.  The same size is a no-op.

        :raises ValueError: to shrink (a shared region only grows)
        :raises InvalidSizeError: past ``max_size``
        :raises OSError: ``ENOSPC`` if the disk is full (nothing changes)
        """
        size = check_size(new_size)
        # (Stoppable: a wait for another map's growth of the file ends if cancelled.)
        await self._change_mapping("resize", self._open_core().resize, size, stoppable=True)

    async def check_and_remap(self) -> bool:
        """For peers: if the file grew, map what it gained and return True; else False.

        Cheap when nothing changed (one ``fstat``, on this thread); the mapping runs in a
        worker thread.  It takes no lock, so a borrow of the old part may stay alive
        meanwhile: growth only adds pages after the end.

        :raises InvalidSizeError: if the file grew past this region's ``max_size``
        """
        core = self._open_core()
        if not core.grew():
            await checkpoint()
            return False
        # (Under a cancelled scope the True is returned, not lost; a native cancel raises.)
        return await run_sync(core.check_and_remap, undo=_keep, stoppable=True)


def _keep(grew: bool) -> None:
    """Nothing to take back: the map covers what the file gained either way."""
