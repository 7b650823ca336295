"""Scenarios that used to crash the process, each run in a child process so that a crash
fails the test instead of killing the test run.

Worker threads are never abandoned, not even when every task is cancelled (else a worker
copies into memory unmapped under it).  A borrow base that cannot be released (a slice
escaped) never ends up in cyclic garbage (else CPython's memoryview tp_clear crashes).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests._child import RUNNERS, check_child

SCENARIOS = {
    # asyncio.run() cancels every remaining task when main() fails.
    "asyncio.run exits while a copy runs": """
        import asyncio, anymmap
        async def background(m, buf):
            async with m:
                await m.update_region(0, buf)
        async def main():
            m = await anymmap.AnonymousMmap.new(1 << 30)
            asyncio.ensure_future(background(m, bytearray(1 << 30)))
            await asyncio.sleep(0.2)
            raise RuntimeError("main failed")
        try:
            asyncio.run(main())
        except RuntimeError:
            print("survived")
    """,
    # The usual shutdown idiom cancels anymmap's own helper tasks too.
    "every task cancelled": """
        import asyncio, anymmap
        async def writer(m, buf):
            async with m:
                while True:
                    await m.update_region(0, buf)
        async def main():
            m = await anymmap.AnonymousMmap.new(1 << 30)
            t = asyncio.ensure_future(writer(m, bytearray(1 << 30)))
            await asyncio.sleep(0.3)
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            try:
                await t
            except asyncio.CancelledError:
                pass
            assert m.closed
            await asyncio.sleep(0.5)
            print("survived")
        asyncio.run(main())
    """,
    "escaped slices in reference cycles, then gc": """
        import asyncio, gc, anymmap
        async def main():
            m = await anymmap.AnonymousMmap.new(4096)
            async def handler():
                async with m.as_slice(0, 16) as view:
                    magic = view[:4]
                    cycle = [magic]
                    cycle.append(cycle)
            for _ in range(3):
                try:
                    await handler()
                except anymmap.BorrowError:
                    pass
                gc.collect()
            await m.aclose()  # the escaped slices are garbage by now
            assert m.closed
            print("survived")
        asyncio.run(main())
    """,
    "a borrow cancelled while its slice escapes, then gc": """
        import asyncio, gc, anymmap
        async def main():
            m = await anymmap.AnonymousMmap.new(4096)
            async def handler():
                async with m.as_slice(0, 16) as view:
                    magic = view[:4]
                    await asyncio.sleep(10)
            t = asyncio.ensure_future(handler())
            await asyncio.sleep(0.01)
            t.cancel()
            try:
                await t
            except asyncio.CancelledError:  # the cancellation wins over the escape
                pass
            del t  # (on Python 3.10 the task keeps the traceback, and the slice with it)
            for _ in range(3):
                gc.collect()
                await asyncio.sleep(0)
            await m.aclose()
            print("survived")
        asyncio.run(main())
    """,
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_process_survives(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCENARIOS[name])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert result.stdout.strip().endswith("survived")


_USED_IN_AN_EARLIER_ATEXIT_HANDLER = """
    import atexit, os, tempfile

    d = tempfile.mkdtemp(dir=os.environ["ANYMMAP_CHILD_SHM"])

    def checkpoint():
        # Registered before anymmap was imported, so it runs after anymmap's own exit
        # work: it opens files (taking free descriptor numbers), then uses the map.
        log = open(os.path.join(d, "exit.log"), "w")
        with open(os.path.join(d, "checkpoint"), "w+b") as f:
            f.write(b"checkpoint: not the map's bytes")
            f.flush()
            data = m.read(0, 31)
            m.resize(2 << 20)
            size = os.fstat(f.fileno()).st_size
            assert (data, size) == (b"M" * 31, 31), (data, size)
        log.close()
        m.close()
        print("ok", flush=True)

    atexit.register(checkpoint)

    import anymmap.sync as S

    m = S.MmapRaw.create(os.path.join(d, "raw"), 1 << 20)
    m.update_region(0, b"M" * 31)
"""


def test_a_map_used_at_exit_keeps_its_file() -> None:
    """Regression test (adversary round 10): a map's file descriptor was closed by its
    finalizer at interpreter exit while the map stayed open, so an atexit handler that
    ran later and opened a file got that number: the map's ``read`` returned the other
    file's bytes and its ``resize`` grew the other file.  The OS closes it at exit now."""
    check_child(_USED_IN_AN_EARLIER_ATEXIT_HANDLER, timeout=60)


#: The start of the zero-fill scenarios: the control, a whole 1 GiB fill, timed.
_ZERO_FILL_CONTROL = """
    import os, signal, sys, threading, time, anyio, anymmap, anymmap.sync
    from tests._child import run_loop, spawn_detached

    runner, d = sys.argv[1], os.environ["TMPDIR"]
    size = 1 << 30  # (big enough that the whole fill takes long beside a busy machine)
    started = time.perf_counter()  # the control: the whole fill
    anymmap.sync.MmapRaw.create(os.path.join(d, "control"), size, prefill="zeros").close()
    whole = time.perf_counter() - started
    os.unlink(os.path.join(d, "control"))
    path = os.path.join(d, "f")
"""

_LOOP_ENDS_MID_ZERO_FILL = (
    _ZERO_FILL_CONTROL
    + """
    async def main():
        global started
        started = time.perf_counter()  # (not counting the loop's start: trio's is slow)
        spawn_detached(runner, anymmap.MmapRaw.create(path, size, prefill="zeros"))
        await anyio.sleep(0.01)  # and the loop ends, the create still filling

    run_loop(runner, main)
    took = time.perf_counter() - started
    assert os.listdir(d) == [], os.listdir(d)  # undone
    assert took < whole / 2, (took, whole)  # stopped, not waited for
    print("ok", flush=True)
"""
)


@pytest.mark.parametrize("runner", RUNNERS)
def test_the_loop_ending_mid_zero_fill_stops_it_and_leaves_no_file(runner: str) -> None:
    """Adversary round 68 left this unchecked: the event loop ending (``asyncio.run``
    cancelling every task, trio cancelling its system tasks) while a detached task's
    ``create`` writes its zeros.  The fill stops at its next step (well before the whole
    fill, the control measured in the same child), the create is undone, and the
    interpreter exits."""
    check_child(_LOOP_ENDS_MID_ZERO_FILL, runner, timeout=60)


_CTRL_C_MID_ZERO_FILL = (
    _ZERO_FILL_CONTROL
    + """
    def filling():
        # Whether a file in d open here has grown past a page (a new file has no name
        # until it is whole: it is found by its descriptor).
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").startswith(d):
                    if os.stat(f"/proc/self/fd/{fd}").st_size > 4096:
                        return True
            except OSError:
                pass
        return False

    def ctrl_c_once_filling():
        while not filling():
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)

    def interrupted(call):
        async def main():
            global started
            started = time.perf_counter()
            threading.Thread(target=ctrl_c_once_filling, daemon=True).start()
            await call()
        try:
            run_loop(runner, main)
        except KeyboardInterrupt:
            return time.perf_counter() - started
        except BaseException as exc:
            # (anyio.run's runner on 3.10 raises the main task's cancellation: its tasks
            # cannot uncancel, so it cannot tell a Ctrl-C's from another.)
            if runner != "anyio.run" or sys.version_info >= (3, 11):
                raise
            if type(exc).__name__ != "CancelledError":
                raise
            return time.perf_counter() - started
        raise AssertionError("no KeyboardInterrupt")

    took = interrupted(lambda: anymmap.MmapRaw.create(path, size, prefill="zeros"))
    assert took < whole / 2, (took, whole)  # stopped, not waited for
    assert os.listdir(d) == [], os.listdir(d)  # undone

    anymmap.sync.MmapRaw.create(path, 4096).close()
    async def resize():
        async with await anymmap.MmapRaw.map_raw(path, prefill="zeros") as m:
            try:
                await m.resize(size)
            finally:
                assert len(m) == 4096
    took = interrupted(resize)
    assert took < whole / 2, (took, whole)
    assert os.stat(path).st_size == 4096  # cut back
    print("ok", flush=True)
"""
)


@pytest.mark.parametrize("runner", RUNNERS)
def test_ctrl_c_mid_zero_fill_stops_it_and_undoes_it(runner: str) -> None:
    """A Ctrl-C while the main task's ``create`` or ``resize`` writes its zeros: on
    asyncio it cancels the main task, on trio it is delivered at the task's next
    checkpoint, and either way the fill stops at its next step (well before the whole
    fill, the control measured in the same child) and is undone: no file, or the file
    at its old size."""
    check_child(_CTRL_C_MID_ZERO_FILL, runner, timeout=90)
