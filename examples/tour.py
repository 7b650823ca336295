"""A walk through anymmap on asyncio and on trio; prints what happens at each step.

Run: python examples/tour.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import anyio

import anymmap


def say(text: str) -> None:
    print(f"  {text}")


async def lock_tour() -> None:
    lock = anymmap.RWLock()
    grants: list[set[str]] = []  # who holds the lock, each time it changes hands

    async def reader(name: str) -> None:
        async with lock.read():
            grants[-1].add(name)
            await anyio.sleep(0.01)

    async def writer(name: str) -> None:
        async with lock.write():
            grants.append({name})
            await anyio.sleep(0.01)
            grants.append(set())  # the readers queued behind this writer come in together

    grants.append(set())
    async with anyio.create_task_group() as tg:
        for name, fn in [("R1", reader), ("W1", writer), ("R2", reader), ("R3", reader)]:
            tg.start_soon(fn, name)
            await anyio.wait_all_tasks_blocked()
    # Readers let in together wake in no particular order: print each group sorted.
    groups = ["+".join(sorted(group)) for group in grants if group]
    say("RWLock grants in arrival order, queued readers together: " + ", then ".join(groups))
    say(f"afterwards: {lock}")


async def anonymous_tour() -> None:
    async with await anymmap.AnonymousMmap.new(1 << 20) as m:
        say(f"new map: {m}")
        await m.update_region(0, b"hello, anymmap")
        say(f"read back: {await m.read(0, 14)!r}")

        async with m.as_mut_slice(0, 5) as view:  # a writable borrow under the write lock
            view[:] = b"HELLO"
        async with m.as_slice(0, 14) as view:  # a read-only borrow, released at block end
            say(f"borrowed view: {bytes(view)!r}")

        try:
            await m.read(1 << 20, 1)
        except anymmap.OutOfBoundsError as exc:
            say(f"bounds are checked before any syscall: {exc}")

        chunks: list[int] = []
        await m.resize(48 << 20)
        await m.populate(write=True, progress=lambda done, total: chunks.append(done))
        say(
            f"resized to {len(m) >> 20} MiB and populated in a worker thread, {len(chunks)} chunks"
        )

        buf = bytearray(5)
        m.read_into_nowait(0, buf)
        say(f"read_into_nowait copies at once when the lock is free: {bytes(buf)!r}")

    opts = anymmap.MmapOptions().len(1 << 40).no_reserve(True)
    async with await opts.map_anon() as huge:
        await huge.update_region(len(huge) - 4, b"tail")
        say(f"{opts!r} -> a 1 TiB map that costs almost nothing: {huge}")


async def file_tour(directory: str) -> None:
    path = os.path.join(directory, "tour.bin")
    async with await anyio.open_file(path, "wb") as f:
        await f.write(bytes(64 * anymmap.PAGE_SIZE))

    async with await anymmap.MmapRaw.map_raw(path) as m:
        say(f"mapped a file: {m}")
        await m.update_region(100, b"durable")
        start = time.perf_counter()
        await m.flush_range(100, 7)
        say(f"flush_range returned after {(time.perf_counter() - start) * 1e3:.2f} ms: durable")
        await m.flush_async()  # starts writeback, does not wait
        await m.resize(128 * anymmap.PAGE_SIZE)
        size = (await anyio.Path(path).stat()).st_size
        say(f"resized the file and the map together: {size} bytes")

        # Another process truncates the file under the map: the stdlib mmap would die of
        # SIGBUS on the next read; anymmap raises an exception instead.
        await anyio.run_process(
            [sys.executable, "-c", f"import os; os.truncate({path!r}, {anymmap.PAGE_SIZE})"]
        )
        try:
            await m.read(0, len(m))
        except anymmap.MappingFaultError as exc:
            say(f"file truncated by another process -> {type(exc).__name__}: {exc}")
        say(f"the process lives on; the first page still reads: {await m.read(100, 7)!r}")


async def sparse_tour() -> None:
    async with await anymmap.SparseMapping.new(1 << 40) as m:  # address space only
        say(f"reserved 1 TiB, nothing mapped yet: {m}")
        await m.alloc(1 << 20, 1 << 20)  # commit 1 MiB of private memory at 1 MiB
        await m.write_at(1 << 20, b"sparse")
        buf = bytearray(6)
        await m.read_at(1 << 20, buf)
        say(f"wrote and read back in the alloc'ed piece: {bytes(buf)!r}")
        try:
            await m.read_at(0, bytearray(8))  # the hole before the piece
        except anymmap.MappingFaultError as exc:
            say(f"a read of a hole -> {type(exc).__name__}: {exc}")
        for piece in m.pieces():
            say(f"{piece}")


async def region_tour(directory: str) -> None:
    path = os.path.join(directory, "region")
    async with await anymmap.MmapRegion.create(path, 1 << 20, max_size=1 << 30) as region:
        say(f"created a shared region: {region}")
        # A second handle, as another process would attach (here in the same process).
        async with await anymmap.MmapRegion.attach(path) as other:
            await region.update_region(0, b"shared")
            say(f"the other handle reads what the first wrote: {await other.read(0, 6)!r}")
            base, other_base = region.as_ptr(), other.as_ptr()
            await region.resize(64 << 20)  # grow-only; the new blocks are allocated first
            followed = await other.check_and_remap()
            say(
                f"resized to {len(region) >> 20} MiB; check_and_remap() on the other -> {followed}"
            )
            await other.update_region(len(other) - 4, b"tail")
            say(f"the other wrote at the new end: {await region.read(len(region) - 4, 4)!r}")
            same = region.as_ptr() == base and other.as_ptr() == other_base
            say(f"both base addresses unchanged: {same} ({base:#x}, {other_base:#x})")
            say(f"nothing more to follow: check_and_remap() -> {await other.check_and_remap()}")
    gone = not await anyio.Path(path).exists()
    say(f"the creator owned the file and deleted it when it closed: {gone}")


async def tour() -> None:
    print("RWLock")
    await lock_tour()
    print("AnonymousMmap and MmapOptions")
    await anonymous_tour()
    print("MmapRaw")
    with tempfile.TemporaryDirectory() as directory:
        await file_tour(directory)
    print("SparseMapping")
    await sparse_tour()
    print("MmapRegion")
    with tempfile.TemporaryDirectory() as directory:
        await region_tour(directory)


def main() -> None:
    for backend in ("asyncio", "trio"):
        print(f"== {backend} ==")
        anyio.run(tour, backend=backend)


if __name__ == "__main__":
    main()
