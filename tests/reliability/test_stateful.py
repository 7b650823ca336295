"""Stateful property tests: random sequences of calls on every map type, checked against a
``bytearray`` model after every step, through all three APIs.

Each step is a copy (awaited, ``*_nowait``, into a NumPy array or a memoryview), a borrow
with writes through it, a resize, a flush, a populate, advice of every kind on any range,
a change of pieces (sparse maps), growth followed by a second handle (regions), a
truncation or re-extension of the file by another process, or bad input; every call must
do what the model says or raise the documented exception.  The model knows which bytes it
can vouch for (``known``): after a truncation and re-extension, the bytes between the cut
and the end of its page are the kernel's business.

Profiles: the CI run does 130 to 700 examples per map type and API (see ``KINDS``; 8,520
in all, of up to 12 steps each); ``ANYMMAP_FUZZ=long`` runs ten times more.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, ClassVar

import anyio
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import anymmap
import anymmap.sync
from anymmap import (
    Advice,
    BorrowError,
    ClosedMapError,
    MappingFaultError,
    OutOfBoundsError,
    ReadOnlyError,
)

from ._drive import Api, Peer, api, scaled

pytestmark = pytest.mark.reliability

PAGE = anymmap.PAGE_SIZE

#: Advice that changes no byte.
KEEPING = [a for a in Advice if a not in (Advice.DONTNEED, Advice.FREE)]


def page_floor(value: int) -> int:
    return value - value % PAGE


def page_ceil(value: int) -> int:
    return -(-value // PAGE) * PAGE


class Model:
    """The bytes a map should hold, and which of them the model can vouch for."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)
        self.known = bytearray(b"\x01" * len(data))

    def __len__(self) -> int:
        return len(self.data)

    def write(self, offset: int, data: bytes) -> None:
        self.data[offset : offset + len(data)] = data
        self.known[offset : offset + len(data)] = b"\x01" * len(data)

    def forget(self, start: int, end: int) -> None:
        end = min(end, len(self.data))
        if end > start:
            self.known[start:end] = bytes(end - start)

    def resize(self, length: int, fill: int = 0) -> None:
        if length < len(self.data):
            del self.data[length:]
            del self.known[length:]
        else:
            grow = length - len(self.data)
            self.data += bytes([fill]) * grow
            self.known += b"\x01" * grow

    def check(self, offset: int, got: bytes) -> None:
        for i, byte in enumerate(got):
            if self.known[offset + i]:
                assert byte == self.data[offset + i], (
                    f"byte {offset + i}: map {byte}, model {self.data[offset + i]}"
                )


class MapMachine(RuleBasedStateMachine):
    """Drives one map of one kind through one API (class attributes, set per test)."""

    API: ClassVar[Api]
    KIND: ClassVar[str]  # anon, rw, r, copy, window, sparse, region
    DIRECTORY: ClassVar[str]
    PEER: ClassVar[Peer | None]

    def __init__(self) -> None:
        super().__init__()
        self.api = self.API
        self.map: Any = None
        self.other: Any = None  # a region's second handle
        self.path: str | None = None
        self.file_data = bytearray()  # the file's bytes (copy maps read them back)
        self.cut: int | None = None  # the file's size while another process cut it
        self.pages: list[str] = []  # sparse: "hole", "rw" or "ro" for each page
        self.closed = False

    # -- setting up -------------------------------------------------------------------

    @initialize(size=st.integers(1, 3 * PAGE + 100), seed=st.integers(0, 2**32 - 1))
    def setup(self, size: int, seed: int) -> None:
        rng = random.Random(seed)
        content = rng.randbytes(size)
        a = self.api
        async_ = a.is_async
        types = anymmap if async_ else anymmap.sync
        if self.KIND == "anon":
            self.map = a.make(types.AnonymousMmap.new, size)
            self.model = Model(bytes(size))
            return
        if self.KIND == "sparse":
            self.map = a.make(types.SparseMapping.new, 16 * PAGE)
            self.model = Model(bytes(16 * PAGE))
            self.pages = ["hole"] * 16
            return
        fd, self.path = tempfile.mkstemp(dir=self.DIRECTORY)
        if self.KIND == "region":
            os.close(fd)
            os.unlink(self.path)
            self.map = a.make(types.MmapRegion.create, self.path, size, max_size=1 << 20)
            self.other = a.make(types.MmapRegion.attach, self.path, max_size=1 << 20)
            self.model = Model(bytes(size))
            return
        window = self.KIND == "window"
        offset = rng.randrange(1, 2 * PAGE) if window else 0
        with os.fdopen(fd, "wb") as f:
            f.write(
                rng.randbytes(offset)
                + content
                + rng.randbytes(rng.randrange(PAGE) if window else 0)
            )
        with open(self.path, "rb") as f:
            self.file_data = bytearray(f.read())
        mode = {"rw": "rw", "r": "r", "copy": "copy", "window": "rw"}[self.KIND]
        self.map = a.make(types.MmapRaw.map_raw, self.path, offset=offset, length=size, mode=mode)
        self.model = Model(content)

    def teardown(self) -> None:
        for handle in (self.other, self.map):
            if handle is not None:
                try:
                    self.api.close(handle)
                except BorrowError:  # pragma: no cover - a failure elsewhere left a view
                    pass
        if self.path is not None and os.path.exists(self.path):
            os.unlink(self.path)

    # -- what the model expects ---------------------------------------------------------

    @property
    def writable(self) -> bool:
        return self.KIND != "r"

    @property
    def shared_file(self) -> bool:
        return self.KIND in ("rw", "r", "window", "region")

    def reachable(self, offset: int, length: int, writing: bool) -> int:
        """The first byte of the range a copy cannot reach (a hole, a read-only page, a
        page past a cut), or ``offset + length`` if it reaches all of it."""
        end = offset + length
        if self.KIND == "sparse":
            for page in range(offset // PAGE, -(-end // PAGE)):
                state = self.pages[page]
                if state == "hole" or (writing and state == "ro"):
                    return max(offset, page * PAGE)
        if self.cut is not None and end > page_ceil(self.cut):
            return max(offset, page_ceil(self.cut))
        return end

    def attempt(
        self,
        call: Callable[[], Any],
        expected: type[BaseException] | None,
        maybe: type[BaseException] | None = None,
    ) -> Any:
        """Run ``call``: it must raise ``expected`` (if given), else succeed or raise
        ``maybe``; return what it returned or raised."""
        try:
            result = call()
        except Exception as exc:
            if isinstance(exc, (expected or (), maybe or ())):
                return exc
            raise
        assert expected is None, f"expected {expected.__name__}, got {result!r}"
        return result

    def bounds(self, offset: int, length: int) -> bool:
        return offset >= 0 and length >= 0 and offset + length <= len(self.model)

    # -- copies -------------------------------------------------------------------------

    # Offsets and lengths are drawn as fractions (per mille) of the map's current length,
    # a little past both ends, so that most calls are in range and the edges are hit.
    offsets = st.integers(0, 1000)
    lengths = st.integers(0, 1000)

    def at(self, per_mille: int) -> int:
        return per_mille * (len(self.model) + 16) // 1000 - 8

    def span(self, per_mille: int) -> int:
        return per_mille * (len(self.model) + 8) // 1000

    @rule(
        where=offsets,
        size=lengths,
        seed=st.integers(0, 255),
        how=st.sampled_from(["await", "nowait", "borrow"]),
    )
    def write(self, where: int, size: int, seed: int, how: str) -> None:
        if self.closed:
            return
        offset = self.at(where)
        data = random.Random(seed).randbytes(self.span(size))
        a, n = self.api, len(data)
        if how == "borrow":
            self.write_through_a_borrow(offset, data)
            return
        method = "update_region_nowait" if how == "nowait" else "update_region"
        if not self.writable:
            self.attempt(lambda: a.call(self.map, method, offset, data), ReadOnlyError)
            return
        if not self.bounds(offset, n):
            self.attempt(lambda: a.call(self.map, method, offset, data), OutOfBoundsError)
            return
        bad = self.reachable(offset, n, writing=True)
        if bad < offset + n:
            self.attempt(lambda: a.call(self.map, method, offset, data), MappingFaultError)
            self.model.forget(offset, bad)  # what came before the fault may be written
            return
        result = self.attempt(
            lambda: a.call(self.map, method, offset, data), None, anyio.WouldBlock
        )
        if isinstance(result, anyio.WouldBlock):
            self.model.forget(offset, offset + n)  # part of it may have been written
        else:
            self.wrote(offset, data)

    def wrote(self, offset: int, data: bytes) -> None:
        self.model.write(offset, data)
        if self.cut is not None:
            # Past the end of a cut file, the last page keeps what is written only until
            # the kernel writes the page back: writeback zeroes the part past the end.
            self.model.forget(max(offset, self.cut), offset + len(data))

    def write_through_a_borrow(self, offset: int, data: bytes) -> None:
        a, n = self.api, len(data)
        if not self.writable:
            self.attempt(lambda: a.borrow(self.map, True, offset, n).__enter__(), ReadOnlyError)
            return
        if not self.bounds(offset, n):
            self.attempt(lambda: a.borrow(self.map, True, offset, n).__enter__(), OutOfBoundsError)
            return
        if self.reachable(offset, n, writing=True) < offset + n:
            if self.KIND == "sparse":  # refused before anything is touched
                self.attempt(
                    lambda: a.borrow(self.map, True, offset, n).__enter__(), MappingFaultError
                )
            return  # a truncated file: views are documented as unprotected
        with a.borrow(self.map, True, offset, n) as view:
            view[:] = data
        self.wrote(offset, data)

    @rule(
        where=offsets,
        size=lengths,
        how=st.sampled_from(["await", "bytes", "nowait", "numpy", "borrow"]),
    )
    def read(self, where: int, size: int, how: str) -> None:
        if self.closed:
            return
        offset, length = self.at(where), self.span(size)
        a = self.api
        buf: Any = np.zeros(length, dtype=np.uint8) if how == "numpy" else bytearray(length)

        def call() -> Any:
            if how == "bytes":
                return a.call(self.map, "read", offset, length)
            if how == "borrow":
                with a.borrow(self.map, False, offset, length) as view:
                    return bytes(view)
            return a.call(
                self.map, "read_into_nowait" if how == "nowait" else "read_into", offset, buf
            )

        if not self.bounds(offset, length):
            self.attempt(call, OutOfBoundsError)
            return
        if self.reachable(offset, length, writing=False) < offset + length:
            if how != "borrow" or self.KIND == "sparse":
                self.attempt(call, MappingFaultError)
            return
        result = self.attempt(call, None, anyio.WouldBlock)
        if isinstance(result, anyio.WouldBlock):
            return
        got = result if how in ("bytes", "borrow") else bytes(buf)
        self.model.check(offset, got)

    # -- managing memory ----------------------------------------------------------------

    @rule(where=offsets, size=st.one_of(st.none(), lengths), write=st.booleans())
    def populate(self, where: int, size: int | None, write: bool) -> None:
        if self.closed:
            return
        offset, length = self.at(where), None if size is None else self.span(size)
        a = self.api
        n = len(self.model) - offset if length is None else length
        call = lambda: a.call(self.map, "populate", offset, length, write=write)
        if write and not self.writable:
            self.attempt(call, ReadOnlyError)
        elif not self.bounds(offset, n):
            self.attempt(call, OutOfBoundsError)
        elif self.cut is not None and self.reachable(offset, n, writing=False) < offset + n:
            self.attempt(call, MappingFaultError)
        else:
            self.attempt(call, None)

    @rule(advice=st.sampled_from(list(Advice)), where=offsets, size=lengths)
    def advise(self, advice: Advice, where: int, size: int) -> None:
        if self.closed:
            return
        offset, length = self.at(where), self.span(size)
        a = self.api
        call = lambda: a.call(self.map, "advise", advice, offset, length)
        if not self.bounds(offset, length):
            self.attempt(call, OutOfBoundsError)
            return
        if advice == Advice.FREE and self.KIND != "anon":
            exc = self.attempt(call, OSError)
            assert exc.errno == errno.EINVAL
            return
        if advice == Advice.DONTFORK and self.KIND not in ("anon",):
            return  # (kept out: a forked child would see the map closed; test_fork checks)
        if self.cut is not None and advice in (Advice.WILLNEED, Advice.DONTNEED):
            return  # past a cut the kernel decides; copies are what must not crash
        self.attempt(call, None)
        if advice == Advice.DONTFORK:
            self.attempt(lambda: a.call(self.map, "advise", Advice.DOFORK), None)
        if advice in (Advice.DONTNEED, Advice.FREE) and length:
            # Pages wholly inside the range of private memory are discarded.
            base = self.map_address_offset()
            first = page_ceil(base + offset) - base
            last = page_floor(base + offset + length) - base
            if last > first:
                if self.KIND == "copy":  # back to the file's bytes
                    self.model.write(first, bytes(self.file_data[first:last]))
                elif self.KIND in ("anon", "sparse"):
                    if advice == Advice.FREE:
                        self.model.forget(first, last)  # freed lazily: old or zero
                    else:
                        self.model.write(first, bytes(last - first))

    def map_address_offset(self) -> int:
        """How far byte 0 of the map lies into its page."""
        return int(self.api.call(self.map, "as_ptr")) % PAGE

    @precondition(lambda self: self.KIND in ("anon", "rw") and self.cut is None)
    @rule(size=st.integers(-1, 4 * PAGE))
    def resize(self, size: int) -> None:
        if self.closed:
            return
        a = self.api
        if size <= 0:
            self.attempt(lambda: a.call(self.map, "resize", size), anymmap.InvalidSizeError)
            return
        self.attempt(lambda: a.call(self.map, "resize", size), None)
        if self.KIND == "anon":
            self.model.resize(size)
        else:
            self.model.resize(size)
            self.file_data = bytearray(bytes(self.model.data))

    @precondition(lambda self: self.KIND in ("rw", "r", "copy", "window", "region"))
    @rule(where=offsets, size=lengths, how=st.sampled_from(["flush", "range", "async range"]))
    def flush(self, where: int, size: int, how: str) -> None:
        if self.closed:
            return
        offset, length = self.at(where), self.span(size)
        a = self.api
        if how == "flush":
            self.attempt(lambda: a.call(self.map, "flush"), None)
            return
        method = "flush_range" if how == "range" else "flush_async_range"
        call = partial(a.call, self.map, method, offset, length)
        if not self.bounds(offset, length):
            self.attempt(call, OutOfBoundsError)
            return
        if self.cut is not None:  # past the cut the kernel may report an error, or not
            try:
                call()
            except OSError:
                pass
            return
        self.attempt(call, None)
        if how == "range" and self.KIND in ("rw", "region") and self.cut is None:
            # Durable means the file has it: read the file itself.
            with open(self.path, "rb") as f:  # type: ignore[arg-type]
                f.seek(offset)
                self.model.check(offset, f.read(length))

    # -- another process cuts the file --------------------------------------------------

    @precondition(
        lambda self: self.PEER is not None and self.KIND in ("rw", "r") and self.cut is None
    )
    @rule(fraction=st.floats(0, 0.99))
    def truncate(self, fraction: float) -> None:
        if self.closed:
            return
        self.cut = int(len(self.model) * fraction)
        assert self.PEER is not None
        assert self.path is not None
        self.PEER.truncate(self.path, self.cut)
        # Between the cut and the end of its page the map shows zeros now.
        end = min(page_ceil(self.cut), len(self.model))
        if end > self.cut:
            self.model.write(self.cut, bytes(end - self.cut))

    @precondition(lambda self: self.cut is not None)
    @rule()
    def extend_again(self) -> None:
        if self.closed:
            return
        assert self.PEER is not None
        assert self.path is not None
        assert self.cut is not None
        self.PEER.truncate(self.path, len(self.model))
        end = min(page_ceil(self.cut), len(self.model))
        self.model.forget(self.cut, end)  # written while cut: the kernel decides
        self.model.write(end, bytes(len(self.model) - end))  # the file grew with zeros
        self.cut = None

    # -- sparse maps --------------------------------------------------------------------

    @precondition(lambda self: self.KIND == "sparse")
    @rule(
        page=st.integers(0, 15),
        count=st.integers(1, 4),
        what=st.sampled_from(["alloc", "map_zero", "unmap"]),
    )
    def change_pieces(self, page: int, count: int, what: str) -> None:
        if self.closed:
            return
        count = min(count, 16 - page)
        self.attempt(lambda: self.api.call(self.map, what, page * PAGE, count * PAGE), None)
        state = {"alloc": "rw", "map_zero": "ro", "unmap": "hole"}[what]
        for p in range(page, page + count):
            self.pages[p] = state
        self.model.write(page * PAGE, bytes(count * PAGE))

    @precondition(lambda self: self.KIND == "sparse")
    @rule(page=st.integers(0, 15), count=st.integers(1, 4))
    def a_fill_the_kernel_refuses(self, page: int, count: int) -> None:
        # (MAP_SHARED_VALIDATE for anonymous memory: EINVAL before anything is unmapped;
        # the pieces and their bytes stay.)
        if self.closed:
            return
        count = min(count, 16 - page)
        args = (page * PAGE, count * PAGE, mmap.PROT_READ, 0x03)
        self.attempt(lambda: self.api.call(self.map, "mmap_anonymous", *args), OSError)

    # -- regions ------------------------------------------------------------------------

    @precondition(lambda self: self.KIND == "region")
    @rule(grow=st.integers(0, 3 * PAGE))
    def grow_and_follow(self, grow: int) -> None:
        if self.closed:
            return
        a = self.api
        size = len(self.model) + grow
        self.attempt(lambda: a.call(self.map, "resize", size), None)
        self.model.resize(size)
        followed = self.attempt(lambda: a.call(self.other, "check_and_remap"), None)
        assert followed == (grow > 0)
        got = self.attempt(lambda: a.call(self.other, "read", 0, size), None)
        self.model.check(0, got)

    @precondition(lambda self: self.KIND == "region")
    @rule(
        src=offsets,
        dst=offsets,
        size=lengths,
        how=st.sampled_from(["update_region", "update_region_nowait", "read_into", "Region"]),
    )
    def copy_between_the_two_handles(self, src: int, dst: int, size: int, how: str) -> None:
        """A borrow of the attachment as the buffer of a copy of the host: the two show
        the same pages, so where the ranges overlap the copy must act as ``memmove``."""
        if self.closed:
            return
        a, length = self.api, len(self.model)
        s, d = src * length // 1001, dst * length // 1001
        n = min(size * length // 1000, length - s, length - d)
        if n <= 0:
            return
        writing = how != "read_into"
        if writing:  # host[d:d+n] = attachment[s:s+n]
            with a.borrow(self.other, False, s, n) as view:
                if how == "Region":
                    self.map.region().write(d, view)
                else:
                    result = self.attempt(
                        lambda: a.call(self.map, how, d, view), None, anyio.WouldBlock
                    )
                    if isinstance(result, anyio.WouldBlock):  # (pages not in memory)
                        self.model.forget(d, d + n)
                        return
            moved, known, at = self.model.data[s : s + n], self.model.known[s : s + n], d
        else:  # attachment[s:s+n] = host[d:d+n]
            with a.borrow(self.other, True, s, n) as view:
                self.attempt(lambda: a.call(self.map, "read_into", d, view), None)
            moved, known, at = self.model.data[d : d + n], self.model.known[d : d + n], s
        self.model.write(at, bytes(moved))
        self.model.known[at : at + n] = known

    @rule(
        src=offsets,
        dst=offsets,
        size=lengths,
        how=st.sampled_from(
            ["update_region", "update_region_nowait", "read_into", "read_into_nowait"]
        ),
    )
    def copy_within_through_its_own_memory(self, src: int, dst: int, size: int, how: str) -> None:
        """An array over the map's own bytes (from ``as_ptr()``) as the buffer of a copy
        of the same map: where the ranges overlap, the copy must act as ``memmove``
        (adversary round 19: file maps smeared it)."""
        if self.closed or not self.writable or self.KIND == "sparse" or self.cut is not None:
            return  # (holes and cut files: faults of the buffer, covered elsewhere)
        import ctypes

        a, length = self.api, len(self.model)
        s, d = src * length // 1001, dst * length // 1001
        n = min(size * length // 1000, length - s, length - d)
        if n <= 0:
            return
        writing = how.startswith("update")
        at, frm = (d, s) if writing else (s, d)  # bytes move from frm to at
        buf = np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(self.map.as_ptr() + s))
        result = self.attempt(lambda: a.call(self.map, how, d, buf), None, anyio.WouldBlock)
        if isinstance(result, anyio.WouldBlock):  # (a page not in memory)
            self.model.forget(at, at + n)
            return
        moved, known = self.model.data[frm : frm + n], self.model.known[frm : frm + n]
        self.model.write(at, bytes(moved))
        self.model.known[at : at + n] = known

    # -- bad input ------------------------------------------------------------------------

    @rule(which=st.integers(0, 7))
    def bad_input(self, which: int) -> None:
        if self.closed:
            return
        a = self.api
        cases: list[tuple[Callable[[], Any], type[BaseException]]] = [
            (lambda: a.call(self.map, "read", True, 1), TypeError),
            (lambda: a.call(self.map, "read", 1.5, 1), TypeError),
            (lambda: a.call(self.map, "read", 2**70, 1), OutOfBoundsError),
            (lambda: a.call(self.map, "read", np.int64(-1), 1), OutOfBoundsError),
            (
                lambda: a.call(self.map, "read_into", 0, np.array([1, "a"], dtype=object)),
                TypeError,
            ),
            (lambda: a.call(self.map, "read_into", 0, memoryview(bytearray(8))[::2]), TypeError),
            (lambda: a.call(self.map, "update_region", 0, "text"), TypeError),
            (lambda: a.call(self.map, "advise", 12345), ValueError),
        ]
        call, error = cases[which]
        self.attempt(call, error)

    @rule()
    def close_and_check_everything_refuses(self) -> None:
        if self.closed:
            return
        a = self.api
        if self.other is not None:
            a.close(self.other)
            self.other = None
        a.close(self.map)
        a.close(self.map)  # twice is fine
        calls: list[tuple[str, tuple[Any, ...]]] = [
            ("read", (0, 1)),
            ("update_region", (0, b"x")),
            ("populate", ()),
        ]
        for method, args in calls:
            self.attempt(partial(a.call, self.map, method, *args), ClosedMapError)
        self.closed = True

    # -- after every step -------------------------------------------------------------------

    @invariant()
    def the_map_matches_the_model(self) -> None:
        if self.map is None or self.closed:
            return
        a = self.api
        if self.KIND == "sparse":
            for page, state in enumerate(self.pages):
                if state != "hole":
                    self.model.check(page * PAGE, a.call(self.map, "read", page * PAGE, PAGE))
            return
        reach = len(self.model) if self.cut is None else min(self.cut, len(self.model))
        self.model.check(0, a.call(self.map, "read", 0, reach))
        assert a.call(self.map, "__len__") == len(self.model)
        lock = self.map.lock if a.is_async else None
        if lock is not None:
            assert lock.statistics() == anymmap.RWLockStatistics(0, None, 0, 0)


def machine(api_: Api, kind: str, directory: str, peer: Peer | None) -> type[MapMachine]:
    return type(
        f"{kind.title()}{api_.name.title()}Machine",
        (MapMachine,),
        {"API": api_, "KIND": kind, "DIRECTORY": directory, "PEER": peer},
    )


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    process = Peer()
    yield process
    process.close()


# (kind, where its file lives, examples per API in the CI profile): at least 2,000
# examples per map type in all, counting MmapRaw's modes and file systems together.
KINDS = [
    ("anon", "disk", 700),
    ("rw", "disk", 200),
    ("rw", "tmpfs", 150),
    ("r", "disk", 130),
    ("copy", "disk", 130),
    ("window", "disk", 130),
    ("sparse", "disk", 700),
    ("region", "tmpfs", 700),
]


@pytest.mark.parametrize("api_name", ["sync", "asyncio", "trio"])
@pytest.mark.parametrize(
    ("kind", "where", "examples"), KINDS, ids=[f"{k}-{w}" for k, w, _ in KINDS]
)
def test_every_map_matches_its_model(
    tmp_path: Any, shm_path: Any, peer: Peer, api_name: str, kind: str, where: str, examples: int
) -> None:
    directory = str(shm_path if where == "tmpfs" else tmp_path)
    with api(api_name) as a:
        run_state_machine_as_test(
            machine(a, kind, directory, peer),
            settings=settings(
                max_examples=scaled(examples, 10 * examples),
                stateful_step_count=12,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            ),
        )
