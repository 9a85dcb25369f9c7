"""The scan trigger's two small state machines, each an enum and a table of
``(state, event) → state`` checked on every move (the style of
:mod:`~rebreak_idle.scan.backend_health`):

* :class:`Phase`, the trigger's own life: it takes requests (``OPEN``, also before its
  first start), stops taking them and lets the scans in flight finish (``DRAINING``),
  then cancels those still in flight when the stop budget is spent (``ABANDONING``);
* :class:`ScanState`, one account's scans (an :class:`AccountScan` per account that owes
  a scan or has one in flight): ``OWING`` (nothing in flight, no timer: it goes when the
  backend is up and its turn comes), ``WAITING`` (its timer runs: the minimum interval, or
  the retry after a 4xx of its own), ``SENDING`` (one scan in flight), ``DISCARDED`` (a
  scan in flight of an account no longer watched: its outcome is not kept). An account
  with nothing owed, in flight or waiting has no AccountScan.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IDelayedCall

    from .request import Job

__all__ = ["PHASE_TRANSITIONS", "SCAN_TRANSITIONS", "AccountScan", "Phase", "PhaseEvent",
           "ScanEvent", "ScanState", "ScanTransitionError"]


class ScanTransitionError(RuntimeError):
    """A move the table does not allow: a bug in the trigger."""


class Phase(enum.Enum):
    OPEN = "open"
    DRAINING = "draining"
    ABANDONING = "abandoning"


class PhaseEvent(enum.Enum):
    START = "start"        # startService
    STOP = "stop"          # stopService: owed scans dropped, those in flight awaited
    TIMEOUT = "timeout"    # the stop's shutdown_timeout passed with scans in flight


#: (phase, event) → the next phase
PHASE_TRANSITIONS: dict[tuple[Phase, PhaseEvent], Phase] = {
    (Phase.OPEN, PhaseEvent.START): Phase.OPEN,
    (Phase.OPEN, PhaseEvent.STOP): Phase.DRAINING,
    (Phase.DRAINING, PhaseEvent.TIMEOUT): Phase.ABANDONING,
    (Phase.DRAINING, PhaseEvent.START): Phase.OPEN,
    (Phase.DRAINING, PhaseEvent.STOP): Phase.DRAINING,          # stopped again
    (Phase.ABANDONING, PhaseEvent.START): Phase.OPEN,
    (Phase.ABANDONING, PhaseEvent.STOP): Phase.ABANDONING,      # stopped again
    (Phase.ABANDONING, PhaseEvent.TIMEOUT): Phase.ABANDONING,   # ... and timed out again
}


class ScanState(enum.Enum):
    OWING = "owing"
    WAITING = "waiting"
    SENDING = "sending"
    DISCARDED = "discarded"


class ScanEvent(enum.Enum):
    WAIT = "wait"            # its minimum interval is not over: a timer is armed
    WAIT_OVER = "wait-over"  # the timer fired
    SEND = "send"            # its oldest owed scan goes out (or is probed)
    REJECTED = "rejected"    # a 4xx of its own: tried again after a while (timer armed)
    FINISHED = "finished"    # the scan in flight finished (any outcome)
    DISCARD = "discard"      # the account is no longer watched
    REQUEST = "request"      # a new request for it (watched again)


OWING, WAITING, SENDING, DISCARDED = ScanState
#: (state, event) → the next state. Not listed: an account is forgotten (its AccountScan
#: dropped) when it is OWING or WAITING and owes nothing any more, or is discarded, or
#: the trigger stops.
SCAN_TRANSITIONS: dict[tuple[ScanState, ScanEvent], ScanState] = {
    (OWING, ScanEvent.WAIT): WAITING,
    (OWING, ScanEvent.SEND): SENDING,
    (OWING, ScanEvent.REQUEST): OWING,
    (WAITING, ScanEvent.WAIT_OVER): OWING,
    (WAITING, ScanEvent.REQUEST): WAITING,
    (SENDING, ScanEvent.REJECTED): WAITING,
    (SENDING, ScanEvent.FINISHED): OWING,
    (SENDING, ScanEvent.DISCARD): DISCARDED,
    (SENDING, ScanEvent.REQUEST): SENDING,
    (DISCARDED, ScanEvent.FINISHED): OWING,
    (DISCARDED, ScanEvent.REQUEST): SENDING,
}


class AccountScan:
    """One account's scans: its :class:`ScanState`, the scan in flight (``job`` and the
    Deferred of its run, SENDING and DISCARDED only) and its timer (WAITING only)."""

    __slots__ = ("job", "running", "state", "timer")

    def __init__(self) -> None:
        self.state = OWING
        self.job: Job | None = None
        self.running: Deferred[None] | None = None
        self.timer: IDelayedCall | None = None

    def move(self, event: ScanEvent) -> ScanState:
        """Take ``event``; returns the new state. ScanTransitionError when the table has
        no move for it."""
        to = SCAN_TRANSITIONS.get((self.state, event))
        if to is None:
            raise ScanTransitionError(f"account scan {self.state.value} cannot take "
                                      f"{event.value}")
        if to is not SENDING and to is not DISCARDED:
            self.job = self.running = None
        if to is not WAITING:
            self.timer = None
        self.state = to
        return to

    @property
    def keeps_outcomes(self) -> bool:
        """Whether its outcomes are remembered (not once the account is discarded)."""
        return self.state is not DISCARDED


def next_phase(phase: Phase, event: PhaseEvent) -> Phase:
    """The phase after ``event``; ScanTransitionError when the table has no move."""
    to = PHASE_TRANSITIONS.get((phase, event))
    if to is None:
        raise ScanTransitionError(f"scan trigger {phase.value} cannot take {event.value}")
    return to
