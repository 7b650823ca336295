"""Untrusted input: wherever a header is read from memory another process controls, a
fuzzer feeds it garbage and expects clean errors, never a crash or a read out of bounds.

The key-value server's log records are fuzzed in tests/test_kv_server.py; here, the shared
memory channel's header (``examples/shm_channel.py``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from hypothesis import given, settings
from hypothesis import strategies as st

from ._drive import scaled

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


channel = load("shm_channel")


@settings(max_examples=scaled(2_000, 50_000), deadline=None)
@given(
    data=st.binary(max_size=64),
    region_size=st.integers(1, 1 << 22),
    payload=st.binary(max_size=256),
)
def test_the_channel_header_refuses_garbage(data: bytes, region_size: int, payload: bytes) -> None:
    try:
        header = channel.decode_header(data)
    except ValueError:
        return
    try:
        channel.check_fits(header, region_size)
    except ValueError:
        return
    assert header.offset >= 0
    assert header.offset + header.length <= region_size  # a read there stays in bounds
    try:
        channel.check_payload(header, payload)
    except ValueError:
        return
    assert len(payload) == header.length


@settings(max_examples=scaled(500, 10_000), deadline=None)
@given(
    payload=st.binary(max_size=512),
    generation=st.integers(0, 2**32 - 1),
    seq=st.integers(0, 2**63),
)
def test_the_channel_header_round_trips(payload: bytes, generation: int, seq: int) -> None:
    header = channel.header_for(payload, generation, seq, 4096)
    decoded = channel.decode_header(channel.encode_header(header))
    assert decoded == header
    channel.check_payload(decoded, payload)
