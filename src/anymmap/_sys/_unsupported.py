"""The syscall interface on platforms anymmap does not support yet.

Same names as ``_linux``; importing works (so ``anymmap`` imports everywhere), and every
call raises :class:`~anymmap.UnsupportedError`.  Flags that only tune behaviour are 0.
"""

from __future__ import annotations

import mmap as _stdlib_mmap
import sys
from typing import NoReturn

from .._errors import UnsupportedError

PAGE_SIZE: int = _stdlib_mmap.PAGESIZE
USER_ADDRESS_SPACE = 1 << 47
SUPPORTED = False

PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0
MAP_NORESERVE = 0
MAP_POPULATE = 0
MAP_FIXED_NOREPLACE = 0
MS_ASYNC = 1
MS_INVALIDATE = 2
MS_SYNC = 4
MREMAP_MAYMOVE = 0
MADV_NORMAL = 0
MADV_RANDOM = 1
MADV_SEQUENTIAL = 2
MADV_WILLNEED = 3
MADV_DONTNEED = 4
MADV_FREE = -1
MADV_DONTFORK = -1
MADV_DOFORK = -1
MADV_HUGEPAGE = -1
MADV_NOHUGEPAGE = -1
MADV_DONTDUMP = -1
MADV_DODUMP = -1
MADV_COLD = -1
MADV_PAGEOUT = -1
SYNC_FILE_RANGE_WRITE = 0
UNMAPPABLE_FILE_SYSTEMS: dict[str, str] = {}


def _unsupported(*args: object) -> NoReturn:
    raise UnsupportedError(f"anymmap on {sys.platform}")


mmap = munmap = mprotect = msync = madvise = mremap = memmove = pread = _unsupported
resident = populate = sync_file_range = read_memory = write_memory = _unsupported
remap = open_nonblocking = set_blocking = file_size = file_system = is_hole = _unsupported
access_mode = is_direct = _unsupported


def file_kind(mode: int) -> str:
    return "not a regular file"
