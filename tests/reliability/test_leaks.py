"""Leaks: thousands of create / use / close cycles of every map type, blocking and async;
open descriptors and ``/proc/self/maps`` lines come back to where they started and RSS
stays flat.  A map dropped without closing releases its memory and warns, as an unclosed
file does.  Each test runs in a child process, so nothing else skews the counts.
"""

from __future__ import annotations

import pytest

from .._child import CHILD_TIMEOUT, check_child
from ._drive import scaled

_CYCLES = """
    import gc, os, sys, tempfile
    import anyio, anymmap, anymmap.sync

    API, KIND, CYCLES = sys.argv[1], sys.argv[2], int(sys.argv[3])
    directory = tempfile.mkdtemp(dir=os.environ["ANYMMAP_CHILD_SHM"])
    path = os.path.join(directory, "file")
    with open(path, "wb") as f:
        f.truncate(1 << 16)

    def counts():
        gc.collect()
        with open("/proc/self/maps") as f:
            maps = sum(1 for _ in f)
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        # A thread's stack is two lines of /proc/self/maps (the stack and its guard):
        # worker and committer threads that idle out later are not leaks.
        threads = len(os.listdir("/proc/self/task"))
        return len(os.listdir("/proc/self/fd")), maps - 2 * threads, rss

    def sync_cycle(i):
        t = anymmap.sync
        if KIND == "anon":
            m = t.AnonymousMmap.new(1 << 16)
        elif KIND == "raw":
            m = t.MmapRaw.map_raw(path)
        elif KIND == "sparse":
            m = t.SparseMapping.new(1 << 20)
            m.alloc(0, 1 << 16)
        else:
            m = t.MmapRegion.create(os.path.join(directory, "r"), 1 << 16, max_size=1 << 20)
        with m:
            m.update_region(i % 1000, b"cycle")
            assert m.read(i % 1000, 5) == b"cycle"
            with m.as_slice(0, 8) as view:
                bytes(view)
            if hasattr(m, "flush") and i % 10 == 0:
                m.flush()

    async def async_cycle(i):
        if KIND == "anon":
            m = await anymmap.AnonymousMmap.new(1 << 16)
        elif KIND == "raw":
            m = await anymmap.MmapRaw.map_raw(path)
        elif KIND == "sparse":
            m = await anymmap.SparseMapping.new(1 << 20)
            await m.alloc(0, 1 << 16)
        else:
            m = await anymmap.MmapRegion.create(os.path.join(directory, "r"), 1 << 16, max_size=1 << 20)
        async with m:
            await m.update_region(i % 1000, b"cycle")
            assert await m.read(i % 1000, 5) == b"cycle"
            async with m.as_slice(0, 8) as view:
                bytes(view)
            if hasattr(m, "flush") and i % 10 == 0:
                await m.flush()

    async def run_async(cycles):
        for i in range(cycles):
            await async_cycle(i)

    def run(cycles):
        if API == "sync":
            for i in range(cycles):
                sync_cycle(i)
        else:
            anyio.run(run_async, cycles, backend=API)

    run(200)  # warm up: lazy imports, thread pools, caches
    fds, maps, rss = counts()
    run(CYCLES)
    fds2, maps2, rss2 = counts()
    print(f"fds {fds}->{fds2} maps {maps}->{maps2} rss {rss >> 10}->{rss2 >> 10} KiB", file=sys.stderr)
    assert fds2 <= fds, (fds, fds2)
    # A leak per cycle would add thousands of lines; malloc arenas and stacks of idle
    # threads add a few, whatever the number of cycles.
    assert maps2 - maps < 16, (maps, maps2)
    assert rss2 - rss < 8 << 20, (rss, rss2)
    assert os.listdir(directory) == ["file"]
    print("ok")
"""


@pytest.mark.parametrize("kind", ["anon", "raw", "sparse", "region"])
@pytest.mark.parametrize("api_name", ["sync", "asyncio", "trio"])
def test_create_use_close_cycles_leak_nothing(api_name: str, kind: str) -> None:
    check_child(_CYCLES, api_name, kind, str(scaled(1_000, 10_000)), timeout=CHILD_TIMEOUT * 4)


_DROPPED = """
    import gc, os, sys, tempfile, warnings
    import anymmap.sync

    directory = tempfile.mkdtemp(dir=os.environ["ANYMMAP_CHILD_SHM"])
    path = os.path.join(directory, "file")
    with open(path, "wb") as f:
        f.truncate(1 << 20)

    def mapped():
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)

    t = anymmap.sync
    before = mapped()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(50):
            sparse = t.SparseMapping.new(1 << 20)
            sparse.alloc(0, 1 << 16)
            maps = [
                t.AnonymousMmap.new(1 << 20),
                t.MmapRaw.map_raw(path),
                sparse,
                t.MmapRegion.create(os.path.join(directory, "r"), 1 << 16),
            ]
            for m in maps:
                m.update_region(0, b"dropped")
            del maps, sparse, m
            gc.collect()
    kinds = {str(w.message).split()[1] for w in caught if issubclass(w.category, ResourceWarning)}
    assert kinds == {"AnonymousMmap", "MmapRaw", "SparseMapping", "MmapRegion"}, kinds
    assert mapped() <= before + 2, (before, mapped())
    assert os.listdir(directory) == ["file"]  # the owner's region file went with it
    print("ok")
"""


def test_maps_dropped_without_closing_are_released_with_a_warning() -> None:
    check_child(_DROPPED)
