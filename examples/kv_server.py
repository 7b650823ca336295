"""A small durable key-value server: every SET and DEL is on disk before it is acknowledged.

Protocol: one command per line over TCP (UTF-8, ending in ``\\n`` or ``\\r\\n``), one reply
line each, in order::

    SET <key> <value>    OK                      the value is the rest of the line
    GET <key>            VALUE <value> | NOT_FOUND
    DEL <key>            OK | NOT_FOUND
    anything else        ERROR <reason>          and the connection stays usable

Verbs are case-insensitive.  A key is 1 to 256 bytes, printable and without spaces; a
value is at most 64 KiB, printable (``str.isprintable``), spaces allowed, possibly empty.
A line longer than :data:`MAX_LINE` gets ``ERROR`` and the connection is closed (there is
no telling where the next command starts).

Storage: an append-only log, ``DATA/kv.log``, mapped with ``anymmap.MmapRaw``: a 16-byte
file header (magic, version), then one record per SET or DEL: a 16-byte header (magic,
record length, key length, op, a zero byte, CRC32 of everything else in the record), the
key, the value.  The index (key -> value) lives in memory and is rebuilt at start by
reading the log.

Durability.  A SET is acknowledged once ``flush_range`` (``msync(MS_SYNC)``) returned for
the whole log *up to the end of its record*, not only for the record itself: recovery
stops at the first invalid record, so an acknowledged record behind a torn one would be
lost.  Appends are serialized (a lock), so every byte before a record is in the map by
the time its flush starts.  Group commit makes the many flushes of concurrent clients
share their ``msync`` calls, and the already durable part costs nothing: only the range
from the last known durable offset is asked for.  A GET (or a DEL that finds nothing)
answers only once what it saw is durable, so no client ever sees a value that a crash
could take back.

One server at a time uses a data directory: it holds an exclusive ``flock`` on the
directory while it runs, and a second one exits with a message before reading the log.
Running out of descriptors (more clients than the open-file limit) pauses accepting until
one is free; the new connections wait in the listen backlog meanwhile.

Recovery reads the records from the start and stops at the first whose header or CRC is
wrong: the torn last record of a crash, or the zeros past the end.  The file is then cut
there (``resize`` down to that offset, then back up: the old tail becomes fresh zeroed
blocks) and flushed before the server listens.  That keeps an invariant: past the last
valid record there is only garbage of one crash, never a record that could check out
behind a new one after a later crash.  The log grows by doubling, under the append lock.

``--storage aiofiles`` runs the same server over the same file format, written the naive
way: ``aiofiles`` write + flush, then ``os.fdatasync`` in a worker thread, per record
(benchmarks/bench_kv.py compares the two).  It needs asyncio.

Run: python examples/kv_server.py --data DIR [--port 0] [--backend asyncio|uvloop|trio]
     [--storage anymmap|aiofiles] [--host 127.0.0.1 [--allow-remote]]
then, e.g.: printf 'SET a hello world\\nGET a\\n' | nc -q1 127.0.0.1 PORT
"""

from __future__ import annotations

import argparse
import enum
import errno
import fcntl
import importlib.util
import ipaddress
import os
import re
import signal
import struct
import sys
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.abc
import anyio.to_thread
from anyio.abc import SocketAttribute
from anyio.streams.buffered import BufferedByteReceiveStream

import anymmap

MAX_KEY = 256
MAX_VALUE = 64 << 10
#: The longest line read: a SET with the longest key and value, and a ``\r``.
MAX_LINE = len(b"SET  \r") + MAX_KEY + MAX_VALUE
LOG_NAME = "kv.log"
INITIAL_SIZE = 1 << 20
#: Recovery reads the log in pieces of this size.
READ_CHUNK = 1 << 20
PROGRESS_EVERY = 10_000

FILE_MAGIC = b"ANYMMKV\0"
FILE_VERSION = 1
FILE_HEADER = struct.Struct("<8sI4x")  # magic, format version, spare
FILE_HEADER_BYTES = FILE_HEADER.pack(FILE_MAGIC, FILE_VERSION)

RECORD_MAGIC = b"KVrc"
#: magic, record length (header included), key length, op, zero, CRC32 of the rest
RECORD_HEADER = struct.Struct("<4sIHBBI")
CHECKED_HEADER = RECORD_HEADER.size - 4  # the header bytes before the CRC, which it covers
MAX_RECORD = RECORD_HEADER.size + MAX_KEY + MAX_VALUE


class Op(enum.IntEnum):
    SET = 1
    DEL = 2


# -- keys and values --------------------------------------------------------------------------


def key_problem(key: bytes) -> str | None:
    """Why ``key`` is not a valid key, or None if it is."""
    if not key:
        return "empty key"
    if len(key) > MAX_KEY:
        return f"key longer than {MAX_KEY} bytes"
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return "key is not UTF-8"
    if not text.isprintable() or " " in text:
        return "a key must be printable, without spaces"
    return None


def value_problem(value: bytes) -> str | None:
    """Why ``value`` is not a valid value, or None if it is."""
    if len(value) > MAX_VALUE:
        return f"value longer than {MAX_VALUE} bytes"
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return "value is not UTF-8"
    if not text.isprintable():
        return "a value must be printable"
    return None


#: ASCII control characters: what no key or value holds, in any Python's Unicode version.
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def stored_problem(key: bytes, value: bytes) -> str | None:
    """Why a record's ``key`` and ``value`` could not have been written by this server, or
    None.  Recovery checks this, not :func:`key_problem` and :func:`value_problem`:
    ``str.isprintable`` follows the interpreter's Unicode version, and a value accepted by
    a newer Python must not stop recovery under an older one (adversary round 38: every
    record after it was cut for good)."""
    for what, data in (("key", key), ("value", value)):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return f"the {what} is not UTF-8"
        if _CONTROL.search(data):
            return f"the {what} holds a control character"
    if b" " in key:
        return "the key holds a space"
    return None


# -- records ------------------------------------------------------------------------------------


class RecordError(ValueError):
    """Bytes that are not a valid record: a torn write, garbage, or the zeros past the end.
    The only exception :func:`decode_record` raises."""


@dataclass(frozen=True)
class Record:
    op: Op
    key: bytes
    value: bytes = b""  # always empty for DEL


def _crc(checked_header: bytes | memoryview, body: bytes | memoryview) -> int:
    return zlib.crc32(body, zlib.crc32(checked_header))


def encode_record(record: Record) -> bytes:
    """The bytes of ``record`` in the log.

    :raises ValueError: for an invalid key or value, or a DEL with a value
    """
    problem = key_problem(record.key) or value_problem(record.value)
    if problem is None and record.op is Op.DEL and record.value:
        problem = "a DEL record has no value"
    if problem is not None:
        raise ValueError(problem)
    body = record.key + record.value
    length = RECORD_HEADER.size + len(body)
    checked = RECORD_HEADER.pack(RECORD_MAGIC, length, len(record.key), record.op, 0, 0)
    checked = checked[:CHECKED_HEADER]
    return checked + struct.pack("<I", _crc(checked, body)) + body


def decode_record(data: bytes | memoryview) -> tuple[Record, int]:
    """Decode the record at the start of ``data``; return it and its length in bytes.

    Reads only ``data[:length]``: a record that claims to end past ``data`` is an error,
    as are a bad magic, op or length, a CRC that does not match, and a key or value that
    no version of this server could have written (:func:`stored_problem`).

    :raises RecordError: if ``data`` does not start with a valid record
    """
    view = memoryview(data).cast("B")
    if len(view) < RECORD_HEADER.size:
        raise RecordError(f"{len(view)} bytes left, less than a record header")
    magic, length, key_length, op, zero, crc = RECORD_HEADER.unpack_from(view)
    if not any(view[: RECORD_HEADER.size]):
        raise RecordError("zeros: no more records")
    if magic != RECORD_MAGIC:
        raise RecordError(f"no record magic ({bytes(magic)!r})")
    if op not in (Op.SET, Op.DEL) or zero != 0:
        raise RecordError(f"bad op {op} or reserved byte {zero}")
    if not 1 <= key_length <= MAX_KEY:
        raise RecordError(f"bad key length {key_length}")
    value_length = length - RECORD_HEADER.size - key_length
    if not 0 <= value_length <= MAX_VALUE or (op == Op.DEL and value_length):
        raise RecordError(f"bad record length {length} (key length {key_length})")
    if length > len(view):
        raise RecordError(f"a record of {length} bytes, but only {len(view)} are left")
    body = view[RECORD_HEADER.size : length]
    if _crc(view[:CHECKED_HEADER], body) != crc:
        raise RecordError("CRC mismatch")
    key, value = bytes(body[:key_length]), bytes(body[key_length:])
    problem = stored_problem(key, value)
    if problem is not None:
        raise RecordError(f"the CRC checks out, but {problem}")
    return Record(Op(op), key, value), length


class LogFormatError(Exception):
    """The log file is not one this server wrote."""


def check_file_header(header: bytes, path: Path) -> None:
    """:raises LogFormatError: unless ``header`` is this format's file header"""
    if len(header) < FILE_HEADER.size:
        raise LogFormatError(f"{path}: shorter than a log header")
    magic, version = FILE_HEADER.unpack_from(header)
    if magic != FILE_MAGIC or version != FILE_VERSION:
        raise LogFormatError(f"{path}: not a version {FILE_VERSION} kv_server log")


# -- recovery ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Entry:
    """The index's entry for a key: its value (None for a DEL not yet durable) and the log
    offset just past the record that set it (what must be durable before it is shown)."""

    value: bytes | None
    end: int


@dataclass
class Recovery:
    """What reading the log found."""

    index: dict[bytes, Entry]
    end: int  # just past the last valid record
    records: int
    size: int  # of the file
    stop: str  # why the scan stopped at ``end``
    seconds: float = 0.0


ReadAt = Callable[[int, int], Awaitable[bytes]]


def print_progress(records: int, offset: int) -> None:
    print(f"recovery: {records:,} records ({offset:,} bytes)", flush=True)


async def recover(read_at: ReadAt, size: int) -> Recovery:
    """Rebuild the index from the log of ``size`` bytes, whose bytes ``read_at(offset, n)``
    returns; stop at the first record that is not valid."""
    started = time.perf_counter()
    index: dict[bytes, Entry] = {}
    offset = FILE_HEADER.size
    records = 0
    chunk, chunk_at = b"", offset
    stop = "end of file"
    while offset < size:
        chunk_end = chunk_at + len(chunk)
        if offset + MAX_RECORD > chunk_end and chunk_end < size:  # the next record may not
            chunk_at = offset  # be whole in the chunk, and the file has more: read on
            chunk = await read_at(offset, min(READ_CHUNK, size - offset))
        try:
            record, length = decode_record(memoryview(chunk)[offset - chunk_at :])
        except RecordError as exc:
            stop = str(exc)
            break
        offset += length
        if record.op is Op.SET:
            index[record.key] = Entry(record.value, offset)
        else:
            index.pop(record.key, None)
        records += 1
        if records % PROGRESS_EVERY == 0:
            print_progress(records, offset)
    return Recovery(index, offset, records, size, stop, time.perf_counter() - started)


# -- the store -----------------------------------------------------------------------------------


class StoreFailedError(Exception):
    """A write or flush failed: what is durable is unknown, so the store takes no more."""


class Store(ABC):
    """The index in memory and the log behind it; subclasses say how the log is written."""

    def __init__(self, recovery: Recovery) -> None:
        self.recovery = recovery
        self.index = recovery.index
        self.end = recovery.end  # where the next record goes
        self.durable_end = recovery.end  # everything before it is durable
        self._append_lock = anyio.Lock()
        self._failure: str | None = None

    # What the subclasses provide.

    @abstractmethod
    async def _write(self, offset: int, data: bytes) -> None:
        """Put ``data`` in the log at ``offset`` (the current end), growing it if needed."""

    @abstractmethod
    async def _sync(self, start: int, end: int) -> None:
        """Make the log durable up to ``end``; ``[0, start)`` already is."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close the log (every acknowledged write is durable already)."""

    # The operations.

    async def get(self, key: bytes) -> bytes | None:
        """The value of ``key``, or None; returns once that answer is durable."""
        entry = self.index.get(key)
        if entry is None:
            return None
        await self._commit(entry.end)
        return entry.value

    async def set(self, key: bytes, value: bytes) -> None:
        """Set ``key``; returns once the record is durable."""
        async with self._appending():
            entry = await self._append(Record(Op.SET, key, value))
        await self._commit(entry.end)

    async def delete(self, key: bytes) -> bool:
        """Delete ``key``; return whether it was there, once that is durable."""
        async with self._appending():
            entry = self.index.get(key)
            found = entry is not None and entry.value is not None
            if found:
                entry = await self._append(Record(Op.DEL, key))
        if entry is not None:
            await self._commit(entry.end)
        if found and self.index.get(key) is entry:
            del self.index[key]  # the DEL is durable: the key needs no entry any more
        return found

    # How.

    @asynccontextmanager
    async def _appending(self) -> AsyncIterator[None]:
        """Hold the append lock; a failure inside it fails the store."""
        async with self._append_lock:
            self._check_usable()
            try:
                yield
            except OSError as exc:
                raise self._fail(exc) from exc

    async def _append(self, record: Record) -> Entry:
        """Write ``record`` at the end of the log and show it in the index (not durable
        yet); under the append lock, so that log order is index order."""
        data = encode_record(record)
        start = self.end
        with anyio.CancelScope(shield=True):  # a record is written whole or not at all
            await self._write(start, data)
        self.end = start + len(data)
        entry = Entry(record.value if record.op is Op.SET else None, self.end)
        self.index[record.key] = entry
        return entry

    async def _commit(self, end: int) -> None:
        """Return once the log is durable up to ``end``."""
        start = self.durable_end
        if end <= start:
            return
        self._check_usable()
        try:
            await self._sync(start, end)
        except OSError as exc:
            raise self._fail(exc) from exc
        self.durable_end = max(self.durable_end, end)

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise StoreFailedError(f"storage failed earlier ({self._failure}); restart")

    def _fail(self, exc: OSError) -> StoreFailedError:
        self._failure = f"{type(exc).__name__}: {exc}"
        print(f"kv_server: storage failed: {self._failure}", file=sys.stderr, flush=True)
        return StoreFailedError(f"storage failed ({self._failure})")


class MmapStore(Store):
    """The log in a file mapped with ``anymmap.MmapRaw``; durable by group commit."""

    def __init__(self, log: anymmap.MmapRaw, recovery: Recovery) -> None:
        super().__init__(recovery)
        self.log = log

    @classmethod
    async def open(cls, path: Path) -> MmapStore:
        """Map (or create) the log, rebuild the index and cut the log after its last valid
        record, durably."""
        log = await anymmap.MmapRaw.open_or_create(path, INITIAL_SIZE)
        try:
            header = await log.read(0, FILE_HEADER.size)
            if not any(header):  # new (a crash before the header was durable left nothing)
                await log.update_region(0, FILE_HEADER_BYTES)
                await log.flush()
            else:
                check_file_header(header, path)
            size = len(log)
            recovery = await recover(log.read, size)
            if recovery.end < size:
                # Cut, then grow back: the tail becomes fresh blocks that read as zeros.
                await log.resize(recovery.end)
                await log.resize(size)
                await log.flush()  # durable before anything new is appended
        except BaseException:
            await log.aclose()
            raise
        return cls(log, recovery)

    async def _write(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if end > len(self.log):
            await self.log.resize(max(end, 2 * len(self.log)))  # the new blocks read as zeros
        await self.log.update_region(offset, data)

    async def _sync(self, start: int, end: int) -> None:
        # Every byte before ``end`` was written to the map before this call (appends are
        # serialized), so an msync that starts now covers them.
        await self.log.flush_range(start, end - start)

    async def aclose(self) -> None:
        await self.log.aclose()


def fsync_directory(path: Path) -> None:
    """Make a new file's name durable: a file is not, until its directory is."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_plain_log(path: Path) -> int:
    """Open (or create, with its header, durably) the log for plain reads and writes.

    :raises LogFormatError: if the file has another header
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        header = os.pread(fd, FILE_HEADER.size, 0)
        if not any(header):  # new (or its header never became durable: nothing else did)
            os.pwrite(fd, FILE_HEADER_BYTES, 0)
            os.fsync(fd)
            fsync_directory(path.parent)
        else:
            check_file_header(header, path)
        return fd
    except BaseException:
        os.close(fd)
        raise


class FileStore(Store):
    """The naive way, for comparison: aiofiles writes, and ``os.fdatasync`` in a worker
    thread for every record (asyncio only)."""

    def __init__(self, file: Any, recovery: Recovery) -> None:
        super().__init__(recovery)
        self.file = file
        self.fd: int = file.fileno()

    @classmethod
    async def open(cls, path: Path) -> FileStore:
        import aiofiles  # only this storage needs it

        fd = await anyio.to_thread.run_sync(open_plain_log, path)
        try:

            async def read_at(offset: int, n: int) -> bytes:
                return await anyio.to_thread.run_sync(os.pread, fd, n, offset)

            recovery = await recover(read_at, os.fstat(fd).st_size)
            if recovery.end < recovery.size:
                await anyio.to_thread.run_sync(os.ftruncate, fd, recovery.end)
                await anyio.to_thread.run_sync(os.fsync, fd)
        finally:
            os.close(fd)
        file = await aiofiles.open(path, "ab")
        return cls(file, recovery)

    async def _write(self, offset: int, data: bytes) -> None:
        await self.file.write(data)  # appends: ``offset`` is the end of the file
        await self.file.flush()

    async def _sync(self, start: int, end: int) -> None:
        await anyio.to_thread.run_sync(os.fdatasync, self.fd)

    async def aclose(self) -> None:
        await self.file.close()


# -- the protocol ---------------------------------------------------------------------------------


class ProtocolError(ValueError):
    """A line that is not a valid command; the message is the reason sent back."""


Verb = Literal["SET", "GET", "DEL"]
VERBS: dict[bytes, Verb] = {b"SET": "SET", b"GET": "GET", b"DEL": "DEL"}


@dataclass(frozen=True)
class Command:
    verb: Verb
    key: bytes
    value: bytes = b""


def parse_command(line: bytes) -> Command:
    """Parse one line (without its ``\\n``; a trailing ``\\r`` is dropped).

    :raises ProtocolError: if it is not a valid command
    """
    line = line.removesuffix(b"\r")
    if len(line) > MAX_LINE:
        raise ProtocolError(f"line longer than {MAX_LINE} bytes")
    word, _, rest = line.partition(b" ")
    verb = VERBS.get(word.upper())
    if verb is None:
        if not word:
            raise ProtocolError("empty command")
        raise ProtocolError(
            f"unknown command {word[:32].decode('utf-8', 'replace')!a} "
            "(SET key value, GET key, DEL key)"
        )
    if verb == "SET":
        key, space, value = rest.partition(b" ")
        if key and not space:
            raise ProtocolError("SET needs a value: SET key value")
    else:
        key, value = rest, b""
        if b" " in key:
            raise ProtocolError(f"{verb} takes one key")
    if not key:
        raise ProtocolError(f"{verb} needs a key")
    problem = key_problem(key) or value_problem(value)
    if problem is not None:
        raise ProtocolError(problem)
    return Command(verb, key, value)


def error(reason: str) -> bytes:
    return b"ERROR " + reason.encode() + b"\n"


async def execute(store: Store, line: bytes) -> bytes:
    """The reply line to the command ``line``."""
    try:
        command = parse_command(line)
        if command.verb == "SET":
            await store.set(command.key, command.value)
            return b"OK\n"
        if command.verb == "GET":
            value = await store.get(command.key)
            return b"NOT_FOUND\n" if value is None else b"VALUE " + value + b"\n"
        return b"OK\n" if await store.delete(command.key) else b"NOT_FOUND\n"
    except (ProtocolError, StoreFailedError) as exc:
        return error(str(exc))


async def close_after(client: anyio.abc.SocketStream, reply: bytes) -> None:
    """Send ``reply``, then close without losing it: a close with unread input would reset
    the connection, and the client might never read the reply."""
    await client.send(reply)
    try:
        await client.send_eof()
    except (OSError, RuntimeError):
        # The client reset the connection after the reply was sent (adversary round
        # 49): trio's shutdown() says ENOTCONN, uvloop's transport "the handler is
        # closed".  It is gone; there is nothing left to close gracefully.
        return
    with anyio.move_on_after(2):
        while await client.receive():
            pass


async def handle_client(store: Store, client: anyio.abc.SocketStream) -> None:
    """Serve one connection until the client leaves."""
    async with client:
        lines = BufferedByteReceiveStream(client)
        try:
            while True:
                try:
                    # (+ 1: the \n after a longest line's \r, which MAX_LINE counts; a
                    # line cut between them was refused: adversary round 55)
                    line = await lines.receive_until(b"\n", MAX_LINE + 1)
                except anyio.DelimiterNotFound:
                    reason = f"line longer than {MAX_LINE} bytes; closing the connection"
                    await close_after(client, error(reason))
                    return
                await client.send(await execute(store, line))
        except (
            anyio.IncompleteRead,
            anyio.EndOfStream,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
        ):
            return  # the client left, maybe in the middle of a line
        except Exception as exc:  # noqa: BLE001 - a bug loses this connection, not the server
            print(f"kv_server: dropped a connection: {exc!r}", file=sys.stderr, flush=True)


# -- the server -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    data: Path
    host: str
    port: int
    backend: Literal["asyncio", "uvloop", "trio"]
    storage: Literal["anymmap", "aiofiles"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it could resolve to anything
        return False


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """The configuration from the command line; exits with a message if it is refused."""
    parser = argparse.ArgumentParser(description="A durable key-value server on anymmap.")
    parser.add_argument("--data", type=Path, required=True, help="directory of the log")
    parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    parser.add_argument("--port", type=int, default=7379, help="0: any free port")
    parser.add_argument("--backend", choices=("asyncio", "uvloop", "trio"), default="asyncio")
    parser.add_argument("--storage", choices=("anymmap", "aiofiles"), default="anymmap")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="listen on a host that is not loopback (the protocol has no authentication)",
    )
    args = parser.parse_args(argv)
    if not args.allow_remote and not is_loopback(args.host):
        parser.error(
            f"refusing to listen on {args.host}, which is not a loopback address: anyone who "
            "can reach it could read and change every key (pass --allow-remote to do it)"
        )
    if args.storage == "aiofiles" and args.backend == "trio":
        parser.error("--storage aiofiles needs asyncio (aiofiles runs on asyncio only)")
    if args.backend == "uvloop" and importlib.util.find_spec("uvloop") is None:
        parser.error("--backend uvloop: uvloop is not installed")
    return Config(args.data, args.host, args.port, args.backend, args.storage)


async def stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            print(f"{signal.Signals(signum).name}: shutting down", flush=True)
            scope.cancel()
            return


#: What ``accept`` raises when the process or the system is out of descriptors or memory.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: How long accepting pauses then (connections wait in the listen backlog meanwhile).
ACCEPT_PAUSE = 0.1
#: What ``accept`` raises for a connection that failed before it was taken: accept the
#: next one (accept(2) says to retry these; trio's listener does; adversary round 41).
CONNECTION_GONE = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "EPERM",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
    )
    if hasattr(errno, name)
)


async def accept_forever(
    listener: anyio.abc.SocketListener,
    handler: Callable[[anyio.abc.SocketStream], Coroutine[Any, Any, None]],
    tg: anyio.abc.TaskGroup,
) -> None:
    """Serve each connection in a task of ``tg``.  Unlike ``listener.serve``, running out
    of descriptors pauses accepting instead of ending the server (adversary round 38: a
    client that opened more connections than the open-file limit stopped it), as trio's
    ``serve_listeners`` does, and a connection that failed before it was accepted is
    skipped."""
    paused = False
    while True:
        try:
            client = await listener.accept()
        except (OSError, anyio.BrokenResourceError) as exc:
            cause = exc.__cause__ if isinstance(exc, anyio.BrokenResourceError) else exc
            if isinstance(cause, OSError) and cause.errno in CONNECTION_GONE:
                continue
            if not isinstance(cause, OSError) or cause.errno not in OUT_OF_RESOURCES:
                raise  # (anyio on trio raises the OSError as the cause of this)
            if not paused:
                print(f"kv_server: accept paused: {cause.strerror}", file=sys.stderr, flush=True)
            paused = True
            await anyio.sleep(ACCEPT_PAUSE)
            continue
        paused = False
        tg.start_soon(handler, client)


class DataInUseError(Exception):
    """Another server holds the data directory."""


def lock_data(directory: Path) -> int:
    """Take the data directory for this process (an exclusive ``flock`` on the directory
    itself, given back when the process ends, however it ends); return the lock's
    descriptor.  Recovery cuts the log after its last valid record, so a second server
    on the same data would cut records the first one is writing (adversary round 38: a
    second start that then failed to bind the port lost acknowledged SETs).  The
    directory, not a lock file in it: a lock file removed as "stale" while the server
    ran let a second one in (round 39), and one replaced by a symbolic link was
    followed.

    :raises DataInUseError: if another process holds it
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataInUseError(f"{directory} is in use by another kv_server") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


async def serve(config: Config) -> None:
    await anyio.Path(config.data).mkdir(parents=True, exist_ok=True)
    lock = lock_data(config.data)
    try:
        await serve_locked(config)
    finally:
        os.close(lock)


async def serve_locked(config: Config) -> None:
    path = config.data / LOG_NAME
    print(f"{config.storage} storage, log {path}", flush=True)
    store: Store = await (MmapStore if config.storage == "anymmap" else FileStore).open(path)
    try:
        r = store.recovery
        cut = f"; cut {r.size - r.end:,} bytes after it ({r.stop})" if r.end < r.size else ""
        print(
            f"recovered {r.records:,} records, {len(r.index):,} keys in {r.seconds:.2f} s; "
            f"the log ends at byte {r.end:,}{cut}",
            flush=True,
        )
        listener = await anyio.create_tcp_listener(local_host=config.host, local_port=config.port)
        async with listener, anyio.create_task_group() as tg:
            port = listener.extra(SocketAttribute.local_port)
            host = f"[{config.host}]" if ":" in config.host else config.host
            print(f"listening on {host}:{port}", flush=True)
            tg.start_soon(stop_on_signal, tg.cancel_scope)
            for each in listener.listeners:  # (one per address family of the host)
                assert isinstance(each, anyio.abc.SocketListener)
                tg.start_soon(accept_forever, each, partial(handle_client, store), tg)
    finally:
        with anyio.CancelScope(shield=True):
            await store.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    backend = "trio" if config.backend == "trio" else "asyncio"
    options = {"use_uvloop": True} if config.backend == "uvloop" else {}
    try:
        anyio.run(serve, config, backend=backend, backend_options=options)
    except (LogFormatError, DataInUseError) as exc:
        sys.exit(f"kv_server: {exc}")


if __name__ == "__main__":
    main()
