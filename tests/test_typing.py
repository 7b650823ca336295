"""What a type checker says about the public API: checked by ``mypy --strict`` (CI runs it
for Python 3.10 and 3.12), not by pytest.

Each ``# type: ignore[...]`` below marks a call that must be refused by the checker: with
``warn_unused_ignores`` (part of ``--strict``), an ignore that is not needed fails the
check, so a hint that gets looser (a buffer typed ``object``) turns CI red.
"""

from __future__ import annotations

import array
import sys

import numpy as np

import anymmap
import anymmap.sync


async def _accepted(m: anymmap.MmapRaw, s: anymmap.sync.MmapRaw, fd: int) -> None:
    """Calls a type checker must accept, on every Python version."""
    await m.read_into(0, bytearray(8))
    await m.read_into(0, np.zeros(8, np.uint8))
    m.read_into_nowait(0, memoryview(bytearray(8)))
    await m.update_region(0, b"x")
    await m.update_region(0, array.array("b", [1]))
    s.update_region(0, np.ones(4, np.uint8))
    async with await anymmap.MmapRaw.map_raw(fd) as other:
        data: bytes = await other.read(0, 1)
    with open("/dev/null", "rb") as f:
        await anymmap.MmapRaw.map_raw(f)
    await anymmap.MmapRegion.attach_fd(fd)
    del data


if sys.version_info >= (3, 12):  # buffers have a type only from 3.12 (see BufferLike)

    async def _refused(
        m: anymmap.MmapRaw, s: anymmap.sync.SparseMapping, r: anymmap.Region
    ) -> None:
        await m.update_region(0, "text")  # type: ignore[arg-type]
        await m.read_into(0, [0, 0])  # type: ignore[arg-type]
        m.update_region_nowait(0, None)  # type: ignore[arg-type]
        s.write_at(0, 1)  # type: ignore[arg-type]
        r.write(0, "text")  # type: ignore[arg-type]


async def _refused_everywhere(m: anymmap.MmapRaw) -> None:
    await anymmap.MmapRaw.map_raw(3.5)  # type: ignore[arg-type]
    await anymmap.MmapRegion.attach_fd("path")  # type: ignore[arg-type]
    await m.read_into("0", bytearray(1))  # type: ignore[arg-type]


def test_this_module_is_for_the_type_checker() -> None:
    """(pytest collects it; the checks above run under mypy.)"""
    assert callable(_accepted)
