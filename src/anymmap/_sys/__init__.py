"""The system-call layer: one module per OS behind one interface, chosen here once.

Linux is implemented and tested.  Elsewhere every call raises
:class:`~anymmap.UnsupportedError`; the public types never branch on the platform.
:func:`signals_held` (``_signals.py``, portable) keeps a signal handler from running
between a system call and the code that records what it did, here and in the core.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ._interface import OSInterface
from ._signals import (
    DISARMED,
    ON_DROP,
    Hold,
    collector_off,
    give_back_skipped,
    is_kept,
    keep_until_dropped,
    let_go,
    signals_held,
    start_thread,
    whole,
)

os_impl: OSInterface
if sys.platform == "linux":
    from . import _linux as os_impl
else:  # pragma: no cover - only Linux runs the tests
    from . import _unsupported as os_impl

if TYPE_CHECKING:
    # Each platform module must implement the whole interface: mypy checks both here,
    # whatever platform it runs on.
    from . import _linux, _unsupported

    _linux_implements: OSInterface = _linux
    _unsupported_implements: OSInterface = _unsupported

__all__ = [
    "DISARMED",
    "ON_DROP",
    "Hold",
    "OSInterface",
    "collector_off",
    "give_back_skipped",
    "is_kept",
    "keep_until_dropped",
    "let_go",
    "os_impl",
    "signals_held",
    "start_thread",
    "whole",
]
