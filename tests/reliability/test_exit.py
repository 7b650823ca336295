"""Exits and shutdowns, each in a child process that must end, with the right status,
well before pytest's timeout (a hang dumps every thread's stack: see tests/_child.py).

* The event loop ends (``asyncio.run``, uvloop, ``anyio.run`` on asyncio and on trio)
  while tasks copy, flush, populate, resize or hold borrows, on every map type: 20 loop
  endings per child in the CI profile, 200 in the long one; then the interpreter exits.
* ``KeyboardInterrupt`` (a real SIGINT from the parent) during a flush.
* Maps of every type left open, with escaped views, at interpreter exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .._child import CHILD_TIMEOUT, RUNNERS, check_child, describe, run_child
from ._drive import scaled

_LOOP_ENDS = """
    import asyncio, atexit, os, shutil, sys, tempfile
    import anyio, anymmap
    from tests._child import exit_if_a_thread_is_left, run_loop, spawn_detached

    RUNNER, WORK, RUNS = sys.argv[1], sys.argv[2], int(sys.argv[3])
    directory = tempfile.mkdtemp(dir=os.environ["ANYMMAP_CHILD_SHM"])
    atexit.register(shutil.rmtree, directory)

    async def open_maps():
        path = os.path.join(directory, f"f{os.getpid()}")
        with open(path, "wb") as f:
            f.truncate(4 << 20)
        maps = [await anymmap.AnonymousMmap.new(4 << 20), await anymmap.MmapRaw.map_raw(path)]
        sparse = await anymmap.SparseMapping.new(8 << 20)
        await sparse.alloc(0, 4 << 20)
        maps.append(sparse)
        region = os.path.join(directory, f"r{os.getpid()}")
        if os.path.exists(region):
            os.unlink(region)
        maps.append(await anymmap.MmapRegion.create(region, 4 << 20))
        return maps

    async def work(m):
        async with m:
            while True:
                if WORK == "copy":
                    await m.read(0, 2 << 20)          # a worker thread
                    await m.update_region(0, b"x" * 100)
                elif WORK == "flush" and hasattr(m, "flush"):
                    await m.update_region(0, b"y" * 100)
                    await m.flush()
                elif WORK == "populate":
                    await m.populate(write=True)
                elif WORK == "resize" and hasattr(m, "resize") and not hasattr(m, "pieces"):
                    size = len(m)
                    await m.resize(size + 4096 if not hasattr(m, "max_size") else size + 4096)
                    if not hasattr(m, "max_size"):
                        await m.resize(4 << 20)
                elif WORK == "auto_flush" and hasattr(m, "auto_flush"):
                    async with m.auto_flush(every=0.001, every_bytes=1):  # its own task group
                        await m.update_region(0, b"z" * 100)
                        await anyio.sleep(0)
                elif WORK == "borrow":
                    async with m.as_mut_slice(0, 64) as view:
                        view[:8] = b"borrowed"
                        await anyio.sleep(0)
                else:
                    await m.read(0, 64)

    def spawn(coro):
        spawn_detached(RUNNER, coro)

    async def main():
        for m in await open_maps():
            spawn(work(m))
        await anyio.sleep(0.005)

    for run in range(RUNS):
        run_loop(RUNNER, main)
        exit_if_a_thread_is_left(run)
    print("ok")
"""

WORKS = ["copy", "flush", "auto_flush", "populate", "resize", "borrow"]


@pytest.mark.parametrize("work", WORKS)
@pytest.mark.parametrize("runner", RUNNERS)
def test_the_loop_ends_while_every_map_type_is_busy(runner: str, work: str) -> None:
    """Every loop ending leaves no worker or committer thread behind, no crash, and the
    interpreter exits."""
    check_child(_LOOP_ENDS, runner, work, str(scaled(20, 200)), timeout=CHILD_TIMEOUT * 2)


_INTERRUPTED_FLUSH = """
    import os, signal, sys, tempfile
    import anyio, anymmap

    # What an interactive program has.  A command started in the background by a
    # non-interactive shell (`cmd &`: a CI script, nohup) inherits SIGINT ignored, and
    # Python and asyncio keep it so: the signal would never arrive.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    BACKEND, path = sys.argv[1], sys.argv[2]
    with open(path, "wb") as f:
        f.truncate(64 << 20)

    async def main():
        async with await anymmap.MmapRaw.map_raw(path) as m:
            while True:
                await m.update_region(0, b"\\x01" * (64 << 20))
                print("flushing", flush=True)
                await m.flush()

    try:
        anyio.run(main, backend=BACKEND)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    os.unlink(path)
    print("ok")
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_keyboard_interrupt_during_a_flush(tmp_path: Path, backend: str) -> None:
    """A real SIGINT while a flush runs: the program gets KeyboardInterrupt, the map
    closes, and the interpreter exits (no hang waiting for a worker or committer)."""
    for _ in range(scaled(5, 50)):
        prelude = (
            f"import faulthandler; faulthandler.dump_traceback_later({CHILD_TIMEOUT}, exit=True)\n"
        )
        with subprocess.Popen(
            [
                sys.executable,
                "-c",
                prelude + textwrap.dedent(_INTERRUPTED_FLUSH),
                backend,
                str(tmp_path / "big"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as child:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "flushing"
            child.send_signal(signal.SIGINT)
            out, err = child.communicate(timeout=CHILD_TIMEOUT + 15)
        assert child.returncode == 0, err[-3000:]
        assert out.split()[-2:] == ["interrupted", "ok"]


_LEFT_OPEN = """
    import atexit, os, shutil, sys, tempfile
    import anyio, numpy as np, anymmap, anymmap.sync

    directory = tempfile.mkdtemp(dir=os.environ["ANYMMAP_CHILD_SHM"])
    atexit.register(shutil.rmtree, directory)
    print(directory)
    path = os.path.join(directory, "file")
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    kept = []

    async def main():
        kept.append(await anymmap.AnonymousMmap.new(1 << 20))
        kept.append(await anymmap.MmapRaw.map_raw(path))
        sparse = await anymmap.SparseMapping.new(1 << 30)
        await sparse.alloc(0, 1 << 20)
        kept.append(sparse)
        kept.append(await anymmap.MmapRegion.create(os.path.join(directory, "region"), 1 << 20))
        for m in list(kept):
            try:
                async with m.as_mut_slice(0, 16) as view:
                    kept.append(np.frombuffer(view, dtype=np.uint8))  # escapes
            except anymmap.BorrowError:
                pass
            await m.update_region(100, b"left open")
        await kept[1].flush()

    anyio.run(main, backend=sys.argv[1])
    kept.append(anymmap.sync.MmapRaw.map_raw(path, mode="copy"))
    print("ok")
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_maps_left_open_at_interpreter_exit(backend: str) -> None:
    for _ in range(scaled(4, 40)):
        result = run_child(_LEFT_OPEN, backend)
        assert result.returncode == 0, describe(result)
        directory, *_, last = result.stdout.split()
        assert last == "ok"
        assert not os.path.exists(directory)
