"""The backend's health as the scan trigger sees it: one state for all accounts.

::

    up ──failed (connection error, timeout, 5xx, 408, 429)──▶ down
    up ──rejected (401, 403, 404)──▶ refusing
    down | refusing ──answered (2xx)──▶ up
    down ──rejected──▶ refusing      refusing ──failed──▶ down

While the backend is not up, :class:`~rebreak_idle.scan.trigger.ScanTrigger` sends no account's
own scan: every scan stays owed (:mod:`rebreak_idle.scan.owed`) and one *probe* at a time
(a real scan of the oldest owed mailbox) goes out after :meth:`BackendHealth.probe_delay`:
while down 1 s, 2 s, 4 s, then every 8 to 10 s (jittered; so the owed scans go out
within 10 s of the backend's return, however long it was away), and never before a
``Retry-After`` the backend asked for (bounded by :data:`MAX_RETRY_AFTER`); while refusing
(a wrong admin secret or URL) every :data:`REFUSING_PROBE_INTERVAL` or so, so that a fixed
backend configuration is noticed without a restart. The first 2xx makes it up again.

The values are what the ``rebreak_idle_backend_state{state}`` gauge shows.

This is where a failed scan's retry is decided: a scan that failed stays owed
(:mod:`rebreak_idle.scan.owed` keeps the book), and :meth:`BackendHealth.probe_delay` says
when the next try goes out. (A 4xx that concerns one request only is tried again after the
trigger's ``REJECTED_RETRY_DELAY``.)
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..timing.backoff import Backoff

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

__all__ = ["FIRST_PROBE_DELAY", "MAX_PROBE_DELAY", "MAX_RETRY_AFTER",
           "REFUSING_PROBE_INTERVAL", "TRANSITIONS", "BackendHealth", "BackendState",
           "Event"]

#: First delay before a probe once the backend is down, in seconds (then doubling, jittered
#: by up to a quarter).
FIRST_PROBE_DELAY = 1.0
#: Longest delay between two probes while down, before jitter (so at most 10 s with it):
#: the bound on how late the owed scans go out after the backend's return. One request
#: per 8-10 s is no load for a backend that is down.
MAX_PROBE_DELAY = 8.0
#: Delay between two probes while the backend refuses the triggers (401/403/404), before
#: jitter.
REFUSING_PROBE_INTERVAL = 180.0
#: A ``Retry-After`` longer than this (seconds) is taken as this.
MAX_RETRY_AFTER = 600.0


class BackendState(enum.StrEnum):
    UP = "up"
    DOWN = "down"
    #: answering, but refusing the triggers: a wrong ADMIN_SECRET (401/403) or URL (404)
    REFUSING = "refusing"


class Event(enum.Enum):
    ANSWERED = "answered"  # a 2xx answer
    FAILED = "failed"  # connection error, timeout, 5xx, 408, 429
    REJECTED = "rejected"  # 401, 403, 404


#: (state, event) → the next state
TRANSITIONS: dict[tuple[BackendState, Event], BackendState] = {
    (BackendState.UP, Event.ANSWERED): BackendState.UP,
    (BackendState.UP, Event.FAILED): BackendState.DOWN,
    (BackendState.UP, Event.REJECTED): BackendState.REFUSING,
    (BackendState.DOWN, Event.ANSWERED): BackendState.UP,
    (BackendState.DOWN, Event.FAILED): BackendState.DOWN,
    (BackendState.DOWN, Event.REJECTED): BackendState.REFUSING,
    (BackendState.REFUSING, Event.ANSWERED): BackendState.UP,
    (BackendState.REFUSING, Event.FAILED): BackendState.DOWN,
    (BackendState.REFUSING, Event.REJECTED): BackendState.REFUSING,
}


class BackendHealth:
    """The state, since when, why, and the pace of the probes.

    :param clock: gives the time (the reactor, or :class:`~twisted.internet.task.Clock`).
    :param jitter: a callable in [0, 1) for the probes' jitter (tests pass ``lambda: 0``).
    :param first_probe_delay: the first delay while down (tests on the real reactor
        shorten it); it doubles up to :data:`MAX_PROBE_DELAY`.
    """

    def __init__(self, clock: IReactorTime, *,
                 jitter: Callable[[], float] = random.random,
                 first_probe_delay: float = FIRST_PROBE_DELAY) -> None:
        self._clock = clock
        self._jitter = jitter
        self.state = BackendState.UP
        #: reactor time of the move out of UP (None while up)
        self.since: float | None = None
        #: why it is not up (secret-free text); None while up
        self.reason: str | None = None
        self._backoff = Backoff(first_probe_delay, MAX_PROBE_DELAY, spread=0.25,
                                jitter=jitter)
        #: reactor time before which no probe goes out (Retry-After)
        self._not_before = 0.0

    @property
    def up(self) -> bool:
        return self.state is BackendState.UP

    def answered(self) -> BackendState:
        """A 2xx answer; returns the state before it."""
        old = self._move(Event.ANSWERED)
        self.since = self.reason = None
        self._backoff.reset()
        self._not_before = 0.0
        return old

    def failed(self, reason: str, retry_after: float | None = None) -> BackendState:
        """An attempt failed in a way worth retrying; ``retry_after`` (seconds, from the
        answer's header) holds the next probe back. Returns the state before it."""
        if retry_after is not None:
            wait = min(max(0.0, retry_after), MAX_RETRY_AFTER)
            self._not_before = max(self._not_before, self._clock.seconds() + wait)
        return self._leave(Event.FAILED, reason)

    def rejected(self, reason: str) -> BackendState:
        """The backend refused the trigger (401, 403, 404); returns the state before it."""
        return self._leave(Event.REJECTED, reason)

    def probe_delay(self) -> float:
        """Seconds until the next probe (counts one more probe while down)."""
        if self.state is BackendState.REFUSING:
            delay = REFUSING_PROBE_INTERVAL * (1.0 + 0.25 * self._jitter())
        else:
            delay = self._backoff.next()
        return max(delay, self._not_before - self._clock.seconds())

    def down_for(self) -> float:
        """Seconds since the backend stopped being up (0 while up)."""
        return 0.0 if self.since is None else max(0.0, self._clock.seconds() - self.since)

    def _leave(self, event: Event, reason: str) -> BackendState:
        old = self._move(event)
        if self.since is None:
            self.since = self._clock.seconds()
        if old is not self.state:
            self.reason = reason
        return old

    def _move(self, event: Event) -> BackendState:
        old = self.state
        self.state = TRANSITIONS[(old, event)]
        return old
