"""MailboxSession end to end on the real reactor against real IMAP servers on 127.0.0.1:
the in-process server of rebreak_idle.testing.imapserver (plain, implicit TLS, STARTTLS) and
Dovecot (tests.support.dovecot) when it is installed. No sleeps: every wait is on an event
with a deadline."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from rebreak_idle import metrics
from rebreak_idle.accounts.account import Account
from rebreak_idle.config import session_settings
from rebreak_idle.session.mailbox_marks import MailboxMemory
from rebreak_idle.session.session import MailboxSession
from rebreak_idle.testing.certs import make_test_certs
from rebreak_idle.testing.imapserver import InProcessIMAPServer
from tests.support.dovecot import DovecotServer, skip_without_dovecot
from tests.support.recorder import Recorder
from tests.support.session_servers import (
    DEADLINE,
    PASSWORD,
    USER,
    Events,
    account,
    settings,
)

TOKEN = "ya29.test-token"


def start_session(test: TestCase, acct: Account, events: Events, **kw: Any) -> MailboxSession:
    """A running MailboxSession for ``acct`` with :func:`settings` (``kw``) that reports to
    ``events`` (errors, heartbeats, ``("mail", reason, exists)``); stopped at cleanup."""
    def on_new_mail(a: Account, n: int, reason: str) -> defer.Deferred:
        events.add("mail", reason, n)
        return defer.succeed(True)  # the backend acknowledged the scan (2xx)

    s = MailboxSession(acct, session_settings(settings(**kw)), Recorder(reactor, events.add),
                       on_new_mail, reactor, memory=MailboxMemory())
    s.startService()
    test.addCleanup(s.stopService)
    return s


class InProcessServerTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.server = InProcessIMAPServer(reactor)
        self.server.add_user(USER, PASSWORD, token=TOKEN)
        self.addCleanup(self.server.stop)
        self.events = Events()

    def session(self, acct: Account, **kw: Any) -> MailboxSession:
        return start_session(self, acct, self.events, **kw)

    def mail(self, reason: str, count: int, **kw: Any) -> defer.Deferred:
        return self.events.wait(lambda i: i == ("mail", reason, count), **kw)

    async def watch_and_deliver(self, acct: Account, **kw: Any) -> MailboxSession:
        session = self.session(acct, **kw)
        await self.mail("connected", 0)
        self.assertEqual(session.state, "idle")
        await self.server.wait_for_idle(USER)
        self.server.deliver(USER, subject="one")
        await self.mail("exists", 1)
        self.assertEqual(session.snapshot()["last_exists"]["count"], 1)
        self.assertEqual(self.events.of("error"), [])
        self.assertEqual(self.events.of("cleared"), [("cleared",)])
        return session

    @defer.inlineCallbacks
    def test_plain_loopback_delivery_reaches_on_new_mail(self) -> Any:
        port = self.server.listen().getHost().port
        session = yield defer.Deferred.fromCoroutine(self.watch_and_deliver(account(port)))
        sock = session.client.transport.getHandle()
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)

    @defer.inlineCallbacks
    def test_implicit_tls(self) -> Any:
        port = self.server.listen(tls=True).getHost().port
        yield defer.Deferred.fromCoroutine(self.watch_and_deliver(
            account(port, "tls"), tls_ca_file=make_test_certs().ca))

    @defer.inlineCallbacks
    def test_starttls_with_xoauth2(self) -> Any:
        port = self.server.listen(starttls=True).getHost().port
        yield defer.Deferred.fromCoroutine(self.watch_and_deliver(
            account(port, "starttls", secret=TOKEN, method="xoauth2"),
            tls_ca_file=make_test_certs().ca))

    @defer.inlineCallbacks
    def test_untrusted_certificate(self) -> Any:
        port = self.server.listen(tls=True, cert=make_test_certs().self_signed).getHost().port
        tls = metrics.REGISTRY.get_sample_value("rebreak_idle_reconnects_total",
                                                {"cause": "tls"}) or 0.0
        session = self.session(account(port, "tls"), tls_ca_file=make_test_certs().ca)
        error = yield self.events.wait(lambda i: i[0] == "error")
        self.assertTrue(error[1].startswith("certificate verify failed"), error[1])
        self.assertEqual(session.state, "backoff")
        self.assertEqual(self.server.login_attempts[USER], 0)
        self.assertEqual(metrics.REGISTRY.get_sample_value(
            "rebreak_idle_reconnects_total", {"cause": "tls"}), tls + 1)

    @defer.inlineCallbacks
    def test_wrong_password_holds_off(self) -> Any:
        port = self.server.listen().getHost().port
        holdoff = 1.0
        session = self.session(account(port, secret="wrong"), auth_failure_holdoff=holdoff)
        first = yield self.events.wait(lambda i: i[0] == "error")
        self.assertEqual(first[1], "[AUTHENTICATIONFAILED] Invalid credentials (Failure)")
        self.assertEqual(session.state, "auth-failed")
        self.assertEqual(self.server.login_attempts[USER], 1)
        self.assertEqual(session.snapshot()["last_error"], first[1])
        second = yield self.events.wait(lambda i: i[0] == "error", new=True)
        # no retry before the hold-off (the normal backoff would be 0.05 s)
        self.assertGreaterEqual(second[2] - first[2], holdoff * 0.95)
        self.assertEqual(self.server.login_attempts[USER], 2)
        self.assertEqual(self.server.logins_ok[USER], 0)
        self.assertNotIn(("cleared",), self.events.items)

    @defer.inlineCallbacks
    def test_server_killed_mid_idle_then_catch_up(self) -> Any:
        listening = self.server.listen()
        port = listening.getHost().port
        session = self.session(account(port))
        yield self.mail("connected", 0)
        yield self.server.wait_for_idle(USER)
        # kill the server: stop listening, drop the connection
        yield self.server.stop()
        yield self.events.wait(lambda i: i[0] == "error")
        self.assertIn(session.state, ("backoff", "connecting"))
        self.server.deliver(USER, subject="while down")
        self.server.listen(port=port)
        yield self.mail("connected", 1)
        yield self.server.wait_for_idle(USER)
        self.assertEqual(session.state, "idle")
        self.assertEqual(session.snapshot()["last_scan_reason"], "connected")

    @defer.inlineCallbacks
    def test_reconnect_without_changes_does_not_rescan(self) -> Any:
        port = self.server.listen().getHost().port
        self.session(account(port))
        yield self.mail("connected", 0)
        yield self.server.wait_for_idle(USER)
        self.server.deliver(USER)
        yield self.mail("exists", 1)
        self.server.drop_connections()
        yield self.events.wait(lambda i: i[0] == "cleared", new=True)
        yield self.events.wait(lambda i: i[0] == "heartbeat", new=True)  # IDLE entered
        self.assertEqual([i for i in self.events.of("mail")],
                         [("mail", "connected", 0), ("mail", "exists", 1)])

    @defer.inlineCallbacks
    def test_server_that_stops_answering_is_detected(self) -> Any:
        port = self.server.listen().getHost().port
        session = self.session(account(port), heartbeat_interval=0.3, noop_timeout=0.3)
        yield self.mail("connected", 0)
        yield self.server.wait_for_idle(USER)
        yield self.events.wait(lambda i: i[0] == "heartbeat" and len(
            self.events.of("heartbeat")) >= 2)  # a heartbeat NOOP succeeded
        timeouts = metrics.REGISTRY.get_sample_value("rebreak_idle_reconnects_total",
                                                     {"cause": "timeout"}) or 0.0
        self.server.silent = True  # accepts bytes, never replies
        error = yield self.events.wait(lambda i: i[0] == "error")
        # DONE normally; NOOP or IDLE when the switch fell inside a heartbeat cycle
        self.assertRegex(error[1], r"^(DONE|NOOP) timed out after 0.3s$|^IDLE timed out")
        self.assertEqual(metrics.REGISTRY.get_sample_value(
            "rebreak_idle_reconnects_total", {"cause": "timeout"}), timeouts + 1)
        self.server.silent = False
        yield self.events.wait(lambda i: i[0] == "cleared", new=True)
        yield self.events.wait(lambda i: i[0] == "heartbeat", new=True)  # IDLE entered
        self.assertEqual(session.state, "idle")

    @defer.inlineCallbacks
    def test_polling_server_without_idle(self) -> Any:
        self.server.idle_enabled = False
        port = self.server.listen().getHost().port
        session = self.session(account(port), poll_interval=0.2)
        yield self.mail("connected", 0)
        self.assertEqual(session.state, "polling")
        self.server.deliver(USER)
        yield self.mail("exists", 1)
        self.assertGreaterEqual(len(self.events.of("heartbeat")), 1)

    @defer.inlineCallbacks
    def test_stop_sends_logout(self) -> Any:
        port = self.server.listen().getHost().port
        session = self.session(account(port))
        yield self.mail("connected", 0)
        yield self.server.wait_for_idle(USER)
        yield session.stopService().addTimeout(DEADLINE, reactor)
        self.assertEqual(self.server.commands[b"LOGOUT"], 1)
        self.assertEqual(self.server.open_connections, 0)
        self.assertEqual(session.state, "stopped")
        self.assertEqual(self.events.of("error"), [])

    @defer.inlineCallbacks
    def test_stop_over_tls_waits_until_the_connection_is_gone(self) -> Any:
        port = self.server.listen(tls=True).getHost().port
        session = self.session(account(port, "tls"), tls_ca_file=make_test_certs().ca)
        yield self.mail("connected", 0)
        yield self.server.wait_for_idle(USER)
        yield session.stopService().addTimeout(DEADLINE, reactor)
        self.assertEqual(self.server.commands[b"LOGOUT"], 1)
        self.assertIsNone(session.client)  # its connectionLost came before the stop fired
        self.assertEqual([c for c in reactor.getDelayedCalls() if c.active()
                          and "TimerWheel" in repr(c)], [])

    @defer.inlineCallbacks
    def test_refused_connection_backs_off(self) -> Any:
        listening = self.server.listen()
        port = listening.getHost().port
        yield listening.stopListening()
        session = self.session(account(port))
        error = yield self.events.wait(lambda i: i[0] == "error")
        self.assertEqual(error[1], "connection refused")
        yield self.events.wait(lambda i: i[0] == "error", new=True)
        self.assertGreaterEqual(session.snapshot()["attempt"], 2)


class DovecotTests(TestCase):
    """The same session against an independent, real server."""

    skip = skip_without_dovecot()
    timeout = 60

    def setUp(self) -> None:
        self.dovecot = DovecotServer.shared()
        self.events = Events()

    def session(self, user: str, *, port: int | None = None, security: str = "plain",
                secret: str | None = None, **kw: Any) -> MailboxSession:
        acct = Account(id=f"dovecot-{user}-{security}", user_id="user-1", email=user,
                       host="127.0.0.1", port=port or self.dovecot.imap_port,
                       security=security, username=user, auth_method="password",
                       secret=secret if secret is not None else self.dovecot.users[user])
        kw.setdefault("tls_ca_file", self.dovecot.ca_file)
        return start_session(self, acct, self.events, **kw)

    async def deliver_while_idling(self, user: str, **kw: Any) -> None:
        session = self.session(user, **kw)
        _, reason, before = await self.events.wait(lambda i: i[0] == "mail")
        self.assertEqual(reason, "connected")
        self.assertEqual(session.state, "idle")
        self.dovecot.deliver(user, subject="for the session")
        await self.events.wait(lambda i: i == ("mail", "exists", before + 1))
        self.assertEqual(self.events.of("error"), [])

    def test_plain_loopback_delivery(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self.deliver_while_idling("ann@rebreak.test"))

    def test_implicit_tls_delivery(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self.deliver_while_idling(
            "bob@rebreak.test", port=self.dovecot.imaps_port, security="tls"))

    @defer.inlineCallbacks
    def test_wrong_password_holds_off(self) -> Any:
        session = self.session("carol@rebreak.test", secret="not-the-password",
                               auth_failure_holdoff=1.0)
        first = yield self.events.wait(lambda i: i[0] == "error")
        self.assertTrue(first[1].startswith("[AUTHENTICATIONFAILED]"), first[1])
        self.assertEqual(session.state, "auth-failed")
        second = yield self.events.wait(lambda i: i[0] == "error", new=True)
        self.assertGreaterEqual(second[2] - first[2], 0.95)
        self.assertEqual(second[1], first[1])
        self.assertNotIn(("cleared",), self.events.items)

    @defer.inlineCallbacks
    def test_heartbeat_and_stop(self) -> Any:
        session = self.session("ann@rebreak.test", heartbeat_interval=0.3)
        yield self.events.wait(lambda i: i[0] == "mail")
        yield self.events.wait(lambda i: i[0] == "heartbeat", new=True)  # NOOP succeeded
        self.assertEqual(session.state, "idle")
        yield session.stopService().addTimeout(DEADLINE, reactor)
        self.assertEqual(session.state, "stopped")
        self.assertEqual(self.events.of("error"), [])
