from __future__ import annotations

import enum
import operator

from ._sys import os_impl


class Advice(enum.IntEnum):
    """Advice for :meth:`~anymmap.AnonymousMmap.advise` (``madvise``).

    The values are the platform's own, so ``mmap.MADV_*`` integers are accepted too.
    ``DONTNEED`` discards the contents of private (anonymous or copy-on-write) pages: they
    read back as zeros or as the file's data; ``FREE`` lets the kernel discard an
    :class:`~anymmap.AnonymousMmap`'s pages (other maps refuse it with ``EINVAL``).  For
    these two, ``advise`` covers only the pages that lie wholly inside the given range (so
    nothing outside it is lost); other advice covers every page the range touches.

    .. versionadded:: 0.1
    """

    NORMAL = os_impl.MADV_NORMAL
    RANDOM = os_impl.MADV_RANDOM
    SEQUENTIAL = os_impl.MADV_SEQUENTIAL
    WILLNEED = os_impl.MADV_WILLNEED
    DONTNEED = os_impl.MADV_DONTNEED
    FREE = os_impl.MADV_FREE
    DONTFORK = os_impl.MADV_DONTFORK
    DOFORK = os_impl.MADV_DOFORK
    HUGEPAGE = os_impl.MADV_HUGEPAGE
    NOHUGEPAGE = os_impl.MADV_NOHUGEPAGE
    DONTDUMP = os_impl.MADV_DONTDUMP
    DODUMP = os_impl.MADV_DODUMP
    COLD = os_impl.MADV_COLD
    PAGEOUT = os_impl.MADV_PAGEOUT


def check_advice(advice: object) -> int:
    """Return the advice as an int.

    :raises ValueError: if it is not one of :class:`Advice`
    :raises TypeError: if it is not an integer
    """
    if isinstance(advice, bool) or not hasattr(type(advice), "__index__"):
        raise TypeError(f"advice must be an anymmap.Advice, not {type(advice).__name__}")
    value = operator.index(advice)  # type: ignore[arg-type]
    try:
        return int(Advice(value))
    except ValueError:
        raise ValueError(f"unknown advice {advice!r}; use anymmap.Advice") from None
