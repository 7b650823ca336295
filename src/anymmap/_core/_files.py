"""Opening what a map maps: paths, descriptors and objects with ``fileno()``, safely.

Nothing here blocks: a path is opened with ``O_NONBLOCK`` (a FIFO would wait for a writer),
then anything that is not a regular file or a block device is refused by name.  A map
keeps the descriptor it opened (or duplicated) in a :class:`FileRef`, which closes it once
nothing uses it any more.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Literal, NamedTuple, Protocol, get_args

from .._errors import UnmappableFileError
from .._sys import DISARMED, ON_DROP, keep_until_dropped, let_go, os_impl, signals_held
from .._sys._interface import PathArg as PathArg  # a path anymmap accepts
from ._checks import as_int

Mode = Literal["rw", "r", "copy"]


class HasFileno(Protocol):
    """An object with a ``fileno()`` method (an open file, a socket)."""

    def fileno(self) -> int: ...


#: What a map accepts as its file: a path, a descriptor, or an object with ``fileno()``.
FileArg = PathArg | int | HasFileno
#: What a call that takes a descriptor accepts: the number, or an object with ``fileno()``.
FdArg = int | HasFileno
MODES: tuple[str, ...] = get_args(Mode)
#: What ``os_impl.file_kind`` says of the files that can be mapped.
MAPPABLE_KINDS = ("regular file", "block device")


def check_mappable(fd: int, name: str, kinds: tuple[str, ...] = MAPPABLE_KINDS) -> None:
    """:raises IsADirectoryError: for a directory (as ``open()`` for writing does)
    :raises UnmappableFileError: unless ``fd`` is one of ``kinds`` (by default a regular
        file or a block device), on a file system whose files can be mapped
    """
    kind = os_impl.file_kind(fd)
    if kind == "directory":
        raise IsADirectoryError(errno.EISDIR, f"cannot map {name}: it is a directory")
    mappable = _plural(kinds)
    if kind not in kinds:
        raise UnmappableFileError(name, kind, mappable)
    where = os_impl.UNMAPPABLE_FILE_SYSTEMS.get(os_impl.file_system(fd))
    if where is not None:
        raise UnmappableFileError(name, f"file in {where}", mappable)


def kind_at(path: str, *, follow: bool) -> str | None:
    """What the name ``path`` is now (a "regular file", a "directory", ...; a link is a
    "symbolic link" unless ``follow``), None if nothing (or a dangling link followed)."""
    try:
        return os_impl.path_kind(path, follow=follow)
    except FileNotFoundError:
        return None


def refused_open(name: str, path: PathArg, mappable: tuple[str, ...] = MAPPABLE_KINDS) -> OSError:
    """The error for ``open(2)`` failing with ``ENXIO`` on ``path``: a socket, or a file
    that cannot be opened by its name (``/proc/self/fd/N`` of ``memfd_secret`` memory, a
    device with nothing behind it)."""
    kind = os_impl.path_kind(path)
    if kind in mappable:
        kind = f"{kind} that cannot be opened by its name (no such device or address)"
    return UnmappableFileError(name, kind, _plural(mappable))


def _plural(kinds: tuple[str, ...]) -> str:
    """What the error says can be mapped: "regular files and block devices"."""
    return " and ".join(f"{each}s" for each in kinds)


def adopt(open_it: Callable[[], int], name: str, *, callers: bool = False) -> FileRef:
    """Open a descriptor with ``open_it()`` and hand it to a :class:`FileRef` at once:
    signals are held in between (a Ctrl-C there would leak the descriptor).
    ``callers``: ``open_it`` duplicates the caller's descriptor (see
    :attr:`FileRef.callers`)."""
    with signals_held():
        ref = FileRef(open_it(), name)
    ref.callers = callers
    return ref


class _Closer:
    """What closes a :class:`FileRef`'s descriptor when it is dropped: its ``__del__`` is
    C code calling ``_on_drop``, ``partial(os.close, fd)`` while armed (a
    ``weakref.finalize`` ran Python frames first, and a Ctrl-C handled as one began
    left the descriptor open for good)."""

    __slots__ = ("_on_drop",)
    __del__ = ON_DROP

    def __init__(self, fd: int) -> None:
        self._on_drop: Callable[[], object] = partial(os_impl.close, fd)


class FileRef:
    """A file descriptor a map owns, with what the file was called (``label_of``).

    It is closed by :meth:`close`, or when the last object holding it goes away (not by
    an exit handler: the map may still be used then, by an atexit handler registered
    before anymmap was imported or a daemon thread, and a descriptor closed under an
    open map is a number the next ``open()`` reuses; the OS closes it at exit).
    """

    __slots__ = ("_closer", "_kept", "callers", "fd", "name")

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        #: Whether the descriptor is a ``dup`` of the caller's own open file, whose file
        #: offset and OFD locks it shares: nothing may then move the offset (``lseek``:
        #: the caller's own reads and writes would go elsewhere; adversary round 55), and
        #: the size is read without a turn (see ``reading_size``).
        self.callers = False
        self._closer = _Closer(fd)
        # (Closed only once this object is garbage, after every finalizer that may still
        # use it: see keep_until_dropped.)
        self._kept = keep_until_dropped(self._closer)

    def close(self) -> None:
        # Disarmed, then closed, with no point between where a signal's handler could
        # raise (held for CPython 3.10, which handles signals between any two
        # instructions).  Cut short before the block, the drop closes it.
        with signals_held():
            closer = self._closer
            close, closer._on_drop = closer._on_drop, DISARMED
            close()
            let_go(self._kept)

    @property
    def closed(self) -> bool:
        return self._closer._on_drop is DISARMED


PATH_TYPES = (str, bytes, os.PathLike)


def label_of(file: object) -> str:
    """What ``file`` is called: a path as a str, ``"fd 5"``, or a file object's name."""
    if isinstance(file, PATH_TYPES):
        return os.fsdecode(file)
    if isinstance(file, int):
        return f"fd {file}"
    name = getattr(file, "name", None)
    return name if isinstance(name, str) else repr(file)


def name_of(file: object) -> str:
    """How messages name ``file``."""
    if isinstance(file, PATH_TYPES):
        return repr(os.fsdecode(file))
    if isinstance(file, int):
        return f"file descriptor {file}"
    return repr(file)


def as_fd(file: object, *, paths: bool = True) -> int:
    """The descriptor number of an int-like or of an object with ``fileno()``
    (``paths``: the caller takes paths too, handled before; the error says so).

    :raises TypeError: for anything else (``bool`` included)
    :raises OSError: ``EBADF`` for a number no descriptor can have
    """
    fileno = getattr(file, "fileno", None)
    if fileno is not None and not isinstance(file, int):
        file = fileno()
    if isinstance(file, bool) or not hasattr(type(file), "__index__"):
        what = (
            "file must be a path, a file descriptor" if paths else "fd must be a file descriptor"
        )
        raise TypeError(f"{what} or have fileno(), not {type(file).__name__}")
    fd = as_int(file, "file descriptor")
    if not 0 <= fd < 1 << 31:
        raise OSError(errno.EBADF, f"{fd} is not a file descriptor")
    return fd


class PlainFile(NamedTuple):
    """A file argument with the caller's own code already run (see :func:`plain_file`):
    a path as ``str``/``bytes`` or a descriptor number, and how it is called."""

    file: str | bytes | int
    label: str
    name: str


def plain_file(file: object) -> PlainFile:
    """``file`` (as :func:`open_fd` takes it) with the code it may carry run now, on the
    calling thread: a ``PathLike``'s ``__fspath__``, a ``fileno()``, an ``__index__``.
    For a call that opens the file later under a map's lock: such code that used the
    map waited for ever for the lock its own call held (adversary round 50).

    :raises TypeError: if ``file`` is none of those
    """
    if isinstance(file, PATH_TYPES):
        path = os.fspath(file)  # (once: each call runs the caller's code again)
        return PlainFile(path, label_of(path), name_of(path))
    return PlainFile(as_fd(file), label_of(file), name_of(file))


def open_fd(
    file: object,
    mode: Mode,
    label: str | None = None,
    *,
    read_only: str = "mode='r' (or mode='copy' for private writes)",
) -> FileRef:
    """Open what ``file`` names (a path, an fd, or an object with ``fileno()``) for a map
    of ``mode``; return the descriptor, which the map owns (a given fd is duplicated), as
    a :class:`FileRef` called ``label`` (by default :func:`label_of` the file).  (Its
    size is the caller's to read, in a turn: see ``reading_size``.)  ``read_only``: how
    the caller's API asks for a map that does not write, for the errors' advice.

    Never blocks: a path is opened with ``O_NONBLOCK`` (a FIFO would wait for a writer),
    and anything that is not a regular file or a block device is refused.

    :raises UnmappableFileError: for a FIFO, socket, character device or /proc file
    :raises PermissionError: if the file or fd does not allow the access ``mode`` needs
    """
    writable = mode == "rw"
    if isinstance(file, PlainFile):
        label, name, file = label or file.label, file.name, file.file
    else:
        name = name_of(file)
        label = label_of(file) if label is None else label
    if isinstance(file, PATH_TYPES):
        path: PathArg = file
        try:
            ref = adopt(lambda: os_impl.open_nonblocking(path, writable), label)
        except PermissionError as exc:
            if not writable:
                raise
            raise PermissionError(
                exc.errno,
                f"cannot open {name} for writing ({exc.strerror}); to map it for reading "
                f"only, pass {read_only}",
            ) from None
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # a socket, which open(2) refuses this way
                raise refused_open(name, file) from None
            raise
    else:
        number = as_fd(file)
        ref = adopt(lambda: os_impl.dup(number), label, callers=True)
    fd = ref.fd
    try:
        check_mappable(fd, name)
        readable, can_write = os_impl.access_mode(fd)
        if not readable or (writable and not can_write):
            need = "reading and writing" if writable else "reading"
            hint = (
                f"; to map it for reading only, pass {read_only}" if writable and readable else ""
            )
            raise PermissionError(errno.EACCES, f"{name} is not open for {need}{hint}")
        if not ref.callers:
            # (Ours only: O_NONBLOCK is a flag of the open file description, which a
            # duplicate shares with the caller's descriptor: adversary round 64, a map of
            # the caller's non-blocking descriptor made it blocking.)
            os_impl.set_blocking(fd)
        return ref
    except BaseException:
        ref.close()
        raise


def anchored(path: str) -> str:
    """``path`` made absolute against the current directory now (another thread may
    chdir while a file is made), without resolving ``..`` as ``os.path.abspath`` does:
    through a symbolic link ``link/../f`` is not ``f``, and the kernel decides which
    ``..`` is meant at each call (adversary round 26).

    :raises FileNotFoundError: for the empty path, which names no file (as ``open("")``
        says; anchored, it named the current directory: adversary round 46)
    """
    if not path:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


def remove_if_same(path: str, identity: tuple[int, int]) -> None:
    """Unlink ``path`` if it still names the file ``identity`` (a peer may have put
    another file there: never delete someone else's); gone already is fine.

    Not "check, then unlink": a peer's ``rename`` over the path landing between the two
    had its file deleted (adversary round 24: a rename over a file being allocated waits
    for the allocation, and so landed right after the check, one run in ten).  The path
    is first renamed aside to a fresh name in its directory, which takes whatever it
    names at that instant; that is unlinked if it is ours, else linked back (``link``
    never replaces: a file put at the path meanwhile stays, and the peer's then keeps
    the aside name rather than being lost).  A peer's file is away from its path for
    the microseconds between the two calls only, and only if it arrived after the
    check that comes first.
    """
    with signals_held():  # (a second Ctrl-C must not stop it half-way)
        aside = os.path.join(os.path.dirname(path), f".anymmap-{secrets.token_hex(8)}.gone")
        try:
            if os_impl.path_identity(path) != identity:
                return  # (not ours, or gone: the usual case of a replaced path moves nothing)
            os_impl.rename(path, aside)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:  # (a path within bytes of PATH_MAX, where
                with suppress(OSError):  # the aside name is too long: check, then unlink)
                    os_impl.unlink(path)
            return  # (else gone meanwhile, or the directory is not ours)
        try:
            if os_impl.path_identity(aside) == identity:
                os_impl.unlink(aside)
                return
            try:
                os_impl.link(aside, path)
            except FileExistsError:  # pragma: no cover - the path was taken again meanwhile
                return
            except OSError:  # pragma: no cover - no hard links here (vfat, some FUSE)
                os_impl.rename(aside, path)
                return
            os_impl.unlink(aside)
        except OSError:  # pragma: no cover - the directory changed under us
            pass
