from __future__ import annotations

import pytest

from tests.reliability._drive import PROFILE

#: pytest's timeout for one test of the long profile, which runs each attack ten to
#: twenty-five times longer than CI (the CI profile keeps the ini's 120 s): a long
#: stateful run takes about 100 s on this 2-core VM, more on a busy machine.
LONG_TIMEOUT = 1800


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/reliability carries the ``reliability`` marker (and, in the
    long profile, a timeout that fits it)."""
    for item in items:
        if "/reliability/" in str(item.fspath):
            item.add_marker(pytest.mark.reliability)
            if PROFILE == "long":
                item.add_marker(pytest.mark.timeout(LONG_TIMEOUT))
