"""A walk through anymmap on asyncio and on trio; prints what happens at each step."""

from __future__ import annotations

import anyio

import anymmap


async def lock_tour() -> None:
    lock = anymmap.RWLock()
    order: list[str] = []

    async def reader(name: str) -> None:
        async with lock.read():
            order.append(f"{name} reads")
            await anyio.sleep(0.01)

    async def writer(name: str) -> None:
        async with lock.write():
            order.append(f"{name} writes alone")
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        for name, fn in [("R1", reader), ("W1", writer), ("R2", reader), ("R3", reader)]:
            tg.start_soon(fn, name)
            await anyio.wait_all_tasks_blocked()
    print("  RWLock grants in arrival order, readers together:", ", ".join(order))
    print("  after:", lock)


async def tour() -> None:
    await lock_tour()


def main() -> None:
    for backend in ("asyncio", "trio"):
        print(f"== {backend} ==")
        anyio.run(tour, backend=backend)


if __name__ == "__main__":
    main()
