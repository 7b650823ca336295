"""Worker threads are never abandoned, not even when every task is cancelled.

Each scenario runs in a child process, so that a crash (SIGSEGV from a worker copying into
memory that was unmapped under it) fails the test instead of killing the test run.
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
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_no_worker_outlives_its_memory(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCENARIOS[name])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert result.stdout.strip().endswith("survived")
