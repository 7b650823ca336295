from __future__ import annotations

from .._backend import checkpoint, run_sync
from .._core._anon import AnonCore
from .._core._file import FileCore, Prefill
from .._core._files import FileArg, Mode
from .._core._options import OptionsBase
from .._core._sparse import SparseCore
from ._anon import AnonymousMmap
from ._raw import MmapRaw
from ._sparse import SparseMapping


class MmapOptions(OptionsBase):
    """
    Options for a new map, as an immutable value (after the Rust
    ``sys_alloc::MmapOptions``)::

        opts = anymmap.MmapOptions().len(1 << 20).populate(True)
        async with await opts.map_anon() as m:
            ...

    Keyword construction works too: ``MmapOptions(len=1 << 20, populate=True)``.  Every
    setter returns a new value; ``repr`` shows all fields.

    .. versionadded:: 0.1
    """

    __slots__ = ()

    async def map_anon(self) -> AnonymousMmap:
        """Create an :class:`~anymmap.AnonymousMmap` with these options.

        With ``populate`` the pages are faulted in by a worker thread.

        :raises InvalidSizeError: if no length was set
        :raises InvalidHintError: if ``strict`` is set without a hint
        :raises HintNotHonoredError: if ``strict`` and the hinted range is taken
        """
        kwargs = self._anon_kwargs()
        if kwargs["populate"]:
            core = await run_sync(lambda: AnonCore(**kwargs), undo=AnonCore.close)
        else:
            await checkpoint()
            core = AnonCore(**kwargs)
        return AnonymousMmap._create(core)

    async def map_raw(
        self,
        file: FileArg,
        *,
        offset: int = 0,
        mode: Mode = "rw",
        fault_safe: bool = True,
        prefill: Prefill = "allocate",
    ) -> MmapRaw:
        """Map ``file`` with these options (``len`` unset: the rest of the file), in a
        worker thread; see :meth:`anymmap.MmapRaw.map_raw`."""
        core = await run_sync(
            self._raw_core(file, offset, mode, fault_safe, prefill),
            undo=FileCore.close,
            stoppable=True,  # (a zero prefill ends early if cancelled)
        )
        return MmapRaw._create(core)

    async def map_sparse(self) -> SparseMapping:
        """Reserve a :class:`~anymmap.SparseMapping` of ``len`` bytes at the hint (exactly,
        under ``strict``).  ``no_reserve`` is a no-op (a reservation never reserves swap);
        ``populate`` is refused with ``ValueError`` (nothing is mapped yet).

        :raises InvalidSizeError: if no length was set
        """
        kwargs = self._sparse_kwargs()
        await checkpoint()
        return SparseMapping._create(SparseCore(**kwargs))
