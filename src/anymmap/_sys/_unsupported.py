"""The system-call interface on platforms anymmap does not support yet.

Every name of ``_interface.OSInterface`` exists here (``mypy`` checks it), so ``import
anymmap`` works everywhere; every call raises :class:`~anymmap.UnsupportedError`.  Flags
that only tune behaviour are 0, and advice that does not exist is -1 (never a valid one).
"""

from __future__ import annotations

import mmap as _stdlib_mmap
import sys
from typing import NoReturn

from .._errors import UnsupportedError

SUPPORTED = False
PAGE_SIZE: int = _stdlib_mmap.PAGESIZE
USER_ADDRESS_SPACE = (1 << 47) - PAGE_SIZE

PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_SHARED_VALIDATE = 0
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0
MAP_GROWSDOWN = 0
MAP_LOCKED = 0
MAP_NORESERVE = 0
MAP_POPULATE = 0
MAP_STACK = 0
MAP_HUGETLB = 0
MAP_SYNC = 0
MAP_FIXED_NOREPLACE = 0
MAP_HUGE_SHIFT = 26
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
UNMAPPABLE_FILE_SYSTEMS: dict[str, str] = {}


def _unsupported(*args: object, **kwargs: object) -> NoReturn:
    raise UnsupportedError(f"anymmap on {sys.platform}")


mmap = munmap = munmap_quietly = mprotect = madvise = remap = sync_memory = memmove = memset = (
    _unsupported
)
is_mapped = any_mapped = _unsupported
resident = populate = prepare_access = read_memory = write_memory = _unsupported
open_nonblocking = set_blocking = dup = close = file_kind = path_kind = file_size = _unsupported
file_system = access_mode = is_direct = is_immutable = data_extents = pread = nowait_reads = (
    _unsupported
)
pread_nowait = allocate = truncate = start_writeback = _unsupported
open_new = open_no_follow = file_owner = current_uid = rename = unlink = link = _unsupported
file_identity = path_identity = _unsupported
open_create = open_unnamed = link_unnamed = changing_size = reading_size = _unsupported
append_zeros = _unsupported
fdatasync = fsync_directory = _unsupported
