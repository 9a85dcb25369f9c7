"""IdleClient against real servers on 127.0.0.1: the in-process Twisted server and Dovecot.

The same scenarios run against both (``ServerScenarios``); each server class adds what
only it can do (switches and counters of the in-process server).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.mail import imap4
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.trial.unittest import TestCase

from rebreak_idle.imap import (
    AuthenticationFailed,
    CommandFailed,
    CommandTimeout,
    ConnectionLost,
    IdleClient,
)
from rebreak_idle.net.tls import TLSClientEndpoint, _LeanTLSProtocol, client_tls_options
from rebreak_idle.testing.certs import make_test_certs
from rebreak_idle.testing.imapserver import InProcessIMAPServer
from tests.support.dovecot import DovecotServer, skip_without_dovecot

WAIT = 10  # seconds: the deadline of every wait on the network


class ClientEvents:
    """Collects events from a client and lets a test wait for the next one."""

    def __init__(self, client: IdleClient) -> None:
        self.events: list[tuple[str, Any]] = []
        self._waiters: list[tuple[str, defer.Deferred]] = []
        client.on_exists = lambda n: self._add("exists", n)
        client.on_expunge = lambda n: self._add("expunge", n)
        client.on_bye = lambda t: self._add("bye", t)
        client.on_connection_lost = lambda f: self._add("lost", f.value)

    def _add(self, kind: str, value: Any) -> None:
        self.events.append((kind, value))
        waiting, self._waiters = self._waiters, []
        for k, d in waiting:
            if k == kind:
                d.callback(value)
            else:
                self._waiters.append((k, d))

    def next(self, kind: str) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._waiters.append((kind, d))
        return d.addTimeout(WAIT, reactor)


class ServerScenarios:
    """Scenarios shared by the server classes. Subclasses define setUp (``self.port``,
    ``self.tls_port``, ``self.user``, ``self.password``) and ``deliver(user)``."""

    bad_login_text: str

    @defer.inlineCallbacks
    def connect(self, port: int, creator: Any = None, **kw: Any) -> Any:
        kw.setdefault("clock", reactor)
        client = IdleClient(**kw)
        endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=WAIT)
        if creator is not None:
            endpoint = TLSClientEndpoint(creator, endpoint)  # the sessions' implicit TLS
        lost: defer.Deferred = defer.Deferred()
        original = client.connectionLost

        def connection_lost(reason: Any) -> None:
            original(reason)
            lost.callback(None)

        client.connectionLost = connection_lost  # type: ignore[method-assign]
        yield connectProtocol(endpoint, client).addTimeout(WAIT, reactor)

        def close() -> defer.Deferred:
            if not lost.called:
                client.transport.abortConnection()
            return lost

        self.addCleanup(close)  # type: ignore[attr-defined]
        client.lost = lost
        return client

    def tls(self, hostname: str = "localhost", ca: bool = True) -> Any:
        return client_tls_options(hostname, make_test_certs().ca if ca else None)

    @defer.inlineCallbacks
    def logged_in(self, port: int | None = None, creator: Any = None) -> Any:
        client = yield self.connect(port or self.port, creator)
        yield client.greeted.addTimeout(WAIT, reactor)
        yield client.login(self.user, self.password)
        return client

    @defer.inlineCallbacks
    def test_idle_sees_new_mail_and_done_ends_it(self) -> Any:
        client = yield self.logged_in()
        events = ClientEvents(client)
        self.assertTrue(client.has_idle)
        info = yield client.select()
        before = info["EXISTS"]
        yield client.idle()
        self.assertTrue(client.idling)
        arrived = events.next("exists")
        yield self.deliver(self.user)
        exists = yield arrived
        self.assertEqual(exists, before + 1)
        self.assertTrue(client.idling)
        yield client.done().addTimeout(WAIT, reactor)
        self.assertFalse(client.idling)
        yield client.noop()
        yield client.logout()
        yield client.lost

    @defer.inlineCallbacks
    def test_pipelined_heartbeat(self) -> Any:
        """done_noop() (DONE and NOOP in one write, with or without the next IDLE) then
        IDLE again, five times over; new mail after that still arrives during IDLE."""
        client = yield self.logged_in()
        events = ClientEvents(client)
        info = yield client.select()
        before = info["EXISTS"]
        yield client.idle()
        for idle_again in (False, True, True, False, True):
            yield client.done_noop(idle_again).addTimeout(WAIT, reactor)
            self.assertFalse(client.idling)
            yield client.idle().addTimeout(WAIT, reactor)
            self.assertTrue(client.idling)
        arrived = events.next("exists")
        yield self.deliver(self.user)
        exists = yield arrived
        self.assertEqual(exists, before + 1)
        yield client.logout()
        yield client.lost

    @defer.inlineCallbacks
    def test_failed_login_carries_server_text(self) -> Any:
        client = yield self.connect(self.port)
        yield client.greeted
        try:
            yield client.login(self.user, "wrong-password")
        except AuthenticationFailed as e:
            self.assertEqual(e.text, self.bad_login_text)
            self.assertEqual(e.code, "AUTHENTICATIONFAILED")
        else:
            self.fail("login succeeded")
        # the connection stays usable for another attempt
        yield client.login(self.user, self.password)

    @defer.inlineCallbacks
    def test_implicit_tls(self) -> Any:
        client = yield self.logged_in(self.tls_port, self.tls())
        self.assertTrue(client.tls_active())
        # writes go to OpenSSL at once, not through Twisted's next-turn write buffer
        # (the lean transport turns into Twisted's own class once its memory BIOs were
        # renewed after the handshake; the connection goes on below)
        self.assertIs(type(client.transport), TLSMemoryBIOProtocol)
        self.assertTrue(client.transport._bios_renewed)
        self.assertTrue(issubclass(_LeanTLSProtocol, TLSMemoryBIOProtocol))
        yield client.select()
        yield client.idle()
        yield client.done_noop(idle_again=True).addTimeout(WAIT, reactor)
        yield client.idle().addTimeout(WAIT, reactor)
        self.assertTrue(client.idling)

    @defer.inlineCallbacks
    def test_starttls(self) -> Any:
        client = yield self.connect(self.starttls_port)
        yield client.greeted
        self.assertTrue(client.has_starttls)
        yield client.startTLS(self.tls())
        self.assertTrue(client.tls_active())
        self.assertFalse(client.has_starttls)
        yield client.login(self.user, self.password)
        yield client.select()

    @defer.inlineCallbacks
    def assert_tls_refused(self, creator: Any, reason: str) -> Any:
        client = yield self.connect(self.tls_port, creator)
        try:
            yield client.greeted.addTimeout(WAIT, reactor)
        except ConnectionLost as e:
            self.assertEqual(e.text, f"certificate verify failed: {reason}")
        else:
            self.fail("TLS connection accepted")

    def test_untrusted_ca_refused(self) -> Any:
        return self.assert_tls_refused(self.tls(ca=False),
                                       "unable to get local issuer certificate")

    def test_wrong_host_name_refused(self) -> Any:
        return self.assert_tls_refused(self.tls("other.example"),
                                       "certificate is not valid for other.example")


class InProcessServerTests(ServerScenarios, TestCase):
    timeout = 30
    bad_login_text = "[AUTHENTICATIONFAILED] Invalid credentials (Failure)"

    def setUp(self) -> None:
        self.server = InProcessIMAPServer(reactor)
        self.user, self.password = "ann@example.org", "ann-secret"
        self.server.add_user(self.user, self.password, token="ann-token")
        self.server.add_user("bob@example.org", "bob-secret")
        self.port = self.server.listen().getHost().port
        self.tls_port = self.server.listen(tls=True).getHost().port
        self.starttls_port = self.server.listen(starttls=True).getHost().port
        self.addCleanup(self.server.stop)

    def deliver(self, user: str) -> Any:
        """Append through a second, ordinary IMAP connection (Twisted's IMAP4Client)."""
        return self.append_via_imap(user)

    @defer.inlineCallbacks
    def append_via_imap(self, user: str) -> Any:
        from io import BytesIO

        other = imap4.IMAP4Client()
        greeted: defer.Deferred = defer.Deferred()
        other.serverGreeting = lambda caps: greeted.callback(caps)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), other)
        yield greeted
        yield other.login(user.encode(), self.password.encode())
        yield other.append("INBOX", BytesIO(b"Subject: appended\r\n\r\nbody\r\n"))
        yield other.logout()

    @defer.inlineCallbacks
    def test_deliver_and_delete_reach_idle(self) -> Any:
        client = yield self.logged_in()
        events = ClientEvents(client)
        yield client.select()
        yield client.idle()
        yield self.server.wait_for_idle(self.user).addTimeout(WAIT, reactor)
        self.assertEqual(self.server.idling_connections(self.user), 1)
        arrived = events.next("exists")
        uid = self.server.deliver(self.user, subject="Hello", sender="bob@example.org")
        self.assertEqual((yield arrived), 1)
        self.assertEqual(self.server.messages(self.user)[0]["subject"], "Hello")
        gone = events.next("expunge")
        self.server.delete(self.user, uid)
        self.assertEqual((yield gone), 1)
        yield client.done()
        yield client.logout()
        self.assertEqual(self.server.commands[b"LOGOUT"], 1)

    @defer.inlineCallbacks
    def test_counters(self) -> Any:
        client = yield self.connect(self.port)
        yield client.greeted
        self.assertEqual(self.server.open_connections, 1)
        with self.assertRaises(AuthenticationFailed):
            yield client.login(self.user, "nope")
        yield client.login(self.user, self.password)
        self.assertEqual(self.server.login_attempts[self.user], 2)
        self.assertEqual(self.server.logins_ok[self.user], 1)

    @defer.inlineCallbacks
    def test_login_command_when_no_mechanisms(self) -> Any:
        self.server.mechanisms = []
        client = yield self.logged_in()
        self.assertEqual(self.server.commands[b"LOGIN"], 1)
        yield client.select()

    @defer.inlineCallbacks
    def test_xoauth2(self) -> Any:
        for sasl_ir in (True, False):
            self.server.sasl_ir = sasl_ir
            client = yield self.connect(self.port)
            yield client.greeted
            self.assertTrue(client.has_xoauth2)
            with self.assertRaises(AuthenticationFailed) as cm:
                yield client.login_xoauth2(self.user, "expired-token")
            self.assertEqual(cm.exception.text, self.bad_login_text)
            self.assertIn('"status":"401"', cm.exception.details)
            yield client.login_xoauth2(self.user, "ann-token")
            yield client.select()

    @defer.inlineCallbacks
    def test_idle_disabled(self) -> Any:
        self.server.idle_enabled = False
        client = yield self.logged_in()
        self.assertFalse(client.has_idle)
        yield client.select()
        with self.assertRaises(CommandFailed):
            yield client.idle()
        yield client.noop()

    @defer.inlineCallbacks
    def test_silent_server_times_out(self) -> Any:
        self.server.silent = True
        clock = Clock()
        client = yield self.connect(self.port, clock=clock, command_timeout=60)
        clock.advance(60)
        with self.assertRaises(CommandTimeout):
            yield client.greeted
        yield client.lost

    @defer.inlineCallbacks
    def test_noop_times_out_when_server_stops_answering(self) -> Any:
        clock = Clock()
        client = yield self.connect(self.port, clock=clock)
        yield client.greeted
        yield client.login(self.user, self.password)
        self.server.silent = True
        d = client.noop()
        clock.advance(30)
        with self.assertRaises(CommandTimeout):
            yield d
        yield client.lost

    @defer.inlineCallbacks
    def test_dropped_connection(self) -> Any:
        client = yield self.logged_in()
        events = ClientEvents(client)
        yield client.select()
        yield client.idle()
        lost = events.next("lost")
        self.server.drop_connections()
        error = yield lost
        self.assertIsInstance(error, ConnectionLost)

    @defer.inlineCallbacks
    def test_expired_and_self_signed_refused(self) -> Any:
        certs = make_test_certs()
        for pair, reason in ((certs.expired, "certificate has expired"),
                             (certs.self_signed, "self-signed certificate")):
            port = self.server.listen(tls=True, cert=pair).getHost().port
            client = yield self.connect(port, self.tls())
            with self.assertRaises(ConnectionLost) as cm:
                yield client.greeted.addTimeout(WAIT, reactor)
            self.assertEqual(cm.exception.text, f"certificate verify failed: {reason}")

    @defer.inlineCallbacks
    def test_plain_login_to_loopback_allowed_but_not_elsewhere(self) -> Any:
        client = yield self.connect(self.port)
        yield client.greeted
        self.assertTrue(client.secure_transport())
        self.assertFalse(client.tls_active())


class DovecotTests(ServerScenarios, TestCase):
    timeout = 60
    skip = skip_without_dovecot()
    bad_login_text = "[AUTHENTICATIONFAILED] Authentication failed."

    def setUp(self) -> None:
        self.dovecot = DovecotServer.shared()
        self.user, self.password = next(iter(self.dovecot.users.items()))
        self.port = self.starttls_port = self.dovecot.imap_port
        self.tls_port = self.dovecot.imaps_port

    def deliver(self, user: str) -> None:
        self.dovecot.deliver(user, subject="From the test")

    @defer.inlineCallbacks
    def test_dovecot_capabilities(self) -> Any:
        client = yield self.connect(self.port)
        caps = yield client.greeted
        self.assertIn(b"IDLE", caps)
        self.assertTrue(client.has_auth_plain and client.has_sasl_ir and client.has_starttls)
        yield client.login(self.user, self.password)
        self.assertIn(b"IDLE", client.capabilities)
