"""Folding a flood of one log line into a count.

A server that pushes ``* N EXISTS`` with rising N tens of thousands of times a second
would otherwise make one info line each (227 MB of log in 40 s). :class:`EventFold` keeps
the first lines of a burst as they are (the CONTRACT §6 line the dashboards grep: the
first :data:`FULL_LINES` of a window, so that a few messages arriving together each still
get theirs) and folds the rest into one summary line per window, ``... (+N more in Ns)``;
a quiet window ends the burst, and the next event is logged in full again. At most
``FULL_LINES + 1`` lines per account per window, whatever the server sends.

One fold per account, made at its first event (no object for an account that never gets
mail), its timer on the sessions' shared :class:`~rebreak_idle.timing.wheel.TimerWheel`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..timing.delayed_calls import cancel_pending

__all__ = ["FOLD_WINDOW", "FULL_LINES", "EventFold", "exists_fold"]

#: Seconds one summary line covers at most.
FOLD_WINDOW = 10.0
#: Events logged in full at the start of a burst.
FULL_LINES = 3


class EventFold:
    """``event()`` for each occurrence: ``first()`` for the first ``full`` of a burst,
    ``summary(count, seconds)`` at the end of each window that had more."""

    __slots__ = ("_first", "_full", "_summary", "_timer", "_timers", "_window", "count",
                 "shown", "since")

    def __init__(self, timers: Any, first: Callable[[], None],
                 summary: Callable[[int, float], None], window: float = FOLD_WINDOW,
                 full: int = FULL_LINES) -> None:
        self._timers = timers
        self._full = full
        self.shown = 0
        self._first = first
        self._summary = summary
        self._window = window
        self._timer: Any = None
        self.count = 0
        self.since = 0.0

    def event(self) -> None:
        if self._timer is None:
            self.shown = 0
            self._open()
        if self.shown < self._full:
            self.shown += 1
            self._first()
        else:
            self.count += 1

    def _open(self) -> None:
        self.count = 0
        self.since = self._timers.seconds()
        self._timer = self._timers.callLater(self._window, self._window_ended)

    def _window_ended(self) -> None:
        self._timer = None
        if self.count:
            self._summary(self.count, self._timers.seconds() - self.since)
            self._open()  # still flooding: the next window folds too

    def flush(self) -> None:
        """Log what is folded now and end the burst (the session stops)."""
        timer, self._timer = self._timer, None
        cancel_pending(timer)
        if self.count:
            self._summary(self.count, self._timers.seconds() - self.since)
            self.count = 0


def exists_fold(timers: Any, email: str, account_id: str,
                exists: Callable[[], int]) -> EventFold:
    """The fold of one account's ``exists-event received (new mail)`` lines (CONTRACT §6);
    ``exists()`` gives the count to log with each."""
    from twisted.logger import Logger

    log = Logger(namespace="rebreak_idle.session")

    def first() -> None:
        log.info("[idle/{email}] exists-event received (new mail)", email=email,
                 account_id=account_id, exists=exists())

    def summary(more: int, seconds: float) -> None:
        log.info("[idle/{email}] exists-event received (new mail) (+{more} more in "
                 "{seconds:.0f}s)", email=email, account_id=account_id, more=more,
                 seconds=seconds, exists=exists())

    return EventFold(timers, first, summary)
