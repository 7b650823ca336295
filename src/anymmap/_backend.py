"""The backend layer: the few event-loop primitives the async maps and the lock need.

Layers: ``_sys`` (system calls) → ``_core`` (sync maps, no event loop) → **this module**
(and ``_rwlock``, built on it) → the facades (``_async``, ``_sync``).  It imports nothing
of anymmap.

What it gives, for asyncio (also with uvloop) and trio:

* **Task identity and checkpoints** (:func:`current_task`, :func:`checkpoint`,
  :class:`Waiter`).  anyio has them too, but its generic paths cost a few microseconds
  each (a backend lookup, a ``TaskInfo`` per ``get_current_task()``), which would triple
  the price of an uncontended lock acquire; each function here makes one cheap backend
  test (sniffio's thread-local says "trio" while trio runs a task) and goes straight to
  the backend's own primitive.

* **Worker calls that are never abandoned** (:func:`run_sync`).  Memory a worker thread
  touches is only guaranteed to stay mapped while its caller waits for it (the caller
  holds the map's lock or pin), so the caller must wait for the thread whatever happens,
  and only then see a cancellation.

  - *trio*: ``anyio.to_thread.run_sync`` inside a shielded cancel scope is enough: trio
    delivers cancellation only through its scopes.
  - *asyncio*: a native ``Task.cancel()`` (``asyncio.run`` cancelling every task on its
    way out, ``asyncio.timeout``) goes through anyio's shield.  So anyio's worker call runs
    in a task of its own (the *hop*), the worker hands the outcome straight to a future of
    ours, and the caller waits — through any number of cancellations — for that outcome
    **and** for the hop to end.  The second half matters at shutdown: anyio stops its
    (non-daemon) worker threads from a callback of their root task, which may be the
    hop; a caller that resumed before the hop ended could let the loop close with the hop
    pending, and the interpreter would wait for that worker at exit for ever.

* **Closing that survives cancellation** (:func:`shielded`): on trio a shielded scope;
  on asyncio the work runs in a task of its own that the caller waits for, as above.

* **The worker limiter** (:func:`thread_limiter`): one ``CapacityLimiter`` per event loop
  for anymmap's blocking calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import types
from collections.abc import Callable, Coroutine, Generator
from functools import partial
from math import inf
from typing import Any, Generic, NoReturn, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from ._core._forks import renew_in_child
from ._stopping import StopRequested, run_stoppable

# Trio names itself in sniffio's thread-local for as long as it runs a task; anything else
# anymmap runs under is asyncio.
backend_local: Any
try:
    from sniffio import thread_local as _sniffio_thread_local

    backend_local = _sniffio_thread_local
except ImportError:  # pragma: no cover - sniffio comes with trio; without it there is no trio

    class _NoSniffio(threading.local):
        name: str | None = None

    backend_local = _NoSniffio()

T = TypeVar("T")

_asyncio_get_running_loop = asyncio.get_running_loop

#: Worker threads one event loop may use at once for anymmap's blocking calls.
DEFAULT_THREAD_TOKENS = 16

_limiter: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar(
    "anymmap.thread_limiter"
)


def current_task() -> object:
    """Return the running task object (an ``asyncio.Task`` or a ``trio.lowlevel.Task``).

    :raises RuntimeError: outside of a task
    """
    if backend_local.name == "trio":
        return trio_current_task()

    return asyncio_current_task() or not_in_a_task()


#: ``asyncio.current_task``, bound once for the hot paths.
asyncio_current_task = asyncio.current_task


def trio_current_task() -> object:
    return _trio().lowlevel.current_task()


def current_loop() -> object:
    """Return the event loop of the calling thread: the running asyncio loop, or the trio
    run's token (a value that stands for the run).

    :raises RuntimeError: if no event loop runs in this thread
    """
    if backend_local.name == "trio":
        return _trio().lowlevel.current_trio_token()
    return _asyncio_get_running_loop()


def loop_running(loop: object) -> bool:
    """Whether ``loop`` (from :func:`current_loop`, asked from any thread) still runs."""
    if isinstance(loop, asyncio.AbstractEventLoop):  # (uvloop's loops too)
        return loop.is_running()
    trio = _trio()
    try:
        loop.run_sync_soon(_nothing)  # type: ignore[attr-defined]  # a TrioToken
    except trio.RunFinishedError:  # the only public question a token answers
        return False
    return True


def loop_closed(loop: object) -> bool:
    """Whether ``loop`` (from :func:`current_loop`) can never run a task again: a closed
    asyncio loop, or a trio run that has finished."""
    if isinstance(loop, asyncio.AbstractEventLoop):
        return loop.is_closed()
    return not loop_running(loop)


def task_loop_closed(task: object) -> bool:
    """Whether ``task`` (from :func:`current_task`) is an asyncio task of a closed loop:
    it can never run again (the collector may still close its coroutine)."""
    return isinstance(task, asyncio.Future) and loop_closed(task.get_loop())


def _nothing() -> None:
    pass


def not_in_a_task() -> NoReturn:
    raise RuntimeError("anymmap's async API must be called from inside an asyncio or trio task")


def _trio() -> types.ModuleType:
    return _trio_module or _load_trio()


#: trio, once a trio run has used anymmap (an import statement per call costs the lock's
#: fast path on trio a few hundred nanoseconds).
_trio_module: types.ModuleType | None = None


def _load_trio() -> types.ModuleType:
    global _trio_module
    import trio

    if not _ki_protected:
        _protect_from_keyboard_interrupt(trio)
    _trio_module = trio
    return trio


_ki_protected = False


def _free_trio_run_in_child() -> None:
    """In a child forked by a task of a trio run (which runs on in the child): give the
    run a new worker limiter, and free the lock of the run's queue of calls from other
    threads if a thread of the parent held it.

    The worker calls in flight at the fork are lost with their threads, and each kept
    its token of the run's limiter for good: with 16 in flight, every later worker call
    of the child (a ``populate``, a ``resize``, an ``aclose``, a big copy) waited for ever
    (adversary round 45).  The lost calls' tasks keep the old limiter.

    The lock: ``run_sync_soon`` holds it while it queues a call; trio's worker threads
    call it to hand a result back, and can still be inside when the task they woke runs
    and forks.  The child then inherited it held by a thread that is gone, and every
    later call into its run from a thread (trio's own worker threads', anymmap's group
    committer's) waited for it for ever (one run in ten of
    ``test_a_fork_while_a_task_of_a_trio_loop_flushes``, in CI).  trio forgets its idle
    worker threads in a child, but not this lock.  The lock guards one queue append: a
    call cut at the fork is either queued or lost (a worker call in flight at a fork is
    lost anyway, see the README).  Through trio's private attributes: if they change,
    nothing is done (and ``tests/reliability/test_fork.py`` fails)."""
    if _trio_module is None:
        return  # (no trio run has used anymmap)
    try:
        token = _trio_module.lowlevel.current_trio_token()
    except RuntimeError:
        return  # this thread runs no trio run
    queue: Any = getattr(token, "_reentry_queue", None)
    lock = getattr(queue, "lock", None)
    if lock is not None and not lock.acquire(blocking=False):  # (this thread's: acquired)
        queue.lock = threading.RLock()
    elif lock is not None:
        lock.release()
    with contextlib.suppress(LookupError):  # (none yet: nothing was lost)
        _limiter.get()
        _limiter.set(anyio.CapacityLimiter(DEFAULT_THREAD_TOKENS))


renew_in_child(_free_trio_run_in_child)


def _protect_from_keyboard_interrupt(trio: types.ModuleType) -> None:
    """Mark every function of anymmap (of its modules loaded by then: the async API and
    the core, which ``import anymmap`` loads) as trio marks its own: a Ctrl-C that
    arrives while one runs on trio's thread is delivered at the task's next checkpoint,
    not in the middle of a lock's or a map's bookkeeping (trio raises
    ``KeyboardInterrupt`` at any bytecode of code it does not know to be protected).
    User code called from inside
    (an ``__index__``, a progress callback) is protected too; the body of a borrow or of
    a lock's ``async with`` is the user's own and is not.

    Needs trio's registry of protected code objects (recent trio, 0.35 here, where
    ``enable_ki_protection`` returns the function itself); with a trio old enough to
    wrap functions instead, nothing is marked.
    """
    global _ki_protected
    _ki_protected = True
    protect = trio.lowlevel.enable_ki_protection
    seen: set[types.CodeType] = set()

    class _Code:  # what enable_ki_protection reads: __code__
        __slots__ = ("__code__",)

        def __init__(self, code: types.CodeType) -> None:
            self.__code__ = code

    here = os.path.dirname(__file__) + os.sep

    def mark(code: types.CodeType) -> None:
        if code in seen or not code.co_filename.startswith(here):  # (not contextlib's)
            return
        seen.add(code)
        holder = _Code(code)
        if protect(holder) is not holder:  # pragma: no cover - an older trio: a wrapper
            raise TypeError
        for const in code.co_consts:  # nested functions, lambdas, comprehensions
            if isinstance(const, types.CodeType):
                mark(const)

    def visit(obj: object, module: str, depth: int = 0) -> None:
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        if isinstance(obj, property):
            for accessor in (obj.fget, obj.fset, obj.fdel):
                visit(accessor, module, depth)
        elif isinstance(obj, types.FunctionType) and obj.__module__ == module:
            mark(obj.__code__)
            visit(getattr(obj, "__wrapped__", None), module, depth)  # contextmanager
        elif isinstance(obj, type) and obj.__module__ == module and depth < 3:
            for member in vars(obj).values():
                visit(member, module, depth + 1)

    try:
        for name, module in list(sys.modules.items()):
            if name == "anymmap" or name.startswith("anymmap."):
                for obj in list(vars(module).values()):
                    visit(obj, name)
    except TypeError:  # pragma: no cover - an older trio (see above)
        pass


@types.coroutine
def checkpoint() -> Generator[Any, Any, None]:
    """Check for cancellation and let other tasks run (``trio.lowlevel.checkpoint``).

    Hot paths (the RWLock guards) inline it.
    """
    if backend_local.name == "trio":
        yield from trio_checkpoint()
    else:
        # A bare yield is what asyncio.sleep(0) does: the task is rescheduled at once and
        # a pending cancellation is delivered here.
        yield


@types.coroutine
def checkpoint_before() -> Generator[Any, Any, None]:
    """The first half of a checkpoint around work that completes without yielding.

    The work then runs in the order the calls were made, on every backend: on trio this
    half only raises if the task is cancelled (trio reorders tasks woken from a
    checkpoint, so the yield comes after the work, in :func:`checkpoint_after`); asyncio
    runs tasks in order, so here the whole checkpoint comes first and a cancellation is
    delivered before any work is done.
    """
    if backend_local.name == "trio":
        yield from trio_checkpoint_if_cancelled()
    else:
        yield


@types.coroutine
def checkpoint_after() -> Generator[Any, Any, None]:
    """The second half (see :func:`checkpoint_before`): a cancel-shielded yield on trio,
    as the work is done; nothing on asyncio."""
    if backend_local.name == "trio":
        yield from trio_cancel_shielded_checkpoint()


def trio_checkpoint() -> Generator[Any, Any, None]:
    """``trio.lowlevel.checkpoint()`` as an iterator for ``yield from``."""
    return _trio().lowlevel.checkpoint().__await__()  # type: ignore[no-any-return]


def trio_checkpoint_if_cancelled() -> Generator[Any, Any, None]:
    """``trio.lowlevel.checkpoint_if_cancelled()``: raise if cancelled, else no yield."""
    return _trio().lowlevel.checkpoint_if_cancelled().__await__()  # type: ignore[no-any-return]


def trio_cancel_shielded_checkpoint() -> Generator[Any, Any, None]:
    """``trio.lowlevel.cancel_shielded_checkpoint()``: yield, but never raise Cancelled."""
    return _trio().lowlevel.cancel_shielded_checkpoint().__await__()  # type: ignore[no-any-return]


class Waiter:
    """A one-shot wake-up for a task parked in a queue.

    ``wake()`` may be called from the event loop thread at any time, also after the waiting
    task was cancelled; it never raises.
    """

    __slots__ = ("_event", "_future")

    _future: asyncio.Future[None] | None
    _event: Any

    def __init__(self) -> None:
        if backend_local.name == "trio":
            self._future = None
            self._event = _trio().Event()
        else:
            self._future = _asyncio_get_running_loop().create_future()

    def wake(self) -> None:
        if self._future is None:
            self._event.set()
        elif not self._future.done():
            self._future.set_result(None)

    @types.coroutine
    def wait(self) -> Generator[Any, Any, None]:
        if self._future is None:
            yield from self._event.wait().__await__()
        else:
            yield from self._future


class ThreadWaiter(Waiter):
    """A :class:`Waiter` that another thread may wake (:meth:`wake_from_thread`): what a
    task waits on while a thread of anymmap's own (the group committer) works for it.

    Waking after the event loop ended is a no-op.
    """

    __slots__ = ("_loop", "_token")

    def __init__(self) -> None:
        super().__init__()
        if self._future is None:
            self._token = _trio().lowlevel.current_trio_token()
        else:
            self._loop = self._future.get_loop()

    def wake_from_thread(self) -> None:
        try:
            self.scheduler(self.wake)
        except RuntimeError:  # the loop is closed (trio: RunFinishedError)
            pass

    @property
    def scheduler(self) -> Callable[[Callable[[], None]], object]:
        """What runs a callable on this waiter's event loop from another thread (equal for
        every waiter of one loop, so that a thread can wake many with one call)."""
        if self._future is None:
            return self._token.run_sync_soon  # type: ignore[no-any-return]
        return self._loop.call_soon_threadsafe


def thread_limiter() -> anyio.CapacityLimiter:
    """Return the limiter for anymmap's worker threads in the current event loop."""
    try:
        return _limiter.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(DEFAULT_THREAD_TOKENS)
        _limiter.set(limiter)
        return limiter


async def run_sync(
    func: Callable[..., T],
    *args: object,
    undo: Callable[[T], object] | None = None,
    stoppable: bool = False,
) -> T:
    """Run ``func(*args)`` in a worker thread and wait for it, whatever happens.

    The call is never abandoned: memory a worker touches is only guaranteed to stay mapped
    while its caller waits (and holds its lock), so an abandoned worker could fault.  A
    cancellation that arrives meanwhile is held back until the thread has finished, then
    delivered; if the call failed too, the cancellation wins and chains the error.

    ``undo`` is for a call that makes something (a constructor: a map, a file) whose
    result must not be dropped: dropped, a map was left to the collector, whose finalizer
    deleted the file of a region that ``create(replace=True)`` had just put in place of
    the user's.  Such a call is not started in a scope cancelled already (it raises at
    once, as ``to_thread.run_sync`` does: nothing is made).  If the call succeeded while
    a cancel scope (trio's, anyio's) was cancelled, the result is returned and the scope
    raises at the caller's next checkpoint, as it does by itself (trio's rule:
    ``Cancelled`` means the operation did not happen).  A native ``Task.cancel()``
    (``asyncio.timeout``, ``wait_for``, ``TaskGroup``) is delivered once and cannot be
    asked again safely on any version (``uncancel()`` does not withdraw a pending
    request): ``undo(result)`` then runs in a worker thread (it closes the map, removes a
    file the call created), and the cancellation is raised.

    ``stoppable`` is for a call with stop points (see ``_stopping``): a cancellation
    that arrives while it runs makes its next stop point raise, and the call undoes its
    work and ends early (then the cancellation is raised, as for a failed call).  On trio
    the wait is then not shielded: trio never abandons the thread either, and lets the
    thread see the cancellation (``trio.from_thread.check_cancelled``); on asyncio the
    wait looks outside its shield every :data:`_STOP_POLL` seconds for a cancelled anyio
    scope (a native cancellation reaches it at once).  A call that finishes before a
    stop point sees the cancellation returns or is undone as above.

    On asyncio the caller waits for a future that only the worker thread resolves, so not
    even cancelling every task (as ``asyncio.run`` does on its way out) ends the wait
    early.  Worker threads come from anyio, limited per event loop by
    :func:`thread_limiter`.
    """
    if undo is not None:  # (a constructor: nothing is made in a scope already cancelled)
        await anyio.lowlevel.checkpoint_if_cancelled()
    if backend_local.name == "trio":
        if stoppable:
            checked = partial(run_stoppable, anyio.from_thread.check_cancelled, func)
            result = await anyio.to_thread.run_sync(
                _Dropping(checked, args), limiter=thread_limiter()
            )
        else:
            with anyio.CancelScope(shield=True):
                result = await anyio.to_thread.run_sync(
                    _Dropping(func, args), limiter=thread_limiter()
                )
        if undo is None:  # (else trio's scope raises at the next checkpoint by itself)
            await anyio.lowlevel.checkpoint_if_cancelled()
        return result

    if not stoppable:
        return await _run_on_asyncio(func, args, undo, None)
    try:
        return await _run_on_asyncio(func, args, undo, _Stop())
    except _StoppedInVain:
        # The scope that stopped it was shielded off since (anyio lets a live scope's
        # shield be switched on), so nothing cancels the caller: do it again, to the end
        # (adversary round 68: an AssertionError reached the caller).
        return await _run_on_asyncio(func, args, undo, None)


async def _run_on_asyncio(
    func: Callable[..., T],
    args: tuple[object, ...],
    undo: Callable[[T], object] | None,
    stop: _Stop | None,
) -> T:
    if stop is not None:
        func = partial(run_stoppable, stop.check, func)
    call = _WorkerCall(func, args, asyncio.get_running_loop())
    hop = asyncio.ensure_future(anyio.to_thread.run_sync(call.run, limiter=thread_limiter()))
    hop.add_done_callback(call.hop_done)
    # Wait for anyio's task as well as for the outcome: the worker delivers the outcome
    # first, and a caller that resumed before anyio's task ended could let the loop close
    # with that task pending, leaving anyio's (non-daemon) worker thread waiting forever
    # for a stop that never comes, and the interpreter waiting for it at exit.
    return await _wait_for(call.outcome, hop, undo=undo, stop=stop)


class _StoppedInVain(Exception):
    """A stoppable call stopped for a cancel scope that no longer reaches its caller."""


#: How often a wait for a stoppable call looks for a cancelled anyio scope (asyncio).
_STOP_POLL = 0.02


class _Stop:
    """The stop check of one stoppable worker call on asyncio (see ``_stopping``)."""

    __slots__ = ("requested",)

    def __init__(self) -> None:
        self.requested = False  # (set by the event loop's thread, read by the worker)

    def check(self) -> None:
        if self.requested:
            raise StopRequested


class _Dropping(Generic[T]):
    """``func(*args)`` for a worker thread, that lets go of both as the call returns.

    A worker thread's frames (anyio's, trio's) keep what they ran until they report the
    outcome and take the next job; a caller that resumed meanwhile and ended a borrow
    whose view (a cast of it, a NumPy array over it) was among the arguments found it
    still exported: ``BorrowError`` under load (adversary round 37's follow-up)."""

    __slots__ = ("_args", "_func")

    def __init__(self, func: Callable[..., T], args: tuple[object, ...]) -> None:
        self._func = func
        self._args = args

    def __call__(self) -> T:
        func, args = self._func, self._args
        del self._func, self._args
        return func(*args)


class _WorkerCall(Generic[T]):
    """One call for a worker thread; its outcome reaches the event loop from the thread."""

    def __init__(
        self, func: Callable[..., T], args: tuple[object, ...], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._func = func
        self._args = args
        self._loop = loop
        self._lock = threading.Lock()
        self._started = False
        self._abandoned = False
        self.outcome: asyncio.Future[T] = loop.create_future()

    def run(self) -> None:
        """The worker thread's part."""
        with self._lock:
            if self._abandoned:
                return
            self._started = True
        func, args = self._func, self._args
        del self._func, self._args  # (see _Dropping)
        try:
            result = func(*args)
        except BaseException as exc:  # noqa: BLE001 - raised again in the waiting task
            self._deliver(self._fail, exc)
        else:
            self._deliver(self._succeed, result)

    def _deliver(self, how: Callable[[Any], None], value: object) -> None:
        try:
            self._loop.call_soon_threadsafe(how, value)
        except RuntimeError:  # pragma: no cover - the loop was closed under a running task
            pass

    def _succeed(self, result: T) -> None:
        if not self.outcome.done():
            self.outcome.set_result(result)

    def _fail(self, exc: BaseException) -> None:
        if not self.outcome.done():
            if isinstance(exc, StopIteration):
                # A future refuses it (it would end the awaiting coroutine as a return):
                # refused, the outcome stayed unset and the caller waited for ever
                # (adversary round 36: a progress callback's exhausted next(), a
                # fileno() that raised it).  Turned into RuntimeError, as PEP 479 does.
                error = RuntimeError(f"a worker thread's call raised {exc!r}")
                error.__cause__ = exc
                exc = error
            self.outcome.set_exception(exc)

    def hop_done(self, hop: asyncio.Future[None]) -> None:
        """anyio's task ended; if the thread never took the call, it never will."""
        with self._lock:
            if self._started:
                return  # the thread delivers the outcome itself
            self._abandoned = True
        error = None if hop.cancelled() else hop.exception()
        self._fail(error or asyncio.CancelledError())


def _stop_orphaned_workers() -> None:
    """At interpreter exit, before the non-daemon threads are joined: stop the anyio
    worker threads (non-daemon) of a closed event loop, which no job can reach again.

    anyio stops a worker when the task it took for the loop's root ends.  Under a loop
    closed without cancelling its tasks (``loop.close()`` in a hand-made runner) that
    task may never end: when the ``run_until_complete`` task had finished before the
    worker was made, the task anyio took was anymmap's own helper task, pending for ever,
    and the interpreter waited for the worker at exit (adversary round 46: 15 of 15 runs
    that closed the loop during a large read).  A worker still running a call, or with
    one queued, finishes it first (a call is never abandoned)."""
    for thread in threading.enumerate():
        if type(thread).__module__ != "anyio._backends._asyncio":
            continue
        loop, jobs = getattr(thread, "loop", None), getattr(thread, "queue", None)
        if isinstance(loop, asyncio.AbstractEventLoop) and loop.is_closed() and jobs is not None:
            with contextlib.suppress(Exception):  # (a full queue: it has a job to end)
                jobs.put_nowait(None)  # anyio's own stop (WorkerThread.stop)


# Run by threading._shutdown before it joins the threads (as concurrent.futures does).
getattr(threading, "_register_atexit", lambda hook: None)(_stop_orphaned_workers)


async def _wait_for(
    future: asyncio.Future[T],
    *also: asyncio.Future[Any],
    undo: Callable[[T], object] | None = None,
    stop: _Stop | None = None,
) -> T:
    """Wait for ``future`` (and the futures in ``also``) through any number of
    cancellations, then deliver the first cancellation, or ``future``'s outcome (see
    :func:`run_sync` for ``undo`` and ``stop``).  The wait is shielded from anyio's
    scopes, so what it catches are native cancellations; with ``stop``, it also looks
    outside the shield for a cancelled anyio scope every :data:`_STOP_POLL` seconds."""
    cancelled: BaseException | None = None
    pending = (future, *also)
    while not all(f.done() for f in pending):
        with anyio.CancelScope(shield=True):
            try:
                # (Unlike shield(), asyncio.wait never touches the futures.)
                await asyncio.wait(
                    pending, timeout=_STOP_POLL if stop and not stop.requested else None
                )
            except asyncio.CancelledError as exc:
                if cancelled is None:
                    cancelled = exc
        if stop is not None and not stop.requested:
            # Outside the shield: -inf when a scope around the caller was cancelled.
            # (Looked at, not delivered: a call that finishes all the same returns its
            # result, and the scope raises at the next checkpoint, as without a stop.)
            stop.requested = cancelled is not None or anyio.current_effective_deadline() == -inf
    error = None if future.cancelled() else future.exception()
    if cancelled is None and isinstance(error, StopRequested):  # stopped for a scope
        # A scope stays cancelled, so this raises, unless a scope between it and the
        # caller has been shielded since.
        await anyio.lowlevel.checkpoint_if_cancelled()
        raise _StoppedInVain from error
    if cancelled is not None:
        if undo is not None and not future.cancelled() and error is None:
            # The cancellation is what the caller must see.  (A cancel scope of anyio that
            # asks again while the undoing runs would replace it: it asks again by itself.)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await run_sync(undo, future.result())
        raise cancelled from (None if isinstance(error, StopRequested) else error)
    result = future.result()
    if undo is None:  # (else a cancelled anyio scope raises at the next checkpoint)
        await anyio.lowlevel.checkpoint_if_cancelled()
    return result


async def shielded(start: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``start()`` to completion even if the caller is cancelled meanwhile, then
    deliver the cancellation (trio's rule for ``aclose``).

    On trio (and for anyio cancel scopes on asyncio) a shielded scope is enough.  A native
    ``asyncio.Task.cancel()`` (also ``asyncio.timeout``) goes through any shield, so on
    asyncio the work runs in a task of its own, which the caller keeps waiting for.  (That
    task can still be cancelled by whoever cancels every task; its worker threads, run
    through :func:`run_sync`, are waited for all the same.)
    """
    if backend_local.name == "trio":
        with anyio.CancelScope(shield=True):
            result = await start()
        await anyio.lowlevel.checkpoint_if_cancelled()
        return result

    return await _wait_for(asyncio.ensure_future(start()))


def task_info(task: Any) -> anyio.TaskInfo:
    """Describe a task object returned by :func:`current_task` the way anyio does.

    The ``id`` is ``id(task)``, as in anyio's own ``TaskInfo``, so the result compares equal
    to ``anyio.get_current_task()`` called from that task.
    """
    if isinstance(task, asyncio.Task):
        # (get_coro() is typed Optional: a task made by an eager task factory may have none.)
        coro: Any = task.get_coro()
        return anyio.TaskInfo(id(task), None, task.get_name(), coro)

    return anyio.TaskInfo(id(task), None, task.name, task.coro)
