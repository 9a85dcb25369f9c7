"""An in-process IMAP server for tests and the demo, on ``twisted.mail.imap4.IMAP4Server``
(the mailboxes it serves are those of :mod:`rebreak_idle.testing.mailstore`).

Usage::

    server = InProcessIMAPServer(reactor)
    server.add_user("ann@example.org", "secret", token="oauth-token")   # token: XOAUTH2
    port = server.listen()                      # 127.0.0.1, free port, plain IMAP
    tls_port = server.listen(tls=True)          # implicit TLS, test CA's server cert
    st_port = server.listen(starttls=True)      # STARTTLS (LOGINDISABLED until TLS)
    number = port.getHost().port
    uid = server.deliver("ann@example.org", subject="Hi", sender="bob@example.org",
                         body="text")          # pushes "* N EXISTS" to selected/idling
    server.delete("ann@example.org", uid)       # pushes "* N EXPUNGE"
    server.messages("ann@example.org")          # [{"uid", "seq", "subject", "sender", "flags"}]
    await server.wait_for_idle("ann@example.org")   # Deferred: a connection of ann idles
    ...
    yield server.stop()                         # stop listening, drop connections

What the server speaks (RFC 3501 subset of Twisted's IMAP4Server, in-memory mailboxes):
CAPABILITY, LOGIN, AUTHENTICATE PLAIN / XOAUTH2 (with SASL-IR, or by continuation),
STARTTLS, SELECT/EXAMINE, FETCH, UID FETCH, STORE, UID STORE, EXPUNGE, SEARCH, APPEND,
NOOP, LOGOUT and IDLE (RFC 2177: ``+ idling``, untagged EXISTS/EXPUNGE pushed while
idling, ``DONE`` → ``<tag> OK IDLE terminated``). A failed login (LOGIN or AUTHENTICATE)
is answered ``<tag> NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)``; a failed
XOAUTH2 first sends ``+ <base64 JSON>`` and waits for the client's empty line.

Switches (attributes, may be changed at any time):

* ``idle_enabled`` (True): when False, IDLE is not advertised and answered ``BAD``;
* ``mechanisms`` ([b"PLAIN", b"XOAUTH2"]): AUTH= mechanisms offered;
* ``sasl_ir`` (True): advertise SASL-IR (initial responses are accepted anyway);
* ``greeting_capabilities`` (True): put ``[CAPABILITY ...]`` in the greeting;
* ``silent`` (False): when True, connections accept bytes and never answer (no greeting
  for new connections either) — for timeout tests;
* ``select_uidnext`` (True): send ``* OK [UIDNEXT n]`` in the SELECT response; False acts
  like Courier IMAP, which tells UIDNEXT only to ``STATUS``;
* ``status_uidnext`` (True): answer UIDNEXT to ``STATUS``; False (with
  ``select_uidnext=False``) leaves a client nothing but the count;

Counters for assertions: ``login_attempts[user]`` (Counter, LOGIN and AUTHENTICATE),
``logins_ok[user]``, ``commands[b"LOGOUT"]`` (Counter of command names, upper case),
``open_connections`` (int), ``connections_made`` (int), ``idling_connections(user)``.
``drop_connections(user)`` aborts every open connection (of ``user`` if given).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import time
from collections import Counter
from email.message import EmailMessage
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.mail import imap4
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import log as legacy_log
from zope.interface import implementer

from .certs import CertPair, make_test_certs
from .mailstore import MemoryAccount, MemoryMailbox

__all__ = ["InProcessIMAPServer"]

AUTH_FAILED = b"[AUTHENTICATIONFAILED] Invalid credentials (Failure)"


@implementer(IRealm)
class _Realm:
    def __init__(self, server: InProcessIMAPServer) -> None:
        self.server = server

    def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> Any:
        if imap4.IAccount not in interfaces:
            raise NotImplementedError("IAccount only")
        name = avatar_id.decode() if isinstance(avatar_id, bytes) else avatar_id
        return imap4.IAccount, self.server.account(name), lambda: None


class _ServerProtocol(imap4.IMAP4Server):
    """IMAP4Server with IDLE (RFC 2177), SASL PLAIN/XOAUTH2 with SASL-IR, counters and
    the switches of :class:`InProcessIMAPServer`."""

    IDENT = b"rebreak-idle test IMAP server ready"
    server: InProcessIMAPServer
    idling = False
    user: str | None = None

    def capabilities(self) -> dict[bytes, Any]:
        s = self.server
        caps: dict[bytes, Any] = {}
        if self.ctx and self.canStartTLS and not self.startedTLS:
            caps[b"STARTTLS"] = None
            caps[b"LOGINDISABLED"] = None
        else:
            if s.mechanisms:
                caps[b"AUTH"] = list(s.mechanisms)
            if s.sasl_ir:
                caps[b"SASL-IR"] = None
        caps[b"NAMESPACE"] = None
        if s.idle_enabled:
            caps[b"IDLE"] = None
        return caps

    def connectionMade(self) -> None:
        self.server._connections.add(self)
        self.server.connections_made += 1
        self.tags = {}
        self.canStartTLS = self.ctx is not None and \
            imap4.interfaces.ITLSTransport(self.transport, None) is not None
        self.setTimeout(self.timeOut)
        if not self.server.silent:
            self.sendServerGreeting()

    def sendServerGreeting(self) -> None:
        if self.server.greeting_capabilities:
            super().sendServerGreeting()
        else:
            self.sendPositiveResponse(message=self.IDENT)

    def connectionLost(self, reason: Any) -> None:
        self.server._connections.discard(self)
        if self.mbox is not None:
            self.mbox.removeListener(self)
            self.mbox = None
        self.idling = False
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self.server.silent:
            return
        super().dataReceived(data)

    def dispatchCommand(self, tag: bytes, cmd: bytes, rest: bytes, uid: Any = None) -> Any:
        if uid is None:
            self.server.commands[cmd.upper()] += 1
        return super().dispatchCommand(tag, cmd, rest, uid)

    # -- IDLE

    def do_IDLE(self, tag: bytes) -> None:
        if not self.server.idle_enabled:
            self.sendBadResponse(tag, b"Unknown command IDLE")
            return
        self.sendContinuationRequest(b"idling")
        self.parseTag = tag
        self.lastState = self.parseState
        self.parseState = "idle"
        self.idling = True
        self.server._idle_started(self)

    auth_IDLE = (do_IDLE,)
    select_IDLE = (do_IDLE,)

    def parse_idle(self, line: bytes) -> None:
        self.parseState = self.lastState
        del self.lastState
        self.idling = False
        if line.strip().upper() == b"DONE":
            self.sendPositiveResponse(self.parseTag, b"IDLE terminated")
        else:
            self.sendBadResponse(self.parseTag, b"Expected DONE")

    # -- LOGIN / AUTHENTICATE

    def _failed(self, tag: bytes) -> None:
        self.sendNegativeResponse(tag, AUTH_FAILED)

    def _succeeded(self, tag: bytes, user: str, what: bytes) -> None:
        self.server.logins_ok[user] += 1
        self.user = user
        self.account = self.server.account(user)
        self.state = "auth"
        self.setTimeout(self.POSTAUTH_TIMEOUT)
        self.sendPositiveResponse(tag, what + b" completed")

    def _password_login(self, tag: bytes, user: bytes, password: bytes, what: bytes) -> None:
        """Count the attempt and check ``user``/``password`` against the portal: ``tag``
        gets ``<what> completed`` or AUTHENTICATIONFAILED."""
        name = user.decode("utf-8", "replace")
        self.server.login_attempts[name] += 1
        d = self.server.portal.login(UsernamePassword(user, password), None, imap4.IAccount)
        d.addCallbacks(lambda _: self._succeeded(tag, name, what),
                       lambda f: (f.trap(UnauthorizedLogin), self._failed(tag)))
        d.addErrback(legacy_log.err)

    def do_LOGIN(self, tag: bytes, user: bytes, passwd: bytes) -> None:
        if b"LOGINDISABLED" in self.capabilities():
            self.sendBadResponse(tag, b"LOGIN is disabled before STARTTLS")
            return
        self._password_login(tag, user, passwd, b"LOGIN")

    unauth_LOGIN = (do_LOGIN, imap4.IMAP4Server.arg_astring,
                    imap4.IMAP4Server.arg_finalastring)

    def do_AUTHENTICATE(self, tag: bytes, line: bytes) -> None:
        words = line.split()
        mech = words[0].upper() if words else b""
        if mech not in self.server.mechanisms or b"STARTTLS" in self.capabilities():
            self.sendNegativeResponse(tag, b"Unsupported authentication mechanism")
            return
        initial = words[1] if len(words) > 1 else None

        def got(response: bytes) -> None:
            if response.strip() == b"*":
                self.sendBadResponse(tag, b"Authentication aborted")
                return
            try:
                decoded = base64.b64decode(response.strip(), validate=True)
            except binascii.Error:
                self.sendBadResponse(tag, b"Invalid base64")
                return
            if mech == b"PLAIN":
                self._plain(tag, decoded)
            else:
                self._xoauth2(tag, decoded)

        if initial is not None:
            got(b"" if initial == b"=" else initial)
        else:
            self._read_line(got)
            self.sendContinuationRequest(b"")

    unauth_AUTHENTICATE = (do_AUTHENTICATE, imap4.IMAP4Server.arg_line)

    def _read_line(self, callback: Any) -> None:
        self.parseState = "pending"
        self._pendingLiteral = defer.Deferred()
        self._pendingLiteral.addCallback(callback)
        self._pendingLiteral.addErrback(legacy_log.err)

    def _plain(self, tag: bytes, decoded: bytes) -> None:
        parts = decoded.split(b"\x00")
        if len(parts) != 3:
            self.sendBadResponse(tag, b"Malformed PLAIN response")
            return
        self._password_login(tag, parts[1], parts[2], b"AUTHENTICATE")

    def _xoauth2(self, tag: bytes, decoded: bytes) -> None:
        fields = dict(p.split(b"=", 1) for p in decoded.split(b"\x01") if b"=" in p)
        name = fields.get(b"user", b"").decode("utf-8", "replace")
        token = fields.get(b"auth", b"").removeprefix(b"Bearer ").decode("utf-8", "replace")
        self.server.login_attempts[name] += 1
        if name and self.server.tokens.get(name) == token:
            self._succeeded(tag, name, b"AUTHENTICATE")
            return
        challenge = base64.b64encode(
            b'{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}')
        self._read_line(lambda _line: self._failed(tag))
        self.sendContinuationRequest(challenge)

    # -- SELECT with UIDNEXT (RFC 3501 §6.3.1; Twisted's server leaves it out)

    def _cbSelectWork(self, mbox: Any, cmdName: bytes, tag: bytes) -> None:
        if mbox is None or not self.server.select_uidnext:
            super()._cbSelectWork(mbox, cmdName, tag)
            return
        real = self.sendPositiveResponse

        def respond(t: Any = None, message: bytes = b"") -> None:
            if t is None and message.startswith(b"[UIDVALIDITY"):
                real(None, message)
                real(None, b"[UIDNEXT %d] Predicted next UID" % mbox.getUIDNext())
            else:
                real(t, message)

        self.sendPositiveResponse = respond  # type: ignore[method-assign]
        try:
            super()._cbSelectWork(mbox, cmdName, tag)
        finally:
            del self.sendPositiveResponse

    def _cbStatusGotMailbox(self, mbox: Any, tag: bytes, mailbox: Any, names: Any) -> None:
        if not self.server.status_uidnext:
            names = [n for n in names if n.upper() != "UIDNEXT"]
        super()._cbStatusGotMailbox(mbox, tag, mailbox, names)

    # -- LIST: the mailboxes' LIST attributes (Twisted's server lists their message flags)

    def _cbListWork(self, mailboxes: Any, tag: bytes, sub: Any, cmdName: bytes) -> None:
        for name, box in mailboxes:
            flags = b" ".join(a.encode("ascii") for a in getattr(box, "attributes", ()))
            quoted = name.encode("imap4-utf-7").replace(b"\\", b"\\\\").replace(b'"', b'\\"')
            self.sendUntaggedResponse(cmdName + b" (" + flags + b') "/" "' + quoted + b'"')
        self.sendPositiveResponse(tag, cmdName + b" completed")

    # -- EXPUNGE: other connections are told by the mailbox

    def do_EXPUNGE(self, tag: bytes) -> None:
        self.mbox._expunger = self
        try:
            super().do_EXPUNGE(tag)
        finally:
            self.mbox._expunger = None

    select_EXPUNGE = (do_EXPUNGE,)


class _ServerFactory(Factory):
    noisy = False  # no "Starting/Stopping factory" lines in the demo's and tests' logs

    def __init__(self, server: InProcessIMAPServer, context: Any) -> None:
        self.server = server
        self.context = context

    def buildProtocol(self, addr: Any) -> _ServerProtocol:
        p = _ServerProtocol(contextFactory=self.context)
        p.server = self.server
        p.portal = self.server.portal
        p.factory = self
        return p


class InProcessIMAPServer:
    """See the module docstring."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.idle_enabled = True
        self.mechanisms: list[bytes] = [b"PLAIN", b"XOAUTH2"]
        self.sasl_ir = True
        self.greeting_capabilities = True
        self.silent = False
        self.select_uidnext = True
        self.status_uidnext = True
        self.login_attempts: Counter[str] = Counter()
        self.logins_ok: Counter[str] = Counter()
        self.commands: Counter[bytes] = Counter()
        self.connections_made = 0
        self.tokens: dict[str, str] = {}
        self._checker = InMemoryUsernamePasswordDatabaseDontUse()
        self.portal = Portal(_Realm(self), [self._checker])
        self._accounts: dict[str, MemoryAccount] = {}
        self._connections: set[_ServerProtocol] = set()
        self._ports: list[Any] = []
        self._idle_waiters: list[tuple[str, defer.Deferred]] = []

    # -- users and mail

    def add_user(self, name: str, password: str, token: str | None = None) -> None:
        """Create (or update) a user with a password and optional XOAUTH2 token."""
        self._checker.addUser(name.encode("utf-8"), password.encode("utf-8"))
        if token is not None:
            self.tokens[name] = token
        self.account(name)

    def account(self, name: str) -> MemoryAccount:
        if name not in self._accounts:
            acct = MemoryAccount(name)
            acct.addMailbox("INBOX")
            self._accounts[name] = acct
        return self._accounts[name]

    def inbox(self, name: str) -> MemoryMailbox:
        return self.account(name).select("INBOX")

    def add_folder(self, name: str, folder: str, attributes: tuple[str, ...] = ()
                   ) -> MemoryMailbox:
        """Give user ``name`` a folder (``"Unbekannt"``, ``"Spam"`` with ``\\Junk``)."""
        return self.account(name).add_folder(folder, attributes)

    def deliver(self, name: str, subject: str = "Test message",
                sender: str = "sender@example.org", body: str = "Hello.\r\n",
                to: str | None = None, raw: bytes | None = None,
                folder: str = "INBOX") -> int:
        """Add a message to ``name``'s INBOX (pushing ``* N EXISTS`` to its selected
        connections, idling or not); returns the new UID."""
        if raw is None:
            msg = EmailMessage()
            msg["From"] = sender
            msg["To"] = to or name
            msg["Subject"] = subject
            msg["Date"] = email.utils.formatdate(time.time())
            msg["Message-ID"] = email.utils.make_msgid(domain="rebreak.test")
            msg.set_content(body)
            raw = msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        return self.account(name).select(folder).add(raw)

    def delete(self, name: str, uid: int) -> bool:
        """Remove a message by UID (pushing ``* N EXPUNGE``); True when it existed."""
        return bool(self.inbox(name).remove_uids([uid]))

    def messages(self, name: str) -> list[dict[str, Any]]:
        """The INBOX of ``name``: ``[{"uid", "seq", "subject", "sender", "flags"}]``."""
        return [{"uid": m.uid, "seq": i + 1, "subject": m.subject, "sender": m.sender,
                 "flags": list(m.flags)} for i, m in enumerate(self.inbox(name).messages)]

    # -- connections

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def idling_connections(self, name: str | None = None) -> int:
        return sum(1 for c in self._connections
                   if c.idling and (name is None or c.user == name))

    def wait_for_idle(self, name: str | None = None) -> defer.Deferred:
        """A Deferred that fires when a connection (of ``name``) is idling (at once if
        one already is). Add a timeout in the test."""
        if self.idling_connections(name):
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._idle_waiters.append((name or "", d))
        return d

    def _idle_started(self, proto: _ServerProtocol) -> None:
        waiting, self._idle_waiters = self._idle_waiters, []
        for name, d in waiting:
            if not name or name == proto.user:
                if not d.called:
                    d.callback(None)
            else:
                self._idle_waiters.append((name, d))

    def drop_connections(self, name: str | None = None) -> None:
        """Abort every open connection (of user ``name`` if given); the server keeps
        listening."""
        for conn in list(self._connections):
            if name is None or conn.user == name:
                conn.transport.abortConnection()

    def listen(self, port: int = 0, tls: bool = False, starttls: bool = False,
               cert: CertPair | None = None, interface: str = "127.0.0.1") -> Any:
        """Listen on ``interface`` (default 127.0.0.1, free port by default): plain,
        implicit TLS (``tls=True``) or with STARTTLS (``starttls=True``, LOGIN disabled
        and no AUTH offered before TLS). ``cert`` defaults to the test CA's server
        certificate (:func:`rebreak_idle.testing.certs.make_test_certs`). Returns the
        IListeningPort (``.getHost().port``)."""
        options = None
        if tls or starttls:
            pair = cert or make_test_certs().server
            options = pair.private_certificate().options()
        factory: Any = _ServerFactory(self, options if starttls else None)
        if tls:
            factory = TLSMemoryBIOFactory(options, False, factory)
        listening = self.reactor.listenTCP(port, factory, interface=interface)
        self._ports.append(listening)
        return listening

    def stop_listening(self) -> defer.Deferred:
        """Close every listening port (connections stay up); fires once they are closed.
        ``listen()`` again to come back (on the same port: ``listen(port=...)``)."""
        ports, self._ports = self._ports, []
        ds = [defer.maybeDeferred(p.stopListening) for p in ports]
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    def stop(self) -> defer.Deferred:
        """Stop listening and drop all connections; fires when all are closed."""
        ds = [self.stop_listening()]
        for conn in list(self._connections):
            ds.append(_lost(conn))
            conn.transport.abortConnection()
        waiting, self._idle_waiters = self._idle_waiters, []
        for _, d in waiting:
            if not d.called:
                d.cancel()
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)


def _lost(conn: _ServerProtocol) -> defer.Deferred:
    d: defer.Deferred = defer.Deferred()
    original = conn.connectionLost

    def lost(reason: Any) -> None:
        original(reason)
        if not d.called:
            d.callback(None)

    conn.connectionLost = lost  # type: ignore[method-assign]
    return d
