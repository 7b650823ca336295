"""Regression tests for the hangs, crashes and wrong results found by adversarial testing.

Each test says what it guards.  Scenarios that crashed or hung the process run in a child
process (see ``_child``), so that a regression shows as an exit status and a stack dump.
"""

from __future__ import annotations

import pytest

from ._child import check_child

# -- hangs ------------------------------------------------------------------------------

_LOOP_ENDS_WHILE_WORKERS_RUN = """
    import asyncio, os, sys, tempfile, threading
    import anyio, anymmap

    RUNNER, ENDING, WORK = sys.argv[1:4]
    path = tempfile.mktemp()

    async def copies(m):
        async with m:
            while True:
                await m.read(0, 2 << 20)  # above the inline limit: a worker thread

    async def flushes(m):
        async with m:
            while True:
                await m.update_region(0, b"x" * 64)
                await m.flush()

    def spawn(coro):
        if RUNNER == "trio":
            import trio
            trio.lowlevel.spawn_system_task(lambda: coro)
        else:
            asyncio.ensure_future(coro)

    async def main():
        for _ in range(6):
            if WORK == "copy":
                m = await anymmap.AnonymousMmap.new(4 << 20)
                spawn(copies(m))
            else:
                m = await anymmap.MmapRaw.map_raw(path)
                spawn(flushes(m))
        await anyio.sleep(0.01)
        if ENDING == "raises":
            raise RuntimeError("main failed")

    with open(path, "wb") as f:
        f.truncate(4096)
    for run in range(25):
        try:
            if RUNNER == "asyncio":
                asyncio.run(main())
            elif RUNNER == "uvloop":
                import uvloop
                uvloop.run(main())
            elif RUNNER == "anyio.run":
                anyio.run(main)
            else:
                anyio.run(main, backend="trio")
        except RuntimeError as exc:
            assert str(exc) == "main failed", exc
        # Every worker thread must have been told to stop: a stuck one waits forever,
        # and the interpreter would wait for it at exit.
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join(10)
                if thread.is_alive():
                    print(f"run {run}: {thread.name} never stopped", flush=True)
                    os._exit(3)
    os.unlink(path)
    print("ok")
"""


@pytest.mark.parametrize("work", ["copy", "flush"])
@pytest.mark.parametrize("ending", ["returns", "raises"])
@pytest.mark.parametrize("runner", ["asyncio", "uvloop", "anyio.run", "trio"])
def test_interpreter_exits_when_the_loop_ends_during_worker_calls(
    runner: str, ending: str, work: str
) -> None:
    """Regression test: the interpreter hung at exit (12 of 45 runs) when a task still used
    a map as the loop ended; anyio's worker thread waited for a stop that never came,
    because the caller resumed before anyio's own task (the root of that worker) ended."""
    check_child(_LOOP_ENDS_WHILE_WORKERS_RUN, runner, ending, work)


_BORROW_ENDED_ELSEWHERE = """
    import gc, sys, threading
    import anyio, anymmap, anymmap.sync

    BACKEND, WRITABLE = sys.argv[1], sys.argv[2] == "mut"

    async def main():
        m = await anymmap.AnonymousMmap.new(4096)

        async def records():
            borrow = m.as_mut_slice(0, 16) if WRITABLE else m.as_slice(0, 16)
            async with borrow as view:
                yield bytes(view)
                yield bytes(view)

        async for _ in records():
            break  # no aclosing(): the generator is finalized by another task
        gc.collect()
        with anyio.fail_after(10):
            while m.lock.locked():  # the finalizer task runs the borrow's exit
                await anyio.sleep(0.01)
            await m.update_region(0, b"after")  # a writer gets in
            await m.resize(8192)
            await m.aclose()
        with anyio.fail_after(10):  # a direct release by a non-owner is still refused
            lock = anymmap.RWLock()
            await lock.acquire_read()
            async with anyio.create_task_group() as tg:
                async def other():
                    try:
                        lock.release_read()
                    except RuntimeError:
                        print("refused")
                tg.start_soon(other)
            lock.release_read()

    anyio.run(main, backend=BACKEND)

    m = anymmap.sync.AnonymousMmap.new(4096)
    def records():
        with (m.as_mut_slice(0, 16) if WRITABLE else m.as_slice(0, 16)) as view:
            yield bytes(view)
    gen = records()
    next(gen)
    closer = threading.Thread(target=gen.close)
    closer.start()
    closer.join()
    m.update_region(0, b"after")
    m.resize(8192)
    m.close()
    print("ok")
"""


@pytest.mark.parametrize("kind", ["read", "mut"])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_borrow_ended_by_another_task_or_thread_releases_its_lock(
    backend: str, kind: str
) -> None:
    """Regression test: an async generator finalized by another task (or a generator closed
    by another thread) inside a borrow raised "not holding the read lock" in the borrow's
    exit and left the lock held forever: every writer, resize and aclose then hung."""
    out = check_child(_BORROW_ENDED_ELSEWHERE, backend, kind)
    assert "refused" in out
