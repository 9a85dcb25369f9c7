"""Small Deferred helpers used across the rooms.

:class:`Coalesced`: runs of one asynchronous operation that never overlap and never queue up.
:class:`Waiters`: callers waiting for one event ("listening", "nothing in flight"), fired
together; a settled outcome answers later callers at once.
:func:`within`: whether a Deferred fired within a deadline, without cancelling it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

__all__ = ["Coalesced", "Waiters", "within"]


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


class Waiters:
    """Deferreds waiting for one event.

    ``wait()`` returns a Deferred that fires at the next :meth:`fire` (with its result, or
    fails with the Failure given). ``settle(outcome)`` fires every waiter and also keeps
    ``outcome``, so that later ``wait()`` calls answer at once until :meth:`unsettle`.
    """

    __slots__ = ("_outcome", "_settled", "_waiting")

    def __init__(self) -> None:
        self._waiting: list[Deferred] = []
        self._settled = False
        self._outcome: Any = None

    @property
    def settled(self) -> bool:
        return self._settled

    def wait(self) -> Deferred:
        if self._settled:
            outcome = self._outcome
            return fail(outcome) if isinstance(outcome, Failure) else succeed(outcome)
        d: Deferred = Deferred()
        self._waiting.append(d)
        return d

    def fire(self, outcome: Any = None) -> None:
        """Fire the current waiters with ``outcome`` (a Failure errbacks them)."""
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(outcome)

    def settle(self, outcome: Any = None) -> None:
        """Fire the waiters and answer later ``wait()`` calls with ``outcome`` too."""
        self._settled = True
        self._outcome = outcome
        self.fire(outcome)

    def unsettle(self) -> None:
        """Later ``wait()`` calls wait for the next :meth:`fire` / :meth:`settle` again."""
        self._settled = False
        self._outcome = None


def within(d: Deferred, seconds: float, clock: Any) -> Deferred:
    """A Deferred that fires True when ``d`` fires (either way) and False after
    ``seconds``; ``d`` itself is neither cancelled nor consumed (it may go on)."""
    out: Deferred = Deferred()

    def fired(result: Any) -> Any:
        if not out.called:
            out.callback(True)
        return result

    d.addBoth(fired)
    timer = clock.callLater(seconds, lambda: out.called or out.callback(False))
    out.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
    return out
