from __future__ import annotations

import asyncio
import math
import random
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio import wait_all_tasks_blocked
from anyio.abc import TaskStatus

import anymmap
from anymmap import RWLock, RWLockStatistics

from .conftest import ASYNCIO_BACKENDS

pytestmark = pytest.mark.anyio

# A lock made at import time, outside any event loop, must work inside one.
MODULE_LOCK = RWLock()


def assert_stats(lock: RWLock, readers: int, writer: bool, rw: int, ww: int) -> None:
    stats = lock.statistics()
    assert (stats.readers, stats.writer is not None, stats.readers_waiting) == (
        readers,
        writer,
        rw,
    )
    assert stats.writers_waiting == ww


def assert_idle(lock: RWLock) -> None:
    assert lock.statistics() == RWLockStatistics(0, None, 0, 0)
    assert not lock.locked()


class Holder:
    """Takes the lock in its own task and holds it until told to let go."""

    def __init__(self, lock: RWLock, write: bool, log: list[str] | None = None, name: str = ""):
        self.lock = lock
        self.write = write
        self.log = log
        self.name = name
        self.release = anyio.Event()
        self.acquired = anyio.Event()
        self.scope: anyio.CancelScope | None = None
        self.cancelled = False

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        cm = self.lock.write() if self.write else self.lock.read()
        with anyio.CancelScope() as self.scope:
            task_status.started()
            async with cm:
                self.acquired.set()
                if self.log is not None:
                    self.log.append(self.name)
                await self.release.wait()
        self.cancelled = self.scope.cancelled_caught


async def test_outside_event_loop_and_repr() -> None:
    assert "unlocked" in repr(MODULE_LOCK)
    async with MODULE_LOCK.write():
        assert "write-locked" in repr(MODULE_LOCK)
    async with MODULE_LOCK.read():
        assert "read-locked by 1 task(s)" in repr(MODULE_LOCK)
    assert_idle(MODULE_LOCK)


async def test_readers_share() -> None:
    lock = RWLock()
    holders = [Holder(lock, write=False) for _ in range(5)]
    async with anyio.create_task_group() as tg:
        for h in holders:
            await tg.start(h.run)
        await wait_all_tasks_blocked()
        assert all(h.acquired.is_set() for h in holders)
        assert_stats(lock, readers=5, writer=False, rw=0, ww=0)
        assert "read-locked by 5 task(s)" in repr(lock)
        for h in holders:
            h.release.set()
    assert_idle(lock)


async def test_writer_waits_for_every_reader() -> None:
    lock = RWLock()
    readers = [Holder(lock, write=False) for _ in range(3)]
    writer = Holder(lock, write=True)
    async with anyio.create_task_group() as tg:
        for h in readers:
            await tg.start(h.run)
        await tg.start(writer.run)
        await wait_all_tasks_blocked()
        assert_stats(lock, readers=3, writer=False, rw=0, ww=1)
        for h in readers[:2]:
            h.release.set()
            await wait_all_tasks_blocked()
            assert not writer.acquired.is_set()
        readers[2].release.set()
        await wait_all_tasks_blocked()
        assert writer.acquired.is_set()
        assert_stats(lock, readers=0, writer=True, rw=0, ww=0)
        writer.release.set()
    assert_idle(lock)


async def test_exclusive_under_mixed_load() -> None:
    lock = RWLock()
    state = {"readers": 0, "writers": 0, "max_readers": 0}

    async def reader() -> None:
        for _ in range(20):
            async with lock.read():
                state["readers"] += 1
                state["max_readers"] = max(state["max_readers"], state["readers"])
                assert state["writers"] == 0
                await anyio.lowlevel.checkpoint()
                assert state["writers"] == 0
                state["readers"] -= 1

    async def writer() -> None:
        for _ in range(20):
            async with lock.write():
                state["writers"] += 1
                assert state["writers"] == 1
                assert state["readers"] == 0
                await anyio.lowlevel.checkpoint()
                assert state["writers"] == 1
                assert state["readers"] == 0
                state["writers"] -= 1

    async with anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(writer if i % 3 == 0 else reader)
    assert state["max_readers"] > 1  # readers really did overlap
    assert_idle(lock)


async def test_writes_complete_while_readers_loop() -> None:
    """No writer starvation: five readers that keep re-reading cannot hold writes back."""
    lock = RWLock()
    writes_done = 0
    stop = False

    async def reader() -> None:
        while not stop:
            async with lock.read():
                await anyio.lowlevel.checkpoint()

    async def writer() -> None:
        nonlocal writes_done
        async with lock.write():
            writes_done += 1

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(reader)
            await anyio.lowlevel.checkpoint()
            await writer()
            await writer()
            stop = True
    assert writes_done == 2


async def test_reader_queued_before_writer_goes_first() -> None:
    """No reader starvation: a reader that queued before a writer is let in before it."""
    lock = RWLock()
    log: list[str] = []
    first = Holder(lock, write=True, log=log, name="W0")
    reader = Holder(lock, write=False, log=log, name="R")
    writer = Holder(lock, write=True, log=log, name="W")
    async with anyio.create_task_group() as tg:
        await tg.start(first.run)
        await tg.start(reader.run)
        await wait_all_tasks_blocked()
        await tg.start(writer.run)
        await wait_all_tasks_blocked()
        first.release.set()
        await wait_all_tasks_blocked()
        assert log == ["W0", "R"]
        reader.release.set()
        await wait_all_tasks_blocked()
        writer.release.set()
    assert log == ["W0", "R", "W"]


async def test_fifo_batches() -> None:
    """Arrival order R1 W1 R2 R3 W2 is granted as [R1] [W1] {R2, R3} [W2]."""
    lock = RWLock()
    log: list[str] = []
    names = ["R1", "W1", "R2", "R3", "W2"]
    holders = {n: Holder(lock, write=n.startswith("W"), log=log, name=n) for n in names}
    grants: list[set[str]] = []

    async with anyio.create_task_group() as tg:
        for n in names:
            await tg.start(holders[n].run)
            await wait_all_tasks_blocked()
        assert_stats(lock, readers=1, writer=False, rw=2, ww=2)
        for _ in range(4):
            await wait_all_tasks_blocked()
            new = set(log) - set().union(*grants)
            grants.append(new)
            for n in new:
                holders[n].release.set()
    # Trio wakes a batch in any order, so compare each batch as a set.
    assert grants == [{"R1"}, {"W1"}, {"R2", "R3"}, {"W2"}]
    assert_idle(lock)


@pytest.mark.parametrize("shape", ["writers", "readers behind a writer"])
async def test_grant_order_is_arrival_order(shape: str) -> None:
    """Regression test: three tasks looping over ``async with lock.write()`` were served in
    the reverse of their arrival order on trio, every run: the acquire checkpointed
    before it claimed, and trio reorders tasks woken from a checkpoint.  The shape is
    trio's ``test_generic_lock_fifo_fairness``.  Readers that never wait are not ordered
    by the lock at all, so the reader shape makes them queue behind a writer each round.
    """
    lock = RWLock()
    initial_order: list[int] = []
    record: list[int] = []
    loops = 5

    async def loopy(name: int) -> None:
        initial_order.append(name)
        for _ in range(loops):
            async with lock.write():
                record.append(name)

    async def reader(name: int) -> None:
        async with lock.read():
            record.append(name)

    if shape == "writers":
        async with anyio.create_task_group() as tg:
            for name in (1, 2, 3):
                tg.start_soon(loopy, name)
        for i in range(loops):
            assert record[3 * i : 3 * (i + 1)] == initial_order
        return

    for _ in range(loops):
        record.clear()
        await lock.acquire_write()  # the readers queue behind this writer
        async with anyio.create_task_group() as tg:
            for name in (1, 2, 3):
                tg.start_soon(reader, name)
                await wait_all_tasks_blocked()
            assert lock.statistics().readers_waiting == 3
            lock.release_write()  # all three are granted together, in arrival order
            assert lock.statistics().readers == 3
        assert sorted(record) == [1, 2, 3]  # admitted together, they may run in any order
    assert_idle(lock)


@pytest.mark.parametrize("waiter_writes", [True, False], ids=["writer", "reader"])
async def test_no_barging(waiter_writes: bool) -> None:
    """release() hands the lock to the waiter at once; a newcomer cannot take it first."""
    lock = RWLock()
    await lock.acquire_write()
    waiter = Holder(lock, write=waiter_writes)
    async with anyio.create_task_group() as tg:
        await tg.start(waiter.run)
        await wait_all_tasks_blocked()
        lock.release_write()
        # No checkpoint in between: the waiter owns the lock before it runs again.
        assert_stats(lock, readers=0 if waiter_writes else 1, writer=waiter_writes, rw=0, ww=0)
        assert not waiter.acquired.is_set()
        with pytest.raises(anyio.WouldBlock):
            lock.acquire_write_nowait()
        if waiter_writes:
            with pytest.raises(anyio.WouldBlock):
                lock.acquire_read_nowait()
        await wait_all_tasks_blocked()
        assert waiter.acquired.is_set()
        waiter.release.set()
    assert_idle(lock)


async def test_same_task_reread_while_writer_waits() -> None:
    lock = RWLock()
    writer = Holder(lock, write=True)
    async with anyio.create_task_group() as tg:
        async with lock.read():
            await tg.start(writer.run)
            await wait_all_tasks_blocked()
            assert_stats(lock, readers=1, writer=False, rw=0, ww=1)
            with anyio.fail_after(5):
                async with lock.read():  # must not queue behind the writer
                    lock.acquire_read_nowait()
                    lock.release_read()
            assert_stats(lock, readers=1, writer=False, rw=0, ww=1)
        await wait_all_tasks_blocked()
        assert writer.acquired.is_set()
        writer.release.set()
    assert_idle(lock)


async def test_upgrade_and_reentry_raise_at_once() -> None:
    lock = RWLock()
    async with lock.read():
        with pytest.raises(RuntimeError, match="upgrading would deadlock"):
            await lock.acquire_write()
        with pytest.raises(RuntimeError, match="upgrading would deadlock"):
            lock.acquire_write_nowait()
    async with lock.write():
        with pytest.raises(RuntimeError, match="already holds the write lock"):
            await lock.acquire_write()
        with pytest.raises(RuntimeError, match="already holds the write lock"):
            lock.acquire_write_nowait()
        with pytest.raises(RuntimeError, match="holds the write lock"):
            await lock.acquire_read()
        with pytest.raises(RuntimeError, match="holds the write lock"):
            lock.acquire_read_nowait()
    assert_idle(lock)


async def test_release_what_is_not_held() -> None:
    lock = RWLock()
    with pytest.raises(RuntimeError, match="not holding the read lock"):
        lock.release_read()
    with pytest.raises(RuntimeError, match="not holding the write lock"):
        lock.release_write()
    async with lock.read():
        with pytest.raises(RuntimeError, match="not holding the write lock"):
            lock.release_write()

    # Another task's hold cannot be released either.
    holder = Holder(lock, write=True)
    async with anyio.create_task_group() as tg:
        await tg.start(holder.run)
        await wait_all_tasks_blocked()
        with pytest.raises(RuntimeError, match="not holding the write lock"):
            lock.release_write()
        holder.release.set()
    assert_idle(lock)


def test_sync_with_is_refused() -> None:
    lock = RWLock()
    with pytest.raises(TypeError, match=r"async with lock\.read"), lock:
        pass  # pragma: no cover


async def test_nowait() -> None:
    lock = RWLock()
    lock.acquire_read_nowait()
    lock.acquire_read_nowait()  # same task, second hold
    assert_stats(lock, readers=1, writer=False, rw=0, ww=0)
    with pytest.raises(RuntimeError):
        lock.acquire_write_nowait()
    lock.release_read()
    lock.release_read()
    with pytest.raises(RuntimeError):
        lock.release_read()

    lock.acquire_write_nowait()
    holder = Holder(lock, write=False)
    async with anyio.create_task_group() as tg:
        await tg.start(holder.run)
        await wait_all_tasks_blocked()
        assert_stats(lock, readers=0, writer=True, rw=1, ww=0)
        lock.release_write()
        holder.release.set()
    assert_idle(lock)


async def test_statistics() -> None:
    lock = RWLock()
    assert_idle(lock)
    await lock.acquire_write()
    assert lock.statistics().writer == anyio.get_current_task()
    holders = [Holder(lock, write=i % 2 == 0) for i in range(5)]  # W R W R W
    async with anyio.create_task_group() as tg:
        for h in holders:
            await tg.start(h.run)
        await wait_all_tasks_blocked()
        assert_stats(lock, readers=0, writer=True, rw=2, ww=3)
        assert "3 writer(s) waiting" in repr(lock)
        lock.release_write()
        expected = [(0, True, 2, 2), (1, False, 1, 2), (0, True, 1, 1), (1, False, 0, 1)]
        for h, (readers, writer, rw, ww) in zip(holders, expected, strict=False):
            await wait_all_tasks_blocked()
            assert h.acquired.is_set()
            assert_stats(lock, readers=readers, writer=writer, rw=rw, ww=ww)
            h.release.set()
        await wait_all_tasks_blocked()
        assert_stats(lock, readers=0, writer=True, rw=0, ww=0)
        holders[-1].release.set()
    assert_idle(lock)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_checkpoints() -> None:
    import trio.testing

    lock = RWLock()
    for acquire, release in [
        (lock.acquire_read, lock.release_read),
        (lock.acquire_write, lock.release_write),
    ]:
        with trio.testing.assert_checkpoints():
            await acquire()
        with trio.testing.assert_no_checkpoints():
            release()
    read_guard = lock.read()
    with trio.testing.assert_checkpoints():
        await read_guard.__aenter__()
    with trio.testing.assert_no_checkpoints():
        await read_guard.__aexit__(None, None, None)
    write_guard = lock.write()
    with trio.testing.assert_checkpoints():
        await write_guard.__aenter__()
    with trio.testing.assert_no_checkpoints():
        await write_guard.__aexit__(None, None, None)
    assert_idle(lock)


async def test_acquire_is_a_checkpoint_even_uncontended(backend_name: str) -> None:
    """An already-cancelled scope stops even an uncontended acquire, holding nothing."""
    lock = RWLock()
    for acquire in (lock.acquire_read, lock.acquire_write):
        with anyio.CancelScope() as scope:
            scope.cancel()
            await acquire()
            pytest.fail("acquire did not checkpoint")  # pragma: no cover
        assert scope.cancelled_caught
        assert_idle(lock)

    if backend_name == "trio":
        return  # trio may run a new task after the next checkpoint; see test_trio_checkpoints

    # On asyncio the uncontended acquire yields to the tasks already scheduled.
    ran = False

    async def other() -> None:
        nonlocal ran
        ran = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(other)
        async with lock.read():
            assert ran


async def test_release_inside_cancelled_scope() -> None:
    lock = RWLock()
    with anyio.CancelScope() as scope:
        async with lock.write():
            scope.cancel()
            # __aexit__ runs inside the cancelled scope and must still release
    assert scope.cancel_called
    assert_idle(lock)


# --- cancellation of waiters ------------------------------------------------------------


Body = Callable[[], Coroutine[Any, Any, None]]
# A canceller runs ``waiter`` in a new task, waits until it is blocked, awaits
# ``on_blocked()``, then cancels the waiter its own way; it returns whether it was cancelled.
Canceller = Callable[[Body, Body], Awaitable[bool]]


async def _cancel_scope(waiter: Body, on_blocked: Body) -> bool:
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await wait_all_tasks_blocked()
            await on_blocked()
            scope.cancel()
    return scope.cancelled_caught


async def _move_on_after(waiter: Body, on_blocked: Body) -> bool:
    # The deadline passes once the waiter is queued and on_blocked has looked: a fixed
    # 0.2 s passed before on_blocked was done on a busy machine (the waiter was gone).
    caught = []
    scopes: list[anyio.CancelScope] = []

    async def child() -> None:
        with anyio.move_on_after(math.inf) as scope:
            scopes.append(scope)
            await waiter()
        caught.append(scope.cancelled_caught)

    async with anyio.create_task_group() as tg:
        tg.start_soon(child)
        await wait_all_tasks_blocked()
        await on_blocked()
        scopes[0].deadline = anyio.current_time()
    return caught == [True]


async def _native_cancel(waiter: Body, on_blocked: Body) -> bool:
    task = asyncio.ensure_future(waiter())
    await wait_all_tasks_blocked()
    await on_blocked()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return True
    return False  # pragma: no cover


async def _asyncio_timeout(waiter: Body, on_blocked: Body) -> bool:
    timeouts: list[Any] = []

    async def child() -> None:
        async with asyncio.timeout(None) as timeout:  # type: ignore[attr-defined,unused-ignore]
            timeouts.append(timeout)
            await waiter()

    task = asyncio.ensure_future(child())
    await wait_all_tasks_blocked()
    await on_blocked()
    timeouts[0].reschedule(asyncio.get_running_loop().time())  # (as in _move_on_after)
    try:
        await task
    except TimeoutError:
        return True
    return False  # pragma: no cover


CANCELLERS = [
    pytest.param(_cancel_scope, id="CancelScope.cancel"),
    pytest.param(_move_on_after, id="move_on_after"),
    pytest.param(_native_cancel, id="task.cancel"),
    pytest.param(
        _asyncio_timeout,
        id="asyncio.timeout",
        marks=pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is 3.11+"),
    ),
]


@pytest.mark.parametrize("canceller", CANCELLERS)
@pytest.mark.parametrize("waiter_writes", [True, False], ids=["writer", "reader"])
async def test_cancelled_waiter_leaves_lock_consistent(
    canceller: Canceller, waiter_writes: bool, backend_name: str
) -> None:
    """Blocker holds; the waiter queues; another task queues behind it; the waiter is
    cancelled: the queue shrinks by one and the grant goes on to the task behind."""
    if canceller in (_native_cancel, _asyncio_timeout) and backend_name != "asyncio":
        pytest.skip("asyncio-native cancellation")

    lock = RWLock()
    blocker = Holder(lock, write=True)
    behind = Holder(lock, write=not waiter_writes)

    async def waiter() -> None:
        async with lock.write() if waiter_writes else lock.read():
            pytest.fail("a cancelled waiter got the lock")  # pragma: no cover

    async with anyio.create_task_group() as tg:

        async def queue_behind() -> None:
            await tg.start(behind.run)
            await wait_all_tasks_blocked()
            assert_stats(lock, 0, True, rw=1, ww=1)

        await tg.start(blocker.run)
        assert await canceller(waiter, queue_behind)
        assert_stats(lock, 0, True, rw=int(waiter_writes), ww=int(not waiter_writes))
        blocker.release.set()
        await wait_all_tasks_blocked()
        assert behind.acquired.is_set()  # the grant passed on
        behind.release.set()
    assert_idle(lock)
    async with lock.write():
        pass


async def test_cancelled_writer_lets_readers_behind_it_in() -> None:
    """Readers hold; W waits; R2 queues behind W; cancelling W lets R2 in at once."""
    lock = RWLock()
    reader = Holder(lock, write=False)
    writer = Holder(lock, write=True)
    late_reader = Holder(lock, write=False)
    async with anyio.create_task_group() as tg:
        await tg.start(reader.run)
        await tg.start(writer.run)
        await tg.start(late_reader.run)
        await wait_all_tasks_blocked()
        assert not late_reader.acquired.is_set()
        assert writer.scope is not None
        writer.scope.cancel()
        await wait_all_tasks_blocked()
        assert late_reader.acquired.is_set()
        assert writer.cancelled
        assert_stats(lock, readers=2, writer=False, rw=0, ww=0)
        reader.release.set()
        late_reader.release.set()
    assert_idle(lock)


@pytest.mark.parametrize("write", [True, False], ids=["writer", "reader"])
async def test_cancelled_then_granted_before_cleanup(write: bool) -> None:
    """Cancel a waiter, then release before it runs: the grant it got is passed on."""
    lock = RWLock()
    await lock.acquire_write()
    victim = Holder(lock, write=write)
    after = Holder(lock, write=True)
    async with anyio.create_task_group() as tg:
        await tg.start(victim.run)
        await tg.start(after.run)
        await wait_all_tasks_blocked()
        assert victim.scope is not None
        victim.scope.cancel()
        lock.release_write()  # no checkpoint: the victim has not run its cleanup yet
        await wait_all_tasks_blocked()
        assert not victim.acquired.is_set()
        assert victim.cancelled
        assert after.acquired.is_set()
        after.release.set()
    assert_idle(lock)


@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS)
@pytest.mark.parametrize("write", [True, False], ids=["writer", "reader"])
async def test_granted_then_cancelled_before_it_ran(write: bool) -> None:
    """asyncio only: release grants the waiter, then task.cancel() lands before it runs."""
    lock = RWLock()
    await lock.acquire_write()
    got_it = False

    async def victim() -> None:
        nonlocal got_it
        async with lock.write() if write else lock.read():
            got_it = True  # pragma: no cover

    after = Holder(lock, write=True)
    task = asyncio.ensure_future(victim())
    async with anyio.create_task_group() as tg:
        await wait_all_tasks_blocked()
        await tg.start(after.run)
        await wait_all_tasks_blocked()
        lock.release_write()  # grants the victim...
        task.cancel()  # ...which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_all_tasks_blocked()
        assert not got_it
        assert after.acquired.is_set()
        after.release.set()
    assert_idle(lock)


# --- stress -----------------------------------------------------------------------------


async def test_stress_with_random_cancellations() -> None:
    tasks = 5000
    lock = RWLock()
    rng = random.Random(1234)
    active = {"readers": 0, "writers": 0}
    scopes: list[anyio.CancelScope] = []
    outcome = {"completed": 0, "cancelled": 0, "cancel_calls": 0}

    def check(write: bool) -> None:
        if write:
            assert active["writers"] == 1
            assert active["readers"] == 0
        else:
            assert active["writers"] == 0
            assert active["readers"] >= 1

    async def worker(write: bool, hold_checkpoints: int) -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            async with lock.write() if write else lock.read():
                active["writers" if write else "readers"] += 1
                try:
                    check(write)
                    for _ in range(hold_checkpoints):
                        await anyio.lowlevel.checkpoint()
                        check(write)
                finally:
                    active["writers" if write else "readers"] -= 1
            outcome["completed"] += 1
        if scope.cancelled_caught:
            outcome["cancelled"] += 1

    async def chaos() -> None:
        while outcome["cancel_calls"] < 1500:
            await anyio.lowlevel.checkpoint()
            for _ in range(rng.randint(1, 5)):
                if scopes:
                    scopes[rng.randrange(len(scopes))].cancel()
                    outcome["cancel_calls"] += 1

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(chaos)
            for _ in range(tasks):
                tg.start_soon(worker, rng.random() < 0.3, rng.randint(0, 3))

    assert outcome["completed"] + outcome["cancelled"] == tasks
    assert outcome["cancel_calls"] >= 1000
    assert outcome["cancelled"] >= 100  # cancellations really hit waiters
    assert outcome["completed"] >= 100
    assert_idle(lock)
    lock.acquire_write_nowait()
    lock.release_write()


@pytest.mark.parametrize("write", [False, True])
async def test_a_guard_serves_one_block_at_a_time(write: bool) -> None:
    """Regression test (adversary round 35): one guard entered by several tasks at
    once (aiorwlock's shared ``writer_lock`` idiom) overwrote its holder, so the first
    exit raised "not holding", and the lock stayed held for good by a task that had
    ended (every later acquirer waited forever).  A second entry is refused at once;
    the guard serves again once its block ended, and after an entry that failed."""
    lock = RWLock()
    guard = lock.write() if write else lock.read()
    entered: list[str] = []
    refused: list[str] = []

    async def use(name: str) -> None:
        try:
            async with guard:
                entered.append(name)
                await anyio.sleep(0.01)
        except RuntimeError as exc:
            refused.append(str(exc))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for name in ("a", "b", "c"):
                tg.start_soon(use, name)
    assert (len(entered), len(refused)) == (1, 2), (entered, refused)
    assert all("held already" in message for message in refused), refused
    assert_idle(lock)
    async with guard:  # once more, after its block ended
        with pytest.raises(RuntimeError, match="held already"):
            async with guard:
                pass
    assert_idle(lock)

    done = anyio.Event()

    async def hold_write(*, task_status: TaskStatus[None]) -> None:
        async with lock.write():
            task_status.started()
            await done.wait()

    async with anyio.create_task_group() as tg:  # a wait that is cancelled frees it too
        await tg.start(hold_write)
        with anyio.move_on_after(0.01):
            async with guard:
                raise AssertionError("entered past the writer")
        done.set()
    async with guard:
        pass
    assert_idle(lock)
    async with lock.read():  # and so does an entry that the lock refuses
        if write:
            with pytest.raises(RuntimeError, match="this task holds the read lock"):
                async with guard:
                    pass
    async with guard:
        pass
    assert_idle(lock)


async def test_a_maps_guard_shared_by_tasks_leaves_the_map_closable() -> None:
    """The same through a map's own lock: once the shared guard's holder left, the map
    closed (its ``aclose``, shielded, waited for the lost holder for ever before)."""
    m = await anymmap.AnonymousMmap.new(4096)
    guard = m.lock.write()
    refused = 0

    async def use() -> None:
        nonlocal refused
        try:
            async with guard:
                await anyio.sleep(0.01)
        except RuntimeError:
            refused += 1

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(use)
        assert refused == 2
        await m.aclose()


@pytest.mark.parametrize("write", [False, True])
async def test_an_entry_closed_at_its_checkpoint_leaves_nothing_held(write: bool) -> None:
    """Regression test (adversary round 36): on trio, a guard's entry closed by hand at
    its shielded checkpoint (the lock already taken) left the lock held while the guard
    read as free.  Closed there, it gives the lock back, as on asyncio."""
    lock = RWLock()
    guard = lock.write() if write else lock.read()
    entry = guard.__aenter__()
    entry.send(None)  # to its checkpoint, the lock taken
    entry.close()
    assert_idle(lock)
    async with guard:
        pass
    assert_idle(lock)
