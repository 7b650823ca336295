from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import pickle
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from anyio import WouldBlock

import anymmap
import anymmap.sync
from anymmap import (
    InvalidSizeError,
    MappingFaultError,
    MmapRaw,
    OutOfBoundsError,
    ReadOnlyError,
    UnmappableFileError,
)

from ._child import check_child
from ._helpers import PAGE, assert_loop_keeps_running, heartbeat, resident_fraction, wait_until
from .conftest import ASYNCIO_BACKENDS

pytestmark = pytest.mark.anyio

SIZE = 8 * PAGE


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * (SIZE // 256))
    return path


@pytest.fixture
async def rw(data_file: Path) -> AsyncIterator[MmapRaw]:
    async with await MmapRaw.map_raw(data_file) as m:
        yield m


async def read_in_other_process(path: Path, offset: int, length: int) -> bytes:
    """Read the file in a real second process, with os.pread."""
    code = (
        "import os, sys\n"
        f"fd = os.open({str(path)!r}, os.O_RDONLY)\n"
        f"sys.stdout.write(os.pread(fd, {length}, {offset}).hex())\n"
    )
    result = await anyio.run_process([sys.executable, "-c", code])
    return bytes.fromhex(result.stdout.decode())


def dirty_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Dirty:"):
                return int(line.split()[1])
    raise AssertionError("no Dirty line in /proc/meminfo")  # pragma: no cover


# --- mapping ---------------------------------------------------------------------------


async def test_map_path_fd_and_file_object(data_file: Path) -> None:
    expected = data_file.read_bytes()
    async with await MmapRaw.map_raw(data_file) as m:
        assert await m.read(0, SIZE) == expected
        assert (m.mode, m.offset, len(m)) == ("rw", 0, SIZE)
    fd = os.open(data_file, os.O_RDWR)
    try:
        async with await MmapRaw.map_raw(fd, mode="r") as m:
            assert await m.read(5, 3) == expected[5:8]
    finally:
        os.close(fd)  # the map had its own duplicate
    with open(data_file, "rb") as f:
        async with await MmapRaw.map_raw(f, mode="copy") as m:
            assert await m.read(SIZE - 1, 1) == expected[-1:]
    async with await MmapRaw.map_raw(str(data_file).encode(), mode="r") as m:
        assert len(m) == SIZE


@pytest.mark.parametrize("offset", [0, 1, PAGE - 1, PAGE, PAGE + 17, SIZE - 1])
async def test_any_offset(data_file: Path, offset: int) -> None:
    expected = data_file.read_bytes()
    async with await MmapRaw.map_raw(data_file, offset=offset) as m:
        assert len(m) == SIZE - offset
        assert await m.read(0, len(m)) == expected[offset:]
        await m.update_region(0, b"@")
        await m.flush_range(0, 1)
    assert data_file.read_bytes()[offset] == ord("@")
    async with await MmapRaw.map_raw(data_file, offset=offset, length=1) as m:
        assert len(m) == 1


async def test_a_window_past_the_largest_file_offset_is_a_value_error(shm_path: Path) -> None:
    """Regression test (adversary round 46): a window of a 2**63 - 1 byte (sparse, tmpfs)
    file whose last page reaches past 2**63 - 1 raised the kernel's plain
    ``OSError(EOVERFLOW)``, where a sparse map's window of it is a ``ValueError``; a
    resize that would reach there is refused before the file changes."""
    largest = 2**63 - 1
    path = shm_path / "huge"
    with path.open("wb") as f:
        f.truncate(largest)
    last_page = largest - largest % PAGE
    for offset, length in [
        (largest - 1, None),
        (last_page, None),
        (largest - 10_000, None),
        (largest - 2**40, None),
        (last_page - PAGE + 1, PAGE),
    ]:
        with pytest.raises(ValueError, match="largest file offset"):
            await MmapRaw.map_raw(path, offset=offset, length=length)
        with pytest.raises(ValueError, match="largest file offset"):
            anymmap.sync.MmapRaw.map_raw(path, offset=offset, length=length)
    # The last window a map can show ends at the last whole page, and cannot grow past it.
    async with await MmapRaw.map_raw(path, offset=last_page - PAGE, length=PAGE) as m:
        await m.update_region(PAGE - 1, b"E")
        assert await m.read(PAGE - 1, 1) == b"E"
        with pytest.raises(ValueError, match="largest file offset"):
            await m.resize(PAGE + 1)
        assert len(m) == PAGE
        assert await m.read(PAGE - 1, 1) == b"E"
    assert path.stat().st_size == largest


async def test_bad_files(tmp_path: Path, data_file: Path) -> None:
    empty = tmp_path / "empty"
    empty.touch()
    with pytest.raises(InvalidSizeError, match="empty file"):
        await MmapRaw.map_raw(empty)
    with pytest.raises(OutOfBoundsError, match=f"^offset={SIZE} is outside the file of {SIZE}"):
        await MmapRaw.map_raw(data_file, offset=SIZE)
    with pytest.raises(OutOfBoundsError, match=r"^offset=9223372036854775808 is outside"):
        await MmapRaw.map_raw(data_file, offset=2**63)
    with pytest.raises(TypeError, match="bool"):
        await MmapRaw.map_raw(data_file, offset=True)
    with pytest.raises(OutOfBoundsError, match="outside the file of"):
        await MmapRaw.map_raw(data_file, offset=1, length=SIZE)  # shorter than asked
    with pytest.raises(OutOfBoundsError):
        await MmapRaw.map_raw(data_file, offset=-1)
    with pytest.raises(InvalidSizeError):
        await MmapRaw.map_raw(data_file, length=0)
    with pytest.raises(FileNotFoundError):
        await MmapRaw.map_raw(tmp_path / "missing")
    with pytest.raises(ValueError, match="mode"):
        await MmapRaw.map_raw(data_file, mode="w")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await MmapRaw.map_raw(3.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await MmapRaw.map_raw(data_file, fault_safe=1)  # type: ignore[arg-type]
    with pytest.raises(IsADirectoryError):
        await MmapRaw.map_raw(tmp_path)
    fd = os.open(data_file, os.O_RDONLY)
    try:
        with pytest.raises(PermissionError, match="mode='r'"):  # "rw" needs a writable fd
            await MmapRaw.map_raw(fd)
    finally:
        os.close(fd)
    with open(data_file, "rb") as f, pytest.raises(PermissionError, match="mode='r'"):
        await MmapRaw.map_raw(f)
    with pytest.raises(OSError, match="not a file descriptor") as info:
        await MmapRaw.map_raw(2**31)
    assert info.value.errno == errno.EBADF
    data_file.chmod(0o444)
    if os.geteuid() != 0:  # root may write anyway
        with pytest.raises(PermissionError, match="mode='r'"):
            await MmapRaw.map_raw(data_file)


def _memfd_secret() -> int:
    """A ``memfd_secret`` descriptor one page long, or skip."""
    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip("memfd_secret's system call number is known for x86-64 and arm64")
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(447, 0)  # SYS_memfd_secret
    if fd < 0:
        pytest.skip(f"no memfd_secret here: {os.strerror(ctypes.get_errno())}")
    os.ftruncate(fd, PAGE)
    return int(fd)


async def test_memfd_secret_is_refused_by_name(tmp_path: Path) -> None:
    """Regression test (adversary round 29): a ``memfd_secret`` descriptor gave a raw
    ``OSError(ESPIPE)`` from an internal probe (and, mapped, no copy of it could work:
    its pages are out of reach of every system call).  It is refused by name."""
    fd = _memfd_secret()
    try:
        with pytest.raises(UnmappableFileError, match="memfd_secret"):
            await MmapRaw.map_raw(fd, mode="r")
        # (adversary round 30: "it is a regular file; only regular files ... can be mapped")
        with pytest.raises(UnmappableFileError, match="regular file that cannot be opened"):
            await MmapRaw.map_raw(f"/proc/self/fd/{fd}")
        with pytest.raises(UnmappableFileError, match="memfd_secret"):
            await anymmap.MmapRegion.attach_fd(fd)
        async with await anymmap.SparseMapping.new(4 * PAGE) as sparse:
            with pytest.raises(UnmappableFileError, match="memfd_secret"):
                await sparse.map_file(0, PAGE, fd)
            assert [piece.kind for piece in sparse.pieces()] == ["hole"]
    finally:
        os.close(fd)


@pytest.mark.parametrize("mode", ["rw", "r", "copy"])
async def test_what_is_not_a_file_is_refused_by_name(tmp_path: Path, mode: str) -> None:
    """Regression test: a socket, a pipe, /dev/zero and /proc files all said "cannot map
    an empty file"; the error now names what the file is."""
    with pytest.raises(UnmappableFileError, match="it is a character device; only regular files"):
        await MmapRaw.map_raw("/dev/zero", length=PAGE, mode=mode)  # type: ignore[arg-type]
    with pytest.raises(UnmappableFileError, match="/proc"):
        await MmapRaw.map_raw("/proc/self/status", mode="r" if mode == "rw" else mode)  # type: ignore[arg-type]
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(UnmappableFileError, match="it is a FIFO or pipe;"):
            await MmapRaw.map_raw(read_end, mode="r")
    finally:
        os.close(read_end)
        os.close(write_end)
    with socket.socket(socket.AF_UNIX) as sock:
        with pytest.raises(UnmappableFileError, match="socket"):
            await MmapRaw.map_raw(sock, mode="r")
        sock.bind(str(tmp_path / "sock"))
        with pytest.raises(UnmappableFileError, match="socket"):
            await MmapRaw.map_raw(tmp_path / "sock", mode=mode)  # type: ignore[arg-type]
    with pytest.raises(IsADirectoryError):
        await MmapRaw.map_raw(tmp_path, mode=mode)  # type: ignore[arg-type]
    assert issubclass(UnmappableFileError, OSError)


async def test_offset_beyond_4_gib_on_a_sparse_file(tmp_path: Path) -> None:
    path = tmp_path / "sparse.bin"
    far = (5 << 30) + 123
    with open(path, "wb") as f:
        f.truncate(far + PAGE)
        f.seek(far)
        f.write(b"far away")
    async with await MmapRaw.map_raw(path, offset=far) as m:
        assert len(m) == PAGE
        assert await m.read(0, 8) == b"far away"
        await m.update_region(8, b"!")
        await m.flush()
    with open(path, "rb") as f:
        f.seek(far)
        assert f.read(9) == b"far away!"
    assert os.stat(path).st_blocks * 512 < 1 << 20  # still sparse


# --- modes -----------------------------------------------------------------------------


async def test_read_only_map_refuses_writes(data_file: Path) -> None:
    before = data_file.read_bytes()
    async with await MmapRaw.map_raw(data_file, mode="r") as m:
        with pytest.raises(ReadOnlyError):
            await m.update_region(0, b"x")
        with pytest.raises(ReadOnlyError):
            m.update_region_nowait(0, b"x")
        with pytest.raises(ReadOnlyError):
            m.as_mut_slice(0, 1)
        with pytest.raises(ReadOnlyError):
            await m.resize(2 * SIZE)
        with pytest.raises(ReadOnlyError):
            await m.populate(write=True)
        async with m.as_slice(0, 4) as view:
            assert view.readonly
        await m.flush()  # a documented no-op
        await m.populate()
    assert data_file.read_bytes() == before


async def test_copy_map_leaves_the_file_alone(data_file: Path) -> None:
    before = data_file.read_bytes()
    async with await MmapRaw.map_raw(data_file, mode="copy") as m:
        await m.update_region(0, b"private")
        async with m.as_mut_slice(PAGE, 4) as view:
            view[:] = b"mine"
        await m.flush()  # nothing reaches the file
        assert await m.read(0, 7) == b"private"
        assert await m.read(PAGE, 4) == b"mine"
        with pytest.raises(ReadOnlyError):
            await m.resize(2 * SIZE)
    assert data_file.read_bytes() == before
    assert await read_in_other_process(data_file, 0, 7) == before[:7]


# --- durability ------------------------------------------------------------------------


async def test_flush_is_seen_by_another_process(rw: MmapRaw, data_file: Path) -> None:
    await rw.update_region(100, b"durable bytes")
    await rw.flush()
    assert await read_in_other_process(data_file, 100, 13) == b"durable bytes"
    await rw.update_region(3 * PAGE - 3, b"ranged")  # crosses a page boundary
    await rw.flush_range(3 * PAGE - 3, 6)
    assert await read_in_other_process(data_file, 3 * PAGE - 3, 6) == b"ranged"


@pytest.mark.parametrize(
    ("offset", "length"),
    [(1, 1), (PAGE - 1, 2), (PAGE + 100, 3 * PAGE - 50), (0, SIZE), (SIZE - 1, 1), (5, 0)],
)
async def test_unaligned_flush_ranges(rw: MmapRaw, offset: int, length: int) -> None:
    """Regression test: flush of an unaligned range (msync needs page alignment)."""
    await rw.update_region(offset, b"u" * length)
    await rw.flush_range(offset, length)
    await rw.flush_async_range(offset, length)
    assert await rw.read(offset, length) == b"u" * length


async def test_flush_writes_dirty_pages_back(tmp_path: Path) -> None:
    """The kernel's own count of dirty page-cache memory drops when flush() returns."""
    path = tmp_path / "dirty.bin"
    size = 64 << 20
    with open(path, "wb") as f:
        f.truncate(size)
    for wait in (False, True):
        async with await MmapRaw.map_raw(path) as m:
            await m.update_region(0, b"\x01" * size)
            before = dirty_kib()
            if wait:
                await m.flush()
            else:
                await m.flush_async()  # starts writeback: pages leave the dirty state
            after = dirty_kib()
            assert before - after > (size >> 10) // 2, (wait, before, after)


async def test_flush_bounds(rw: MmapRaw) -> None:
    for call in (rw.flush_range, rw.flush_async_range):
        with pytest.raises(OutOfBoundsError):
            await call(SIZE, 1)
        with pytest.raises(OutOfBoundsError):
            await call(-1, 2)
        with pytest.raises(OutOfBoundsError):
            await call(0, -1)
        await call(SIZE, 0)


async def test_a_cancelled_flush_leaves_at_once_and_the_flush_goes_on(tmp_path: Path) -> None:
    """Group commit: a waiter that is cancelled returns at once; the map's committer
    thread flushes its range all the same, and the map stays usable."""
    path = tmp_path / "cancel.bin"
    size = 128 << 20
    with open(path, "wb") as f:
        f.truncate(size)
    async with await MmapRaw.map_raw(path) as m:
        await m.update_region(0, b"\x02" * size)
        assert m.pending_bytes() == size
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(m.flush)
                await wait_until(lambda: bool(m._core._pinners))  # the msync is running
                scope.cancel()
        assert scope.cancelled_caught
        await wait_until(lambda: m.pending_bytes() == 0)  # it went on without the waiter
        assert m._core.commit.msyncs == 1
        await m.update_region(0, b"after")
        assert m.pending_bytes() == 5
        await m.flush_range(0, 5)
        assert m.pending_bytes() == 0
        assert await m.read(0, 5) == b"after"


# --- truncation: faults become errors --------------------------------------------------


def truncate_in_other_process(path: Path, size: int) -> None:
    subprocess.run(
        [sys.executable, "-c", f"import os; os.truncate({str(path)!r}, {size})"], check=True
    )


async def test_every_fault_names_the_first_missing_page_and_why(data_file: Path) -> None:
    """Regression test: ``populate()`` after another process truncated the file reported
    offset 0x0 and "out of space, or an I/O error", while ``read()`` named the page and
    the truncation.  EFAULT is now translated in one place, for every call."""
    async with await MmapRaw.map_raw(data_file) as m:
        truncate_in_other_process(data_file, 4 * PAGE + 100)
        first_missing = 5 * PAGE  # the file's last page ends there
        for call in (
            lambda: m.populate(),
            lambda: m.populate(write=True),
            lambda: m.read(0, SIZE),
            lambda: m.read_into(2 * PAGE, bytearray(SIZE - 2 * PAGE)),
            lambda: m.update_region(0, bytes(SIZE)),
        ):
            with pytest.raises(MappingFaultError) as info:
                await call()
            error = info.value
            assert error.offset == first_missing, error
            assert error.address == m.as_ptr() + first_missing
            assert error.cause == f"the file was truncated to {4 * PAGE + 100} bytes"
            assert error.errno == errno.EFAULT
            assert str(error).startswith(f"[Errno 14] offset {first_missing} of the map")
        with pytest.raises(MappingFaultError) as info:
            await m.read(7 * PAGE + 1, 10)  # starts past the end: its first byte
        assert info.value.offset == 7 * PAGE + 1
        copy = pickle.loads(pickle.dumps(info.value))
        assert (copy.offset, copy.address, copy.cause) == (
            info.value.offset,
            info.value.address,
            info.value.cause,
        )


@pytest.mark.parametrize("mode", ["rw", "r", "copy"])
async def test_truncated_file_raises_instead_of_sigbus(data_file: Path, mode: str) -> None:
    async with await MmapRaw.map_raw(data_file, mode=mode) as m:  # type: ignore[arg-type]
        assert await m.read(0, 4) == bytes(range(4))
        truncate_in_other_process(data_file, PAGE + 10)
        # The first page and the tail of the second (zeros past the end) are still there.
        assert await m.read(0, 4) == bytes(range(4))
        assert await m.read(PAGE + 10, 4) == bytes(4)
        with pytest.raises(MappingFaultError, match="truncated to") as info:
            await m.read(0, SIZE)
        assert info.value.errno == errno.EFAULT
        assert info.value.address == m.as_ptr() + 2 * PAGE  # the first page past the end
        with pytest.raises(MappingFaultError):
            await m.read_into(3 * PAGE, bytearray(10))
        with pytest.raises(MappingFaultError):
            m.read_into_nowait(5 * PAGE, bytearray(10))
        if mode != "r":
            with pytest.raises(MappingFaultError):
                await m.update_region(4 * PAGE, b"into the void")
            with pytest.raises(MappingFaultError):
                m.update_region_nowait(6 * PAGE, b"void")
            with pytest.raises(MappingFaultError):
                await m.populate(write=True)
        with pytest.raises(MappingFaultError):
            await m.populate()
        # still alive, still usable where the file is
        assert len(m) == SIZE
        await m.read_into(PAGE, bytearray(10))


async def test_truncated_file_with_big_copies(data_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    size = 8 << 20
    with open(path, "wb") as f:
        f.truncate(size)
    async with await MmapRaw.map_raw(path) as m:
        truncate_in_other_process(path, 1 << 20)
        with pytest.raises(MappingFaultError):
            await m.read(0, size)  # worker-thread path
        with pytest.raises(MappingFaultError):
            await m.update_region(0, bytes(size))
        assert await m.read(0, 1 << 20) == bytes(1 << 20)


async def test_fault_safe_off_is_still_right_on_a_healthy_file(data_file: Path) -> None:
    async with await MmapRaw.map_raw(data_file, mode="copy", fault_safe=False) as m:
        await m.update_region(10, b"fast")
        assert await m.read(10, 4) == b"fast"
        buf = bytearray(4)
        m.read_into_nowait(10, buf)
        assert buf == b"fast"


# --- resize ----------------------------------------------------------------------------


async def test_resize_grow_and_shrink_keep_data(rw: MmapRaw, data_file: Path) -> None:
    original = data_file.read_bytes()
    await rw.resize(3 * SIZE + 5)
    assert len(rw) == 3 * SIZE + 5
    assert os.path.getsize(data_file) == 3 * SIZE + 5
    assert await rw.read(0, SIZE) == original
    assert await rw.read(SIZE, 2 * SIZE + 5) == bytes(2 * SIZE + 5)
    await rw.update_region(3 * SIZE, b"tail!")
    await rw.flush()
    assert await read_in_other_process(data_file, 3 * SIZE, 5) == b"tail!"
    await rw.resize(PAGE + 1)
    assert os.path.getsize(data_file) == PAGE + 1
    assert await rw.read(0, PAGE + 1) == original[: PAGE + 1]
    with pytest.raises(OutOfBoundsError):
        await rw.read(PAGE + 1, 1)


async def test_resizing_a_window_never_cuts_the_file(data_file: Path) -> None:
    """Regression test: growing a map of the middle of a file truncated it to the map."""
    original = data_file.read_bytes()
    async with await MmapRaw.map_raw(data_file, offset=PAGE + 3, length=10) as m:
        await m.resize(2 * PAGE)  # grows inside the file: the file stays as it is
        assert os.path.getsize(data_file) == SIZE
        await m.resize(5)  # shrinks: the map did not reach the end, the file stays too
        assert os.path.getsize(data_file) == SIZE
        assert await m.read(0, 4) == bytes(range(3, 7))
        await m.resize(SIZE)  # now past the end: the file grows to the map's end
        assert os.path.getsize(data_file) == PAGE + 3 + SIZE
        await m.resize(PAGE)  # reached the end, so shrinking cuts the file back
        assert os.path.getsize(data_file) == 2 * PAGE + 3
    assert data_file.read_bytes() == original[: 2 * PAGE + 3]


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_resize_on_a_full_disk_fails_cleanly(small_tmpfs: Path) -> None:
    path = small_tmpfs / "f.bin"
    path.write_bytes(b"a" * PAGE)
    async with await MmapRaw.map_raw(path) as m:
        with pytest.raises(OSError, match="No space") as info:
            await m.resize(64 << 20)
        assert info.value.errno == errno.ENOSPC
        assert len(m) == PAGE
        assert os.path.getsize(path) == PAGE
        await m.update_region(0, b"still works")  # tmpfs: the mincore path
        assert await m.read(0, 11) == b"still works"
        await m.resize(2 * PAGE)  # what fits still grows
        await m.update_region(PAGE, b"b" * PAGE)  # allocated: no SIGBUS
        assert await m.read(PAGE, 3) == b"bbb"


@pytest.mark.parametrize("advice", [True, False], ids=["madvise", "before-5.14"])
async def test_populate_on_a_full_disk_names_the_first_page_it_could_not_get(
    small_tmpfs: Path, advice: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression test: ``populate()`` of a map of a sparse file larger than its (full)
    file system named the start of the range, offset 0, not the first page the file
    system could not provide.  Both ways of populating (``MADV_POPULATE_*``, and the
    fault-safe reads of kernels before 5.14) now name that page."""
    from anymmap._sys import _linux

    if not advice:
        monkeypatch.setattr(_linux, "_populate_advice_supported", False)
    path = small_tmpfs / "sparse.bin"
    with path.open("wb") as f:
        f.truncate(4 << 20)  # on a 1 MiB file system
    async with await MmapRaw.map_raw(path) as m:
        for write in (True, False):
            with pytest.raises(MappingFaultError, match="out of space") as info:
                await m.populate(write=write)
            error = info.value
            # The pages before it were provided, so the file holds exactly those.
            provided = path.stat().st_blocks * 512
            assert 0 < provided < 4 << 20
            assert error.offset == provided, error
            assert error.address == m.as_ptr() + provided
        with pytest.raises(MappingFaultError) as info:
            await m.populate(provided - PAGE, 2 * PAGE, write=True)
        assert info.value.offset == provided
        with pytest.raises(MappingFaultError) as info:  # (round 63: not the page's start)
            await m.populate(provided + 5, 10, write=True)
        assert info.value.offset == provided + 5
        await m.populate(0, provided, write=True)  # what the file system holds is fine


async def test_constructors_in_a_cancelled_scope_make_nothing(tmp_path: Path) -> None:
    """Regression test (adversary round 63): in a scope already cancelled,
    ``MmapRaw.create``, ``open_or_create`` and ``MmapRegion.create`` went on in their
    worker thread: the file was made and the map returned, and the cancellation came at
    the next ``await``.  They now check first, as ``SparseMapping.new`` and
    ``AnonymousMmap.new`` did: nothing is made."""
    makers: dict[str, Callable[[Path], Awaitable[MmapRaw | anymmap.MmapRegion]]] = {
        "create": lambda path: MmapRaw.create(path, PAGE),
        "open_or_create": lambda path: MmapRaw.open_or_create(path, PAGE),
        "region": lambda path: anymmap.MmapRegion.create(path, PAGE),
    }
    for name, make in makers.items():
        path = tmp_path / name
        with anyio.CancelScope() as scope:
            scope.cancel()
            made = await make(path)
            pytest.fail(f"{name} made {made!r} in a cancelled scope")
        assert scope.cancelled_caught
        assert not path.exists(), name
        async with await make(path):  # and outside it, it makes the file
            assert path.exists()


async def test_sparse_file_on_a_full_disk_is_a_clear_fault(small_tmpfs: Path) -> None:
    """A hole the file system cannot fill is a fault, and the error says why."""
    path = small_tmpfs / "sparse.bin"
    with open(path, "wb") as f:
        f.truncate(4 << 20)  # 4 MiB of holes on a 1 MiB file system
    async with await MmapRaw.map_raw(path) as m:
        with pytest.raises(MappingFaultError, match="could not provide the page"):
            await m.update_region(0, b"x" * (2 << 20))
        assert len(m) == 4 << 20


# --- the event loop stays free ---------------------------------------------------------

BIG = 256 << 20


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.truncate(BIG)
    return path


async def test_loop_lag_during_flush_of_256_mib(big_file: Path) -> None:
    import mmap

    async with await MmapRaw.map_raw(big_file) as m:

        async def dirty() -> None:
            await m.update_region(0, b"\x03" * BIG)

        ours, took = await assert_loop_keeps_running(m.flush, dirty)

    with open(big_file, "r+b") as f, mmap.mmap(f.fileno(), BIG) as naive:
        naive[:] = b"\x04" * BIG
        async with heartbeat() as theirs:
            await anyio.to_thread.run_sync(naive.flush)
    print(
        f"\nflush 256 MiB: {took * 1e3:.0f} ms; worst loop lag {ours.worst * 1e3:.2f} ms "
        f"(to_thread(stdlib mmap.flush): {theirs.worst * 1e3:.1f} ms)"
    )


async def test_loop_lag_reading_256_mib_of_cold_pages(big_file: Path) -> None:
    with open(big_file, "r+b") as f:
        f.write(b"\x05" * BIG)
        f.flush()
        os.fsync(f.fileno())
    buf = bytearray(BIG)
    maps: list[MmapRaw] = []

    async def map_it_cold() -> None:  # (a fresh map each time: mapped pages stay cached)
        for old in maps:
            await old.aclose()
        with open(big_file, "rb") as f:
            os.posix_fadvise(f.fileno(), 0, BIG, os.POSIX_FADV_DONTNEED)
        m = await MmapRaw.map_raw(big_file, mode="r")
        maps[:] = [m]
        assert resident_fraction(m.as_ptr(), BIG) < 0.5
        # A page that is not in memory right now is refused, never faulted in here.  (The
        # kernel's readahead of the last read may still bring pages in meanwhile, from
        # the start: CI, 1 run in ~2,000, the first cold page came in between the look
        # and the copy.  So the cold pages are tried from the end, until one is refused.)
        for page in reversed(range(0, BIG, PAGE)):
            if not resident_fraction(m.as_ptr() + page, 1):
                try:
                    m.read_into_nowait(page, bytearray(PAGE))
                except WouldBlock:
                    break
        else:
            pytest.fail("every page that was cold was copied")

    async def read() -> None:
        await maps[0].read_into(0, buf)

    try:
        ours, took = await assert_loop_keeps_running(read, map_it_cold)
    finally:
        for m in maps:
            await m.aclose()
    assert buf[::PAGE] == b"\x05" * (BIG // PAGE)
    print(f"\ncold read 256 MiB: {took * 1e3:.0f} ms; worst loop lag {ours.worst * 1e3:.2f} ms")


async def test_warm_nowait_read(rw: MmapRaw) -> None:
    buf = bytearray(PAGE)
    rw.read_into_nowait(PAGE, buf)
    assert buf == bytes(range(256)) * (PAGE // 256)


async def test_options_map_files_too(data_file: Path) -> None:
    opts = anymmap.MmapOptions().len(PAGE).populate(True)
    async with await opts.map_raw(data_file, offset=PAGE, mode="r") as m:
        assert len(m) == PAGE
        assert resident_fraction(m.as_ptr(), PAGE) == 1.0
        assert await m.read(0, 2) == b"\x00\x01"
    with anymmap.sync.MmapOptions().map_raw(data_file) as s:
        assert len(s) == SIZE


async def test_sync_twin(data_file: Path) -> None:
    with anymmap.sync.MmapRaw.map_raw(data_file) as m:
        m.update_region(0, b"sync")
        m.flush_range(0, 4)
        m.flush_async()
        m.flush_async_range(0, 4)
        m.flush()
        m.resize(2 * SIZE)
        assert (m.mode, m.offset, len(m)) == ("rw", 0, 2 * SIZE)
        truncate_in_other_process(data_file, PAGE)
        with pytest.raises(MappingFaultError):
            m.read(0, 2 * PAGE + 1)
    assert data_file.read_bytes()[:4] == b"sync"


@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS)
async def test_native_cancel_wins_over_a_failing_worker(big_file: Path) -> None:
    """Regression test: a task.cancel() during a worker copy that then fails is not lost."""
    import asyncio

    async with await MmapRaw.map_raw(big_file, mode="r") as m:
        truncate_in_other_process(big_file, BIG - PAGE)
        buf = bytearray(BIG)
        causes: list[BaseException | None] = []

        async def read() -> None:
            try:
                await m.read_into(0, buf)  # worker thread, then EFAULT
            except asyncio.CancelledError as exc:
                causes.append(exc.__cause__)  # (Python 3.10 tasks drop it on the way out)
                raise

        task = asyncio.ensure_future(read())
        await wait_until(lambda: sum(m._core._pinners.values()) == 1)  # the worker is copying
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(causes) == 1
        assert isinstance(causes[0], MappingFaultError)
        assert m.lock.statistics().readers == 0


async def test_a_descriptor_opened_with_o_direct(data_file: Path) -> None:
    """Regression test: read(2) on an O_DIRECT descriptor wants aligned I/O (EINVAL)."""
    fd = os.open(data_file, os.O_RDWR | os.O_DIRECT)
    try:
        async with await MmapRaw.map_raw(fd) as m:
            assert await m.read(5, 100) == data_file.read_bytes()[5:105]
            buf = bytearray(10)
            m.read_into_nowait(PAGE + 3, buf)
            await m.update_region(7, b"direct")
            await m.flush()
    finally:
        os.close(fd)
    assert data_file.read_bytes()[7:13] == b"direct"


async def test_o_direct_turned_on_after_the_map_was_made(data_file: Path) -> None:
    """Regression test (adversary round 73): a map made from the caller's descriptor
    shares its status flags, and once the caller turned ``O_DIRECT`` on, every read of
    the map (sync, ``*_nowait``, awaited) failed with a bare ``EINVAL``: read(2) then
    wants aligned buffers.  Reads go through the memory from then on."""
    want = data_file.read_bytes()
    fd = os.open(data_file, os.O_RDWR)
    try:
        with anymmap.sync.MmapRaw.map_raw(fd) as twin:
            async with await MmapRaw.map_raw(fd) as m:
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
                for offset, n in ((0, PAGE), (3, 10), (5, PAGE + 7)):
                    assert twin.read(offset, n) == want[offset : offset + n]
                    assert await m.read(offset, n) == want[offset : offset + n]
                    buf = bytearray(n)
                    m.read_into_nowait(offset, buf)
                    assert buf == want[offset : offset + n]
                await m.update_region(7, b"direct")
                assert twin.read(7, 6) == b"direct"
    finally:
        os.close(fd)


def _bytes_read_from_storage() -> int:
    """What this process has read from storage so far (``/proc/self/io``)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("read_bytes:"))


async def test_nowait_reads_after_o_direct_was_turned_on_stay_in_memory(tmp_path: Path) -> None:
    """Regression test (adversary round 74): round 73's fix fell back to memory copies
    only when a read failed with ``EINVAL``; a page-aligned read through the caller's
    descriptor with ``O_DIRECT`` turned on succeeds, as a read from the device, so every
    ``read_into_nowait`` of pages in memory waited for the disk on the loop's thread.
    Such maps look at the flag before each read.  (The control: a direct read of the
    same descriptor counts as read from storage, so the measure can see one.)"""
    path = tmp_path / "f"
    path.write_bytes(os.urandom(1 << 20))
    fd = os.open(path, os.O_RDWR)
    try:
        async with await MmapRaw.map_raw(fd) as m:
            await m.populate()
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
            with mmap.mmap(-1, 1 << 20) as aligned:  # (a page-aligned buffer)
                before = _bytes_read_from_storage()
                try:
                    os.preadv(fd, [aligned], 0)
                except OSError:
                    pytest.skip("no O_DIRECT reads on this file system")
                if _bytes_read_from_storage() == before:
                    pytest.skip("this file system's direct reads are not counted as I/O")
                before = _bytes_read_from_storage()
                for _ in range(3):
                    m.read_into_nowait(0, aligned)
                    await m.read_into(0, aligned)
                assert _bytes_read_from_storage() == before
                assert aligned[:] == path.read_bytes()
    finally:
        os.close(fd)


_LEASED = """
    import fcntl, os, anyio, anymmap, anymmap.sync

    path = os.path.join(os.environ["TMPDIR"], "f")
    with open(path, "wb") as f:
        f.write(b"L" * (16 << 12))
    fd = os.open(path, os.O_RDWR)
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)  # (SIGIO left as it is: it kills)
    with anymmap.sync.MmapRaw.map_raw(fd, prefill="zeros") as m:
        m.resize(32 << 12)
        m.resize(8 << 12)

    async def main():
        async with await anymmap.MmapRegion.attach_fd(fd) as region:
            await region.resize(64 << 12)

    anyio.run(main)
    assert fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_WRLCK
    print("ok")
"""


def test_resizing_a_map_of_a_leased_descriptor_keeps_the_lease() -> None:
    """Regression test (adversary round 74): a growth or a cut of a map of the caller's
    descriptor took its turn on a second open of the file, and an open, even one that
    fails at once (``O_NONBLOCK``), starts breaking a lease held through that
    descriptor: the caller got SIGIO, which killed it (3 of 3 runs).  Such a change of
    size takes no turn now, as mapping such a descriptor does not."""
    check_child(_LEASED, timeout=60)


_O_DIRECT_TRUNCATED = """
    import os, sys
    import anymmap.sync
    from anymmap import MappingFaultError

    path = os.path.join(os.environ["TMPDIR"], "f")
    with open(path, "wb") as f:
        f.write(b"x" * (4 << 12))
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    m = anymmap.sync.MmapRaw.map_raw(fd, fault_safe=False)
    os.truncate(path, 4096)
    try:
        m.read(2 << 12, 10)
    except MappingFaultError as exc:
        print("ok" if exc.offset == 2 << 12 else exc, flush=True)
"""


def test_reads_of_a_shared_map_on_an_o_direct_descriptor_stay_fault_safe() -> None:
    """Regression test: reads of an ``"rw"`` or ``"r"`` map are fault-safe whatever
    ``fault_safe`` says (README, "Faults"), but with the map's descriptor opened with
    ``O_DIRECT`` they went through the memory unprotected: a read of a truncated page
    was SIGBUS.  It raises ``MappingFaultError`` now."""
    check_child(_O_DIRECT_TRUNCATED, timeout=60)


def _chattr(change: str, path: Path) -> bool:
    """``chattr change path``; whether it worked (False without chattr)."""
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", change, str(path)], check=False).returncode == 0


async def test_a_write_an_immutable_file_refuses_says_so(tmp_path: Path) -> None:
    """Regression test (adversary round 73): a write into a page of a file made
    immutable since (``chattr +i``: the kernel refuses the page's first write) raised
    ``MappingFaultError`` saying "out of space, or an I/O error"; it names the cause."""
    path = tmp_path / "f"
    async with await MmapRaw.create(path, 4 * PAGE) as m:
        await m.flush()  # (the pages clean: the next write asks the file system)
        if not _chattr("+i", path):
            pytest.skip("no chattr +i here (not root, or no such attribute on this file system)")
        try:
            with pytest.raises(MappingFaultError, match=r"immutable \(chattr \+i\)") as info:
                await m.update_region(PAGE + 5, b"x")
            assert info.value.offset == PAGE + 5
            assert await m.read(PAGE, 8) == bytes(8)  # (reads are not refused)
        finally:
            assert _chattr("-i", path)


async def test_closed_read_only_map_says_closed(data_file: Path) -> None:
    """Regression test: a closed "r" map answered writes with ReadOnlyError."""
    m = await MmapRaw.map_raw(data_file, mode="r")
    await m.aclose()
    for call in (
        lambda: m.update_region(0, b"x"),
        lambda: m.resize(2 * SIZE),
        lambda: m.flush(),
        lambda: m.read(0, 1),
    ):
        with pytest.raises(anymmap.ClosedMapError):
            await call()
    with pytest.raises(anymmap.ClosedMapError):
        m.as_mut_slice(0, 1)


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Path]:
    backing = tmp_path / "disk.img"
    backing.write_bytes(bytes(range(256)) * (4 << 12))  # 4 MiB
    made = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, check=False
    )
    if made.returncode != 0:
        pytest.skip(f"cannot attach a loop device here: {made.stderr.decode().strip()}")
    device = Path(made.stdout.decode().strip())
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", str(device)], check=False)


async def test_block_device(loop_device: Path) -> None:
    """A block device's st_size is 0; its size is where it ends."""
    async with await MmapRaw.map_raw(loop_device, mode="r") as m:
        assert len(m) == 4 << 20
        assert await m.read(PAGE + 1, 3) == bytes([1, 2, 3])


async def test_resizing_a_block_device_map(loop_device: Path) -> None:
    """Regression test: shrinking a map of a block device tried to cut the device, failed,
    and left the map shrunk anyway.  A device is never cut; it cannot grow either."""
    async with await MmapRaw.map_raw(loop_device) as m:
        await m.resize(PAGE)
        assert len(m) == PAGE
        assert await m.read(1, 3) == bytes([1, 2, 3])
        with pytest.raises(OutOfBoundsError, match="outside the device"):
            await m.resize(8 << 20)
        assert len(m) == PAGE
        await m.resize(4 << 20)
        assert await m.read((4 << 20) - 1, 1) == bytes([255])
    fd = os.open(loop_device, os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_END) == 4 << 20
    finally:
        os.close(fd)


async def test_a_window_past_the_end_of_a_block_device_says_device(loop_device: Path) -> None:
    """A sparse map's window reaching past the end of a device faults there, and the
    error names the device, not a file (adversary round 74: "the end of the file")."""
    async with await anymmap.SparseMapping.new(4 * PAGE) as m:
        await m.map_file(0, 2 * PAGE, loop_device, (4 << 20) - PAGE)
        assert await m.read(PAGE - 1, 1) == bytes([255])
        with pytest.raises(MappingFaultError, match="past the end of the device") as info:
            await m.read(PAGE - 1, 2)
        assert info.value.offset == PAGE


async def test_a_block_device_map_of_the_callers_descriptor_keeps_its_offset(
    loop_device: Path,
) -> None:
    """Regression test (adversary round 55): a block device's size was read with
    ``lseek(SEEK_END)`` on the map's ``dup`` of the caller's descriptor, whose offset
    it shares: the caller's next read, at the end of the device, read nothing."""
    fd = os.open(loop_device, os.O_RDWR)
    try:
        os.lseek(fd, PAGE, os.SEEK_SET)
        async with await MmapRaw.map_raw(fd) as m:
            assert len(m) == 4 << 20
            await m.resize(PAGE)
            await m.resize(4 << 20)
            assert await m.read((4 << 20) - 1, 1) == bytes([255])
            assert os.lseek(fd, 0, os.SEEK_CUR) == PAGE
        assert os.read(fd, 3) == bytes([0, 1, 2])
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "call",
    [
        lambda: anymmap.MmapRaw.create("", 4096),
        lambda: anymmap.MmapRaw.create(b"", 4096),
        lambda: anymmap.MmapRaw.open_or_create("", 4096),
        lambda: anymmap.MmapRegion.create("", 4096),
        lambda: anymmap.MmapRegion.attach(""),
    ],
)
async def test_an_empty_path_names_no_file(call: Any) -> None:
    """Regression test (adversary round 46): the empty path was anchored at the current
    directory, and ``create("")`` raised ``IsADirectoryError`` naming it; ``map_raw("")``
    already raised ``FileNotFoundError``, as ``open("")`` does."""
    with pytest.raises(FileNotFoundError):
        await call()
