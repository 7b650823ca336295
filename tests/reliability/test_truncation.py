"""Truncation hostility: another process cuts, shrinks and re-extends the file in a loop
while this one copies, flushes, populates and resizes through every fault-safe path.
Nothing may crash; once the file is whole again, what was flushed is intact.

Excluded, because documented unsafe (README, "Faults"): touching borrowed views
(``as_slice``/``as_mut_slice``), copies of maps made with ``fault_safe=False`` (writes,
and reads of ``"copy"`` maps), and ``Region.address`` used directly.
"""

from __future__ import annotations

import pytest

from .._child import CHILD_TIMEOUT, check_child
from ._drive import scaled

_CUTTER = """
import os, random, sys
rng = random.Random(1)
path, size = sys.argv[1], int(sys.argv[2])
parent = os.getppid()
while not os.path.exists(path + ".stop") and os.getppid() == parent:
    os.truncate(path, rng.choice([0, 1, 4095, 4096, rng.randrange(size), size, size // 2]))
os.truncate(path, size)
print("done", flush=True)
"""

_HOSTILE = """
    import os, random, subprocess, sys, tempfile, time
    import anyio, anymmap, anymmap.sync

    BACKEND, SECONDS, WHERE = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    SIZE = 1 << 20
    directory = tempfile.mkdtemp(dir=None if WHERE == "disk" else os.environ["ANYMMAP_CHILD_SHM"])
    path = os.path.join(directory, "victim")
    with open(path, "wb") as f:
        f.write(os.urandom(SIZE))

    counts = {"ok": 0, "fault": 0}

    def counted(call, *errors):
        try:
            call()
        except (anymmap.MappingFaultError, anyio.WouldBlock, *errors):
            counts["fault"] += 1
        else:
            counts["ok"] += 1

    async def hammer(m, rng, stop):
        buf = bytearray(64 << 10)
        while time.monotonic() < stop:
            offset = rng.randrange(len(m))
            n = rng.randrange(min(len(buf), len(m) - offset) + 1)
            what = rng.randrange(9)
            if what == 0:
                try:
                    await m.read(offset, n)
                    counts["ok"] += 1
                except anymmap.MappingFaultError:
                    counts["fault"] += 1
            elif what == 1:
                try:
                    await m.read_into(offset, memoryview(buf)[:n])
                    counts["ok"] += 1
                except anymmap.MappingFaultError:
                    counts["fault"] += 1
            elif what == 2 and getattr(m, "mode", "rw") != "r":
                try:
                    await m.update_region(offset, bytes(n))
                    counts["ok"] += 1
                except anymmap.MappingFaultError:
                    counts["fault"] += 1
            elif what == 3:
                counted(lambda: m.read_into_nowait(offset, memoryview(buf)[:n]))
            elif what == 4 and getattr(m, "mode", "rw") != "r":
                counted(lambda: m.update_region_nowait(offset, bytes(n)))
            elif what == 5:
                try:
                    await m.flush_range(offset, n)
                    counts["ok"] += 1
                except OSError:
                    counts["fault"] += 1
            elif what == 6:
                try:
                    await m.populate(offset, n)
                    counts["ok"] += 1
                except anymmap.MappingFaultError:
                    counts["fault"] += 1
            elif what == 7:
                await m.advise(rng.choice([anymmap.Advice.RANDOM, anymmap.Advice.NORMAL]), offset, n)
            else:
                buf2 = bytearray(256 << 10)  # a worker-thread copy
                try:
                    await m.read_into(0, memoryview(buf2)[: min(len(buf2), len(m))])
                    counts["ok"] += 1
                except anymmap.MappingFaultError:
                    counts["fault"] += 1

    async def main():
        rng = random.Random(7)
        stop = time.monotonic() + SECONDS
        maps = [
            await anymmap.MmapRaw.map_raw(path),
            await anymmap.MmapRaw.map_raw(path, mode="r"),
            await anymmap.MmapRaw.map_raw(path, offset=12345, length=SIZE // 2),
            await anymmap.MmapRegion.attach(path, trust_others=True),
        ]
        # The other process: cut, shrink, re-extend, as fast as it can, until told to stop.
        cutter = subprocess.Popen(
            [sys.executable, "-c", sys.argv[4], path, str(SIZE)], stdout=subprocess.PIPE, text=True
        )
        async with anyio.create_task_group() as tg:
            for m in maps:
                tg.start_soon(hammer, m, random.Random(rng.random()), stop)
        open(path + ".stop", "w").close()
        assert cutter.stdout.readline().strip() == "done"  # the file is whole again
        cutter.wait()
        # What is flushed now is intact.
        data = os.urandom(SIZE)
        await maps[0].update_region(0, data)
        await maps[0].flush()
        with open(path, "rb") as f:
            assert f.read() == data
        assert await maps[3].read(0, SIZE) == data
        for m in maps:
            await m.aclose()

    anyio.run(main, backend=BACKEND)
    print(counts, file=sys.stderr)
    assert counts["fault"] > 0 and counts["ok"] > 0, counts
    os.unlink(path)
    os.unlink(path + ".stop")
    os.rmdir(directory)
    print("ok")
"""


@pytest.mark.parametrize("where", ["disk", "tmpfs"])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_file_cut_and_regrown_in_a_loop_never_crashes_us(backend: str, where: str) -> None:
    seconds = scaled(3, 60)
    check_child(_HOSTILE, backend, str(seconds), where, _CUTTER, timeout=CHILD_TIMEOUT + seconds)
