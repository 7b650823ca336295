"""Lifetimes: how mapped memory outlives every view of it, and borrows end cleanly.

The promise: **a view can never outlive its memory**, whatever the user does with it, and
a map that is never closed is unmapped once it and every view of it are garbage.

The mechanism, in one page:

1. **The exporter.**  A :class:`Memory` places a ctypes array of exactly its length over
   the mapped address range (``from_address``).  Every memoryview anymmap hands out or uses
   is taken from that array, so every live view holds a reference to it (through the
   view's managed buffer).  The array's ``__del__`` (C code: ``munmap`` through ctypes)
   unmaps the range when the array dies, which is only when no view is left.  An
   explicit close first *retires* the memory: it counts the references to the array
   against the count it had when nothing else used it (``sys.getrefcount``); if any view
   is still alive it refuses with :class:`~anymmap.BorrowError` and the memory stays
   mapped.

2. **Borrows.**  ``as_slice`` / ``as_mut_slice`` hand out a view taken from a *base* view
   through a ``PickleBuffer``, so that whatever is built on the user's view (a slice, a
   NumPy array) holds an export of the base, and whatever takes its own export of the
   user's view (``PickleBuffer(view)``, ``struct.iter_unpack``, ``re.finditer``) holds an
   export of that view.  When the borrow ends both are released; if either cannot be
   (``BufferError``: something built on it is alive), it is *parked*.  Until then both
   live in a :class:`Loan`, whose finalizer ends the borrow if nothing else does (see
   it: a traceback kept in a reference cycle must not let the collector clear them).

3. **Parking.**  Parked views go into a module-level registry, which is always reachable:
   the memory under them stays mapped (the views hold the array), close and resize refuse,
   and the cyclic garbage collector can never clear a managed buffer that still has
   exports (CPython's ``mbuf_clear`` releases the buffer regardless, and the next access
   through a surviving view would crash).  After each collection, and before each retire,
   parked views whose exports are gone are released, oldest first (a user view before its
   base).  Each parked entry remembers the range it covers, so a map made of several
   pieces can refuse to unmap just the pieces an escaped view still covers
   (:meth:`Memory.escaped_in`).

4. **Fork.**  After ``Advice.DONTFORK`` a child process does not inherit the memory; the
   array's drop then must not unmap whatever the child has put at that address since, so
   the drop of a map with a ``fork_guard`` (the pid recorded with the advice) is a Python
   function that checks it (:meth:`Memory.guard_changed` re-arms the drop).

5. **Cycles.**  The cyclic collector runs the finalizers of a cycle's objects in no set
   order, so the array, garbage with the map, could unmap the memory before a user's
   ``__del__`` in the same cycle used the map (SIGSEGV: adversary round 51).  The array
   is kept reachable from outside (``keep_until_dropped``) until its :class:`Memory`
   dies: the collector then does not finalize it with the cycle, and it dies when the
   cycle's references are cleared, after every finalizer (or never, if a finalizer
   resurrects the map).  Retiring lets it go.

Why not ``__buffer__`` / ``__release_buffer__`` (PEP 688, Python 3.12): it would let a
Python object count its exports exactly, without reading reference counts, but anymmap
supports Python 3.10 and 3.11, where only this mechanism works; two mechanisms would mean
two sets of lifetime bugs.  ``sys.getrefcount`` on an object only anymmap can reach is
exact on every supported CPython.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import threading
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from pickle import PickleBuffer
from typing import Any

from .._errors import BorrowError
from .._sys import DISARMED, ON_DROP, is_kept, keep_until_dropped, let_go, os_impl
from ._forks import renew_in_child


def _exporter_type(length: int) -> type[ctypes.Array[ctypes.c_ubyte]]:
    # An array type of exactly `length` bytes, made fresh: `c_ubyte * n` would be cached by
    # ctypes forever, one type per length ever mapped.  About 10 µs per map or resize.
    # Its __del__ is C code calling the instance's `_on_drop` (see Memory); one never
    # armed drops quietly.
    return type(
        "MappedBytes",
        (ctypes.Array,),
        {"_type_": ctypes.c_ubyte, "_length_": length, "__del__": ON_DROP, "_on_drop": DISARMED},
    )


def _unmap_if_ours(addr: int, length: int, fork_guard: list[int]) -> None:
    # The drop of a map advised DONTFORK: in a child of a fork the range is not ours, and
    # unmapping would remove whatever the child has put at that address since.  Checked
    # as it runs: a fork that skips Python's hooks (libc's fork() called through ctypes)
    # must not unmap either.
    # (A Python frame: a signal's handler that raises as it begins skips the unmap, which
    # the C drop of every other map cannot.)
    if fork_guard and fork_guard[0] != os.getpid():
        return
    os_impl.munmap_quietly(addr, length)


class Memory:
    """``length`` bytes of mapped memory at ``addr`` and every view of it.

    ``unmap`` (``(address, length)``, the whole mapping behind it; default: the same
    range) is unmapped once, when the last view is gone, unless :meth:`retire` ran first
    (the owner then unmaps or remaps it itself).  By C code: the array's ``__del__`` calls
    ``munmap`` through ctypes with no Python frame, where a signal's handler could raise
    and the collector would drop the exception and the unmap with it (a Ctrl-C storm over
    create/close loops left 60 to 70 whole-file mappings in 5 s when this was a
    ``weakref.finalize``).
    """

    __slots__ = (
        "__weakref__",
        "_baseline",
        "_exporter",
        "_fork_guard",
        "_kept",
        "_unmap",
        "addr",
        "files",
        "length",
        "twinned",
        "view",
    )

    def __init__(
        self,
        addr: int,
        length: int,
        fork_guard: list[int],
        unmap: tuple[int, int] | None = None,
    ) -> None:
        self.addr = addr
        self.length = length
        #: Whether a file it maps is mapped by another ``Memory`` too (see _copier.py).
        self.twinned = False
        #: The files (identities) it shows now, if its owner keeps count (a sparse map,
        #: whose windows come and go); None: every file it was registered under.
        self.files: frozenset[tuple[int, int]] | None = None
        # SAFETY: the array describes exactly [addr, addr + length), which stays mapped for
        # as long as the array lives (its drop unmaps it only when it dies).
        self._unmap = unmap or (addr, length)
        self._fork_guard = fork_guard
        drop = self._drop()
        exporter: Any = _exporter_type(length).from_address(addr)
        exporter._on_drop = drop  # (no call between: armed as it is made)
        self._exporter = exporter
        del exporter
        # References now: self._exporter and getrefcount's argument.  Each live managed
        # buffer of it adds one, as do self.view and the keeper (see _exports).
        self._baseline = sys.getrefcount(self._exporter)
        # (Unmapped only once this object is garbage, after every finalizer that may
        # still reach it: see keep_until_dropped.)
        self._kept = keep_until_dropped(self._exporter)
        #: The whole range as bytes, for copies on the calling thread (slices of it are
        #: temporaries; nothing keeps one).
        self.view = memoryview(self._exporter).cast("B")

    def _drop(self) -> Callable[[], object]:
        """What the array's drop calls: ``munmap`` itself, or, for a map advised
        DONTFORK, :func:`_unmap_if_ours`."""
        if self._fork_guard:
            return partial(_unmap_if_ours, *self._unmap, self._fork_guard)
        return partial(os_impl.munmap_quietly, *self._unmap)

    def guard_changed(self) -> None:
        """Re-arm the drop after the map's ``fork_guard`` changed."""
        exporter: Any = getattr(self, "_exporter", None)
        if exporter is not None:
            exporter._on_drop = self._drop()

    def array(self) -> object:
        """The array over the memory (unretired), for a weak reference that outlives
        this object's in cyclic garbage (see ``_copier._WindowRef``)."""
        return self._exporter

    @property
    def retired(self) -> bool:
        """Whether :meth:`retire` gave the memory up."""
        return not hasattr(self, "_exporter")

    def check_unborrowed(self) -> None:
        """Check that :meth:`retire` would succeed, changing nothing (``self.view`` stays
        usable: an interrupted check leaves the memory as it was).

        :raises BorrowError: if a view of it is still alive
        """
        if self._exports():
            gc.collect()  # a view kept alive only by a reference cycle
            release_escaped()
        leaked = self._exports()
        if leaked:
            raise BorrowError(
                f"{leaked} buffer(s) exported from this map are still alive; drop every "
                "view, slice or array taken from a borrow first"
            )

    def _exports(self) -> int:
        """How many buffers exported from the memory are alive: the references to the
        array beyond the baseline, ``self.view`` and the keeper's (which lets go when
        this object is garbage, while finalizers may still use it)."""
        return sys.getrefcount(self._exporter) - self._baseline - 1 - is_kept(self._kept)

    def retire(self) -> None:
        """Give up the memory before it is unmapped or moved; the object is unusable after
        (the caller holds the map exclusively: no other view appears meanwhile).

        :raises BorrowError: if a view of it is still alive (it then stays usable)
        """
        self.check_unborrowed()
        self.view.release()
        self._exporter._on_drop = DISARMED
        let_go(self._kept)
        del self._exporter

    def forget(self) -> None:
        """Never unmap (the memory is not ours: a child after DONTFORK)."""
        self._exporter._on_drop = DISARMED

    # -- borrows ------------------------------------------------------------------------

    def borrow(self, offset: int, length: int, writable: bool) -> Loan:
        """Start a borrow of ``[offset, offset + length)``; the caller hands out
        ``loan.view`` and ends the borrow with ``loan.end()``."""
        base = memoryview(self._exporter).cast("B")[offset : offset + length]
        if not writable:
            base = base.toreadonly()
        # The loan is armed before the user's view exists (its export pins base), and the
        # view goes into the loan's list with no call in between (see Loan).
        if _DROPPED:  # (never waiting for another thread: this may run on an event loop)
            release_escaped(blocking=False)
        loan = Loan()
        loan.memory = self
        loan.offset = offset
        loan.views = views = [base]
        loan._on_drop = partial(_DROPPED.__setitem__, id(views), (self, offset, views))
        views.append(memoryview(PickleBuffer(base)))
        return loan

    def end_borrow(self, offset: int, views: list[memoryview]) -> bool:
        """End a borrow started at ``offset`` (what :meth:`borrow` armed its loan with);
        park what cannot be released (see the module docstring) and return whether
        anything was.  Ending it again does nothing more (a released view releases again).

        The caller raises :func:`escape_error` then, once its own references to the
        views are gone: a traceback holding them would keep them from ever being released.
        """
        if len(views) < 2:  # ended already, or cut short before the user's view was made
            return not all(map(_try_release, views))
        base, view = views
        view_released = _try_release(view)
        if view_released and _try_release(base):
            del views[:]
            return False
        parked = [base] if view_released else [view, base]  # the view first: it pins base
        # (No lock: an append is atomic, and this may run inside a collection that
        # interrupted this thread while it held _ESCAPED_LOCK.)
        _ESCAPED.append(_Escape(self, offset, len(base), parked))
        del views[:]  # (the registry holds them now; not before, or nothing would)
        _watch_collections()
        return True

    def escaped_in(self, offset: int, length: int) -> bool:
        """Whether a parked view of this memory still covers part of the range."""
        release_escaped()
        end = offset + length
        return any(  # (over a copy: a collection may append or release meanwhile)
            e.memory is self and e.offset < end and offset < e.offset + e.length
            for e in list(_ESCAPED)
        )


class Loan:
    """The two views of one borrow, until it ends (:meth:`Memory.borrow`).

    The views are reached through the loan, never held alone across a call: a frame that
    held them when a signal's exception went through it stays in the traceback, and if
    the program keeps that exception in a reference cycle, the views become cyclic
    garbage; the collector's clear of a base view that still has an export (the user's
    view's) crashes CPython.  So a loan dropped before it ended (a signal skipped the
    end, or the garbage collector found it in a cycle) hands its views to
    :data:`_DROPPED`, a registry that is always reachable, where the collector cannot
    clear them (PEP 442 runs finalizers before clearing anything, and sees what they
    made reachable again); the next :func:`release_escaped` ends them.  That finalizer
    is C code (``ON_DROP`` in ``anymmap._sys._signals``: ``dict.__setitem__``), so no
    signal can cut it short, and it does nothing once the loan has ended.
    """

    #: ``[base, view]``: ``view`` is the one handed out.
    views: list[memoryview]
    memory: Memory
    offset: int
    _on_drop: Callable[[], object] = DISARMED
    __del__ = ON_DROP

    @property
    def view(self) -> memoryview:
        return self.views[1]

    def end(self) -> bool:
        """End the borrow; return whether something built on its view is still alive (its
        views are then parked, and the caller raises :func:`escape_error`)."""
        escaped = self.memory.end_borrow(self.offset, self.views)
        self._on_drop = DISARMED
        return escaped


class _Escape:
    """Views of one borrow that could not be released when it ended."""

    __slots__ = ("length", "memory", "offset", "views")

    def __init__(self, memory: Memory, offset: int, length: int, views: list[memoryview]):
        self.memory = memory
        self.offset = offset
        self.length = length
        self.views = views

    def release(self) -> bool:
        """Release what can be, in order; return whether all of it is released."""
        while self.views:
            if not _try_release(self.views[0]):
                return False
            del self.views[0]
        return True


#: Parked views.  Entries are appended without a lock (by a borrow's exit, which the
#: garbage collector may run at any allocation) and removed only under _ESCAPED_LOCK,
#: which is re-entrant for the same reason: a collection inside release_escaped may
#: end a borrow whose generator it collects, and that may release parked views too.
_ESCAPED: list[_Escape] = []
_ESCAPED_LOCK = threading.RLock()


def _renew_lock_in_child() -> None:
    global _ESCAPED_LOCK
    _ESCAPED_LOCK = threading.RLock()  # a thread of the parent may have held it


renew_in_child(_renew_lock_in_child)


def escape_error() -> BorrowError:
    """The error for a borrow whose views had to be parked."""
    return BorrowError(
        "a slice, array or buffer made from the borrowed view is still alive at the end of "
        "the borrow; the pages under it cannot be unmapped (by close, resize, or a sparse "
        "map's unmap or remap) until it is gone"
    )


def _try_release(view: memoryview) -> bool:
    try:
        view.release()
    except BufferError:
        return False
    return True


#: The views of loans dropped before they ended, by the id of their list (see Loan).
_DROPPED: dict[int, tuple[Memory, int, list[memoryview]]] = {}


def release_escaped(blocking: bool = True) -> None:
    """End the borrows of dropped loans; release the parked views whose exports are
    gone."""
    for key, (memory, offset, views) in list(_DROPPED.items()):
        memory.end_borrow(offset, views)  # (ended, or parked: once, however often called)
        _DROPPED.pop(key, None)
    if not _ESCAPED:
        return
    if blocking:
        # (``with``, not acquire, then try: a Ctrl-C handled as acquire() returned would
        # leave the lock taken for good; see DirtyRanges._waits.)
        with _ESCAPED_LOCK:
            _release_parked()
    elif _ESCAPED_LOCK.acquire(False):  # (a collection's hook or a loop: never waits)
        try:
            _release_parked()
        finally:
            _ESCAPED_LOCK.release()


def _release_parked() -> None:  # with _ESCAPED_LOCK held
    for escape in list(_ESCAPED):  # (a copy: entries may be appended meanwhile)
        if escape.release():
            with suppress(ValueError):  # (removed by a call nested in this one)
                _ESCAPED.remove(escape)
    if not _ESCAPED:
        _unwatch_collections()


def _after_gc(phase: str, info: dict[str, int]) -> None:
    # Escaped slices and arrays usually die in a collection; once they are gone, their
    # parked views can go too, and with them the last reference to an unclosed map.
    # Never block here: the collection may have started inside release_escaped.
    if phase == "stop":
        release_escaped(blocking=False)


# The hook is in gc.callbacks only while views are parked.  A Python callback there is a
# place where Python runs the handlers of signals that arrived during the collection, and
# an exception they raise there is only printed: with the hook always installed, about
# one Ctrl-C in a hundred sent to an allocating program was lost.  While nothing is
# parked, its entry holds _IDLE instead: C code that does nothing with the (phase, info)
# it gets.  (Removing the entry would shift the list under a collection that is running
# it, and the next callback would miss that collection's "stop".)
_IDLE: Callable[[str, dict[str, int]], object] = slice


def _watch_collections() -> None:
    callbacks = gc.callbacks
    if _after_gc not in callbacks and not _replace(callbacks, _IDLE, _after_gc, True):
        callbacks.append(_after_gc)


def _unwatch_collections() -> None:
    _replace(gc.callbacks, _after_gc, _IDLE, False)  # (every copy: two threads may add one)
    if _ESCAPED:  # parked meanwhile by another thread, which saw the hook in place
        _watch_collections()


def _replace(callbacks: list[Any], old: object, new: object, first_only: bool) -> bool:
    """Put ``new`` in the place of ``old`` in ``callbacks``; return whether it was there."""
    found = False
    for i, callback in enumerate(callbacks):
        if callback is old:
            with suppress(IndexError):  # (another thread may change the list meanwhile)
                callbacks[i] = new
            found = True
            if first_only:
                break
    return found
