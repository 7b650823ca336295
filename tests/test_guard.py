"""The loop guard itself (tests/_guard.py) must catch what it claims to: a guard that
cannot fail would let every async test pass blind.

A blocking call is planted in code compiled under a file name inside ``anymmap/_async``,
so the guard sees it as a call by the async API.
"""

from __future__ import annotations

import os
import time
from typing import Any

import anyio
import pytest

import anymmap._async
from anymmap._sys import os_impl

from . import _guard
from ._guard import StallInstrument, loop_guard

PLANTED = os.path.join(os.path.dirname(anymmap._async.__file__), "_planted.py")


def planted(source: str) -> Any:
    """A function ``call(*args)`` whose frame belongs to the async API."""
    namespace: dict[str, Any] = {}
    exec(compile(source, PLANTED, "exec"), namespace)  # noqa: S102 - our own source text
    return namespace["call"]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_system_call_by_the_async_api_on_the_loop_is_caught(backend: str, tmp_path: Any) -> None:
    call = planted("def call(sys, fd):\n    sys.fdatasync(fd)\n")
    with open(tmp_path / "f", "wb") as file, loop_guard(backend) as found:

        async def main() -> None:
            call(os_impl, file.fileno())

        anyio.run(main, backend=backend)
    assert found == ["os_impl.fdatasync on the event loop thread"]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_same_call_in_a_worker_thread_or_outside_the_async_api_passes(
    backend: str, tmp_path: Any
) -> None:
    call = planted("def call(sys, fd):\n    sys.fdatasync(fd)\n")
    with open(tmp_path / "f", "wb") as file, loop_guard(backend) as found:

        async def main() -> None:
            await anyio.to_thread.run_sync(call, os_impl, file.fileno())
            os_impl.fdatasync(file.fileno())  # a test's own call, not the API's

        anyio.run(main, backend=backend)
    assert found == []


def test_a_standard_library_block_by_the_async_api_is_caught_on_asyncio() -> None:
    from blockbuster import BlockingError

    call = planted("import time\ndef call():\n    time.sleep(0.001)\n")
    with loop_guard("asyncio"):

        async def main() -> None:
            call()

        with pytest.raises(BlockingError):
            anyio.run(main, backend="asyncio")
        call()  # outside the loop: allowed


def test_a_long_trio_step_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_guard, "STALL", 0.01)
    with loop_guard("trio") as found:

        async def main() -> None:
            time.sleep(0.05)  # noqa: ASYNC251 - the stall the instrument must see

        anyio.run(main, backend="trio", backend_options={"instruments": [StallInstrument()]})
    assert len(found) == 1
    assert "a trio task step ran" in found[0]
