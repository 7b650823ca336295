from __future__ import annotations

from .._core._anon import AnonCore
from .._core._file import Prefill
from .._core._files import FileArg, Mode
from .._core._options import OptionsBase
from .._core._sparse import SparseCore
from ._anon import AnonymousMmap
from ._raw import MmapRaw
from ._sparse import SparseMapping


class MmapOptions(OptionsBase):
    """
    The blocking twin of :class:`anymmap.MmapOptions`: its ``map_*`` methods return the
    maps of :mod:`anymmap.sync`.

    .. versionadded:: 0.1
    """

    __slots__ = ()

    def map_anon(self) -> AnonymousMmap:
        """Create an :class:`anymmap.sync.AnonymousMmap` with these options."""
        return AnonymousMmap._create(AnonCore(**self._anon_kwargs()))

    def map_raw(
        self,
        file: FileArg,
        *,
        offset: int = 0,
        mode: Mode = "rw",
        fault_safe: bool = True,
        prefill: Prefill = "allocate",
    ) -> MmapRaw:
        """Map ``file`` with these options; see :meth:`anymmap.MmapOptions.map_raw`."""
        return MmapRaw._create(self._raw_core(file, offset, mode, fault_safe, prefill)())

    def map_sparse(self) -> SparseMapping:
        """Reserve an :class:`anymmap.sync.SparseMapping`; see
        :meth:`anymmap.MmapOptions.map_sparse`."""
        return SparseMapping._create(SparseCore(**self._sparse_kwargs()))
