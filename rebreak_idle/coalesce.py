"""Runs of one asynchronous operation that never overlap and never queue up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["Coalesced"]


class Coalesced:
    """Call it to run ``operation()`` (which returns a Deferred). A call while a run is in
    progress does not start another: it waits for one more run after the current one,
    shared by every caller in the meantime. So however many calls pile up (a refresh per
    NOTIFY, a flush per recorded error), one run is going and at most one is waiting.

    Each caller's Deferred fires with the result of the run that served it; a failed run
    fires them with ``on_failure(failure)`` instead, so callers never see a failure.
    """

    def __init__(self, operation: Callable[[], Deferred],
                 on_failure: Callable[[Failure], Any]) -> None:
        self._operation = operation
        self._on_failure = on_failure
        self._running = False
        self._waiting: list[Deferred] = []

    @property
    def running(self) -> bool:
        return self._running

    def __call__(self) -> Deferred:
        d: Deferred = Deferred()
        self._waiting.append(d)
        if not self._running:
            self._run()
        return d

    def _run(self) -> None:
        served, self._waiting = self._waiting, []
        self._running = True

        def done(result: Any) -> None:
            self._running = False
            for d in served:
                d.callback(result)
            if self._waiting:
                self._run()

        self._operation().addErrback(self._on_failure).addCallback(done)
