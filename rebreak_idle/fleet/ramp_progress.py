"""Progress of the start-up ramp in the log (the supervisor starts at most
``REBREAK_CONNECT_RATE`` sessions a second: 10,000 accounts at 50/s take over three
minutes).

While sessions of a ramp are starting, every :data:`REPORT_EVERY` seconds::

    [idle/db] ramp: started 250 / idle 231 / failed 4 of 10000

and once every started session has settled (idle or polling, or waiting after a failure)
with none left to start, one line with the time it took::

    [idle/db] ramp: all 10000 sessions idle after 203.4s
    [idle/db] ramp: 10000 sessions started in 203.9s; 9990 idle, 10 not idle (auth-failed 7,
    backoff 3)

One timer for the supervisor while a ramp runs (nothing per session); each check walks the
ramp's sessions once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

__all__ = ["CHECK_EVERY", "REPORT_EVERY", "RampProgress"]

log = Logger(namespace="rebreak_idle.ramp_progress")  # the namespace operators know

#: Seconds between two progress lines.
REPORT_EVERY = 5.0
#: Seconds between two checks whether the ramp has settled.
CHECK_EVERY = 1.0
_READY = frozenset({"idle", "polling"})
_FAILED = frozenset({"backoff", "auth-failed"})
_SETTLED = _READY | _FAILED | {"stopped"}


class RampProgress:
    """Fed by the supervisor: :meth:`started` for each session the ramp starts, :meth:`stop`
    when the supervisor stops; ``queued()`` says how many sessions wait to be started."""

    def __init__(self, clock: Any, queued: Callable[[], int]) -> None:
        self._clock = clock
        self._sessions: list[Any] = []
        self._queued = queued
        self._began = 0.0
        self._last_report = 0.0
        self._timer: Any = None
        #: called once each time a ramp has settled (the daemon: give free heap back)
        self.on_settled: Callable[[], object] | None = None

    @property
    def running(self) -> bool:
        return self._timer is not None

    def started(self, session: Any) -> None:
        if not hasattr(session, "state"):  # nothing to report on
            return
        if self._timer is None:
            self._sessions = []
            self._began = self._last_report = self._clock.seconds()
            self._timer = self._clock.callLater(CHECK_EVERY, self._check)
        self._sessions.append(session)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._sessions = []

    def counts(self) -> Counter[str]:
        return Counter(str(getattr(s, "state", "unknown")) for s in self._sessions)

    def _check(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        states = self.counts()
        queued = self._queued()
        started, total = len(self._sessions), len(self._sessions) + queued
        idle = sum(states[s] for s in _READY)
        failed = sum(states[s] for s in _FAILED)
        settled = sum(states[s] for s in _SETTLED)
        if queued == 0 and settled == started:
            took = now - self._began
            if idle == started:
                log.info("[idle/db] ramp: all {n} sessions idle after {seconds:.1f}s",
                         n=started, seconds=took)
            else:
                detail = ", ".join(f"{s} {states[s]}" for s in sorted(_FAILED | {"stopped"})
                                   if states[s])
                log.info("[idle/db] ramp: {n} sessions started in {seconds:.1f}s; {idle} idle,"
                         " {not_idle} not idle ({detail})", n=started, seconds=took,
                         idle=idle, not_idle=started - idle, detail=detail)
            self._sessions = []
            if self.on_settled is not None:
                self.on_settled()
            return
        if now - self._last_report >= REPORT_EVERY - 1e-9:
            self._last_report = now
            log.info("[idle/db] ramp: started {started} / idle {idle} / failed {failed} of "
                     "{total}", started=started, idle=idle, failed=failed, total=total)
        self._timer = self._clock.callLater(CHECK_EVERY, self._check)
