"""The IDLE exchange (RFC 2177) as an explicit state machine: one :class:`IdleState`
attribute, the allowed moves in :data:`TRANSITIONS`, enforced by ``IdleExchange.move``.

The usual path is ``OFF → REQUESTED → IDLING → DONE_SENT → OFF``. The heartbeat's
``done_noop(idle_again=True)`` writes DONE, NOOP and the next IDLE in one write:
``IDLING → DONE_SENT_IDLE_AHEAD`` (the first IDLE's answer awaited) ``→ IDLE_AHEAD`` (the
NOOP runs, the next IDLE waits behind it) ``→ REQUESTED`` when ``idle()`` was already called
for it, else ``AHEAD_REQUESTED`` (nobody has claimed it yet) ``→ AHEAD_IDLING`` when its
``+`` arrives first; ``idle()`` claims it (``→ REQUESTED`` / ``IDLING``). The server may end
an IDLE by itself (``IDLING → OFF``); a lost connection ends any state (``→ OFF``).

DONE is written when the owner asks (``done``, ``done_noop``, ``logout``) or, when a
command waits behind an IDLE whose ``+`` has not arrived yet (``logout`` during
``REQUESTED``), as soon as that ``+`` arrives.

``IdleExchange`` is an object of its own, owned by the client and given the connection's
:class:`~rebreak_idle.imap.commands.CommandQueue` (it writes DONE, and the NOOP and next
IDLE pipelined behind it, through the queue). It holds the state and the two waiters: the
``idle()`` caller's (for the next ``+``) and the ``done()`` caller's (for the IDLE's
answer). It knows nothing else of the connection: the client refuses ``idle()`` once
closed, and tells the exchange the IDLE's answers and the end of the connection.
"""

from __future__ import annotations

import enum
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from .commands import Command, CommandQueue, command_failed, ignore
from .errors import CommandFailed, IMAPError
from .parser import text

__all__ = ["TRANSITIONS", "IdleExchange", "IdleState", "IdleTransitionError"]


class IdleState(enum.Enum):
    OFF = "off"                        # no IDLE command queued or on the wire
    REQUESTED = "requested"            # IDLE queued or written, its "+" awaited
    IDLING = "idling"                  # "+" arrived: the server pushes updates
    DONE_SENT = "done-sent"            # DONE written, the IDLE's tagged answer awaited
    DONE_SENT_IDLE_AHEAD = "done-sent-idle-ahead"  # DONE, NOOP and a new IDLE written
    IDLE_AHEAD = "idle-ahead"          # the NOOP runs; the IDLE written ahead waits
    AHEAD_REQUESTED = "ahead-requested"  # the IDLE written ahead runs, nobody claimed it
    AHEAD_IDLING = "ahead-idling"      # ... and its "+" arrived

    # members are singletons compared by identity: hash them by identity too, in C
    __hash__ = object.__hash__


# the members as module constants: a global is read ten times faster than an Enum
# member (and the state is checked on every IDLE, DONE and "+" of 10,000 sessions)
(OFF, REQUESTED, IDLING, DONE_SENT, DONE_SENT_IDLE_AHEAD, IDLE_AHEAD, AHEAD_REQUESTED,
 AHEAD_IDLING) = IdleState

#: state → the states it may move to (every state may end in OFF: connection lost)
TRANSITIONS: dict[IdleState, frozenset[IdleState]] = {
    OFF: frozenset({REQUESTED}),
    REQUESTED: frozenset({IDLING, OFF}),
    IDLING: frozenset({DONE_SENT, DONE_SENT_IDLE_AHEAD, OFF}),
    DONE_SENT: frozenset({OFF}),
    DONE_SENT_IDLE_AHEAD: frozenset({IDLE_AHEAD, OFF}),
    IDLE_AHEAD: frozenset({REQUESTED, AHEAD_REQUESTED, OFF}),
    AHEAD_REQUESTED: frozenset({REQUESTED, AHEAD_IDLING, OFF}),
    AHEAD_IDLING: frozenset({IDLING, DONE_SENT, DONE_SENT_IDLE_AHEAD, OFF}),
}

#: the IDLE's "+" has arrived and its tagged answer has not
_IDLING = frozenset({IDLING, AHEAD_IDLING, DONE_SENT, DONE_SENT_IDLE_AHEAD})
#: idling and no DONE written yet
_DONE_POSSIBLE = frozenset({IDLING, AHEAD_IDLING})
_DONE_WRITTEN = frozenset({DONE_SENT, DONE_SENT_IDLE_AHEAD})
#: the idle() caller's waiter belongs to the running IDLE (not to one written ahead)
_WAITING_FOR_PLUS = frozenset({REQUESTED, AHEAD_REQUESTED})


class IdleTransitionError(RuntimeError):
    """A move the table does not allow: a bug in the client, never the server's doing."""


class IdleExchange:
    """IDLE, DONE and the pipelined heartbeat of one connection, over its command queue."""

    __slots__ = ("_commands", "_done_waiter", "_idle_waiter", "_state")

    def __init__(self, commands: CommandQueue) -> None:
        self._commands = commands
        self._state = OFF
        #: who waits for the next IDLE's "+" (idle()), and for the IDLE's answer to DONE
        self._idle_waiter: defer.Deferred | None = None
        self._done_waiter: defer.Deferred | None = None

    @property
    def state(self) -> IdleState:
        return self._state

    @property
    def idling(self) -> bool:
        """True from the IDLE's ``+`` to its tagged answer."""
        return self._state in _IDLING

    def move(self, to: IdleState) -> None:
        """Move to ``to`` when the table allows it, else :class:`IdleTransitionError`."""
        if to not in TRANSITIONS[self._state]:
            raise IdleTransitionError(f"IDLE state {self._state.value} cannot move to "
                                      f"{to.value}")
        self._state = to

    # ------------------------------------------------------------------ the owner's calls

    def idle(self) -> defer.Deferred:
        """Send IDLE; fires when the server's ``+`` arrives (``idling`` is then True).
        Fails :class:`CommandFailed` when the server answers NO/BAD. After
        ``done_noop(idle_again=True)`` it claims the IDLE already written."""
        state = self._state
        if state is AHEAD_IDLING:
            self.move(IDLING)
            return defer.succeed(None)
        if state is AHEAD_REQUESTED:
            self.move(REQUESTED)
        elif state in (IDLE_AHEAD, DONE_SENT_IDLE_AHEAD):
            if self._idle_waiter is None:
                self._idle_waiter = defer.Deferred()
            return self._idle_waiter
        elif state is not OFF:
            return defer.fail(IMAPError("IDLE already in progress"))
        else:
            self.move(REQUESTED)
            self._commands.send(self._idle_command())
        self._idle_waiter = defer.Deferred()
        return self._idle_waiter

    def done(self) -> defer.Deferred:
        """End the IDLE with DONE; fires on the IDLE command's tagged OK (deadline
        ``noop_timeout``)."""
        if self._state in _DONE_WRITTEN:
            assert self._done_waiter is not None
            return self._done_waiter
        if self._state not in _DONE_POSSIBLE:
            return defer.fail(IMAPError("not idling"))
        return self._write_done(DONE_SENT)

    def done_noop(self, idle_again: bool = False,
                  between: tuple[Command, ...] = ()) -> defer.Deferred:
        """End the IDLE and send a NOOP in the same write (RFC 3501 §5.5: the client may
        send the next command once it has sent DONE), with ``idle_again`` an IDLE after
        the NOOP as well. Fires with None on the NOOP's tagged OK, which arrives after the
        IDLE's tagged OK; with ``idle_again`` the next ``idle()`` then waits for the
        continuation of the IDLE already sent instead of sending one. Deadlines as for
        ``done()``, ``noop()`` and ``idle()`` one after the other: the IDLE's OK within
        ``noop_timeout`` of the DONE, the NOOP's OK within ``noop_timeout`` of that, the
        new IDLE's continuation within ``command_timeout`` of the NOOP's OK. Fails like
        ``done()`` when the IDLE ends with NO/BAD and like ``noop()`` when the NOOP
        does. ``between``: commands (the extra folders' STATUS) written after the NOOP and
        before the next IDLE, in the same write; each answers on its own Deferred."""
        if self._state not in _IDLING:
            return defer.fail(IMAPError("not idling"))
        commands = self._commands
        if self._state in _DONE_WRITTEN or commands.waiting:
            return defer.fail(IMAPError("DONE already sent"))
        noop = Command(b"NOOP", [b"NOOP"], commands.noop_timeout)
        then = commands.ahead(noop)
        for cmd in between:
            then += commands.ahead(cmd)
        if idle_again:
            then += commands.ahead(self._idle_command())
        done = self._write_done(DONE_SENT_IDLE_AHEAD if idle_again else DONE_SENT, then)
        result: defer.Deferred = defer.Deferred()

        def done_failed(failure: Failure) -> None:
            if not result.called:
                result.errback(failure)

        def noop_answered(outcome: Any) -> None:
            if result.called:
                return
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(None)

        done.addErrback(done_failed)
        noop.deferred.addBoth(noop_answered)
        return result

    # ------------------------------------------------------------------ the client's calls

    def end_with(self, cmd: Command) -> bool:
        """Before ``cmd`` (LOGOUT) is sent: end a running IDLE. True when DONE and ``cmd``
        went out in one write; False when ``cmd`` is to be queued (behind an IDLE whose
        ``+`` is awaited, DONE then goes on that ``+``)."""
        if self._state not in _DONE_POSSIBLE:
            return False
        if self._commands.waiting:  # pragma: no cover - a command behind a running IDLE
            self._write_done(DONE_SENT).addErrback(ignore)
            return False
        # DONE and LOGOUT in one write, like a heartbeat's DONE and NOOP: one round trip
        # less for each of 10,000 sessions when the daemon stops
        self._write_done(DONE_SENT, self._commands.ahead(cmd)).addErrback(ignore)
        return True

    def answered(self, cmd: Command, status: bytes, code: bytes | None,
                 data: bytes) -> str | None:
        """The running IDLE's tagged answer. Returns the server's text when the server
        ended the IDLE by itself (the client reports it: ``on_idle_ended``), else None."""
        state = self._state
        idle_w = None
        if state in _WAITING_FOR_PLUS:
            idle_w, self._idle_waiter = self._idle_waiter, None
        done_w, self._done_waiter = self._done_waiter, None
        self.move(IDLE_AHEAD if state is DONE_SENT_IDLE_AHEAD else OFF)
        if status == b"OK":
            if idle_w is not None:
                idle_w.errback(Failure(CommandFailed(
                    "IDLE ended without continuation: " + text(data), "OK", None, "IDLE")))
            if done_w is not None:
                done_w.callback(None)
            elif state in _IDLING:
                return text(data)
            return None
        error = command_failed(cmd, status, code, data)
        for d in (idle_w, done_w):
            if d is not None:
                d.errback(Failure(error))
        return None

    def ended(self) -> list[defer.Deferred | None]:
        """The connection is closing: back to OFF; returns the waiters to fail."""
        waiters = [self._idle_waiter, self._done_waiter]
        self._idle_waiter = self._done_waiter = None
        if self._state is not OFF:
            self.move(OFF)
        return waiters

    def refused(self, name: bytes) -> defer.Deferred | None:
        """A failed Deferred for command ``name`` while an IDLE is in progress."""
        if self._state is OFF:
            return None
        return defer.fail(IMAPError(
            f"{name.decode()} refused: IDLE in progress, call done() first"))

    # ------------------------------------------------------------------ internals

    def _idle_command(self) -> Command:
        cmd = Command(b"IDLE", [b"IDLE"], self._commands.command_timeout,
                      on_continuation=self._continuation)
        cmd.on_ahead_started = self._ahead_started
        cmd.deferred.addErrback(ignore)  # failures go to the waiters
        return cmd

    def _write_done(self, to: IdleState, then: bytes = b"") -> defer.Deferred:
        """Write DONE (and ``then``, commands written ahead, in the same write)."""
        commands = self._commands
        cmd = commands.current
        assert cmd is not None and cmd.name == b"IDLE"
        self.move(to)
        done = self._done_waiter = defer.Deferred()
        commands.arm(cmd, commands.noop_timeout, "DONE")
        commands.write(b"DONE\r\n" + then)
        return done

    def _continuation(self, rest: bytes) -> None:
        """The running IDLE's ``+``."""
        state = self._state
        if state is AHEAD_REQUESTED:
            self.move(AHEAD_IDLING)
        elif state is REQUESTED:
            self.move(IDLING)
        else:
            return  # a repeated "+ idling"
        self._commands.disarm()  # no deadline while idling
        waiter, self._idle_waiter = self._idle_waiter, None
        if waiter is not None:
            waiter.callback(None)
        if self._commands.waiting and self._state in _DONE_POSSIBLE:
            # a command waits behind this IDLE (the client reads no line once closed)
            self._write_done(DONE_SENT).addErrback(ignore)

    def _ahead_started(self) -> None:
        """The IDLE written ahead became the running command (its deadline starts)."""
        self.move(REQUESTED if self._idle_waiter is not None else AHEAD_REQUESTED)
