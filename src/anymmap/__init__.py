"""anymmap: async-first memory maps for asyncio and trio.

The async types live here; :mod:`anymmap.sync` has a blocking twin of each, with the same
method names.

How the package is layered (each layer imports only from the ones below it; a test
checks)::

    anymmap, anymmap.sync      the public names (re-exports)
          |
    _async/   _sync/           the facades: where work runs (event loop thread or worker
          |       |            thread; the calling thread) and which lock guards it
    _backend, _rwlock          the event-loop layer: task identity, checkpoints, worker
          |                    calls that are never abandoned; the read-write lock
    _core/                     the sync core, no event loop: argument checks, pieces and
          |                    their copiers, lifetimes and borrows, one class per map type
    _sys/                      every system call, one module per OS behind one interface
          |
    _errors, _stopping         every exception; the stop points of long worker calls
"""

from __future__ import annotations

from ._advice import Advice as Advice
from ._async._anon import AnonymousMmap as AnonymousMmap
from ._async._options import MmapOptions as MmapOptions
from ._async._raw import MmapRaw as MmapRaw
from ._async._region import MmapRegion as MmapRegion
from ._async._sparse import SparseMapping as SparseMapping
from ._core._buffers import BufferLike as BufferLike
from ._core._file import Prefill as Prefill
from ._core._files import FdArg as FdArg
from ._core._files import FileArg as FileArg
from ._core._files import HasFileno as HasFileno
from ._core._files import Mode as Mode
from ._core._files import PathArg as PathArg
from ._core._map import INLINE_COPY_LIMIT as INLINE_COPY_LIMIT
from ._core._map import ProgressCallback as ProgressCallback
from ._core._region import FileCleanup as FileCleanup
from ._core._region import Region as Region
from ._core._sparse import SparsePiece as SparsePiece
from ._errors import AnymmapError as AnymmapError
from ._errors import BorrowError as BorrowError
from ._errors import ClosedMapError as ClosedMapError
from ._errors import HintNotHonoredError as HintNotHonoredError
from ._errors import InvalidHintError as InvalidHintError
from ._errors import InvalidSizeError as InvalidSizeError
from ._errors import MappingFaultError as MappingFaultError
from ._errors import OutOfBoundsError as OutOfBoundsError
from ._errors import ReadOnlyError as ReadOnlyError
from ._errors import UnmappableFileError as UnmappableFileError
from ._errors import UnsupportedError as UnsupportedError
from ._errors import WriteBackError as WriteBackError
from ._rwlock import RWLock as RWLock
from ._rwlock import RWLockStatistics as RWLockStatistics
from ._sys import os_impl as _os_impl

__version__ = "0.1.0.dev0"

#: The size of a memory page on this machine.
PAGE_SIZE: int = _os_impl.PAGE_SIZE

__all__ = [
    "INLINE_COPY_LIMIT",
    "PAGE_SIZE",
    "Advice",
    "AnonymousMmap",
    "AnymmapError",
    "BorrowError",
    "BufferLike",
    "ClosedMapError",
    "FdArg",
    "FileArg",
    "FileCleanup",
    "HasFileno",
    "HintNotHonoredError",
    "InvalidHintError",
    "InvalidSizeError",
    "MappingFaultError",
    "MmapOptions",
    "MmapRaw",
    "MmapRegion",
    "Mode",
    "OutOfBoundsError",
    "PathArg",
    "Prefill",
    "ProgressCallback",
    "RWLock",
    "RWLockStatistics",
    "ReadOnlyError",
    "Region",
    "SparseMapping",
    "SparsePiece",
    "UnmappableFileError",
    "UnsupportedError",
    "WriteBackError",
]

# Re-export the public names as if they were defined here, so that reprs and tracebacks
# say ``anymmap.RWLock`` (the anyio convention).
for __value in list(locals().values()):
    if getattr(__value, "__module__", "").startswith("anymmap._"):
        __value.__module__ = __name__

del __value
