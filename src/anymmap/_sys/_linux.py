"""Linux: every system call anymmap makes, behind the interface of ``_interface.py``.

Calls that may block or touch mapped memory go through ``ctypes.CDLL``, which releases
the GIL for the duration of each call.  Everything takes and returns plain integers
(addresses, lengths, flags); callers validate ranges first, this module trusts them and
says where memory is touched by address.  Failures raise ``OSError`` with the call's
``errno``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap as _stdlib_mmap
import os
import stat
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import NoReturn

from .._stopping import stop_point
from ._interface import PathArg
from ._signals import signals_held

# SAFETY: CDLL (not PyDLL) drops the GIL for the duration of every foreign call, which is
# the reason this module exists (stdlib mmap holds the GIL through msync and page faults).
_libc = ctypes.CDLL(None, use_errno=True)

_void_p = ctypes.c_void_p
_size_t = ctypes.c_size_t
_int = ctypes.c_int


def _fn(name: str, restype: type | None, *argtypes: type) -> Callable[..., int]:
    func = getattr(_libc, name)
    func.restype = restype
    func.argtypes = argtypes
    return func  # type: ignore[no-any-return]


_mmap = _fn("mmap", _void_p, _void_p, _size_t, _int, _int, _int, ctypes.c_int64)
_munmap = _fn("munmap", _int, _void_p, _size_t)
_mprotect = _fn("mprotect", _int, _void_p, _size_t, _int)
_msync = _fn("msync", _int, _void_p, _size_t, _int)
_madvise = _fn("madvise", _int, _void_p, _size_t, _int)
# mremap is variadic; the fifth argument is only read with MREMAP_FIXED.  On the Linux ABIs
# CPython runs on, variadic integer arguments travel like fixed ones.
_mremap = _fn("mremap", _void_p, _void_p, _size_t, _size_t, _int, _void_p)
# mincore takes plain integers: it runs before every copy on the event loop thread, and
# argument conversion would cost as much as the system call.
_mincore = ctypes.CFUNCTYPE(_int, _size_t, _size_t, _size_t, use_errno=True)(("mincore", _libc))
_memmove = _fn("memmove", _void_p, _void_p, _void_p, _size_t)
_memset = _fn("memset", _void_p, _void_p, _int, _size_t)
_pread = _fn("pread", ctypes.c_ssize_t, _int, _void_p, _size_t, ctypes.c_int64)
_fstatfs = _fn("fstatfs", _int, _int, _void_p)
_statfs = _fn("statfs", _int, ctypes.c_char_p, _void_p)
_sync_file_range = _fn(
    "sync_file_range", _int, _int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint
)
_process_vm_readv = _fn(
    "process_vm_readv", ctypes.c_ssize_t, _int, _void_p, ctypes.c_ulong, _void_p,
    ctypes.c_ulong, ctypes.c_ulong,
)  # fmt: skip
_process_vm_writev = _fn(
    "process_vm_writev", ctypes.c_ssize_t, _int, _void_p, ctypes.c_ulong, _void_p,
    ctypes.c_ulong, ctypes.c_ulong,
)  # fmt: skip

PAGE_SIZE: int = _stdlib_mmap.PAGESIZE
#: Where user space ends with 4-level page tables (x86-64, arm64 with 48-bit VAs): the
#: kernel places maps above it only when asked to with a hint there (5-level paging).
#: One page below 2**47: x86-64 never maps its top page (``TASK_SIZE_MAX``), and a strict
#: range ending in it got a plain ``OSError`` instead of ``InvalidHintError`` (adversary
#: round 46).
USER_ADDRESS_SPACE = (1 << 47) - PAGE_SIZE
MAP_FAILED = ctypes.c_void_p(-1).value

PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_SHARED_VALIDATE = 0x03
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_GROWSDOWN = 0x0100
MAP_LOCKED = 0x2000
MAP_NORESERVE = 0x4000
MAP_POPULATE = 0x8000
MAP_STACK = 0x20000
MAP_HUGETLB = 0x40000
MAP_SYNC = 0x80000
MAP_FIXED_NOREPLACE = 0x100000  # Linux 4.17; older kernels ignore it and treat addr as a hint
MAP_HUGE_SHIFT = 26
MS_ASYNC = 1
MS_SYNC = 4
MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
MADV_NORMAL = 0
MADV_RANDOM = 1
MADV_SEQUENTIAL = 2
MADV_WILLNEED = 3
MADV_DONTNEED = 4
MADV_FREE = 8
MADV_DONTFORK = 10
MADV_DOFORK = 11
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_DONTDUMP = 16
MADV_DODUMP = 17
MADV_COLD = 20
MADV_PAGEOUT = 21
MADV_POPULATE_READ = 22  # Linux 5.14
MADV_POPULATE_WRITE = 23  # Linux 5.14
SYNC_FILE_RANGE_WRITE = 2

#: Whether this platform is supported at all (the unsupported module says False).
SUPPORTED = True

_IOV_MAX = 1024


def _raise_errno(what: str) -> NoReturn:
    code = ctypes.get_errno()
    raise OSError(code, f"{what}: {os.strerror(code)}")


def mmap(addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    """Create a mapping and return its address (``addr`` is a hint unless flags say fixed)."""
    result = _mmap(addr or None, length, prot, flags, fd, offset)
    if result is None or result == MAP_FAILED:
        code = ctypes.get_errno()
        if code == errno.EPERM and fd >= 0 and prot & PROT_WRITE and flags & MAP_SHARED:
            raise _sealed(OSError(code, f"mmap: {os.strerror(code)}"), fd, _WRITE_SEALS, _NO_WRITE)
        _raise_errno("mmap")
    return result


#: The seals of a memfd (``memfd_create(2)``) that refuse a change of its size, or of
#: its bytes (``F_SEAL_FUTURE_WRITE``, Linux 5.1, which the fcntl module lacks).
_F_SEAL_FUTURE_WRITE = 0x0010
_SEAL_NAMES = (
    (fcntl.F_SEAL_GROW, "F_SEAL_GROW"),
    (fcntl.F_SEAL_SHRINK, "F_SEAL_SHRINK"),
    (fcntl.F_SEAL_WRITE, "F_SEAL_WRITE"),
    (_F_SEAL_FUTURE_WRITE, "F_SEAL_FUTURE_WRITE"),
)
_WRITE_SEALS = fcntl.F_SEAL_WRITE | _F_SEAL_FUTURE_WRITE
_GROW_SEALS = fcntl.F_SEAL_GROW | _WRITE_SEALS
_NO_WRITE = "it cannot be mapped for writing (map it read-only, or copy-on-write)"


def _sealed(exc: OSError, fd: int, seals: int, what: str) -> OSError:
    """``exc`` with the reason said, if it is an ``EPERM`` that a seal of ``fd`` among
    ``seals`` explains (the bare error names neither the seal nor the change refused)."""
    if exc.errno != errno.EPERM:
        return exc
    try:
        present = fcntl.fcntl(fd, fcntl.F_GET_SEALS) & seals
    except OSError:  # (not a memfd: no seals)
        return exc
    if not present:
        return exc
    names = " | ".join(name for seal, name in _SEAL_NAMES if present & seal)
    return PermissionError(exc.errno, f"{exc.strerror}: the file is sealed ({names}): {what}")


def munmap(addr: int, length: int) -> None:
    # SAFETY: the caller owns [addr, addr + length) and no view of it is alive.
    if _munmap(addr, length) != 0:
        _raise_errno("munmap")


#: ``munmap`` itself (the ctypes function: C code, no Python frame), returning its status
#: instead of raising: what a map's memory calls as it is dropped (see ``Memory``), where
#: no exception could be reported and a Python frame is a place a signal's handler raises.
munmap_quietly = _munmap


def mprotect(addr: int, length: int, prot: int) -> None:
    if _mprotect(addr, length, prot) != 0:
        _raise_errno("mprotect")


def sync_memory(addr: int, length: int) -> None:
    """Write the dirty pages of a shared file map back and wait until they are durable
    (``msync(MS_SYNC)``: on Linux also what is needed to read them back, size included)."""
    if _msync(addr, length, MS_SYNC) != 0:
        _raise_errno("msync")


def is_mapped(addr: int, length: int) -> bool:
    """Whether every page of ``[addr, addr + length)`` is mapped (with any protection,
    ``PROT_NONE`` included): ``msync(MS_ASYNC)`` fails with ``ENOMEM`` on a gap, and
    otherwise does nothing on Linux (since 2.6.19)."""
    # SAFETY: MS_ASYNC neither reads nor writes the pages; the range may hold anything.
    if _msync(addr, length, MS_ASYNC) == 0:
        return True
    if ctypes.get_errno() == errno.ENOMEM:
        return False
    _raise_errno("msync")


def madvise(addr: int, length: int, advice: int) -> None:
    if _madvise(addr, length, advice) != 0:
        _raise_errno("madvise")


def mremap(addr: int, old_length: int, new_length: int, flags: int) -> int:
    """Grow or shrink a mapping; with ``MREMAP_MAYMOVE`` the address may change."""
    # SAFETY: the caller owns the old range and no view of it is alive; afterwards only the
    # returned range is ours.
    result = _mremap(addr, old_length, new_length, flags, None)
    if result is None or result == MAP_FAILED:
        _raise_errno("mremap")
    return result


def remap(addr: int, old_length: int, new_length: int, may_move: bool) -> int:
    """Grow or shrink the mapping ``[addr, addr + old_length)``; return its new address.

    Unlike a bare ``mremap``, this works when the range is made of several kernel
    mappings (advice on part of a map splits it, and ``mremap`` then fails with
    ``EFAULT`` when growing): the last piece grows in place, or, if there is no room and
    ``may_move``, every piece moves into a new range, in order, with the last one grown.
    On failure the range is left as it was.
    """
    flags = MREMAP_MAYMOVE if may_move else 0
    try:
        return mremap(addr, old_length, new_length, flags)
    except OSError as exc:
        if exc.errno != errno.EFAULT or new_length <= old_length:
            raise
        pieces = _mappings_in(addr, old_length)
        if len(pieces) < 2:
            raise
    last_start, last_length = pieces[-1]
    growth = new_length - old_length
    try:
        mremap(last_start, last_length, last_length + growth, 0)
        return addr
    except OSError as exc:
        if exc.errno != errno.ENOMEM or not may_move:
            raise
    # SAFETY: a fresh reservation of the new size; every piece is moved onto it with
    # MREMAP_FIXED, which replaces the reserved pages it lands on and nothing else.
    target = mmap(0, new_length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)
    moved: list[tuple[int, int, int]] = []  # (from, to, length now)
    try:
        for start, length in pieces:
            size = length + (growth if start == last_start else 0)
            _mremap_fixed(start, length, size, target + (start - addr))
            moved.append((start, target + (start - addr), size))
    except BaseException:
        for start, dest, size in reversed(moved):  # put back what moved, then drop the rest
            original = size - (growth if start == last_start else 0)
            _mremap_fixed(dest, size, original, start)
        munmap(target, new_length)
        raise
    return target


def _mremap_fixed(addr: int, old_length: int, new_length: int, new_addr: int) -> None:
    # SAFETY: the caller owns both ranges; the destination only holds its own reservation.
    result = _mremap(addr, old_length, new_length, MREMAP_MAYMOVE | MREMAP_FIXED, new_addr)
    if result is None or result == MAP_FAILED:
        _raise_errno("mremap")


def _mappings_in(addr: int, length: int) -> list[tuple[int, int]]:
    """The kernel mappings (VMAs) that make up ``[addr, addr + length)``, clipped to it,
    as ``(start, length)`` pairs in address order (from ``/proc/self/maps``)."""
    end = addr + length
    pieces = []
    with open("/proc/self/maps", "rb") as maps:
        for line in maps:
            low, _, high = line.partition(b" ")[0].partition(b"-")
            lo, hi = int(low, 16), int(high, 16)
            if hi <= addr:
                continue
            if lo >= end:
                break
            start = max(lo, addr)
            pieces.append((start, min(hi, end) - start))
    return pieces


def any_mapped(addr: int, length: int) -> bool:
    """Whether any page of ``[addr, addr + length)`` is mapped (see :func:`is_mapped`
    for every page)."""
    return bool(_mappings_in(addr, length))


def memset(addr: int, byte: int, length: int) -> None:
    # SAFETY: the caller owns the writable range [addr, addr + length).
    _memset(addr, byte, length)


def memmove(dst: int, src: int, length: int) -> None:
    """Copy between two addresses without the GIL (faults are not caught: use it on
    memory that cannot fault, such as anonymous maps and pinned Python buffers)."""
    # SAFETY: both ranges are mapped and stay mapped for the call (the caller holds the
    # lock or buffer export that guarantees it).
    _memmove(dst, src, length)


def pread(fd: int, dst: int, length: int, offset: int) -> int:
    """Read up to ``length`` bytes of the file at ``offset`` into the address ``dst``,
    without the GIL; return the count (short only at the end of the file)."""
    done = 0
    while done < length:
        # SAFETY: dst is a buffer the caller holds an export of, at least `length` long.
        n = _pread(fd, dst + done, length - done, offset + done)
        if n < 0:
            if ctypes.get_errno() == errno.EINTR:
                continue
            _raise_errno("pread")
        if n == 0:
            break
        done += n
    return done


def resident(addr: int, length: int) -> bool:
    """Whether every page of ``[addr, addr + length)`` is in memory right now (mincore).

    ``addr`` must be page-aligned; pages past the end of a file report not resident.
    """
    pages = (length + PAGE_SIZE - 1) // PAGE_SIZE
    if pages <= 8:
        # The usual small copy: one byte per page lands in a 64-bit word, checked at once.
        # The word is this call's own (see _vm_copy).
        word = _Word()
        # SAFETY: mincore writes `pages` <= 8 bytes into the word.
        if _mincore(addr, length, _addressof(word)) != 0:
            return _mincore_failed()
        mask = _LOW_BITS[pages]
        return word.value & mask == mask
    vec = ctypes.create_string_buffer(pages)
    # SAFETY: mincore writes one byte per page into vec, which holds exactly that many.
    if _mincore(addr, length, ctypes.addressof(vec)) != 0:
        return _mincore_failed()
    # Only the lowest bit of each byte is defined.
    return b"\x00" not in vec.raw.translate(_LOW_BIT)


def _mincore_failed() -> bool:
    if ctypes.get_errno() == errno.ENOMEM:  # part of the range is not mapped
        return False
    _raise_errno("mincore")


_LOW_BIT = bytes(b & 1 for b in range(256))
_LOW_BITS = [int.from_bytes(b"\x01" * n, "little") for n in range(9)]


def populate(addr: int, length: int, write: bool) -> None:
    """Fault the pages of a page-aligned range in, without changing their contents.

    Uses ``MADV_POPULATE_READ``/``WRITE`` (Linux 5.14).  On older kernels it touches every
    page with a fault-safe read instead, so ``write=True`` then only populates for reading.
    A range whose mapping or protection forbids the access (``PROT_NONE``, a device
    map) fails with ``EFAULT``.
    """
    if _populate_advice():
        advice = MADV_POPULATE_WRITE if write else MADV_POPULATE_READ
        try:
            madvise(addr, length, advice)
        except OSError as exc:
            if exc.errno == errno.EFAULT:
                exc.address = _first_failing_page(addr, length, advice)  # type: ignore[attr-defined]
                raise
            if exc.errno != errno.EINVAL:
                raise
            raise _forbidden("populate", addr) from None
        return
    _touch_pages(addr, length)


def _first_failing_page(addr: int, length: int, advice: int) -> int:
    """The first page of ``[addr, addr + length)`` that ``advice`` (a populate advice
    that just failed on the range) cannot fault in, such as a page a full file system
    cannot provide: the error then names it, not the range's start.  The kernel faults
    the pages in order and stops at the first it cannot, so the pages before it are in
    memory and a prefix fails exactly when it holds that page: a bisection, whose
    repeated prefixes cost little."""
    low, high = addr, addr + length  # the failing page lies in [low, high)
    while high - low > PAGE_SIZE:
        middle = low + (high - low) // 2 // PAGE_SIZE * PAGE_SIZE
        # SAFETY: as for the populate call on the whole range, of which this is a part.
        if _madvise(low, middle - low, advice) == 0:
            low = middle
        else:
            high = middle
    return low


def prepare_access(page: int, write: bool) -> None:
    """Fault the page at ``page`` in (for writing, if ``write``) before a direct load or
    store: a page of a file that the file system cannot provide (a hole of a full one)
    is ``EFAULT`` here instead of SIGBUS at the access.  (Before Linux 5.14 there is no
    such call and nothing is done: the access is then as safe as a plain one.)"""
    if not _populate_advice():
        return
    # SAFETY: the caller holds the map open and ``page`` lies in one of its pieces
    # (writable, for ``write``); the advice changes no byte, it only faults the page in.
    advice = MADV_POPULATE_WRITE if write else MADV_POPULATE_READ
    if _madvise(page, PAGE_SIZE, advice) != 0:
        if ctypes.get_errno() == errno.EINVAL:
            raise _forbidden("access", page)
        _raise_errno("madvise")


def _forbidden(what: str, addr: int) -> OSError:
    # madvise's EINVAL for a kernel that has the advice: "incompatible mappings or
    # permissions" (mm/madvise.c); for the caller that is a page it cannot have.
    error = OSError(errno.EFAULT, f"{what} at {addr:#x}: the mapping forbids the access")
    error.address = addr  # type: ignore[attr-defined]
    return error


#: Whether the kernel has ``MADV_POPULATE_READ``/``WRITE``; None until first asked.
_populate_advice_supported: bool | None = None


def _populate_advice() -> bool:
    """Whether the kernel has ``MADV_POPULATE_*`` (Linux 5.14), asked once, of a page of
    our own: madvise also says ``EINVAL`` for a range whose mapping or protection forbids
    the access, which says nothing of the kernel (a populate over a ``PROT_NONE`` piece
    of a sparse map turned the advice off for the whole process: a later
    ``populate(write=True)`` committed nothing, and an ``atomic_store`` into a hole of a
    full file system died of SIGBUS; adversary round 54)."""
    global _populate_advice_supported
    supported = _populate_advice_supported
    if supported is None:
        page = mmap(0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
        try:
            # SAFETY: the page is ours, mapped just above; the advice changes no byte.
            failed = _madvise(page, PAGE_SIZE, MADV_POPULATE_READ) != 0
            supported = not (failed and ctypes.get_errno() == errno.EINVAL)
        finally:
            munmap(page, PAGE_SIZE)
        _populate_advice_supported = supported
    return supported


def _touch_pages(addr: int, length: int) -> None:
    """Read one byte of every page with process_vm_readv (faults become EFAULT)."""
    sink = ctypes.create_string_buffer(_IOV_MAX)
    sink_addr = ctypes.addressof(sink)
    page = addr - addr % PAGE_SIZE
    end = addr + length
    while page < end:
        count = min(_IOV_MAX, (end - page + PAGE_SIZE - 1) // PAGE_SIZE)
        local = (_size_t * 2)(sink_addr, count)
        remote = (_size_t * (2 * count))()
        remote[0::2] = list(range(page, page + count * PAGE_SIZE, PAGE_SIZE))
        remote[1::2] = [1] * count
        # SAFETY: process_vm_readv checks every remote page and writes count bytes to sink.
        done = _process_vm_readv(os.getpid(), local, 1, remote, count, 0)
        if done != count:
            if done < 0:
                if ctypes.get_errno() != errno.EFAULT:
                    _raise_errno("process_vm_readv")
                done = 0  # (the batch's first page)
            error = OSError(errno.EFAULT, "populate: a page could not be read")
            error.address = page + done * PAGE_SIZE  # type: ignore[attr-defined]
            raise error
        page += count * PAGE_SIZE


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing the dirty pages of a file range back, without waiting
    (``sync_file_range(SYNC_FILE_RANGE_WRITE)``; ``msync(MS_ASYNC)`` is a no-op on Linux)."""
    if _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE) != 0:
        _raise_errno("sync_file_range")


_Word = ctypes.c_uint64
_IOVecs = _size_t * 4  # two struct iovec {base, len}: the local one, then the remote one
_addressof = ctypes.addressof
_IOVEC_SIZE = 2 * ctypes.sizeof(_size_t)


def read_memory(dst: int, src: int, length: int) -> None:
    """Copy ``length`` bytes from ``src`` to ``dst`` without the GIL, fault-safe.

    A page of ``src`` that cannot be read (a truncated file, an unmapped hole) makes the
    call fail with ``OSError(EFAULT)`` instead of killing the process with SIGBUS/SIGSEGV.
    """
    _vm_copy(_process_vm_readv, dst, src, length, "read")


def write_memory(dst: int, src: int, length: int) -> None:
    """Copy ``length`` bytes from ``src`` to ``dst`` without the GIL, fault-safe for ``dst``."""
    _vm_copy(_process_vm_writev, src, dst, length, "write")


def _vm_copy(call: Callable[..., int], local: int, remote: int, length: int, what: str) -> None:
    # process_vm_readv/writev on our own pid: the kernel copies between the local and
    # the "remote" range and reports EFAULT for a page it cannot reach instead of a signal.
    # The iovecs are this call's own, not a per-thread scratch: a signal handler or a
    # finalizer that copies through another map runs between filling them and the call
    # (as the pid call returns, or at any allocation), and its copy overwrote them: the
    # outer copy then wrote the handler's bytes, or counted them as its own and returned
    # with its write lost (adversary round 55).
    iov = _IOVecs()
    iov_addr = _addressof(iov)
    done = 0
    while done < length:
        iov[0] = local + done
        iov[1] = length - done
        iov[2] = remote + done
        iov[3] = length - done
        # SAFETY: iov holds two struct iovec {base, len}; the local range is a buffer the
        # caller holds an export of, the remote range is checked by the kernel.  The pid
        # is asked for on every call (about 0.1 us): a cached one goes stale in the child
        # of a fork that skips Python's at-fork hooks, which would then copy into its
        # parent's memory.
        n = call(os.getpid(), iov_addr, 1, iov_addr + _IOVEC_SIZE, 1, 0)
        if n <= 0:
            code = ctypes.get_errno() if n < 0 else errno.EFAULT
            error = OSError(code, f"{what} at {remote + done:#x}: {os.strerror(code)}")
            error.address = remote + done  # type: ignore[attr-defined]
            raise error
        done += n


# -- files ------------------------------------------------------------------------------

_FILE_KINDS = (
    (stat.S_ISREG, "regular file"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISDIR, "directory"),
    (stat.S_ISFIFO, "FIFO or pipe"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISLNK, "symbolic link"),
)

# statfs(2) f_type of the file systems anymmap treats specially.
_FILE_SYSTEMS = {
    0x9FA0: "proc",
    0x62656572: "sysfs",
    0x64626720: "debugfs",
    0x01021994: "tmpfs",
    0x5345434D: "secretmem",
}
#: Where the files that cannot be mapped (or copied, once mapped) live: memfd_secret
#: pages are out of reach of every system call, so each fault-safe copy would fail.
UNMAPPABLE_FILE_SYSTEMS = {
    "proc": "/proc",
    "sysfs": "/sys",
    "debugfs": "debugfs",
    "secretmem": "memfd_secret memory (no system call can copy its pages)",
}
_RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)


def open_nonblocking(path: PathArg, writable: bool) -> int:
    """Open ``path`` read-only or read-write with ``O_NONBLOCK``, so that a FIFO never
    waits for a writer; call :func:`set_blocking` once the file is known to be mappable."""
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC | os.O_NONBLOCK
    return os.open(path, flags)


def set_blocking(fd: int) -> None:
    os.set_blocking(fd, True)


def dup(fd: int) -> int:
    try:
        return os.dup(fd)
    except OSError as exc:
        raise _not_open(exc, fd, "a descriptor of the file, for the map to keep") from None


def _not_open(exc: OSError, fd: int, what: str) -> OSError:
    """``exc`` from a call on the caller's descriptor ``fd``, saying what is wrong:
    ``EBADF`` that it is not open, another error what the call was for (``what``)."""
    if exc.errno == errno.EBADF:
        return OSError(exc.errno, f"{fd} is not an open file descriptor")
    return OSError(exc.errno, f"{exc.strerror} ({what})")


#: ``os.close`` itself, no Python frame over it: a descriptor's drop (see ``FileRef``)
#: closes it with no point before the call where a signal's handler could raise.
close = os.close


def _kind(mode: int) -> str:
    for test, kind in _FILE_KINDS:
        if test(mode):
            return kind
    return "special file"  # pragma: no cover - every mode is one of the above


def file_kind(fd: int) -> str:
    """What ``fd`` is: "regular file", "block device", "directory", "FIFO or pipe",
    "socket", "character device"."""
    try:
        return _kind(os.fstat(fd).st_mode)
    except OSError as exc:
        raise _not_open(exc, fd, "reading what the file is") from None


def path_kind(path: PathArg, *, follow: bool = True) -> str:
    """What ``path`` is (see :func:`file_kind`), following symbolic links unless not
    ``follow`` (then a link is a "symbolic link")."""
    return _kind(os.stat(path, follow_symlinks=follow).st_mode)


_BLKGETSIZE64 = 0x80081272  # _IOR(0x12, 114, size_t)


def file_size(fd: int) -> int:
    """The size of a regular file, or of a block device (whose ``st_size`` is 0).

    Never moves the file offset, which a descriptor shares with the caller's when it
    is a ``dup`` of it (``lseek(SEEK_END)`` left the caller's reads at the end of the
    device; adversary round 55)."""
    info = os.fstat(fd)
    if stat.S_ISBLK(info.st_mode):
        size: int = struct.unpack("Q", fcntl.ioctl(fd, _BLKGETSIZE64, bytes(8)))[0]
        return size
    return info.st_size


def file_system(where: int | PathArg) -> str:
    """The name of the file system of the descriptor or path ``where`` if anymmap treats
    it specially ("tmpfs", "proc", ...), else "other"."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86-64
    # SAFETY: (f)statfs writes one struct statfs, which fits in buf; f_type comes first;
    # the path is a NUL-terminated bytes object that outlives the call.
    if isinstance(where, int):
        failed = _fstatfs(where, ctypes.addressof(buf))
    else:
        failed = _statfs(os.fsencode(where), ctypes.addressof(buf))
    if failed:
        return "other"
    f_type = ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
    return _FILE_SYSTEMS.get(f_type, "other")


def access_mode(fd: int) -> tuple[bool, bool]:
    """Whether ``fd`` was opened for reading, and for writing (an ``O_PATH`` descriptor,
    whose access bits read as ``O_RDONLY``, for neither)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if flags & _O_PATH:
        return False, False
    access = flags & os.O_ACCMODE
    return access in (os.O_RDONLY, os.O_RDWR), access in (os.O_WRONLY, os.O_RDWR)


_O_PATH = getattr(os, "O_PATH", 0o10000000)


def is_direct(fd: int) -> bool:
    """Whether ``fd`` was opened with ``O_DIRECT`` (read(2) then wants aligned buffers)."""
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & _O_DIRECT)


#: FS_IOC_GETFLAGS (``_IOR('f', 1, long)``) and its flag of an immutable file.
_FS_IOC_GETFLAGS = 0x80086601
_FS_IMMUTABLE_FL = 0x10


def is_immutable(fd: int) -> bool:
    """Whether the file is immutable (``chattr +i``), which refuses a first write into
    any of its mapped pages whatever its permissions say (False where the file system
    keeps no such attribute).  (Append-only, ``chattr +a``, refuses no page write.)"""
    try:
        # (The kernel reads and writes an int, whatever the ioctl's number says.)
        flags = int.from_bytes(fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8))[:4], sys.byteorder)
    except OSError:
        return False
    return bool(flags & _FS_IMMUTABLE_FL)


def data_extents(fd: int, offset: int, length: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` ranges of ``[offset, offset + length)`` where the file holds
    data; the rest are holes (never written, or allocated and never written on tmpfs:
    they read as zeros without any I/O).  Asks the file system (SEEK_DATA, SEEK_HOLE),
    which moves the file offset: never on a descriptor that shares the caller's."""
    extents: list[tuple[int, int]] = []
    end = offset + length
    while offset < end:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data from offset to the end of the file
                break
            if exc.errno == errno.EINVAL:  # no SEEK_DATA here: say it is all data
                return [*extents, (offset, end)]
            raise
        if start >= end:
            break
        try:
            offset = min(os.lseek(fd, start, os.SEEK_HOLE), end)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            # Cut below ``start`` since SEEK_DATA (another process truncating it: the
            # long reliability profile): count the rest as data, which the caller
            # then finds not in memory.
            offset = end
        extents.append((start, offset))
    return extents


def nowait_reads(fd: int) -> bool:
    """Whether :func:`pread_nowait` works on ``fd`` (tmpfs, for one, refuses the flag).

    Probes with a 1-byte read at offset 0 (the file is not empty)."""
    if not _RWF_NOWAIT:
        return False
    try:
        os.preadv(fd, (bytearray(1),), 0, _RWF_NOWAIT)
    except BlockingIOError:
        return True
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ESPIPE):
            return False
        raise
    return True


def pread_nowait(fd: int, dst: memoryview, offset: int) -> int:
    """Read into ``dst`` from the page cache only (``preadv(RWF_NOWAIT)``): return the
    count (short at the end of the file or where a page is not cached), or -1 if the
    first page is not cached.  Never waits for the disk.  ``os.preadv`` lets go of the
    GIL for the call, as every call in this module does: a worker thread waiting for it
    may run first (why none keeps it: ``benchmarks/bench_commit.py``, point 5).  One
    call copies at most 2 GiB - 4 KiB: a longer range reads on (adversary round 54)."""
    try:
        got = os.preadv(fd, (dst,), offset, _RWF_NOWAIT)
    except BlockingIOError:
        return -1
    n = len(dst)
    while 0 < got < n:
        try:
            with dst[got:] as rest:
                part = os.preadv(fd, (rest,), offset + got, _RWF_NOWAIT)
        except BlockingIOError:
            break  # (short: that page is not cached)
        if part == 0:
            break  # the end of the file
        got += part
    return got


def allocate(fd: int, offset: int, length: int) -> None:
    """Allocate the blocks of a file range (``posix_fallocate``), growing the file if the
    range passes its end; a full disk fails here (``ENOSPC``)."""
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        raise _sealed(exc, fd, _GROW_SEALS, "it cannot grow") from None


def truncate(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        seals = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK
        raise _sealed(exc, fd, seals, "its size cannot change") from None


def open_new(path: PathArg, mode: int) -> int:
    """Create ``path`` for reading and writing; it must not exist, not even as a
    symbolic link (``O_CREAT | O_EXCL | O_NOFOLLOW``).  Its permissions are set to
    ``mode`` exactly, whatever the umask."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)  # the umask took bits away from the mode open() used
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_no_follow(path: PathArg, writable: bool) -> int:
    """Open an existing ``path`` without following a symbolic link at its end (``ELOOP``)
    and without blocking on a FIFO (``O_NONBLOCK``: see :func:`set_blocking`)."""
    flags = os.O_RDWR if writable else os.O_RDONLY
    return os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)


def file_owner(fd: int) -> tuple[int, int]:
    """The owner's user id and the permission bits of ``fd``'s file."""
    info = os.fstat(fd)
    return info.st_uid, stat.S_IMODE(info.st_mode)


def current_uid() -> int:
    return os.geteuid()


def rename(source: PathArg, target: PathArg) -> None:
    """Rename ``source`` over ``target`` atomically; a symbolic link at ``target`` is
    replaced, never followed."""
    os.rename(source, target)


def unlink(path: PathArg) -> None:
    os.unlink(path)


def link(source: PathArg, target: PathArg) -> None:
    """A new name ``target`` for what ``source`` names (a link itself, not followed);
    ``FileExistsError`` if ``target`` exists: it never replaces anything."""
    os.link(source, target, follow_symlinks=False)


def file_identity(fd: int) -> tuple[int, int]:
    """``(device, inode)`` of ``fd``'s file."""
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def path_identity(path: PathArg) -> tuple[int, int] | None:
    """``(device, inode)`` of what ``path`` names (a link itself, not followed), or None if
    nothing is there."""
    try:
        info = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def open_create(path: PathArg, exclusive: bool, mode: int) -> tuple[int, bool]:
    """Open ``path`` for reading and writing, creating it (permissions ``mode`` minus the
    umask) if it does not exist; ``exclusive``: it must not exist.  Returns the
    descriptor and whether this call created the file."""
    flags = os.O_RDWR | os.O_CLOEXEC
    # O_EXCL: a file created by someone else meanwhile, or a symbolic link, is not ours.
    creating = flags | os.O_CREAT | os.O_EXCL
    if exclusive:
        return os.open(path, creating, mode), True
    # Open, else create; a file another caller created in between is opened on the next
    # turn (two processes calling open_or_create on one path both succeed).  Bounded: a
    # path created and removed again at every turn by others ends in FileExistsError.
    for _ in range(_OPEN_CREATE_TURNS):
        try:
            return os.open(path, flags), False
        except FileNotFoundError:
            pass
        try:
            return os.open(path, creating, mode), True
        except FileExistsError:
            try:
                linked = stat.S_ISLNK(os.lstat(path).st_mode)
            except FileNotFoundError:
                continue  # (removed again meanwhile)
            if linked:
                raise FileExistsError(
                    errno.EEXIST,
                    f"{os.fsdecode(path)!r} is a symbolic link to a file that does not exist; "
                    "a new file is never created through a link",
                ) from None
    raise FileExistsError(
        errno.EEXIST, f"{os.fsdecode(path)!r} kept appearing and disappearing; try again"
    )


#: Whether to make new files without a name first (``O_TMPFILE``, Linux 3.11); the
#: tests turn it off to run the way taken where a file system cannot.
_UNNAMED_FILES = hasattr(os, "O_TMPFILE")


def open_unnamed(path: PathArg, mode: int) -> int | None:
    """A new file without a name, to be named ``path`` by :func:`link_unnamed`, made in
    its directory (``O_TMPFILE``) and open for reading and writing, permissions ``mode``
    minus the umask; nobody else can open it until then.  None where the file system
    cannot make one, or for a path that ends in "/" (then make it by name, which gives
    the error the path deserves).

    :raises FileExistsError: if ``path`` exists, also as a symbolic link (checked
        first: a path that cannot be named fails before the file's blocks are made)
    """
    name = os.fsdecode(path)
    if not _UNNAMED_FILES or not name or name.endswith("/"):
        return None
    try:
        os.lstat(name)  # (also a name too long, or a directory missing or not searchable)
    except FileNotFoundError:
        pass
    else:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), name)
    try:
        return os.open(os.path.dirname(name) or ".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode)
    except OSError:
        # No O_TMPFILE here (EOPNOTSUPP; EISDIR or EINVAL from an old kernel; EPERM
        # from /proc), or a directory that cannot take a file: made by name, the error
        # (if any) is the one the path itself gives.
        return None


def link_unnamed(fd: int, path: PathArg) -> None:
    """Give the file ``fd`` from :func:`open_unnamed` the name ``path``, which must not
    exist, not even as a symbolic link (``FileExistsError``: never followed)."""
    # The documented way (open(2)): linkat of the /proc link, following it to the file.
    # (os.link with only follow_symlinks calls link(2), which follows nothing: EXDEV.)
    try:  # (errors named after the path, not /proc's or the descriptor's number)
        with signals_held():  # (opened means closed)
            fds = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.link(str(fd), path, src_dir_fd=fds, follow_symlinks=True)
        finally:
            os.close(fds)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, os.fsdecode(path)) from None


#: How many times open_create opens, then creates, before it gives up on a path that
#: other callers keep creating and removing.
_OPEN_CREATE_TURNS = 100


_ZEROS = bytes(1 << 20)


#: A byte far past the end of any file, which anymmap locks (an OFD lock: it excludes
#: other descriptors in this process too) while it grows or cuts a file, so that two maps
#: changing the size of one file take turns.
_GROWTH_LOCK_AT = 1 << 62
#: How long changing_size() waits for that lock before going on without it, so that a
#: holder that never lets go (a stopped process) cannot hang a resize.  Appended zeros
#: stay safe without it (O_APPEND); the turns keep a growth from going past what was
#: asked, and a cut from cutting another map's growth.  Long enough for tens of GB.
_GROWTH_LOCK_PATIENCE = 30.0


class _Turn:
    """A turn on a file's growth lock (an OFD lock of :data:`_GROWTH_LOCK_AT`), by which
    the maps of anymmap, in any process, take turns to change a file's size
    (:class:`changing_size`, exclusive) and to read it and map that much
    (:class:`reading_size`, shared).

    Never waits for itself: a thread that takes a turn of a file it already has one of
    (a signal handler or finalizer that maps or grows the file inside a growth or a
    mapping of it) goes on without the lock (adversary round 27: it waited the whole
    :data:`_GROWTH_LOCK_PATIENCE`).  A child forked while turns are taken lets go of
    them (see :func:`_forget_turns_in_child`).

    A class, not a ``@contextmanager`` generator: a signal handled as the generator
    yielded raised inside contextlib, and the descriptor and the lock stayed taken (the
    next growth of the file waited :data:`_GROWTH_LOCK_PATIENCE` for it).
    """

    __slots__ = (
        "__weakref__",
        "_access",
        "_counts",
        "_fd",
        "_file",
        "_kind",
        "_lock_fd",
        "_locked",
        "_own",
        "_thread",
        "_undoing",
    )

    def __init__(
        self, fd: int, kind: int, access: int | None, undoing: bool = False, own: bool = False
    ) -> None:
        """``access``: open a descriptor of the file for the turn (through
        ``/proc/self/fd``, with these flags), or None: take it on ``fd`` itself.
        ``undoing``: the block undoes a change, and goes on without a turn when no
        descriptor can be had at all (an undoing made without a turn beats none).
        ``own``: ``fd`` is an open file description of anymmap's own (not a duplicate of
        the caller's), so when no descriptor can be opened, the turn is taken on it."""
        self._fd = fd
        self._kind = kind
        self._access = access
        self._undoing = undoing
        self._own = own
        self._lock_fd: int | None = None
        self._locked = False

    @property
    def _private(self) -> bool:
        """Whether the turn is taken on a descriptor opened for it (and closed after)."""
        return self._access is not None

    def _reopen(self, fd: int) -> int:
        """A new open file description of ``fd``'s file, for the turn."""
        try:
            return os.open(f"/proc/self/fd/{fd}", (self._access or 0) | _REOPEN)
        except OSError as exc:  # (not named after /proc's path: the caller never saw it)
            raise _not_open(exc, fd, "opening the file again, to change its size") from None

    def __enter__(self) -> int | None:
        """Take the turn; return the descriptor it is taken on, or None if it could
        not be opened (then without a turn)."""
        try:
            # (Opened and counted means given back by _let_go; opened and recorded
            # means known to a child forked meanwhile: see _forget_turns_in_child.)
            with signals_held(), _turns_lock:
                info = os.fstat(self._fd)
                if self._private and not self._own and _leased(self._fd):
                    return None  # (a second open would break the caller's lease)
                if self._private:
                    try:
                        lock_fd = self._reopen(self._fd)
                    except OSError as exc:
                        # Out of descriptors or memory: say so.  A growth went on without
                        # its turn and without prefill="zeros" (adversary round 59).
                        if exc.errno in _SCARCE and not self._undoing:
                            raise
                        if not self._own:
                            return None  # (the permissions no longer allow it; a lease)
                        # A file whose mode refuses writing (made with mode=0o444 by a
                        # user who is not root: adversary round 64): our own descriptor
                        # is open for writing, and takes the turn.
                        self._access = None
                        lock_fd = self._fd
                else:
                    lock_fd = self._fd
                self._lock_fd = lock_fd
                self._file = (info.st_dev, info.st_ino)
                self._thread = threading.get_ident()
                self._counts = counts = _turns_of_this_thread()
                inside = counts.get(self._file, 0)
                counts[self._file] = inside + 1
                _turns_in_flight[id(self)] = self
            if not inside:
                self._locked = _lock_growth(lock_fd, self._kind, stoppable=not self._undoing)
            return lock_fd  # (inside the try: a signal handled as it returns is undone)
        except BaseException:
            self._let_go()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self._let_go()

    def __del__(self) -> None:
        # A signal handled as __exit__ or _let_go began skipped it: let go when dropped
        # (a descriptor left open would keep the growth lock, and every later growth of
        # the file would wait _GROWTH_LOCK_PATIENCE for it).  (getattr: a signal may
        # have cut __init__ short.)
        if getattr(self, "_lock_fd", None) is not None:
            self._let_go()

    def _keep_in_child(self) -> None:
        """In a forked child, for a turn of the thread that forked: drop the lock but
        keep the descriptor usable (the child may go on growing the file with it): a
        private one is replaced by a new open file description of the file, without
        the lock, under the same number."""
        with signals_held():
            lock_fd = self._lock_fd
            if lock_fd is None or not self._locked:
                return
            if not self._private:
                # (Not unlocked: the parent shares the open file description, and its
                # own turn would go; the child's exit of the turn leaves it alone.)
                self._locked = False
                return
            try:
                fresh = self._reopen(lock_fd)
            except OSError:
                return  # (then the child keeps the parent's turn, as before)
            os.dup2(fresh, lock_fd, inheritable=False)
            os.close(fresh)
            self._locked = False

    def _let_go(self, in_child: bool = False) -> None:
        with signals_held():  # (once begun, whole, and once)
            lock_fd, self._lock_fd = self._lock_fd, None
            if lock_fd is None:
                return
            _turns_in_flight.pop(id(self), None)
            left = self._counts.get(self._file, 1) - 1
            if left:
                self._counts[self._file] = left
            else:
                self._counts.pop(self._file, None)
            # Released explicitly: a child forked meanwhile shares the open file
            # description, and closing ours alone would leave it locked in there.  (In
            # that child, nothing is unlocked: the parent's turn goes on.)
            if self._locked and not in_child:
                with contextlib.suppress(OSError):
                    _growth_lock(lock_fd, fcntl.F_OFD_SETLK, fcntl.F_UNLCK)
            if self._private:
                os.close(lock_fd)


class changing_size(_Turn):  # (lower case: used like a function, ``with changing_size(fd):``)
    """For the block: take turns with anymmap's other maps that grow or cut the file, and
    have a descriptor of it that appends (``O_APPEND``, reopened through
    ``/proc/self/fd``).  If the file's permissions no longer allow opening it for writing,
    the turn is taken on ``fd`` itself when it is ``own`` (anymmap's own open file
    description) and the block gets ``fd``, else there is no turn and it gets None.  Out
    of descriptors (``EMFILE``, ``ENFILE``) or memory, it raises, unless ``undoing``
    (then as for permissions)."""

    __slots__ = ()

    def __init__(self, fd: int, *, undoing: bool = False, own: bool = False) -> None:
        super().__init__(fd, fcntl.F_WRLCK, os.O_WRONLY | os.O_APPEND, undoing, own)


class reading_size(_Turn):  # (lower case: used like a function, ``with reading_size(fd):``)
    """For the block: a shared turn with the maps of anymmap that grow or cut the file,
    for reading its size and mapping that much: it waits for a growth or cut under way
    and keeps new ones from starting, but not other readers.  A growth that fails cuts
    back what it appended, and must not do so under a map made meanwhile (adversary
    round 26).

    The lock is taken on ``fd`` itself (mapping is frequent), which must be open for
    reading.  ``borrowed``: ``fd`` shares its open file description with a descriptor
    of the caller's (a duplicate of one passed in), and no turn is taken: a lock on it
    would change the caller's own OFD locks (adversary round 27), and opening another
    descriptor for it would break the caller's lease on the file (round 28).
    """

    __slots__ = ("_borrowed",)

    def __init__(self, fd: int, *, borrowed: bool = False) -> None:
        super().__init__(fd, fcntl.F_RDLCK, None)
        self._borrowed = borrowed

    def __enter__(self) -> int | None:
        return None if self._borrowed else super().__enter__()


#: Held while a turn's descriptor is opened and recorded, and across a fork: a fork in
#: between left the child a descriptor no hook knew of, and with it the turn of a parent
#: killed mid-growth (adversary round 28).  Re-entrant: a fork from a trace hook of the
#: thread that holds it.
_turns_lock = threading.RLock()


def _leased(fd: int) -> bool:
    """Whether the caller holds a lease through ``fd``'s open file description: an open
    of the file, even one that fails with ``EWOULDBLOCK`` (``O_NONBLOCK``), starts
    breaking it and sends the holder its signal, SIGIO by default, which ends a process
    that did not handle it (adversary round 74: a ``resize`` of ``map_raw(fd)``).  A
    lease held through another open of the file is not seen."""
    try:
        return fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_UNLCK
    except OSError:  # (not a regular file, or a file system without leases)
        return False


#: How a descriptor of a file is opened for a turn (O_NONBLOCK: a file under a lease
#: fails the open at once, EWOULDBLOCK, instead of waiting out the lease's break, 45 s
#: by default).
_REOPEN = os.O_CLOEXEC | os.O_NONBLOCK
#: The errors of that open that mean "out of a resource", not "not allowed".
_SCARCE = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM))
#: The turns being taken or held in this process, for a forked child to let go of (weak:
#: a turn whose holder was cut short by a signal lets go when dropped, see __del__).
_turns_in_flight: weakref.WeakValueDictionary[int, _Turn] = weakref.WeakValueDictionary()
_this_thread = threading.local()


def _turns_of_this_thread() -> dict[tuple[int, int], int]:
    """How many turns this thread takes or holds of each file (device, inode)."""
    counts: dict[tuple[int, int], int] | None = getattr(_this_thread, "counts", None)
    if counts is None:
        counts = _this_thread.counts = {}
    return counts


def _forget_turns_in_child() -> None:
    """In a forked child: let go of the turns the parent's threads were taking.  The
    child shares their open file descriptions, and an OFD lock lasts while any process
    has one open: a parent killed during a growth left its turn to the child, and every
    map and growth of the file waited for the child to end (adversary round 27).  A
    descriptor opened for a turn is closed (the parent's turn goes on); a shared turn on
    a map's own descriptor is only forgotten (unlocking it would end the parent's too:
    if the parent is killed while it maps, the turn lasts until the child closes that
    descriptor or ends).  The turns of the thread that forked, which goes on in the
    child and may still use them, are kept without their locks (see
    :meth:`_Turn._keep_in_child`)."""
    me = threading.get_ident()
    try:
        for turn in list(_turns_in_flight.values()):
            if turn._thread == me:
                turn._keep_in_child()
            else:
                turn._let_go(in_child=True)
    finally:
        _turns_lock.release()  # (taken before the fork)


os.register_at_fork(
    before=_turns_lock.acquire,
    after_in_parent=_turns_lock.release,
    after_in_child=_forget_turns_in_child,
)


def append_zeros(fd: int, end: int, made: list[int]) -> None:
    """Append zero bytes to the file until it is ``end`` bytes long (real blocks, not a
    hole or an unwritten extent: the first later write into them needs no metadata
    change), through ``fd``: the descriptor :func:`changing_size` gave (``O_APPEND``),
    or any descriptor of the file open for writing (then ``pwritev2`` with
    ``RWF_APPEND``, which leaves its file offset alone; where the kernel lacks it,
    before Linux 4.16, nothing is written and the caller's allocation makes the blocks).

    Every write goes to the end of the file as it is at that instant, so bytes that
    another map or process puts past the size seen here are never overwritten (a
    foreign process growing the file at the same moment may leave it up to 1 MiB of
    zeros longer than ``end``).  ``made[0]`` is the size the file had before; it is
    kept as the size this call left after each of its writes, and set to -1 once the
    file is found longer than that (another writer's bytes: cutting back is then not
    this call's to do).  ``made[1]`` is the size a write in flight leaves if whole, set
    before it (a signal handled as the write returns, before ``made[0]`` is, raised with
    the file longer than ``made[0]``: adversary round 69), and -1 after.
    """
    appends = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND
    while (size := os.fstat(fd).st_size) < end:
        if size != made[0]:
            made[0] = -1
        zeros = memoryview(_ZEROS)[: min(len(_ZEROS), end - size)]
        if made[0] >= 0:
            made[1] = size + len(zeros)
        try:
            # (Positioned calls, which never move the descriptor's offset: it may be a
            # dup of the caller's.  Linux's pwrite on an O_APPEND descriptor appends.)
            written = (
                os.pwrite(fd, zeros, 0) if appends else os.pwritev(fd, [zeros], 0, _RWF_APPEND)
            )
        except OSError as exc:
            if not appends and exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                return  # (no RWF_APPEND: the caller allocates instead)
            raise _sealed(exc, fd, _GROW_SEALS, "it cannot grow") from None
        if made[0] >= 0:
            made[0] = size + written
        made[1] = -1


#: pwritev2's flag to append (Linux 4.16; the number where Python's build lacks it).
_RWF_APPEND: int = getattr(os, "RWF_APPEND", 0x10)


def _lock_growth(fd: int, kind: int, *, stoppable: bool) -> bool:
    """Take the growth lock of ``fd``'s file (``kind``: ``F_WRLCK`` to change the size,
    ``F_RDLCK`` to read it) if it comes within :data:`_GROWTH_LOCK_PATIENCE` (see
    changing_size); return whether it did (never raises for want of it).  ``stoppable``:
    the wait is a stop point (not for an undoing, which a stopped call still owes)."""
    deadline = time.monotonic() + _GROWTH_LOCK_PATIENCE
    while True:
        try:
            _growth_lock(fd, fcntl.F_OFD_SETLK, kind)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                return False  # no OFD locks here (an old kernel, some network file systems)
        if not _held_for_a_turn(fd, kind):
            # Someone's own lock covers the byte (a whole-file ``lockf``, say, which
            # reaches every byte): it is not a turn, and may be held for the program's
            # life (adversary round 25: every resize waited the whole patience).
            return False
        # Polled, not waited for: a holder stopped at exit must not hang the call.
        if sys.is_finalizing() or time.monotonic() > deadline:
            return False
        # A cancelled async caller ends the wait (adversary round 69: a deadline of 50 ms
        # waited the whole patience for a holder stopped mid-growth).
        if stoppable:
            stop_point()
        time.sleep(0.001)


#: struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for an OFD lock), padding.
_FLOCK = "hhqqi4x"


def _growth_lock(fd: int, command: int, kind: int) -> bytes:
    """``fcntl(fd, command, ...)`` for an OFD lock of ``kind`` on the growth lock's byte;
    what the kernel answers (``F_OFD_GETLK``: the lock in the way, if any)."""
    request = struct.pack(_FLOCK, kind, os.SEEK_SET, _GROWTH_LOCK_AT, 1, 0)
    answer: bytes = fcntl.fcntl(fd, command, request)
    return answer


def _held_for_a_turn(fd: int, kind: int) -> bool:
    """Whether what keeps a growth lock of ``kind`` from ``fd`` is another map's turn (an
    OFD lock of exactly that byte, as :func:`_growth_lock` takes), not a lock of the
    program's own; True if the lock is free by now (try again)."""
    try:
        answer = _growth_lock(fd, fcntl.F_OFD_GETLK, kind)
    except OSError:  # pragma: no cover - it took the lock a moment ago
        return True
    held, _, start, length, pid = struct.unpack(_FLOCK, answer)
    return bool(held == fcntl.F_UNLCK or (start, length, pid) == (_GROWTH_LOCK_AT, 1, -1))


def fdatasync(fd: int) -> None:
    os.fdatasync(fd)


def fsync_directory(path: PathArg) -> None:
    """Make the entries of the directory ``path`` durable (a new file's name)."""
    fd = -1
    try:
        with signals_held():  # opened means closed below, whatever arrives
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        os.fsync(fd)
    finally:
        if fd >= 0:
            os.close(fd)
