"""MmapRegion: shared memory between real processes, growing without moving, safe against
a hostile peer.  The peers are real second processes driven over pipes, never sleeps."""

from __future__ import annotations

import dataclasses
import gc
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import anyio.abc
import numpy as np
import pytest
from anyio import wait_all_tasks_blocked

import anymmap
import anymmap.sync
from anymmap import (
    ClosedMapError,
    FileCleanup,
    InvalidSizeError,
    MappingFaultError,
    MmapRegion,
    UnmappableFileError,
)

from ._child import check_child, describe, run_child
from ._helpers import PAGE, wait_until

pytestmark = pytest.mark.anyio

MiB = 1 << 20
GiB = 1 << 30

# A peer process: attaches (by path or by an inherited fd) and answers one command per
# line on stdin with one line on stdout.
_PEER = textwrap.dedent(
    """
    import os, sys
    import anymmap.sync

    how, what = sys.argv[1], sys.argv[2]
    trust = len(sys.argv) > 3
    if how == "fd":
        region = anymmap.sync.MmapRegion.attach_fd(int(what))
    else:
        region = anymmap.sync.MmapRegion.attach(what, trust_others=trust)
    print("attached", len(region), region.as_ptr(), flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        try:
            if cmd == "read":
                out = region.read(int(args[0]), int(args[1])).hex()
            elif cmd == "write":
                region.update_region(int(args[0]), bytes.fromhex(args[1]))
                out = "ok"
            elif cmd == "remap":
                out = f"{region.check_and_remap()} {len(region)} {region.as_ptr()}"
            elif cmd == "truncate":
                os.truncate(region.fileno(), int(args[0]))
                out = "ok"
            elif cmd == "spin":  # write forever, until killed
                print("spinning", flush=True)
                i = 0
                while True:
                    region.update_region(0, i.to_bytes(8, "little") * 512)
                    i += 1
            else:
                out = "?"
        except Exception as exc:
            out = f"error {type(exc).__name__}: {exc}"
        print(out, flush=True)
    """
)


class Peer:
    """A second process attached to a region."""

    def __init__(self, *args: str, pass_fds: tuple[int, ...] = ()) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _PEER, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            pass_fds=pass_fds,
        )
        first = self.line()
        assert first.startswith("attached"), first + self.errors()
        _, length, addr = first.split()
        self.length, self.addr = int(length), int(addr)

    def line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def errors(self) -> str:
        assert self.process.stderr is not None
        self.process.kill()
        return self.process.stderr.read()

    def ask(self, command: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.line()

    def close(self) -> None:
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        self.process.wait(30)


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    started: list[Peer] = []
    yield started
    for peer in started:
        peer.close()


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[MmapRegion]:
    async with await MmapRegion.create(tmp_path / "region", 4 * PAGE) as region:
        yield region


# --- sharing ------------------------------------------------------------------------------


async def test_host_and_guest_see_each_others_bytes(
    host: MmapRegion, tmp_path: Path, peers: list[Peer]
) -> None:
    guest = Peer("path", str(tmp_path / "region"))
    peers.append(guest)
    assert guest.length == 4 * PAGE
    await host.update_region(10, b"from the host")
    assert bytes.fromhex(guest.ask("read 10 13")) == b"from the host"
    assert guest.ask(f"write {PAGE} {b'from the guest'.hex()}") == "ok"
    assert await host.read(PAGE, 14) == b"from the guest"
    region = host.region()
    assert region.length == 4 * PAGE
    assert region.address == host.as_ptr()
    buf = bytearray(14)
    region.read_into(PAGE, buf)
    assert buf == b"from the guest"


async def test_growth_from_1_to_16_gib_never_moves_either_base(
    tmp_path: Path, peers: list[Peer]
) -> None:
    """The host grows the region 1 GiB at a time; a guest process follows with
    check_and_remap and reads each new tail.  Neither base address ever changes."""
    async with await MmapRegion.create(tmp_path / "big", GiB, max_size=16 * GiB) as host:
        guest = Peer("path", str(tmp_path / "big"))
        peers.append(guest)
        base = host.as_ptr()
        region = host.region()
        await host.update_region(0, b"first page")
        # A NumPy array over an earlier borrow, kept on purpose past the borrow's end:
        # BorrowError, and the memory under it stays mapped; growth never moves it.
        with pytest.raises(anymmap.BorrowError):
            async with host.as_slice(0, 10) as view:
                array = np.frombuffer(view, dtype=np.uint8)
        for step in range(2, 17):
            await host.resize(step * GiB)
            expected = f"tail of {step:2d} GiB".encode()
            tail = step * GiB - len(expected)
            await host.update_region(tail, expected)
            assert guest.ask("remap") == f"True {step * GiB} {guest.addr}"
            assert bytes.fromhex(guest.ask(f"read {tail} {len(expected)}")) == expected
            assert host.as_ptr() == base
            assert array.tobytes() == b"first page"
        del array
        assert guest.ask("remap") == f"False {16 * GiB} {guest.addr}"
        assert region.address == base  # a Region taken before every growth
        buf = bytearray(10)
        region.read_into(0, buf)
        assert buf == b"first page"
        with pytest.raises(InvalidSizeError, match="max_size"):
            await host.resize(16 * GiB + 1)


async def test_check_and_remap_works_while_the_guest_borrows(
    host: MmapRegion, tmp_path: Path
) -> None:
    async with await MmapRegion.attach(tmp_path / "region") as guest:
        async with guest.as_slice(0, 4) as view:
            await host.resize(8 * PAGE)
            assert await guest.check_and_remap()  # no write lock needed: only pages added
            assert len(guest) == 8 * PAGE
            assert bytes(view) == bytes(4)
        assert not await guest.check_and_remap()


async def test_a_nowait_write_into_a_fresh_region_in_dev_shm_goes_through(
    shm_path: Path,
) -> None:
    """Regression test (adversary round 29): the first write into each page of a region
    on tmpfs (its blocks allocated, never written) raised ``WouldBlock`` "it would be
    read from the disk", although tmpfs has no disk to wait for.  Such pages take the
    write at once; a file on disk still waits (below)."""
    region = await MmapRegion.create(shm_path / "region", 64 * PAGE)
    raw = await anymmap.MmapRaw.create(shm_path / "raw", 64 * PAGE)
    async with region, raw:
        for m in (region, raw):
            m.update_region_nowait(7 * PAGE + 3, b"first")
            assert await m.read(7 * PAGE + 3, 5) == b"first"
            m.update_region_nowait(0, b"\1" * 64 * PAGE)  # every page
            assert await m.read(0, 64 * PAGE) == b"\1" * 64 * PAGE


async def test_resize_rules(host: MmapRegion, tmp_path: Path) -> None:
    await host.resize(4 * PAGE)  # the same size: a no-op
    with pytest.raises(ValueError, match="only grows"):
        await host.resize(PAGE)
    with pytest.raises(InvalidSizeError):
        await host.resize(0)
    await host.resize(4 * PAGE + 7)  # not page-aligned: fine
    assert len(host) == 4 * PAGE + 7
    assert os.path.getsize(tmp_path / "region") == 4 * PAGE + 7
    async with await MmapRegion.attach(tmp_path / "region", max_size=8 * PAGE) as small:
        await host.resize(9 * PAGE)
        for _ in range(2):  # (and again: nothing of the growth is mapped)
            with pytest.raises(InvalidSizeError, match="max_size"):
                await small.check_and_remap()
            assert len(small) == 4 * PAGE + 7
    with pytest.raises(InvalidSizeError, match="larger than max_size"):
        await MmapRegion.attach(tmp_path / "region", max_size=PAGE)


# --- creating and attaching safely ----------------------------------------------------------


async def test_create_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        async with await MmapRegion.create(tmp_path / "r", PAGE):
            mode = stat.S_IMODE(os.stat(tmp_path / "r").st_mode)
    finally:
        os.umask(old)
    assert mode == 0o600


async def test_create_refuses_what_exists_and_replace_never_follows_a_link(
    tmp_path: Path,
) -> None:
    existing = tmp_path / "existing"
    existing.write_bytes(b"keep me")
    target = tmp_path / "target"
    target.write_bytes(b"victim")
    link = tmp_path / "link"
    link.symlink_to(target)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    for path in (existing, link, dangling):
        with pytest.raises(FileExistsError, match="replace=True"):
            await MmapRegion.create(path, PAGE)
    assert existing.read_bytes() == b"keep me"
    assert not (tmp_path / "nowhere").exists()
    async with await MmapRegion.create(link, PAGE, replace=True) as region:
        assert not link.is_symlink()  # the link itself was replaced
        assert target.read_bytes() == b"victim"  # ... and its target untouched
        await region.update_region(0, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "existing", "target"]
    with pytest.raises(InvalidSizeError):
        await MmapRegion.create(tmp_path / "zero", 0)
    assert not (tmp_path / "zero").exists()


async def test_a_failed_replace_leaves_the_old_file(tmp_path: Path) -> None:
    """Regression test (adversary round 12): ``create(replace=True)`` renamed its new file
    over the old one before it mapped it, so a bad ``max_size`` (or any failure to map)
    had already destroyed the file it was to replace."""
    path = tmp_path / "region"
    path.write_bytes(b"precious" * 512)
    for max_size, error in [(PAGE, InvalidSizeError), ("bogus", TypeError), (-1, ValueError)]:
        with pytest.raises(error):
            await MmapRegion.create(path, 1 << 20, replace=True, max_size=max_size)  # type: ignore[arg-type]
        assert path.read_bytes() == b"precious" * 512
        assert [p.name for p in tmp_path.iterdir()] == ["region"]  # no temporary left
    async with await MmapRegion.create(path, 1 << 20, replace=True) as region:
        assert len(region) == 1 << 20
    assert not path.exists()  # the owner deleted it


async def test_replace_never_replaces_a_device_fifo_socket_or_directory(
    tmp_path: Path,
) -> None:
    """Regression test (adversary round 50): ``create(replace=True)`` renamed its new file
    over whatever the path named (a block or character device node, a FIFO, a live
    UNIX socket), and the owned region deleted the path at close: the node was gone
    for good (the host's ``/dev/loop0``, once).  Only a regular file or a symbolic
    link is replaced; anything else is a ``FileExistsError`` that says what is there,
    with or without ``replace``."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    directory = tmp_path / "dir"
    directory.mkdir()
    listener = socket.socket(socket.AF_UNIX)
    sock = tmp_path / "sock"
    listener.bind(str(sock))
    entries = {fifo: "FIFO or pipe", directory: "directory", sock: "socket"}
    device = tmp_path / "null"
    try:  # (a node of /dev/null's numbers; root only)
        os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        entries[device] = "character device"
    except PermissionError:
        pass
    try:
        for path, kind in entries.items():
            before = os.lstat(path)
            with pytest.raises(FileExistsError, match=f"is a {kind}: replace=True replaces"):
                await MmapRegion.create(path, PAGE, replace=True)
            with pytest.raises(FileExistsError, match=re.escape(f"(a {kind}), which replace")):
                await MmapRegion.create(path, PAGE)
            after = os.lstat(path)
            assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in entries)
    finally:
        listener.close()


async def test_replace_takes_a_name_as_long_as_the_file_system_allows(tmp_path: Path) -> None:
    """Regression test (adversary round 50): ``create(replace=True)`` built its file
    under the path's name plus 22 characters, so a legal name of 234 to 255 bytes
    failed with ``ENAMETOOLONG``, naming a path the caller never gave."""
    path = tmp_path / ("r" * os.pathconf(tmp_path, "PC_NAME_MAX"))
    for _ in range(2):  # (nothing there, then the region's own file)
        async with await MmapRegion.create(path, PAGE, FileCleanup.MANUAL, replace=True) as r:
            await r.update_region(0, b"x")
            r.release_ownership()
        assert path.read_bytes()[:1] == b"x"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left


async def test_create_on_a_full_disk_fails_at_once(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mounted = await anyio.run_process(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=False
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        with pytest.raises(OSError, match="No space") as info:
            await MmapRegion.create(small / "r", 8 * MiB)
        assert info.value.errno == 28
        assert list(small.iterdir()) == []  # nothing left behind
        async with await MmapRegion.create(small / "r", 512 * 1024) as region:
            with pytest.raises(OSError, match="No space"):
                await region.resize(4 * MiB)
            assert len(region) == 512 * 1024
    finally:
        await anyio.run_process(["umount", "-l", str(small)], check=False)


async def test_attach_refuses_what_it_should(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(bytes(PAGE))
    target.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(OSError, match="symbolic link") as info:
        await MmapRegion.attach(link)
    assert info.value.errno == 40  # ELOOP
    with pytest.raises(IsADirectoryError):
        await MmapRegion.attach(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with anyio.fail_after(10), pytest.raises(UnmappableFileError, match="FIFO"):
        await MmapRegion.attach(fifo)
    empty = tmp_path / "empty"
    empty.touch()
    empty.chmod(0o600)
    with pytest.raises(InvalidSizeError, match="empty"):
        await MmapRegion.attach(empty)
    # (adversary round 29: "it is a block device; only regular files and block devices")
    with pytest.raises(UnmappableFileError, match="character device; only regular files can"):
        await MmapRegion.attach("/dev/zero")
    target.chmod(0o666)
    with pytest.raises(PermissionError, match="trust_others"):
        await MmapRegion.attach(target)
    async with await MmapRegion.attach(target, trust_others=True) as region:
        assert len(region) == PAGE
    target.chmod(0o600)
    if os.geteuid() == 0:  # as root, give the file to another user
        os.chown(target, 65534, -1)
        with pytest.raises(PermissionError, match="belongs to user 65534"):
            await MmapRegion.attach(target)
        async with await MmapRegion.attach(target, trust_others=True):
            pass


# --- cleanup -----------------------------------------------------------------------------------


async def test_manual_cleanup_deletes_on_the_owners_close(tmp_path: Path) -> None:
    path = tmp_path / "r"
    region = await MmapRegion.create(path, PAGE)
    guest = await MmapRegion.attach(path)
    assert region.owns_file
    assert not guest.owns_file
    await guest.aclose()
    assert path.exists()  # an attached region never deletes
    await region.aclose()
    assert not path.exists()

    region = await MmapRegion.create(path, PAGE)
    region.release_ownership()
    await region.aclose()
    assert path.exists()  # released: kept
    path.unlink()

    region = await MmapRegion.create(path, PAGE)
    path.unlink()
    path.write_bytes(b"someone else's")  # a peer replaced the file
    await region.aclose()
    assert path.read_bytes() == b"someone else's"  # never deleted


async def test_manual_cleanup_of_a_relative_path_survives_a_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression test (adversary round 19): a region created with a relative path was
    deleted through that path at close, resolved against the directory current then:
    after a ``chdir`` its file stayed behind (and a file of that name in the new
    directory was spared only by the identity check)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    region = await MmapRegion.create("r", PAGE)
    monkeypatch.chdir(tmp_path / "b")
    (tmp_path / "b" / "r").write_bytes(b"another file of that name")
    await region.aclose()
    assert not (tmp_path / "a" / "r").exists()
    assert (tmp_path / "b" / "r").read_bytes() == b"another file of that name"


async def test_an_attached_region_can_take_ownership(tmp_path: Path) -> None:
    """Regression test (adversary review): ``take_ownership()`` on a region attached by
    path did nothing (``owns_file`` stayed False and the file outlived every close),
    though the README says it decides whether closing deletes the file.  By path it
    works; by descriptor there is no path to delete, and it says so."""
    path = tmp_path / "handed-over"
    creator = await MmapRegion.create(path, PAGE)
    creator.release_ownership()  # the creator hands the file to its peer
    peer = await MmapRegion.attach(path)
    assert (peer.path, peer.owns_file) == (str(path), False)
    peer.take_ownership()
    assert peer.owns_file
    by_fd = await MmapRegion.attach_fd(creator.fileno())
    assert by_fd.path is None
    with pytest.raises(TypeError, match="fd must be a file descriptor or have fileno"):
        await MmapRegion.attach_fd(str(path))  # type: ignore[arg-type]  # (said "a path")
    with pytest.raises(ValueError, match="descriptor"):
        by_fd.take_ownership()
    by_fd.release_ownership()  # (nothing to release: fine)
    await by_fd.aclose()
    await creator.aclose()
    assert path.exists()
    await peer.aclose()
    assert not path.exists()


async def test_auto_cleanup_unlinks_at_once_and_peers_attach_by_fd(
    tmp_path: Path, peers: list[Peer]
) -> None:
    path = tmp_path / "auto"
    async with await MmapRegion.create(path, 2 * PAGE, FileCleanup.AUTO) as region:
        assert not path.exists()
        assert region.path == str(path)
        await region.update_region(0, b"by fd")
        fd = region.fileno()
        guest = Peer("fd", str(fd), pass_fds=(fd,))
        peers.append(guest)
        assert bytes.fromhex(guest.ask("read 0 5")) == b"by fd"
        async with await MmapRegion.attach_fd(fd) as same:
            assert await same.read(0, 5) == b"by fd"
    assert list(tmp_path.iterdir()) == []


async def test_a_region_dropped_without_closing_deletes_what_it_owns(tmp_path: Path) -> None:
    path = tmp_path / "dropped"
    region = await MmapRegion.create(path, PAGE)
    with pytest.warns(ResourceWarning, match="unclosed MmapRegion"):
        del region
    gc.collect()
    await wait_until(lambda: not path.exists())


_MADE_AS_THE_INTERPRETER_EXITS = """
    import atexit, os, sys, threading

    folder, when = sys.argv[1:]
    go, done = threading.Event(), threading.Event()
    said = []

    def last():
        go.set()
        done.wait(20)
        print(*said, sep="\\n")
        print("ok")

    if when == "after":  # (exit handlers run last registered first)
        atexit.register(last)
    from anymmap import FileCleanup
    from anymmap.sync import MmapRegion
    if when == "before":
        atexit.register(last)

    early = MmapRegion.create(os.path.join(folder, "early"), 4096)
    with open(os.path.join(folder, "peer's"), "wb") as f:
        f.write(bytes(4096))

    def attempt(what, call):
        try:
            call()
            said.append(f"{what}: done")
        except RuntimeError as exc:
            said.append(f"{what}: {exc}")

    def daemon():
        go.wait()
        keep = []
        attempt("late", lambda: keep.append(MmapRegion.create(os.path.join(folder, "late"), 4096)))
        path = os.path.join(folder, "auto")
        attempt("auto", lambda: keep.append(MmapRegion.create(path, 4096, FileCleanup.AUTO)))
        keep.append(MmapRegion.attach(os.path.join(folder, "peer's")))
        attempt("take_ownership", keep[-1].take_ownership)
        done.set()
        threading.Event().wait()  # frozen by the exit with its regions open

    threading.Thread(target=daemon, daemon=True).start()
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_regions_made_by_a_daemon_thread_as_the_interpreter_exits_leave_no_file(
    tmp_path: Path, when: str
) -> None:
    """Regression test (adversary round 64): the exit deleted the files regions own in
    one pass over the finalizers (``weakref.finalize``'s), alongside the daemon threads,
    after which a finalizer never runs.  A daemon thread's region made during or after
    that pass kept its file for good (18 of 20 runs of a thread that creates and closes
    regions in a loop), and so did an AUTO region's path, unlinked by calling the
    finalizer.  The exit now deletes them under a lock that making and owning take:
    what a thread made before (``before``: an exit handler of the program's that runs
    before anymmap's) is deleted; after it, making or owning a region file is refused."""
    out = check_child(_MADE_AS_THE_INTERPRETER_EXITS, str(tmp_path), when)
    said = out.splitlines()[:-1]
    if when == "before":
        assert said == ["late: done", "auto: done", "take_ownership: done"]
        assert list(tmp_path.iterdir()) == []  # (the peer's file too: it was taken over)
    else:
        refusal = "while the interpreter exits: its exit has deleted the region files"
        assert [line.split(":")[0] for line in said] == ["late", "auto", "take_ownership"]
        assert all(refusal in line for line in said), said
        assert [p.name for p in tmp_path.iterdir()] == ["peer's"]


_CLOSED_AFTER_THE_EXIT_BY_A_LATER_HANDLER = """
    import atexit, os, sys, threading, time

    go, got = threading.Event(), threading.Event()

    def last():  # (registered before anymmap's: runs after it)
        go.set()
        assert got.wait(10)
        region.close()
        kept.close()
        print("ok")

    atexit.register(last)
    from anymmap._core import _region
    from anymmap.sync import MmapRegion

    def holder():  # as a daemon thread that the exit froze as it took the lock
        go.wait()
        _region._OWNED_LOCK.acquire()
        got.set()
        time.sleep(3600)

    # (Started now: CPython 3.12 starts no thread in an exit handler.)
    threading.Thread(target=holder, daemon=True).start()

    region = MmapRegion.create(os.path.join(sys.argv[1], "owned"), 4096)
    kept = MmapRegion.create(os.path.join(sys.argv[1], "kept"), 4096)
    kept.release_ownership()
"""


def test_a_close_after_the_exit_deleted_the_files_never_waits_for_a_thread(
    tmp_path: Path,
) -> None:
    """Regression test (review of the round-64 fix): once the exit has deleted the files
    regions owned, closing a region (from a later exit handler, or a ``__del__`` run by
    the interpreter's finalization) must not take the ownership lock: a daemon thread
    that the exit froze as it took it would keep it for good, and the close waited for
    ever.  (The thread here takes it by hand and sleeps, as a frozen one would.)"""
    check_child(_CLOSED_AFTER_THE_EXIT_BY_A_LATER_HANDLER, str(tmp_path), timeout=20)
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]


_A_DAEMON_CLOSES_AS_A_CYCLE_CLOSES_AT_FINALIZATION = """
    import os, sys, threading, time
    from anymmap.sync import MmapRegion

    folder = sys.argv[1]
    pool = [MmapRegion.create(os.path.join(folder, f"p{i}"), 4096) for i in range(600)]

    def closer():
        while pool:
            pool.pop().close()

    threading.Thread(target=closer, daemon=True).start()

    class Resource:
        def __init__(self):
            self.region = MmapRegion.create(os.path.join(folder, "main"), 4096)

        def __del__(self):
            self.region.close()

    res = Resource()
    res.me = res  # (a cycle: freed by the interpreter's last collection)
    del res
    time.sleep(0.01)
    print("ok")
"""


def test_a_region_closed_at_finalization_beside_a_closing_daemon_thread_exits(
    tmp_path: Path,
) -> None:
    """Regression test (adversary round 65: 15 of 15 runs hung): a daemon thread closing
    regions as the interpreter exits, and a ``__del__`` in a reference cycle that closes
    one at the last collection; the daemon thread was frozen holding the ownership lock,
    and the ``__del__``'s close waited for it for ever."""
    check_child(_A_DAEMON_CLOSES_AS_A_CYCLE_CLOSES_AT_FINALIZATION, str(tmp_path), timeout=20)
    assert list(tmp_path.iterdir()) == []


_CTRL_C_AS_THE_EXIT_DELETES = """
    import atexit, os, signal, sys
    from anymmap.sync import MmapRegion

    regions = [MmapRegion.create(os.path.join(sys.argv[1], f"r{i}"), 4096) for i in range(50)]

    def ctrl_c_inside(frame, event, arg):  # Ctrl-C as the exit deletes its first file
        if event == "call" and frame.f_code.co_name == "remove_if_same":
            sys.setprofile(None)
            signal.raise_signal(signal.SIGINT)

    def arm():  # (registered after anymmap's exit handler: runs before it)
        print("ok", flush=True)
        sys.setprofile(ctrl_c_inside)

    atexit.register(arm)
"""


def test_a_ctrl_c_as_the_exit_deletes_region_files_leaves_none(tmp_path: Path) -> None:
    """Regression test (adversary round 65: 999 of 1,000 files left): a Ctrl-C during
    the exit's deletion of the files regions own stopped it after the file it was
    deleting.  The deletion holds signals off now, and the Ctrl-C comes after it."""
    result = run_child(_CTRL_C_AS_THE_EXIT_DELETES, str(tmp_path))
    assert "KeyboardInterrupt" in result.stderr, describe(result)  # (it did arrive)
    assert list(tmp_path.iterdir()) == [], describe(result)


_MULTIPROCESSING_CHILDREN = """
    import multiprocessing, os, sys
    from tests._child import keep_a_region
    d = sys.argv[1]
    for method in ("fork", "forkserver", "spawn"):
        child = multiprocessing.get_context(method).Process(
            target=keep_a_region, args=(os.path.join(d, method),)
        )
        child.start()
        child.join(30)
        assert child.exitcode == 0, (method, child.exitcode)
        assert not os.path.exists(os.path.join(d, method)), f"{method}: the file stays"
    print("ok")
"""


def test_regions_left_open_by_multiprocessing_children_leave_no_file(tmp_path: Path) -> None:
    """Regression test (adversary round 66: 4 of 4 runs): a child that multiprocessing
    started by fork or forkserver ends with ``os._exit`` and runs no ``atexit`` handler,
    so a ``FileCleanup.MANUAL`` region it left open kept its file.  Its exit now deletes
    it, as a spawned child's (a normal exit) did."""
    check_child(_MULTIPROCESSING_CHILDREN, str(tmp_path), timeout=90)
    assert list(tmp_path.iterdir()) == []


# --- a hostile peer ----------------------------------------------------------------------


async def test_a_guest_truncating_the_file_cannot_crash_the_host(
    host: MmapRegion, tmp_path: Path, peers: list[Peer]
) -> None:
    await host.update_region(0, b"x" * 4 * PAGE)
    guest = Peer("path", str(tmp_path / "region"))
    peers.append(guest)
    assert guest.ask("truncate 100") == "ok"
    with pytest.raises(MappingFaultError, match="truncated to 100 bytes") as info:
        await host.read(0, 4 * PAGE)
    assert info.value.offset == PAGE
    with pytest.raises(MappingFaultError):
        host.region().read_into(2 * PAGE, bytearray(10))
    assert await host.read(0, 10) == b"x" * 10  # the first page is still there
    assert "error MappingFaultError" in guest.ask(f"read {PAGE} 10")  # the guest lives too


async def test_a_guest_killed_while_writing_leaves_the_host_intact(
    host: MmapRegion, tmp_path: Path, peers: list[Peer]
) -> None:
    await host.update_region(PAGE, b"host data")
    guest = Peer("path", str(tmp_path / "region"))
    peers.append(guest)
    assert guest.ask("spin") == "spinning"
    guest.process.send_signal(signal.SIGKILL)
    assert guest.process.wait(30) == -signal.SIGKILL
    assert await host.read(PAGE, 9) == b"host data"
    await host.update_region(0, b"after")
    assert await host.read(0, 5) == b"after"


# --- leaks ------------------------------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def test_a_thousand_cycles_leave_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "cycle"
    anymmap.sync.MmapRegion.create(path, PAGE).close()  # warm up lazy imports
    fds, maps = _open_fds(), _maps()
    for i in range(1000):
        with (
            anymmap.sync.MmapRegion.create(path, PAGE, max_size=MiB) as host,
            anymmap.sync.MmapRegion.attach(path) as guest,
        ):
            guest.update_region(0, i.to_bytes(4, "little"))
            assert host.read(0, 4) == i.to_bytes(4, "little")
        assert not path.exists()
    assert _open_fds() <= fds
    assert _maps() <= maps
    assert list(tmp_path.iterdir()) == []


# --- the rest of the API -------------------------------------------------------------------


async def test_flush_and_the_file_map_api(host: MmapRegion, tmp_path: Path) -> None:
    await host.update_region(0, b"durable")
    await host.flush_range(0, 7)
    await host.flush()
    await host.flush_async_range(0, 7)
    assert (tmp_path / "region").read_bytes()[:7] == b"durable"
    buf = bytearray(7)
    host.read_into_nowait(0, buf)
    assert buf == b"durable"
    async with host.as_mut_slice(0, 3) as view:
        view[:] = b"DUR"
    await host.populate()
    assert host.max_size == 64 * GiB
    assert repr(host).startswith("<anymmap.MmapRegion len=")


async def test_calling_the_type_names_its_constructors() -> None:
    with pytest.raises(TypeError, match=r"MmapRegion\.create"):
        MmapRegion("x")


async def test_every_call_on_a_closed_region(tmp_path: Path) -> None:
    region = await MmapRegion.create(tmp_path / "r", PAGE)
    value = region.region()
    await region.aclose()
    await region.aclose()
    with pytest.raises(ClosedMapError):
        await region.resize(2 * PAGE)
    with pytest.raises(ClosedMapError):
        await region.check_and_remap()
    with pytest.raises(ClosedMapError):
        await region.read(0, 1)
    with pytest.raises(ClosedMapError):
        value.read_into(0, bytearray(1))
    for call in (region.region, region.fileno, region.take_ownership):
        with pytest.raises(ClosedMapError):
            call()


async def test_resize_waits_for_borrows_and_copies(host: MmapRegion) -> None:
    release = anyio.Event()

    async def hold(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with host.as_slice(0, 4):
            task_status.started()
            await release.wait()

    async with anyio.create_task_group() as tg:
        await tg.start(hold)
        tg.start_soon(host.resize, 8 * PAGE)
        await wait_all_tasks_blocked()
        assert len(host) == 4 * PAGE  # waiting for the borrow
        release.set()
    assert len(host) == 8 * PAGE


def test_sync_twin(tmp_path: Path) -> None:
    path = tmp_path / "sync"
    with (
        anymmap.sync.MmapRegion.create(path, PAGE, max_size=GiB) as host,
        anymmap.sync.MmapRegion.attach(path) as guest,
    ):
        host.update_region(0, b"sync")
        assert guest.read(0, 4) == b"sync"
        base = host.as_ptr()
        host.resize(MiB)
        assert guest.check_and_remap()
        assert not guest.check_and_remap()
        assert host.as_ptr() == base
        guest.update_region(MiB - 4, b"tail")
        host.flush()
        assert host.read(MiB - 4, 4) == b"tail"
        assert host.max_size == GiB
    assert not path.exists()


async def test_atomics_between_two_handles(host: MmapRegion, tmp_path: Path) -> None:
    async with await MmapRegion.attach(tmp_path / "region") as guest:
        host.atomic_store(8, 8, 0xFEEDFACECAFEBEEF)
        assert guest.atomic_load(8, 8) == 0xFEEDFACECAFEBEEF
        with pytest.raises(ValueError, match="aligned"):
            guest.atomic_load(4, 8)
        with pytest.raises(anymmap.OutOfBoundsError):
            guest.atomic_load(4 * PAGE, 8)  # past the end
        await host.resize(8 * PAGE)
        with pytest.raises(anymmap.OutOfBoundsError):
            guest.atomic_load(6 * PAGE, 8)  # not followed yet
        assert await guest.check_and_remap()
        guest.atomic_store(6 * PAGE, 4, 7)
        assert host.atomic_load(6 * PAGE, 4) == 7


async def test_a_cut_after_growth_is_called_a_truncation(host: MmapRegion, tmp_path: Path) -> None:
    """Regression test: after growth the map still judged faults by the size it was
    mapped at, and called a peer's cut "past the end of the file"."""
    await host.resize(16 * PAGE)
    os.truncate(tmp_path / "region", 8 * PAGE)
    with pytest.raises(MappingFaultError, match=f"truncated to {8 * PAGE} bytes"):
        await host.read(10 * PAGE, 1)


async def test_growth_after_a_cut_allocates_from_the_cut(host: MmapRegion, tmp_path: Path) -> None:
    """Regression test: growth allocated from the map's length, leaving the blocks a
    peer's cut removed unallocated under the map."""
    path = tmp_path / "region"
    os.truncate(path, PAGE)
    await host.resize(64 * PAGE)
    assert os.stat(path).st_blocks * 512 >= 64 * PAGE
    await host.update_region(2 * PAGE, b"whole again")
    assert await host.read(2 * PAGE, 11) == b"whole again"


async def test_a_region_value_made_longer_by_hand_stays_inside_its_map(tmp_path: Path) -> None:
    """Regression test (adversary round 36): a ``Region`` copied with a longer length
    (``dataclasses.replace``) bounded its copies by that length alone, and a write
    landed in another region mapped after it.  It is bounded by its map as well."""
    async with (
        await MmapRegion.create(tmp_path / "a", PAGE) as first,
        await MmapRegion.create(tmp_path / "b", PAGE) as second,
    ):
        forged = dataclasses.replace(first.region(), length=1 << 46)
        delta = second.region().address - first.region().address
        for offset in (PAGE - 2, delta if 0 < delta < 1 << 46 else PAGE):
            with pytest.raises(anymmap.OutOfBoundsError):
                forged.write(offset, b"PWNED")
            with pytest.raises(anymmap.OutOfBoundsError):
                forged.read_into(offset, bytearray(5))
        assert await second.read(0, 5) == bytes(5)
        forged.write(0, b"fine")  # inside: as the real one
        assert await first.read(0, 4) == b"fine"
