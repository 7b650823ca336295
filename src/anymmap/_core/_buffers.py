"""Addresses of Python buffers, for copies that run without the GIL."""

from __future__ import annotations

import ctypes
import sys
from typing import TypeAlias, final

if sys.version_info >= (3, 12):
    from collections.abc import Buffer

    #: What the copies accept: any object with the buffer protocol (``bytes``,
    #: ``bytearray``, ``memoryview``, ``array``, NumPy arrays, ctypes arrays, ...).  Before
    #: Python 3.12 type checkers cannot name such objects (NumPy's stubs give arrays
    #: ``__buffer__`` on 3.12+ only), so there it is ``object``, checked at run time.
    BufferLike: TypeAlias = Buffer
else:
    BufferLike: TypeAlias = object

PyBUF_SIMPLE = 0
PyBUF_WRITABLE = 1


class _PyBuffer(ctypes.Structure):
    # Py_buffer from Include/pybuffer.h; ``obj`` is a void pointer so that ctypes never
    # touches its reference count (PyBuffer_Release does).
    _fields_ = (
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    )


# SAFETY: pythonapi is a PyDLL: these calls keep the GIL and raise the Python error they set.
_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = (ctypes.POINTER(_PyBuffer),)
_release_buffer.restype = None
_bytes_from_size = ctypes.pythonapi.PyBytes_FromStringAndSize
_bytes_from_size.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
_bytes_from_size.restype = ctypes.py_object
_bytes_as_string = ctypes.pythonapi.PyBytes_AsString
_bytes_as_string.argtypes = (ctypes.py_object,)
_bytes_as_string.restype = ctypes.c_void_p


@final
class PinnedBuffer:
    """Hold an export of a buffer for a ``with`` block and give its contiguous memory's
    ``address`` and ``nbytes``.

    While the block runs, the object cannot be resized or freed, so the address stays valid
    for a copy in another thread.  (A class, not a generator context manager: this runs on
    every fault-safe copy and costs a fifth as much.)
    """

    __slots__ = ("_view", "address", "nbytes")

    def __init__(self, obj: object, *, writable: bool) -> None:
        view = _PyBuffer()
        _get_buffer(obj, view, PyBUF_WRITABLE if writable else PyBUF_SIMPLE)
        self._view = view
        self.address: int = view.buf or 0
        self.nbytes: int = view.len

    def __enter__(self) -> PinnedBuffer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        _release_buffer(self._view)


def new_bytes(size: int) -> tuple[bytes, int]:
    """Return a new ``bytes`` of ``size`` uninitialised bytes and the address of its data.

    The caller must fill all of it before anyone else sees the object.
    """
    # SAFETY: a bytes object from PyBytes_FromStringAndSize(NULL, n) is meant to be filled
    # in place before it is shared (the C API's documented way to build one); nothing
    # else holds a reference yet and its hash is not computed.
    data: bytes = _bytes_from_size(None, size)
    return data, _bytes_as_string(data) or 0
