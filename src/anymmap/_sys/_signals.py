"""Signal handlers held off across a change of a mapping.

Python runs a signal handler on the main thread between two bytecodes, and the handler
may raise (Ctrl-C's ``KeyboardInterrupt``; a ``SIGTERM`` handler that calls
``sys.exit``).  A signal that arrives during a system call is handled right after the
call returns, before its result is stored: after ``mremap`` has moved a map, before the
map records its new address; after ``munmap``, before the map records that it is closed.
The map then describes memory that is gone, and its next copy lands in whatever is
mapped there next.

:class:`signals_held` closes that gap: inside it, the handlers of the signals programs
handle in Python are replaced by one that only notes the signal, and on exit the real
handlers are put back and run for what arrived, in order, on the same thread.  The
change is then complete, and the exception (if any) leaves a map in its new state.  It
is for short sections (a system call and its bookkeeping), never around a wait: a
Ctrl-C must still end a call stuck waiting for another thread.

Only the main thread needs it (Python runs handlers there alone); elsewhere it does
nothing.  A raising handler installed during the block (by a finalizer) can still
land in the gap.  If it lands as the block ends, before ``__exit__`` has run a line
(Python checks for signals as a function starts), the recording handlers stay
installed: each one knows the frame of its block, and a signal that finds that frame
no longer running puts the real handlers back and is handled by them, with what
arrived before it.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found, unused-ignore]
import gc
import itertools
import signal
import sys
import threading
import weakref
from collections.abc import Callable
from functools import partial
from itertools import compress
from operator import attrgetter
from types import CodeType, FrameType
from typing import Any, TypeVar, cast

from .._errors import Uncopyable

# The C functions under ``signal.signal`` / ``signal.getsignal``, without their wrappers'
# enum conversions: 0.3 us and 15 ns against 3 us and 2 us (CPython always has them).
_getsignal: Any = _signal.getsignal
_setsignal: Any = _signal.signal

#: The signals whose Python handlers are held off: every one that can have a handler (a
#: raising handler of any signal in the gap would do the harm).  Checking them all
#: costs about 2 us per section; only those with a Python handler are swapped.
HELD: tuple[int, ...] = tuple(
    sorted(int(s) for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))
)

_main_thread = threading.main_thread
_get_ident = threading.get_ident


def _each(calls: list[Callable[[], object]], i: int = 0) -> None:
    """Make every call, in order, even if one raises (a handler run as soon as it is put
    back, or run for a signal that arrived): each later one runs in a ``finally``, as
    CPython runs the handlers of several signals."""
    if i < len(calls):
        try:
            calls[i]()
        finally:
            _each(calls, i + 1)


class _Record:
    """What a block holds: the handlers it replaced, the signals that arrived, and the
    frame that runs the block (while it runs)."""

    __slots__ = ("arrived", "frame", "saved")

    def __init__(self) -> None:
        self.saved: list[tuple[int, Any]] = []
        self.arrived: list[int] = []
        self.frame: FrameType | None = None


def _record(record: _Record, signum: int, frame: FrameType | None) -> None:
    """The handler while held (as ``partial(_record, record)``): note the signal, or, if
    the block is over without having put the real handlers back, put them back and run
    them for what arrived."""
    here = frame
    while here is not None:
        if here is record.frame:
            record.arrived.append(signum)
            return
        here = here.f_back
    _put_back_all(record)
    _run(record, [*record.arrived, signum], frame)


def _put_back(signum: int, handler: Any, record: _Record) -> None:
    """Put ``handler`` back, unless the handler is no longer ``record``'s (one set
    meanwhile, by a finalizer, stays)."""
    current = _getsignal(signum)
    if type(current) is partial and current.func is _record and current.args[0] is record:
        _setsignal(signum, handler)


def _put_back_all(record: _Record) -> None:
    _each([partial(_put_back, signum, handler, record) for signum, handler in record.saved])


def _run(record: _Record, arrived: list[int], frame: FrameType | None) -> None:
    """Handle ``arrived`` now, with the handlers now installed (once: the record forgets
    them).  Each is looked up as it runs: a handler that replaced itself (press Ctrl-C
    again to force) hands the next copy of its signal to the new one."""
    record.frame = None
    record.arrived = []
    if arrived:
        _each([partial(_handle, signum, frame) for signum in arrived])


def _handle(signum: int, frame: FrameType | None) -> None:
    handler = _getsignal(signum)
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)  # (the default action, as if it arrived now)


def start_thread(thread: threading.Thread) -> None:
    """``thread.start()``, with the handlers held off on the main thread.

    ``Thread.start`` waits for the new thread on a ``threading.Event``, whose Python
    ``with`` a Ctrl-C can cut right after it took the event's lock: the lock then stays
    taken, the new thread blocks for ever as it reports that it started, and the caller
    gets ``RuntimeError: release unlocked lock`` or a thread that never runs its target
    (a committer slot taken by nobody, an auto-flush thread that never ends).  The wait is
    the thread's start-up, not another thread's work, so holding signals across it
    delays a Ctrl-C by that much only; one that arrived is raised once the thread runs.
    """
    with signals_held():
        thread.start()


class signals_held:  # (lower case: used like a function, ``with signals_held():``)
    """Hold off the Python handlers of :data:`HELD` for the block; run them after it for
    the signals that arrived (see the module docstring)."""

    __slots__ = ("_record", "_recorder")

    def __init__(self) -> None:
        self._record = record = _Record()
        # The handler while held (one object for the whole block).
        self._recorder = partial(_record, record)

    def __enter__(self) -> None:
        if _get_ident() != _main_thread().ident:
            return
        record = self._record
        record.frame = sys._getframe(1)
        saved = record.saved
        recorder = self._recorder
        try:
            # (Tested in C: most signals have no Python handler.)
            for signum in compress(HELD, map(callable, map(_getsignal, HELD))):
                handler = _getsignal(signum)
                # (Saved before it is replaced: an exception between the two then puts
                # back a handler that was never replaced, which is harmless.)
                saved.append((signum, handler))
                _setsignal(signum, recorder)
        except BaseException:
            _put_back_all(record)
            record.frame = None
            raise

    def __exit__(self, *exc_info: object) -> None:
        record = self._record
        if not record.saved:
            return
        try:
            _put_back_all(record)
        finally:
            _run(record, record.arrived, sys._getframe(1))


class collector_off:  # (lower case: used like a function, ``with collector_off():``)
    """The cyclic collector off for the block, and back on after it if it was on: no
    finalizer runs inside.  For a look-up and the store that it decides, under a lock
    that a finalizer run between them would take again on this thread (re-entrant) or
    work around (deferred), and with :class:`signals_held` around it for the handlers.
    The collector's switch is the process's: another thread that turns it off during
    these microseconds finds it back on, and one that turns it on reopens the window."""

    __slots__ = ("_was_on",)

    def __enter__(self) -> None:
        self._was_on = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc_info: object) -> None:
        if self._was_on:
            gc.enable()


# -- holds given back when dropped ----------------------------------------------------------
#
# A hold (a lock, a pin, a borrow) whose release a signal skipped (handled as ``__exit__``
# began: Python checks for signals as a function starts) must be given back when it is
# dropped, or every later call waits for it for ever.  A Python ``__del__`` would do that,
# but it begins a Python frame at *every* drop, where Python handles the signals that
# arrived meanwhile and only prints the exception their handlers raise: a loop of
# blocking calls lost about one Ctrl-C in twenty that way.  So a hold's ``__del__`` is
# :data:`ON_DROP`, C code that calls its ``_on_drop``: :data:`DISARMED` (C too, nothing to
# do) unless the hold is taken, and while it is, a one-shot give-back (a ``partial``
# without the hold in it, which would make a cycle: only the collector would free it).
# ``__exit__`` calls the same give-back, then disarms.

#: A hold's ``_on_drop`` when there is nothing to give back; a class attribute of every
#: hold, so that one whose ``__init__`` a signal cut short has it too.
DISARMED: Callable[[], object] = tuple

#: The ``__del__`` of a hold: it calls the hold's ``_on_drop`` without a Python frame.
ON_DROP = property(attrgetter("_on_drop"))


#: What :func:`keep_until_dropped` keeps: a weak reference to each owner's token -> its
#: dropper (None once let go).
_KEPT: dict[weakref.ref[CodeType], object | None] = {}
#: Tokens are copies of this code object, each with a constant of its own (see below).
_TOKEN = compile("0", "<anymmap token>", "eval")
_token_numbers = itertools.count()

#: What :func:`keep_until_dropped` returns: the token its owner holds, and the key.
Kept = tuple[CodeType, "weakref.ref[CodeType]"]


def keep_until_dropped(dropper: object) -> Kept:
    """Keep ``dropper`` (an object whose ``__del__`` is :data:`ON_DROP` and frees what
    its owner uses: the unmap of its memory, the close of its descriptor) reachable from
    here until the token returned, which the owner holds, dies with the owner.

    The cyclic collector runs the finalizers of a cycle's objects in no set order: the
    ``__del__`` of a user's object in a cycle with a map ran after the map's memory was
    unmapped and its descriptor closed, and its copy died of SIGSEGV, its ``close()``
    unmapping and closing again what another map had been given since (adversary round
    51).  Kept here, the dropper is not part of the garbage the collector finalizes.  The
    token is a code object: it takes weak references, it is not tracked by the cyclic
    collector (so the weak references to it are not cleared with the garbage's, before
    the finalizers run, but when it dies: when its owner's references are cleared, after
    every finalizer), and it never dies while its owner lives, even one that a finalizer
    resurrected (round 52: a weak reference to the owner itself was cleared then for
    good, and the map's next cycle unmapped it under its finalizer).  Its own constant
    makes it unequal to every other token.  The weak reference's callback is
    ``dict.pop``: C code, no Python frame where a signal's handler could cut it short."""
    token = _TOKEN.replace(co_consts=(next(_token_numbers),))
    key = weakref.ref(token, _KEPT.pop)
    _KEPT[key] = dropper
    return token, key


def is_kept(kept: Kept) -> bool:
    """Whether :func:`keep_until_dropped` still keeps what it returned ``kept`` for."""
    return _KEPT.get(kept[1]) is not None


def let_go(kept: Kept) -> None:
    """Stop keeping what :func:`keep_until_dropped` returned ``kept`` for (its owner
    closed it).  The key stays until the token dies: its callback's ``pop`` has no
    default (it is called with the key alone) and must find it."""
    if kept[1] in _KEPT:
        _KEPT[kept[1]] = None


class Hold(Uncopyable):
    """Base of the blocking twins' holds: ``__enter__`` (the subclass's) arms
    ``_on_drop`` with its one-shot give-back; ``__exit__`` gives it back, then disarms."""

    _on_drop: Callable[[], object] = DISARMED
    __del__ = ON_DROP
    _skippable = True  # (see give_back_skipped)

    def __exit__(self, exc_type: type[BaseException] | None, *exc_rest: object) -> None:
        self._on_drop()
        self._on_drop = DISARMED


def give_back_skipped() -> None:
    """Give back now the holds whose release the exception being handled skipped.

    Called when this thread finds one of its own holds in the way (a blocking call
    inside ``except KeyboardInterrupt:``, or the ``close()`` of a ``with`` block the
    exception is leaving): a hold whose ``__exit__`` frame is in that exception's
    traceback (or its context's) was left by the exception, so its block is over, and
    giving it back now is what dropping it would do later.  A hold marks itself with a
    true ``_skippable`` class attribute.
    """
    exc = sys.exc_info()[1]
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # (a context chain set by hand may loop)
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            hold: Any = tb.tb_frame.f_locals.get("self")
            if getattr(type(hold), "_skippable", False) and hold._on_drop is not DISARMED:
                hold._on_drop()
                hold._on_drop = DISARMED
            tb = tb.tb_next
        exc = exc.__context__


_Release = TypeVar("_Release", bound=Callable[..., Any])


def whole(release: _Release) -> _Release:
    """``release`` (a hold's give-back), made whole under CPython 3.10.

    From 3.11 Python handles signals only as a function begins, at a call's return and
    at a loop's jump, and a give-back makes no call between checking that it is due and
    doing it.  CPython 3.10 also handles them as an exception enters a handler (the
    exit of a ``with`` block, an ``except``, a ``finally``), before the handler runs: a
    second signal there skips the exit of the give-back's ``with lock:``.  So there the
    give-back runs with the handlers held off (a few microseconds per release: a storm
    left a read lock taken 11 times in 4,781 interrupts without it).  (The same gap in
    an acquiring ``with`` is documented: README, "Ctrl-C in the blocking twins".)
    """
    if sys.version_info >= (3, 11):
        return release
    else:  # (an else, so that a type check for either version sees no dead code)

        def held(*args: Any) -> Any:
            with signals_held():
                return release(*args)

        return cast(_Release, held)
