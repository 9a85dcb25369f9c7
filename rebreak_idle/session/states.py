"""The states of a :class:`~rebreak_idle.session.session.MailboxSession` and the transitions
between them.

::

    stopped ──start──▶ connecting ──greeting, STARTTLS──▶ authenticating ──login OK──▶
        selecting ──SELECT, IDLE──▶ idle (or polling, without IDLE)
    any connected state ──connection ended──▶ backoff | auth-failed ──delay──▶ connecting
    any state ──stop──▶ stopped

The values are what /status, the ``rebreak_idle_sessions{state}`` gauge and the logs show.
"""

from __future__ import annotations

import enum
from typing import Any

from .. import metrics

__all__ = ["TRANSITIONS", "ForbiddenTransition", "State", "StateTally", "check_transition",
           "state_gauge"]


class State(enum.StrEnum):
    STOPPED = "stopped"
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    SELECTING = "selecting"
    IDLE = "idle"
    POLLING = "polling"
    BACKOFF = "backoff"
    AUTH_FAILED = "auth-failed"

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
_ENDED = frozenset({State.BACKOFF, State.AUTH_FAILED, State.STOPPED})

#: state → the states it may change to
TRANSITIONS: dict[State, frozenset[State]] = {
    # AUTH_FAILED: a credential hold-off of an earlier run is not over yet
    State.STOPPED: frozenset({State.CONNECTING, State.AUTH_FAILED}),
    State.CONNECTING: frozenset({State.AUTHENTICATING}) | _ENDED,
    State.AUTHENTICATING: frozenset({State.SELECTING}) | _ENDED,
    State.SELECTING: _READY | _ENDED,
    State.IDLE: _ENDED,
    State.POLLING: _ENDED,
    State.BACKOFF: frozenset({State.CONNECTING, State.STOPPED}),
    State.AUTH_FAILED: frozenset({State.CONNECTING, State.STOPPED}),
}


class ForbiddenTransition(RuntimeError):
    """A session was asked to change to a state that its current one does not lead to."""


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
