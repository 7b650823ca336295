"""What a child process keeps of the locks and pins of live maps.

A child of ``fork()`` has one thread: the one that forked.  Every other thread of the
parent, and every task of an event loop (which does not run on in the child), is gone,
and so is any chance that they release what they held at that moment: a borrow, a pin of
a copy or flush in a worker thread, a lock inside a critical section.  Left as they were,
those would make the child's first call on the map wait for ever.

So, after a fork, each tracked object (:func:`track`) drops in the child whatever the
surviving thread does not hold itself, and gets fresh ``threading`` locks (one held by
a vanished thread would never be released).  The maps stay mapped and usable; a map that
another thread was resizing or closing at that moment counts as closed in the child
(its memory may be half-changed).

This runs through ``os.register_at_fork``, that is for ``os.fork()`` and
``multiprocessing``; a raw ``fork()`` that skips Python's hooks skips it too (as it does
for the interpreter's own locks).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Protocol


class AfterFork(Protocol):
    def after_fork_in_child(self, survivor: int) -> None:
        """Drop what threads other than ``survivor`` (the thread identity that forked)
        and event loop tasks held; renew the ``threading`` locks."""


#: Weak references without a callback: a ``WeakSet``'s Python callback ran at the death of
#: every map and lock, and Python handles pending signals there and only prints what
#: their handlers raise (a loop of create/close lost about one Ctrl-C in a hundred).
#: Dead ones are dropped as more are added, by one thread at a time (the lock).
_TRACKED: list[weakref.ref[AfterFork]] = []
_TRACKED_LOCK = threading.Lock()
_prune_at = 64
_MODULE_HOOKS: list[Callable[[], None]] = []
_AFTER_RENEWAL: list[Callable[[], None]] = []


def track(obj: AfterFork) -> None:
    """Call ``obj.after_fork_in_child`` in every child forked while ``obj`` lives.

    Never waits: a map made by a signal handler or a finalizer that runs inside
    another map's ``track`` (at any call's return, at any allocation) waited for the
    lock its own thread held, for ever (adversary round 56).  The append needs no lock
    (it is one step under the GIL); the pruning is skipped when another pruning runs,
    and replaces only the part of the list it looked at, so what is appended meanwhile
    stays."""
    global _prune_at
    _TRACKED.append(weakref.ref(obj))
    if len(_TRACKED) < _prune_at or not _TRACKED_LOCK.acquire(blocking=False):
        return
    try:
        seen = len(_TRACKED)
        alive = [ref for ref in _TRACKED[:seen] if ref() is not None]
        _TRACKED[:seen] = alive
        _prune_at = max(64, 2 * len(_TRACKED))
    finally:
        _TRACKED_LOCK.release()


def renew_in_child(hook: Callable[[], None]) -> None:
    """Call ``hook()`` in every child, before the tracked objects: for a module's own
    ``threading`` locks."""
    _MODULE_HOOKS.append(hook)


def after_renewal(call: Callable[[], None]) -> None:
    """From an ``after_fork_in_child``: call ``call()`` in the child once every tracked
    object is renewed (for work that needs the others usable, such as starting a thread
    that pins a map).  It must not raise."""
    _AFTER_RENEWAL.append(call)


def _in_child() -> None:
    global _TRACKED_LOCK
    _TRACKED_LOCK = threading.Lock()  # a thread of the parent may have held it
    for hook in _MODULE_HOOKS:
        hook()
    survivor = threading.get_ident()
    for ref in _TRACKED:
        obj = ref()
        if obj is not None:
            obj.after_fork_in_child(survivor)
    calls = _AFTER_RENEWAL[:]
    del _AFTER_RENEWAL[:]
    for call in calls:
        call()


if hasattr(os, "register_at_fork"):  # pragma: no branch - every POSIX system
    os.register_at_fork(after_in_child=_in_child)
