from __future__ import annotations

import copy
import errno
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import anymmap
import anymmap.sync
from anymmap import (
    AnonymousMmap,
    HintNotHonoredError,
    InvalidHintError,
    InvalidSizeError,
    MmapOptions,
    MmapRaw,
)

from ._helpers import PAGE, at_a_free_address, resident_fraction, rss_bytes

pytestmark = pytest.mark.anyio


def test_value_semantics() -> None:
    base = MmapOptions()
    assert repr(base) == (
        "MmapOptions(len=None, hint=None, populate=False, no_reserve=False, strict=False)"
    )
    opts = base.len(8192).with_hint(0x7F0000000000).populate(True).no_reserve(True).strict(True)
    assert repr(opts) == (
        "MmapOptions(len=8192, hint=0x7f0000000000, populate=True, no_reserve=True, strict=True)"
    )
    assert base == MmapOptions()  # setters return copies
    assert opts == MmapOptions(
        len=8192, hint=0x7F0000000000, populate=True, no_reserve=True, strict=True
    )
    assert hash(opts) == hash(MmapOptions(**_kwargs(opts)))
    assert opts != anymmap.sync.MmapOptions(**_kwargs(opts))  # different types
    with pytest.raises(AttributeError, match="immutable"):
        opts._len = 1


@pytest.mark.parametrize("cls", [MmapOptions, anymmap.sync.MmapOptions])
def test_options_copy_and_pickle_by_value(cls: type[MmapOptions]) -> None:
    """Regression test (adversary round 35): ``copy.copy`` and ``pickle`` of an options
    value raised "MmapOptions is immutable" (its own ``__setattr__`` refused the state);
    a bool of another library was refused as "not bool"; ``None`` resets a field."""
    opts = cls(len=8192).with_hint(0x7F0000000000).populate(True)
    assert copy.copy(opts) is opts  # immutable: a copy is the value itself
    assert copy.deepcopy(opts) is opts
    again = pickle.loads(pickle.dumps(opts))
    assert (type(again), again) == (cls, opts)
    assert opts.len(None).with_hint(None) == cls(populate=True)
    with pytest.raises(TypeError, match=r"not numpy\.bool"):
        cls().populate(np.bool_(True))  # type: ignore[arg-type]


def _kwargs(opts: MmapOptions) -> dict[str, Any]:
    return dict(
        zip(("len", "hint", "populate", "no_reserve", "strict"), opts._values(), strict=True)
    )


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: MmapOptions().len(0), InvalidSizeError),
        (lambda: MmapOptions().len(2**47 + 1), InvalidSizeError),
        (lambda: MmapOptions(len=-1), InvalidSizeError),
        (lambda: MmapOptions().len("1"), TypeError),  # type: ignore[arg-type]
        (lambda: MmapOptions().with_hint(PAGE + 1), InvalidHintError),
        (lambda: MmapOptions().with_hint(-PAGE), InvalidHintError),
        (lambda: MmapOptions().with_hint(0), InvalidHintError),
        (lambda: MmapOptions().with_hint(2**64), InvalidHintError),
        (lambda: MmapOptions().populate(1), TypeError),  # type: ignore[arg-type]
        (lambda: MmapOptions(strict="yes"), TypeError),  # type: ignore[arg-type]
        (lambda: MmapOptions(size=3), TypeError),  # type: ignore[arg-type]
    ],
)
def test_bad_values_fail_at_once(make: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        make()  # type: ignore[operator]


async def test_map_anon_needs_a_length() -> None:
    with pytest.raises(InvalidSizeError, match="len"):
        await MmapOptions().map_anon()
    with pytest.raises(InvalidSizeError):
        anymmap.sync.MmapOptions().map_anon()


async def test_strict_needs_a_hint() -> None:
    with pytest.raises(InvalidHintError):
        await MmapOptions().len(PAGE).strict(True).map_anon()


@pytest.mark.parametrize(
    ("hint", "length"),
    [((1 << 47) - PAGE, PAGE), ((1 << 47) - 2 * PAGE, 2 * PAGE), ((1 << 47) - PAGE, 1)],
)
async def test_a_strict_range_in_the_top_page_is_an_invalid_hint(hint: int, length: int) -> None:
    """Regression test (adversary round 46): x86-64 never maps the page below 2**47, and
    a strict range ending in it raised a plain ``OSError(ENOMEM)``."""
    options = MmapOptions().len(length).with_hint(hint).strict(True)
    with pytest.raises(InvalidHintError, match="user address space"):
        await options.map_anon()
    with pytest.raises(InvalidHintError, match="user address space"):
        anymmap.sync.MmapOptions().len(length).with_hint(hint).strict(True).map_anon()


async def _free_address(size: int) -> int:
    m = await anymmap.AnonymousMmap.new(size)
    addr = m.as_ptr()
    await m.aclose()
    return addr


@pytest.mark.parametrize("strict", [False, True])
async def test_hint_is_honoured(strict: bool) -> None:
    async def attempt(addr: int) -> bool:
        options = MmapOptions().len(4 * PAGE).with_hint(addr).strict(strict)
        try:
            m = await options.map_anon()
        except HintNotHonoredError:
            assert strict
            return False
        async with m:
            if m.as_ptr() != addr:
                assert not strict  # a strict map is where it was asked, or nowhere
                return False
            await m.update_region(0, b"at the hint")
            assert await m.read(0, 11) == b"at the hint"
            return True

    await at_a_free_address(lambda: _free_address(4 * PAGE), attempt)


async def test_strict_hint_on_a_taken_address_raises() -> None:
    async with await anymmap.AnonymousMmap.new(2 * PAGE) as taken:
        await taken.update_region(0, b"mine")
        with pytest.raises(HintNotHonoredError) as info:
            await MmapOptions().len(PAGE).with_hint(taken.as_ptr() + PAGE).strict(True).map_anon()
        assert info.value.errno == errno.EEXIST
        assert isinstance(info.value, OSError)
        assert await taken.read(0, 4) == b"mine"  # never clobbered (no MAP_FIXED)
        # Without strict, the kernel places the map elsewhere.
        async with await MmapOptions().len(PAGE).with_hint(taken.as_ptr()).map_anon() as m:
            assert m.as_ptr() != taken.as_ptr()
    assert pickle.loads(pickle.dumps(info.value)).hint == info.value.hint


async def test_strict_map_keeps_its_address_on_resize() -> None:
    async def attempt(addr: int) -> bool:
        try:
            m = await MmapOptions().len(PAGE).with_hint(addr).strict(True).map_anon()
        except HintNotHonoredError:
            return False
        async with m:
            await m.update_region(0, b"fixed")
            failed: OSError | None
            try:
                await m.resize(8 * PAGE)  # into the rest of the freed range
            except OSError as exc:  # taken meanwhile: ENOMEM, and the map stays as it was
                failed = exc
            else:
                failed = None
            if failed is not None:
                assert failed.errno == errno.ENOMEM
                assert len(m) == PAGE
                assert await m.read(0, 5) == b"fixed"
                return False
            assert m.as_ptr() == addr
            assert await m.read(0, 5) == b"fixed"
            return True

    await at_a_free_address(lambda: _free_address(64 * PAGE), attempt)


@pytest.mark.parametrize("kind", ["anon", "raw"])
async def test_a_strict_map_that_cannot_grow_in_place_says_so(kind: str, tmp_path: Path) -> None:
    """Regression test (adversary round 50): a strict map whose next pages were taken
    (a neighbour mapping right after it) failed ``resize`` with the kernel's
    ``OSError(ENOMEM)`` "Cannot allocate memory", which sent users looking for a
    memory shortage.  It raises ``HintNotHonoredError`` (an ``OSError``, ``EEXIST``)
    naming the address it could not grow into, and the map stays as it was (round 69:
    and so does its file, which kept its new blocks)."""
    path = tmp_path / "f"
    path.write_bytes(b"fixed".ljust(PAGE, b"."))

    async def attempt(addr: int) -> bool:
        options = MmapOptions().with_hint(addr).strict(True)
        try:
            if kind == "anon":
                m: AnonymousMmap | MmapRaw = await options.len(PAGE).map_anon()
                await m.update_region(0, b"fixed")
            else:
                m = await options.map_raw(path)
            neighbour = (
                await MmapOptions().len(PAGE).with_hint(addr + PAGE).strict(True).map_anon()
            )
        except HintNotHonoredError:
            return False
        async with m, neighbour:
            with pytest.raises(HintNotHonoredError) as info:
                await m.resize(2 * PAGE)
            assert info.value.errno == errno.EEXIST
            assert info.value.hint == addr + PAGE
            assert (m.as_ptr(), len(m)) == (addr, PAGE)
            assert path.stat().st_size == PAGE  # the growth undone too (round 69)
            assert await m.read(0, 5) == b"fixed"
            await m.resize(PAGE // 2)  # (shrinking, and growing back within its pages)
            await m.resize(PAGE)
        return True

    await at_a_free_address(lambda: _free_address(4 * PAGE), attempt)


async def test_populate_option() -> None:
    async with await MmapOptions(len=32 * PAGE, populate=True).map_anon() as m:
        assert resident_fraction(m.as_ptr(), 32 * PAGE) == 1.0
    async with await MmapOptions(len=32 * PAGE).map_anon() as m:
        assert resident_fraction(m.as_ptr(), 32 * PAGE) == 0.0


async def test_no_reserve_terabyte_costs_little() -> None:
    before = rss_bytes()
    async with await MmapOptions().len(1 << 40).no_reserve(True).map_anon() as m:
        assert len(m) == 1 << 40
        await m.update_region((1 << 40) - 5, b"tail!")
        await m.update_region(0, b"head")
        assert await m.read((1 << 40) - 5, 5) == b"tail!"
        assert rss_bytes() - before < 64 << 20


def test_a_misspelt_field_names_the_public_class_and_the_field() -> None:
    """Regression test: ``MmapOptions(length=4096)`` named the internal ``OptionsBase``."""
    for cls in (MmapOptions, anymmap.sync.MmapOptions):
        with pytest.raises(TypeError, match=r"^MmapOptions\(\) .* 'length'; did you mean len="):
            cls(length=4096)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^MmapOptions\(\) takes keyword arguments only"):
            cls(4096)  # type: ignore[arg-type]


async def test_map_raw_takes_prefill_like_mmap_raw(tmp_path: Any) -> None:
    """A raw map made from options grows its file the way ``MmapRaw.map_raw`` does:
    ``prefill`` is taken (adversary round 24: the README's ``...`` hid that it was not),
    checked, and used by ``resize``."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * PAGE)
    with pytest.raises(ValueError, match="prefill"):
        await MmapOptions().map_raw(path, prefill="sparse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prefill"):
        anymmap.sync.MmapOptions().map_raw(path, prefill="sparse")  # type: ignore[arg-type]
    async with await MmapOptions().map_raw(path, prefill="zeros") as m:
        await m.resize(4 * PAGE)
        assert await m.read(PAGE, 4) == b"\0" * 4
    assert path.stat().st_blocks * 512 >= 4 * PAGE  # (written: real blocks)
    with anymmap.sync.MmapOptions().map_raw(path, prefill="zeros") as twin:
        assert twin._core.prefill == "zeros"
