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


def _restore(saved: list[tuple[int, Any]], note: Any, i: int = 0) -> None:
    """Put back every saved handler, even if one of them raises as soon as it is back
    (a signal that arrived meanwhile): each one is put back in a ``finally``.  A handler
    that is no longer ``note`` was set meanwhile (by a finalizer): it stays."""
    if i < len(saved):
        try:
            signum, handler = saved[i]
            if _getsignal(signum) is note:
                _setsignal(signum, handler)
        finally:
            _restore(saved, note, i + 1)


def _run(handlers: dict[int, Any], arrived: list[int], frame: Any, i: int = 0) -> None:
    """Run the handler of each signal that arrived, in order; one that raises does not
    keep the others from running (each runs in a ``finally``, as CPython runs them)."""
    if i < len(arrived):
        try:
            handlers[arrived[i]](arrived[i], frame)
        finally:
            _run(handlers, arrived, frame, i + 1)


class signals_held:  # (lower case: used like a function, ``with signals_held():``)
    """Hold off the Python handlers of :data:`HELD` for the block; run them after it for
    the signals that arrived (see the module docstring)."""

    __slots__ = ("_arrived", "_recorder", "_saved")

    def __init__(self) -> None:
        self._saved: list[tuple[int, Any]] = []
        self._arrived: list[int] = []
        arrived = self._arrived
        # The handler while held (one object: _restore tells it from a newer one).
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
            _restore(saved, recorder)
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
        try:
            _restore(saved, self._recorder)
        finally:
            _run(dict(saved), self._arrived, sys._getframe(1))
