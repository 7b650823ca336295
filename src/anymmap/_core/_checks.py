"""Argument checks shared by every map type, done before any system call."""

from __future__ import annotations

import array
import collections
import ctypes
import gc
import inspect
import math
import mmap
import numbers
import operator
import re
import sys
import types
import weakref
from collections.abc import Callable
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


#: The largest file offset ``mmap`` maps up to (``off_t`` is a signed 64-bit integer).
MAX_FILE_OFFSET = (1 << 63) - 1


def check_file_end(start: int, end: int) -> None:
    """Check that the file pages ``[start, end)`` a mapping would show end at or below
    ``MAX_FILE_OFFSET``.

    :raises ValueError: if they do not (the kernel would refuse them with ``EOVERFLOW``,
        or see the offset wrapped around)
    """
    if end > MAX_FILE_OFFSET:
        raise ValueError(
            f"the file's bytes [{start}, {end}) reach past the largest file offset "
            "a map can show (2**63 - 1)"
        )


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
    if issubclass(type(buffer), str):
        raise TypeError("data must be a bytes-like object, not str; encode it first")
    try:
        view = buffer if type(buffer) is memoryview else memoryview(buffer)  # type: ignore[arg-type]
        fmt = view.format
    except TypeError:
        if _has_python_buffer(type(buffer)):
            raise  # (its own __buffer__'s error: round 39)
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
        try:
            owner = _refusing(exporter, fmt, view.itemsize)
        except Exception:  # noqa: BLE001 - refused, as TypeError (round 40: it escaped)
            owner = _UNKNOWN  # (a lying attribute, a ctypes type that cannot be read)
        if owner is not None:
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


def _refusing(exporter: object, fmt: str, itemsize: int) -> object | None:
    """Walk from ``exporter`` (a buffer's ``memoryview.obj``) to the object whose memory
    it is, judging every object on the way (:func:`_link_refuses`) and the last by the
    format of the view (``fmt``, ``itemsize``); return the first that holds references,
    or :data:`_UNKNOWN` where the walk cannot go on, or None.

    The walk goes through views of views (casts, slices, a ``PickleBuffer``'s view),
    NumPy arrays over another's memory (``np.frombuffer``, ``as_strided``,
    ``__array_interface__``), ctypes' ``from_buffer``, and (3.12+) classes whose
    ``__buffer__`` returns a view of something else (adversary rounds 36 to 39: each of
    these over an object holding references passed as plain bytes, and the copy crashed
    it).  It reads NumPy's and ctypes' links through their C descriptors, not attributes
    a subclass may redefine (round 39).  A walk longer than :data:`_MAX_WALK` steps is
    refused (round 39: 129 nested ``from_buffer`` arrays got past the old bound).
    Memory taken by address (``from_address``, ``ctypes.cast``, an
    ``__array_interface__`` whose data is an address) is judged as what it says it is.
    A NumPy array over a ``__buffer__`` object cannot be judged (NumPy let go of the view
    it was given): refused.  Whatever the walk raises, the caller refuses the buffer."""
    numpy = ndarray = None
    seen: dict[int, bool] = {}  # (ctypes types judged in this check, by id)
    for _ in range(_MAX_WALK):
        kind = type(exporter)
        if numpy is None and (numpy := _numpy_links(kind)) is not None:
            ndarray = numpy[0]
        if kind is memoryview:
            exporter = cast(memoryview, exporter).obj
            continue
        if _link_refuses(exporter, numpy, seen):
            return exporter
        if issubclass(kind, _CData):
            objects = _CDATA_OBJECTS(exporter)
            if isinstance(objects, dict) and _FROM_BUFFER in objects:
                exporter = objects[_FROM_BUFFER]  # (a view of the memory it was made over)
            else:
                # A field or an element shares the memory of the object it is read
                # from, which is judged too (round 40: a union's plain field over its
                # py_object passed as plain bytes).  Conservative: a plain field of
                # a structure holding a pointer elsewhere is refused as well.
                exporter = _CDATA_BASE(exporter)
                if exporter is None:
                    return None  # (judged by its own format: _link_refuses)
        elif ndarray is not None and issubclass(kind, ndarray):
            base = numpy[1](exporter)  # type: ignore[index]  # (ndarray: numpy is set)
            if base is None:
                return exporter if _format_refuses(fmt, itemsize) else None
            exporter = base
        elif kind is _BUFFER_WRAPPER:
            # A Python class's __buffer__ (PEP 688): CPython's wrapper holds the
            # memoryview it returned (round 38).  Not found, it cannot be judged.
            views = [r for r in gc.get_referents(exporter) if type(r) is memoryview]
            if len(views) != 1:
                return _UNKNOWN
            exporter = views[0]
        elif _has_python_buffer(kind):
            # Reached as a NumPy base: np.frombuffer of it keeps the object and lets
            # go of the view it was given (round 39), and asking again may get
            # another answer (round 40): what the array is over cannot be told.
            return _UNKNOWN
        elif hasattr(exporter, "__array_interface__"):
            data = exporter.__array_interface__.get("data")
            if data is not None and not isinstance(data, tuple):
                exporter = data  # (an array made over this buffer object)
            elif getattr(exporter, "base", None) is not None:
                exporter = exporter.base  # type: ignore[attr-defined]  # (as_strided's)
            else:
                return exporter if _format_refuses(fmt, itemsize) else None
        else:
            return exporter if _format_refuses(fmt, itemsize) else None
    return _UNKNOWN


#: How many steps :func:`_refusing` takes before it refuses (no chain of views and
#: arrays that long is made by accident).
_MAX_WALK = 256


def _link_refuses(link: object, numpy: _NumpyLinks | None, seen: dict[int, bool]) -> bool:
    """Whether ``link``, an object on the way to a buffer's memory, holds references
    itself.  A ctypes object is judged by its type (:func:`_ctypes_holds_references`,
    its format included: a union or a packed structure exports opaque ``"B"`` items,
    and a field name may hold the ``:`` that ends names in the format,
    ``T{<i:p::<O:q:}``, which then hides a field's code from any reading of it:
    adversary round 35, both let a copy overwrite a ``py_object``).  A NumPy array is
    judged by its dtype (a byte cast of an object array says ``"B"``: round 38),
    wherever it is on the way (round 39: one in the middle was not)."""
    if issubclass(type(link), _CData):
        try:
            return _ctypes_holds_references(type(link), seen)
        except RecursionError:  # (nested too deep to walk: refused, round 36)
            return True
    if numpy is not None and issubclass(type(link), numpy[0]):
        return bool(numpy[2](link).hasobject)
    return False


#: ``numpy.ndarray`` and its ``base`` and ``dtype`` read through NumPy's own descriptors
#: (a subclass may redefine the attributes: adversary round 39).
_NumpyLinks = tuple[type, Callable[[object], object], Callable[[object], Any]]
_numpy_cache: list[_NumpyLinks] = []


def _numpy_links(kind: type) -> _NumpyLinks | None:
    """:data:`_NumpyLinks` once NumPy is imported (by anyone), else None; also found
    through ``kind`` if it is an array type (round 40: NumPy removed from
    ``sys.modules`` hid every array)."""
    if _numpy_cache:
        return _numpy_cache[0]
    numpy = sys.modules.get("numpy")
    ndarray = getattr(numpy, "ndarray", None)
    if not isinstance(ndarray, type):
        found = [k for k in _TYPE_MRO(kind) if k.__module__ == "numpy" and k.__name__ == "ndarray"]
        if not found:
            return None
        ndarray = found[-1]
    _numpy_cache.append((ndarray, vars(ndarray)["base"].__get__, vars(ndarray)["dtype"].__get__))
    return _numpy_cache[0]


def _format_refuses(fmt: str, itemsize: int) -> bool:
    """Whether items of the PEP 3118 format ``fmt`` may hold references: an object or
    pointer code, a name that cannot be told apart from the codes (NumPy refuses ``:``
    in field names), or an opaque ``"B"`` item wider than a byte (not ctypes')."""
    if fmt == "B":
        return itemsize != 1
    codes = _FIELD_NAMES.sub("", fmt)
    return ":" in codes or _REFERENCE_CODES.search(codes) is not None


def _has_python_buffer(kind: type) -> bool:
    """Whether instances of ``kind`` export their buffer through a ``__buffer__`` method
    written in Python (PEP 688, 3.12+), not a built-in's slot."""
    method = getattr(kind, "__buffer__", None)
    return method is not None and not isinstance(method, types.WrapperDescriptorType)


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

#: What :func:`_refusing` returns for memory it cannot find the owner of.
_UNKNOWN = object()

#: Where ctypes' ``from_buffer`` keeps (a view of) the object it was made over.
_FROM_BUFFER = "ffffffff"


def _describe(owner: object, fmt: str) -> str:
    """What a refused buffer is, for the error (see :func:`_refusing`)."""
    if owner is _UNKNOWN:
        return (
            "buffers whose memory cannot be traced to its owner (a NumPy array over a "
            "__buffer__ object, a way longer than 256 views, a check that failed) may"
        )
    if issubclass(type(owner), _CData):
        return f"ctypes {type(owner).__name__} objects"
    numpy = _numpy_links(type(owner))
    if numpy is not None and issubclass(type(owner), numpy[0]):
        dtype = numpy[2](owner)
        if dtype.hasobject:
            return f"NumPy arrays of dtype {dtype}, also as bytes,"
    return f"buffers of format {fmt!r}"


#: The base class of every ctypes instance.
_CData: type = ctypes.c_int.__mro__[-2]
#: An instance's ``_objects`` read through ctypes' own descriptor (a subclass may shadow
#: the attribute: adversary round 39).
_CDATA_OBJECTS: Callable[[object], object] = vars(_CData)["_objects"].__get__
#: The object whose memory a field or element shares (ctypes' own descriptor).
_CDATA_BASE: Callable[[object], object] = vars(_CData)["_b_base_"].__get__
#: A class's own ``__mro__`` and namespace (a metaclass may redefine both: round 40).
_TYPE_MRO: Callable[[type], tuple[type, ...]] = vars(type)["__mro__"].__get__
_TYPE_DICT: Callable[[type], Any] = vars(type)["__dict__"].__get__
#: The type of a structure's or union's field descriptors, which ctypes made as it laid
#: the type out (their ``repr`` names the field's type then).
_CFIELD = type(type("_Probe", (ctypes.Structure,), {"_fields_": [("x", ctypes.c_int)]}).x)  # type: ignore[attr-defined]


def _ctypes_holds_references(ctype: type, seen: dict[int, bool] | None = None) -> bool:
    """Whether instances of the ctypes type ``ctype`` hold references: pointers,
    ``py_object``, function pointers, at any depth of arrays, structures and unions
    (their base classes' fields included).

    Two readings, and either refuses.  What ctypes recorded as it laid the type out,
    which later changes to the class cannot touch (:func:`_laid_out_with_pointers`).
    And the class as it reads now: its ``_fields_`` through its MRO, each checked
    against the field descriptor ctypes made for it, since the record misses base
    classes' fields and subclasses of the simple pointer types.  (Adversary rounds 36
    and 40 to 42: ``_fields_`` cleared, replaced or deleted, ``_type_`` reassigned, a
    metaclass redefining ``__mro__``, each let a ``py_object`` through.)  A type is
    judged once per check (``seen``, by identity) and its verdict kept while it lives
    (rounds 40 and 41: a union of unions 22 deep, a wide structure under 30 array
    levels, took seconds on every copy)."""
    key = id(ctype)  # (by identity: a metaclass may define == and hash: round 42)
    kept = _VERDICTS.get(key)
    if kept is not None and kept[0]() is ctype:
        return kept[1]
    if seen is None:
        seen = {}
    verdict = seen.get(key)
    if verdict is None:
        seen[key] = True  # (a type that contains itself is refused)
        verdict = _laid_out_with_pointers(ctype) or _judge_ctype(ctype, seen)
        seen[key] = verdict
        _keep_verdict(ctype, verdict)
    return verdict


#: Verdicts of :func:`_ctypes_holds_references` by the type's id, with a weak reference
#: to the type (an entry goes when its type does).  A type's layout cannot change once
#: ctypes made it, so neither can the right verdict.
_VERDICTS: dict[int, tuple[weakref.ref[type], bool]] = {}


def _keep_verdict(ctype: type, verdict: bool) -> None:
    key = id(ctype)

    def forget(ref: weakref.ref[type]) -> None:
        if _VERDICTS.get(key, (None, False))[0] is ref:
            del _VERDICTS[key]

    try:
        _VERDICTS[key] = (weakref.ref(ctype, forget), verdict)
    except TypeError:  # pragma: no cover - every class can be weakly referenced
        pass


def _laid_out_with_pointers(ctype: type) -> bool:
    """What ctypes recorded for ``ctype`` as it laid it out: its flag for "contains
    pointers" (what makes pickling such an object fail) and its buffer format, read
    from an empty array of it, a type ctypes makes from that record alone.  No instance
    of ``ctype`` is made (its ``__del__`` ran on one: round 42) and nothing is copied
    (a structure's bytes were, on the event loop's thread), whatever its size."""
    if not issubclass(ctype, _CTYPES_KINDS):
        return True  # pointers, function pointers, and anything not known to be plain
    empty = _ARRAY_NEW(
        _ARRAY_TYPE("_anymmap_probe", (ctypes.Array,), {"_type_": ctype, "_length_": 0})
    )
    try:
        _CDATA_REDUCE(empty)
    except ValueError:  # "ctypes objects containing pointers cannot be pickled"
        return True
    with memoryview(cast(Any, empty)) as own:  # (its items' format: a union's, a packed one's "B")
        return _format_refuses(own.format, 1)


#: The ctypes types an array can be made of, and how to make one (ctypes' own).
_CTYPES_KINDS = (ctypes.Structure, ctypes.Union, ctypes.Array, ctypes._SimpleCData)
_ARRAY_TYPE: type = type(ctypes.Array)
_ARRAY_NEW: Callable[[type], object] = vars(ctypes.Array)["__new__"]
_CDATA_REDUCE: Callable[[object], object] = vars(_CData)["__reduce__"]


def _judge_ctype(ctype: type, seen: dict[int, bool]) -> bool:
    """The class as it reads now (see :func:`_ctypes_holds_references`)."""
    if issubclass(ctype, ctypes.Array):
        return _ctypes_holds_references(cast(type, ctype._type_), seen)
    if issubclass(ctype, (ctypes.Structure, ctypes.Union)):
        mro = _TYPE_MRO(ctype)
        for at, klass in enumerate(mro):
            namespace = _TYPE_DICT(klass)
            laid_out = {id(v) for v in namespace.values() if type(v) is _CFIELD}
            for base in mro[at + 1 :]:  # (an alias in a subclass of a base's field)
                laid_out -= {id(v) for v in _TYPE_DICT(base).values() if type(v) is _CFIELD}
            fields = namespace.get("_fields_", ())
            if laid_out and not fields:
                return True  # (its _fields_ deleted or emptied since: round 41)
            entries = [(fields[i][0], fields[i][1]) for i in range(len(fields))]  # (by
            # index, as ctypes reads it, not by iter())
            names = collections.Counter(name for name, _ in entries)
            for name, field_type in entries:
                described = namespace.get(name)
                if type(described) is not _CFIELD or _ctypes_holds_references(field_type, seen):
                    return True
                if names[name] == 1 and f"type={field_type.__name__}," not in repr(described):
                    return True  # (a repeated name, NumPy's padding "", keeps its last)
            named = {id(namespace[name]) for name in names}
            # Every field ctypes laid out is named in _fields_ (an alias of one is the
            # same descriptor: round 42), but an _anonymous_ member's fields, laid out
            # in the class too.
            if not (laid_out <= named or "_anonymous_" in namespace):
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
