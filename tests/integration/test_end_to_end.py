"""The real command (``twist rebreak-idle`` in a child process) against a throwaway
PostgreSQL, Dovecot and a backend double on loopback, with short intervals."""

from __future__ import annotations

import re
import secrets
import time
import uuid

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from rebreak_idle.accounts.secrets import encrypt_secret
from rebreak_idle.testing.backend import BackendDouble
from rebreak_idle.testing.pg import fresh_database, sql
from tests.support.daemon import DaemonProcess
from tests.support.dovecot import DovecotServer, skip_without_dovecot
from tests.support.wait import until

KEY = "e2e-" + secrets.token_hex(20)
ADMIN = "adm-" + secrets.token_hex(12)
USERS = {
    "ann@rebreak.test": "ann-" + secrets.token_hex(6),
    "bob@rebreak.test": "bob-" + secrets.token_hex(6),
    "dan@rebreak.test": "dan-" + secrets.token_hex(6),
}
DEADLINE = 20.0

_dovecot: DovecotServer | None = None


def dovecot() -> DovecotServer:
    global _dovecot
    if _dovecot is None:
        import atexit

        _dovecot = DovecotServer(users=USERS)
        atexit.register(_dovecot.stop)
    return _dovecot


class EndToEndTests(TestCase):
    skip = skip_without_dovecot()
    timeout = 120

    async def _setup(self) -> None:
        self.imap = dovecot()
        self.dsn = fresh_database()
        self.backend = BackendDouble(ADMIN, reactor=reactor)
        await self.backend.start()
        self.addCleanup(self.backend.stop)

    def add_row(self, email: str, password: str | None = None) -> str:
        account_id = str(uuid.uuid4())
        stored = encrypt_secret(password or USERS[email], KEY.encode()[:32])
        self.sql("INSERT INTO rebreak.mail_connections (id, user_id, email, imap_host, "
                 "imap_port, imap_security, auth_method, encrypted_secret) VALUES "
                 "(%s, %s, %s, '127.0.0.1', %s, 'plain', 'password', %s)",
                 (account_id, str(uuid.uuid4()), email, self.imap.imap_port, stored))
        return account_id

    def sql(self, statement: str, args: tuple = ()) -> list[tuple]:
        return sql(self.dsn, statement, args)

    def start_daemon(self, *args: str) -> DaemonProcess:
        daemon = DaemonProcess(reactor, env={
            "DATABASE_URL": self.dsn, "ADMIN_SECRET": ADMIN, "ENCRYPTION_KEY": KEY,
            "BACKEND_URL": self.backend.url,
        }, args=["--refresh-interval", "1", "--heartbeat-interval", "1",
                 "--write-flush-interval", "0.2", "--reconnect-delay", "0.2", *args])
        daemon.start()
        self.addCleanup(self.check_no_secret, daemon)
        self.addCleanup(daemon.kill)
        return daemon

    def check_no_secret(self, daemon: DaemonProcess) -> None:
        for secret in (ADMIN, KEY, *USERS.values(), "wrong-" + KEY[:8]):
            self.assertNotIn(secret, daemon.output)

    async def test_new_mail_reaches_the_backend_within_two_seconds(self) -> None:
        await self._setup()
        ann = self.add_row("ann@rebreak.test")
        daemon = self.start_daemon()
        await daemon.wait_for(r"\[idle/ann@rebreak\.test\] connected \(127\.0\.0\.1:\d+\)")
        [catch_up] = await self.backend.wait_for(1, deadline=DEADLINE)
        self.assertEqual(catch_up.body["reason"], "connected")

        delivered = time.monotonic()
        self.imap.deliver("ann@rebreak.test", subject="Casino bonus", sender="x@casino.test")
        requests = await self.backend.wait_for(2, deadline=DEADLINE)
        post = requests[1]
        self.assertEqual(post.body, {"connectionId": ann,
                                     "userId": post.body["userId"],
                                     "reason": "exists", "exists": catch_up.body["exists"] + 1})
        self.assertEqual(post.headers["x-admin-secret"], ADMIN)
        self.assertEqual(post.headers["content-type"], "application/json")
        await daemon.wait_for(r"\[idle/ann@rebreak\.test\] exists-event received \(new mail\)")
        await daemon.wait_for(r"\[idle/ann@rebreak\.test\] scan-triggered → scanned=0 "
                              r"blocked=0", count=2)
        elapsed = time.monotonic() - delivered
        self.assertLess(elapsed, 2.0, f"delivery → POST took {elapsed:.2f}s")

        self.assertEqual(await daemon.terminate(), 0)
        self.assertIn("rebreak-idle stopped", daemon.output)

    async def test_wrong_password_is_recorded_and_not_retried(self) -> None:
        await self._setup()
        dan = self.add_row("dan@rebreak.test", password="wrong-" + KEY[:8])
        before = self.imap.log_text().count("user=<dan@rebreak.test>")
        daemon = self.start_daemon()
        line = await daemon.wait_for(r"\[idle/dan@rebreak\.test\] connect failed: ")
        self.assertIn("[AUTHENTICATIONFAILED]", line)
        error = await until(lambda: self.sql(
            "SELECT last_connect_error FROM rebreak.mail_connections WHERE id = %s",
            (dan,))[0][0], deadline=DEADLINE, what="last_connect_error written")
        self.assertIn("[AUTHENTICATIONFAILED]", error)
        # Five more refreshes (~5 s at --reconnect-delay 0.2 would be many retries):
        # the hold-off keeps it at one login attempt.
        await daemon.wait_for(r"\[idle/db\] refreshed", count=6)
        attempts = self.imap.log_text().count("user=<dan@rebreak.test>") - before
        self.assertEqual(attempts, 1, self.imap.log_text())
        self.assertEqual(daemon.count(r"\[idle/dan@rebreak\.test\] connect failed"), 1)
        self.assertEqual(await daemon.terminate(), 0)

    async def test_heartbeat_row_added_row_deactivated(self) -> None:
        await self._setup()
        ann = self.add_row("ann@rebreak.test")
        daemon = self.start_daemon()
        await daemon.wait_for(r"\[idle/ann@rebreak\.test\] connected")

        def heartbeat():
            return self.sql("SELECT last_idle_heartbeat_at FROM rebreak.mail_connections "
                            "WHERE id = %s", (ann,))[0][0]

        first = await until(heartbeat, deadline=DEADLINE, what="first heartbeat")
        await until(lambda: heartbeat() > first, deadline=DEADLINE, what="heartbeat advancing")

        bob = self.add_row("bob@rebreak.test")
        await daemon.wait_for(r"\[idle/bob@rebreak\.test\] connected")
        requests = await until(lambda: [r for r in self.backend.requests
                                        if r.body.get("connectionId") == bob],
                               deadline=DEADLINE, what="catch-up scan of the added row")
        self.assertEqual(requests[0].body["reason"], "connected")

        logouts = self.imap.log_text().count("Logged out")
        self.sql("UPDATE rebreak.mail_connections SET is_active = false WHERE id = %s", (ann,))
        await daemon.wait_for(r"\[idle/db\] refreshed — 1 active connections, 1 sessions")
        await until(lambda: self.imap.log_text().count("Logged out") > logouts,
                    deadline=DEADLINE, what="LOGOUT at Dovecot after deactivation")
        self.assertTrue(re.search(r"imap\(ann@rebreak\.test\).*Logged out",
                                  self.imap.log_text()))

        self.assertEqual(await daemon.terminate(), 0)
        await until(lambda: re.search(r"imap\(bob@rebreak\.test\).*Logged out",
                                      self.imap.log_text()),
                    deadline=DEADLINE, what="LOGOUT of bob on SIGTERM")

