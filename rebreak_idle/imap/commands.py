"""``Command`` (one IMAP command in the queue or on the wire) and ``CommandQueue``: the
commands of one connection go out one at a time, in order, each tagged by the queue, and
one deadline timer (an ``IDelayedCall`` of the given clock: in the daemon the sessions'
shared :class:`~rebreak_idle.timing.wheel.TimerWheel`) is reset from command to command.

``CommandQueue`` is an object of its own, owned by the client. It knows the client only
as a :class:`CommandLink`, two methods: ``write_bytes`` (put bytes on the wire) and
``command_timed_out(message)`` (a deadline passed). Whether the connection is still open
is the client's business: it stops calling the queue once it has closed. (One reference to
the link rather than two stored bound methods: those would be two more objects, 128
bytes, on each of 10,000 connections.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from ..timing.delayed_calls import cancel_pending, rearm
from .errors import AuthenticationFailed, CommandFailed
from .parser import text

__all__ = ["Command", "CommandLink", "CommandQueue", "command_failed", "ignore"]


def ignore(*args: Any) -> None:
    """A no-op callback (the default of the client's ``on_*`` callbacks)."""
    return None


class Command:
    """One command in the queue or on the wire (``tag`` is set once it has been written)."""

    __slots__ = ("auth", "deferred", "name", "next_piece", "on_ahead_started",
                 "on_continuation", "on_ok", "on_untagged", "pieces", "tag", "timeout")

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
        self.auth = auth                # a login: its OK authenticates the connection
        #: called when the command, written ahead, becomes the running one
        self.on_ahead_started: Callable[[], None] | None = None
        self.deferred: defer.Deferred = defer.Deferred()
        self.tag: bytes | None = None
        self.next_piece = 1

    @property
    def label(self) -> str:
        return self.name.decode("ascii", "replace")

    @property
    def line(self) -> bytes:
        """The command's first line as written (its tag set)."""
        assert self.tag is not None
        return self.tag + b" " + self.pieces[0] + b"\r\n"


def command_failed(cmd: Command, status: bytes, code: bytes | None,
                   data: bytes) -> CommandFailed:
    """The error of ``cmd`` answered NO or BAD (:class:`AuthenticationFailed` for a login
    answered NO)."""
    kind = AuthenticationFailed if cmd.auth and status == b"NO" else CommandFailed
    code_word = code.split()[0].decode("ascii", "replace").upper() if code else None
    return kind(text(data) or f"{cmd.label} failed", status.decode(), code_word, cmd.label)


class CommandLink(Protocol):
    """What the queue calls: the client (``IdleClient``) in the daemon."""

    def write_bytes(self, data: bytes) -> None:
        """Put ``data`` on the wire."""

    def command_timed_out(self, message: str) -> None:
        """The running command's deadline passed (the client closes the connection with
        :class:`~rebreak_idle.imap.errors.CommandTimeout`)."""


class CommandQueue:
    """The connection's commands: the running one (``current``), those waiting behind it
    (``waiting``, some of them written ahead: their ``tag`` is set), the tag counter and
    the one deadline timer, on ``clock``."""

    __slots__ = ("_deadline", "_deadline_cmd", "_deadline_what", "_link", "_tag_id",
                 "clock", "command_timeout", "current", "noop_timeout", "waiting")

    def __init__(self, *, clock: IReactorTime, link: CommandLink,
                 command_timeout: float = 60.0, noop_timeout: float = 30.0) -> None:
        self.clock = clock
        self._link = link
        self.command_timeout = command_timeout
        self.noop_timeout = noop_timeout
        self.current: Command | None = None
        self.waiting: list[Command] = []
        self._tag_id = 1
        #: the connection's one command deadline, the command it guards and what it
        #: waits for (None: the command's answer; b"DONE": the answer to a DONE)
        self._deadline: IDelayedCall | None = None
        self._deadline_cmd: Command | None = None
        self._deadline_what: str | None = None

    def write(self, data: bytes) -> None:
        """Write ``data`` (a DONE and the commands written ahead with it)."""
        self._link.write_bytes(data)

    def make_tag(self) -> bytes:
        """The next tag: ``0001``, ``0002``, ... (as ``IMAP4Client.makeTag``)."""
        tag = b"%0.4X" % self._tag_id
        self._tag_id += 1
        return tag

    def send(self, cmd: Command) -> defer.Deferred:
        """Queue ``cmd``; it is written when the commands before it have been answered."""
        self.waiting.append(cmd)
        if self.current is None:
            self.send_next()
        return cmd.deferred

    def ahead(self, cmd: Command) -> bytes:
        """Queue ``cmd`` as written ahead (pipelined): tagged now; returns its line, which
        the caller writes together with others in one write."""
        cmd.tag = self.make_tag()
        self.waiting.append(cmd)
        return cmd.line

    def send_next(self) -> None:
        """Make the first waiting command the running one: write it (or, written ahead,
        start its deadline and tell it ``on_ahead_started``)."""
        if self.current is not None or not self.waiting:
            return
        cmd = self.waiting.pop(0)
        self.current = cmd
        self.arm(cmd, cmd.timeout)
        if cmd.tag is None:
            cmd.tag = self.make_tag()
            self.write(cmd.line)
        elif cmd.on_ahead_started is not None:
            # written ahead by done_noop(): its deadline starts now, as if it had been
            # sent when the previous command was answered
            cmd.on_ahead_started()

    def answered(self) -> Command | None:
        """The running command got its tagged answer: it is no longer running (the
        deadline is moved to the next command by ``send_next`` or cancelled by
        ``settle``). Returns it."""
        cmd, self.current = self.current, None
        self._deadline_cmd = None
        return cmd

    def settle(self) -> None:
        """After an answer: cancel the deadline when no command runs any more (also after
        LOGOUT's answer: no deadline outlives the last answer)."""
        if self.current is None and self._deadline_cmd is None:
            self.disarm()

    def arm(self, cmd: Command, timeout: float, what: str | None = None) -> None:
        """Point the connection's deadline at ``cmd``, ``timeout`` seconds from now;
        ``what`` names what is awaited when it is not ``cmd``'s own answer (``DONE``)."""
        self._deadline_cmd = cmd
        self._deadline_what = what
        self._deadline = rearm(self._deadline, self.clock, timeout, self._deadline_expired)

    def disarm(self) -> None:
        self._deadline_cmd = None
        call, self._deadline = self._deadline, None
        cancel_pending(call)

    def drain(self) -> list[Command]:
        """The connection is closing: every command (running first), removed, and the
        deadline cancelled."""
        commands = ([self.current] if self.current else []) + self.waiting
        self.current = None
        self.waiting = []
        self.disarm()
        return commands

    def _deadline_expired(self) -> None:
        self._deadline = None
        cmd, self._deadline_cmd = self._deadline_cmd, None
        if cmd is None:
            return
        if self._deadline_what is not None:
            message = f"{self._deadline_what} timed out after {self.noop_timeout:g}s"
        else:
            message = f"{cmd.label} timed out after {cmd.timeout:g}s"
        self._link.command_timed_out(message)
