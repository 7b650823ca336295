"""Stop points: where long work in a worker thread ends early because its caller was
cancelled.

An async call waits for its worker call whatever happens (see ``_backend.run_sync``),
which for most work is a matter of milliseconds.  Writing gigabytes of zeros
(``prefill="zeros"``) takes seconds, and a cancellation that waited for all of it
stalled a deadline or a Ctrl-C by as long (adversary round 66: 6 s for a 2 GiB
``create``).  So the async layer runs such a call with a *stop check* set for the worker
thread (a thread-local, set only around the call), and the work calls :func:`stop_point`
between steps (and while it waits for another map's turn to change the file's size,
which may take as long): it raises if the caller was cancelled meanwhile, and the work
undoes what it did, as for any error.  On asyncio the check raises :class:`StopRequested`, which
the caller replaces with its cancellation; on trio it is
``trio.from_thread.check_cancelled``, which raises trio's ``Cancelled`` itself.  The
blocking twins set no check (a Ctrl-C interrupts their own thread).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_local = threading.local()


class StopRequested(BaseException):
    """Raised at a stop point of a worker call whose caller was cancelled (asyncio); the
    caller raises its cancellation instead.  A ``BaseException``, as a cancellation is:
    no ``except Exception`` on the way may take it for an error and go on."""


def stop_point() -> None:
    """Raise if the caller of the running worker call was cancelled (see the module)."""
    check: Callable[[], None] | None = getattr(_local, "check", None)
    if check is not None:
        check()


def run_stoppable(check: Callable[[], None], func: Callable[..., T], *args: object) -> T:
    """``func(*args)`` in a worker thread, with ``check`` as its stop points' check."""
    _local.check = check
    try:
        return func(*args)
    finally:
        _local.check = None
