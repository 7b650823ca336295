"""What the async maps and their blocking twins share: the core and the cheap queries."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from functools import partial
from typing import ClassVar, Generic, TypeVar

from .._errors import Uncopyable
from .._sys import DISARMED, ON_DROP
from ._file import FileCore
from ._files import Mode
from ._map import MapCore
from ._region import Region, RegionCore

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self

CoreT = TypeVar("CoreT", bound=MapCore)


class MapHandle(Uncopyable, Generic[CoreT]):
    """Base of every public map type; the subclasses add a lock and the operations.

    Maps are made by their constructors (``await AnonymousMmap.new(...)``), which build
    the core first and then call :meth:`_create`; calling the class directly is refused
    with a message that names them (``_constructors``).
    """

    # (__dict__ for _on_drop, whose class attribute below is its value until it is set.)
    __slots__ = ("__dict__", "__weakref__", "_core")

    _core: CoreT

    #: What dropping the handle runs (see ON_DROP in anymmap._sys._signals): while the map
    #: is open, the warning that it was left unclosed; nothing once it is closed.
    _on_drop: Callable[[], object] = DISARMED
    __del__ = ON_DROP

    #: How to make one, for the error that calling the class directly raises.
    _constructors: ClassVar[str] = ""

    def __init__(self, *args: object, **kwargs: object) -> None:
        name = type(self).__name__
        raise TypeError(f"{name} has no public constructor; use {self._constructors}")

    @classmethod
    def _create(cls, core: CoreT) -> Self:
        handle = cls.__new__(cls)
        handle._core = core
        handle._on_drop = partial(_warn_unclosed, cls.__name__, core)
        handle._setup()
        return handle

    def _closed(self) -> None:
        """Note that the map was closed through the handle (dropping it then runs no
        Python code)."""
        self._on_drop = DISARMED

    def _setup(self) -> None:
        """Set the subclass's own fields (there is no ``__init__`` to do it)."""

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__} {self._core.describe()}>"

    def __len__(self) -> int:
        """The length of the map in bytes.

        :raises ClosedMapError: if the map is closed
        """
        return self._open_core().length

    def __bool__(self) -> bool:
        """Always True, open or closed, as for a file object (without it, truth would call
        ``len()``, which raises once the map is closed): test :attr:`closed` instead."""
        return True

    def is_empty(self) -> bool:
        """Whether the map has zero length: always False, as maps of 0 bytes are refused.

        :raises ClosedMapError: if the map is closed
        """
        return self._open_core().length == 0

    @property
    def closed(self) -> bool:
        """Whether the map has been closed."""
        return self._core.closed

    def as_ptr(self) -> int:
        """The address of byte 0 of the map.

        Unsafe: the address is only valid while the map is open and not resized; writing
        through it bypasses the lock and the read-only check.
        """
        core = self._open_core()
        core.exposed = True  # a copy may now be given memory at that address
        return core.addr

    def _open_core(self) -> CoreT:
        core = self._core
        if not core.usable:
            core.check_open()
        return core


def _warn_unclosed(name: str, core: MapCore) -> None:
    # As an unclosed file does: the memory is released all the same (when every view of
    # it is gone), but leaving it to the collector is worth a warning.
    if not core.closed:
        warnings.warn(
            f"unclosed {name} ({core.describe()}); close it, or use it as a context manager",
            ResourceWarning,  # (no source: the record would keep the map alive)
            stacklevel=2,
        )


class FileMapInfo:
    """The read-only facts of a file map, for both ``MmapRaw`` twins."""

    __slots__ = ()

    _core: FileCore

    @property
    def mode(self) -> Mode:
        """The mode the file was mapped with: ``"rw"``, ``"r"`` or ``"copy"``."""
        return self._core.mode

    @property
    def offset(self) -> int:
        """The offset in the file of byte 0 of the map."""
        return self._core.file_offset


class RegionInfo:
    """The queries and ownership switches of a region, for both ``MmapRegion`` twins."""

    __slots__ = ()

    _core: RegionCore

    def _open_region(self) -> RegionCore:
        core = self._core
        if not core.usable:
            core.check_open()
        return core

    @property
    def path(self) -> str | None:
        """The path the region was created or attached with (also after
        ``FileCleanup.AUTO`` unlinked it); None if attached by descriptor."""
        return self._core.path

    @property
    def max_size(self) -> int:
        """How far the region can grow: the address space it reserved."""
        return self._core.max_size

    def fileno(self) -> int:
        """The region's own descriptor of the file (to pass to a peer)."""
        return self._open_region().fd

    def take_ownership(self) -> None:
        """Delete the file when this region closes (a region created or attached by path;
        it is deleted only if the path still names the region's file then).

        :raises ValueError: for a region attached by descriptor, which has no path
        :raises RuntimeError: in a thread still running once the interpreter's exit has
            deleted the files regions owned (a daemon thread)
        """
        self._open_region().set_owner(True)

    def release_ownership(self) -> None:
        """Do not delete the file when this region closes."""
        self._open_region().set_owner(False)

    @property
    def owns_file(self) -> bool:
        """Whether closing this region deletes its file (never in a forked child: the
        file belongs to the process that created it, until :meth:`take_ownership`)."""
        return self._core.owner

    def region(self) -> Region:
        """A :class:`~anymmap.Region` of the current length: stale only once the region
        closes."""
        return self._open_region().region()
