from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ._guard import StallInstrument, loop_guard

# A run started in the background of a non-interactive shell (`pytest &`) inherits SIGINT
# ignored; Python then installs no KeyboardInterrupt handler, nor do the children the
# tests start (an ignored signal stays ignored across exec), and every Ctrl-C test sees
# its signal lost.  Give the run Python's own handler back: children then start with the
# default disposition, as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: two workers more than the cores this process may use.  A third of the
    suite's time is spent waiting (child processes, worker threads, sleeps beside a
    control), so on 2 cores four workers ran ``-m "not reliability"`` in 2 min 8 s
    against 3 min 2 s with two (six: no faster).  ``PYTEST_XDIST_AUTO_NUM_WORKERS``
    still decides when set (xdist's own hook reads it)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    return len(os.sched_getaffinity(0)) + 2


# Every async test runs on asyncio, asyncio with uvloop, and trio (anyio's pytest plugin).
BACKENDS = [
    pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
    pytest.param(("trio", {"instruments": [StallInstrument()]}), id="trio"),
]

ASYNCIO_BACKENDS = BACKENDS[:2]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def backend_name(anyio_backend: tuple[str, dict[str, Any]]) -> str:
    return anyio_backend[0]


@pytest.fixture
def shm_path() -> Iterator[Path]:
    """``tmp_path`` on tmpfs (``/dev/shm``), removed after the test."""
    with tempfile.TemporaryDirectory(prefix="anymmap-test-", dir="/dev/shm") as directory:
        yield Path(directory)


@pytest.fixture(autouse=True)
def _no_blocking_on_the_event_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every async test runs under the loop guard (tests/_guard.py): a blocking call on
    the event loop thread fails it."""
    if (
        request.node.get_closest_marker("anyio") is None
        or "anyio_backend" not in request.fixturenames
    ):
        yield
        return
    backend = request.getfixturevalue("anyio_backend")[0]
    with loop_guard(backend) as found:
        yield
    assert not found, "blocking calls on the event loop thread:\n" + "\n".join(sorted(set(found)))
