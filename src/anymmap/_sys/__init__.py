"""The system-call layer: one module per OS, chosen here once.

Linux is implemented and tested.  Elsewhere every call raises
:class:`~anymmap.UnsupportedError`; the public types never branch on the platform.
"""

from __future__ import annotations

import sys

if sys.platform == "linux":
    from . import _linux as os_impl
else:  # pragma: no cover - only Linux runs the tests
    from . import _unsupported as os_impl

__all__ = ["os_impl"]
