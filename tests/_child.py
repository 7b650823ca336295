"""Run a scenario in a child process, so that a crash or a hang fails one test instead of
the whole run.

The child arms ``faulthandler.dump_traceback_later`` first: a hang (also one at interpreter
exit, where non-daemon threads are joined) dumps every thread's stack to stderr and exits
with status 1 well before pytest's own timeout, so the report shows where it hung.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, NoReturn

import anyio

#: Seconds a scenario may take before its stacks are dumped (pytest's timeout is 120).
CHILD_TIMEOUT = 45.0

_PRELUDE = (
    "import faulthandler; faulthandler.dump_traceback_later({timeout!r}, exit=True)\n"
    "import sys; sys.path.insert(0, {root!r})\n"  # so a child can import tests._child
)
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


#: The environment variable naming a child's own directory on tmpfs (``/dev/shm``).
SHM_DIR = "ANYMMAP_CHILD_SHM"


def run_child(
    code: str, *args: str, timeout: float = CHILD_TIMEOUT, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (dedented) in a fresh interpreter with ``args`` as ``sys.argv[1:]``.

    The child gets two scratch directories of its own, removed when it ends whatever it
    left in them: ``TMPDIR`` (on disk, so ``tempfile.mkdtemp()`` lands there) and
    ``os.environ[SHM_DIR]`` on tmpfs.
    """
    source = _PRELUDE.format(timeout=timeout, root=_ROOT) + textwrap.dedent(code)
    command = [sys.executable, "-c", source, *args]
    disk = tempfile.mkdtemp(prefix="anymmap-child-")
    shm = tempfile.mkdtemp(prefix="anymmap-child-", dir="/dev/shm")
    try:
        return _run(command, timeout, cwd, {"TMPDIR": disk, SHM_DIR: shm})
    finally:
        shutil.rmtree(disk, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)


def _run(
    command: list[str], timeout: float, cwd: str | None, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    # A session of its own: whatever the child forks is killed with it, so a stuck
    # grandchild cannot hold the output pipes (and the test) open.
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONFAULTHANDLER": "1", **env},
        start_new_session=True,
    ) as process:
        try:
            # faulthandler fires first; this only guards the guard
            stdout, stderr = process.communicate(timeout=timeout + 15)
        except subprocess.TimeoutExpired:
            stdout, stderr = "", f"no exit within {timeout + 15} s"
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if process.returncode is None:
            stdout_rest, stderr_rest = process.communicate()
            stdout, stderr = stdout + stdout_rest, stderr + stderr_rest
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """A failure message: how the child ended and the end of its output."""
    code = result.returncode
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
    return f"child {how}\n--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-6000:]}"


def check_child(code: str, *args: str, expect: str = "ok", **kwargs: object) -> str:
    """Run ``code`` in a child; it must exit with status 0 and print ``expect`` last."""
    result = run_child(code, *args, **kwargs)  # type: ignore[arg-type]
    assert result.returncode == 0, describe(result)
    lines = result.stdout.strip().splitlines() or [""]
    assert lines[-1] == expect, describe(result)
    return result.stdout


# -- for the scenarios themselves (``from tests._child import ...`` in a child) ---------------

#: The ways a child's event loop is run: ``run_loop(runner, main)``.
RUNNERS = ["asyncio", "uvloop", "anyio.run", "trio"]


def run_loop(runner: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main()`` to completion with ``runner`` (one of :data:`RUNNERS`)."""
    if runner == "asyncio":
        asyncio.run(main())
    elif runner == "uvloop":
        import uvloop

        uvloop.run(main())
    elif runner == "anyio.run":
        anyio.run(main)
    else:
        anyio.run(main, backend="trio")


def spawn_detached(runner: str, coro: Coroutine[Any, Any, None]) -> None:
    """Start ``coro`` as a task nobody waits for: it is still running when the loop ends."""
    if runner == "trio":
        import trio

        trio.lowlevel.spawn_system_task(lambda: coro)
    else:
        task = asyncio.ensure_future(coro)
        _DETACHED.add(task)  # asyncio keeps only a weak reference to its tasks
        task.add_done_callback(_DETACHED.discard)


_DETACHED: set[asyncio.Future[None]] = set()


async def report_trio_fork(pid: int, check: Callable[[], Coroutine[Any, Any, None]]) -> NoReturn:
    """After a fork from a task of a running trio loop: in the child (``pid`` 0), run
    ``check()`` (which must finish within 20 s) and exit 0 if it passed; in the parent,
    wait for the child, print ``child exit N`` and exit at once (its loop shares trio's
    wake-up socket with the child's, which may have taken its wake-ups)."""
    if pid == 0:
        code = 0
        try:
            with anyio.fail_after(20):
                await check()
        except BaseException as exc:  # noqa: BLE001 - reported through the exit code
            print("child failed:", repr(exc), flush=True)
            code = 3
        os._exit(code)
    # (Blocking: the parent's loop must not run, or it could take the child's wake-ups.)
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])  # noqa: ASYNC222
    print("child exit", status, flush=True)
    os._exit(0 if status == 0 else 4)


def exit_if_a_thread_is_left(run: int) -> None:
    """Every non-daemon thread must end once the loop has ended: one stuck waiting would
    hang the interpreter at exit.  Exit with status 3, naming it, if one does not."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(10)
            if thread.is_alive():
                print(f"run {run}: {thread.name} never stopped", flush=True)
                os._exit(3)


@contextlib.contextmanager
def collecting_inside_recounts() -> Iterator[None]:
    """Within the block, a garbage collection runs at the start of every recount of a
    file's twins (what an allocation inside the registry's lock may run), and only there:
    automatic collection is off until the block ends.  For finalizers that call back into
    the registry from inside it (adversary round 33)."""
    from anymmap._core import _copier

    recount = _copier._recount

    def collecting(identities: Any) -> Any:
        gc.collect()
        return recount(identities)

    enabled = gc.isenabled()
    _copier._recount = collecting
    gc.disable()
    try:
        yield
    finally:
        _copier._recount = recount
        if enabled:
            gc.enable()


#: What :func:`keep_a_region` made (kept until the process ends).
_kept: list[object] = []


def keep_a_region(path: str) -> None:
    """A ``multiprocessing`` child's target: make a ``FileCleanup.MANUAL`` region at
    ``path`` and leave it open (the process's exit is to delete its file)."""
    from anymmap import FileCleanup
    from anymmap.sync import MmapRegion

    _kept.append(MmapRegion.create(path, 4096, FileCleanup.MANUAL))
