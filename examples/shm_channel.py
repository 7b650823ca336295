"""A message channel between two processes through an anymmap.MmapRegion on /dev/shm.

The host creates the region with ``FileCleanup.AUTO`` (the path is unlinked at once: nothing
is left behind, whatever happens); the guest, a second process, attaches through the
descriptor it inherits.  The host writes a request into the region and rings the guest over
a pipe, which only says "look now"; the guest writes its reply into the region and rings
back.  Layout: the request header at 0, the reply header at 64, reply payloads from 128,
requests from the second page.  A header: magic, generation (bumped at each growth),
sequence number, payload offset and length, CRC32 of the payload.  Neither side trusts
memory the other controls: every header is checked (magic, bounds, CRC) before a byte of
its payload is used, and garbage becomes a ValueError that says what is wrong, never a
crash or a read out of bounds.  Midway the messages outgrow the region: the host grows it
(its base does not move) and bumps the generation; the guest follows with
``check_and_remap()``.

Run: python examples/shm_channel.py   (``--guest FD BACKEND`` is the guest)
"""

from __future__ import annotations

import os
import random
import struct
import sys
import tempfile
import zlib
from dataclasses import dataclass, replace

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

import anymmap

MAGIC = b"SHMC"
HEADER = struct.Struct("<4sIQQII")  # magic, generation, seq, payload offset, length, CRC32
REQUEST_AT, REPLY_AT = 0, 64  # where the two headers are
REPLY_DATA = 128  # reply payloads, up to the first page
REQUEST_DATA = anymmap.PAGE_SIZE  # request payloads, up to the end of the region
INITIAL_SIZE, GROWN_SIZE = 64 << 10, 1 << 20
MAX_MESSAGE = 1 << 20
SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None  # memory only, where there is one


@dataclass(frozen=True)
class Header:
    generation: int
    seq: int
    offset: int
    length: int
    crc: int


def encode_header(h: Header) -> bytes:
    return HEADER.pack(MAGIC, h.generation, h.seq, h.offset, h.length, h.crc)


def decode_header(data: bytes) -> Header:
    """Decode a header read from shared memory; raise ValueError if it is not one."""
    if len(data) != HEADER.size:
        raise ValueError(f"a header is {HEADER.size} bytes, not {len(data)}")
    magic, generation, seq, offset, length, crc = HEADER.unpack(data)
    if magic != MAGIC:
        raise ValueError(f"bad magic {magic!r} (expected {MAGIC!r})")
    if offset < REPLY_DATA:
        raise ValueError(f"payload offset {offset} overlaps the headers")
    if length > MAX_MESSAGE:
        raise ValueError(f"payload length {length} is over the limit of {MAX_MESSAGE}")
    return Header(generation, seq, offset, length, crc)


def check_fits(h: Header, region_size: int) -> None:
    """Raise ValueError unless the payload lies inside a region of ``region_size`` bytes."""
    if h.offset + h.length > region_size:
        raise ValueError(
            f"payload [{h.offset}, {h.offset + h.length}) ends past the region ({region_size} "
            "bytes)"
        )


def check_payload(h: Header, payload: bytes) -> None:
    """Raise ValueError unless ``payload`` has the CRC32 the header says."""
    if (crc := zlib.crc32(payload)) != h.crc:
        raise ValueError(f"payload CRC32 {crc:#010x}, but the header says {h.crc:#010x}")


def header_for(payload: bytes, generation: int, seq: int, offset: int) -> Header:
    return Header(generation, seq, offset, len(payload), zlib.crc32(payload))


async def send(region: anymmap.MmapRegion, at: int, h: Header, payload: bytes) -> None:
    await region.update_region(h.offset, payload)  # the payload first, the header last
    await region.update_region(at, encode_header(h))


async def read_payload(region: anymmap.MmapRegion, h: Header) -> bytes:
    check_fits(h, len(region))  # before reading: never out of bounds
    payload = await region.read(h.offset, h.length)
    check_payload(h, payload)
    return payload


# -- the guest: a second process, which trusts nothing it reads -----------------------------


async def guest(fd: int) -> None:
    """Answer each ring of the doorbell (a line on stdin) with ``replied``, once a reply is
    in the region, or with ``rejected: why`` if the request is garbage."""
    async with await anymmap.MmapRegion.attach_fd(fd) as region:
        os.close(fd)  # the region keeps its own descriptor
        seq = generation = 0
        async for _ in anyio.wrap_file(sys.stdin):
            try:
                h = decode_header(await region.read(REQUEST_AT, HEADER.size))
                if h.seq != seq + 1:
                    raise ValueError(f"sequence number {h.seq}, expected {seq + 1}")
                if h.generation != generation:
                    if h.generation < generation or not await region.check_and_remap():
                        raise ValueError(f"generation {h.generation}, but the region did not grow")
                    generation = h.generation
                payload = await read_payload(region, h)
            except (ValueError, anymmap.MappingFaultError) as exc:  # the latter: a truncated file
                print(f"rejected: {exc}", flush=True)
                continue
            seq = h.seq
            reply = f"#{seq}: {len(payload)} bytes, region {len(region)} bytes".encode()
            await send(region, REPLY_AT, header_for(reply, generation, seq, REPLY_DATA), reply)
            print("replied", flush=True)


# -- the host ---------------------------------------------------------------------------------


def say(text: str) -> None:
    print(f"  {text}")


class Channel:
    """The host's end: the region, the guest process, and the last sequence number."""

    def __init__(self, region: anymmap.MmapRegion, process: anyio.abc.Process) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self.region, self.stdin = region, process.stdin
        self.stdout = BufferedByteReceiveStream(process.stdout)
        self.seq = self.generation = 0

    async def ring(self) -> str:
        """Tell the guest to look; return its answer (``replied`` or ``rejected: ...``)."""
        await self.stdin.send(b"look\n")
        return (await self.stdout.receive_until(b"\n", 4096)).decode()

    async def call(self, payload: bytes) -> str:
        """Send ``payload``; return the guest's reply, read and checked from the region."""
        if REQUEST_DATA + len(payload) > len(self.region):
            base = self.region.as_ptr()
            await self.region.resize(GROWN_SIZE)
            self.generation += 1
            assert self.region.as_ptr() == base
            say(f"grew the region to {len(self.region)} bytes; base still {base:#x}")
        self.seq += 1
        h = header_for(payload, self.generation, self.seq, REQUEST_DATA)
        await send(self.region, REQUEST_AT, h, payload)
        answer = await self.ring()  # (not inside an assert: python -O would skip the wait)
        if answer != "replied":
            raise RuntimeError(f"the guest did not reply: {answer}")
        reply = decode_header(await self.region.read(REPLY_AT, HEADER.size))  # the guest is
        assert reply.seq == self.seq, reply  # not trusted either
        return (await read_payload(self.region, reply)).decode()

    async def garbage(self, what: str, expected: str) -> None:
        """Ring the guest over garbage the caller wrote: it must reject it, and say why."""
        answer = await self.ring()
        assert answer.startswith("rejected:"), answer
        assert expected in answer, answer
        say(f"{what} -> {answer}")


async def host(backend: str, directory: str) -> None:
    path = os.path.join(directory, "channel")
    region = await anymmap.MmapRegion.create(path, INITIAL_SIZE, anymmap.FileCleanup.AUTO)
    async with region:
        assert not await anyio.Path(path).exists()  # AUTO: unlinked at once
        fd = region.fileno()
        command = [sys.executable, __file__, "--guest", str(fd), backend]
        async with await anyio.open_process(command, pass_fds=(fd,), stderr=None) as process:
            channel = Channel(region, process)
            for n in (12, 700, 5_000, 40_000, 150_000, 600_000):  # the last two: growth
                reply = await channel.call(random.Random(n).randbytes(n))
                assert reply == f"#{channel.seq}: {n} bytes, region {len(region)} bytes"
                say(f"sent {n} bytes -> guest replies {reply!r}")

            # Garbage where the guest expects a request: rejected, and the guest lives on.
            rand = random.Random(0)
            await region.update_region(REQUEST_AT, rand.randbytes(HEADER.size))
            await channel.garbage("random bytes", "bad magic")
            h = Header(channel.generation, channel.seq + 1, REQUEST_DATA, len(region), 0)
            await region.update_region(REQUEST_AT, encode_header(h))
            await channel.garbage("a length past the end", "past the region")
            payload = rand.randbytes(100)
            h = header_for(payload, h.generation, h.seq, REQUEST_DATA)
            await send(region, REQUEST_AT, h, payload)
            await region.update_region(REQUEST_DATA + 50, bytes([payload[50] ^ 0xFF]))
            await channel.garbage("a payload changed after its CRC", "CRC32")
            await region.update_region(REQUEST_AT, encode_header(replace(h, seq=1)))
            await channel.garbage("a replayed sequence number", "sequence number 1")

            reply = await channel.call(b"still there?")
            say(f"after the garbage -> guest replies {reply!r}")
            await channel.stdin.aclose()  # the guest ends at the end of its input
            status = await process.wait()
            if status:
                raise RuntimeError(f"the guest exited with status {status}")


def main() -> None:
    if sys.argv[1:2] == ["--guest"]:
        anyio.run(guest, int(sys.argv[2]), backend=sys.argv[3])
        return
    for backend in ("asyncio", "trio"):
        print(f"== {backend} ==")
        with tempfile.TemporaryDirectory(dir=SHM) as directory:
            anyio.run(host, backend, directory, backend=backend)
            assert os.listdir(directory) == []  # nothing left behind


if __name__ == "__main__":
    main()
