from __future__ import annotations

import threading
import types
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn

from anyio import TaskInfo, WouldBlock

from ._backend import (
    Waiter,
    asyncio_current_task,
    backend_local,
    current_loop,
    current_task,
    loop_closed,
    loop_running,
    not_in_a_task,
    task_info,
    task_loop_closed,
    trio_cancel_shielded_checkpoint,
    trio_checkpoint_if_cancelled,
    trio_current_task,
)
from ._core._forks import track
from ._errors import Uncopyable


@dataclass(frozen=True)
class RWLockStatistics:
    """
    :ivar int readers: number of tasks currently holding the read lock (a task that took
        the read lock twice counts once)
    :ivar ~anyio.TaskInfo writer: the task holding the write lock, or ``None``
    :ivar int readers_waiting: number of tasks waiting in :meth:`RWLock.acquire_read`
    :ivar int writers_waiting: number of tasks waiting in :meth:`RWLock.acquire_write`
    """

    readers: int
    writer: TaskInfo | None
    readers_waiting: int
    writers_waiting: int


class _Ticket(Waiter):
    """A task's place in the queue of an :class:`RWLock`."""

    __slots__ = ("cancelled", "granted", "task", "write")

    def __init__(self, task: object, write: bool) -> None:
        super().__init__()
        self.task = task
        self.write = write
        self.granted = False
        self.cancelled = False


# The guards are where acquiring happens; the explicit acquire_*() methods use them too.
# Their __aenter__ is a generator-based coroutine with the fast path inline: an uncontended
# acquire then costs one yield to the event loop plus about a microsecond.
#
# An uncontended acquire claims the lock first and checkpoints after, as trio's own locks
# do: trio reorders tasks woken from a checkpoint, so checkpointing first would grant the
# lock in the order the scheduler happens to pick, not in the order the tasks asked.  On
# trio the checkpoint after the claim is cancel-shielded (a cancellation already pending
# is delivered before the claim); on asyncio a cancellation delivered at that yield
# releases the claim again.


class _Done:
    """An awaitable that completes at once, without a yield (what a guard's exit returns:
    cheaper than a coroutine that never suspends)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, Any, None]:
        return iter(())  # type: ignore[return-value]


_DONE = _Done()


class _Checkpoint:
    """An awaitable that yields to the event loop once (asyncio's checkpoint, as in
    ``asyncio.sleep(0)``)."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        yield


_CHECKPOINT = _Checkpoint()

_get_ident = threading.get_ident


class _Guard(Uncopyable):
    """An async context manager that holds one side of a lock for its block (what
    ``RWLock.read()`` and ``RWLock.write()`` return).

    It remembers the task that acquired, and its exit releases on behalf of that task,
    whichever task runs it: an async generator suspended inside the block may be
    finalized by another task, and the lock must not stay held forever.  So it serves one
    block at a time: entering it again before its exit raises :exc:`RuntimeError`
    (adversary round 35: one guard shared by several tasks, as aiorwlock's
    ``writer_lock`` is, lost track of its holder, and the lock stayed held for good by a
    task that had ended).
    """

    __slots__ = ("_lock", "_task", "_write")

    def __init__(self, lock: RWLock, write: bool) -> None:
        self._lock = lock
        self._write = write
        self._task: object | None = None

    @types.coroutine
    def __aenter__(self) -> Generator[Any, Any, None]:
        if self._task is not None:
            side = "write" if self._write else "read"
            raise RuntimeError(
                f"this lock.{side}() guard is held already (by another task, or entered "
                f"twice): call lock.{side}() for each 'async with' block"
            )
        lock = self._lock
        write = self._write
        try:  # (whatever raises in here leaves nothing held: the guard is free again)
            if backend_local.name == "trio":
                self._task = task = trio_current_task()
                yield from trio_checkpoint_if_cancelled()
                if (lock._try_write if write else lock._try_read)(task):
                    try:
                        yield from trio_cancel_shielded_checkpoint()
                    except BaseException:  # (the entry closed there: adversary round 36)
                        lock._release(task, write)
                        raise
                else:
                    yield from lock._wait(task, write)
                return

            self._task = task = asyncio_current_task() or not_in_a_task()
            readers = lock._readers
            if not write and lock._writer is None and not lock._queue and task not in readers:
                readers[task] = 1  # the common case of _try_read, inline
                try:
                    yield  # asyncio's checkpoint, as in asyncio.sleep(0)
                except BaseException:
                    lock._release_read(task)
                    raise
            elif (lock._try_write if write else lock._try_read)(task):
                try:
                    yield  # asyncio's checkpoint, as in asyncio.sleep(0)
                except BaseException:
                    lock._release(task, write)
                    raise
            else:
                yield from lock._wait(task, write)
        except BaseException:
            self._task = None
            raise

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> _Done:
        task, self._task = self._task, None
        if self._write:
            self._lock._release_write(task)
        else:
            self._lock._release_read(task)
        return _DONE  # releasing never waits: an awaitable that is already done

    def release(self) -> None:
        """Release what this guard acquired (synchronous; for the maps' borrows)."""
        task, self._task = self._task, None
        self._lock._release(task, self._write)


class RWLock(Uncopyable):
    """
    A fair, task-owned read-write lock for asyncio and trio.

    Any number of tasks may hold the read lock at once; the write lock is exclusive.
    Waiting tasks form a single first-in, first-out queue: a waiting writer holds back the
    readers that arrive after it, consecutive waiting readers are let in together, and on
    release the lock passes directly to the next waiter(s), so a newcomer cannot barge
    ahead of the queue.

    A task that already holds the read lock may take it again at once, without queueing
    (so a task that borrows two slices never deadlocks behind a waiting writer).  Asking
    for the write lock while holding either lock raises :exc:`RuntimeError` instead of
    deadlocking.

    Every acquire is a checkpoint, even when the lock is free.  Releasing never blocks, so
    it also works inside a cancelled scope.  A task cancelled while waiting leaves the
    queue, and if it was a writer at the head of the queue, the readers behind it are let
    in at once.

    The lock can be created outside of an event loop, but must then be used from one.

    .. versionadded:: 0.1
    """

    __slots__ = ("_queue", "_readers", "_readers_waiting", "_writer", "_writers_waiting")

    def __init__(self) -> None:
        self._readers: dict[object, int] = {}
        self._writer: object | None = None
        self._queue: deque[_Ticket] = deque()
        self._readers_waiting = 0
        self._writers_waiting = 0

    def __repr__(self) -> str:
        if self._writer is not None:
            state = "write-locked"
        elif self._readers:
            state = f"read-locked by {len(self._readers)} task(s)"
        else:
            state = "unlocked"

        return (
            f"<{self.__class__.__name__} object at {id(self):#x}: {state}, "
            f"{self._readers_waiting} reader(s) and {self._writers_waiting} writer(s) waiting>"
        )

    def __enter__(self) -> NoReturn:
        raise TypeError("use 'async with lock.read()' or 'async with lock.write()'")

    def __exit__(self, *exc_info: object) -> None:  # pragma: no cover - __enter__ raises
        pass

    def read(self) -> _Guard:
        """
        Return an async context manager that holds the read lock for its block.

        ``async with lock.read(): ...`` is :meth:`acquire_read` on entry and
        :meth:`release_read` on exit.
        """
        return _Guard(self, False)

    def write(self) -> _Guard:
        """
        Return an async context manager that holds the write lock for its block.

        ``async with lock.write(): ...`` is :meth:`acquire_write` on entry and
        :meth:`release_write` on exit.
        """
        return _Guard(self, True)

    async def acquire_read(self) -> None:
        """
        Acquire the read lock, waiting behind any writer that holds or waits for it.

        :raises RuntimeError: if the current task holds the write lock

        """
        if backend_local.name != "trio":
            # The common case of the guard's asyncio path, inline: no guard object and
            # no second generator per acquire.
            task = asyncio_current_task() or not_in_a_task()
            readers = self._readers
            if self._writer is None and not self._queue and task not in readers:
                readers[task] = 1
                try:
                    await _CHECKPOINT
                except BaseException:
                    self._release_read(task)
                    raise
                return
        await self.read().__aenter__()

    def acquire_read_nowait(self) -> None:
        """
        Acquire the read lock, without blocking.

        :raises ~anyio.WouldBlock: if a writer holds the lock or tasks are waiting for it
        :raises RuntimeError: if the current task holds the write lock

        """
        task = (
            trio_current_task()
            if backend_local.name == "trio"
            else asyncio_current_task() or not_in_a_task()
        )  # (current_task(), inline: the nowait calls are the cheapest there are)
        readers = self._readers
        if self._writer is None and not self._queue and task not in readers:
            readers[task] = 1
        elif not self._try_read(task):
            raise WouldBlock

    async def acquire_write(self) -> None:
        """
        Acquire the write lock, waiting for every reader and writer ahead of this task.

        :raises RuntimeError: if the current task already holds the read or write lock

        """
        await self.write().__aenter__()

    def acquire_write_nowait(self) -> None:
        """
        Acquire the write lock, without blocking.

        :raises ~anyio.WouldBlock: if the lock is held or tasks are waiting for it
        :raises RuntimeError: if the current task already holds the read or write lock

        """
        if not self._try_write(current_task()):
            raise WouldBlock

    def release_read(self) -> None:
        """
        Release one hold of the read lock taken by the current task.

        :raises RuntimeError: if the current task does not hold the read lock

        """
        task = (
            trio_current_task()
            if backend_local.name == "trio"
            else asyncio_current_task() or not_in_a_task()
        )
        readers = self._readers
        if readers.get(task) == 1 and not (len(readers) == 1 and self._queue):
            del readers[task]  # (the common case of _release_read, inline)
        else:
            self._release_read(task)

    def release_write(self) -> None:
        """
        Release the write lock.

        :raises RuntimeError: if the current task does not hold the write lock

        """
        self._release_write(current_task())

    def locked(self) -> bool:
        """Return ``True`` if any task holds the read or the write lock."""
        return self._writer is not None or bool(self._readers)

    def statistics(self) -> RWLockStatistics:
        """Return statistics about the current state of this lock."""
        return RWLockStatistics(
            readers=len(self._readers),
            writer=None if self._writer is None else task_info(self._writer),
            readers_waiting=self._readers_waiting,
            writers_waiting=self._writers_waiting,
        )

    def _release_write(self, task: object) -> None:
        if task is not self._writer:
            raise RuntimeError("the current task is not holding the write lock")

        self._writer = None
        if self._queue:
            self._grant()

    def _release(self, task: object, write: bool) -> None:
        if write:
            self._release_write(task)
        else:
            self._release_read(task)

    def _try_read(self, task: object) -> bool:
        """Take the read lock for ``task`` if that needs no waiting; return whether it did.

        :raises RuntimeError: if ``task`` holds the write lock
        """
        readers = self._readers
        if task in readers:
            readers[task] += 1
        elif self._writer is None and not self._queue:
            readers[task] = 1
        elif task is self._writer:
            raise RuntimeError("this task holds the write lock; it cannot also take a read lock")
        else:
            return False
        return True

    def _try_write(self, task: object) -> bool:
        """Take the write lock for ``task`` if that needs no waiting; return whether it did.

        :raises RuntimeError: if ``task`` already holds the read or the write lock
        """
        if self._writer is None and not self._readers and not self._queue:
            self._writer = task
            return True
        self._check_can_write(task)
        return False

    def _check_can_write(self, task: object) -> None:
        if task is self._writer:
            raise RuntimeError("this task already holds the write lock")
        if task in self._readers:
            raise RuntimeError(
                "this task holds the read lock; release it before taking the write lock "
                "(upgrading would deadlock)"
            )

    def _release_read(self, task: object) -> None:
        readers = self._readers
        count = readers.pop(task, 0)
        if count > 1:
            readers[task] = count - 1
        elif not count:
            raise RuntimeError("the current task is not holding the read lock")
        elif not readers and self._queue:
            self._grant()

    @types.coroutine
    def _wait(self, task: object, write: bool) -> Generator[Any, Any, None]:
        ticket = _Ticket(task, write)
        self._queue.append(ticket)
        if write:
            self._writers_waiting += 1
        else:
            self._readers_waiting += 1

        try:
            yield from ticket.wait()
        except BaseException:
            if ticket.granted:
                # Granted, then cancelled before this task ran again: pass the lock on.
                if write:
                    self._writer = None
                    self._grant()
                else:
                    self._release_read(task)
            elif not ticket.cancelled:  # (a fork cancels the tickets: see MapLock)
                ticket.cancelled = True
                if write:
                    self._writers_waiting -= 1
                else:
                    self._readers_waiting -= 1

                # A writer leaving the head of the queue may let readers in.
                self._grant()

            raise

    def _grant(self) -> None:
        """Hand the lock to the waiters at the head of the queue that can have it now."""
        queue = self._queue
        while queue:
            ticket = queue[0]
            if ticket.cancelled:
                queue.popleft()
            elif ticket.write:
                if self._writer is None and not self._readers:
                    queue.popleft()
                    self._writers_waiting -= 1
                    self._writer = ticket.task
                    ticket.granted = True
                    ticket.wake()

                return
            elif self._writer is None:
                queue.popleft()
                self._readers_waiting -= 1
                self._readers[ticket.task] = 1
                ticket.granted = True
                ticket.wake()
            else:
                return


class _MapGuard(_Guard):
    """The guard of a :class:`MapLock`: it refuses a task of a second event loop."""

    __slots__ = ()

    _lock: MapLock

    # (The parent's generator, returned as is: one frame less per acquire.)
    def __aenter__(self) -> Generator[Any, Any, None]:  # type: ignore[override]
        self._lock.check_caller()
        return _Guard.__aenter__(self)

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> _Done:
        if not self._lock._dropped:
            return _Guard.__aexit__(self, exc_type, exc_val, exc_tb)
        # In a forked child (trio runs the parent's tasks on there): a hold dropped at
        # the fork ends as a no-op (adversary round 43: the copies' own guards raised).
        self.release()
        return _DONE


#: The end of the errors for a task of a second event loop.
_ONE_LOOP = (
    "a map belongs to one event loop at a time (call it there with "
    "anyio.from_thread.run_sync, or give each loop its own map)"
)

#: Held while a map's lock passes to the event loop of another thread (see _check_thread).
#: Re-entrant: a signal handler or finalizer run inside a hand-over whose call of another
#: map is a hand-over too waited for its own thread, for ever (adversary round 56); the
#: inner hand-over reads every state it needs itself.
_ADOPTING = threading.RLock()


class MapLock(RWLock):
    """The lock of a map: an :class:`RWLock` with the few questions the map's own
    ``*_nowait`` copies and its ``resize`` / ``aclose`` ask of it, and dropped holds in a
    forked child (the parent's tasks do not run there: see ``_core/_forks.py``)."""

    __slots__ = ("__weakref__", "_dropped", "_loop", "_thread")

    def __init__(self) -> None:
        super().__init__()
        #: In a forked child: the holds dropped at the fork (task -> reads, or 0 for the
        #: write lock), whose release is then a no-op.
        self._dropped: dict[object, int] = {}
        #: The event loop that uses the map (see :meth:`_check_thread`; None: made outside
        #: of one) and its thread.
        self._thread = _get_ident()
        self._loop: object | None = None
        try:
            self._loop = current_loop()
        except RuntimeError:
            pass
        track(self)

    def read(self) -> _Guard:
        return _MapGuard(self, False)

    async def acquire_read(self) -> None:
        # (Not the parent's inline fast path: the map's guard checks the event loop.)
        await self.read().__aenter__()

    def acquire_read_nowait(self) -> None:
        self.check_caller()
        super().acquire_read_nowait()

    def acquire_write_nowait(self) -> None:
        self.check_caller()
        super().acquire_write_nowait()

    # Releases by hand go through _release, as the guards' do (holds dropped at a fork).
    def release_read(self) -> None:
        self._release(current_task(), False)

    def release_write(self) -> None:
        self._release(current_task(), True)

    def check_caller(self) -> None:
        """Refuse a caller of another event loop (see :meth:`_check_thread`).

        A task that takes the lock may wait for it: its loop must be the map's, not only
        its thread (a later loop in that thread, or a new thread with the identity of a
        finished one), so that another thread's loop can tell that it runs.  (A release
        from another loop's thread would hand the lock to a waiter of this loop without
        waking it.)
        """
        try:
            loop = current_loop()
        except RuntimeError:
            loop = None  # (refused by _check_thread)
        if loop is not self._loop or _get_ident() != self._thread:
            self._check_thread()

    def write(self) -> _Guard:
        return _MapGuard(self, True)

    def after_fork_in_child(self, survivor: int) -> None:
        # A fork from inside a running event loop goes on running the loop's tasks in the
        # child (trio; asyncio forgets its running loop there): their releases of what
        # they held must not raise, and those waiting get the lock in their turn
        # (adversary round 43: they waited for ever).  Other waiters are not woken: their
        # tasks never run again, and granted, the lock would stay theirs.
        kept: deque[_Ticket] = deque()
        if self._thread == survivor:
            kept.extend(t for t in self._queue if not t.cancelled and t._future is None)
        self._drop_holds(kept, remember=True)
        if self._thread != survivor:
            self._loop = None  # that thread's event loop does not run here

    def _drop_holds(self, kept: deque[_Ticket], remember: bool) -> None:
        """Drop every hold and every waiter but ``kept``, whose tasks get the lock in
        their turn.  ``remember``: a later release of a dropped hold is a no-op (else the
        tasks must never release: see :meth:`_release`)."""
        if remember:
            dropped = self._dropped
            dropped.update(self._readers)
            if self._writer is not None:
                dropped[self._writer] = 0
        for ticket in self._queue:
            if ticket not in kept:
                ticket.cancelled = True
        self._readers = {}
        self._writer = None
        self._queue = kept
        self._writers_waiting = sum(1 for ticket in kept if ticket.write)
        self._readers_waiting = len(kept) - self._writers_waiting
        self._grant()

    def _release(self, task: object, write: bool) -> None:
        dropped = self._dropped
        if dropped and task in dropped and task is not self._writer and task not in self._readers:
            if dropped[task] > 1:
                dropped[task] -= 1
            else:
                del dropped[task]
            return
        if task is not self._writer and task not in self._readers and task_loop_closed(task):
            return  # a hold dropped as its closed loop's tasks were (see _check_thread)
        super()._release(task, write)

    # The *_nowait copies complete without yielding, so they only need the lock to be free
    # at this instant (a queued writer is not delayed by them).
    # They are synchronous, so a worker thread could call them too: off the event loop
    # the lock cannot keep a change of the mapping (run in a worker thread for the task
    # that holds the write lock) from unmapping memory under the copy.
    def free_for_reading(self) -> bool:
        if _get_ident() != self._thread:
            self._check_thread()
        return self._writer is None

    def free_for_writing(self) -> bool:
        if _get_ident() != self._thread:
            self._check_thread()
        return self._writer is None and not self._readers

    def _check_thread(self) -> None:
        """Let the calling thread's event loop take the map: at once if it is the map's
        thread (a later loop there: the earlier one has ended); from another thread only
        once nothing holds or waits for the lock and the loop that took the map last has
        ended (as when one ``anyio.run`` follows another in a new thread).

        The lock's bookkeeping is not thread-safe, and its ``free_for_*`` answers only
        hold on the thread whose tasks take it; the core also refuses a direct access
        that meets a change of the mapping made for another thread (see
        ``MapCore._direct_refused``), which covers the instant of the hand-over.  (A loop
        whose tasks only make the lock-free copies is seen once one takes the lock:
        until then a loop in another thread may take the map, and its next call is
        refused instead.)

        :raises RuntimeError: if no event loop runs here (a worker thread, a plain
            thread), or if the map is another thread's loop's for now
        """
        try:
            loop = current_loop()
        except RuntimeError:
            raise RuntimeError(
                "the async API of a map must be called from a task of its event loop, not "
                "from another thread (which anyio.to_thread.run_sync runs): use "
                "anyio.from_thread.run_sync there, or the blocking twin in anymmap.sync"
            ) from None
        with _ADOPTING:
            if self._loop is not None and self._loop is not loop and loop_closed(self._loop):
                # The tasks of a closed loop never run again: one suspended inside a
                # borrow (an asyncio loop closed without cancelling its tasks) would hold
                # the lock for ever, and this loop's aclose or resize would wait for ever.
                # Its holds are dropped, not remembered (that would keep the tasks, and
                # the views in their frames, alive for ever); their views still keep the
                # memory mapped until the tasks are collected.
                self._drop_holds(deque(), remember=False)
            if _get_ident() != self._thread:
                if self._writer is not None or self._readers or self._queue:
                    raise RuntimeError(
                        "this map's lock is held by a task of an event loop in another "
                        f"thread: {_ONE_LOOP}"
                    )
                if self._loop is not None and loop_running(self._loop):
                    raise RuntimeError(
                        "this map is in use by an event loop in another thread, which "
                        f"still runs: {_ONE_LOOP}"
                    )
            self._loop = loop
            self._thread = _get_ident()

    def held_by_current_task(self) -> bool:
        task = current_task()
        return task is self._writer or task in self._readers
