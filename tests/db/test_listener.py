"""LISTEN checks itself (db/listener.py): a NOTIFY with a unique payload sent from another
connection must come back; through a transaction-mode PgBouncer it does not, and the
daemon warns once and keeps refreshing on its timer. Also: the twisted.web factory lines
are gone from the daemon's log."""

from __future__ import annotations

import psycopg2
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from rebreak_idle.db.listener import SELF_TEST_PREFIX, Listener
from rebreak_idle.testing.pg import fresh_database
from tests.support.faults import FaultCase
from tests.support.leaks import IMAP_PASSWORDS
from tests.support.pgbouncer import PgBouncer, skip_without_pgbouncer
from tests.support.wait import until

CHANNEL = "rebreak_idle_selftest"
WARNING = "notifications do not arrive on channel"


def notify(dsn: str, payload: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
    finally:
        conn.close()


class SelfTestCase(FaultCase, TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.calls: list[None] = []

    def listener(self, dsn: str) -> Listener:
        listener = Listener(dsn, CHANNEL, lambda: self.calls.append(None), reactor,
                            refresh_interval=7.0)
        listener.start()
        self.addCleanup(listener.stop)
        return listener


class DirectTests(SelfTestCase):
    async def test_self_test_passes_and_triggers_no_refresh(self) -> None:
        dsn = fresh_database()
        listener = self.listener(dsn)
        await listener.when_listening().addTimeout(10, reactor)
        await until(lambda: listener.notifications_arrive is not None, what="self-test")
        self.assertTrue(listener.notifications_arrive)
        self.assertEqual(self.calls, [])  # the self-test's own NOTIFY refreshes nothing
        notify(dsn, SELF_TEST_PREFIX + "another-replica")
        notify(dsn, "row changed")
        await until(lambda: self.calls, what="the real notification")
        self.assertEqual(self.calls, [None])
        self.assertEqual(self.logs.count(WARNING), 0)


class PgBouncerTests(SelfTestCase):
    skip = skip_without_pgbouncer()
    timeout = 60

    async def test_transaction_pooler_is_detected_once(self) -> None:
        dsn = fresh_database()
        bouncer = PgBouncer(dsn)
        self.addCleanup(bouncer.stop)
        listener = self.listener(bouncer.dsn())
        await listener.when_listening().addTimeout(10, reactor)
        await self.logs.wait_for(reactor, WARNING, deadline=15)
        self.assertFalse(listener.notifications_arrive)
        [line] = self.logs.matching(WARNING)
        self.assertIn(f"channel {CHANNEL}; a transaction pooler (PgBouncer in transaction "
                      "mode?) drops them — refreshing every 7s instead", line)
        # a reconnect of the listening connection runs the self-test again, warns no more
        self.assertTrue(listener.listening)
        listener._conn.kill()
        await self.logs.wait_for(reactor, r"listening on channel", count=2, deadline=15)
        await until(lambda: listener.self_tests == 2, what="second self-test", deadline=15)
        self.assertFalse(listener.notifications_arrive)
        self.assertEqual(self.logs.count(WARNING), 1)

    async def test_session_mode_pooler_passes(self) -> None:
        dsn = fresh_database()
        bouncer = PgBouncer(dsn, pool_mode="session")
        self.addCleanup(bouncer.stop)
        listener = self.listener(bouncer.dsn())
        await listener.when_listening().addTimeout(10, reactor)
        await until(lambda: listener.notifications_arrive is not None, deadline=15)
        self.assertTrue(listener.notifications_arrive)
        self.assertEqual(self.logs.count(WARNING), 0)


class DaemonLogTests(FaultCase, TestCase):
    async def test_no_factory_lines_and_the_self_test_in_a_daemon(self) -> None:
        await self.start_parts()
        account_id = self.add_account("ann@rebreak.test", IMAP_PASSWORDS[0])
        daemon = self.start_daemon(notify_channel=CHANNEL)
        await self.connected("ann@rebreak.test")
        await self.idle("ann@rebreak.test")
        await self.backend.wait_for(1, answered=True)  # the scan of "connected"
        for n in (2, 3):  # two more backend connections (a new one per scan is fine)
            self.imap.deliver("ann@rebreak.test")
            await self.backend.wait_for(n, answered=True)
        listener = daemon.listener
        assert listener is not None
        await until(lambda: listener.notifications_arrive is not None, what="self-test")
        self.assertTrue(listener.notifications_arrive)
        await self.stop_daemon(daemon)
        self.assertGreaterEqual(len(self.scans_of(account_id)), 2)
        for noise in ("Starting factory", "Stopping factory"):
            # the test's own IMAP server and backend double may log theirs; the daemon not
            daemons = [line for line in self.logs.matching(noise)
                       if "imapserver" not in line and "testing.backend" not in line]
            self.assertEqual(daemons, [])

