"""What the reliability suite drives maps with: the three APIs as one, a peer process,
and the profile (how long to run).

* :class:`Api` calls a map's methods the same way whatever it is: the blocking twin
  directly, the async types through an anyio blocking portal (a real event loop in a
  thread of its own, asyncio or trio), so one state machine drives all three.
* :class:`Peer` is a second process that truncates and extends files on request, over a
  pipe (never sleeps).
* ``PROFILE`` is ``"ci"`` (the default: fast enough for every CI run) or ``"long"``
  (``ANYMMAP_FUZZ=long``: the figures the README reports).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import anyio.from_thread

PROFILE = "long" if os.environ.get("ANYMMAP_FUZZ") == "long" else "ci"


def scaled(ci: int, long: int) -> int:
    """A count for this profile."""
    return long if PROFILE == "long" else ci


class Api:
    """Calls on maps of one API: ``"sync"``, ``"asyncio"`` or ``"trio"``."""

    def __init__(self, name: str, portal: anyio.from_thread.BlockingPortal | None) -> None:
        self.name = name
        self.portal = portal

    @property
    def is_async(self) -> bool:
        return self.portal is not None

    def make(self, factory: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``factory(*args, **kwargs)``, awaited on the loop for the async types."""
        if self.portal is None:
            return factory(*args, **kwargs)

        async def make() -> Any:
            return await factory(*args, **kwargs)

        return self.portal.call(make)

    def call(self, target: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        """``target.method(*args, **kwargs)``; awaited on the loop if it is async, and run
        inside a task there even if it is not (the ``*_nowait`` forms need one)."""
        func = getattr(target, method)
        if self.portal is None:
            return func(*args, **kwargs)

        async def run() -> Any:
            result = func(*args, **kwargs)
            if hasattr(result, "__await__"):
                result = await result
            return result

        return self.portal.call(run)

    def borrow(
        self, target: Any, writable: bool, offset: int, length: int
    ) -> AbstractContextManager[memoryview]:
        borrow = (target.as_mut_slice if writable else target.as_slice)(offset, length)
        if self.portal is None:
            return borrow  # type: ignore[no-any-return]
        return self.portal.wrap_async_context_manager(borrow)

    def close(self, target: Any) -> None:
        if self.portal is None:
            target.close()
        else:
            self.call(target, "aclose")


@contextmanager
def api(name: str) -> Iterator[Api]:
    """An :class:`Api`; for the async ones a portal runs its event loop meanwhile."""
    if name == "sync":
        yield Api(name, None)
        return
    with anyio.from_thread.start_blocking_portal(backend=name) as portal:
        yield Api(name, portal)


_PEER = """
import os, sys
for line in sys.stdin:
    what, path, size = line.split()
    if what == "truncate":
        os.truncate(path, int(size))
    print("done", flush=True)
"""


class Peer:
    """Another process that changes files' sizes when told to."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _PEER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def truncate(self, path: str, size: int) -> None:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(f"truncate {path} {size}\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "done"

    def close(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self.process.wait(30)
