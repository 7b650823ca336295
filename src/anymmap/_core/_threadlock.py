"""The read-write lock behind the blocking twins in :mod:`anymmap.sync`."""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable
from functools import partial
from operator import attrgetter
from typing import Any

from anyio import WouldBlock

from .._sys import DISARMED, Hold, give_back_skipped, signals_held, whole
from ._forks import track

#: What a call re-entering an internal lock on the same thread raises.
REENTERED = (
    "a finalizer (__del__ or weakref callback) or signal handler that Python ran inside "
    "this map's own bookkeeping on this thread cannot use the map: it would wait for itself"
)


#: What a wait that could never end raises: at interpreter exit, no other thread runs.
STOPPED_AT_EXIT = (
    "the map is held by a thread that the interpreter stopped at exit (a daemon thread "
    "inside a call of the map): waiting for it would never end"
)


def wait_unless_exiting(cond: threading.Condition, timeout: float) -> None:
    """``cond.wait(timeout)``, with signal handlers held off, except during the
    interpreter's finalization (a finalizer run by its last collection), when the thread
    to wait for (a daemon thread) no longer runs.

    ``Condition.wait`` is Python code that lets go of the lock, waits, and takes it back:
    a handler that raised as the letting go returned (a Ctrl-C) left the caller without
    the lock, its cleanup changed the lock's state unguarded, and its ``with`` raised
    "cannot release un-acquired lock" instead of the ``KeyboardInterrupt`` (adversary
    round 66: 23 times in a 5 s storm).  Held off, a signal's handler runs as the wait
    returns, with the lock taken back: every caller waits in a loop with a short
    ``timeout`` (at most :data:`HEAL_EVERY`), so a Ctrl-C still ends a wait that would
    never end by itself, within that time.

    :raises RuntimeError: then
    """
    if sys.is_finalizing():
        raise RuntimeError(STOPPED_AT_EXIT)
    with signals_held():
        cond.wait(timeout)


class _Condition(threading.Condition):
    """A condition whose ``with`` takes and gives back its lock in C.

    ``threading.Condition.__enter__`` is Python code: a signal handled as the lock's own
    ``__enter__`` returns inside it raised before the ``with`` block began, and the lock
    stayed held by this thread for good (every later call of the map failed with
    :data:`REENTERED`).  Here the ``with`` statement gets the lock's C methods (the
    getters are C too), so no Python frame runs between taking the lock and the block.
    """

    __enter__ = property(attrgetter("_lock.__enter__"))
    __exit__ = property(attrgetter("_lock.__exit__"))


def new_condition() -> threading.Condition:
    """A condition over a re-entrant lock, so that :func:`held_here` can tell when the
    garbage collector (or a signal handler) ran code that calls back in while this thread
    is inside the critical section: such a call must fail, not wait for itself."""
    return _Condition(threading.RLock())


def renewed(cond: threading.Condition) -> threading.Condition:
    """In a forked child: ``cond`` if the thread that forked (the caller) holds it, as
    one forked by a signal handler inside a critical section does (a fresh one would
    not be held by the frame that goes on in it: adversary round 44), else a fresh one
    (a thread of the parent may have held it, and is not here to give it back)."""
    return cond if held_here(cond) else new_condition()


def held_here(lock: threading.Condition | threading.RLock) -> bool:
    """Whether the calling thread holds ``lock`` (an RLock, or a condition made by
    :func:`new_condition`)."""
    return lock._is_owned()  # type: ignore[union-attr, no-any-return]


def check_not_held(lock: threading.Condition | threading.RLock) -> None:
    """:raises RuntimeError: if the calling thread holds ``lock`` (see :data:`REENTERED`)"""
    if held_here(lock):
        raise RuntimeError(REENTERED)


#: How often a waiting thread checks that a release was not cut short: a KeyboardInterrupt
#: (or any exception from a signal handler) can land inside a release, after the lock was
#: freed and before it was handed over, and no one else would hand it over.
HEAL_EVERY = 0.05


class ThreadRWLock:
    """Readers share, a writer is alone; granted in arrival order.

    A thread that must wait queues; whoever releases the lock hands it to the head of
    the queue (a writer, or every reader up to the next writer) before returning, so a
    thread that takes the lock in a loop cannot barge ahead of one already waiting (with
    the GIL it would otherwise win every time).  A thread that already reads may read
    again at once (two nested borrows never deadlock behind a waiting writer); asking to
    write while holding the lock raises RuntimeError.

    The ``read()`` / ``write()`` blocks release on behalf of the thread that entered them,
    whichever thread runs the exit (a generator suspended inside a borrow may be closed
    by another thread); a plain ``release_*()`` releases for the calling thread only.
    """

    __slots__ = ("__weakref__", "_before_wait", "_cond", "_queue", "_readers", "_writer")

    def __init__(self, before_wait: Callable[[], None] | None = None) -> None:
        #: Called before the calling thread would wait; may raise to refuse (the map's
        #: check that the thread is not inside one of its calls).
        self._before_wait = before_wait
        self._cond = new_condition()
        self._readers: dict[int, int] = {}
        self._writer: int | None = None
        #: The waiting threads: [wants to write, identity, granted], in arrival order.
        self._queue: deque[list[Any]] = deque()
        track(self)

    def after_fork_in_child(self, survivor: int) -> None:
        """Keep only what the thread that forked holds (see ``_forks``); if it was
        waiting (a signal handler forked inside its wait), it gets the lock now, and its
        wait ends at its next wake-up (at most ``HEAL_EVERY``), unless another thread was
        inside the lock's bookkeeping at the fork (then the wait takes that thread's
        condition back for ever, as for any lock a vanished thread held).  (Adversary
        round 43: it woke to a queue without it and raised ValueError.)"""
        self._cond = renewed(self._cond)
        count = self._readers.get(survivor, 0)
        self._readers = {survivor: count} if count else {}
        if self._writer != survivor:
            self._writer = None
        # The other threads are not in this process.
        self._queue = deque(waiter for waiter in self._queue if waiter[1] == survivor)
        with self._cond:
            self._hand_over()

    def acquire_read(self, blocking: bool = True) -> int:
        """Acquire for the calling thread and return its identity (for ``_release_*``)."""
        me = threading.get_ident()
        check_not_held(self._cond)
        if self._writer == me:  # (only this thread makes that true or false)
            give_back_skipped()
        with self._cond:
            if me in self._readers:
                self._readers[me] += 1
                return me
            if self._writer == me:
                raise RuntimeError("this thread holds the write lock")
            if self._writer is None and not self._queue:
                self._readers[me] = 1
                return me
            if not blocking:
                raise WouldBlock("the map is being written by another thread")
            self._wait(False, me)
        return me

    def release_read(self) -> None:
        self._release_read(threading.get_ident())

    def _release_read(self, me: int) -> None:
        check_not_held(self._cond)
        with self._cond:
            count = self._readers.pop(me, 0)
            if count > 1:
                self._readers[me] = count - 1
            elif not count:
                raise RuntimeError("this thread is not holding the read lock")
            elif not self._readers:
                self._hand_over()

    def acquire_write(self, blocking: bool = True) -> int:
        """Acquire for the calling thread and return its identity (for ``_release_*``)."""
        me = threading.get_ident()
        check_not_held(self._cond)
        if self._writer == me or me in self._readers:  # (only this thread makes that so)
            give_back_skipped()
        with self._cond:
            if self._writer == me or me in self._readers:
                raise RuntimeError("this thread already holds the lock")
            if self._writer is None and not self._readers and not self._queue:
                self._writer = me
                return me
            if not blocking:
                raise WouldBlock("the map is borrowed or being written by another thread")
            self._wait(True, me)
        return me

    def release_write(self) -> None:
        self._release_write(threading.get_ident())

    def _release_write(self, me: int) -> None:
        check_not_held(self._cond)
        with self._cond:
            if self._writer != me:
                raise RuntimeError("this thread is not holding the write lock")
            self._writer = None
            self._hand_over()

    def _wait(self, write: bool, me: int) -> None:  # with self._cond held
        """Queue, and wait until :meth:`_hand_over` grants the lock to this thread."""
        if self._before_wait is not None:
            self._before_wait()
        waiter = [write, me, False]
        try:
            # (Inside the try: a signal handled as the append returns must not leave the
            # waiter queued, to be granted the lock with no one to give it back.)
            self._queue.append(waiter)
            while not waiter[2]:
                wait_unless_exiting(self._cond, HEAL_EVERY)
                if not waiter[2]:
                    self._hand_over()
        except BaseException:  # KeyboardInterrupt in the wait: leave nothing behind
            if waiter[2]:  # granted meanwhile: give it back
                if write:
                    self._writer = None
                else:
                    del self._readers[me]
            elif waiter in self._queue:  # (a thread has one waiter: equal is the same)
                self._queue.remove(waiter)
            self._hand_over()
            raise

    def _hand_over(self) -> None:  # with self._cond held
        """Grant the lock to the head of the queue, if it is free for it: one writer, or
        every reader up to the next writer."""
        granted = False
        while self._queue and self._writer is None:
            write, who, _ = head = self._queue[0]
            if write:
                if self._readers:
                    break
                self._writer = who
            else:
                self._readers[who] = 1
            head[2] = True
            self._queue.popleft()
            granted = True
            if write:
                break
        if granted:
            self._cond.notify_all()

    def read(self, blocking: bool = True) -> Held:
        return Held(self, False, blocking)

    def write(self, blocking: bool = True) -> Held:
        return Held(self, True, blocking)


class Held(Hold):
    """``with lock.read():`` / ``with lock.write():``.  A class, not a
    ``@contextmanager`` generator: there a signal handled as the acquisition returned
    (a Ctrl-C that arrived while it waited) raised before the block was entered, and the
    lock stayed held for ever.  Here ``__enter__`` gives back what it got if anything
    raises in it; a signal handled after it returns is inside the block.  One handled as
    ``__exit__`` begins skips the release: the hold then gives the lock back when it is
    dropped (see ``ON_DROP`` in ``anymmap._sys._signals``).
    """

    def __init__(self, lock: ThreadRWLock, write: bool, blocking: bool) -> None:
        self._lock = lock
        self._write = write
        self._blocking = blocking

    def __enter__(self) -> None:
        lock, write = self._lock, self._write
        me = threading.get_ident()
        # (Taking the write lock twice raises; the hold is then not ours.)
        before = lock._writer == me if write else lock._readers.get(me, 0)
        due = [False]
        give_back = partial(_give_back, lock, me, write, due)
        try:
            if write:
                lock.acquire_write(self._blocking)
            else:
                lock.acquire_read(self._blocking)
            due[0] = True
            self._on_drop = give_back
            return  # (inside the try: a signal handled as it returns is undone)
        except BaseException:
            # No call until the hold is armed: a second signal's handler, run as a call
            # begins or returns, left the lock taken with nothing to give it back (CPython
            # 3.13 under load: 13 of 60 runs of a 1.5 s Ctrl-C storm).
            if not due[0]:  # got it, then a signal's handler raised as the call returned?
                readers = lock._readers
                got = lock._writer == me if write else readers[me] if me in readers else 0  # noqa: SIM401
                due[0] = got != before and got != 0
            self._on_drop = give_back  # (interrupted, the give-back happens at the drop)
            give_back()
            self._on_drop = DISARMED
            raise


@whole
def _give_back(lock: ThreadRWLock, me: int, write: bool, due: list[bool]) -> None:
    """Release a :class:`Held`'s lock for ``me`` if ``due``, once."""
    if held_here(lock._cond):  # a drop by a collection inside the lock's own bookkeeping
        return  # (on this thread, maybe half-way through what this would change)
    with lock._cond:
        if not due[0]:
            return
        # (No call from here until the lock is free: a signal is only handled at a call or
        # a loop's jump, and it must not find it half released.)
        due[0] = False
        if write:
            lock._writer = None
        else:
            count = lock._readers[me]
            if count > 1:
                lock._readers[me] = count - 1
                return
            del lock._readers[me]
            if lock._readers:
                return
        lock._hand_over()  # (cut short by a signal, the waiters hand it over: HEAL_EVERY)
