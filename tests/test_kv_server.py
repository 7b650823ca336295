"""examples/kv_server.py as its users see it: real server processes, real sockets, real
crashes (SIGKILL), and garbage written into its log while it is down.

Every wait has a deadline (``TIMEOUT``) and every server runs in a session of its own that
is killed at the end, so a hang fails one test quickly instead of stalling the run.  No
assertion depends on how fast the machine is.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import queue
import random
import signal
import socket
import string
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

SERVER = Path(__file__).resolve().parent.parent / "examples" / "kv_server.py"
#: Seconds any one wait may take (a start, a reply, an exit) before the test fails.
TIMEOUT = 30.0


def load_server_module() -> ModuleType:
    """examples/kv_server.py as a module, for its record and protocol functions."""
    spec = importlib.util.spec_from_file_location("kv_server", SERVER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


kv = load_server_module()


# -- a server process ---------------------------------------------------------------------------


class Server:
    """``kv_server.py --port 0 --data DATA ARGS`` in a session of its own.  Its stdout is
    read by a thread (so that it never blocks on a full pipe); its stderr goes to a file."""

    def __init__(
        self, data: Path, stderr_path: Path, *args: str, max_files: int | None = None
    ) -> None:
        self.stderr_path = stderr_path
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        # (With max_files, the server's RLIMIT_NOFILE, set by the interpreter first.)
        run = (
            [str(SERVER)] if max_files is None else ["-c", _LIMITED.format(max_files), str(SERVER)]
        )
        with open(stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, *run, "--port", "0", "--data", str(data), *args],
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, "PYTHONFAULTHANDLER": "1"},
                start_new_session=True,
            )
        assert self.process.stdout is not None
        self._stdout: IO[bytes] = self.process.stdout
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            line = self.wait_for("listening on ")
        except BaseException:
            self.kill()  # reaped here, not garbage in a later test (a ResourceWarning)
            raise
        self.port = int(line.rpartition(":")[2])

    def _read(self) -> None:
        for raw in self._stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, prefix: str) -> str:
        """The next output line that starts with ``prefix``."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                line = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} line within {TIMEOUT} s\n{self}") from None
            if line is None:
                self.process.wait(TIMEOUT)
                raise AssertionError(f"the server ended before a {prefix!r} line\n{self}")
            if line.startswith(prefix):
                return line

    def kill(self) -> None:
        """SIGKILL: the crash.  Nothing of the server runs after this returns."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        self._stdout.close()

    def stop(self) -> None:
        """SIGTERM: a clean shutdown, which must exit with status 0."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(TIMEOUT)
        finally:
            self.kill()
        assert code == 0, f"exit status {code}\n{self}"

    def __repr__(self) -> str:
        stderr = self.stderr_path.read_text(errors="replace")
        return f"--- server stdout ---\n{chr(10).join(self.lines)}\n--- stderr ---\n{stderr}"


_LIMITED = (
    "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({0}, {0})); "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


class Servers:
    """Starts servers and kills whatever is left of them at the end of the test."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Server] = []

    def start(self, data: Path, *args: str, max_files: int | None = None) -> Server:
        stderr_path = self.directory / f"server-{len(self.started)}.stderr"
        server = Server(data, stderr_path, *args, max_files=max_files)
        self.started.append(server)
        return server


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    started = Servers(tmp_path)
    try:
        yield started
    finally:
        for server in started.started:
            server.kill()


# -- a client -----------------------------------------------------------------------------------


class Client:
    """A blocking connection; every read and write times out after ``TIMEOUT``."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.file = self.sock.makefile("rb")

    def call(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\n")
        return self.reply()

    def reply(self) -> bytes:
        """The next reply line, without its ``\\n``; ConnectionError if the server left."""
        line = self.file.readline()
        if not line.endswith(b"\n"):
            raise ConnectionError(f"the connection ended (after {line!r})")
        return line[:-1]

    def pipeline(self, lines: Sequence[bytes], batch: int = 100) -> list[bytes]:
        """Send the lines in batches, each read back before the next is sent (so that
        neither side blocks on a full socket buffer)."""
        replies: list[bytes] = []
        for start in range(0, len(lines), batch):
            part = lines[start : start + batch]
            self.sock.sendall(b"".join(line + b"\n" for line in part))
            replies += [self.reply() for _ in part]
        return replies

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def value_of(reply: bytes) -> str | None:
    """The value a GET reply carries (None for NOT_FOUND)."""
    if reply == b"NOT_FOUND":
        return None
    assert reply.startswith(b"VALUE "), reply
    return reply[len(b"VALUE ") :].decode()


def get_all(port: int, keys: Sequence[str]) -> dict[str, str | None]:
    with closing(Client(port)) as client:
        replies = client.pipeline([b"GET " + key.encode() for key in keys])
    return {key: value_of(reply) for key, reply in zip(keys, replies, strict=True)}


# -- the protocol -------------------------------------------------------------------------------


def test_set_get_del_round_trips(tmp_path: Path, servers: Servers) -> None:
    data = tmp_path / "data"
    server = servers.start(data)
    value = "hello world, with spaces and ünïcödé ✓"
    with closing(Client(server.port)) as client:
        assert client.call(b"GET greeting") == b"NOT_FOUND"
        assert client.call(b"SET greeting " + value.encode()) == b"OK"
        assert client.call(b"GET greeting") == b"VALUE " + value.encode()
        assert client.call(b"set greeting again") == b"OK"  # verbs are case-insensitive
        assert client.call(b"GET greeting\r") == b"VALUE again"  # \r\n line ends too
        assert client.call(b"SET empty ") == b"OK"
        assert client.call(b"GET empty") == b"VALUE "
        assert client.call(b"DEL greeting") == b"OK"
        assert client.call(b"GET greeting") == b"NOT_FOUND"
        assert client.call(b"DEL greeting") == b"NOT_FOUND"
        assert client.call(b"SET kept " + b"v" * kv.MAX_VALUE) == b"OK"  # the longest value
        assert client.call(b"SET " + b"k" * kv.MAX_KEY + b" x") == b"OK"  # the longest key
    server.stop()
    assert server.lines[-1] == "SIGTERM: shutting down"

    server = servers.start(data)
    assert get_all(server.port, ["greeting", "empty", "kept", "k" * kv.MAX_KEY]) == {
        "greeting": None,
        "empty": "",
        "kept": "v" * kv.MAX_VALUE,
        "k" * kv.MAX_KEY: "x",
    }
    assert any(line.startswith("recovered 6 records, 3 keys") for line in server.lines), server


BAD_LINES = [
    (b"", "empty command"),
    (b"FLY me", "unknown command 'FLY'"),
    (b"\xff\xfe", "unknown command"),
    (b"SET", "SET needs a key"),
    (b"SET onlykey", "SET needs a value"),
    (b"GET", "GET needs a key"),
    (b"DEL ", "DEL needs a key"),
    (b"GET two keys", "GET takes one key"),
    (b"SET \xff\xfekey value", "key is not UTF-8"),
    (b"SET key \xc3\x28", "value is not UTF-8"),
    (b"SET key a\tb", "value must be printable"),
    (b"SET ke\x01y value", "key must be printable"),
    (b"SET " + b"k" * (kv.MAX_KEY + 1) + b" v", "key longer than 256 bytes"),
    (b"SET k " + b"v" * (kv.MAX_VALUE + 1), "value longer than 65536 bytes"),
]


def test_bad_input_gets_errors_and_the_connection_stays_usable(
    tmp_path: Path, servers: Servers
) -> None:
    server = servers.start(tmp_path / "data")
    with closing(Client(server.port)) as client:
        assert client.call(b"SET before ok") == b"OK"
        for line, reason in BAD_LINES:
            reply = client.call(line)
            assert reply.startswith(b"ERROR "), (line[:40], reply)
            assert reason in reply.decode(), (line[:40], reply)
        # Nothing bad was stored, and the same connection still works.
        assert client.call(b"GET before") == b"VALUE ok"
        assert client.call(b"GET k") == b"NOT_FOUND"
        assert client.call(b"SET after ok") == b"OK"
        # Pipelined garbage and commands: one reply each, in order.
        replies = client.pipeline([b"GET after", b"BOGUS", b"DEL after", b"GET after"])
        assert replies[0] == b"VALUE ok"
        assert replies[1].startswith(b"ERROR unknown command")
        assert replies[2:] == [b"OK", b"NOT_FOUND"]

    # A line past the limit without an end: an ERROR, then the server closes that
    # connection (it cannot tell where the next command starts) and serves others.
    with closing(Client(server.port)) as client:
        client.sock.sendall(b"SET k " + b"v" * (kv.MAX_LINE + 10))
        reply = client.reply()
        assert reply.startswith(b"ERROR line longer than"), reply
        assert client.file.readline() == b""  # then the end of the stream
    with closing(Client(server.port)) as client:
        assert client.call(b"GET before") == b"VALUE ok"
    server.stop()


def test_the_longest_line_is_served_when_its_crlf_arrives_in_two_pieces(
    tmp_path: Path, servers: Servers
) -> None:
    """Regression test (adversary round 55): the longest valid line ends in ``\\r\\n``,
    and the reader's limit counted the ``\\r`` but not the ``\\n``: when the ``\\n``
    came in a later segment, the line was refused as too long and the connection
    closed."""
    server = servers.start(tmp_path / "data")
    key, value = b"k" * kv.MAX_KEY, b"v" * kv.MAX_VALUE
    with closing(Client(server.port)) as client:
        line = b"SET " + key + b" " + value + b"\r"
        assert len(line) == kv.MAX_LINE
        client.sock.sendall(line)
        time.sleep(0.3)  # (lets the server read up to the \r first: the case at hand)
        client.sock.sendall(b"\n")
        assert client.reply() == b"OK"
        assert client.call(b"GET " + key) == b"VALUE " + value
    server.stop()


def test_refuses_a_non_loopback_host_without_allow_remote(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, str(SERVER), "--host", "0.0.0.0", "--port", "0", "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode != 0, result
    assert "refusing to listen on 0.0.0.0" in result.stderr, result.stderr
    assert "--allow-remote" in result.stderr, result.stderr
    assert not data.exists()  # it stopped before touching anything


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("--backend", "trio"), id="trio"),
        pytest.param(("--backend", "uvloop"), id="uvloop"),
        pytest.param(("--storage", "aiofiles"), id="aiofiles"),
    ],
)
def test_round_trip_on_other_backends_and_storage(
    tmp_path: Path, servers: Servers, args: tuple[str, str]
) -> None:
    data = tmp_path / "data"
    server = servers.start(data, *args)
    with closing(Client(server.port)) as client:
        assert client.call(b"SET a alpha") == b"OK"
        assert client.call(b"SET b beta") == b"OK"
        assert client.call(b"GET a") == b"VALUE alpha"
        assert client.call(b"DEL a") == b"OK"
        assert client.call(b"GET a") == b"NOT_FOUND"
        assert client.call(b"NOPE").startswith(b"ERROR ")
    server.kill()  # no clean shutdown: acknowledged is durable
    server = servers.start(data, *args)
    assert get_all(server.port, ["a", "b"]) == {"a": None, "b": "beta"}
    server.stop()


def test_storages_share_the_log_format(tmp_path: Path, servers: Servers) -> None:
    """A log written through the map reads back through plain reads, and the other way."""
    data = tmp_path / "data"
    server = servers.start(data)
    with closing(Client(server.port)) as client:
        assert client.call(b"SET m mapped") == b"OK"
    server.kill()
    server = servers.start(data, "--storage", "aiofiles")
    with closing(Client(server.port)) as client:
        assert client.call(b"GET m") == b"VALUE mapped"
        assert client.call(b"SET f plain") == b"OK"
    server.kill()
    server = servers.start(data)
    assert get_all(server.port, ["m", "f"]) == {"m": "mapped", "f": "plain"}


# -- crash safety -------------------------------------------------------------------------------

CLIENTS = 16
CYCLES = 3
ALPHABET = string.ascii_letters + string.digits + " .,:;!?-_/é€✓"


def random_value(rng: random.Random) -> str:
    """Mostly short values, some long ones (so that the log grows during the load)."""
    n = rng.randint(8_000, 60_000) if rng.random() < 0.1 else rng.randint(0, 200)
    return "".join(rng.choices(ALPHABET, k=n))


class Load(threading.Thread):
    """One client: SETs and DELs of its own keys, one at a time, recording what the server
    acknowledged, until the connection breaks."""

    def __init__(self, port: int, name: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.keys = [f"{name}-{i}" for i in range(24)]
        self.rng = random.Random(seed)
        self.state: dict[str, str] = {}  # what the acknowledged operations left
        self.pending: tuple[str, str | None] | None = None  # sent, not acknowledged
        self.acks = 0
        self.wrong: list[str] = []  # replies that were not what they should have been

    def run(self) -> None:
        try:
            client = Client(self.port)
        except OSError:
            return
        try:
            for _ in range(100_000):
                key = self.rng.choice(self.keys)
                if self.rng.random() < 0.2:
                    self.pending = (key, None)
                    reply = client.call(b"DEL " + key.encode())
                    expected = b"OK" if key in self.state else b"NOT_FOUND"
                    self.state.pop(key, None)
                else:
                    value = random_value(self.rng)
                    self.pending = (key, value)
                    reply = client.call(f"SET {key} {value}".encode())
                    expected = b"OK"
                    self.state[key] = value
                if reply != expected:
                    self.wrong.append(f"{key}: {reply[:60]!r}, expected {expected!r}")
                self.pending = None
                self.acks += 1
        except OSError:
            pass  # the server was killed (ConnectionError, or a read that ended)
        finally:
            client.close()

    def allowed(self) -> dict[str, set[str | None]]:
        """What each key may hold after a crash: what the acknowledged operations left, or
        what the one unacknowledged operation would have left."""
        allowed: dict[str, set[str | None]] = {key: {self.state.get(key)} for key in self.keys}
        if self.pending is not None:
            key, value = self.pending
            allowed[key].add(value)
        return allowed


def short(value: str | None) -> str:
    return repr(value if value is None or len(value) <= 20 else f"{value[:20]}...({len(value)})")


def check_recovered(server: Server, allowed: dict[str, set[str | None]], seed: int) -> None:
    """Every key holds one of its allowed values; pin ``allowed`` to what it holds."""
    found = get_all(server.port, sorted(allowed))
    lost = {
        key: (allowed[key], value) for key, value in found.items() if value not in allowed[key]
    }
    assert not lost, f"seed {seed}: {len(lost)} keys lost acknowledged writes: {lost}\n{server}"
    for key, value in found.items():
        allowed[key] = {value}


def test_acknowledged_writes_survive_sigkill(tmp_path: Path, servers: Servers) -> None:
    """16 clients write; the server is killed at a random moment, restarted on the same
    log, and every acknowledged write must be there; three times over."""
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    data = tmp_path / "data"
    allowed: dict[str, set[str | None]] = {}
    server = servers.start(data)
    for cycle in range(CYCLES):
        loads = [
            Load(server.port, f"r{cycle}c{i}", rng.randrange(1 << 32)) for i in range(CLIENTS)
        ]
        for load in loads:
            load.start()
        target = rng.randint(300, 800)  # acknowledged writes before the kill
        deadline = time.monotonic() + TIMEOUT * 2
        while sum(load.acks for load in loads) < target:
            assert any(load.is_alive() for load in loads), (
                f"seed {seed}: the clients quit\n{server}"
            )
            assert time.monotonic() < deadline, f"seed {seed}: too slow\n{server}"
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.03))  # somewhere in the middle of the traffic
        server.kill()
        for load in loads:
            load.join(TIMEOUT)
            assert not load.is_alive(), f"seed {seed}: a client hangs"
            assert not load.wrong, f"seed {seed}: wrong replies {load.wrong[:5]}\n{server}"
            allowed.update(load.allowed())

        server = servers.start(data)
        check_recovered(server, allowed, seed)
        with closing(Client(server.port)) as client:  # and it takes new writes
            assert client.call(f"SET after-{cycle} fine".encode()) == b"OK"
        allowed[f"after-{cycle}"] = {"fine"}

    # The load grew the log (a 64 KiB value at a time, at most) while it ran.
    assert (data / "kv.log").stat().st_size > kv.INITIAL_SIZE, server
    server.stop()


def valid_end(log: Path) -> int:
    """The offset just past the last valid record of the log."""
    data = log.read_bytes()
    end: int = kv.FILE_HEADER.size
    while True:
        try:
            length: int = kv.decode_record(data[end:])[1]
        except kv.RecordError:
            return end
        end += length


def write_at(log: Path, offset: int, data: bytes) -> None:
    with open(log, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_a_torn_tail_is_cut_and_never_comes_back(tmp_path: Path, servers: Servers) -> None:
    data = tmp_path / "data"
    log = data / "kv.log"
    rng = random.Random(0)
    expected = {f"key{i}": random_value(rng) for i in range(50)}
    server = servers.start(data)
    with closing(Client(server.port)) as client:
        replies = client.pipeline([f"SET {k} {v}".encode() for k, v in expected.items()])
    assert replies == [b"OK"] * len(expected)
    server.kill()
    records = len(expected)

    def restart_and_check(torn: str) -> Server:
        server = servers.start(data)
        line = next(line for line in server.lines if line.startswith("recovered"))
        assert line.startswith(f"recovered {records} records"), (torn, line)
        found = get_all(server.port, [*expected, "ghost"])
        assert found == {**expected, "ghost": None}, f"after {torn}\n{server}"
        return server

    ghost = kv.encode_record(kv.Record(kv.Op.SET, b"ghost", b"boo"))
    torn_record = kv.encode_record(kv.Record(kv.Op.SET, b"torn", b"x" * 300))
    half = 150
    bad_crc = bytearray(ghost)
    bad_crc[12] ^= 0xFF  # the CRC field
    cases = {
        "random bytes": rng.randbytes(700),
        "a valid-looking header with a bad CRC": bytes(bad_crc),
        # Half a record, then a whole one (a crash wrote back a later page, not the
        # torn one): the whole one must not be replayed, and must not come back once a
        # new record exactly as long as the half is written over the half.
        "half a record, then a valid one": torn_record[:half] + ghost,
    }
    for torn, garbage in cases.items():
        write_at(log, valid_end(log), garbage)
        server = restart_and_check(torn)
        # A new record where the garbage was, as long as the half record; a restart
        # sees it and nothing after it.
        key = f"new-{records:03d}"
        value = "n" * (half - kv.RECORD_HEADER.size - len(key))
        with closing(Client(server.port)) as client:
            assert client.call(f"SET {key} {value}".encode()) == b"OK"
        expected[key] = value
        records += 1
        server.kill()
        server = restart_and_check(f"{torn}, then a write and a restart")
        server.kill()

    # A record cut by the end of the file (a log written with plain writes ends there).
    end = valid_end(log)
    with open(log, "r+b") as f:
        f.truncate(end)
        f.seek(end)
        f.write(torn_record[:100])
    restart_and_check("a record cut by the end of the file").stop()


def test_recovery_of_a_long_log_reports_progress(tmp_path: Path, servers: Servers) -> None:
    """A log of 25,000 records (about 3 MiB: recovery reads it in several pieces, records
    straddle their edges), written byte by byte as the format says: every key comes back,
    DELs included, with a progress line per 10,000 records."""
    data = tmp_path / "data"
    data.mkdir()
    count = 25_000
    rng = random.Random(1)
    expected: dict[str, str | None] = {}
    records = [kv.FILE_HEADER.pack(kv.FILE_MAGIC, kv.FILE_VERSION)]
    for i in range(count):
        key = f"k{rng.randrange(8000)}"
        if rng.random() < 0.1:
            records.append(kv.encode_record(kv.Record(kv.Op.DEL, key.encode())))
            expected[key] = None
        else:
            value = "".join(rng.choices(ALPHABET, k=rng.randint(0, 200))) + str(i)
            records.append(kv.encode_record(kv.Record(kv.Op.SET, key.encode(), value.encode())))
            expected[key] = value
    (data / "kv.log").write_bytes(b"".join(records))

    server = servers.start(data)
    progress = [line for line in server.lines if line.startswith("recovery: ")]
    assert [line.split()[1] for line in progress] == ["10,000", "20,000"], server
    live = sum(value is not None for value in expected.values())
    assert any(
        line.startswith(f"recovered 25,000 records, {live:,} keys") for line in server.lines
    )
    assert get_all(server.port, sorted(expected)) == expected
    server.stop()


def test_a_second_server_on_the_same_data_exits_and_the_first_loses_nothing(
    tmp_path: Path, servers: Servers
) -> None:
    """Regression test (adversary round 38): a second server started on the same data
    ran its recovery, which cut the log under the first one, before it failed to bind
    the port: acknowledged SETs were lost.  (Here the second server could even listen,
    on a port of its own.)  It now exits with a message before it reads the log.  The
    lock is the directory's own, not a file in it that a cleanup could remove (round
    39: removing ``DATA/lock`` let the second one in)."""
    data = tmp_path / "data"
    first = servers.start(data)
    expected = {f"k{i}": f"v{i}" for i in range(200)}
    with closing(Client(first.port)) as client:
        assert set(client.pipeline([f"SET {k} {v}".encode() for k, v in expected.items()])) == {
            b"OK"
        }
        (data / "lock").unlink(missing_ok=True)  # (round 39: a "stale lock" cleanup)
        second = subprocess.run(
            [sys.executable, str(SERVER), "--port", "0", "--data", str(data)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert second.returncode == 1, second
        assert "in use by another kv_server" in second.stderr, second.stderr
        assert client.call(b"SET after second") == b"OK"  # the first one serves on
    expected["after"] = "second"
    first.kill()
    again = servers.start(data)
    assert get_all(again.port, sorted(expected)) == expected
    again.stop()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_running_out_of_descriptors_pauses_accepting_instead_of_ending_the_server(
    tmp_path: Path, servers: Servers, backend: str
) -> None:
    """Regression test (adversary round 38): more connections than the server's open-file
    limit made ``accept`` raise ``EMFILE`` (on trio, anyio's ``BrokenResourceError``
    from it), which ended the server.  It now pauses accepting until a descriptor is
    free; the waiting connections are served then."""
    server = servers.start(tmp_path / "data", "--backend", backend, max_files=64)
    with closing(Client(server.port)) as client:
        assert client.call(b"SET a 1") == b"OK"
        flood = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
        try:
            deadline = time.monotonic() + TIMEOUT  # (until it has met the limit, or ended)
            while (
                "accept paused: Too many open files" not in server.stderr_path.read_text()
                and server.process.poll() is None
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            assert server.process.poll() is None, server
            assert "accept paused" in server.stderr_path.read_text(), server
            assert client.call(b"GET a") == b"VALUE 1"  # served on while it is full
        finally:
            for sock in flood:
                sock.close()
    with closing(Client(server.port)) as late:  # (accepted once descriptors are free)
        assert late.call(b"GET a") == b"VALUE 1"
    server.stop()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_accept_skips_a_connection_that_failed_before_it_was_taken(backend: str) -> None:
    """A connection that failed between the handshake and ``accept`` (``ECONNABORTED``,
    ``EPROTO``, ...; on trio anyio raises ``BrokenResourceError`` from it) is skipped, as
    accept(2) says to: the server accepts the next one.  Any other error still ends it.
    (Linux's loopback never fails an accept this way, hence a listener that does.)"""
    import anyio
    import anyio.lowlevel

    served: list[str] = []

    class FailingListener:
        def __init__(self) -> None:
            self.results: list[object] = [
                OSError(errno.ECONNABORTED, "Software caused connection abort"),
                "first",
                _broken(errno.EPROTO),
                "second",
                OSError(errno.EBADF, "Bad file descriptor"),
            ]

        async def accept(self) -> object:
            await anyio.lowlevel.checkpoint()
            result = self.results.pop(0)
            if isinstance(result, BaseException):
                raise result
            return result

    def _broken(code: int) -> anyio.BrokenResourceError:
        error = anyio.BrokenResourceError()
        error.__cause__ = OSError(code, os.strerror(code))
        return error

    async def handler(client: Any) -> None:
        served.append(client)

    ended: list[int | None] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            try:
                await kv.accept_forever(FailingListener(), handler, tg)
            except OSError as error:
                ended.append(error.errno)

    anyio.run(main, backend=backend)
    assert ended == [errno.EBADF]
    assert served == ["first", "second"]


@pytest.mark.parametrize(
    "refusal",
    [
        OSError(errno.ENOTCONN, "Transport endpoint is not connected"),  # trio
        RuntimeError("unable to perform operation on <TCPTransport closed=True>"),  # uvloop
    ],
)
def test_a_client_that_resets_after_an_over_long_line_just_leaves(refusal: Exception) -> None:
    """Regression test (adversary round 49, trio and uvloop, 1 to 3 in 300 resets): a
    client that sent an over-long line and reset the connection right after the
    server's error reply made the server's EOF fail (trio: ``OSError(ENOTCONN)`` from
    ``shutdown``; uvloop: ``RuntimeError``, its transport closed), which the handler
    logged as a bug that dropped the connection.  The client has left: the close ends
    quietly.  (The reset lands between two system calls microseconds apart; a stream
    that refuses the EOF as those did stands in for it.)"""
    import anyio

    sent: list[bytes] = []

    class ResetStream:
        async def send(self, data: bytes) -> None:
            sent.append(data)

        async def send_eof(self) -> None:
            raise refusal

        async def receive(self) -> bytes:
            raise AssertionError("nothing is read from a connection that is gone")

    anyio.run(kv.close_after, ResetStream(), b"ERROR line too long\n")
    assert sent == [b"ERROR line too long\n"]


def raw_record(op: int, key: bytes, value: bytes) -> bytes:
    """A record's bytes as the log holds them, whatever its key and value."""
    body = key + value
    length = kv.RECORD_HEADER.size + len(body)
    header: bytes = kv.RECORD_HEADER.pack(kv.RECORD_MAGIC, length, len(key), op, 0, 0)
    checked = header[: kv.CHECKED_HEADER]
    return checked + struct.pack("<I", kv._crc(checked, body)) + body


def test_recovery_does_not_depend_on_the_unicode_version() -> None:
    """Regression test (adversary round 38): recovery checked values with
    ``str.isprintable``, which follows the interpreter's Unicode version: a value that
    3.12 or 3.13 accepted (U+1FA75, new in Unicode 15) stopped recovery under 3.11, and
    every record after it was cut for good.  Recovery accepts what the CRC vouches for
    unless no version of the server could have written it (a control character, a space
    in the key, bytes that are not UTF-8)."""
    for value in ("\U0001fa75".encode(), "\u200b".encode(), b"plain"):  # (U+200B: unprintable)
        record = raw_record(kv.Op.SET, b"key", value)
        assert kv.decode_record(record) == (kv.Record(kv.Op.SET, b"key", value), len(record))
    for key, value in ((b"k", b"a\nb"), (b"k", b"\x7f"), (b"k e", b"v"), (b"k", b"\xff")):
        with pytest.raises(kv.RecordError, match="the CRC checks out, but"):
            kv.decode_record(raw_record(kv.Op.SET, key, value))


# -- the record decoder and the parser, fuzzed --------------------------------------------------

# Printable text (no control, format or separator characters); values may hold spaces.
keys = st.text(st.characters(codec="utf-8", categories=("L", "N", "P", "S")), min_size=1)
values = st.text(
    st.characters(codec="utf-8", categories=("L", "N", "P", "S"), include_characters=" ")
)
records = st.builds(
    lambda op, key, value: kv.Record(op, key, b"" if op is kv.Op.DEL else value),
    st.sampled_from(list(kv.Op)),
    keys.map(str.encode).filter(lambda key: len(key) <= kv.MAX_KEY),
    values.map(str.encode),
)


def check_decode(data: bytes) -> None:
    """decode_record(data) raises nothing but RecordError, and what it returns is a record
    that lies wholly inside ``data`` and encodes to exactly those bytes."""
    try:
        record, length = kv.decode_record(data)
    except kv.RecordError:
        return
    assert kv.RECORD_HEADER.size < length <= len(data)
    assert kv.encode_record(record) == data[:length]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decode_random_bytes(data: bytes) -> None:
    check_decode(data)
    check_decode(kv.RECORD_MAGIC + data)  # past the magic check, into the rest


@settings(max_examples=300, deadline=None)
@given(records, st.data())
def test_decode_damaged_records(record: Any, draw: st.DataObject) -> None:
    encoded = kv.encode_record(record)
    assert kv.decode_record(encoded + b"tail") == (record, len(encoded))
    # Cut anywhere: never a record (it would have to read past the end).
    cut = draw.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(kv.RecordError):
        kv.decode_record(memoryview(encoded)[:cut])
    # Any byte changed: an error, or (a flipped bit the CRC cannot see is impossible for
    # one byte) never a different record.
    at = draw.draw(st.integers(0, len(encoded) - 1))
    flip = draw.draw(st.integers(1, 255))
    damaged = bytearray(encoded)
    damaged[at] ^= flip
    with pytest.raises(kv.RecordError):
        kv.decode_record(bytes(damaged))
    check_decode(bytes(damaged) + draw.draw(st.binary(max_size=64)))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=100), st.lists(st.binary(max_size=12)).map(b" ".join)))
def test_parse_command_random_lines(line: bytes) -> None:
    for candidate in (line, b"SET " + line, b"GET " + line, b"del " + line):
        try:
            command = kv.parse_command(candidate)
        except kv.ProtocolError as exc:
            reason = str(exc)
        else:
            assert kv.key_problem(command.key) is None
            assert kv.value_problem(command.value) is None
            continue
        assert reason
        assert "\n" not in reason  # an ERROR reply is one line
