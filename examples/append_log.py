"""A durable append-only log on anymmap.MmapRaw, the way a storage engine keeps its WAL.

Format: a 16-byte header (8 magic bytes, a u32 format version, 4 spare bytes), then records
one after the other, each ``length`` (u32 LE) + ``crc`` (u32 LE) + ``length`` payload bytes.
The CRC32 covers the length field as well as the payload, so that an all-zero header (the
zeros past the last record) never checks out, not even as an empty record.

Durability: ``append_batch`` returns only once ``flush_range`` (``msync(MS_SYNC)``) has
made the batch durable.  A crash before that can leave any part of the batch on disk, in any
order (pages are written back independently).  Instead of a committed-length field in the
header, which would cost a second flush per batch, recovery reads records from the start
and stops at the first whose CRC fails.  That is sound only if nothing that checks out can
lie *behind* a torn record, so the log keeps an invariant: past the last durable record the
file holds only zeros.  Growing keeps it (``resize`` allocates zeroed blocks); recovery
restores it by wiping the torn tail before anything new is appended.  Without the wipe, a
shorter batch written over a torn one could be followed by whole records of the torn
batch: ghosts that check out.

Run: python examples/append_log.py   (``--child PATH SEED BACKEND`` is the crashing child)
"""

from __future__ import annotations

import os
import random
import struct
import sys
import tempfile
import zlib
from collections.abc import Sequence
from contextlib import aclosing

import anyio
import anyio.to_thread

import anymmap

MAGIC = b"AMMAPLOG"
VERSION = 1
HEADER = struct.Struct("<8sI4x")  # magic, format version, spare
RECORD = struct.Struct("<II")  # payload length, CRC32 of length field + payload
LENGTH = struct.Struct("<I")
INITIAL_SIZE = 64 << 10
WIPE_CHUNK = 1 << 20


def checksum(payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(LENGTH.pack(len(payload))))


def encode(payload: bytes) -> bytes:
    return RECORD.pack(len(payload), checksum(payload)) + payload


async def read_record(m: anymmap.MmapRaw, offset: int) -> bytes | None:
    """The payload of the record at ``offset``, or None if no valid record starts there."""
    if offset + RECORD.size > len(m):
        return None
    length, crc = RECORD.unpack(await m.read(offset, RECORD.size))
    if offset + RECORD.size + length > len(m):
        return None  # a torn length that points past the end of the file
    payload = await m.read(offset + RECORD.size, length)
    return payload if checksum(payload) == crc else None


def fsync_parent(path: str) -> None:
    """Make a new file's directory entry durable: the file is not, until its directory is."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Log:
    """An append-only log in one file.  Create it with :meth:`create` or :meth:`open`."""

    def __init__(self, m: anymmap.MmapRaw, end: int, records: int, wiped: int) -> None:
        self.map = m
        self.end = end  # offset just past the last durable record
        self.records = records  # records in the log
        self.wiped = wiped  # bytes of torn tail that open() found and wiped
        self.resizes = 0
        self._failed = False

    @classmethod
    async def create(cls, path: str) -> Log:
        async with await anyio.open_file(path, "xb") as f:
            await f.write(HEADER.pack(MAGIC, VERSION))
        m = await anymmap.MmapRaw.map_raw(path)
        try:
            await m.resize(INITIAL_SIZE)
            await m.flush()  # the header and the new file size
        except BaseException:
            await m.aclose()
            raise
        await anyio.to_thread.run_sync(fsync_parent, path)
        return cls(m, HEADER.size, 0, 0)

    @classmethod
    async def open(cls, path: str) -> Log:
        """Map the log, find its last valid record and wipe the torn tail behind it."""
        m = await anymmap.MmapRaw.map_raw(path)
        try:
            magic, version = HEADER.unpack(await m.read(0, HEADER.size))
            if magic != MAGIC or version != VERSION:
                raise ValueError(f"{path}: not a version {VERSION} log")
            end, records = HEADER.size, 0
            while (payload := await read_record(m, end)) is not None:
                end += RECORD.size + len(payload)
                records += 1
            wiped = await cls._wipe(m, end)
        except BaseException:
            await m.aclose()
            raise
        return cls(m, end, records, wiped)

    @staticmethod
    async def _wipe(m: anymmap.MmapRaw, start: int) -> int:
        """Zero what is not zero in ``[start, len(m))``, durably; return the bytes of garbage.
        (This reads the whole unused tail; a real engine would bound it, e.g. by the largest
        batch it ever writes.)"""
        garbage_end = start
        for offset in range(start, len(m), WIPE_CHUNK):
            chunk = await m.read(offset, min(WIPE_CHUNK, len(m) - offset))
            if chunk.count(0) != len(chunk):
                await m.update_region(offset, bytes(len(chunk)))
                garbage_end = offset + len(chunk.rstrip(b"\0"))
        if garbage_end > start:
            await m.flush_range(start, garbage_end - start)
        return garbage_end - start

    async def append_batch(self, payloads: Sequence[bytes]) -> None:
        """Append the records; they are durable when this returns."""
        if self._failed:
            raise RuntimeError("an earlier append failed; reopen the log to recover it")
        data = b"".join(map(encode, payloads))
        new_end = self.end + len(data)
        try:
            if new_end > len(self.map):
                size = len(self.map)
                while size < new_end:
                    size *= 2
                await self.map.resize(size)  # the new blocks read as zeros
                self.resizes += 1
            await self.map.update_region(self.end, data)
            # msync(MS_SYNC) has fdatasync's guarantee: it also makes a new file size durable
            await self.map.flush_range(self.end, len(data))
        except BaseException:
            # Part of the batch may be in the file past self.end, breaking the invariant
            # (see the module docstring) until open() wipes it again.
            self._failed = True
            raise
        self.end = new_end
        self.records += len(payloads)

    async def replay(self) -> list[bytes]:
        """Every payload in the log, in order."""
        payloads: list[bytes] = []
        offset = HEADER.size
        while offset < self.end:
            payload = await read_record(self.map, offset)
            if payload is None:
                raise RuntimeError(f"the record at {offset} changed under the log")
            payloads.append(payload)
            offset += RECORD.size + len(payload)
        return payloads

    async def aclose(self) -> None:
        await self.map.aclose()  # no flush needed: every appended batch is durable


# -- the demonstration ----------------------------------------------------------------------

SEED, CHILD_SEED = 2024, 7
BATCHES, CHILD_BATCHES = 200, 100
TORN_PAYLOAD = b"T" * 200
SCRIPT = os.path.abspath(__file__)


def make_batches(seed: int, count: int) -> list[list[bytes]]:
    rng = random.Random(seed)
    return [
        [rng.randbytes(rng.randint(0, 300)) for _ in range(rng.randint(1, 50))]
        for _ in range(count)
    ]


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


async def child(path: str, seed: int) -> None:
    """Append batches, report each one once it is durable, then die in the middle of one."""
    log = await Log.open(path)
    for i, batch in enumerate(make_batches(seed, CHILD_BATCHES), 1):
        await log.append_batch(batch)
        print(f"acked {i} {log.resizes}", flush=True)
    # Leave the next batch the way a power cut can: its later records reached the file,
    # its first one only half.  (A crash alone loses nothing written to the map, as the
    # page cache keeps it, so the child writes the torn state itself.)
    data = b"".join(map(encode, [TORN_PAYLOAD, *make_batches(seed + 1, 1)[0]]))
    check(log.end + len(data) <= len(log.map), "the torn batch does not fit")
    first = RECORD.size + len(TORN_PAYLOAD)  # the size of the torn record
    await log.map.update_region(log.end, data[: first // 2])  # no flush
    await log.map.update_region(log.end + first, data[first:])
    os._exit(1)  # the crash: no close, no flush, no cleanup


async def demo(backend: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "wal.log")
        expected = [p for batch in make_batches(SEED, BATCHES) for p in batch]
        async with aclosing(await Log.create(path)) as log:
            for batch in make_batches(SEED, BATCHES):
                await log.append_batch(batch)
            resizes, size = log.resizes, len(log.map)
        check(resizes >= 3, f"the file should have grown several times, not {resizes}")
        print(f"  wrote {BATCHES} batches, {len(expected)} records: {resizes} resizes to {size} B")
        async with aclosing(await Log.open(path)) as log:
            check(await log.replay() == expected, "records differ after a clean reopen")
            check(log.wiped == 0, f"a clean reopen wiped {log.wiped} bytes")
        print(f"  clean reopen: {len(expected)} records recovered, no torn tail")

        command = [sys.executable, SCRIPT, "--child", path]
        result = await anyio.run_process([*command, str(CHILD_SEED), backend], check=False)
        crashed = result.returncode == 1 and not result.stderr  # an exception exits 1 too
        check(crashed, f"the child exited {result.returncode}: {result.stderr.decode()}")
        acked, child_resizes = map(int, result.stdout.decode().split()[-2:])  # last "acked"
        child_batches = make_batches(CHILD_SEED, CHILD_BATCHES)[:acked]
        expected += [p for batch in child_batches for p in batch]
        print(f"  child: {acked} batches acknowledged, {child_resizes} more resize(s), crashed")

        async with aclosing(await Log.open(path)) as log:
            check(log.records == len(expected), f"{log.records} != {len(expected)} records")
            check(await log.replay() == expected, "acknowledged records were not recovered")
            check(log.wiped > 0, "the child's half-written record was not found")
            print(f"  reopened: {log.records} records recovered byte-for-byte ({len(log.map)} B)")
            print(f"  the torn tail, {log.wiped} B, was ignored and wiped")
            # As long as the torn record: without the wipe, the whole records behind it
            # would now follow this batch and check out.
            extra = [b"R" * len(TORN_PAYLOAD)]
            await log.append_batch(extra)
            expected += extra
        async with aclosing(await Log.open(path)) as log:
            check(await log.replay() == expected, "appending after recovery went wrong")
            check(log.wiped == 0, "a torn tail came back after recovery")
        print(f"  appended after recovery and reopened: {len(expected)} records, clean tail")


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        path, seed, backend = sys.argv[2:5]
        anyio.run(child, path, int(seed), backend=backend)
        return
    for backend in ("asyncio", "trio"):
        print(f"== {backend} ==")
        anyio.run(demo, backend, backend=backend)


if __name__ == "__main__":
    main()
