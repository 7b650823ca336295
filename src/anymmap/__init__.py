"""anymmap: async-first memory maps for asyncio and trio."""

from __future__ import annotations

from ._rwlock import RWLock as RWLock
from ._rwlock import RWLockStatistics as RWLockStatistics

# Re-export the public names as if they were defined here, so that reprs and tracebacks
# say ``anymmap.RWLock`` (the anyio convention).
for __value in list(locals().values()):
    if getattr(__value, "__module__", "").startswith("anymmap._"):
        __value.__module__ = __name__

del __value
