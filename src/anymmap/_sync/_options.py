from __future__ import annotations

from .._core._anon import AnonCore
from .._core._options import OptionsBase
from ._anon import AnonymousMmap


class MmapOptions(OptionsBase):
    """
    The blocking twin of :class:`anymmap.MmapOptions`: its ``map_*`` methods return the
    maps of :mod:`anymmap.sync`.

    .. versionadded:: 0.1
    """

    __slots__ = ()

    def map_anon(self) -> AnonymousMmap:
        """Create an :class:`anymmap.sync.AnonymousMmap` with these options."""
        return AnonymousMmap(AnonCore(**self._anon_kwargs()))
