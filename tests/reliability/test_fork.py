"""Fork: what a child sees of every map type after ``os.fork()``, ``multiprocessing``
with the fork start method, and a raw ``fork()`` that skips Python's at-fork hooks.

What is documented (README, "Fork"): private memory (anonymous maps, ``"copy"`` maps,
a sparse map's ``alloc`` pieces) is the child's own copy, and nothing the child writes
reaches the parent; shared memory (``"rw"`` file maps, regions, writable ``map_file``
windows) is shared, and what the child writes the parent sees; a map advised
``DONTFORK`` is closed in the child; a region's file belongs to the process that created
it, and a child closing its inherited handle leaves the file alone.  Every copy the child
makes acts on the child.
"""

from __future__ import annotations

import pytest

from .._child import check_child

_FORK = """
    import ctypes, multiprocessing, os, sys, tempfile
    import anymmap.sync as t

    HOW = sys.argv[1]
    directory = tempfile.mkdtemp(dir="/dev/shm")
    path = os.path.join(directory, "file")
    with open(path, "wb") as f:
        f.write(bytes(1 << 16))

    anon = t.AnonymousMmap.new(1 << 16)
    copy = t.MmapRaw.map_raw(path, mode="copy")
    shared = t.MmapRaw.map_raw(path)
    sparse = t.SparseMapping.new(1 << 20)
    sparse.alloc(0, 4096)
    window = os.path.join(directory, "window")
    with open(window, "wb") as f:
        f.write(bytes(4096))
    sparse.map_file(8192, 4096, window, writable=True)
    region = t.MmapRegion.create(os.path.join(directory, "region"), 4096)
    gone = t.AnonymousMmap.new(4096)
    gone.advise(t.__name__ and __import__("anymmap").Advice.DONTFORK)
    for m in (anon, copy, shared, region):
        m.update_region(0, b"parent")
    sparse.write_at(0, b"parent")
    sparse.write_at(8192, b"parent")

    def child():
        for m in (anon, copy, shared, region):
            assert m.read(0, 6) == b"parent"
            m.update_region(0, b"child!")         # fault-safe copies: process_vm_writev
            assert m.read(0, 6) == b"child!"
        sparse.write_at(0, b"child!")
        sparse.write_at(8192, b"child!")
        shared.flush()                            # group commit: a committer of its own
        region.flush_range(0, 6)
        assert not region.owns_file                # the parent created it: its file
        region.close()                            # must not delete the parent's file
        assert gone.closed
        try:
            gone.read(0, 1)
        except __import__("anymmap").ClosedMapError:
            pass
        else:
            raise AssertionError("a DONTFORK map was usable in the child")

    def run_child():
        try:
            child()
        except BaseException as exc:
            print("child failed:", repr(exc), flush=True)
            os._exit(3)
        os._exit(0)

    if HOW == "multiprocessing":
        process = multiprocessing.get_context("fork").Process(target=run_child)
        process.start()
        process.join()
        assert process.exitcode == 0, process.exitcode
    else:
        pid = os.fork() if HOW == "os.fork" else ctypes.PyDLL(None).fork()
        if pid == 0:
            run_child()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status

    # Private memory: the parent's own. Shared memory: the child's writes.
    assert anon.read(0, 6) == b"parent"
    assert copy.read(0, 6) == b"parent"
    assert sparse.read(0, 6) == b"parent"
    assert shared.read(0, 6) == b"child!"
    assert region.read(0, 6) == b"child!"
    assert sparse.read(8192, 6) == b"child!"
    assert not gone.closed
    assert region.owns_file and os.path.exists(region.path)
    for m in (anon, copy, shared, sparse, region, gone):
        m.close()
    assert not os.path.exists(region.path)
    print("ok")
"""


@pytest.mark.parametrize("how", ["os.fork", "multiprocessing", "raw fork"])
def test_what_a_forked_child_sees_of_every_map_type(how: str) -> None:
    check_child(_FORK, how)
