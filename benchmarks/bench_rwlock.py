"""anymmap.RWLock against aiorwlock (asyncio only) and anyio.Lock.

Run: python benchmarks/bench_rwlock.py

Ratios are relative to anymmap.RWLock (1.00x); below 1 is faster than us.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel

sys.path.insert(0, __file__.rpartition("/")[0])

from _harness import Table, add_ratios, best_of

import anymmap

OPS = 5_000
ROUNDS = 25


async def uncontended(table: Table, backend: str) -> None:
    lock = anymmap.RWLock()
    anyio_lock = anyio.Lock()

    async def ours_read() -> None:
        for _ in range(OPS):
            async with lock.read():
                pass

    async def ours_write() -> None:
        for _ in range(OPS):
            async with lock.write():
                pass

    async def ours_explicit() -> None:
        for _ in range(OPS):
            await lock.acquire_read()
            lock.release_read()

    async def anyio_locked() -> None:
        for _ in range(OPS):
            async with anyio_lock:
                pass

    reads: dict[str, Callable[[], Awaitable[None]]] = {
        "anymmap.RWLock read()": ours_read,
        "anyio.Lock": anyio_locked,
    }
    writes: dict[str, Callable[[], Awaitable[None]]] = {
        "anymmap.RWLock write()": ours_write,
        "anyio.Lock": anyio_locked,
    }
    explicit: dict[str, Callable[[], Awaitable[None]]] = {
        "anymmap.RWLock acquire_read()/release_read()": ours_explicit,
        "anyio.Lock": anyio_locked,
    }
    if backend == "asyncio":
        import aiorwlock

        peer = aiorwlock.RWLock()

        async def aio_read() -> None:
            for _ in range(OPS):
                async with peer.reader_lock:
                    pass

        async def aio_write() -> None:
            for _ in range(OPS):
                async with peer.writer_lock:
                    pass

        reads["aiorwlock reader_lock"] = aio_read
        writes["aiorwlock writer_lock"] = aio_write
        explicit["aiorwlock reader_lock"] = aio_read

    for name, cands in (
        ("uncontended read, async with", reads),
        ("uncontended write, async with", writes),
        ("uncontended read, acquire/release", explicit),
    ):
        add_ratios(table, name, await best_of(cands, ops=OPS, rounds=ROUNDS), next(iter(cands)))


async def nowait(table: Table) -> None:
    lock = anymmap.RWLock()
    anyio_lock = anyio.Lock()

    async def ours_read() -> None:
        for _ in range(OPS):
            lock.acquire_read_nowait()
            lock.release_read()

    async def ours_write() -> None:
        for _ in range(OPS):
            lock.acquire_write_nowait()
            lock.release_write()

    async def anyio_nowait() -> None:
        for _ in range(OPS):
            anyio_lock.acquire_nowait()
            anyio_lock.release()

    results = await best_of(
        {
            "anymmap.RWLock acquire_read_nowait()": ours_read,
            "anymmap.RWLock acquire_write_nowait()": ours_write,
            "anyio.Lock acquire_nowait()": anyio_nowait,
        },
        ops=OPS,
        rounds=ROUNDS,
    )
    add_ratios(table, "nowait acquire + release", results, "anymmap.RWLock acquire_read_nowait()")


CONTENDED_TASKS = 40  # 30 readers, 10 writers
CONTENDED_ITERATIONS = 50


async def contended(table: Table, backend: str) -> None:
    """40 tasks each take the lock 50 times and checkpoint once inside it."""

    def mix(
        read_cm: Callable[[], object], write_cm: Callable[[], object]
    ) -> Callable[[], Awaitable[None]]:
        async def worker(write: bool) -> None:
            for _ in range(CONTENDED_ITERATIONS):
                async with (write_cm if write else read_cm)():  # type: ignore[attr-defined]
                    await anyio.lowlevel.checkpoint()

        async def run() -> None:
            async with anyio.create_task_group() as tg:
                for i in range(CONTENDED_TASKS):
                    tg.start_soon(worker, i % 4 == 3)

        return run

    lock = anymmap.RWLock()
    anyio_lock = anyio.Lock()
    cands = {
        "anymmap.RWLock": mix(lock.read, lock.write),
        "anyio.Lock (exclusive for all)": mix(lambda: anyio_lock, lambda: anyio_lock),
    }
    if backend == "asyncio":
        import aiorwlock

        peer = aiorwlock.RWLock()
        cands["aiorwlock"] = mix(lambda: peer.reader_lock, lambda: peer.writer_lock)

    ops = CONTENDED_TASKS * CONTENDED_ITERATIONS
    results = await best_of(cands, ops=ops, rounds=8)
    add_ratios(table, "contended 30 R + 10 W, per acquire", results, "anymmap.RWLock")


async def main(label: str, out: list[str]) -> None:
    table = Table(f"RWLock on {label}")
    backend = "trio" if label == "trio" else "asyncio"
    await uncontended(table, backend)
    await nowait(table)
    await contended(table, backend)
    out.append(table.render())


def run() -> list[str]:
    out: list[str] = []
    anyio.run(main, "asyncio", out, backend="asyncio")
    anyio.run(main, "asyncio+uvloop", out, backend="asyncio", backend_options={"use_uvloop": True})
    anyio.run(main, "trio", out, backend="trio")
    return out


if __name__ == "__main__":
    print(f"# RWLock benchmark (best of {ROUNDS} rounds of {OPS} ops)\n")
    for section in run():
        print(section)
