"""The examples check themselves; running them keeps them honest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize("flags", [[], ["-O"]], ids=["", "-O"])
@pytest.mark.parametrize(
    "script", ["tour.py", "append_log.py", "sparse_arena.py", "shm_channel.py"]
)
def test_example_runs(script: str, flags: list[str]) -> None:
    """Also under ``python -O`` (adversary round 51: shm_channel.py waited for its guest
    inside an ``assert``, which -O strips, and read the reply before it was written)."""
    result = subprocess.run(
        [sys.executable, *flags, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "== trio ==" in result.stdout


def test_readme_examples_run(tmp_path: Path) -> None:
    """The README's first two Python blocks, run as written against a real data.bin."""
    readme = (EXAMPLES.parent / "README.md").read_text()
    blocks = readme.split("```python\n")[1:3]
    code = "\n".join(block.split("```")[0] for block in blocks)
    (tmp_path / "data.bin").write_bytes(bytes(4096))
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("b'record'") == 2  # printed on asyncio and on trio
