"""An arena on a SparseMapping: reserve 64 GiB of address space once, commit memory 1 MiB
at a time as the arena grows, and hand out NumPy arrays over what is committed.  The base
address never moves, so offsets (and addresses) stay valid as it grows; a stray read of
memory not committed yet raises MappingFaultError instead of killing the process.

Run: python examples/sparse_arena.py
"""

from __future__ import annotations

import anyio
import numpy as np

import anymmap

RESERVE = 64 << 30  # address space only: no memory, no swap
CHUNK = 1 << 20  # committed at a time; page-aligned, like every piece
ALIGN = 64  # each block starts on a cache line


def say(text: str) -> None:
    print(f"  {text}")


class Arena:
    """A bump allocator: blocks are offsets into one SparseMapping, never freed singly."""

    def __init__(self, m: anymmap.SparseMapping) -> None:
        self.m = m
        self.used = 0  # bytes handed out
        self.committed = 0  # bytes backed by memory (alloc'ed), a multiple of CHUNK

    async def allocate(self, nbytes: int) -> int:
        """Return the offset of ``nbytes`` of fresh zeroed memory, committing more if needed."""
        start = -(-self.used // ALIGN) * ALIGN
        end = start + nbytes
        if end > self.committed:
            grow = -(-(end - self.committed) // CHUNK) * CHUNK
            await self.m.alloc(self.committed, grow)  # maps zero pages; touches none
            self.committed += grow
        self.used = end
        return start


async def stray_read(m: anymmap.SparseMapping, offset: int) -> anymmap.MappingFaultError:
    """Read 8 bytes at ``offset``, where nothing is committed: return the error it raises."""
    try:
        await m.read_at(offset, bytearray(8))
    except anymmap.MappingFaultError as exc:
        return exc
    raise AssertionError("a read of uncommitted memory succeeded")


async def arena_demo() -> None:
    async with await anymmap.SparseMapping.new(RESERVE) as m:
        arena = Arena(m)
        base = m.as_ptr()
        say(f"reserved {len(m) >> 30} GiB at {base:#x}, committed 0 bytes")

        blocks: list[tuple[int, int]] = []  # (offset, number of float64s)
        for i, count in enumerate([1000, 200_000, 50_000, 300_000], start=1):
            offset = await arena.allocate(count * 8)
            # The array lives only inside the borrow: it must be gone before the block
            # ends, else BorrowError (it would keep the view alive past the write lock).
            async with m.as_mut_slice(offset, count * 8) as view:
                array = np.frombuffer(view, dtype=np.float64)
                array[:] = np.arange(count) * i
                del array
            blocks.append((offset, count))
            assert m.as_ptr() == base  # growing never moves the base
            say(
                f"block {i}: {count} float64 at offset {offset:#x}; "
                f"committed {arena.committed >> 20} MiB; base still {m.as_ptr():#x}"
            )

        # Read every block back (a copy, outside any borrow) and check it.
        for i, (offset, count) in enumerate(blocks, start=1):
            back = np.empty(count, dtype=np.float64)
            await m.read_at(offset, back)
            assert np.array_equal(back, np.arange(count) * i), i
        say(f"all {len(blocks)} blocks read back intact")

        kinds = [p.kind for p in m.pieces()]
        assert set(kinds[:-1]) == {"private"}, kinds
        assert kinds[-1] == "hole", kinds
        assert sum(p.length for p in m.pieces() if p.kind == "private") == arena.committed
        say(f"pieces: {len(kinds) - 1} committed chunks, then one hole of the rest")

        # A stray read past what is committed: an exception, not a crash.
        for where in (arena.committed, 32 << 30):
            exc = await stray_read(m, where)
            assert exc.offset == where
            say(f"stray read at {where:#x} -> {type(exc).__name__}: {exc.cause}")

        # An array that escapes its borrow is caught when the block ends.
        try:
            async with m.as_mut_slice(0, 64) as view:
                leaked = np.frombuffer(view, dtype=np.uint8)
        except anymmap.BorrowError:
            say("an array kept past its borrow -> BorrowError (the memory stays mapped)")
        else:
            raise AssertionError("an escaped array went unnoticed")
        del leaked  # once it is gone, the map can close

    assert m.closed


def main() -> None:
    for backend in ("asyncio", "trio"):
        print(f"== {backend} ==")
        anyio.run(arena_demo, backend=backend)


if __name__ == "__main__":
    main()
