"""Borrows that end in the wrong place, on every map type: an async generator finalized
by another task, a generator closed by another thread, views escaping through
``PickleBuffer``, ``struct.iter_unpack``, ``re.finditer``, NumPy and slices, and views
in reference cycles.  Never a crash (each case runs in a child process), never a lock
held for ever, never a map unmapped under a live view.
"""

from __future__ import annotations

import pytest

from .._child import check_child
from ._drive import scaled

_WRONG_PLACES = """
    import gc, os, pickle, re, struct, sys, tempfile, threading
    import anyio, numpy as np, anymmap, anymmap.sync

    BACKEND, ROUNDS = sys.argv[1], int(sys.argv[2])
    directory = tempfile.mkdtemp(dir=os.environ["ANYMMAP_CHILD_SHM"])
    path = os.path.join(directory, "file")
    with open(path, "wb") as f:
        f.truncate(1 << 16)

    ESCAPES = {
        "slice": lambda view: view[:4],
        "numpy": lambda view: np.frombuffer(view, dtype=np.uint8),
        "PickleBuffer": lambda view: pickle.PickleBuffer(view),
        "iter_unpack": lambda view: struct.iter_unpack("<I", view),
        "finditer": lambda view: re.finditer(rb"x", view),
    }

    async def open_all(types):
        sparse = await types.SparseMapping.new(1 << 20)
        await sparse.alloc(0, 1 << 16)
        region_path = os.path.join(directory, f"region{id(types)}")
        return [
            await types.AnonymousMmap.new(1 << 16),
            await types.MmapRaw.map_raw(path),
            sparse,
            await types.MmapRegion.create(region_path, 1 << 16),
        ]

    async def main():
        for _ in range(ROUNDS):
            for m in await open_all(anymmap):
                # An async generator suspended in a borrow, finalized by another task.
                async def records():
                    async with m.as_mut_slice(0, 16) as view:
                        yield bytes(view)
                        yield bytes(view)
                async for _ in records():
                    break
                gc.collect()
                with anyio.fail_after(10):
                    while m.lock.locked():
                        await anyio.sleep(0.001)
                    await m.update_region(0, b"writer got in")
                # Every way a view can escape its borrow.
                for name, escape in ESCAPES.items():
                    try:
                        async with m.as_slice(0, 16) as view:
                            kept = escape(view)
                    except anymmap.BorrowError:
                        pass
                    else:
                        raise AssertionError(f"{name}: no BorrowError")
                    try:
                        await m.aclose()
                    except anymmap.BorrowError:
                        pass
                    else:
                        raise AssertionError(f"{name}: closed under a live export")
                    cycle = [kept, view]
                    cycle.append(cycle)
                    del kept, view, cycle
                    gc.collect()
                await m.aclose()  # everything escaped is gone now

    anyio.run(main, backend=BACKEND)

    # The blocking twins: a generator closed by another thread.
    def records(m):
        with m.as_mut_slice(0, 16) as view:
            yield bytes(view)

    sync = anymmap.sync
    sparse = sync.SparseMapping.new(1 << 20)
    sparse.alloc(0, 1 << 16)
    twins = [
        sync.AnonymousMmap.new(1 << 16),
        sync.MmapRaw.map_raw(path),
        sparse,
        sync.MmapRegion.create(os.path.join(directory, "sync-region"), 1 << 16),
    ]
    for m in twins:
        gen = records(m)
        next(gen)
        closer = threading.Thread(target=gen.close)
        closer.start()
        closer.join()
        m.update_region(0, b"writer got in")
        m.close()
    os.unlink(path)
    os.rmdir(directory)
    print("ok")
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_borrows_that_end_in_the_wrong_place(backend: str) -> None:
    check_child(_WRONG_PLACES, backend, str(scaled(3, 50)))
