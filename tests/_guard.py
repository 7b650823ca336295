"""A guard that fails a test when the event loop thread makes a blocking call.

Every async test of the suite runs under it (``tests/conftest.py``):

* **anymmap's own system calls**, on both backends: each function of the ``_sys`` layer
  is wrapped; a call made on an event loop thread *by the async API* (an ``anymmap._async``
  frame on the stack: the blocking twins and the tests' own calls may block) is recorded
  unless it is in :data:`ALLOWED`, which names each permitted call and why;
* **the standard library**, on asyncio: the ``blockbuster`` package (file and socket I/O,
  ``os.stat``, ``time.sleep``, waiting on a taken lock, ...) scanning the async API's
  modules (:data:`ASYNC_MODULES`),
  with :data:`SHORT_LOCKS` allowed;
* **a backstop on trio**: an instrument that records task steps that ran for more than
  :data:`STALL` seconds (a gross stall only: a busy machine stretches any step).

The test fails at teardown with what was recorded.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from anymmap._backend import backend_local
from anymmap._sys import os_impl

#: The system calls the async API may make on the event loop thread, and why each is safe.
ALLOWED = {
    "pread_nowait": "preadv(RWF_NOWAIT) copies from the page cache or gives up; never waits",
    "resident": "mincore asks the page tables; no I/O",
    "file_size": "fstat of an open descriptor: metadata in memory, no I/O",
    "file_kind": "fstat of an open descriptor, after a fault: metadata in memory, no I/O",
    "is_direct": "fcntl(F_GETFL) of an open descriptor: its flags in memory, no I/O",
    "is_immutable": "ioctl(FS_IOC_GETFLAGS), after a fault: the inode's flags in memory",
    "data_extents": "lseek(SEEK_DATA, SEEK_HOLE), used on tmpfs only, whose metadata is in memory",
    "read_memory": "a resident copy: only after resident() or pread_nowait vouched for it",
    "write_memory": "a resident copy, as read_memory",
    "pread": "a resident copy on tmpfs, after resident() (RWF_NOWAIT is refused there)",
    "mmap": "anonymous maps and reservations (new(), SparseMapping.new): no file, no I/O",
    "munmap": "giving back the head and tail of a new reservation: no I/O",
    "prepare_access": "the one page an atomic load or store is about to touch, faulted in "
    "first so that a full file system is an error, not SIGBUS: the access would fault it in "
    "the same way on this thread",
}

#: Short critical sections on the loop thread that blockbuster would call blocking when
#: another thread holds the lock: (file, function).
SHORT_LOCKS = [
    ("anymmap/_core/_commit.py", {"submit", "add", "pending", "mark"}),
    ("anymmap/_core/_map.py", {"pinned"}),
]

#: The modules of the async API, whose calls blockbuster inspects.
ASYNC_MODULES = ("anymmap._async", "anymmap._rwlock", "anymmap._backend")

#: The trio backstop: a task step longer than this is reported.
STALL = 5.0


def _on_event_loop_thread() -> bool:
    if backend_local.name == "trio":
        return True
    return asyncio._get_running_loop() is not None


def _called_by_the_async_api() -> bool:
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        if "/anymmap/_async/" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


@contextmanager
def loop_guard(backend: str) -> Iterator[list[str]]:
    """Record blocking calls on the event loop thread while the block runs."""
    found: list[str] = []
    originals: dict[str, Callable[..., Any]] = {}
    module: Any = os_impl  # the platform module itself

    def wrap(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if _on_event_loop_thread() and _called_by_the_async_api():
                found.append(f"os_impl.{name} on the event loop thread")
            return func(*args, **kwargs)

        return guarded

    for name in dir(module):
        value = getattr(module, name)
        if name.startswith("_") or name in ALLOWED or not callable(value):
            continue
        if getattr(value, "__module__", "") != module.__name__:
            continue
        originals[name] = value
        setattr(module, name, wrap(name, value))
    buster = None
    if backend == "asyncio":
        from blockbuster import BlockBuster

        # Only calls with the async API on the stack: the blocking twins may block.
        buster = BlockBuster(scanned_modules=list(ASYNC_MODULES))
        for function in buster.functions.values():
            for path, functions in SHORT_LOCKS:
                function.can_block_in(path, functions)
        buster.activate()
    STALLS.clear()
    try:
        yield found
    finally:
        if buster is not None:
            buster.deactivate()
        for name, value in originals.items():
            setattr(module, name, value)
        found.extend(STALLS)


#: Task steps the trio instrument found too long (see StallInstrument).
STALLS: list[str] = []


class StallInstrument:
    """A trio instrument (``trio.abc.Instrument``'s interface) that records task steps
    longer than :data:`STALL`; the conftest passes it to every trio run."""

    start = 0.0

    def before_task_step(self, task: Any) -> None:
        self.start = time.perf_counter()

    def after_task_step(self, task: Any) -> None:
        took = time.perf_counter() - self.start
        if took > STALL:
            STALLS.append(f"a trio task step ran {took:.2f} s: {task.name}")
