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
nothing.  A handler on a signal not listed in :data:`HELD` that raises can still land
in the gap.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found, unused-ignore]
import signal
import sys
import threading
from collections.abc import Callable
from functools import partial
from types import TracebackType
from typing import Any

# The C functions under ``signal.signal`` / ``signal.getsignal``, without their wrappers'
# enum conversions: 0.3 us and 15 ns against 3 us and 2 us (CPython always has them).
_getsignal: Any = _signal.getsignal
_setsignal: Any = _signal.signal

#: The signals whose Python handlers are held off (the ones programs set handlers for).
HELD: tuple[int, ...] = tuple(
    int(getattr(signal, name))
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGALRM", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name)
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


def _put_back(signum: int, handler: Any, recorder: Any) -> None:
    """Put ``handler`` back, unless the handler is no longer ``recorder`` (one set
    meanwhile, by a finalizer, stays)."""
    if _getsignal(signum) is recorder:
        _setsignal(signum, handler)


class signals_held:  # (lower case: used like a function, ``with signals_held():``)
    """Hold off the Python handlers of :data:`HELD` for the block; run them after it for
    the signals that arrived (see the module docstring)."""

    __slots__ = ("_arrived", "_recorder", "_saved")

    def __init__(self) -> None:
        self._saved: list[tuple[int, Any]] = []
        self._arrived: list[int] = []
        arrived = self._arrived
        # The handler while held (one object: _put_back tells it from a newer one).
        self._recorder = lambda signum, frame: arrived.append(signum)

    def __enter__(self) -> None:
        if _get_ident() != _main_thread().ident:
            return
        saved = self._saved
        recorder = self._recorder
        try:
            for signum in HELD:
                handler = _getsignal(signum)
                if callable(handler):
                    # (Saved before it is replaced: an exception between the two then
                    # puts back a handler that was never replaced, which is harmless.)
                    saved.append((signum, handler))
                    _setsignal(signum, recorder)
        except BaseException:
            _each([partial(_put_back, signum, handler, recorder) for signum, handler in saved])
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        saved = self._saved
        if not saved:
            return
        recorder = self._recorder
        try:
            _each([partial(_put_back, signum, handler, recorder) for signum, handler in saved])
        finally:
            if self._arrived:
                handlers = dict(saved)
                frame = sys._getframe(1)
                _each([partial(handlers[signum], signum, frame) for signum in self._arrived])
