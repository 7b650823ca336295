"""Fork: what a child sees of every map type after ``os.fork()``, ``multiprocessing``
with the fork start method, and a raw ``fork()`` that skips Python's at-fork hooks.

What is documented (README, "Fork"): private memory (anonymous maps, ``"copy"`` maps,
a sparse map's ``alloc`` pieces) is the child's own copy, and nothing the child writes
reaches the parent; shared memory (``"rw"`` file maps, regions, writable ``map_file``
windows) is shared, and what the child writes the parent sees; a map advised
``DONTFORK`` is closed in the child; a region's file belongs to the process that created
it, and a child closing its inherited handle leaves the file alone.  Every copy the child
makes acts on the child.
"""

from __future__ import annotations

import pytest

from .._child import check_child

_FORK = """
    import ctypes, multiprocessing, os, sys, tempfile
    import anymmap.sync as t

    HOW = sys.argv[1]
    directory = tempfile.mkdtemp(dir=os.environ["ANYMMAP_CHILD_SHM"])
    path = os.path.join(directory, "file")
    with open(path, "wb") as f:
        f.write(bytes(1 << 16))

    anon = t.AnonymousMmap.new(1 << 16)
    copy = t.MmapRaw.map_raw(path, mode="copy")
    shared = t.MmapRaw.map_raw(path)
    sparse = t.SparseMapping.new(1 << 20)
    sparse.alloc(0, 4096)
    window = os.path.join(directory, "window")
    with open(window, "wb") as f:
        f.write(bytes(4096))
    sparse.map_file(8192, 4096, window, writable=True)
    region = t.MmapRegion.create(os.path.join(directory, "region"), 4096)
    gone = t.AnonymousMmap.new(4096)
    gone.advise(t.__name__ and __import__("anymmap").Advice.DONTFORK)
    for m in (anon, copy, shared, region):
        m.update_region(0, b"parent")
    sparse.write_at(0, b"parent")
    sparse.write_at(8192, b"parent")

    def child():
        for m in (anon, copy, shared, region):
            assert m.read(0, 6) == b"parent"
            m.update_region(0, b"child!")         # fault-safe copies: process_vm_writev
            assert m.read(0, 6) == b"child!"
        sparse.write_at(0, b"child!")
        sparse.write_at(8192, b"child!")
        shared.flush()                            # group commit: a committer of its own
        region.flush_range(0, 6)
        assert not region.owns_file                # the parent created it: its file
        region.close()                            # must not delete the parent's file
        assert gone.closed
        try:
            gone.read(0, 1)
        except __import__("anymmap").ClosedMapError:
            pass
        else:
            raise AssertionError("a DONTFORK map was usable in the child")

    def run_child():
        try:
            child()
        except BaseException as exc:
            print("child failed:", repr(exc), flush=True)
            os._exit(3)
        os._exit(0)

    if HOW == "multiprocessing":
        process = multiprocessing.get_context("fork").Process(target=run_child)
        process.start()
        process.join()
        assert process.exitcode == 0, process.exitcode
    else:
        pid = os.fork() if HOW == "os.fork" else ctypes.PyDLL(None).fork()
        if pid == 0:
            run_child()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status

    # Private memory: the parent's own. Shared memory: the child's writes.
    assert anon.read(0, 6) == b"parent"
    assert copy.read(0, 6) == b"parent"
    assert sparse.read(0, 6) == b"parent"
    assert shared.read(0, 6) == b"child!"
    assert region.read(0, 6) == b"child!"
    assert sparse.read(8192, 6) == b"child!"
    assert not gone.closed
    assert region.owns_file and os.path.exists(region.path)
    for m in (anon, copy, shared, sparse, region, gone):
        m.close()
    assert not os.path.exists(region.path)
    print("ok")
"""


@pytest.mark.parametrize("how", ["os.fork", "multiprocessing", "raw fork"])
def test_what_a_forked_child_sees_of_every_map_type(how: str) -> None:
    check_child(_FORK, how)


# A fork while other threads (or tasks of an event loop) are inside calls on the maps:
# a borrow, a copy's pin, a flush, a resize.  In the child those threads are gone; what
# they held must not make the child wait for ever (adversary findings: it did).
_FORK_WHILE_BUSY = """
    import os, sys, tempfile, threading
    import anyio, anymmap, anymmap.sync as t

    HOW = sys.argv[1]
    directory = tempfile.mkdtemp(dir=os.environ["ANYMMAP_CHILD_SHM"])
    path = os.path.join(directory, "file")
    with open(path, "wb") as f:
        f.write(bytes(1 << 20))

    anon = t.AnonymousMmap.new(1 << 16)
    raw = t.MmapRaw.map_raw(path)
    region = t.MmapRegion.create(os.path.join(directory, "region"), 1 << 16)
    doomed = t.AnonymousMmap.new(1 << 16)  # another thread resizes it at the fork
    amap = None
    inside, done = threading.Barrier(5), threading.Event()  # 4 holders + the forker

    def borrower(m, writable):
        with (m.as_mut_slice if writable else m.as_slice)(0, 16) as view:
            inside.wait()
            done.wait()
            view[0]

    def pinner(m):
        with m._core.pinned():  # a copy or flush in flight, held still
            inside.wait()
            done.wait()

    def remapper(m):
        with m._core.exclusive():  # a resize or close in flight, held still
            inside.wait()
            done.wait()

    def child():
        for m in (anon, raw, region):
            m.update_region(0, b"child!")  # the write lock: free in the child
            assert m.read(0, 6) == b"child!"
        raw.flush()  # group commit: a committer of the child's own
        region.flush_range(0, 6)
        raw.resize(2 << 20)  # waits for no pin
        assert doomed.closed
        try:
            doomed.read(0, 1)
        except anymmap.ClosedMapError as exc:
            assert "resizing or closing" in str(exc), exc
        else:
            raise AssertionError("a map resized at the fork was usable in the child")
        doomed.close()  # forgets it, unmaps nothing

        async def main():
            await amap.update_region(0, b"async!")  # a task held its write lock
            assert await amap.read(0, 6) == b"async!"

        anyio.run(main)

    def run_child():
        try:
            child()
        except BaseException as exc:
            print("child failed:", repr(exc), flush=True)
            os._exit(3)
        os._exit(0)

    def fork_and_wait():
        inside.wait()  # every thread holds its part
        if HOW == "multiprocessing":
            import multiprocessing
            process = multiprocessing.get_context("fork").Process(target=run_child)
            process.start()
            process.join()
            code = process.exitcode
        else:
            pid = os.fork()
            if pid == 0:
                run_child()
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        done.set()
        return code

    async def parent():
        global amap
        amap = await anymmap.AnonymousMmap.new(1 << 16)
        async with amap.as_mut_slice(0, 16):  # a task holds the write lock at the fork
            code = await anyio.to_thread.run_sync(fork_and_wait)
        assert code == 0, code
        await amap.aclose()

    threads = [
        threading.Thread(target=borrower, args=(anon, False)),
        threading.Thread(target=borrower, args=(region, True)),
        threading.Thread(target=pinner, args=(raw,)),
        threading.Thread(target=remapper, args=(doomed,)),
    ]
    for thread in threads:
        thread.start()
    anyio.run(parent)
    for thread in threads:
        thread.join()
    # In the parent, nothing changed: every map is whole and closes.
    assert anon.read(0, 6) == bytes(6) and len(raw) == 1 << 20
    for m in (anon, raw, region, doomed):
        m.close()
    print("ok")
"""


@pytest.mark.parametrize("how", ["os.fork", "multiprocessing"])
def test_a_fork_while_other_threads_and_tasks_hold_maps(how: str) -> None:
    check_child(_FORK_WHILE_BUSY, how)


# A fork from a task of a running trio loop: the child goes on running the loop, so the
# parent's tasks run on there.  Their holds were dropped at the fork; leaving their
# borrows must not raise, and the map must work for them after.  (asyncio forgets its
# running loop in a forked child, so its tasks cannot go on there: nothing to test.)
_FORK_IN_A_TASK = """
    import os, sys
    import anyio, anymmap
    from tests._child import run_loop

    async def main():
        m = await anymmap.AnonymousMmap.new(1 << 16)
        forked = anyio.Event()

        async def reader():
            async with m.as_slice(0, 16):
                await forked.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            await anyio.sleep(0.01)
            async with m.as_slice(32, 16):
                pid = os.fork()  # this task and the reader hold read locks
            forked.set()
        if pid == 0:
            code = 0
            try:
                await m.update_region(0, b"child")  # the write lock is free
                assert await m.read(0, 5) == b"child"
                await m.aclose()
            except BaseException as exc:
                print("child failed:", repr(exc), flush=True)
                code = 3
            os._exit(code)
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        assert status == 0, status
        assert await m.read(0, 5) == bytes(5)  # the child's pages were its own
        await m.aclose()

    run_loop(sys.argv[1], main)
    print("ok")
"""


def test_a_fork_from_a_task_of_a_running_trio_loop() -> None:
    check_child(_FORK_IN_A_TASK, "trio")


# A fork while another thread is inside auto_flush(): its flusher is not in the child, so
# the child's writes must not call it (on trio that could wait for ever on a lock of the
# parent's loop) and the child may flush automatically on its own (adversary finding).
_FORK_IN_AUTO_FLUSH = """
    import os, tempfile, threading
    import anymmap.sync as t

    path = os.path.join(tempfile.mkdtemp(dir=os.environ["ANYMMAP_CHILD_SHM"]), "file")
    with open(path, "wb") as f:
        f.write(bytes(1 << 16))
    m = t.MmapRaw.map_raw(path)
    inside, done = threading.Event(), threading.Event()

    def flushing():
        with m.auto_flush(every=0.001, every_bytes=1):
            inside.set()
            done.wait()

    thread = threading.Thread(target=flushing)
    thread.start()
    inside.wait()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            m.update_region(0, b"child")
            with m.auto_flush(every=0.001):
                m.update_region(8, b"again")
            assert m.pending_bytes() == 0
        except BaseException as exc:
            print("child failed:", repr(exc), flush=True)
            code = 3
        os._exit(code)
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    done.set()
    thread.join()
    assert status == 0, status
    m.close()
    print("ok")
"""


def test_a_fork_inside_auto_flush_of_another_thread() -> None:
    check_child(_FORK_IN_AUTO_FLUSH)


# A fork from inside a flush of the forking thread itself (a signal handler that forks
# while the thread waits for the group committer): the child's thread returns into that
# flush, whose request the parent's committer held.  It must be flushed again in the
# child, not dropped (adversary round 43: the child waited for ever).
_FORK_INSIDE_OWN_FLUSH = """
    import os, signal, tempfile, threading
    import anymmap.sync as t

    path = os.path.join(tempfile.mkdtemp(), "file")  # on disk: an msync takes a while
    m = t.MmapRaw.create(path, 32 << 20)
    forked, done = [], []

    def fork_here(signum, frame):
        forked.append(os.fork())

    signal.signal(signal.SIGUSR1, fork_here)
    main = threading.get_ident()
    commit = m._core.commit

    def poke():  # the signal arrives while the main thread's request is queued or flushed
        while not (commit._pending or commit._running or done):
            pass
        signal.pthread_kill(main, signal.SIGUSR1)

    m.update_region(0, b"x" * (32 << 20))
    poker = threading.Thread(target=poke)
    poker.start()
    m.flush()
    done.append(True)
    if forked == [0]:
        signal.alarm(20)  # (the child has no faulthandler timer)
        code = 0
        try:
            assert m.pending_bytes() == 0
            m.update_region(0, b"child")
            m.flush()
        except BaseException as exc:
            print("child failed:", repr(exc), flush=True)
            code = 3
        os._exit(code)
    poker.join()
    status = os.waitstatus_to_exitcode(os.waitpid(forked[0], 0)[1])
    assert status == 0, status
    m.close()
    print("ok")
"""


def test_a_fork_from_inside_the_forking_threads_own_flush() -> None:
    check_child(_FORK_INSIDE_OWN_FLUSH, timeout=60)


# On trio the child runs the parent's tasks on: one that waited for a flush at the fork
# gets it, flushed by a committer of the child (adversary round 43: it waited for ever),
# and one that held the map's lock inside a copy leaves it without an error.
_FORK_WHILE_A_TASK_FLUSHES = """
    import os, tempfile
    import trio, anymmap
    from tests._child import report_trio_fork

    path = os.path.join(tempfile.mkdtemp(), "file")  # on disk: an msync takes a while

    async def main():
        m = await anymmap.MmapRaw.create(path, 32 << 20)
        commit = m._core.commit
        flushed = trio.Event()

        async def flusher():
            await m.update_region(0, b"x" * (32 << 20))
            await m.flush()
            flushed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flusher)
            while not (commit._pending or commit._running or flushed.is_set()):
                await trio.sleep(0)
            async with m._lock.write():  # as a copy's worker call holds it
                pid = os.fork()

            async def check():
                await flushed.wait()
                await m.update_region(0, b"child")
                await m.flush()

            await report_trio_fork(pid, check)

    trio.run(main)
"""


def test_a_fork_while_a_task_of_a_trio_loop_flushes() -> None:
    check_child(_FORK_WHILE_A_TASK_FLUSHES, expect="child exit 0", timeout=60)


# The fork comes while a thread is inside the trio run's ``run_sync_soon`` (held there by
# a trace function), which holds the run's lock: the group committer waking the flushing
# task, or a trio worker thread handing a result back (it can still be inside when the
# task it woke runs and forks).  The child inherited the lock held by a thread that is
# gone, and every later call into its run from a thread waited for ever: the committer's
# wake-up of a flush, a worker thread's result (one run in ten of the test above, in CI).
# The child's threads get a bigger stack than the parent's: else glibc gives a new thread
# the stack of the gone one, and so its thread identity, and the lock counts as its own.
_FORK_WHILE_A_THREAD_CALLS_INTO_TRIO = """
    import os, sys, tempfile, threading, time
    import anyio, trio, anymmap
    from tests._child import report_trio_fork

    WHO = sys.argv[1]
    path = os.path.join(tempfile.mkdtemp(), "file")
    inside = threading.Event()

    def tracer(frame, event, arg):
        if event == "call" and frame.f_code.co_name == "run_sync_soon":
            return in_run_sync_soon
        return None

    def in_run_sync_soon(frame, event, arg):
        lock = getattr(frame.f_locals.get("self"), "lock", None)  # trio's entry queue
        if event == "line" and lock is not None and lock._is_owned() and not inside.is_set():
            inside.set()
            time.sleep(0.5)  # the fork comes meanwhile
        return in_run_sync_soon

    def hand_back():
        sys.settrace(tracer)  # (for what this worker thread runs next: the hand-back)

    async def main():
        m = await anymmap.MmapRaw.create(path, 1 << 16)
        flushed = trio.Event()

        async def flusher():
            await m.update_region(0, b"x")
            await m.flush()
            flushed.set()

        async with trio.open_nursery() as nursery:
            if WHO == "committer":
                threading.settrace(tracer)  # (for the committer, which starts after this)
                nursery.start_soon(flusher)
            else:
                nursery.start_soon(anyio.to_thread.run_sync, hand_back)
            while not inside.is_set():
                await trio.sleep(0)
            threading.settrace(None)
            threading.stack_size(32 << 20)
            pid = os.fork()

            async def check():
                if WHO == "committer":
                    await flushed.wait()  # (a worker's call in flight at a fork is lost)
                await m.update_region(0, b"child")
                await m.flush()
                await anyio.to_thread.run_sync(int)

            await report_trio_fork(pid, check)

    trio.run(main)
"""


@pytest.mark.parametrize("who", ["committer", "worker"])
def test_a_fork_while_a_thread_calls_into_the_trio_run(who: str) -> None:
    check_child(_FORK_WHILE_A_THREAD_CALLS_INTO_TRIO, who, expect="child exit 0", timeout=60)


# Sixteen worker calls in flight at a fork from a trio task (as sixteen big copies would
# be): they are lost in the child with their threads, and each kept its token of the
# run's worker limiter, so every later worker call of the child waited for ever (10 of 10
# children of adversary round 45).  The child's run gets a new limiter.
_FORK_WHILE_EVERY_WORKER_IS_BUSY = """
    import os, threading
    import anyio, trio, anymmap
    from anymmap._backend import DEFAULT_THREAD_TOKENS, thread_limiter
    from tests._child import report_trio_fork

    async def main():
        m = await anymmap.AnonymousMmap.new(1 << 20)
        release = threading.Event()
        limiter = thread_limiter()
        async with trio.open_nursery() as nursery:
            for _ in range(DEFAULT_THREAD_TOKENS):
                nursery.start_soon(lambda: anyio.to_thread.run_sync(release.wait, limiter=limiter))
            while limiter.borrowed_tokens < DEFAULT_THREAD_TOKENS:
                await trio.sleep(0.01)
            pid = os.fork()
            if pid:
                release.set()

            async def check():
                await m.populate()  # a worker call
                await m.resize(2 << 20)
                await m.aclose()

            await report_trio_fork(pid, check)

    trio.run(main)
"""


def test_a_fork_while_every_worker_thread_is_busy() -> None:
    check_child(_FORK_WHILE_EVERY_WORKER_IS_BUSY, expect="child exit 0", timeout=60)


# A fork from inside a lock wait of the forking thread (a signal handler that forks while
# the thread waits for another thread's borrow): in the child the borrow's thread is
# gone, so the wait ends with the lock (adversary round 43: ValueError from the lock's
# bookkeeping, and close() left the map open).
_FORK_INSIDE_A_LOCK_WAIT = """
    import os, signal, sys, threading
    import anymmap, anymmap.sync as t

    CALL = sys.argv[1]
    m = t.AnonymousMmap.new(1 << 16)
    forked = []

    def fork_here(signum, frame):
        forked.append(os.fork())

    signal.signal(signal.SIGUSR1, fork_here)
    main = threading.get_ident()

    def borrower():
        with m.as_mut_slice(0, 16):
            while not m._lock._queue:  # the main thread waits for this borrow
                pass
            signal.pthread_kill(main, signal.SIGUSR1)
            while not forked:
                pass

    thread = threading.Thread(target=borrower)
    thread.start()
    while not m._lock._writer and not m._lock._readers:
        pass
    try:
        if CALL == "update":
            m.update_region(0, b"after")
        elif CALL == "read":
            assert m.read(0, 5) == bytes(5)
        elif CALL == "resize":
            m.resize(1 << 17)
        else:
            m.close()
        outcome = "done"
    except anymmap.BorrowError:
        # (In the child the borrower's view lives on: a close or resize is refused there.)
        outcome = "done" if CALL in ("close", "resize") and forked == [0] else "BorrowError"
    except BaseException as exc:
        outcome = repr(exc)
    if forked == [0]:
        code = 0 if outcome == "done" else 3
        try:
            m.update_region(8, b"child")  # the lock is free again
            assert m.read(8, 5) == b"child"
        except BaseException as exc:
            outcome = repr(exc)
            code = 4
        print("child:", outcome, flush=True)
        os._exit(code)
    thread.join()
    status = os.waitstatus_to_exitcode(os.waitpid(forked[0], 0)[1])
    assert outcome == "done" and status == 0, (outcome, status)
    if not m.closed:
        m.close()
    print("ok")
"""


@pytest.mark.parametrize("call", ["update", "read", "resize", "close"])
def test_a_fork_from_inside_a_lock_wait_of_the_forking_thread(call: str) -> None:
    check_child(_FORK_INSIDE_A_LOCK_WAIT, call, timeout=60)


# On trio the tasks waiting for a map's lock at a fork run on in the child, where its
# holders are gone: they get it in their turn (adversary round 43: they waited for ever).
_FORK_WHILE_TASKS_WAIT_FOR_THE_LOCK = """
    import os
    import trio, anymmap
    from tests._child import report_trio_fork

    async def main():
        m = await anymmap.AnonymousMmap.new(1 << 16)
        done = []

        async def holder(borrowed):
            async with m.as_mut_slice(0, 16):
                borrowed.set()
                await trio.sleep(0.3)
            done.append("holder")

        async def writer():
            await m.update_region(0, b"write")
            done.append("writer")

        async def reader():
            await m.read(0, 5)
            done.append("reader")

        async with trio.open_nursery() as nursery:
            borrowed = trio.Event()
            nursery.start_soon(holder, borrowed)
            await borrowed.wait()
            nursery.start_soon(writer)
            nursery.start_soon(reader)
            while len(m._lock._queue) < 2:
                await trio.sleep(0)
            pid = os.fork()

            async def check():
                while not {"reader", "writer"} <= set(done):
                    await trio.sleep(0.01)
                assert await m.read(0, 5) == b"write"

            await report_trio_fork(pid, check)

    trio.run(main)
"""


def test_a_fork_while_tasks_of_a_trio_loop_wait_for_the_lock() -> None:
    check_child(_FORK_WHILE_TASKS_WAIT_FOR_THE_LOCK, expect="child exit 0", timeout=60)


# A fork (as a signal handler's would) at a chosen line inside the bookkeeping of a
# flush or a copy of the forking thread: in the child that call completes and the map
# goes on working.  Adversary round 44: inside submit's critical section the child's
# flush raised RuntimeError (a renewed condition the frame did not hold); between its
# claim of the committer's place and the thread's start, two committers ran; inside a
# direct copy the thread stayed registered as copying, and close() was refused for good.
_FORK_AT_A_LINE = """
    import inspect, os, signal, sys, tempfile, threading
    import anymmap.sync as t
    from anymmap._core import _commit, _map

    MODULE = {"commit": _commit, "map": _map}[sys.argv[1]]
    FUNCTION, MARK, NTH, BUSY = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "busy"
    code = getattr(MODULE.GroupCommit if MODULE is _commit else MODULE.MapCore, FUNCTION)
    lines, first = inspect.getsourcelines(code)
    LINE = first + [i for i, line in enumerate(lines) if MARK in line][NTH]

    m = t.MmapRaw.create(os.path.join(tempfile.mkdtemp(), "file"), 1 << 20)
    forked = []
    stop = threading.Event()

    def busy():  # (keeps the committer busy: a flush then finds it running a batch)
        while not stop.is_set():
            m.update_region(4096, b"busy")
            m.flush_range(4096, 4)

    helper = threading.Thread(target=busy)
    if BUSY:
        helper.start()

    def tracer(frame, event, arg):
        if frame.f_code is not code.__code__:
            return None

        def local(frame, event, arg):
            if event == "line" and frame.f_lineno == LINE and not forked:
                forked.append(os.fork())
            return local

        return local

    sys.settrace(tracer)
    try:
        for _ in range(1000):  # (notify() needs a committer lingering from the last flush)
            m.update_region(0, b"hello")
            m.flush()
            if forked:
                break
        outcome = "done"
    except BaseException as exc:
        outcome = repr(exc)
    sys.settrace(None)
    assert forked, "the line was never reached"
    if forked == [0]:  # (the helper thread is not in the child)
        signal.alarm(20)
        code = 0 if outcome == "done" else 3
        try:
            m.update_region(0, b"child")
            m.flush()
            assert m.pending_bytes() == 0
            m.close()
        except BaseException as exc:
            outcome = repr(exc)
            code = 4
        print("child:", outcome, flush=True)
        os._exit(code)
    status = os.waitstatus_to_exitcode(os.waitpid(forked[0], 0)[1])
    stop.set()
    if BUSY:
        helper.join()
    assert outcome == "done" and status == 0, (outcome, status)
    m.close()
    print("ok")
"""


@pytest.mark.parametrize(
    ("module", "function", "mark", "nth", "busy"),
    [
        # (The first append is a busy committer's queue, then checked: a fork between
        # the check before it and the append left the child's request with no committer
        # for ever; the second append is the one that may start a committer.)
        ("commit", "submit", "self._pending.append(request)", 0, "busy"),
        ("commit", "submit", "if self._committer_pid == os.getpid():", 0, "busy"),
        ("commit", "submit", "self._pending.append(request)", 1, "idle"),
        ("commit", "submit", "self._cond.notify()", 0, "idle"),
        ("commit", "submit", "self._start_committer(made)", 0, "idle"),
        (
            "map",
            "_copy_now",
            "if self._remapper is not None or start + n > self.length",
            0,
            "idle",
        ),
    ],
)
def test_a_fork_inside_the_bookkeeping_of_the_forking_threads_own_call(
    module: str, function: str, mark: str, nth: int, busy: str
) -> None:
    check_child(_FORK_AT_A_LINE, module, function, mark, str(nth), busy, timeout=60)


_FORK_WHILE_A_THREAD_MAPS_THE_FILE = """
    import os, threading
    from anymmap import sync as S
    from anymmap._core import _copier

    path = os.path.join(os.environ["ANYMMAP_CHILD_SHM"], "f")
    with open(path, "wb") as f:
        f.write(b"x" * 16384)
    info = os.stat(path)
    entered, finish = threading.Event(), threading.Event()

    def making():  # another thread between reading the file's size and registering
        with _copier.mapping_file((info.st_dev, info.st_ino)):
            entered.set()
            finish.wait()

    thread = threading.Thread(target=making)
    thread.start()
    entered.wait()
    pid = os.fork()
    if pid == 0:
        with S.MmapRaw.map_raw(path) as m:
            m.resize(4096)  # the only map of the file in this process: it cuts
        os._exit(0 if os.path.getsize(path) == 4096 else 3)
    _, status = os.waitpid(pid, 0)
    finish.set()
    thread.join()
    assert os.waitstatus_to_exitcode(status) == 0, "the child's shrink did not cut the file"
    assert not _copier._being_mapped
    print("ok")
"""


def test_a_map_another_thread_was_making_at_a_fork_does_not_count_in_the_child() -> None:
    """A shrink cuts the file only if no map of it is being made in this process; a map
    another thread of the parent was making at the fork never finishes in the child, and
    counted on it kept every shrink of that file there from cutting it."""
    check_child(_FORK_WHILE_A_THREAD_MAPS_THE_FILE, timeout=60)
