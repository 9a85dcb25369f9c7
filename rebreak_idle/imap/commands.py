"""``Command`` (one IMAP command in the queue or on the wire) and ``CommandQueue``, the
client's queue: commands go out one at a time, in order, and one deadline timer per
connection (an ``IDelayedCall`` of the client's ``clock``: in the daemon the sessions'
shared :class:`~rebreak_idle.timing.wheel.TimerWheel`) is reset from command to command."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from ..timing.delayed_calls import cancel_pending, rearm
from .errors import CommandTimeout, ConnectionLost, IMAPError

__all__ = ["Command", "CommandQueue", "ignore"]


def ignore(*args: Any) -> None:
    """A no-op callback (the default of the client's ``on_*`` callbacks)."""
    return None


class Command:
    """One command in the queue or on the wire (``tag`` is set once it has been written)."""

    __slots__ = ("auth", "deferred", "name", "next_piece", "on_continuation", "on_ok",
                 "on_untagged", "pieces", "tag", "timeout")

    def __init__(self, name: bytes, pieces: list[bytes], timeout: float, *,
                 on_untagged: Callable[[bytes, bytes], bool] | None = None,
                 on_continuation: Callable[[bytes], None] | None = None,
                 on_ok: Callable[[bytes | None, bytes], Any] | None = None,
                 auth: bool = False) -> None:
        self.name = name
        self.pieces = pieces            # pieces[:-1] each end with a literal marker
        self.timeout = timeout
        self.on_untagged = on_untagged  # (keyword, rest) -> True when consumed
        self.on_continuation = on_continuation
        self.on_ok = on_ok              # (code, text) -> result of the Deferred
        self.auth = auth
        self.deferred: defer.Deferred = defer.Deferred()
        self.tag: bytes | None = None
        self.next_piece = 1

    @property
    def label(self) -> str:
        return self.name.decode("ascii", "replace")


class CommandQueue:
    """The command queue and its deadline: a mixin of the client."""

    command_timeout = 60.0
    noop_timeout = 30.0
    _current: Command | None = None
    #: the connection's one command deadline and the command it guards
    _deadline: IDelayedCall | None = None
    _deadline_cmd: Command | None = None
    _close_error: IMAPError | None = None

    # provided by the client
    closed: bool
    clock: IReactorTime
    transport: Any
    _queue: list[Command]
    makeTag: Callable[[], bytes]
    _close: Callable[[IMAPError], None]
    _idle_started: Callable[[], None]
    _done_timed_out: Callable[[Command], bool]
    _refused_while_idle: Callable[[bytes], defer.Deferred | None]

    def _send(self, cmd: Command) -> defer.Deferred:
        if self.closed:
            cmd.deferred.errback(Failure(self._close_error or ConnectionLost("not connected")))
        else:
            self._queue.append(cmd)
            if self._current is None:
                self._send_next()
        return cmd.deferred

    def _send_next(self) -> None:
        if self._current is not None or not self._queue or self.closed:
            return
        cmd = self._queue.pop(0)
        self._current = cmd
        self._arm(cmd, cmd.timeout)
        if cmd.tag is None:
            cmd.tag = self.makeTag()
            self.transport.write(cmd.tag + b" " + cmd.pieces[0] + b"\r\n")
        elif cmd.name == b"IDLE":
            # written ahead by done_noop(): its deadline starts now, as if it had been
            # sent when the previous command was answered
            self._idle_started()

    def _arm(self, cmd: Command, timeout: float) -> None:
        """Point the connection's deadline at ``cmd``, ``timeout`` seconds from now."""
        self._deadline_cmd = cmd
        self._deadline = rearm(self._deadline, self.clock, timeout, self._deadline_expired)

    def _disarm(self) -> None:
        self._deadline_cmd = None
        call, self._deadline = self._deadline, None
        cancel_pending(call)

    def _deadline_expired(self) -> None:
        self._deadline = None
        cmd, self._deadline_cmd = self._deadline_cmd, None
        if cmd is None or self.closed:
            return
        if self._done_timed_out(cmd):
            message = f"DONE timed out after {self.noop_timeout:g}s"
        else:
            message = f"{cmd.label} timed out after {cmd.timeout:g}s"
        self._close(CommandTimeout(message))

    def _command(self, name: bytes, args: bytes = b"", *, timeout: float | None = None,
                 **kw: Any) -> defer.Deferred:
        refused = self._refused_while_idle(name)
        if refused is not None:
            return refused
        line = name + (b" " + args if args else b"")
        return self._send(Command(name, [line], timeout or self.command_timeout, **kw))
