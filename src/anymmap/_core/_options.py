"""The value behind both ``MmapOptions`` classes (seed 004): validation and flags."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from typing import Any, NoReturn

from .._errors import InvalidHintError, InvalidSizeError
from .._sys import os_impl
from ._checks import as_int, check_size
from ._file import FileCore, Prefill
from ._files import Mode

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self

_FIELDS = ("len", "hint", "populate", "no_reserve", "strict")
_SPELLINGS = {
    "length": "len",
    "size": "len",
    "addr": "hint",
    "address": "hint",
    "with_hint": "hint",
    "noreserve": "no_reserve",
}

#: No user address space reaches this far (57-bit virtual addresses at most).
MAX_HINT = 1 << 57


class OptionsBase:
    """Immutable map options with chainable setters; see ``anymmap.MmapOptions``."""

    __slots__ = ("_hint", "_len", "_no_reserve", "_populate", "_strict")

    _len: int | None
    _hint: int | None
    _populate: bool
    _no_reserve: bool
    _strict: bool

    def __init__(
        self,
        *args: NoReturn,  # NoReturn: a type checker flags any argument given here
        len: int | None = None,
        hint: int | None = None,
        populate: bool = False,
        no_reserve: bool = False,
        strict: bool = False,
        **unknown: NoReturn,
    ) -> None:
        name = type(self).__name__
        if args:
            raise TypeError(f"{name}() takes keyword arguments only (len=, hint=, ...)")
        for key in unknown:
            maybe = _SPELLINGS.get(key)
            hint_text = f"; did you mean {maybe}=?" if maybe else ""
            raise TypeError(
                f"{name}() got an unexpected keyword argument {key!r}{hint_text} "
                f"(its fields: {', '.join(_FIELDS)})"
            )
        set_ = object.__setattr__
        set_(self, "_len", None if len is None else check_size(len, "len"))
        set_(self, "_hint", None if hint is None else _check_hint(hint))
        set_(self, "_populate", _check_flag(populate, "populate"))
        set_(self, "_no_reserve", _check_flag(no_reserve, "no_reserve"))
        set_(self, "_strict", _check_flag(strict, "strict"))

    def _values(self) -> tuple[int | None, int | None, bool, bool, bool]:
        return self._len, self._hint, self._populate, self._no_reserve, self._strict

    def _replace(self, **changes: Any) -> Self:
        values: dict[str, Any] = dict(zip(_FIELDS, self._values(), strict=True))
        values.update(changes)
        return type(self)(**values)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; its setters return a copy")

    # Copied and pickled by value (adversary round 35: both fell on __setattr__); being
    # immutable, a copy is the object itself.
    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuilt, (type(self), self._values())

    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: object) -> Self:
        return self

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, OptionsBase)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        hint = "None" if self._hint is None else f"{self._hint:#x}"
        return (
            f"{type(self).__name__}(len={self._len}, hint={hint}, populate={self._populate}, "
            f"no_reserve={self._no_reserve}, strict={self._strict})"
        )

    def len(self, len: int | None) -> Self:
        """Return a copy with the length of the map in bytes (None: unset again).

        Default: unset.  Required by ``map_anon``; file maps default to the rest of the file.
        """
        return self._replace(len=len)

    def with_hint(self, addr: int | None) -> Self:
        """Return a copy that asks the kernel to place the map at ``addr`` (None: no
        hint again).

        Default: no hint (the kernel chooses).  ``addr`` must be page-aligned.  Without
        :meth:`strict` it is only a hint: the kernel may place the map elsewhere.
        """
        return self._replace(hint=addr)

    def populate(self, populate: bool) -> Self:
        """Return a copy that pre-faults the whole map when it is created.

        Default: False.  Linux: ``MAP_POPULATE``, and the async ``map_*`` then runs in a
        worker thread.  Elsewhere: a no-op.
        """
        return self._replace(populate=populate)

    def no_reserve(self, no_reserve: bool) -> Self:
        """Return a copy that does not reserve swap space for the map.

        Default: False.  Linux: ``MAP_NORESERVE`` (ignored by the kernel when
        ``vm.overcommit_memory`` is 2).  Elsewhere: a no-op.  Touching more pages than
        memory allows then gets the process killed instead of the map refused.
        """
        return self._replace(no_reserve=no_reserve)

    def strict(self, strict: bool) -> Self:
        """Return a copy that requires the map at exactly the hint address.

        Default: False.  Needs :meth:`with_hint`.  Linux: ``MAP_FIXED_NOREPLACE`` (never
        ``MAP_FIXED``, which would replace an existing mapping); if the range is taken,
        mapping raises :class:`~anymmap.HintNotHonoredError`.  A strict map also keeps its
        address on ``resize``: it grows in place, or raises ``HintNotHonoredError`` if
        the range after it is taken.
        """
        return self._replace(strict=strict)

    def _file_kwargs(self) -> dict[str, Any]:
        if self._strict and self._hint is None:
            raise InvalidHintError("strict placement needs a hint address (with_hint)")
        return {
            "length": self._len,
            "hint": self._hint,
            "strict": self._strict,
            "populate": self._populate,
            "no_reserve": self._no_reserve,
        }

    def _raw_core(
        self, file: object, offset: int, mode: Mode, fault_safe: bool, prefill: Prefill
    ) -> Callable[[], FileCore]:
        """The work of either facade's ``map_raw`` (run in a worker, or at once)."""
        kwargs = self._file_kwargs()  # (checked now, on the caller's thread)
        return partial(
            FileCore,
            file,
            offset=offset,
            mode=mode,
            fault_safe=fault_safe,
            prefill=prefill,
            **kwargs,
        )

    def _sparse_kwargs(self) -> dict[str, Any]:
        """For ``map_sparse``: the length and placement (a reservation is always
        ``MAP_NORESERVE``, so ``no_reserve`` changes nothing; nothing is mapped yet, so
        there is nothing to populate)."""
        if self._len is None:
            raise InvalidSizeError(None, "set a length with MmapOptions.len() before map_sparse")
        if self._populate:
            raise ValueError("populate does not apply to a sparse map: nothing is mapped yet")
        if self._strict and self._hint is None:
            raise InvalidHintError("strict placement needs a hint address (with_hint)")
        return {"length": self._len, "hint": self._hint, "strict": self._strict}

    def _anon_kwargs(self) -> dict[str, Any]:
        if self._len is None:
            raise InvalidSizeError(None, "set a length with MmapOptions.len() before map_anon")
        return self._file_kwargs()


def _check_hint(hint: object) -> int:
    addr = as_int(hint, "hint")
    if not 0 < addr < MAX_HINT or addr % os_impl.PAGE_SIZE:
        raise InvalidHintError(
            f"hint {addr:#x} must be a positive multiple of the page size ({os_impl.PAGE_SIZE}) "
            f"below {MAX_HINT:#x}"
        )
    return addr


def _check_flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        kind = type(value)
        what = (
            kind.__name__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__name__}"
        )
        raise TypeError(f"{name} must be True or False (a Python bool), not {what}")
    return value


def _rebuilt(cls: type[OptionsBase], values: tuple[Any, ...]) -> OptionsBase:
    """An unpickled options value (see :meth:`OptionsBase.__reduce__`)."""
    return cls(**dict(zip(_FIELDS, values, strict=True)))
