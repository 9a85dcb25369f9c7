"""``IdleClient``: an IMAP4 client with IDLE (RFC 2177), real-time untagged responses,
deadlines on every command, PLAIN / XOAUTH2 / LOGIN authentication and a strict, bounded
parser that closes the connection on anything hostile instead of raising or hanging.

Twisted's ``IMAP4Client`` queues untagged responses until the running command completes,
so it never reports ``* 5 EXISTS`` during IDLE. ``IdleClient`` replaces its line handling:
every untagged EXISTS / EXPUNGE / BYE reaches the owner's callbacks the moment the line
arrives, during IDLE, during any command and between commands.

The client is one thin ``IMAP4Client`` subclass (the protocol object Twisted connects)
that owns and wires, in ``__init__``, a few objects each with a narrow interface:

* :class:`~.commands.CommandQueue` (``commands.py``): the queue, the running command,
  the tags and the one deadline timer; told how to write and whom to tell of a deadline;
* :class:`~.idle.IdleExchange` (``idle.py``): the IDLE state machine and the pipelined
  DONE / NOOP / IDLE, over the command queue;
* :class:`~.reader.BoundedReader` (``reader.py``): the bounded line/literal reader that
  ``dataReceived`` feeds; it hands each response to :meth:`IdleClient.lineReceived`;
* :class:`~.capabilities.CapabilityCache` (``capabilities.py``) and the pure parser
  (``parser.py``);
* login (``auth.py``) and LIST / STATUS (``listing.py``): functions over the client's
  public command methods (:meth:`IdleClient.command`, :meth:`IdleClient.send`), to which
  ``login``, ``login_xoauth2``, ``list_mailboxes``, ``status`` and ``status_command``
  delegate.

None of them reads an attribute of the client; the client keeps the connection state,
the greeting, STARTTLS and the dispatch of each response. What ``IMAP4Client`` offers
and the client does not support fails clearly (``inherited.py``).

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
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITLSTransport
from twisted.logger import Logger
from twisted.mail import imap4
from twisted.python.failure import Failure

from ..failures import describe
from . import auth, listing
from .capabilities import CapabilityCache, announced
from .commands import Command, CommandQueue, command_failed, ignore
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
    CommandFailed,
    CommandTimeout,
    ConnectionLost,
    IMAPError,
    InputFlood,
    ProtocolError,
    ServerBye,
)
from .idle import OFF as IDLE_OFF
from .idle import IdleExchange, IdleState
from .inherited import Unsupported
from .listing import ListEntry
from .parser import (
    Capabilities,
    capability_words,
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


def _reader_setting(name: str) -> property:
    """A setting of the client's reader, read and set through the client (as before the
    reader was an object of its own)."""
    return property(lambda self: getattr(self.reader, name),
                    lambda self, value: setattr(self.reader, name, value),
                    doc=f"The reader's ``{name}`` (:class:`~.reader.BoundedReader`).")


class IdleClient(Unsupported, imap4.IMAP4Client):
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

    # Defaults at class level: an instance holds only what differs (10,000 sessions hold
    # 10,000 clients). IMAP4Client.__init__ is not called: its command table, queue,
    # authenticators and parser state belong to the line handling this class replaces.
    on_exists = on_expunge = staticmethod(ignore)
    on_bye = on_idle_ended = on_connection_lost = staticmethod(ignore)
    state = GREETING
    allow_plaintext_auth = False
    startedTLS = False
    _close_error: IMAPError | None = None
    _greeting_timer: IDelayedCall | None = None
    _tag = _parts = _lastCmd = None

    def __init__(self, *, clock: IReactorTime, command_timeout: float = 60.0,
                 noop_timeout: float = 30.0, max_line: int = BoundedReader.MAX_LINE,
                 max_literal: int = BoundedReader.MAX_LITERAL,
                 max_fetch_literal: int = BoundedReader.MAX_FETCH_LITERAL,
                 allow_plaintext_auth: bool = False) -> None:
        if allow_plaintext_auth:
            self.allow_plaintext_auth = True
        self.greeted: defer.Deferred = defer.Deferred()
        self._caps = CapabilityCache()
        # the parts, wired here. Each knows the client only through the two methods of
        # its link (CommandLink: write_bytes, command_timed_out; LineSink: lineReceived,
        # read_failed) and reads nothing of it.
        self._commands = CommandQueue(clock=clock, link=self,
                                      command_timeout=command_timeout,
                                      noop_timeout=noop_timeout)
        self._idle = IdleExchange(self._commands)
        self._reader = BoundedReader(clock=clock, sink=self, max_line=max_line,
                                     max_literal=max_literal,
                                     max_fetch_literal=max_fetch_literal)

    # ------------------------------------------------------------------ the parts

    @property
    def commands(self) -> CommandQueue:
        """The command queue (the running command, the waiting ones, the deadline)."""
        return self._commands

    @property
    def idle_exchange(self) -> IdleExchange:
        """The IDLE exchange (its state machine and waiters)."""
        return self._idle

    @property
    def reader(self) -> BoundedReader:
        """The bounded reader (its limits and input budget are its public attributes)."""
        return self._reader

    MAX_LENGTH = _reader_setting("max_line")
    max_literal = _reader_setting("max_literal")
    max_fetch_literal = _reader_setting("max_fetch_literal")
    input_burst_lines = _reader_setting("input_burst_lines")
    input_lines_per_second = _reader_setting("input_lines_per_second")
    input_burst_bytes = _reader_setting("input_burst_bytes")
    input_bytes_per_second = _reader_setting("input_bytes_per_second")

    @property
    def clock(self) -> IReactorTime:
        return self._commands.clock

    @property
    def command_timeout(self) -> float:
        return self._commands.command_timeout

    @property
    def noop_timeout(self) -> float:
        return self._commands.noop_timeout

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
        d = self.command(b"CAPABILITY")
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
        if to is CLOSED:
            self._reader.stop()

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

    def dataReceived(self, data: bytes) -> None:
        self._reader.feed(data, not self.paused)  # paused: kept until resumeProducing

    def clearLineBuffer(self) -> bytes:
        """Drop the bytes the reader holds (returns them)."""
        return self._reader.clear()

    def makeTag(self) -> bytes:
        """The next command tag (the command queue's)."""
        return self._commands.make_tag()

    # -- the parts' links (CommandLink, LineSink): called by the queue and the reader

    def write_bytes(self, data: bytes) -> None:
        """Write ``data`` on the transport (the command queue's writes)."""
        self.transport.write(data)

    def command_timed_out(self, message: str) -> None:
        """The running command's deadline passed: close with :class:`CommandTimeout`."""
        if not self.closed:
            self._close(CommandTimeout(message))

    def read_failed(self, error: ProtocolError) -> None:
        """The reader stopped: the server broke a bound (a line, a literal, the budget)."""
        if isinstance(error, InputFlood):
            self._close(error)
        else:
            self._protocol_error(error.text)

    def _close(self, error: IMAPError) -> None:
        """Fail everything pending with ``error`` and abort the transport."""
        if self._close_error is None:
            self._close_error = error
        self._fail_all(error)
        if self.state is not CLOSED:
            self._enter(CLOSED)
            self._reader.clear()
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
        commands = self._commands.drain()
        waiters = [self.greeted, *self._idle.ended()]
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

    def lineReceived(self, line: bytes) -> bool:
        """One response from the reader (its literals joined in). Returns True when the
        reader is to stop reading what it holds (the transport is closing or paused)."""
        tag, _, rest = line.partition(b" ")
        state = self.state
        if state is GREETING:
            self._greeting(tag, rest, line)
        elif state is BYE and not (
                self._logout_running() and tag == self._commands.current.tag):  # type: ignore
            self._protocol_error(f"data after BYE: {excerpt(line)}")
        elif tag == b"*":
            self._untagged(rest, line)
        elif tag == b"+":
            self._continuation(rest, line)
        else:
            self._tagged(tag, rest, line)
        transport = self.transport
        return self.paused or (transport is not None and transport.disconnecting)

    def _logout_running(self) -> bool:
        cmd = self._commands.current
        return cmd is not None and cmd.name == b"LOGOUT"

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
        # a command's on_untagged raises ProtocolError for a malformed answer it reads
        try:
            keyword, number, data = parse_untagged(rest)
            cmd = self._commands.current
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
            if cmd is not None and cmd.on_untagged is not None and \
                    cmd.on_untagged(keyword, rest):
                return
            if keyword == b"STATUS":  # the answer of a STATUS written ahead
                listing.untagged_ahead(self._commands.waiting, keyword, rest)
        except ProtocolError as e:
            self._protocol_error(e.text)

    def _learning_capabilities(self) -> bool:
        """Whether an untagged CAPABILITY list (or code) is taken: before a mailbox is
        selected (greeting, login, the CAPABILITY command), outside IDLE. Once selected or
        idling, an unsolicited list (a flood of 16 KiB CAPABILITY lines during IDLE) is not
        parsed at all."""
        return self.state is not SELECTED and self._idle.state is IDLE_OFF

    def _bye(self, data: bytes) -> None:
        message = text(data)
        if self._logout_running():
            self._enter(BYE)  # a second BYE is "data after BYE" (lineReceived)
            return
        self._notify(self.on_bye, message)
        self._close(ServerBye(message))

    def _continuation(self, rest: bytes, line: bytes) -> None:
        cmd = self._commands.current
        if cmd is not None and cmd.on_continuation is not None:
            try:
                cmd.on_continuation(rest)
            except ProtocolError as e:  # a login's challenge after its cancel
                self._protocol_error(e.text)
        elif cmd is not None and cmd.next_piece < len(cmd.pieces):
            piece = cmd.pieces[cmd.next_piece]
            cmd.next_piece += 1
            self.transport.write(piece + (b"\r\n" if cmd.next_piece == len(cmd.pieces)
                                          else b""))
        else:
            self._protocol_error(f"unexpected continuation: {excerpt(line)}")

    def _tagged(self, tag: bytes, rest: bytes, line: bytes) -> None:
        commands = self._commands
        cmd = commands.current
        if cmd is None or tag != cmd.tag:
            # RFC 3501 §5.5: a STATUS written ahead may be answered out of order
            if listing.tagged_ahead(commands.waiting, tag, rest):
                return
            self._protocol_error(f"response with unknown tag: {excerpt(line)}")
            return
        status, _, data = rest.partition(b" ")
        status = status.upper()
        if status not in _TAGGED:
            self._protocol_error(f"malformed tagged response: {excerpt(line)}")
            return
        commands.answered()  # the timer is re-armed for the next command or cancelled
        code, _ = split_code(data)
        if code is not None:
            self._caps.take_code(code)
        if cmd.name == b"IDLE":
            ended = self._idle.answered(cmd, status, code, data)
            if ended is not None:
                self._notify(self.on_idle_ended, ended)
        elif status == b"OK":
            try:
                if cmd.auth:
                    self._logged_in(code)
                result = cmd.on_ok(code, data) if cmd.on_ok is not None else None
            except Exception as e:
                cmd.deferred.errback(Failure(e))
            else:
                cmd.deferred.callback(result)
        else:
            cmd.deferred.errback(Failure(command_failed(cmd, status, code, data)))
        if self.state is not CLOSED:
            commands.send_next()
        commands.settle()

    def _logged_in(self, code: bytes | None) -> None:
        """A login answered OK: authenticated; capabilities asked again unless the OK
        listed them."""
        self._enter(AUTH)
        if capability_words(code) is None:
            self._caps.stale()

    def _notify(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            log.failure("IMAP event callback failed")

    # ------------------------------------------------------------------ sending

    def command(self, name: bytes, args: bytes = b"", *, timeout: float | None = None,
                **kw: Any) -> defer.Deferred:
        """Send the one-line command ``name args`` (``kw``: the :class:`Command`'s
        ``on_untagged`` / ``on_continuation`` / ``on_ok`` / ``auth``) with ``timeout``
        (``command_timeout`` when not given). Refused while an IDLE is in progress."""
        refused = self._idle.refused(name)
        if refused is not None:
            return refused
        line = name + (b" " + args if args else b"")
        return self._send(Command(name, [line], timeout or self.command_timeout, **kw))

    def send(self, cmd: Command) -> defer.Deferred:
        """Send ``cmd`` (built by the caller: several pieces with literals, or a STATUS of
        :meth:`status_command`); refused while an IDLE is in progress."""
        refused = self._idle.refused(cmd.name)
        if refused is not None:
            return refused
        return self._send(cmd)

    def _send(self, cmd: Command) -> defer.Deferred:
        if self.closed:
            cmd.deferred.errback(Failure(self._close_error or ConnectionLost("not connected")))
            return cmd.deferred
        return self._commands.send(cmd)

    # ------------------------------------------------------------------ TLS and login

    def tls_active(self) -> bool:
        """True when the transport is encrypted (implicit TLS or STARTTLS done)."""
        return auth.tls_active(self.transport, self.startedTLS)

    def secure_transport(self) -> bool:
        """True when TLS is active or the peer is a loopback address."""
        return auth.secure_transport(self.transport, self.startedTLS)

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

        def ok(code: bytes | None, data: bytes) -> None:
            if self._reader.buffered:
                # bytes the server sent after its OK, before TLS: an injection attempt
                self._protocol_error("data after STARTTLS response before TLS")
                raise self._close_error or ProtocolError("data after STARTTLS response")
            self.transport.startTLS(contextFactory)
            self.startedTLS = True
            self._caps.forget()

        d = self.command(b"STARTTLS", on_ok=ok)
        d.addCallback(lambda _: self._refresh_caps())
        return d

    def login(self, username: str, password: str) -> defer.Deferred:
        """AUTHENTICATE PLAIN when offered (with SASL-IR when offered), else LOGIN
        (:func:`.auth.login`)."""
        return auth.login(self, username, password)

    def login_xoauth2(self, username: str, token: str) -> defer.Deferred:
        """AUTHENTICATE XOAUTH2 (:func:`.auth.login_xoauth2`)."""
        return auth.login_xoauth2(self, username, token)

    # ------------------------------------------------------------------ mailboxes

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
        return self.command(b"SELECT", raw, on_untagged=untagged, on_ok=ok)

    def status(self, mailbox: str | bytes = "INBOX",
               items: tuple[str | bytes, ...] = ("UIDNEXT",)) -> defer.Deferred:
        """STATUS ``mailbox`` for ``items`` (:func:`.listing.status`)."""
        return listing.status(self, mailbox, items)

    def status_command(self, raw: bytes, items: tuple[bytes, ...], timeout: float
                       ) -> Command | None:
        """A STATUS command for writing ahead (:func:`.listing.status_command`)."""
        return listing.status_command(raw, items, timeout)

    def list_mailboxes(self, pattern: bytes = b"*", *, special_use: bool = False,
                       keep: Callable[[ListEntry], bool] = lambda e: True,
                       limit: int = 64, hints: tuple[bytes, ...] = ()) -> defer.Deferred:
        """``LIST "" pattern`` (:func:`.listing.list_mailboxes`)."""
        return listing.list_mailboxes(self, pattern, special_use=special_use, keep=keep,
                                      limit=limit, hints=hints)

    # ------------------------------------------------------------------ IDLE

    @property
    def idle_state(self) -> IdleState:
        return self._idle.state

    @property
    def idling(self) -> bool:
        """True from the IDLE's ``+`` to its tagged answer."""
        return self._idle.idling

    def idle(self) -> defer.Deferred:
        """Send IDLE (:meth:`.idle.IdleExchange.idle`); fails at once once closed."""
        if self.closed and self._idle.state is IDLE_OFF:
            return defer.fail(self._close_error or ConnectionLost("not connected"))
        return self._idle.idle()

    def done(self) -> defer.Deferred:
        """End the IDLE with DONE (:meth:`.idle.IdleExchange.done`)."""
        return self._idle.done()

    def done_noop(self, idle_again: bool = False,
                  between: tuple[Command, ...] = ()) -> defer.Deferred:
        """DONE and NOOP in one write (:meth:`.idle.IdleExchange.done_noop`)."""
        return self._idle.done_noop(idle_again, between)

    # ------------------------------------------------------------------ misc commands

    def noop(self) -> defer.Deferred:
        """NOOP with the ``noop_timeout`` deadline; untagged EXISTS etc. reach the
        callbacks as they arrive."""
        return self.command(b"NOOP", timeout=self.noop_timeout)

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
        return self.command(b"ID", args).addCallback(lambda _: None)

    def logout(self) -> defer.Deferred:
        """LOGOUT (ending an IDLE first); fires on the tagged OK or when the connection
        closes. The transport is closed afterwards."""
        if self.closed:
            return defer.succeed(None)
        cmd = Command(b"LOGOUT", [b"LOGOUT"], self.command_timeout)
        cmd.deferred.addCallback(self._logged_out)
        if self._idle.end_with(cmd):
            return cmd.deferred
        return self._send(cmd)

    def _logged_out(self, result: Any) -> None:
        if self.state is not CLOSED and self.transport is not None:
            self._enter(CLOSED)
            self.transport.loseConnection()
