"""The one interface every platform module implements (``_linux``, ``_unsupported``).

It is a :class:`typing.Protocol` that the platform *modules* satisfy: ``_sys/__init__.py``
assigns each module to a variable of this type under ``TYPE_CHECKING``, so a platform
module that lacks a name, or has one with another signature, fails ``mypy --strict``.
Everything anymmap asks of the operating system is here; nothing above ``_sys`` calls
``os``, ``fcntl`` or ``ctypes`` for a system call of its own.

Conventions: addresses, lengths and offsets are plain ``int``; callers have checked them
(this layer trusts them).  Failures raise ``OSError`` with the call's ``errno``; a feature
the platform lacks raises :class:`~anymmap.UnsupportedError`; flags that only tune
behaviour are 0 where they do not exist (a documented no-op, as in memmap2).
"""

from __future__ import annotations

import os
from typing import Protocol

PathArg = str | bytes | os.PathLike[str] | os.PathLike[bytes]


class OSInterface(Protocol):
    # -- facts and constants -------------------------------------------------------------
    SUPPORTED: bool
    PAGE_SIZE: int
    #: The end of the user address space for maps placed without an explicit high hint.
    USER_ADDRESS_SPACE: int
    PROT_NONE: int
    PROT_READ: int
    PROT_WRITE: int
    PROT_EXEC: int
    MAP_SHARED: int
    MAP_PRIVATE: int
    MAP_FIXED: int
    MAP_ANONYMOUS: int
    MAP_NORESERVE: int
    MAP_POPULATE: int
    MAP_FIXED_NOREPLACE: int
    MAP_LOCKED: int
    MAP_GROWSDOWN: int
    MAP_HUGETLB: int
    MAP_STACK: int
    MAP_SHARED_VALIDATE: int
    MAP_SYNC: int
    MAP_HUGE_SHIFT: int
    MADV_NORMAL: int
    MADV_RANDOM: int
    MADV_SEQUENTIAL: int
    MADV_WILLNEED: int
    MADV_DONTNEED: int
    MADV_FREE: int
    MADV_DONTFORK: int
    MADV_DOFORK: int
    MADV_HUGEPAGE: int
    MADV_NOHUGEPAGE: int
    MADV_DONTDUMP: int
    MADV_DODUMP: int
    MADV_COLD: int
    MADV_PAGEOUT: int
    #: File systems whose files report a size but cannot be mapped, and where they live.
    UNMAPPABLE_FILE_SYSTEMS: dict[str, str]

    # -- memory --------------------------------------------------------------------------
    def mmap(
        self, addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0
    ) -> int: ...
    def munmap(self, addr: int, length: int) -> None: ...
    def mprotect(self, addr: int, length: int, prot: int) -> None: ...
    def madvise(self, addr: int, length: int, advice: int) -> None: ...
    def remap(self, addr: int, old_length: int, new_length: int, may_move: bool) -> int: ...
    def sync_memory(self, addr: int, length: int) -> None: ...
    def memmove(self, dst: int, src: int, length: int) -> None: ...
    def memset(self, addr: int, byte: int, length: int) -> None: ...
    def resident(self, addr: int, length: int) -> bool: ...
    def populate(self, addr: int, length: int, write: bool) -> None: ...
    def read_memory(self, dst: int, src: int, length: int) -> None: ...
    def write_memory(self, dst: int, src: int, length: int) -> None: ...

    # -- files ---------------------------------------------------------------------------
    def open_nonblocking(self, path: PathArg, writable: bool) -> int: ...
    def set_blocking(self, fd: int) -> None: ...
    def dup(self, fd: int) -> int: ...
    def close(self, fd: int) -> None: ...
    def file_kind(self, fd: int) -> str: ...
    def path_kind(self, path: PathArg) -> str: ...
    def file_size(self, fd: int) -> int: ...
    def file_system(self, fd: int) -> str: ...
    def access_mode(self, fd: int) -> tuple[bool, bool]: ...
    def is_direct(self, fd: int) -> bool: ...
    def is_hole(self, fd: int, offset: int, length: int) -> bool: ...
    def pread(self, fd: int, dst: int, length: int, offset: int) -> int: ...
    def nowait_reads(self, fd: int) -> bool: ...
    def pread_nowait(self, fd: int, dst: memoryview, offset: int) -> int: ...
    def allocate(self, fd: int, offset: int, length: int) -> None: ...
    def truncate(self, fd: int, size: int) -> None: ...
    def start_writeback(self, fd: int, offset: int, length: int) -> None: ...
