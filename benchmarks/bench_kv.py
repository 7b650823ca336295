"""examples/kv_server.py: durable SETs per second with group commit against one fdatasync
per record.

Run: python benchmarks/bench_kv.py
(the servers' logs go to a temporary directory next to the checkout, on the real disk; set
ANYMMAP_BENCH_DIR to put them elsewhere, but not on a tmpfs such as /dev/shm, where a
flush costs nothing)

The server runs in a subprocess (``kv_server.py --port 0 --data DIR``, asyncio) with each
storage: ``anymmap`` (the default: records appended to a log mapped with
``anymmap.MmapRaw``, each SET acknowledged once ``await log.flush_range(...)`` returned,
so that concurrent SETs share their ``msync`` calls) and ``aiofiles`` (the naive way: the
same records written with aiofiles, then ``os.fdatasync`` in a worker thread per record).
Clients in this process (asyncio, one connection each) send ``SET <unique key> <100-byte
value>`` one after the other, each waiting for its ``OK``, for a fixed time; the first
half second is warm-up and not counted.  Reported per storage and number of clients:
acknowledged (durable) SETs per second and the median and 99th percentile of a SET's
round trip, each the best of interleaved rounds (a fresh server and log per round), and
the throughput as a multiple of the aiofiles server's.  The clients share the machine's
two cores with the server, equally for both storages.  After each round a GET of every
client's last key checks that the SETs arrived.

What a durable write costs depends on the disk (a VM disk backed by the host's cache is
far faster than a real one); the ratio is the point.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, __file__.rpartition("/")[0])

from _harness import Table, fmt_time, fs_type, scratch_parent

SERVER = Path(__file__).resolve().parent.parent / "examples" / "kv_server.py"
STORAGES = ("anymmap", "aiofiles")
CLIENTS = (64, 1)
VALUE = b"v" * 100
SECONDS = 3.0
WARMUP = 0.5
ROUNDS = 3
TIMEOUT = 30.0


@dataclass
class Result:
    sets_per_second: float
    p50: float
    p99: float


async def start_server(data: Path, storage: str) -> tuple[asyncio.subprocess.Process, int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SERVER),
        "--port",
        "0",
        "--data",
        str(data),
        "--storage",
        storage,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), TIMEOUT)).decode()
        if not line:
            raise RuntimeError(f"the {storage} server exited with status {await process.wait()}")
        if line.startswith("listening on "):
            return process, int(line.rpartition(":")[2])


async def stop_server(process: asyncio.subprocess.Process) -> None:
    process.terminate()
    code = await asyncio.wait_for(process.wait(), TIMEOUT)
    if code != 0:
        raise RuntimeError(f"the server exited with status {code}")


async def client(port: int, name: str, start: float, stop: float, latencies: list[float]) -> bytes:
    """SET unique keys one after the other until ``stop``; record the round trips that
    began after ``start``; return the last key set."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = b""
    try:
        for i in range(1 << 62):
            sent = time.perf_counter()
            if sent >= stop:
                break
            key = f"{name}-{i}".encode()
            writer.write(b"SET " + key + b" " + VALUE + b"\n")
            reply = await asyncio.wait_for(reader.readline(), TIMEOUT)
            if reply != b"OK\n":
                raise RuntimeError(f"SET {key!r}: {reply!r}")
            if sent >= start:
                latencies.append(time.perf_counter() - sent)
        # Every SET arrived (GET waits until what it returns is durable).
        writer.write(b"GET " + key + b"\n")
        if await asyncio.wait_for(reader.readline(), TIMEOUT) != b"VALUE " + VALUE + b"\n":
            raise RuntimeError(f"GET {key!r} did not return its value")
    finally:
        writer.close()
        await writer.wait_closed()
    return key


async def run_round(scratch: Path, storage: str, clients: int, index: int) -> Result:
    data = scratch / f"{storage}-{clients}-{index}"
    process, port = await start_server(data, storage)
    try:
        latencies: list[float] = []
        start = time.perf_counter() + WARMUP
        stop = start + SECONDS
        await asyncio.gather(
            *(client(port, f"c{n}", start, stop, latencies) for n in range(clients))
        )
    finally:
        await stop_server(process)
    latencies.sort()
    return Result(
        len(latencies) / SECONDS,
        statistics.median(latencies),
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    )


async def main(scratch: Path) -> list[str]:
    best: dict[tuple[str, int], Result] = {}
    for index in range(ROUNDS):
        for clients in CLIENTS:
            for storage in STORAGES:
                result = await run_round(scratch, storage, clients, index)
                old = best.get((storage, clients))
                if old is None or result.sets_per_second > old.sets_per_second:
                    best[storage, clients] = result
    table = Table(
        f"Durable SETs of {len(VALUE)}-byte values, each client waiting for its OK "
        f"(best of {ROUNDS} rounds of {SECONDS:.0f} s)",
        columns=("storage", "clients", "SETs/s", "p50 latency", "p99 latency", "throughput"),
    )
    for clients in CLIENTS:
        base = best["aiofiles", clients].sets_per_second
        for storage in STORAGES:
            r = best[storage, clients]
            table.add(
                storage,
                str(clients),
                f"{r.sets_per_second:,.0f}",
                fmt_time(r.p50),
                fmt_time(r.p99),
                f"{r.sets_per_second / base:.2f}x",
            )
    ratio = (
        best["anymmap", CLIENTS[0]].sets_per_second / best["aiofiles", CLIENTS[0]].sets_per_second
    )
    summary = (
        f"anymmap (group commit) vs aiofiles + fdatasync per record, {CLIENTS[0]} clients: "
        f"{ratio:.1f}x the durable SETs per second\n"
    )
    return [table.render(), summary]


def run() -> list[str]:
    parent = scratch_parent()
    with tempfile.TemporaryDirectory(prefix="anymmap-bench-", dir=parent) as scratch:
        out = [f"(server logs in {parent}, a {fs_type(parent)} file system)\n"]
        out += asyncio.run(main(Path(scratch)))
    return out


if __name__ == "__main__":
    print("# Key-value server benchmark (examples/kv_server.py, asyncio)\n")
    for section in run():
        print(section)
