"""Group commit: concurrent durable flushes of one map share their ``msync`` calls.

Each ``flush_range`` / ``flush`` becomes a *request* for a range.  One committer thread
per map (started when the first request arrives, gone when none is left) takes every
request waiting at that moment as a *batch*, makes the batch durable, and completes its
requests; requests that arrive meanwhile wait for the next batch.  So:

* **Durability is unchanged**: a request completes only after an ``msync`` that started
  after it was made covered its whole range.
* **Concurrent commits share flushes**: 64 tasks committing at once cost a few ``msync``
  calls, not 64, and no worker thread per waiter (there is one committer thread per map).
* **A waiter may leave at any time** (cancellation): its range is flushed all the same,
  and nobody else waits longer.  The committer pins the map while it flushes, so closing
  waits for it.
* **An error reaches the requests it concerns**: those whose ranges the failed ``msync``
  covered, each with its own copy of the exception.  (A failed write-back also fails
  every later ``msync`` of the map: see ``FileBackedCore._msync``.)

How a batch is flushed: its ranges are merged, and ranges closer to each other than
:data:`GAP_LIMIT` are flushed by one ``msync`` over their span.  Measured here (ext4 in
a VM; ``benchmarks/bench_commit.py``): 64 dirty 4 KiB pages scattered over 64 MiB took
0.8 ms as one ``msync`` of their span against 10.1 ms as 64 ``msync`` calls (1 GiB: 0.8
against 12.0 ms), and an ``msync`` of 1 GiB with no page dirty 0.17 ms: the span's clean
pages cost next to nothing, the file system's commit per call is what costs.  Dirty
pages of other writers inside the span are written too (they will want it soon).
With 64 committers, a batch held about 26 commits (each committer writes its next record
while the previous batch is being flushed).
"""

from __future__ import annotations

import copy
import os
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from functools import partial

from .._errors import ClosedMapError
from .._sys import signals_held, start_thread
from ._forks import after_renewal
from ._threadlock import check_not_held, held_here, new_condition, renewed

#: Waiting ranges closer than this share one msync over their span.
GAP_LIMIT = 256 << 20


#: How long the committer thread waits for more requests before it ends: a serial
#: committer then reuses one thread instead of starting one per commit.
LINGER = 0.02

#: Runs a callable on a requester's event loop, from any thread (the loop's
#: ``call_soon_threadsafe``, trio's ``run_sync_soon``); None for a blocking waiter.
Scheduler = Callable[[Callable[[], None]], object]


class CommitRequest:
    """One durable flush of ``[start, end)``.  Once it is done or failed, ``wake()`` is
    called: through ``scheduler`` on the requester's event loop (one call per loop and
    batch, for all of its requests), or directly from the committer thread if
    ``scheduler`` is None."""

    __slots__ = (
        "_error",
        "_wake",
        "batch",
        "done",
        "end",
        "owner",
        "scheduler",
        "start",
        "thread",
    )

    def __init__(
        self, start: int, end: int, wake: Callable[[], None], scheduler: Scheduler | None
    ) -> None:
        self.start = start
        self.end = end
        self._wake = wake
        self.scheduler = scheduler
        self._error: BaseException | None = None
        self.done = False
        #: The number of the batch that completed it (for tests and benchmarks).
        self.batch = 0
        #: What makes the range durable (a method of the map), held until it has: a map
        #: dropped unclosed after its flush was cancelled is flushed all the same, and
        #: freed after (adversary round 29: its range was never flushed in 6-8 of 20).
        self.owner: Callable[[int, int], None] | None = None
        #: The thread that made it (in a forked child, the one that forked may wait).
        self.thread = threading.get_ident()

    def finish(self, batch: int, error: BaseException | None) -> None:
        self.batch = batch
        self._error = error
        self.done = True
        self.owner = None

    def result(self) -> None:
        """Raise the request's error, if its flush failed."""
        if self._error is not None:
            raise self._error


class GroupCommit:
    """The requests of one map and its committer thread.

    ``sync(start, length)`` makes a range of the map durable (the map pins itself).
    """

    def __init__(self, sync: Callable[[int, int], None], entering: Callable[[], None]) -> None:
        # Weak references: the map holds this object, and a strong one back would make
        # a cycle that only the cyclic collector frees (so a map dropped unclosed would
        # linger).
        self._sync = weakref.WeakMethod(sync)
        #: Raises if the calling thread must not wait for a commit (see ``submit``).
        self._entering = weakref.WeakMethod(entering)
        self._cond = new_condition()
        self._pending: list[CommitRequest] = []
        self._committer_pid = 0  # the process whose committer thread runs; 0: none
        self._committer_thread: int | None = None  # its identity, while it runs
        #: The committer thread while it starts (before its ``_run``; see ``submit``).
        self._starting: threading.Thread | None = None
        self._running = False  # a batch is taken and not yet finished
        self._lingering = False  # the committer waits for requests: a submit notifies it
        self._batch: list[CommitRequest] = []  # that batch, until its waiters are woken
        #: How many batches and msync calls there were, and the last 1,024 batches whose
        #: flush failed (for tests and benchmarks; bounded for a device that keeps failing).
        self.batches = 0
        self.msyncs = 0
        self.failed_batches: deque[int] = deque(maxlen=1024)

    def after_fork_in_child(self, survivor: int) -> None:
        """In a child: no committer runs, and the requests waiting or running at the fork
        were made by threads that are gone, but for those of ``survivor``, the thread that
        forked: one forked from inside its own flush (a signal handler, a finalizer), or
        a task of a trio loop that runs on in the child, still waits.  Those are queued
        again, for a committer of this process once every map is renewed (adversary round
        43: they waited for ever).  Their flush starts after the fork, so after the call
        was made: the durability rule holds."""
        # (A request is in one of the two: the committer takes the queue as its batch.)
        ours = [request for request in self._pending + self._batch if request.thread == survivor]
        for request in ours:
            request.done = False
            request._error = None
            request.owner = self._sync()
        self._cond = renewed(self._cond)  # (the survivor may be inside submit)
        self._pending = ours
        self._committer_pid = 0
        self._committer_thread = None
        self._starting = None
        self._running = False
        self._lingering = False
        self._batch = []
        if ours:
            after_renewal(self._restart)

    def submit(
        self,
        start: int,
        end: int,
        wake: Callable[[], None],
        scheduler: Scheduler | None = None,
        *,
        sync: Callable[[int, int], None] | None = None,
        entering: Callable[[], None] | None = None,
    ) -> CommitRequest:
        """Queue a durable flush of ``[start, end)``.  ``sync`` and ``entering``: the
        map's own (the caller has the map), for when the weak references to them are
        dead while the map is still used: a ``__del__`` that the cyclic collector runs
        on a cycle holding the map (weak references to the garbage are cleared before
        any finalizer runs: its flushes raised ``ClosedMapError`` on an open map,
        adversary round 51)."""
        me = threading.get_ident()
        starting = self._starting
        if me == self._committer_thread or (starting is not None and starting.ident == me):
            # A finalizer that flushes, run by a garbage collection on the committer
            # thread: it would wait for the thread it runs on (and may hold its lock).
            # Also while that thread starts, until its _run has taken over: the thread
            # that starts it holds the condition until Thread.start() has seen it start,
            # and a collection in the new thread's own start-up ran such a finalizer
            # there, which waited for the condition (CI, CPython 3.10: both waited for
            # ever); a little later it would have queued a flush for itself.
            raise RuntimeError(
                "cannot flush from the group-commit thread itself (a __del__ or weakref "
                "callback run there by the garbage collector)"
            )
        check_not_held(self._cond)  # a finalizer run inside submit's own bookkeeping
        entering = entering or self._entering()
        if entering is not None:  # (one run inside an msync of the file, on any map)
            entering()
        del entering
        request = CommitRequest(start, end, wake, scheduler)
        request.owner = sync or self._sync()
        if sys.is_finalizing():
            # A finalizer run by the interpreter's last collection: no thread can start
            # now (3.11 waits for ever for one that never runs, 3.12+ refuses), and no
            # other thread runs Python.  Flush on this thread.
            self.batches += 1
            self._flush([request])
            _wake([request])
            return request
        with self._cond:
            if self._committer_pid == os.getpid() and not self._lingering:
                # The usual case, a committer busy with a batch: one append under the
                # condition, which the committer takes with its next batch.  No notify,
                # and no signals held: that section cost 10 to 13 us, a fifth of the
                # event loop's time per commit with 64 committers.  (A Ctrl-C raised after
                # the append leaves a request that is flushed and woken for nobody.)
                self._pending.append(request)
                if self._committer_pid == os.getpid():
                    return request
                # A fork between the check and the append (a trace hook's, or a signal
                # handler's): this child has no committer for it, and the child's hook
                # did not see it queued.  Taken back, for the path below.
                self._pending.remove(request)
        # Queued, the committer's place taken and its thread started in one section with
        # signals held (the thread's start-up is all it waits for): a Ctrl-C handled as
        # _start_committer began left the place taken with no thread, and a second one
        # handled as the except path's _unstart began did the same; every later flush of
        # the map then waited for ever.  What arrives is raised once the request is
        # queued for a running committer.
        made: list[threading.Thread] = []  # (made before the place is taken: it allocates)
        with self._cond, signals_held():
            self._pending.append(request)
            # A committer of another process (the parent of a fork) does not run here.
            if self._committer_pid == os.getpid():
                self._cond.notify()  # it may be lingering
                return request
            self._committer_pid = os.getpid()
            # Started with the condition held: a finalizer run while the thread is made
            # (it allocates) gets RuntimeError above, instead of queueing for a committer
            # that this frame has not started yet.  (The new thread waits for the
            # condition before it looks at the queue.)
            try:
                self._start_committer(made)
            except BaseException:
                if not made or made[0].ident is None:  # it never started
                    self._unstart(request)
                raise
        return request

    def outstanding(self) -> bool:
        """Whether requests may be waiting or running (the committer thread is alive in
        this process: it lingers briefly after its last batch)."""
        return bool(self._pending) or self._committer_pid == os.getpid()

    def owed(self) -> bool:
        """Whether requests are waiting, or a batch of them is running and not finished
        (a close must then make the map durable for them); a committer that only lingers
        owes nothing."""
        return bool(self._pending) or (self._running and self._committer_pid == os.getpid())

    def _start_committer(self, made: list[threading.Thread]) -> None:
        made.append(thread := threading.Thread(target=self._run, name="anymmap group commit"))
        self._starting = thread  # until its _run takes over (see submit)
        try:
            start_thread(thread)  # (a Ctrl-C cannot leave it started but stuck)
        except BaseException:
            if thread.ident is None and self._starting is thread:  # it never started
                self._starting = None
            raise

    def _unstart(self, request: CommitRequest) -> None:
        """The committer thread of :meth:`submit` never started: take ``request`` back,
        and start one for the requests of others queued meanwhile, or fail them."""
        with self._cond:
            if request in self._pending:
                self._pending.remove(request)
            stranded = bool(self._pending)
            self._committer_pid = os.getpid() if stranded else 0
        if stranded:
            self._start_or_fail()

    def _restart(self) -> None:
        """Start a committer for the requests :meth:`after_fork_in_child` queued."""
        with self._cond:
            if not self._pending or self._committer_pid == os.getpid():
                return
            self._committer_pid = os.getpid()
        self._start_or_fail()

    def _start_or_fail(self) -> None:
        """Start a committer for the requests queued (the committer's place is taken
        already), or, if no thread can start, fail them with the reason."""
        made: list[threading.Thread] = []
        try:
            self._start_committer(made)
        except Exception as exc:  # noqa: BLE001 - no thread at all: fail them
            if made and made[0].ident is not None:
                return
            with self._cond:
                left, self._pending = self._pending, []
                self._committer_pid = 0
            _fail(left, 0, exc)

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:
            # Whatever kills the committer (a MemoryError in its own bookkeeping: adversary
            # round 59) must not leave its place taken by a thread that is gone, with
            # requests nobody serves: every later flush of the map waited for ever.
            self._abandon(exc)
            raise

    def _abandon(self, exc: BaseException) -> None:
        """The committer thread dies of ``exc``: give its place up and fail the requests
        it was serving or would have served with ``exc``."""
        with self._cond:
            if self._committer_thread not in (None, threading.get_ident()):
                return  # (another committer of this process serves the queue)
            # The place given up first, allocating nothing: another MemoryError is likely
            # here (adversary round 60).
            self._committer_pid = 0
            self._committer_thread = None
            self._running = False
            batch, self._batch = self._batch, _NO_BATCH
            try:
                pending, self._pending = self._pending, []
            except MemoryError:  # what is queued stays, for the committer the next flush starts
                pending = _NO_BATCH
        _fail(batch, self.batches, exc)  # (all of it: it may have died waking it)
        _fail(pending, self.batches, exc)

    def _serve(self) -> None:
        with self._cond:
            starting = self._starting
            if starting is not None and starting.ident == threading.get_ident():
                self._starting = None  # (taken over by _committer_thread, or not needed)
            if self._committer_thread is not None:
                # Another committer of this process runs, and takes what is queued: a
                # fork inside submit, after it claimed the committer's place, had both
                # the child's restart and submit start one (adversary round 44).
                return
            self._committer_thread = threading.get_ident()
        while True:
            with self._cond:
                if not self._pending:
                    self._lingering = True
                    try:
                        self._cond.wait(LINGER)
                    finally:
                        self._lingering = False
                batch, self._pending = self._pending, []
                if not batch:
                    self._committer_pid = 0
                    self._committer_thread = None
                    return
                self._running = True
                self._batch = batch
            self.batches += 1
            for cluster in _clusters(batch):
                self._flush(cluster)
            self._running = False  # (finished: before the waiters may close the map)
            _wake(batch)
            self._batch = []

    def _flush(self, cluster: list[CommitRequest]) -> None:
        start = min(request.start for request in cluster)
        end = max(request.end for request in cluster)
        error: BaseException | None = None
        try:
            # (A request's own: the weak reference dies before a finalizer that the
            # cyclic collector runs is done with the map; see submit.)
            sync = self._sync() or next((r.owner for r in cluster if r.owner), None)
            if sync is None:  # the map is gone: closed, or collected
                raise ClosedMapError("map")
            sync(start, end - start)
            del sync
            self.msyncs += 1
        except Exception as exc:  # noqa: BLE001 - handed to every waiter it concerns
            error = exc
            self.failed_batches.append(self.batches)
        for request in cluster:
            request.finish(self.batches, None if error is None else copy.copy(error))


#: The batch of a committer that is not running one (never changed: only replaced).
_NO_BATCH: list[CommitRequest] = []


def _fail(requests: list[CommitRequest], batch: int, exc: BaseException) -> None:
    """Finish the unfinished ``requests`` with ``exc`` and wake them all (a wake is
    idempotent).  Where memory may have run out: each gets a copy of ``exc`` if one can
    be made, else ``exc`` itself, and if waking them together fails, each is woken on
    its own."""
    for request in requests:
        if not request.done:
            try:
                error = copy.copy(exc)
            except Exception:  # noqa: BLE001 - then the one exception, shared
                error = exc
            request.finish(batch, error)
    try:
        _wake(requests)
    except Exception:  # noqa: BLE001 - one at a time, allocating less
        for request in requests:
            with suppress(Exception):
                if request.scheduler is None:
                    request._wake()
                else:
                    request.scheduler(request._wake)


def _wake(batch: list[CommitRequest]) -> None:
    """Wake the requesters of a finished batch: one call per event loop (a wake-up of a
    loop from another thread is a system call and a hand-over of the GIL), and the
    blocking ones directly."""
    per_loop: dict[Scheduler, list[Callable[[], None]]] = {}
    for request in batch:
        if request.scheduler is None:
            request._wake()
        else:
            per_loop.setdefault(request.scheduler, []).append(request._wake)
    for scheduler, wakes in per_loop.items():
        with suppress(RuntimeError):  # that loop has ended (trio: RunFinishedError)
            scheduler(partial(_call_all, wakes))


def _call_all(calls: list[Callable[[], None]]) -> None:
    for call in calls:
        call()


def _clusters(batch: list[CommitRequest]) -> list[list[CommitRequest]]:
    """The requests, grouped so that each group's ranges are closer than GAP_LIMIT."""
    ordered = sorted(batch, key=lambda request: request.start)
    clusters: list[list[CommitRequest]] = [[ordered[0]]]
    reach = ordered[0].end
    for request in ordered[1:]:
        if request.start - reach > GAP_LIMIT:
            clusters.append([request])
        else:
            clusters[-1].append(request)
        reach = max(reach, request.end)
    return clusters


class DirtyRanges:
    """The bytes written to a map since the last durable flush that covered them.

    Each write adds its range with a sequence number; a flush notes the sequence number
    when it starts and, once durable, forgets what it covered that was written before it
    started (a write during the flush may have missed it, so it stays).  To stay small,
    the ranges are merged into their union (keeping the newest number of those merged,
    which can only keep bytes pending longer, never report them durable early) whenever
    :meth:`pending` counts them after a write, and when they grow to twice what the last
    merge left (at least :data:`MERGE_AT`): a write costs amortized O(log n), not a sort of
    every range (random writes never merge).

    The count is exact while at most :data:`MAX_EXACT` separate ranges are pending.  Past
    that, ranges are rounded out to whole 4 KiB pages, then to 64 KiB blocks and so on
    (each step 16 times coarser) until no more than that many remain: a count that may
    be too high, never too low, in bounded memory (about 1.5 MB) and with merges that
    take a few milliseconds at most, not seconds.  Once everything pending is flushed,
    the count is exact again.
    """

    MERGE_AT = 1024
    MAX_EXACT = 4096
    FIRST_GRAIN = 4096

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entries: list[tuple[int, int, int]] = []  # (start, end, sequence number)
        #: Changes that could not take the lock (see :meth:`_later`), applied by whoever
        #: takes it next, before anything else.
        self._deferred: deque[tuple[str, int, int, int]] = deque()
        self._limit = self.MERGE_AT  # merge when there are more entries than this
        self._merged = True  # nothing was added since the last merge
        self._grain = 1  # the ranges are rounded out to multiples of this
        self._upper = 0  # the sum of the entries' lengths: pending() or more
        self._sequence = 0
        self._listener: weakref.ref[Callable[[int], None]] | None = None

    @property
    def listener(self) -> Callable[[int], None] | None:
        """Called after every write with an upper bound of the bytes now pending (the
        auto-flush policy; it asks :meth:`pending` before it acts).

        Held weakly: the block that claimed it holds it.  A block whose end never ran (on
        trio a ``KeyboardInterrupt`` is raised wherever the code is, also as its
        ``finally`` begins) then gives the claim back once its frame is gone, instead of
        leaving the map "already flushing" for good.
        """
        ref = self._listener
        return None if ref is None else ref()

    def claim_listener(self, listener: Callable[[int], None]) -> None:
        """Make ``listener`` this map's one auto-flush policy.

        :raises RuntimeError: if it has one (another block, maybe on another thread: the
            check and the claim are one step, or two threads could both get in)
        """
        with self._lock:
            if self.listener is not None:
                raise RuntimeError("this map already flushes automatically")
            self._listener = weakref.ref(listener)

    def drop_listener(self, listener: Callable[[int], None]) -> None:
        """End what :meth:`claim_listener` began (a policy set since is left alone)."""
        with self._lock:
            if self.listener is listener:
                self._listener = None

    def after_fork_in_child(self) -> None:
        self._lock = threading.RLock()  # a thread of the parent may have held it
        # The parent's auto-flush wakes a thread or event loop that is not here (and may
        # take a lock a vanished thread held): the child may start an auto_flush of its own.
        self._listener = None

    def _later(self, kind: str, first: int, last: int, upto: int, wait: bool) -> bool:
        """Take the lock and apply what was deferred, or, if this thread holds it already
        (a finalizer or signal handler that Python ran inside one of these methods) or
        ``wait`` is false and another thread holds it, defer the change and return True.

        Deferring keeps a write counted (never lost), and lets the committer clean up
        after a flush without waiting for a writer whose finalizer waits for that flush.
        Only the lock's holder takes from the queue, and ``deque.append`` is atomic, so a
        change appended while :meth:`_drain` runs is applied by it or by the next holder.
        """
        if not self._take(wait):
            self._deferred.append((kind, first, last, upto))
            return True
        if self._deferred:
            self._drain()
        return False

    def _add(self, start: int, end: int) -> int:  # with self._lock held
        self._sequence += 1
        self._entries.append((start, end, self._sequence))
        self._merged = False
        self._upper += end - start
        if len(self._entries) > self._limit:
            self._merge()
        return self._upper

    @staticmethod
    def _waits(lock: threading.RLock) -> bool:
        """Whether the writers' and counters' usual case holds: this thread does not hold
        the lock (a finalizer inside these methods) and the interpreter is not exiting,
        so that the caller takes it with ``with lock:``.  Not ``acquire()``, then
        ``try``: Python handles signals as a call returns, and a Ctrl-C handled as
        ``acquire()`` returned left the lock taken for good (every later write, count
        and flush of the map waited for it); a ``with`` statement takes a C lock with no
        such point before its exit is armed (``BEFORE_WITH``, Python 3.10 to 3.13; 3.14
        reopened the gap, gh-148874, fixed in 3.15)."""
        return not held_here(lock) and not sys.is_finalizing()

    def _take(self, wait: bool) -> bool:
        """Take the lock, unless this thread holds it already (a finalizer inside these
        methods), or it is taken and ``wait`` is false or the interpreter is exiting (a
        daemon thread stopped holding it would never give it back)."""
        lock = self._lock
        if held_here(lock):
            return False
        return lock.acquire(False) or (wait and not sys.is_finalizing() and lock.acquire())

    def _drain(self) -> None:  # with self._lock held
        # Each change leaves the queue only once applied: a finalizer run in between
        # that counts (see pending) must find a deferred write in one place or the other.
        deferred = self._deferred
        while deferred:
            kind, first, last, upto = deferred[0]
            if kind == "add":
                self._sequence += 1
                self._entries.append((first, last, self._sequence))
                self._merged = False
                self._upper += last - first
            elif kind == "clean":
                self._clean(first, last, upto)
            else:
                self._cut(first)
            deferred.popleft()

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        lock = self._lock
        if self._waits(lock):
            with lock:  # (not acquire, then try: see _waits)
                if self._deferred:
                    self._drain()
                upper = self._add(start, end)
        elif self._later("add", start, end, 0, True):
            return
        else:
            try:
                upper = self._add(start, end)
            finally:
                lock.release()
        listener = self.listener
        if listener is not None:
            listener(upper)

    def mark(self) -> int:
        """The sequence number to pass to :meth:`clean` once a flush that starts now is
        durable.  (No lock: the number only grows, and a write is added after its bytes
        are in memory, so a flush starting now covers every write numbered up to it;
        deferred writes get their numbers later, so they stay pending: too high a count,
        never too low.)  Deferred writes are numbered first if the lock is free, so that a
        flush of everything leaves nothing pending."""
        if self._deferred and self._take(False):
            try:
                self._drain()
            finally:
                self._lock.release()
        return self._sequence

    def clean(self, start: int, end: int, upto: int) -> None:
        """Forget the parts of ``[start, end)`` written at or before ``upto``; deferred
        if another thread holds the lock (the committer never waits for a writer)."""
        if self._later("clean", start, end, upto, False):
            return
        try:
            self._clean(start, end, upto)
        finally:
            self._lock.release()

    def _clean(self, start: int, end: int, upto: int) -> None:  # with self._lock held
        kept: list[tuple[int, int, int]] = []
        for first, last, sequence in self._entries:
            if sequence > upto or last <= start or first >= end:
                kept.append((first, last, sequence))
                continue
            if first < start:
                kept.append((first, start, sequence))
            if last > end:
                kept.append((end, last, sequence))
        self._set(kept)

    def cut(self, length: int) -> None:
        """Forget whatever lies at or past ``length`` (the map shrank); deferred if
        another thread holds the lock (a resize never waits for a finalizer that flushes
        inside the bookkeeping: the flush may be waiting for the resize)."""
        if self._later("cut", length, 0, 0, False):
            return
        try:
            self._cut(length)
        finally:
            self._lock.release()

    def _cut(self, length: int) -> None:  # with self._lock held
        self._set(
            [
                (first, min(last, length), sequence)
                for first, last, sequence in self._entries
                if first < length
            ]
        )

    def maybe_pending(self) -> bool:
        """Whether bytes may be pending, without waiting for the lock (a range is
        forgotten only once durable, so no range means nothing pending)."""
        return bool(self._entries or self._deferred)

    def pending(self) -> int:
        """The bytes pending: the size of the union of the ranges (rounded out to the
        grain, past :data:`MAX_EXACT` ranges); from inside one of these methods (a
        finalizer), or at exit while a stopped thread holds the lock, an upper bound."""
        lock = self._lock
        if self._waits(lock):
            with lock:  # (not acquire, then try: see _waits)
                return self._count()
        if not self._take(True):
            later = sum(b - a for kind, a, b, _ in list(self._deferred) if kind == "add")
            return self._upper + later
        try:
            return self._count()
        finally:
            lock.release()

    def _count(self) -> int:  # with self._lock held
        if self._deferred:
            self._drain()
        if not self._merged:
            self._merge()
        return self._upper

    def _merge(self) -> None:  # with self._lock held
        merged = _union(self._entries, self._grain)
        while len(merged) > self.MAX_EXACT:
            # The finest coarser grain at which the ranges' starts fall in few enough
            # blocks (counted without sorting: one union, not one per step, on the loop).
            grain = self.FIRST_GRAIN if self._grain == 1 else self._grain * 16
            while len({first // grain for first, _, _ in merged}) > self.MAX_EXACT // 2:
                grain *= 16
            self._grain = grain
            merged = _union(merged, grain)
        self._set(merged)
        self._merged = True
        self._limit = max(self.MERGE_AT, 2 * len(merged))

    def _set(self, entries: list[tuple[int, int, int]]) -> None:  # with self._lock held
        self._entries = entries
        self._upper = sum(last - first for first, last, _ in entries)
        if not entries:
            self._grain = 1  # all flushed: exact again


def _union(entries: list[tuple[int, int, int]], grain: int) -> list[tuple[int, int, int]]:
    """The union of ``entries`` (sorted, with the newest sequence number of each group),
    each rounded out to multiples of ``grain`` but never past the last byte of any."""
    merged: list[tuple[int, int, int]] = []
    if grain > 1 and entries:
        end_of_all = max(last for _, last, _ in entries)
        entries = [
            (first - first % grain, min(last + -last % grain, end_of_all), sequence)
            for first, last, sequence in entries
        ]
    for first, last, sequence in sorted(entries):
        if merged and first <= merged[-1][1]:
            start, end, newest = merged[-1]
            merged[-1] = (start, max(end, last), max(newest, sequence))
        else:
            merged.append((first, last, sequence))
    return merged
