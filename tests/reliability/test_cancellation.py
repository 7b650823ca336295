"""Cancellation storms: thousands of tasks call every async method of every map type
while a driver cancels them at random (tiny ``move_on_after`` deadlines, a cancel scope
cancelled from outside, native ``Task.cancel()`` on asyncio).  Afterwards every lock is
idle, every map is usable and holds, in each slot, a value that some call wrote there
(the last acknowledged one, or one whose call was cancelled after it), and everything
finished in time.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import pytest

import anymmap
from anymmap import RWLockStatistics

from ._drive import scaled

pytestmark = pytest.mark.anyio

SLOT = 256
SLOTS = 64


async def open_maps(directory: str) -> list[Any]:
    path = os.path.join(directory, "storm.bin")
    with open(path, "wb") as f:
        f.truncate(SLOTS * SLOT)
    sparse = await anymmap.SparseMapping.new(SLOTS * SLOT)
    await sparse.alloc(0, SLOTS * SLOT)
    return [
        await anymmap.AnonymousMmap.new(SLOTS * SLOT),
        await anymmap.MmapRaw.map_raw(path),
        sparse,
        await anymmap.MmapRegion.create(os.path.join(directory, "region"), SLOTS * SLOT),
    ]


async def test_a_cancellation_storm_leaves_every_map_consistent(backend_name: str) -> None:
    rng = random.Random(0)
    calls = scaled(2_000, 50_000)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as directory:
        maps = await open_maps(directory)
        try:
            await storm(maps, rng, calls, backend_name)
        finally:
            for m in maps:
                await m.aclose()


async def storm(maps: list[Any], rng: random.Random, calls: int, backend_name: str) -> None:
    """``calls`` random calls on the maps, cancelled at random; then check them."""
    # For each (map, slot): values that may be there (acknowledged, or cancelled
    # after the last acknowledged one).
    possible: dict[tuple[int, int], set[bytes]] = {
        (m, s): {bytes(SLOT)} for m in range(len(maps)) for s in range(SLOTS)
    }
    cancelled = 0
    acknowledged = 0
    started = 0
    workers: set[asyncio.Task[Any]] = set()

    def operation(
        i: int,
    ) -> tuple[Callable[[], Awaitable[Any]], tuple[int, int] | None, bytes]:
        which = rng.randrange(len(maps))
        m = maps[which]
        slot = rng.randrange(SLOTS)
        value = i.to_bytes(4, "little") * (SLOT // 4)
        kind = rng.randrange(10)
        if kind < 4:
            return lambda: m.update_region(slot * SLOT, value), (which, slot), value
        if kind == 4:

            async def borrow_write() -> None:
                async with m.as_mut_slice(slot * SLOT, SLOT) as view:
                    await anyio.lowlevel.checkpoint()
                    view[:] = value

            return borrow_write, (which, slot), value
        if kind == 5:
            return lambda: m.read(slot * SLOT, SLOT), None, b""
        if kind == 6 and hasattr(m, "flush_range"):
            return lambda: m.flush_range(slot * SLOT, SLOT), None, b""
        if kind == 7:
            return lambda: m.populate(write=rng.random() < 0.5), None, b""
        if kind == 8:
            return lambda: m.advise(anymmap.Advice.RANDOM, slot * SLOT, SLOT), None, b""
        return lambda: m.read_into(0, bytearray(len(m))), None, b""

    async def run(i: int, task_status: anyio.abc.TaskStatus[anyio.CancelScope]) -> None:
        nonlocal cancelled, acknowledged, started
        call, slot, value = operation(i)
        if slot is not None:
            possible[slot].add(value)  # it may land even if cancelled
        how = rng.randrange(3)
        done = False
        if backend_name == "asyncio":
            workers.add(asyncio.current_task())  # type: ignore[arg-type]
        started += 1
        try:
            with anyio.CancelScope() as scope:
                task_status.started(scope)
                try:
                    if how == 0:
                        with anyio.move_on_after(rng.choice([0, 1e-6, 1e-4, 1e-3])):
                            await call()
                            done = True
                    else:
                        await call()
                        done = True
                except asyncio.CancelledError:
                    if scope.cancel_called:
                        raise
                    # A native Task.cancel() aimed at this task: it ends here.
        except asyncio.CancelledError:
            # A native Task.cancel() that met the scope's own cancellation: anyio lets it
            # out of the scope.  Out of the task, it would make anyio cancel the whole
            # task group (its rule for a child that ends cancelled): the storm would stop
            # early, quietly.  It ends here too.
            pass
        if not done:
            cancelled += 1
        elif slot is not None:
            acknowledged += 1

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            scopes: list[anyio.CancelScope] = []
            for i in range(calls):
                scopes.append(await tg.start(run, i))
                if rng.random() < 0.3 and scopes:
                    rng.choice(scopes).cancel()  # from outside, at any moment
                if workers and rng.random() < 0.05:
                    for task in list(workers):
                        if task.done():
                            workers.discard(task)
                        elif rng.random() < 0.05:
                            task.cancel()  # native, through anyio's shields
                if i % 50 == 0:
                    await anyio.lowlevel.checkpoint()
    assert started == calls, (started, calls)  # the storm ran to its end
    assert cancelled > calls // 10, (cancelled, acknowledged)
    for index, m in enumerate(maps):
        assert m.lock.statistics() == RWLockStatistics(0, None, 0, 0), m
        data = await m.read(0, SLOTS * SLOT)
        for slot in range(SLOTS):
            got = data[slot * SLOT : (slot + 1) * SLOT]
            assert got in possible[(index, slot)], (m, slot, got[:8])
        await m.update_region(0, b"usable")  # every map still works
        assert await m.read(0, 6) == b"usable"
