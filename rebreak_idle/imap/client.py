"""``IdleClient``: an IMAP4 client with IDLE (RFC 2177), real-time untagged responses,
deadlines on every command, PLAIN / XOAUTH2 / LOGIN authentication and a strict, bounded
parser that closes the connection on anything hostile instead of raising or hanging.

Twisted's ``IMAP4Client`` queues untagged responses until the running command completes,
so it never reports ``* 5 EXISTS`` during IDLE. ``IdleClient`` replaces its line handling:
every untagged EXISTS / EXPUNGE / BYE reaches the owner's callbacks the moment the line
arrives, during IDLE, during any command and between commands.

Its parts: :mod:`.parser` (pure functions over the server's bytes, no state) and
:mod:`.capabilities` (a composed object, ``_caps``) are objects of their own; the mixins
of the one object per connection are :mod:`.reader` (the bounded line/literal reader: it
*is* the protocol's ``dataReceived``), :mod:`.commands` (the command queue and its one
deadline timer), :mod:`.auth` (STARTTLS and login), :mod:`.idle` (the IDLE exchange, a
state machine), :mod:`.listing` (LIST and STATUS) and :mod:`.inherited` (the
``IMAP4Client`` methods it does not support, each failing with a clear error). They stay
mixins because they are the protocol's own methods and share its per-line state (the
running command, the queue, the IDLE state), read on every line of 10,000 connections:
as objects they would add an object and an attribute hop per line and a back-reference
per connection, for an interface as wide as the client's. This module reads the
responses and holds the connection state.

* a greeting that is not OK/PREAUTH/BYE, an unknown tag, an unexpected continuation,
  an unparseable response or data after BYE close the connection (:class:`ProtocolError`);
* every command has a deadline (``command_timeout``; NOOP and DONE ``noop_timeout``;
  the greeting ``command_timeout``): on expiry its Deferred fails :class:`CommandTimeout`
  and the transport is aborted;
* on connection loss every pending Deferred fails (:class:`ConnectionLost`, or the error
  that made the client close), except ``logout()`` which then succeeds.

Secrets (passwords, tokens) are never part of an exception text or a log event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.mail import imap4
from twisted.python.failure import Failure

from ..failures import describe
from .auth import Authentication
from .capabilities import CapabilityCache, announced
from .commands import Command, CommandQueue, ignore
from .connection_state import (
    AUTH,
    BYE,
    CLOSED,
    CONNECTION_TRANSITIONS,
    GREETING,
    SELECTED,
    UNAUTH,
    ConnectionState,
)
from .errors import (
    AuthenticationFailed,
    CommandFailed,
    CommandTimeout,
    ConnectionLost,
    IMAPError,
    ProtocolError,
    ServerBye,
)
from .idle import OFF as IDLE_OFF
from .idle import IdleExchange
from .inherited import Unsupported
from .listing import Listing
from .parser import (
    Capabilities,
    excerpt,
    flag_list,
    is_atom,
    is_digits,
    is_number,
    parse_status,
    parse_untagged,
    split_code,
    text,
)
from .reader import BoundedReader

__all__ = ["CONNECTION_TRANSITIONS", "ConnectionState", "IdleClient"]

log = Logger(namespace="rebreak_idle.imap")

_TAGGED = (b"OK", b"NO", b"BAD")
_GREETINGS = (b"OK", b"PREAUTH", b"BYE")
_CONDITIONS = (b"OK", b"NO", b"BAD", b"PREAUTH")
_SELECT_NUMBERS = (b"UIDVALIDITY", b"UIDNEXT", b"UNSEEN")


class IdleClient(IdleExchange, Authentication, CommandQueue, BoundedReader, Listing,
                 Unsupported, imap4.IMAP4Client):
    """IMAP4 client for long-lived IDLE sessions (see the module docstring).

    The owner sets the ``on_*`` callbacks (plain attributes, no-ops by default), waits
    for :attr:`greeted`, then calls ``startTLS`` / ``login`` / ``login_xoauth2`` /
    ``select`` / ``idle`` / ``done`` / ``done_noop`` / ``noop`` / ``logout``.
    Commands are sent one at a time (queued in order); while an IDLE is in progress only
    ``done()``, ``done_noop()`` and ``logout()`` are accepted (``logout`` ends the IDLE
    first). ``done_noop()`` is the one pipelined exchange: DONE and NOOP in one write.

    One deadline timer per connection (an ``IDelayedCall`` of ``clock``, in the daemon the
    sessions' shared :class:`~rebreak_idle.timing.wheel.TimerWheel`, reset from command to
    command) covers whichever command is waiting for its answer.
    """

    #: called with N for ``* N EXISTS`` (not for the EXISTS inside SELECT's response,
    #: which ``select`` returns instead)
    on_exists: Callable[[int], None]
    on_expunge: Callable[[int], None]
    #: ``* BYE`` outside LOGOUT, with the server's text (the client then closes)
    on_bye: Callable[[str], None]
    #: the server ended an IDLE by itself (tagged OK without DONE), with its text
    on_idle_ended: Callable[[str], None]
    on_connection_lost: Callable[[Failure], None]

    # Defaults at class level: an instance holds only what differs, so that its attributes
    # stay few enough (≤ 30) for CPython's compact per-instance storage; 10,000 sessions
    # hold 10,000 clients. IMAP4Client.__init__ is not called: its command table, queue,
    # authenticators and parser state belong to the line handling this class replaces.
    on_exists = on_expunge = staticmethod(ignore)
    on_bye = on_idle_ended = on_connection_lost = staticmethod(ignore)
    state = GREETING
    _greeting_timer: IDelayedCall | None = None
    _tag = _parts = _lastCmd = None

    def __init__(self, *, clock: IReactorTime, command_timeout: float = 60.0,
                 noop_timeout: float = 30.0, max_line: int = BoundedReader.MAX_LENGTH,
                 max_literal: int = BoundedReader.max_literal,
                 max_fetch_literal: int = BoundedReader.max_fetch_literal,
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
        self._caps = CapabilityCache()
        self._queue: list[Command] = []

    # ------------------------------------------------------------------ capabilities

    @property
    def capabilities(self) -> Capabilities:
        """The capabilities as last learnt (bytes names, upper case → None or a list of
        bytes values)."""
        return self._caps.words

    def getCapabilities(self) -> defer.Deferred:
        """The capabilities, from the greeting or the last login response when known,
        else via CAPABILITY."""
        if self._caps.known:
            return defer.succeed(self._caps.words)
        return self._refresh_caps()

    def _refresh_caps(self) -> defer.Deferred:
        d = self._command(b"CAPABILITY")
        d.addCallback(lambda _: self._caps.words)
        return d

    has_idle = announced(b"IDLE")
    has_starttls = announced(b"STARTTLS")
    has_auth_plain = announced(b"AUTH", b"PLAIN")
    has_xoauth2 = announced(b"AUTH", b"XOAUTH2")
    has_id = announced(b"ID", doc="RFC 2971 ID.")
    has_sasl_ir = announced(b"SASL-IR")
    login_disabled = announced(b"LOGINDISABLED")

    @property
    def closed(self) -> bool:
        """Closing or closed (state CLOSED): nothing more is sent, what arrives is
        dropped."""
        return self.state is CLOSED

    @property
    def close_error(self) -> IMAPError | None:
        """Why the client closed the connection itself (None: it did not, or not yet)."""
        return self._close_error

    def _enter(self, to: ConnectionState) -> None:
        if to not in CONNECTION_TRANSITIONS[self.state]:
            raise RuntimeError(f"IMAP connection state {self.state} cannot move to {to}")
        self.state = to

    def _authenticated(self) -> None:
        self._enter(AUTH)

    # ------------------------------------------------------------------ connection

    def connectionMade(self) -> None:
        self._greeting_timer = self.clock.callLater(self.command_timeout,
                                                    self._greeting_expired)

    def connectionLost(self, reason: Failure = None) -> None:
        if self.state is not CLOSED:
            self._enter(CLOSED)
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
        if self.state is not CLOSED:
            self._enter(CLOSED)
            self.clearLineBuffer()
            transport = self.transport
            if transport is not None:
                abort = getattr(transport, "abortConnection", None)
                if abort is not None:
                    abort()
                else:  # pragma: no cover
                    transport.loseConnection()

    def _protocol_error(self, text: str) -> None:
        # no server text here: it may echo a secret, which only the session can mask
        # (the session logs the masked text as its "connect failed" line)
        log.debug("closing IMAP connection: protocol error")
        self._close(ProtocolError(text))

    def _fail_all(self, error: IMAPError) -> None:
        if self._greeting_timer is not None and self._greeting_timer.active():
            self._greeting_timer.cancel()
        self._greeting_timer = None
        commands = ([self._current] if self._current else []) + self._queue
        self._current = None
        self._queue = []
        self._disarm()
        waiters = [self.greeted, *self._idle_ended()]
        for cmd in commands:
            if cmd.name == b"LOGOUT":
                if not cmd.deferred.called:
                    cmd.deferred.callback(None)
            else:
                waiters.append(cmd.deferred)
        for d in waiters:
            if d is not None and not d.called:
                d.errback(Failure(error))

    # ------------------------------------------------------------------ receiving

    def _dispatch(self, line: bytes) -> None:
        tag, _, rest = line.partition(b" ")
        if self.state is GREETING:
            self._greeting(tag, rest, line)
            return
        if self.state is BYE and not (
                self._logout_running() and tag == self._current.tag):  # type: ignore
            self._protocol_error(f"data after BYE: {excerpt(line)}")
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
        parsed = parse_status(rest, _GREETINGS)
        if tag != b"*" or parsed is None:
            # no byte of what answered: an open port of another service tells nothing
            self._protocol_error("not an IMAP server (no IMAP greeting)")
            return
        status, data = parsed
        if status == b"BYE":
            self._close(ServerBye(text(data)))
            return
        self._enter(AUTH if status == b"PREAUTH" else UNAUTH)
        caps = self._caps
        caps.take_code(split_code(data)[0])
        if caps.known:
            self._greeted()
            return
        d = self._send(Command(b"CAPABILITY", [b"CAPABILITY"], self.command_timeout))
        d.addCallbacks(lambda _: self._greeted(), self._greeting_failed)

    def _greeting_expired(self) -> None:
        self._greeting_timer = None
        self._close(CommandTimeout(f"no greeting within {self.command_timeout:g}s"))

    def _greeting_failed(self, failure: Failure) -> None:
        if not self.greeted.called:
            self.greeted.errback(failure)

    def _greeted(self) -> None:
        if self._greeting_timer is not None and self._greeting_timer.active():
            self._greeting_timer.cancel()
        self._greeting_timer = None
        if not self.greeted.called:
            self.greeted.callback(self.capabilities)

    def _untagged(self, rest: bytes, line: bytes) -> None:
        try:
            keyword, number, data = parse_untagged(rest)
        except ProtocolError as e:
            self._protocol_error(e.text)
            return
        cmd = self._current
        if number is not None:
            if cmd is not None and cmd.on_untagged is not None and \
                    cmd.on_untagged(keyword, rest):
                return
            if keyword == b"EXISTS":
                self._notify(self.on_exists, number)
            elif keyword == b"EXPUNGE":
                self._notify(self.on_expunge, number)
            return  # RECENT and FETCH (flags): checked, not reported
        if keyword == b"BYE":
            self._bye(data)
            return
        if keyword == b"CAPABILITY":
            if self._learning_capabilities():
                self._caps.take(data)
        elif keyword in _CONDITIONS:
            code, _ = split_code(data)
            if not (code is not None and self._learning_capabilities()
                    and self._caps.take_code(code)) and keyword != b"OK":
                log.debug("IMAP server says {status}: {text}", status=keyword.decode(),
                          text=text(data))
        if cmd is not None and cmd.on_untagged is not None and cmd.on_untagged(keyword, rest):
            return
        self._untagged_ahead(keyword, rest)  # a STATUS written ahead (listing.py)

    def _learning_capabilities(self) -> bool:
        """Whether an untagged CAPABILITY list (or code) is taken: before a mailbox is
        selected (greeting, login, the CAPABILITY command), outside IDLE. Once selected or
        idling, an unsolicited list (a flood of 16 KiB CAPABILITY lines during IDLE) is not
        parsed at all."""
        return self.state is not SELECTED and self._idle_state is IDLE_OFF

    def _bye(self, data: bytes) -> None:
        message = text(data)
        if self._logout_running():
            self._enter(BYE)  # a second BYE is "data after BYE" (_dispatch)
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
        else:
            self._protocol_error(f"unexpected continuation: {excerpt(line)}")

    def _tagged(self, tag: bytes, rest: bytes, line: bytes) -> None:
        cmd = self._current
        if cmd is None or tag != cmd.tag:
            if self._tagged_ahead(tag, rest):  # RFC 3501 §5.5: answered out of order
                return
            self._protocol_error(f"response with unknown tag: {excerpt(line)}")
            return
        status, _, data = rest.partition(b" ")
        status = status.upper()
        if status not in _TAGGED:
            self._protocol_error(f"malformed tagged response: {excerpt(line)}")
            return
        self._deadline_cmd = None  # the timer is re-armed for the next command or cancelled
        self._current = None
        code, _ = split_code(data)
        if code is not None:
            self._caps.take_code(code)
        if cmd.name == b"IDLE":
            self._idle_answered(cmd, status, code, data)
        elif status == b"OK":
            try:
                result = cmd.on_ok(code, data) if cmd.on_ok is not None else None
            except Exception as e:
                cmd.deferred.errback(Failure(e))
            else:
                cmd.deferred.callback(result)
        else:
            cmd.deferred.errback(Failure(self._command_failed(cmd, status, code, data)))
        if self.state is not CLOSED:
            self._send_next()
        if self._current is None and self._deadline_cmd is None:
            self._disarm()  # also after LOGOUT's OK: no deadline outlives the last answer

    def _command_failed(self, cmd: Command, status: bytes, code: bytes | None,
                        data: bytes) -> CommandFailed:
        kind = AuthenticationFailed if cmd.auth and status == b"NO" else CommandFailed
        code_word = code.split()[0].decode("ascii", "replace").upper() if code else None
        return kind(text(data) or f"{cmd.label} failed", status.decode(), code_word,
                    cmd.label)

    def _notify(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            log.failure("IMAP event callback failed")

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
                info["FLAGS"] = flag_list(after)
            elif keyword == b"OK":
                code, _ = split_code(after)
                if code:
                    name, _, value = code.partition(b" ")
                    name = name.upper()
                    if name in _SELECT_NUMBERS and is_number(value):
                        info[name.decode()] = int(value)
                    elif name in _SELECT_NUMBERS and is_digits(value):
                        self._protocol_error(f"{name.decode()} out of range: "
                                             f"{excerpt(value)}")
                        return True
                    elif name == b"PERMANENTFLAGS":
                        info["PERMANENTFLAGS"] = flag_list(value)
            return False

        def ok(code: bytes | None, data: bytes) -> dict[str, Any]:
            if code is not None and code.upper() == b"READ-ONLY":
                info["READ-WRITE"] = False
            if info["EXISTS"] is None:
                raise ProtocolError("SELECT response without EXISTS")
            self._enter(SELECTED)
            return info

        raw = mailbox.encode("ascii", "replace")
        if not is_atom(raw):
            return defer.fail(CommandFailed("mailbox name must be an IMAP atom",
                                            command="SELECT"))
        return self._command(b"SELECT", raw, on_untagged=untagged, on_ok=ok)

    def status(self, mailbox: str | bytes = "INBOX",
               items: tuple[str | bytes, ...] = ("UIDNEXT",)) -> defer.Deferred:
        """STATUS ``mailbox`` (a name, or the bytes a LIST gave) for ``items`` (e.g.
        UIDNEXT UIDVALIDITY MESSAGES); fires with ``{item: int}`` for the items the server
        answered (the others are absent). CommandFailed when the server refuses (NO/BAD)
        or the name cannot be sent without a literal; ProtocolError for a malformed
        answer. RFC 3501 §6.3.10: allowed while a mailbox is selected. The same command
        as the heartbeat's folder checks (:meth:`status_command`), sent on its own."""
        words = tuple((i if isinstance(i, bytes) else i.encode("ascii", "replace")).upper()
                      for i in items)
        try:
            raw = mailbox if isinstance(mailbox, bytes) else mailbox.encode("ascii")
        except UnicodeEncodeError:
            raw = b""
        cmd = (self.status_command(raw, words, self.command_timeout)
               if words and all(is_atom(w) for w in words) else None)
        if cmd is None:
            return defer.fail(CommandFailed("mailbox name needs a literal, or items are "
                                            "not atoms", command="STATUS"))
        return self._send_status(cmd)

    # ------------------------------------------------------------------ misc commands

    def noop(self) -> defer.Deferred:
        """NOOP with the ``noop_timeout`` deadline; untagged EXISTS etc. reach the
        callbacks as they arrive."""
        return self._command(b"NOOP", timeout=self.noop_timeout)

    def id(self, fields: dict[str, str]) -> defer.Deferred:
        """RFC 2971 ID with ``fields`` (field names and values as quoted strings; the
        server's own ``* ID`` answer is read and ignored). Fires with None."""
        pieces: list[bytes] = []
        for name, value in fields.items():
            for item in (name, value):
                raw = item.encode("ascii", "replace")[:1024]
                if not all(32 <= b < 127 and b not in b'"\\' for b in raw):
                    return defer.fail(CommandFailed("ID field must be printable ASCII "
                                                    "without quotes", command="ID"))
                pieces.append(b'"' + raw + b'"')
        args = b"(" + b" ".join(pieces) + b")" if pieces else b"NIL"
        return self._command(b"ID", args).addCallback(lambda _: None)

    def logout(self) -> defer.Deferred:
        """LOGOUT (ending an IDLE first); fires on the tagged OK or when the connection
        closes. The transport is closed afterwards."""
        if self.closed:
            return defer.succeed(None)
        cmd = Command(b"LOGOUT", [b"LOGOUT"], self.command_timeout)
        cmd.deferred.addCallback(self._logged_out)
        if self._end_idle_with(cmd):
            return cmd.deferred
        return self._send(cmd)

    def _logged_out(self, result: Any) -> None:
        if self.state is not CLOSED and self.transport is not None:
            self._enter(CLOSED)
            self.transport.loseConnection()
