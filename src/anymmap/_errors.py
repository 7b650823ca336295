"""Every exception anymmap raises on purpose.

Each subclasses the builtin a caller would naturally catch (``IndexError`` for a range
outside the map, ``OSError`` for what the kernel refused, ...) and :class:`AnymmapError`,
so ``except anymmap.AnymmapError`` catches them all.  System call failures that are not
listed here are plain ``OSError`` with the call's ``errno``.
"""

from __future__ import annotations

import errno
from typing import NoReturn


class AnymmapError(Exception):
    """Base class of every exception listed here."""


class OutOfBoundsError(AnymmapError, IndexError):
    """Raised when an ``offset, length`` pair does not lie inside the map (or, when a file
    is mapped, inside the file).

    Checked before any system call: ``offset >= 0``, ``length >= 0`` and
    ``offset + length <= total``.
    """

    def __init__(self, offset: int, length: int | None, total: int, what: str = "map") -> None:
        self.offset = offset
        self.length = length
        self.total = total
        self.what = what
        if length is None:  # "from offset to the end"
            message = f"offset={offset} is outside the {what} of {total} bytes"
        else:
            message = (
                f"range offset={offset}, length={length} is outside the {what} of {total} bytes"
            )
        super().__init__(message)

    def __reduce__(self) -> tuple[type[OutOfBoundsError], tuple[int, int | None, int, str]]:
        return type(self), (self.offset, self.length, self.total, self.what)


class InvalidSizeError(AnymmapError, ValueError):
    """Raised when a map size is zero, negative, or larger than the platform allows."""

    def __init__(self, size: object, reason: str) -> None:
        self.size = size
        self.reason = reason
        super().__init__(f"invalid map size {size!r}: {reason}")

    def __reduce__(self) -> tuple[type[InvalidSizeError], tuple[object, str]]:
        return type(self), (self.size, self.reason)


class InvalidHintError(AnymmapError, ValueError):
    """Raised when an address hint is negative or not page-aligned, or ``strict`` is set
    without a hint."""


class ClosedMapError(AnymmapError, ValueError):
    """Raised when a map is used after it was closed."""

    def __init__(self, what: str = "map", reason: str = "") -> None:
        self.what = what
        self.reason = reason
        super().__init__(f"the {what} is closed" + (f" ({reason})" if reason else ""))

    def __reduce__(self) -> tuple[type[ClosedMapError], tuple[str, str]]:
        return type(self), (self.what, self.reason)


class ReadOnlyError(AnymmapError, TypeError):
    """Raised on an attempt to write to, resize or borrow for writing a read-only map.

    A ``TypeError``, as the standard library's ``mmap`` raises for the same mistake.
    """


class BorrowError(AnymmapError, BufferError):
    """Raised when a buffer taken from a borrowed view outlives its borrow.

    At the end of an ``as_slice`` / ``as_mut_slice`` block the view is released; if an
    object exported from it (a NumPy array, a ``memoryview`` slice) is still alive, this
    is raised, and ``close`` / ``resize`` refuse to run until those objects are gone, so
    the memory under them stays mapped.
    """


class MappingFaultError(AnymmapError, OSError):
    """Raised when a copy touches a page that is not there — the mapped file was truncated
    under the map, or the range crosses a hole — instead of crashing with SIGBUS.

    ``errno`` is ``errno.EFAULT``; ``offset`` is the offset in the map of the first byte
    that could not be accessed (the start of its page, or of the range), ``address`` its
    address, and ``cause`` says why.
    """

    def __init__(self, offset: int, address: int, cause: str = "") -> None:
        self.offset = offset
        self.address = address
        self.cause = cause
        message = f"offset {offset} of the map (address {address:#x}) could not be accessed"
        if cause:
            message += f": {cause}"
        super().__init__(errno.EFAULT, message)

    def __reduce__(self) -> tuple[type[MappingFaultError], tuple[int, int, str]]:
        return type(self), (self.offset, self.address, self.cause)


class WriteBackError(AnymmapError, OSError):
    """Raised by a durable flush of a file map (``flush``, ``flush_range``, the final flush
    of ``auto_flush`` or of a close) once the kernel has failed to write some of the map's
    pages back to the file: then, and by every later durable flush of the same map.

    ``errno`` is the error the kernel gave (``EIO``, ``ENOSPC``, ``EDQUOT``...), and the
    message says its text.  Linux reports a failed write-back once per open file, and
    may drop the pages it could not write (or mark them clean): a later ``msync`` that
    returns success does not make them durable.  So the map keeps the error (and so do
    the other maps of the file open in this process then): what was written to it is not
    known to be on the disk, and ``pending_bytes()`` keeps counting it.  Rewrite the data
    from its source through a new map.
    """

    def __init__(self, error: int, strerror: str) -> None:
        self.first = strerror
        super().__init__(
            error,
            f"writing pages of the map's file back to it failed ({strerror}): they may be "
            "lost, and every durable flush of this map raises this error from now on",
        )

    def __reduce__(self) -> tuple[type[WriteBackError], tuple[int, str]]:
        return type(self), (self.errno or errno.EIO, self.first)


class UnmappableFileError(AnymmapError, OSError):
    """Raised when what was given to map is not a regular file or a block device (a FIFO
    or pipe, a socket, a character device such as ``/dev/zero``), or is a file of a file
    system whose files cannot be mapped (``/proc``, ``/sys``).

    ``errno`` is ``errno.ENODEV``, as ``mmap(2)`` says for such files.  (A directory
    raises :exc:`IsADirectoryError`, as everywhere in Python.)
    """

    def __init__(
        self, name: str, kind: str, mappable: str = "regular files and block devices"
    ) -> None:
        self.name = name
        self.kind = kind
        self.mappable = mappable
        article = "an" if kind[:1] in ("a", "e", "i", "o", "u") else "a"
        super().__init__(
            errno.ENODEV,
            f"cannot map {name}: it is {article} {kind}; only {mappable} can be mapped",
        )

    def __reduce__(self) -> tuple[type[UnmappableFileError], tuple[str, str, str]]:
        return type(self), (self.name, self.kind, self.mappable)


class UnsupportedError(AnymmapError, OSError):
    """Raised when a feature is not available on this platform or kernel.

    ``errno`` is ``errno.ENOTSUP``.
    """

    def __init__(self, feature: str) -> None:
        self.feature = feature
        super().__init__(errno.ENOTSUP, f"{feature} is not supported on this platform")

    def __reduce__(self) -> tuple[type[UnsupportedError], tuple[str]]:
        return type(self), (self.feature,)


class HintNotHonoredError(AnymmapError, OSError):
    """Raised by a ``strict`` map when the kernel cannot place it at the hinted address
    (usually because something is mapped there already).  ``errno`` is ``errno.EEXIST``."""

    def __init__(self, hint: int, placed: int | None = None) -> None:
        self.hint = hint
        self.placed = placed
        detail = "the range is taken" if placed is None else f"the kernel chose {placed:#x}"
        super().__init__(errno.EEXIST, f"cannot map at hint {hint:#x}: {detail}")

    def __reduce__(self) -> tuple[type[HintNotHonoredError], tuple[int, int | None]]:
        return type(self), (self.hint, self.placed)


class Uncopyable:
    """A base for what stands for something that exists once (a mapping, a lock, a hold
    of one): ``copy.copy``, ``copy.deepcopy`` and ``pickle`` raise a clear
    :exc:`TypeError` (adversary round 35: a copy of a map shared its mapping and closed
    it with the original's; a copy of a held lock shared its holders; ``deepcopy`` and
    ``pickle`` failed on an internal ``RLock``)."""

    __slots__ = ()

    # (__reduce__, not __reduce_ex__: a subclass's own __reduce__ then still wins.)
    def __reduce__(self) -> NoReturn:
        raise TypeError(
            f"{type(self).__name__} objects cannot be copied or pickled: each stands for "
            "a mapping, a lock or a hold of one that exists once (pass it by reference; "
            "to another process, pass the file's path or descriptor)"
        )
