"""Run every benchmark, each in a fresh interpreter, and print their tables in one report.

Run: python benchmarks/run_all.py   (after: pip install -e '.[bench]')
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = [
    "bench_rwlock.py",
    "bench_copy.py",
    "bench_file.py",
    "bench_commit.py",
    "bench_sparse.py",
    "bench_region.py",
    "bench_kv.py",
]


def main() -> None:
    print(
        f"# anymmap benchmarks — {time.strftime('%Y-%m-%d')}, Python {platform.python_version()}"
        f", {platform.system()} {platform.release()}, {platform.machine()}\n"
    )
    for script in SCRIPTS:
        result = subprocess.run([sys.executable, str(HERE / script)], check=False)
        if result.returncode:
            sys.exit(f"{script} failed with exit status {result.returncode}")


if __name__ == "__main__":
    main()
