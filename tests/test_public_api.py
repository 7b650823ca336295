"""The public surface: what is exported, and that it says where it lives."""

from __future__ import annotations

import copy
import inspect
import pickle
import re
import types
from pathlib import Path

import pytest

import anymmap
import anymmap.sync

PUBLIC = {
    "anymmap": {
        "Advice",
        "AnonymousMmap",
        "AnymmapError",
        "BorrowError",
        "BufferLike",
        "ClosedMapError",
        "FdArg",
        "FileArg",
        "FileCleanup",
        "HasFileno",
        "HintNotHonoredError",
        "INLINE_COPY_LIMIT",
        "InvalidHintError",
        "InvalidSizeError",
        "MappingFaultError",
        "Mode",
        "MmapOptions",
        "MmapRaw",
        "MmapRegion",
        "OutOfBoundsError",
        "PAGE_SIZE",
        "PathArg",
        "Prefill",
        "ProgressCallback",
        "RWLock",
        "RWLockStatistics",
        "Region",
        "ReadOnlyError",
        "SparseMapping",
        "SparsePiece",
        "UnmappableFileError",
        "UnsupportedError",
        "WriteBackError",
        "sync",
    },
    "anymmap.sync": {"AnonymousMmap", "MmapOptions", "MmapRaw", "MmapRegion", "SparseMapping"},
}
#: Aliases of other types (``BufferLike`` is ``object`` before Python 3.12).
TYPE_ALIASES = {"BufferLike", "FdArg", "FileArg", "Mode", "PathArg", "Prefill", "ProgressCallback"}


@pytest.mark.parametrize("module", [anymmap, anymmap.sync], ids=lambda m: m.__name__)
def test_public_names_are_deliberate_and_say_where_they_live(module: types.ModuleType) -> None:
    names = {n for n in vars(module) if not n.startswith("_") and n != "annotations"}
    assert names == PUBLIC[module.__name__]
    assert sorted(module.__all__) == sorted(names - {"sync"})  # a module is not a name
    for name in names - TYPE_ALIASES:
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__ == module.__name__, name


def test_sync_twins_have_the_same_method_names() -> None:
    for name in ("AnonymousMmap", "MmapOptions", "MmapRaw", "MmapRegion", "SparseMapping"):
        async_type = getattr(anymmap, name)
        sync_type = getattr(anymmap.sync, name)
        public = {n for n in dir(async_type) if not n.startswith("_")}
        sync_public = {n for n in dir(sync_type) if not n.startswith("_")}
        assert public - {"aclose", "lock"} == sync_public - {"close"}


def test_errors_subclass_what_users_catch() -> None:
    assert issubclass(anymmap.OutOfBoundsError, IndexError)
    assert issubclass(anymmap.InvalidSizeError, ValueError)
    assert issubclass(anymmap.ClosedMapError, ValueError)
    assert issubclass(anymmap.BorrowError, BufferError)
    assert issubclass(anymmap.MappingFaultError, OSError)
    assert issubclass(anymmap.HintNotHonoredError, OSError)
    assert issubclass(anymmap.UnsupportedError, OSError)
    assert issubclass(anymmap.WriteBackError, OSError)
    assert issubclass(anymmap.ReadOnlyError, TypeError)
    for name in PUBLIC["anymmap"]:
        value = getattr(anymmap, name)
        if inspect.isclass(value) and issubclass(value, Exception):
            assert issubclass(value, anymmap.AnymmapError)


@pytest.mark.parametrize(
    ("cls", "hint"),
    [
        (anymmap.AnonymousMmap, "await anymmap.AnonymousMmap.new(size)"),
        (anymmap.MmapRaw, "await anymmap.MmapRaw.map_raw(file, ...)"),
        (anymmap.sync.AnonymousMmap, "anymmap.sync.AnonymousMmap.new(size)"),
        (anymmap.sync.MmapRaw, "anymmap.sync.MmapRaw.map_raw(file, ...)"),
    ],
    ids=lambda x: getattr(x, "__qualname__", ""),
)
def test_calling_a_map_type_names_its_constructors(cls: type, hint: str) -> None:
    """Regression test: ``anymmap.MmapRaw("data.bin")`` said "create a MmapRaw with one of
    its constructors" without naming them, and the signature showed a private core."""
    with pytest.raises(TypeError, match=re.escape(hint)):
        cls("data.bin")
    assert "core" not in str(inspect.signature(cls))


def test_version() -> None:
    from importlib.metadata import version

    assert anymmap.__version__ == version("anymmap")


def test_public_signatures_resolve_to_public_types() -> None:
    """The hints of the public methods resolve at run time (``typing.get_type_hints``, as
    documentation tools and runtime checkers call it), and name the exported aliases."""
    import typing

    for module in (anymmap, anymmap.sync):
        for name in ("AnonymousMmap", "MmapOptions", "MmapRaw", "MmapRegion", "SparseMapping"):
            cls = getattr(module, name)
            for attr in dir(cls):
                member = getattr(cls, attr)
                if not attr.startswith("_") and callable(member):
                    typing.get_type_hints(member)  # raises NameError for a hint it cannot find
    hints = typing.get_type_hints(anymmap.MmapRaw.map_raw)
    assert hints["file"] == anymmap.FileArg
    assert typing.get_type_hints(anymmap.sync.MmapRaw.read_into)["buf"] == anymmap.BufferLike
    assert typing.get_type_hints(anymmap.SparseMapping.mmap)["fd"] == anymmap.FdArg


@pytest.mark.anyio
async def test_a_map_is_true_open_or_closed() -> None:
    """Regression test: ``bool(m)`` called ``len()``, so ``if self.map: await
    self.map.aclose()`` raised ClosedMapError once the map was closed."""
    m = await anymmap.AnonymousMmap.new(4096)
    assert m
    await m.aclose()
    assert m
    assert m.closed
    with anymmap.sync.AnonymousMmap.new(4096) as s:
        assert s
    assert s
    with pytest.raises(anymmap.ClosedMapError):
        len(s)


@pytest.mark.anyio
async def test_with_instead_of_async_with_says_what_to_write() -> None:
    """Regression test: ``with`` on an async map or borrow raised "'_Borrow' object does
    not support the context manager protocol", naming a private class."""
    async with await anymmap.AnonymousMmap.new(4096) as m:
        expected = r"use 'async with', or anymmap\.sync\.Anonym"
        with pytest.raises(TypeError, match=expected), m:  # type: ignore[attr-defined]
            pass
        for borrow in (m.as_slice(0, 4), m.as_mut_slice(0, 4)):
            expected = r"use 'async with m\.as_(mut_)?slice"
            with pytest.raises(TypeError, match=expected), borrow:  # type: ignore[attr-defined]
                pass
        assert m.lock.statistics().writer is None
        await m.update_region(0, b"abcd")  # nothing was taken
        assert await m.read(0, 4) == b"abcd"


@pytest.mark.anyio
async def test_maps_locks_and_holds_refuse_copies_and_pickles(tmp_path: Path) -> None:
    """Regression test (adversary round 35): ``copy.copy`` of a map returned an alias of
    its mapping, and closing the copy closed the original; a copy of a held lock shared
    its holders; ``deepcopy`` and ``pickle`` failed on an internal ``RLock``.  Each
    refuses with a ``TypeError`` that says why, and the original is untouched."""
    path = tmp_path / "file"
    path.write_bytes(bytes(4096))
    region = await anymmap.MmapRegion.create(tmp_path / "region", 4096)
    raw = await anymmap.MmapRaw.map_raw(path)
    flushing = raw.auto_flush(every=60)
    async with (
        await anymmap.AnonymousMmap.new(4096) as anon,
        raw,
        await anymmap.SparseMapping.new(1 << 20) as sparse,
        region,
        anon.as_slice(0, 4) as view,
        flushing,
    ):
        twin = anymmap.sync.AnonymousMmap.new(4096)
        with twin, twin.as_slice(0, 4) as twin_view:
            lock = anymmap.RWLock()
            async with lock.write():
                objects = (
                    anon,
                    raw,
                    sparse,
                    region,
                    region.region(),
                    anon.as_slice(0, 4),
                    flushing,
                    lock,
                    lock.read(),
                    anon.lock,
                    twin,
                    twin.as_mut_slice(0, 4),
                )
                for thing in objects:
                    for how in (copy.copy, copy.deepcopy, pickle.dumps):
                        with pytest.raises(TypeError, match="cannot be copied or pickled"):
                            how(thing)
            assert bytes(view) == bytes(twin_view) == bytes(4)
            assert lock.statistics() == anymmap.RWLockStatistics(0, None, 0, 0)
        for m in (anon, raw, sparse, region):
            assert not m.closed
