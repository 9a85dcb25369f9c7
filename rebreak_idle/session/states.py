"""The states of a :class:`~rebreak_idle.session.session.MailboxSession` and the transitions
between them.

::

    stopped ──attempt──▶ connecting ──greeted──▶ authenticating ──selecting──▶
        selecting ──idling──▶ idle (or ──polling──▶ polling, without IDLE)
    any connected state ──ended──▶ backoff | ──refused──▶ auth-failed
    backoff | auth-failed ──attempt (the wait is over)──▶ connecting
    stopped ──held-off (saved by an earlier run)──▶ auth-failed
    any connected state ──stop──▶ stopping ──gone (DONE + LOGOUT, connection closed)──▶ stopped
    backoff | auth-failed ──stop──▶ stopped (nothing to close)

:data:`MOVES` is the table, with the event beside each move; the session drives its own
connection through it (connect, wait, connect again: no second machine beside it).

The values are what /status, the ``rebreak_idle_sessions{state}`` gauge and the logs show.
"""

from __future__ import annotations

import enum
from typing import Any

from .. import metrics

__all__ = ["MOVES", "TRANSITIONS", "Event", "ForbiddenTransition", "State", "StateTally",
           "check_transition", "move", "state_gauge"]


class State(enum.StrEnum):
    STOPPED = "stopped"
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    SELECTING = "selecting"
    IDLE = "idle"
    POLLING = "polling"
    BACKOFF = "backoff"
    AUTH_FAILED = "auth-failed"
    STOPPING = "stopping"

    @property
    def ready(self) -> bool:
        """Logged in with the mailbox selected: idling or polling."""
        return self in _READY

    @property
    def waiting(self) -> bool:
        """Waiting for the next connect attempt."""
        return self in _WAITING


_READY = frozenset({State.IDLE, State.POLLING})
_WAITING = frozenset({State.BACKOFF, State.AUTH_FAILED})


class Event(enum.StrEnum):
    """What moves a session from one state to the next (see :data:`MOVES`)."""

    ATTEMPT = "attempt"  # start, or the wait is over: the session connects
    HELD_OFF = "held-off"  # start: a credential hold-off saved by an earlier run goes on
    GREETED = "greeted"  # the greeting (and STARTTLS) read: the login is sent
    SELECTING = "selecting"  # the login was accepted: SELECT INBOX is sent
    IDLING = "idling"  # SELECT answered and the server took IDLE
    POLLING = "polling"  # SELECT answered; the server has no IDLE: NOOP every poll
    ENDED = "ended"  # the connection or attempt ended: wait the backoff, then connect
    REFUSED = "refused"  # ended with the credentials refused: wait the hold-off
    STOP = "stop"  # stopService: a connection is closed (DONE + LOGOUT), a wait cancelled
    GONE = "gone"  # the stopped session's connection is gone (or its attempt cancelled)


_CONNECTED = (State.CONNECTING, State.AUTHENTICATING, State.SELECTING, State.IDLE,
              State.POLLING)

#: (state, event) → the next state: every move a session makes, and what makes it. The
#: connection's waits are the session's own (BACKOFF and AUTH_FAILED end with ATTEMPT on
#: the session's timer); "waiting for the host budget" is CONNECTING before the budget's
#: admission (``ProviderLimits.admitted``).
MOVES: dict[tuple[State, Event], State] = {
    (State.STOPPED, Event.ATTEMPT): State.CONNECTING,
    (State.STOPPED, Event.HELD_OFF): State.AUTH_FAILED,
    (State.CONNECTING, Event.GREETED): State.AUTHENTICATING,
    (State.AUTHENTICATING, Event.SELECTING): State.SELECTING,
    (State.SELECTING, Event.IDLING): State.IDLE,
    (State.SELECTING, Event.POLLING): State.POLLING,
    **{(state, Event.ENDED): State.BACKOFF for state in _CONNECTED},
    **{(state, Event.REFUSED): State.AUTH_FAILED for state in _CONNECTED},
    (State.BACKOFF, Event.ATTEMPT): State.CONNECTING,
    (State.AUTH_FAILED, Event.ATTEMPT): State.CONNECTING,
    **{(state, Event.STOP): State.STOPPING for state in _CONNECTED},
    (State.BACKOFF, Event.STOP): State.STOPPED,
    (State.AUTH_FAILED, Event.STOP): State.STOPPED,
    (State.STOPPING, Event.GONE): State.STOPPED,
}

#: state → the states it may change to (the targets of :data:`MOVES`)
TRANSITIONS: dict[State, frozenset[State]] = {
    state: frozenset(new for (old, _), new in MOVES.items() if old is state)
    for state in State
}


class ForbiddenTransition(RuntimeError):
    """A session was asked to change to a state that its current one does not lead to."""


def move(state: State, event: Event) -> State:
    """The state that ``event`` moves ``state`` to (:class:`ForbiddenTransition` when
    :data:`MOVES` has no such move)."""
    new = MOVES.get((state, event))
    if new is None:
        raise ForbiddenTransition(f"session state {state} has no move on {event}")
    return new


def check_transition(old: State, new: State) -> None:
    """Raise :class:`ForbiddenTransition` unless ``old`` may change to ``new``."""
    if new not in TRANSITIONS[old]:
        raise ForbiddenTransition(f"session state {old} cannot change to {new}")


#: SESSIONS{state} children by state (``labels()`` takes a lock and builds a key per call)
_STATE_GAUGES: dict[State, Any] = {}


def state_gauge(state: State) -> Any:
    """The ``rebreak_idle_sessions`` gauge child of ``state``."""
    gauge = _STATE_GAUGES.get(state)
    if gauge is None:
        gauge = _STATE_GAUGES[state] = metrics.SESSIONS.labels(state=state.value)
    return gauge


class StateTally:
    """How many sessions are in each state other than ``stopped``, and how many are ready
    (idle or polling) per IMAP host, kept up to date by the sessions themselves (each
    :meth:`moved` is O(1)): the status page and ``/metrics`` read their counts here
    instead of walking every session. One per daemon, passed to each session it makes."""

    __slots__ = ("_counts", "_ready")

    def __init__(self) -> None:
        self._counts: dict[State, int] = dict.fromkeys(State, 0)
        self._ready: dict[str, int] = {}

    def moved(self, old: State, new: State, host: str = "") -> None:
        """A session of ``host`` changed from ``old`` to ``new``."""
        counts = self._counts
        if old is not State.STOPPED:
            counts[old] -= 1
        if new is not State.STOPPED:
            counts[new] += 1
        ready = self._ready
        if old in _READY:
            left = ready[host] - 1
            if left:
                ready[host] = left
            else:
                del ready[host]
        if new in _READY:
            ready[host] = ready.get(host, 0) + 1

    def counts(self) -> dict[State, int]:
        """A copy: state → sessions in it (``stopped`` not counted: always 0)."""
        return dict(self._counts)

    def ready_by_host(self) -> dict[str, int]:
        """A copy: IMAP host → its sessions that are idle or polling."""
        return dict(self._ready)
