"""``IdleClient``: an IMAP4 client with IDLE (RFC 2177), real-time untagged responses,
deadlines on every command, PLAIN / XOAUTH2 / LOGIN authentication and a strict, bounded
parser that closes the connection on anything hostile instead of raising or hanging.

Twisted's ``IMAP4Client`` queues untagged responses until the running command completes,
so it never reports ``* 5 EXISTS`` during IDLE. ``IdleClient`` replaces its line handling:
every untagged EXISTS / EXPUNGE / RECENT / FETCH (flags) / BYE reaches the owner's
callbacks the moment the line arrives, during IDLE, during any command and between
commands.

Bounds (a broken or hostile server cannot grow memory or hang the client):

* a line longer than ``max_line`` without CRLF closes the connection (:class:`ProtocolError`);
* a literal larger than ``max_literal`` (``max_fetch_literal`` inside an untagged FETCH)
  closes it, and so does a response whose parts together exceed that size;
* a greeting that is not OK/PREAUTH/BYE, an unknown tag, an unexpected continuation,
  an unparseable response or data after BYE close it;
* every command has a deadline (``command_timeout``; NOOP and DONE ``noop_timeout``;
  the greeting ``command_timeout``): on expiry its Deferred fails :class:`CommandTimeout`
  and the transport is aborted;
* on connection loss every pending Deferred fails (:class:`ConnectionLost`, or the error
  that made the client close), except ``logout()`` which then succeeds.

Secrets (passwords, tokens) are never part of an exception text or a log event.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import (
    IDelayedCall,
    INegotiated,
    IReactorTime,
    ISSLTransport,
    ITLSTransport,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.mail import imap4
from twisted.python.failure import Failure

from .failures import describe

__all__ = [
    "AuthenticationFailed",
    "CommandFailed",
    "CommandTimeout",
    "ConnectionLost",
    "IMAPError",
    "IdleClient",
    "IdleClientFactory",
    "InsecureConnection",
    "ProtocolError",
    "ServerBye",
]

log = Logger()

_TEXT_LIMIT = 300
_NUMBER = re.compile(rb"[0-9]{1,10}")
_LITERAL = re.compile(rb"~?\{([0-9]{1,20})\+?\}$")
_TAG = re.compile(rb"[\x21-\x7e]{1,64}")
_ATOM = re.compile(rb"[A-Za-z0-9_.+&/-]{1,200}")


class IMAPError(imap4.IMAP4Exception):
    """Base of the client's errors; ``text`` is the server's response text or a short
    description, never a secret."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class CommandFailed(IMAPError):
    """A tagged NO or BAD. ``status`` is ``"NO"``/``"BAD"``, ``code`` the response code
    (e.g. ``"AUTHENTICATIONFAILED"``) or None, ``text`` e.g. ``"[ALERT] ..."``."""

    def __init__(self, text: str, status: str = "NO", code: str | None = None,
                 command: str = "") -> None:
        super().__init__(text)
        self.status = status
        self.code = code
        self.command = command


class AuthenticationFailed(CommandFailed):
    """LOGIN / AUTHENTICATE answered NO. ``details`` holds a decoded XOAUTH2 error
    challenge (JSON text) when the server sent one."""

    details: str | None = None


class CommandTimeout(IMAPError):
    """No answer in time; the connection has been aborted."""


class ServerBye(IMAPError):
    """``* BYE <text>``; ``text`` is ``<text>``."""


class ProtocolError(IMAPError):
    """The server sent something a correct server does not; the connection is closed."""


class ConnectionLost(IMAPError):
    """The connection was lost while the command was pending."""


class InsecureConnection(IMAPError):
    """Refusing to send a password or token over a connection that is neither TLS nor to
    a loopback address."""


def _text(data: bytes) -> str:
    """Printable, bounded text of server bytes."""
    s = data.decode("utf-8", "replace")
    s = "".join(ch if ch.isprintable() else "?" for ch in s).strip()
    return s if len(s) <= _TEXT_LIMIT else s[: _TEXT_LIMIT - 3] + "..."


def _excerpt(line: bytes) -> str:
    return repr(line[:80])[1:] + ("..." if len(line) > 80 else "")


def _split_code(text: bytes) -> tuple[bytes | None, bytes]:
    """``[CODE args] rest`` → (b"CODE args", rest); otherwise (None, text)."""
    if text.startswith(b"["):
        end = text.find(b"]")
        if end != -1:
            return text[1:end], text[end + 1:].strip()
    return None, text


def _parse_caps(words: bytes) -> dict[bytes, list[bytes] | None]:
    caps: dict[bytes, list[bytes] | None] = {}
    for word in words.split():
        name, eq, value = word.upper().partition(b"=")
        if eq:
            current = caps.get(name)
            caps[name] = [*current, value] if current else [value]
        else:
            caps.setdefault(name, None)
    return caps


def _astring(value: str) -> list[bytes]:
    """An IMAP astring as one quoted string, or as a literal when it is not printable
    ASCII. Returns pieces: ``[b'"x"']`` or ``[b'{n}', raw]``."""
    raw = value.encode("utf-8")
    if b"\x00" in raw:
        raise ValueError("NUL cannot be sent")
    if all(0x20 <= b < 0x7F for b in raw):
        return [b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"']
    return [b"{%d}" % len(raw), raw]


def _is_loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _ignore(*args: Any) -> None:
    return None


class _Command:
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


class IdleClient(imap4.IMAP4Client):
    """IMAP4 client for long-lived IDLE sessions (see the module docstring).

    The owner sets the ``on_*`` callbacks (plain attributes, no-ops by default), waits
    for :attr:`greeted`, then calls ``startTLS`` / ``login`` /
    ``login_xoauth2`` / ``select`` / ``idle`` / ``done`` / ``noop`` / ``logout``.
    Commands are sent one at a time (queued in order); while an IDLE is in progress only
    ``done()``, ``done_noop()`` and ``logout()`` are accepted (``logout`` ends the IDLE
    first). ``done_noop()`` is the one pipelined exchange: DONE and NOOP in one write.

    One deadline timer per connection (an ``IDelayedCall`` of ``clock``, in the daemon the
    sessions' shared :class:`~rebreak_idle.wheel.TimerWheel`, reset from command to
    command) covers whichever command is waiting for its answer.
    """

    #: called with N for ``* N EXISTS`` (not for the EXISTS inside SELECT's response,
    #: which ``select`` returns instead)
    on_exists: Callable[[int], None]
    on_expunge: Callable[[int], None]
    on_recent: Callable[[int], None]
    on_flags: Callable[[int, list[str]], None]
    #: ``* BYE`` outside LOGOUT, with the server's text (the client then closes)
    on_bye: Callable[[str], None]
    #: the server ended an IDLE by itself (tagged OK without DONE), with its text
    on_idle_ended: Callable[[str], None]
    on_connection_lost: Callable[[Failure], None]

    # Defaults at class level: an instance holds only what differs, so that its attributes
    # stay few enough (≤ 30) for CPython's compact per-instance storage; 10,000 sessions
    # hold 10,000 clients. IMAP4Client.__init__ is not called: its command table, queue,
    # authenticators and parser state belong to the line handling this class replaces.
    on_exists = on_expunge = on_recent = on_flags = staticmethod(_ignore)
    on_bye = on_idle_ended = on_connection_lost = staticmethod(_ignore)
    command_timeout = 60.0
    noop_timeout = 30.0
    MAX_LENGTH = 64 * 1024
    max_literal = 1024 * 1024
    max_fetch_literal = 64 * 1024 * 1024
    allow_plaintext_auth = False
    idling = False
    closed = False
    _greeting_timer: IDelayedCall | None = None
    _caps_known = False
    _current: _Command | None = None
    #: the connection's one command deadline and what it guards (None: nothing; the IDLE
    #: command while a DONE is unanswered)
    _deadline: IDelayedCall | None = None
    _deadline_cmd: _Command | None = None
    _done_written = False
    _idle_cmd: _Command | None = None
    _idle_deferred: defer.Deferred | None = None
    _done_deferred: defer.Deferred | None = None
    _done_requested = False
    #: an IDLE written ahead by done_noop(idle_again=True), and who waits for its "+"
    _idle_ahead: _Command | None = None
    _idle_ahead_waiter: defer.Deferred | None = None
    #: that IDLE was sent on before anyone called idle() for it
    _idle_unclaimed = False
    _bye_text: str | None = None
    _close_error: IMAPError | None = None
    _literal: bytearray | None = None
    _literal_left = 0
    _response_parts: list[bytes] | None = None
    _response_size = 0
    _response_cap = 0
    _tag = _parts = _lastCmd = None

    def __init__(self, *, clock: IReactorTime, command_timeout: float = 60.0,
                 noop_timeout: float = 30.0, max_line: int = 64 * 1024,
                 max_literal: int = 1024 * 1024,
                 max_fetch_literal: int = 64 * 1024 * 1024,
                 allow_plaintext_auth: bool = False) -> None:
        self.clock = clock
        cls = type(self)
        if command_timeout != cls.command_timeout:
            self.command_timeout = command_timeout
        if noop_timeout != cls.noop_timeout:
            self.noop_timeout = noop_timeout
        if max_line != cls.MAX_LENGTH:
            self.MAX_LENGTH = max_line
        if max_literal != cls.max_literal:
            self.max_literal = max_literal
        if max_fetch_literal != cls.max_fetch_literal:
            self.max_fetch_literal = max_fetch_literal
        if allow_plaintext_auth:
            self.allow_plaintext_auth = True

        self.greeted: defer.Deferred = defer.Deferred()
        self.capabilities: dict[bytes, list[bytes] | None] = {}
        self._greeting_state = "waiting"   # waiting | capabilities | done
        self._queue: list[_Command] = []

    # ------------------------------------------------------------------ connection

    def connectionMade(self) -> None:
        self._greeting_timer = self.clock.callLater(
            self.command_timeout, self._timed_out, None)

    def connectionLost(self, reason: Failure = None) -> None:
        self.closed = True
        self.idling = False
        if self._close_error is not None:
            error: IMAPError = self._close_error
        else:
            error = ConnectionLost(describe(reason) if reason is not None
                                   else "connection lost")
        self._fail_all(error)
        try:
            self.on_connection_lost(Failure(error))
        except Exception:
            log.failure("on_connection_lost callback failed")

    def _close(self, error: IMAPError) -> None:
        """Fail everything pending with ``error`` and abort the transport."""
        if self._close_error is None:
            self._close_error = error
        self._fail_all(error)
        if not self.closed:
            self.closed = True
            self.clearLineBuffer()
            transport = self.transport
            if transport is not None:
                abort = getattr(transport, "abortConnection", None)
                if abort is not None:
                    abort()
                else:  # pragma: no cover
                    transport.loseConnection()

    def _protocol_error(self, text: str) -> None:
        log.debug("closing IMAP connection: {text}", text=text)
        self._close(ProtocolError(text))

    def _fail_all(self, error: IMAPError) -> None:
        if self._greeting_timer is not None and self._greeting_timer.active():
            self._greeting_timer.cancel()
        self._greeting_timer = None
        commands = ([self._current] if self._current else []) + self._queue
        self._current = None
        self._queue = []
        self._disarm()
        waiters = [self.greeted, self._idle_deferred, self._done_deferred,
                   self._idle_ahead_waiter]
        self._idle_deferred = self._done_deferred = self._idle_ahead_waiter = None
        self._idle_cmd = self._idle_ahead = None
        self._idle_unclaimed = False
        self.idling = False
        for cmd in commands:
            if cmd.name == b"LOGOUT":
                waiters.append(None)
                if not cmd.deferred.called:
                    cmd.deferred.callback(None)
            else:
                waiters.append(cmd.deferred)
        for d in waiters:
            if d is not None and not d.called:
                d.errback(Failure(error))

    # ------------------------------------------------------------------ receiving

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return  # closing: whatever else arrives is dropped, never buffered
        super().dataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._protocol_error(f"server line longer than {self.MAX_LENGTH} bytes")

    def rawDataReceived(self, data: bytes) -> None:
        if self.closed or self._literal is None:
            return
        take = data[: self._literal_left]
        self._literal += take
        self._literal_left -= len(take)
        if self._literal_left == 0:
            assert self._response_parts is not None
            self._response_parts.append(bytes(self._literal))
            self._literal = None
            self.setLineMode(data[len(take):])

    def lineReceived(self, line: bytes) -> None:
        if self.closed:
            return
        try:
            self._line_received(line)
        except Exception:
            log.failure("unexpected error handling an IMAP server line")
            self._protocol_error(f"cannot handle server line: {_excerpt(line)}")

    def _line_received(self, line: bytes) -> None:
        if self._response_parts is not None:
            self._response_size += len(line) + 2
            if self._response_size > self._response_cap:
                self._protocol_error(f"server response larger than {self._response_cap} "
                                     "bytes")
                return
        match = _LITERAL.search(line)
        if match is not None:
            size = int(match.group(1))
            if self._response_parts is None:
                self._response_parts = []
                self._response_size = len(line) + 2
                self._response_cap = (self.max_fetch_literal if _is_fetch(line)
                                      else self.max_literal) + self.MAX_LENGTH
            cap = self._response_cap - self.MAX_LENGTH
            if size > cap or self._response_size + size > self._response_cap:
                self._protocol_error(f"server literal of {size} bytes exceeds {cap} bytes")
                return
            self._response_size += size
            self._response_parts.append(line + b"\r\n")
            if size == 0:
                self._response_parts.append(b"")
                return
            self._literal = bytearray()
            self._literal_left = size
            self.setRawMode()
            return
        if self._response_parts is not None:
            self._response_parts.append(line)
            line = b"".join(self._response_parts)
            self._response_parts = None
            self._response_size = 0
        self._dispatch(line)

    def _dispatch(self, line: bytes) -> None:
        tag, _, rest = line.partition(b" ")
        if self._greeting_state == "waiting":
            self._greeting(tag, rest, line)
            return
        if self._bye_text is not None and not (
                self._logout_running() and self._current is not None
                and tag == self._current.tag):
            self._protocol_error(f"data after BYE: {_excerpt(line)}")
            return
        if tag == b"*":
            self._untagged(rest, line)
        elif tag == b"+":
            self._continuation(rest, line)
        else:
            self._tagged(tag, rest, line)

    def _logout_running(self) -> bool:
        return self._current is not None and self._current.name == b"LOGOUT"

    def _greeting(self, tag: bytes, rest: bytes, line: bytes) -> None:
        status, _, text = rest.partition(b" ")
        status = status.upper()
        if tag != b"*" or status not in (b"OK", b"PREAUTH", b"BYE"):
            self._protocol_error(f"bad greeting: {_excerpt(line)}")
            return
        if status == b"BYE":
            self._close(ServerBye(_text(text)))
            return
        self.state = "auth" if status == b"PREAUTH" else "unauth"
        code, _ = _split_code(text)
        if code is not None and code.upper().startswith(b"CAPABILITY "):
            self._set_caps(code[len(b"CAPABILITY "):])
        if self._caps_known:
            self._greeting_state = "done"
            self._greeted()
            return
        self._greeting_state = "capabilities"
        d = self._send(_Command(b"CAPABILITY", [b"CAPABILITY"], self.command_timeout))
        d.addCallbacks(lambda _: self._greeted(), self._greeting_failed)

    def _greeting_failed(self, failure: Failure) -> None:
        if not self.greeted.called:
            self.greeted.errback(failure)

    def _greeted(self) -> None:
        self._greeting_state = "done"
        if self._greeting_timer is not None and self._greeting_timer.active():
            self._greeting_timer.cancel()
        self._greeting_timer = None
        if not self.greeted.called:
            self.greeted.callback(self.capabilities)

    def _set_caps(self, words: bytes) -> None:
        self.capabilities = _parse_caps(words)
        self._caps_known = True

    def _untagged(self, rest: bytes, line: bytes) -> None:
        first, _, after = rest.partition(b" ")
        upper = first.upper()
        if _NUMBER.fullmatch(first):
            number = int(first)
            keyword, _, data = after.partition(b" ")
            keyword = keyword.upper()
            if keyword == b"FETCH":
                flags = _fetch_flags(data)
                if flags is _MALFORMED:
                    self._protocol_error(f"malformed FETCH response: {_excerpt(line)}")
                    return
            elif keyword not in (b"EXISTS", b"EXPUNGE", b"RECENT") or data:
                self._protocol_error(f"malformed untagged response: {_excerpt(line)}")
                return
            cmd = self._current
            if cmd is not None and cmd.on_untagged is not None and \
                    cmd.on_untagged(keyword, rest):
                return
            if keyword == b"EXISTS":
                self._notify(self.on_exists, number)
            elif keyword == b"EXPUNGE":
                self._notify(self.on_expunge, number)
            elif keyword == b"RECENT":
                self._notify(self.on_recent, number)
            elif flags is not None:
                self._notify(self.on_flags, number, flags)
            return
        if upper == b"BYE":
            self._bye(after)
            return
        if upper in (b"OK", b"NO", b"BAD", b"PREAUTH"):
            code, _ = _split_code(after)
            if code is not None and code.upper().startswith(b"CAPABILITY "):
                self._set_caps(code[len(b"CAPABILITY "):])
            elif upper != b"OK":
                log.debug("IMAP server says {status}: {text}", status=upper.decode(),
                          text=_text(after))
        elif upper == b"CAPABILITY":
            self._set_caps(after)
        elif not _TAG.fullmatch(first):
            self._protocol_error(f"malformed untagged response: {_excerpt(line)}")
            return
        else:
            try:
                imap4.parseNestedParens(after)
            except Exception:
                self._protocol_error(f"malformed untagged response: {_excerpt(line)}")
                return
        cmd = self._current
        if cmd is not None and cmd.on_untagged is not None:
            cmd.on_untagged(upper, rest)

    def _bye(self, text: bytes) -> None:
        message = _text(text)
        if self._bye_text is not None:
            self._protocol_error(f"data after BYE: * BYE {message}")
            return
        self._bye_text = message
        if self._logout_running():
            return
        self._notify(self.on_bye, message)
        self._close(ServerBye(message))

    def _continuation(self, rest: bytes, line: bytes) -> None:
        cmd = self._current
        if cmd is not None and cmd.on_continuation is not None:
            cmd.on_continuation(rest)
        elif cmd is not None and cmd.next_piece < len(cmd.pieces):
            piece = cmd.pieces[cmd.next_piece]
            cmd.next_piece += 1
            self.transport.write(piece + (b"\r\n" if cmd.next_piece == len(cmd.pieces)
                                          else b""))
        elif cmd is not None and cmd is self._idle_cmd and self.idling:
            return  # a repeated "+ idling"
        else:
            self._protocol_error(f"unexpected continuation: {_excerpt(line)}")

    def _tagged(self, tag: bytes, rest: bytes, line: bytes) -> None:
        cmd = self._current
        if cmd is None or tag != cmd.tag:
            self._protocol_error(f"response with unknown tag: {_excerpt(line)}")
            return
        status, _, text = rest.partition(b" ")
        status = status.upper()
        if status not in (b"OK", b"NO", b"BAD"):
            self._protocol_error(f"malformed tagged response: {_excerpt(line)}")
            return
        self._deadline_cmd = None  # the timer is re-armed for the next command or cancelled
        self._current = None
        code, _ = _split_code(text)
        if code is not None and code.upper().startswith(b"CAPABILITY "):
            self._set_caps(code[len(b"CAPABILITY "):])
        if cmd is self._idle_cmd:
            self._idle_finished(status, code, text)
        elif status == b"OK":
            try:
                result = cmd.on_ok(code, text) if cmd.on_ok is not None else None
            except Exception as e:
                cmd.deferred.errback(Failure(e))
            else:
                cmd.deferred.callback(result)
        else:
            cmd.deferred.errback(Failure(self._command_failed(cmd, status, code, text)))
        if not self.closed:
            self._send_next()
            if self._current is None and self._deadline_cmd is None:
                self._disarm()

    def _command_failed(self, cmd: _Command, status: bytes, code: bytes | None,
                        text: bytes) -> CommandFailed:
        kind = AuthenticationFailed if cmd.auth and status == b"NO" else CommandFailed
        code_word = code.split()[0].decode("ascii", "replace").upper() if code else None
        return kind(_text(text) or f"{cmd.label} failed", status.decode(), code_word,
                    cmd.label)

    def _notify(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            log.failure("IMAP event callback failed")

    # ------------------------------------------------------------------ sending

    def _send(self, cmd: _Command) -> defer.Deferred:
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
            return
        # written ahead by done_noop(): its deadline starts now, as if it had been sent
        # when the previous command was answered
        if cmd is self._idle_ahead:
            self._idle_ahead = None
            self._idle_cmd = cmd
            self._done_written = False
            waiter, self._idle_ahead_waiter = self._idle_ahead_waiter, None
            self._idle_deferred = waiter  # None: the next idle() claims it
            self._idle_unclaimed = waiter is None

    def _arm(self, cmd: _Command, timeout: float) -> None:
        """Point the connection's deadline at ``cmd``, ``timeout`` seconds from now."""
        self._deadline_cmd = cmd
        call = self._deadline
        if call is not None and call.active():
            call.reset(timeout)
        else:
            self._deadline = self.clock.callLater(timeout, self._deadline_expired)

    def _disarm(self) -> None:
        self._deadline_cmd = None
        call, self._deadline = self._deadline, None
        if call is not None and call.active():
            call.cancel()

    def _deadline_expired(self) -> None:
        self._deadline = None
        cmd, self._deadline_cmd = self._deadline_cmd, None
        if cmd is None or self.closed:
            return
        if cmd is self._idle_cmd and self._done_written:
            text = f"DONE timed out after {self.noop_timeout:g}s"
        else:
            text = f"{cmd.label} timed out after {cmd.timeout:g}s"
        self._close(CommandTimeout(text))

    def _timed_out(self, cmd: None) -> None:
        self._greeting_timer = None
        self._close(CommandTimeout(f"no greeting within {self.command_timeout:g}s"))

    def _command(self, name: bytes, args: bytes = b"", *, timeout: float | None = None,
                 **kw: Any) -> defer.Deferred:
        if self._idle_cmd is not None or self._idle_ahead is not None:
            return defer.fail(IMAPError(
                f"{name.decode()} refused: IDLE in progress, call done() first"))
        line = name + (b" " + args if args else b"")
        return self._send(_Command(name, [line], timeout or self.command_timeout, **kw))

    def sendCommand(self, cmd: imap4.Command) -> defer.Deferred:
        """Twisted ``IMAP4Client`` compatibility: run an ``imap4.Command`` (used by the
        inherited select/fetch/store/... methods) through this client's queue, deadline
        and bounded parser. Untagged EXISTS/EXPUNGE/RECENT/FETCH still reach the
        callbacks; the command's result holds its other untagged responses."""
        budget = [self.max_fetch_literal + self.MAX_LENGTH]

        def untagged(keyword: bytes, rest: bytes) -> bool:
            budget[0] -= len(rest)
            if budget[0] < 0:
                self._protocol_error("too much response data for one command")
                return True
            cmd.lines.append(rest)
            return keyword == b"FETCH" and cmd.command.upper().endswith(b"FETCH")

        def ok(code: bytes | None, text: bytes) -> Any:
            results: list[Any] = []
            cmd.defer = defer.Deferred().addCallback(results.append)
            cmd.finish(b"OK " + text, lambda unused: None)
            return results[0]

        if self._idle_cmd is not None or self._idle_ahead is not None:
            return defer.fail(IMAPError("command refused: IDLE in progress"))
        line = cmd.format(b"").lstrip(b" ")
        ours = _Command(cmd.command, [line], self.command_timeout,
                        on_untagged=untagged, on_ok=ok)
        cmd.defer = self._send(ours)
        return cmd.defer

    # ------------------------------------------------------------------ capabilities

    def getCapabilities(self) -> defer.Deferred:
        """The capabilities (bytes names, upper case → None or list of bytes values),
        from the greeting or the last login response when known, else via CAPABILITY."""
        if self._caps_known:
            return defer.succeed(self.capabilities)
        return self._refresh_caps()

    def _refresh_caps(self) -> defer.Deferred:
        d = self._command(b"CAPABILITY")
        d.addCallback(lambda _: self.capabilities)
        return d

    def _has(self, name: bytes, value: bytes | None = None) -> bool:
        if value is None:
            return name in self.capabilities
        return value in (self.capabilities.get(name) or ())

    @property
    def has_idle(self) -> bool:
        return self._has(b"IDLE")

    @property
    def has_starttls(self) -> bool:
        return self._has(b"STARTTLS")

    @property
    def has_auth_plain(self) -> bool:
        return self._has(b"AUTH", b"PLAIN")

    @property
    def has_xoauth2(self) -> bool:
        return self._has(b"AUTH", b"XOAUTH2")

    @property
    def has_sasl_ir(self) -> bool:
        return self._has(b"SASL-IR")

    @property
    def login_disabled(self) -> bool:
        return self._has(b"LOGINDISABLED")

    # ------------------------------------------------------------------ TLS

    def tls_active(self) -> bool:
        """True when the transport is encrypted (implicit TLS or STARTTLS done)."""
        t = self.transport
        return bool(self.startedTLS or (t is not None and (
            ISSLTransport.providedBy(t) or INegotiated.providedBy(t))))

    def secure_transport(self) -> bool:
        """True when TLS is active or the peer is a loopback address."""
        if self.tls_active():
            return True
        try:
            host = getattr(self.transport.getPeer(), "host", "")
        except Exception:
            return False
        return _is_loopback_address(str(host))

    def startTLS(self, contextFactory: Any = None) -> defer.Deferred:
        """STARTTLS, then the TLS handshake (verified by ``contextFactory``), then CAPABILITY
        again; fires with the new capabilities. A verification failure fails it with
        :class:`ConnectionLost` whose text is ``certificate verify failed: ...``."""
        if self.tls_active():
            return defer.fail(IMAPError("TLS is already active"))
        if not self.has_starttls:
            return defer.fail(CommandFailed("server does not offer STARTTLS",
                                            command="STARTTLS"))
        if ITLSTransport(self.transport, None) is None:
            return defer.fail(IMAPError("transport cannot start TLS"))

        def ok(code: bytes | None, text: bytes) -> None:
            if self._buffer:
                # bytes the server sent after its OK, before TLS: an injection attempt
                self._protocol_error("data after STARTTLS response before TLS")
                raise self._close_error  # type: ignore[misc]
            self.transport.startTLS(contextFactory)
            self.startedTLS = True
            self.capabilities = {}
            self._caps_known = False

        d = self._command(b"STARTTLS", on_ok=ok)
        d.addCallback(lambda _: self._refresh_caps())
        return d

    # ------------------------------------------------------------------ login

    def _check_secure(self) -> defer.Deferred | None:
        if self.secure_transport() or self.allow_plaintext_auth:
            return None
        host = getattr(self.transport.getPeer(), "host", "?") if self.transport else "?"
        return defer.fail(InsecureConnection(
            f"refusing to send credentials over an unencrypted connection to {host}"))

    def _after_login(self, code: bytes | None, text: bytes) -> None:
        self.state = "auth"
        if code is None or not code.upper().startswith(b"CAPABILITY "):
            self._caps_known = False

    def _login_done(self, d: defer.Deferred) -> defer.Deferred:
        d.addCallback(lambda _: self.getCapabilities())
        return d

    def login(self, username: str, password: str) -> defer.Deferred:
        """AUTHENTICATE PLAIN when offered (with SASL-IR when offered), else LOGIN.
        Fires with the capabilities after login; fails :class:`AuthenticationFailed`
        (server text), :class:`InsecureConnection` or :class:`CommandFailed`."""
        refused = self._check_secure()
        if refused is not None:
            return refused
        if self.has_auth_plain:
            response = base64.b64encode(
                b"\x00" + username.encode("utf-8") + b"\x00" + password.encode("utf-8"))
            return self._login_done(self._authenticate(b"PLAIN", response))
        if self.login_disabled:
            return defer.fail(CommandFailed(
                "server disables LOGIN and offers no AUTH=PLAIN", command="LOGIN"))
        try:
            user_pieces, pass_pieces = _astring(username), _astring(password)
        except ValueError:
            return defer.fail(CommandFailed("user name or password holds a NUL character",
                                            command="LOGIN"))
        pieces = self._join_pieces([b"LOGIN"], user_pieces, pass_pieces)
        if self._idle_cmd is not None or self._idle_ahead is not None:
            return defer.fail(IMAPError("LOGIN refused: IDLE in progress"))
        cmd = _Command(b"LOGIN", pieces, self.command_timeout, on_ok=self._after_login,
                       auth=True)
        return self._login_done(self._send(cmd))

    @staticmethod
    def _join_pieces(head: list[bytes], *astrings: list[bytes]) -> list[bytes]:
        """Build command pieces: each piece but the last ends with a literal marker."""
        pieces = [b" ".join(head)]
        for a in astrings:
            pieces[-1] += b" " + a[0]
            if len(a) == 2:
                pieces.append(a[1])
        return pieces

    def login_xoauth2(self, username: str, token: str) -> defer.Deferred:
        """AUTHENTICATE XOAUTH2 (SASL-IR when offered). On failure the server's base64
        JSON challenge is answered with an empty line; the tagged NO then fails the
        Deferred with :class:`AuthenticationFailed` (``details`` = the JSON)."""
        refused = self._check_secure()
        if refused is not None:
            return refused
        response = base64.b64encode(
            b"user=" + username.encode("utf-8") + b"\x01auth=Bearer "
            + token.encode("utf-8") + b"\x01\x01")
        return self._login_done(self._authenticate(b"XOAUTH2", response))

    def _authenticate(self, mechanism: bytes, response: bytes) -> defer.Deferred:
        sent = [False]
        details: list[str] = []
        use_ir = self.has_sasl_ir

        def continuation(rest: bytes) -> None:
            if not sent[0]:
                sent[0] = True
                self.transport.write(response + b"\r\n")
                return
            if mechanism == b"XOAUTH2":
                try:
                    details.append(_text(base64.b64decode(rest.strip(), validate=True)))
                except Exception:
                    details.append(_text(rest))
                self.transport.write(b"\r\n")
            else:
                self.transport.write(b"*\r\n")  # cancel an unexpected challenge

        if use_ir:
            sent[0] = True
        args = mechanism + (b" " + response if use_ir else b"")
        d = self._command(b"AUTHENTICATE", args, on_continuation=continuation,
                          on_ok=self._after_login, auth=True)

        def add_details(f: Failure) -> Failure:
            if details and isinstance(f.value, AuthenticationFailed):
                f.value.details = details[0]
            return f

        d.addErrback(add_details)
        return d

    # ------------------------------------------------------------------ mailbox

    def select(self, mailbox: str = "INBOX") -> defer.Deferred:
        """SELECT ``mailbox``; fires with ``{"EXISTS": int, "RECENT": int|None,
        "UIDVALIDITY": int|None, "UIDNEXT": int|None, "UNSEEN": int|None,
        "FLAGS": list[str], "PERMANENTFLAGS": list[str], "READ-WRITE": bool}``.
        The EXISTS line of this response does not reach ``on_exists``."""
        info: dict[str, Any] = {"EXISTS": None, "RECENT": None, "UIDVALIDITY": None,
                                "UIDNEXT": None, "UNSEEN": None, "FLAGS": [],
                                "PERMANENTFLAGS": [], "READ-WRITE": True}

        def untagged(keyword: bytes, rest: bytes) -> bool:
            number, _, after = rest.partition(b" ")
            if keyword in (b"EXISTS", b"RECENT"):
                info[keyword.decode()] = int(number)
                return True
            if keyword == b"FLAGS":
                info["FLAGS"] = _flag_list(after)
            elif keyword == b"OK":
                code, _ = _split_code(after)
                if code:
                    name, _, value = code.partition(b" ")
                    name = name.upper()
                    if name in (b"UIDVALIDITY", b"UIDNEXT", b"UNSEEN") and \
                            _NUMBER.fullmatch(value):
                        info[name.decode()] = int(value)
                    elif name == b"PERMANENTFLAGS":
                        info["PERMANENTFLAGS"] = _flag_list(value)
            return False

        def ok(code: bytes | None, text: bytes) -> dict[str, Any]:
            if code is not None and code.upper() == b"READ-ONLY":
                info["READ-WRITE"] = False
            if info["EXISTS"] is None:
                raise ProtocolError("SELECT response without EXISTS")
            self.state = "selected"
            return info

        raw = mailbox.encode("ascii", "replace")
        if not _ATOM.fullmatch(raw):
            return defer.fail(CommandFailed("mailbox name must be an IMAP atom",
                                            command="SELECT"))
        return self._command(b"SELECT", raw, on_untagged=untagged, on_ok=ok)

    # ------------------------------------------------------------------ IDLE

    def idle(self) -> defer.Deferred:
        """Send IDLE; fires when the server's ``+`` arrives (``idling`` is then True).
        Fails :class:`CommandFailed` when the server answers NO/BAD."""
        if self._idle_ahead is not None:
            # written ahead with the heartbeat's NOOP: wait for its continuation
            if self._idle_ahead_waiter is None:
                self._idle_ahead_waiter = defer.Deferred()
            return self._idle_ahead_waiter
        if self._idle_unclaimed:
            self._idle_unclaimed = False
            if self.idling:
                return defer.succeed(None)
            self._idle_deferred = defer.Deferred()
            return self._idle_deferred
        if self._idle_cmd is not None:
            return defer.fail(IMAPError("IDLE already in progress"))
        self._idle_deferred = defer.Deferred()
        self._done_requested = False
        self._done_written = False
        cmd = self._idle_command()
        self._idle_cmd = cmd
        self._send(cmd)
        return self._idle_deferred

    def _idle_command(self) -> _Command:
        cmd = _Command(b"IDLE", [b"IDLE"], self.command_timeout,
                       on_continuation=self._idle_continuation)
        cmd.deferred.addErrback(_ignore)  # failures go to _idle/_done_deferred
        return cmd

    def _idle_continuation(self, rest: bytes) -> None:
        cmd = self._idle_cmd
        if self.idling or cmd is None:
            return
        if self._deadline_cmd is cmd:
            self._disarm()  # no deadline while idling
        self.idling = True
        d, self._idle_deferred = self._idle_deferred, None
        if d is not None:
            d.callback(None)
        if self._done_requested and self.idling and not self.closed:
            self._write_done()

    def _idle_finished(self, status: bytes, code: bytes | None, text: bytes) -> None:
        cmd = self._idle_cmd
        self._idle_cmd = None
        self._idle_unclaimed = False
        was_idling = self.idling
        self.idling = False
        idle_d, self._idle_deferred = self._idle_deferred, None
        done_d, self._done_deferred = self._done_deferred, None
        if status == b"OK":
            if idle_d is not None:
                idle_d.errback(Failure(CommandFailed(
                    "IDLE ended without continuation: " + _text(text), "OK", None,
                    "IDLE")))
            if done_d is not None:
                done_d.callback(None)
            elif was_idling:
                self._notify(self.on_idle_ended, _text(text))
        else:
            assert cmd is not None
            error = self._command_failed(cmd, status, code, text)
            for d in (idle_d, done_d):
                if d is not None:
                    d.errback(Failure(error))

    def done(self) -> defer.Deferred:
        """End the IDLE with DONE; fires on the IDLE command's tagged OK (deadline
        ``noop_timeout``)."""
        if not self.idling or self._idle_cmd is None:
            return defer.fail(IMAPError("not idling"))
        if self._done_deferred is None:
            self._done_deferred = defer.Deferred()
            self._write_done()
        return self._done_deferred

    def done_noop(self, idle_again: bool = False) -> defer.Deferred:
        """End the IDLE and send a NOOP in the same write (RFC 3501 §5.5: the client may
        send the next command once it has sent DONE), with ``idle_again`` an IDLE after
        the NOOP as well. Fires with None on the NOOP's tagged OK, which arrives after the
        IDLE's tagged OK; with ``idle_again`` the next ``idle()`` then waits for the
        continuation of the IDLE already sent instead of sending one. Deadlines as for
        ``done()``, ``noop()`` and ``idle()`` one after the other: the IDLE's OK within
        ``noop_timeout`` of the DONE, the NOOP's OK within ``noop_timeout`` of that, the
        new IDLE's continuation within ``command_timeout`` of the NOOP's OK. Fails like
        ``done()`` when the IDLE ends with NO/BAD and like ``noop()`` when the NOOP
        does."""
        cmd = self._idle_cmd
        if not self.idling or cmd is None:
            return defer.fail(IMAPError("not idling"))
        if self._done_written or self._done_deferred is not None or self._queue:
            return defer.fail(IMAPError("DONE already sent"))
        noop = _Command(b"NOOP", [b"NOOP"], self.noop_timeout)
        noop.tag = self.makeTag()
        self._queue.append(noop)
        data = b"DONE\r\n" + noop.tag + b" NOOP\r\n"
        if idle_again:
            ahead = self._idle_ahead = self._idle_command()
            ahead.tag = self.makeTag()
            self._queue.append(ahead)
            data += ahead.tag + b" IDLE\r\n"
        done = self._done_deferred = defer.Deferred()
        self._done_written = True
        self._arm(cmd, self.noop_timeout)
        self.transport.write(data)
        result: defer.Deferred = defer.Deferred()

        def done_failed(failure: Failure) -> None:
            if not result.called:
                result.errback(failure)

        def noop_answered(outcome: Any) -> None:
            if result.called:
                return None
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(None)
            return None

        done.addErrback(done_failed)
        noop.deferred.addBoth(noop_answered)
        return result

    def _write_done(self, then: bytes = b"") -> None:
        """Write DONE (and ``then``, a command written ahead, in the same write)."""
        cmd = self._idle_cmd
        if cmd is None or self._done_written:
            return
        if self._done_deferred is None:
            self._done_deferred = defer.Deferred()
            self._done_deferred.addErrback(_ignore)
        self._done_written = True
        self._arm(cmd, self.noop_timeout)
        self.transport.write(b"DONE\r\n" + then)

    # ------------------------------------------------------------------ misc commands

    def noop(self) -> defer.Deferred:
        """NOOP with the ``noop_timeout`` deadline; untagged EXISTS etc. reach the
        callbacks as they arrive."""
        return self._command(b"NOOP", timeout=self.noop_timeout)

    def logout(self) -> defer.Deferred:
        """LOGOUT (ending an IDLE first); fires on the tagged OK or when the connection
        closes. The transport is closed afterwards."""
        if self.closed:
            return defer.succeed(None)
        cmd = _Command(b"LOGOUT", [b"LOGOUT"], self.command_timeout)
        cmd.deferred.addCallback(self._logged_out)
        if self._idle_cmd is not None or self._idle_ahead is not None:
            self._done_requested = True
            if self.idling and not self._done_written and not self._queue:
                # DONE and LOGOUT in one write, like a heartbeat's DONE and NOOP: one
                # round trip less for each of 10,000 sessions when the daemon stops
                cmd.tag = self.makeTag()
                self._queue.append(cmd)
                self._write_done(cmd.tag + b" LOGOUT\r\n")
                return cmd.deferred
            if self.idling:
                self._write_done()
        return self._send(cmd)

    def _logged_out(self, result: Any) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.loseConnection()

    # Twisted's timeout mixin is not used: every command has its own deadline.
    def timeoutConnection(self) -> None:  # pragma: no cover
        self._close(CommandTimeout("connection timed out"))


_MALFORMED = object()


def _is_fetch(line: bytes) -> bool:
    parts = line.split(b" ", 3)
    return (len(parts) >= 3 and parts[0] == b"*" and _NUMBER.fullmatch(parts[1]) is not None
            and parts[2].upper() == b"FETCH")


def _flag_list(data: bytes) -> list[str]:
    try:
        parsed = imap4.parseNestedParens(data)
    except Exception:
        return []
    if parsed and isinstance(parsed[0], list):
        return [f.decode("utf-8", "replace") for f in parsed[0] if isinstance(f, bytes)]
    return []


def _fetch_flags(data: bytes) -> Any:
    """FLAGS of a FETCH response's data, None when absent, _MALFORMED when unparseable."""
    try:
        parsed = imap4.parseNestedParens(data)
    except Exception:
        return _MALFORMED
    if len(parsed) != 1 or not isinstance(parsed[0], list):
        return _MALFORMED
    items = parsed[0]
    for i in range(0, len(items) - 1, 2):
        name, value = items[i], items[i + 1]
        if isinstance(name, bytes) and name.upper() == b"FLAGS":
            if not isinstance(value, list):
                return _MALFORMED
            return [f.decode("utf-8", "replace") for f in value if isinstance(f, bytes)]
    return None


class IdleClientFactory(Factory):
    """Builds :class:`IdleClient` instances with the given keyword arguments
    (``clock`` is required)."""

    protocol = IdleClient

    def __init__(self, **client_kwargs: Any) -> None:
        self.client_kwargs = client_kwargs

    def buildProtocol(self, addr: Any) -> IdleClient:
        client = IdleClient(**self.client_kwargs)
        client.factory = self
        return client
