"""Argument checks shared by every map type, done before any system call."""

from __future__ import annotations

import array
import ctypes
import gc
import inspect
import math
import mmap
import numbers
import operator
import re
import sys
from typing import Any, cast

from .._errors import InvalidSizeError, OutOfBoundsError

#: The largest map anymmap creates: 128 TiB, the user address space of x86-64 Linux.
MAX_SIZE = 1 << 47


def check_size(size: object, what: str = "size") -> int:
    """Return ``size`` as an int in ``[1, MAX_SIZE]``.

    :raises TypeError: if ``size`` is not an integer
    :raises InvalidSizeError: if it is zero, negative or above 128 TiB
    """
    value = as_int(size, what)
    if value <= 0:
        raise InvalidSizeError(value, "a map must be at least 1 byte long")
    if value > MAX_SIZE:
        raise InvalidSizeError(value, f"the largest map is {MAX_SIZE} bytes (128 TiB)")
    return value


def check_range(offset: object, length: object, total: int) -> tuple[int, int]:
    """Return ``(offset, length)`` as ints once they are known to lie inside ``total``.

    :raises TypeError: if either is not an integer
    :raises OutOfBoundsError: if ``offset < 0``, ``length < 0`` or the range passes the end
    """
    start = as_int(offset, "offset")
    count = as_int(length, "length")
    if start < 0 or count < 0 or start + count > total:
        raise OutOfBoundsError(start, count, total)
    return start, count


def as_int(value: object, what: str) -> int:
    """``value`` as an int: ints and integer-likes (``operator.index``), but not bools."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, not bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} must be an integer, not {type(value).__name__}") from None


# Struct field names in a PEP 3118 format ("T{<i:count:O:owner:}"), and the type codes
# whose items are references (objects, pointers) rather than plain data.
_FIELD_NAMES = re.compile(":[^:]*:")
#: Format codes of values that are references: Python objects (``O``), pointers (``P``,
#: ``&`` prefixes, ctypes' ``z``/``Z`` string pointers, ``X{}`` function pointers).  A
#: ``Z`` followed by ``f``, ``d`` or ``g`` is a complex number, plain data.
_REFERENCE_CODES = re.compile(r"[OP&zX]|Z(?![fdg])")
#: The ``_type_`` codes of ctypes' simple types that are references: ``py_object``,
#: ``c_void_p``, ``c_char_p``, ``c_wchar_p`` (and Windows' ``BSTR``).
_CTYPES_REFERENCES = frozenset("OPzZX")


def byte_view(buffer: object, *, writable: bool) -> memoryview:
    """Return a flat, byte-typed memoryview of a C-contiguous buffer of plain data.

    :raises TypeError: if ``buffer`` does not support the buffer protocol (a ``str``), is
        not contiguous, is read-only when ``writable`` is set, or holds references
        (NumPy object arrays, ctypes pointers or ``py_object`` fields, also inside unions
        and packed structures: overwriting them as bytes would crash the interpreter)
    """
    if type(buffer) is bytearray or (type(buffer) is bytes and not writable):
        return memoryview(buffer)  # always flat, contiguous bytes: skip the checks
    if isinstance(buffer, str):
        raise TypeError("data must be a bytes-like object, not str; encode it first")
    try:
        view = buffer if type(buffer) is memoryview else memoryview(buffer)  # type: ignore[arg-type]
        fmt = view.format
    except TypeError:
        raise TypeError(
            f"a bytes-like object (buffer protocol) is required, not {type(buffer).__name__}"
        ) from None
    except ValueError as exc:  # a released memoryview; a NumPy dtype with no buffer format
        raise TypeError(
            f"this {type(buffer).__name__} cannot be used as a buffer: {exc}"
        ) from None
    refusal = None
    exporter = view.obj
    if fmt != "B" or view.itemsize != 1 or type(exporter) not in _PLAIN_EXPORTERS:
        # (ctypes exports a union or a packed structure as "B" items of its own size:
        # adversary round 35, a copy 4 of 20 bytes long, or 20 into a 4-byte range.)
        owner = _owner(exporter)
        if _holds_references(owner, fmt, view.itemsize):
            refusal = (
                f"{_describe(owner, fmt)} hold references (objects or pointers), not plain "
                "data; they cannot be copied as bytes"
            )
        elif not view.nbytes:  # an empty array of any shape (memoryview cannot cast it)
            view = memoryview(b"" if view.readonly else bytearray())
        else:
            view = view.cast("B") if view.c_contiguous else view
        del owner
    if refusal is None and writable and view.readonly:
        refusal = "the destination buffer is read-only"
    if refusal is None and not view.c_contiguous:
        refusal = "the buffer must be C-contiguous"
    if refusal is not None:
        # Let go of the buffer first: the error's traceback holds this frame, and a
        # caller that keeps the error would keep the buffer exported (adversary round
        # 37: a read-only mmap that could not be closed, a borrow that could not end).
        if view is not buffer:
            view.release()
        del buffer, view, exporter
        raise TypeError(refusal)
    if view.ndim != 1:
        view = view.cast("B") if view.nbytes else memoryview(bytearray())
    return view


def after_failed_copy(view: memoryview | None, buffer: object, error: BaseException) -> None:
    """Clean up after a copy through ``view`` (made of ``buffer`` by :func:`byte_view`)
    raised ``error``; the caller then raises it.

    A view of the call's own (not the caller's object) is released: the traceback the
    caller may keep holds it, and it would keep the buffer exported (adversary round
    36: a failed copy of a NumPy array or cast of a borrow's view, its error kept,
    made the borrow's end raise ``BorrowError``).  A ``ValueError`` met because the
    caller's view was released while the copy waited for its turn (its owner, another
    task or thread, called ``release()``: round 35) is the documented :exc:`TypeError`.
    (The copy did not touch the memory: a copy pins the buffer while it runs.)

    :raises TypeError: then
    """
    if view is None:  # (byte_view refused the buffer: it let go of its own view)
        return
    released = False
    if isinstance(error, ValueError):
        try:
            view.obj  # noqa: B018 - raises ValueError once the view is released
        except ValueError:
            released = True
    if view is not buffer and not released:
        try:
            view.release()
        except BufferError:  # pragma: no cover - exported by a frame the error keeps
            pass
    if released:
        raise TypeError(
            "the buffer was released (memoryview.release()) while the copy waited for its "
            "turn; the copy did not complete"
        ) from None


#: Exporters whose "B" buffers are plain bytes (the check's fast exit).
_PLAIN_EXPORTERS = frozenset({bytes, bytearray, mmap.mmap, array.array})


def _owner(exporter: object) -> object:
    """The object whose memory a buffer is: through views of views (casts, slices, a
    ``PickleBuffer``'s view), NumPy arrays over another's memory (``np.frombuffer``,
    ``as_strided``) and ctypes' ``from_buffer`` (adversary rounds 36 and 37: each of
    these over a ctypes object holding a ``py_object`` passed as plain bytes, and the
    copy crashed it).  Memory taken by address (``from_address``, ``ctypes.cast``) is
    judged as what it says it is."""
    numpy = sys.modules.get("numpy")
    for _ in range(256):  # (bounded: a chain of that length is not made by accident)
        if type(exporter) is memoryview:
            exporter = exporter.obj
        elif isinstance(exporter, _CData):
            objects = exporter._objects  # type: ignore[attr-defined]
            if not (isinstance(objects, dict) and _FROM_BUFFER in objects):
                return exporter
            exporter = objects[_FROM_BUFFER]  # (a view of the memory it was made over)
        elif numpy is not None and isinstance(exporter, numpy.ndarray):
            if exporter.base is None:
                return exporter
            exporter = exporter.base
        elif (
            hasattr(exporter, "__array_interface__")
            and getattr(exporter, "base", None) is not None
        ):
            exporter = exporter.base  # type: ignore[attr-defined]  # (as_strided's holder)
        elif type(exporter) is _BUFFER_WRAPPER:
            # A Python class's __buffer__ (PEP 688, 3.12+): CPython's wrapper holds the
            # memoryview it returned (adversary round 38: a byte cast of a ctypes
            # py_object or a NumPy object array, returned by __buffer__, passed as plain
            # bytes and the copy crashed it).  Not found, it cannot be judged: refused.
            views = [r for r in gc.get_referents(exporter) if type(r) is memoryview]
            if len(views) != 1:
                return _UNKNOWN
            exporter = views[0]
        else:
            return exporter
    return exporter


def _buffer_wrapper_type() -> type | None:
    """The type of what ``memoryview(x).obj`` is for a Python class ``x`` with a
    ``__buffer__`` method (3.12+; None before)."""

    class Exporter:
        def __buffer__(self, flags: int) -> memoryview:
            return memoryview(b"")

    try:
        with memoryview(Exporter()) as view:
            return type(view.obj)
    except TypeError:  # (before 3.12: not a buffer)
        return None


_BUFFER_WRAPPER = _buffer_wrapper_type()

#: What :func:`_owner` returns for memory it cannot find the owner of.
_UNKNOWN = object()


#: Where ctypes' ``from_buffer`` keeps (a view of) the object it was made over.
_FROM_BUFFER = "ffffffff"


def _holds_references(owner: object, fmt: str, itemsize: int) -> bool:
    """Whether the items of a buffer of format ``fmt`` of the memory of ``owner`` may
    hold references.  A ctypes object is judged by its type and by its own format:
    a union or a packed structure exports opaque ``"B"`` items, and a field name may
    hold the ``:`` that ends names in the format (``T{<i:p::<O:q:}``), which then hides
    a field's code from any reading of it (adversary round 35: both let a copy
    overwrite a ``py_object``, and touching it crashed); its ``_fields_`` list may have
    been changed since ctypes laid the type out (round 36), which its format then
    shows.  A NumPy array is judged by its dtype too (a byte cast of an object array
    says ``"B"``: round 38).  Other owners are judged by the format (NumPy refuses ``:``
    in field names); an opaque one of items wider than a byte, one whose names cannot
    be told apart from its codes, or memory whose owner was not found, is refused."""
    if owner is _UNKNOWN:
        return True
    if isinstance(owner, _CData):
        try:
            if _ctypes_holds_references(type(owner)):
                return True
        except RecursionError:  # (nested too deep to walk: refused, round 36)
            return True
        fmt, itemsize = memoryview(cast(Any, owner)).format, 1  # (its own, not a cast's)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(owner, numpy.ndarray) and owner.dtype.hasobject:
        return True  # (a byte cast of an object array says "B": adversary round 38)
    if fmt == "B":
        return itemsize != 1  # (an opaque item of several bytes, not ctypes': unknown)
    codes = _FIELD_NAMES.sub("", fmt)
    return ":" in codes or _REFERENCE_CODES.search(codes) is not None


def _describe(owner: object, fmt: str) -> str:
    """What a refused buffer is, for the error (see :func:`_holds_references`)."""
    if owner is _UNKNOWN:
        return "buffers made by __buffer__ over memory whose owner cannot be found (they may)"
    if isinstance(owner, _CData):
        return f"ctypes {type(owner).__name__} objects"
    dtype = getattr(owner, "dtype", None)
    if getattr(dtype, "hasobject", False):
        return f"NumPy arrays of dtype {dtype}, also as bytes,"
    return f"buffers of format {fmt!r}"


#: The base class of every ctypes instance.
_CData: type = ctypes.c_int.__mro__[-2]


def _ctypes_holds_references(ctype: type) -> bool:
    """Whether instances of the ctypes type ``ctype`` hold references: pointers,
    ``py_object``, function pointers, at any depth of arrays, structures and unions
    (their base classes' fields included), as their ``_fields_`` read now."""
    if issubclass(ctype, ctypes.Array):
        return _ctypes_holds_references(cast(type, ctype._type_))
    if issubclass(ctype, (ctypes.Structure, ctypes.Union)):
        for klass in ctype.__mro__:
            fields = vars(klass).get("_fields_", ())
            for i in range(len(fields)):  # (by index, as ctypes reads it, not by iter())
                if _ctypes_holds_references(fields[i][1]):
                    return True
        return False
    if issubclass(ctype, ctypes._SimpleCData):
        return getattr(ctype, "_type_", "P") in _CTYPES_REFERENCES
    return True  # pointers, function pointers, and anything not known to be plain


def check_populate_args(write: object, progress: object) -> None:
    """:raises TypeError: unless ``write`` is a bool and ``progress`` None or callable"""
    if not isinstance(write, bool):
        raise TypeError(f"write must be True or False, not {type(write).__name__}")
    if progress is not None and not callable(progress):
        raise TypeError(
            f"progress must be a callable taking (done, total), not {type(progress).__name__}"
        )
    if inspect.iscoroutinefunction(progress) or inspect.iscoroutinefunction(
        getattr(progress, "__call__", None)  # noqa: B004 - an object with async __call__
    ):
        raise TypeError(
            "progress must be a plain function: it is called between chunks and not "
            "awaited (send to a memory object stream from it to reach a task)"
        )


def check_flush_policy(every: object, every_bytes: object) -> tuple[float, int]:
    """``(every, every_bytes)`` of an auto-flush policy, checked.

    :raises TypeError: if they are not numbers
    :raises ValueError: if either is not positive
    """
    if isinstance(every, bool) or not isinstance(every, numbers.Real):  # (NumPy's too)
        raise TypeError(f"every must be a number of seconds, not {type(every).__name__}")
    threshold = as_int(every_bytes, "every_bytes")
    try:
        seconds = float(every)
    except OverflowError:  # (a number past any float: as math.inf, or -math.inf)
        seconds = math.inf if cast(Any, every) > 0 else -math.inf
    if not seconds > 0:
        shown = repr(every)
        raise ValueError(f"every must be positive, not {shown[:40]}{shown[40:] and '...'}")
    if threshold <= 0:
        raise ValueError(f"every_bytes must be positive, not {threshold}")
    return seconds, threshold
