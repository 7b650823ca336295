"""Where a new mapping goes: the kernel's choice, a hint, or exactly the hint."""

from __future__ import annotations

import errno

from .._errors import HintNotHonoredError, InvalidHintError
from .._sys import os_impl

USER_ADDRESS_SPACE = os_impl.USER_ADDRESS_SPACE


def map_placed(
    length: int, prot: int, flags: int, fd: int, offset: int, hint: int | None, strict: bool
) -> int:
    """mmap, honouring an address hint; under ``strict`` the hint must be met exactly.

    ``strict`` uses ``MAP_FIXED_NOREPLACE``, never ``MAP_FIXED`` (which would replace
    whatever is mapped there).  A kernel that ignores the flag treats the address as a plain
    hint, so the result is checked too.

    :raises HintNotHonoredError: under ``strict``, if the range is taken
    """
    if hint is None:
        if strict:
            raise InvalidHintError("strict placement needs a hint address (with_hint)")
        return os_impl.mmap(0, length, prot, flags, fd, offset)

    if strict:
        flags |= os_impl.MAP_FIXED_NOREPLACE
    try:
        addr = os_impl.mmap(hint, length, prot, flags, fd, offset)
    except OSError as exc:
        if strict and exc.errno == errno.EEXIST:
            raise HintNotHonoredError(hint) from None
        if strict and exc.errno == errno.ENOMEM and hint + length > USER_ADDRESS_SPACE:
            raise InvalidHintError(
                f"cannot map {length} bytes at hint {hint:#x}: the range passes the end of "
                f"the user address space ({USER_ADDRESS_SPACE:#x})"
            ) from None
        raise
    if strict and addr != hint:
        os_impl.munmap(addr, length)
        raise HintNotHonoredError(hint, addr)
    return addr


def remap_placed(addr: int, old_length: int, new_length: int, strict: bool) -> int:
    """``os_impl.remap`` for a map placed with ``strict`` or not: a ``strict`` map keeps
    its address, growing in place or failing.

    :raises HintNotHonoredError: under ``strict``, if it cannot grow in place because
        the address range after it is taken (the kernel's ``ENOMEM`` sent users looking
        for a memory shortage: adversary round 50)
    """
    try:
        return os_impl.remap(addr, old_length, new_length, not strict)
    except OSError as exc:
        end = addr + old_length
        if (
            strict
            and exc.errno == errno.ENOMEM
            and new_length > old_length
            and os_impl.any_mapped(end, new_length - old_length)
        ):
            raise HintNotHonoredError(end) from None
        raise
