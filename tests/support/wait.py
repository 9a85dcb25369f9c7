"""Waiting on conditions with a deadline, for integration tests on the real reactor."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import task

__all__ = ["until"]


async def until(check: Callable[[], Any], deadline: float = 10.0, every: float = 0.05,
                what: str = "") -> Any:
    """Wait until ``check()`` returns a true value (and return it); fail after
    ``deadline`` seconds. For conditions that have no event to wait on (rows in the
    database, counters of a server)."""
    from twisted.internet import reactor

    end = time.monotonic() + deadline
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline}s: {what or check}")
        await task.deferLater(reactor, every, lambda: None)
