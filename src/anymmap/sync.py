"""Blocking twins of anymmap's async maps: the same method names, without ``await``.

Each is thread-safe (many reading threads or one writer at a time per map) and a context
manager (``with anymmap.sync.AnonymousMmap.new(4096) as m:``).  They share their core with
the async types, so both behave the same; the async ones only add *where* work runs.

Everything else the twins use is shared with the async API and imported from
:mod:`anymmap`: the exceptions, :class:`~anymmap.Advice`, :class:`~anymmap.FileCleanup`,
:class:`~anymmap.Region`, :class:`~anymmap.SparsePiece`, :class:`~anymmap.RWLock`'s
statistics and the type aliases (:data:`~anymmap.BufferLike`, :data:`~anymmap.FileArg`, ...).
"""

from __future__ import annotations

from ._sync._anon import AnonymousMmap as AnonymousMmap
from ._sync._options import MmapOptions as MmapOptions
from ._sync._raw import MmapRaw as MmapRaw
from ._sync._region import MmapRegion as MmapRegion
from ._sync._sparse import SparseMapping as SparseMapping

__all__ = ["AnonymousMmap", "MmapOptions", "MmapRaw", "MmapRegion", "SparseMapping"]

for __value in list(locals().values()):
    if getattr(__value, "__module__", "").startswith("anymmap._"):
        __value.__module__ = __name__

del __value
