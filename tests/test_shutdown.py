"""Scenarios that used to crash the process, each run in a child process so that a crash
fails the test instead of killing the test run.

Worker threads are never abandoned, not even when every task is cancelled (else a worker
copies into memory unmapped under it).  A borrow base that cannot be released (a slice
escaped) never ends up in cyclic garbage (else CPython's memoryview tp_clear crashes).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCENARIOS = {
    # asyncio.run() cancels every remaining task when main() fails.
    "asyncio.run exits while a copy runs": """
        import asyncio, anymmap
        async def background(m, buf):
            async with m:
                await m.update_region(0, buf)
        async def main():
            m = await anymmap.AnonymousMmap.new(1 << 30)
            asyncio.ensure_future(background(m, bytearray(1 << 30)))
            await asyncio.sleep(0.2)
            raise RuntimeError("main failed")
        try:
            asyncio.run(main())
        except RuntimeError:
            print("survived")
    """,
    # The usual shutdown idiom cancels anymmap's own helper tasks too.
    "every task cancelled": """
        import asyncio, anymmap
        async def writer(m, buf):
            async with m:
                while True:
                    await m.update_region(0, buf)
        async def main():
            m = await anymmap.AnonymousMmap.new(1 << 30)
            t = asyncio.ensure_future(writer(m, bytearray(1 << 30)))
            await asyncio.sleep(0.3)
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            try:
                await t
            except asyncio.CancelledError:
                pass
            assert m.closed
            await asyncio.sleep(0.5)
            print("survived")
        asyncio.run(main())
    """,
    "escaped slices in reference cycles, then gc": """
        import asyncio, gc, anymmap
        async def main():
            m = await anymmap.AnonymousMmap.new(4096)
            async def handler():
                async with m.as_slice(0, 16) as view:
                    magic = view[:4]
                    cycle = [magic]
                    cycle.append(cycle)
            for _ in range(3):
                try:
                    await handler()
                except anymmap.BorrowError:
                    pass
                gc.collect()
            await m.aclose()  # the escaped slices are garbage by now
            assert m.closed
            print("survived")
        asyncio.run(main())
    """,
    "a borrow cancelled while its slice escapes, then gc": """
        import asyncio, gc, anymmap
        async def main():
            m = await anymmap.AnonymousMmap.new(4096)
            async def handler():
                async with m.as_slice(0, 16) as view:
                    magic = view[:4]
                    await asyncio.sleep(10)
            t = asyncio.ensure_future(handler())
            await asyncio.sleep(0.01)
            t.cancel()
            try:
                await t
            except asyncio.CancelledError:  # the cancellation wins over the escape
                pass
            del t  # (on Python 3.10 the task keeps the traceback, and the slice with it)
            for _ in range(3):
                gc.collect()
                await asyncio.sleep(0)
            await m.aclose()
            print("survived")
        asyncio.run(main())
    """,
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_process_survives(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCENARIOS[name])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert result.stdout.strip().endswith("survived")
