"""The wired daemon (``build_daemon``) in this process on the real reactor: real PostgreSQL,
the in-process IMAP server and the backend double."""

from __future__ import annotations

import json
import uuid

import treq
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from rebreak_idle import __version__
from rebreak_idle.accounts.secrets import encrypt_secret
from rebreak_idle.config import Settings
from rebreak_idle.db.migrate import apply
from rebreak_idle.service import build_daemon
from rebreak_idle.testing.backend import BackendDouble
from rebreak_idle.testing.imapserver import InProcessIMAPServer
from rebreak_idle.testing.pg import PostgresServer, fresh_database, sql
from tests.support.wait import until

KEY = "service-test-key-" + "x" * 20
ADMIN = "service-admin-secret"
USERS = {"ann@svc.test": "ann-pass-1", "bob@svc.test": "bob-pass-2"}


class DaemonCase(TestCase):
    timeout = 60

    async def start_parts(self, dsn: str) -> None:
        self.dsn = dsn
        self.imap = InProcessIMAPServer(reactor)
        for user, password in USERS.items():
            self.imap.add_user(user, password)
        self.port = self.imap.listen().getHost().port
        self.addCleanup(self.imap.stop)
        self.backend = BackendDouble(ADMIN, reactor=reactor)
        await self.backend.start()
        self.addCleanup(self.backend.stop)
        self.ids = {user: self.add_row(user) for user in USERS}

    def add_row(self, user: str) -> str:
        account_id = str(uuid.uuid4())
        sql(self.dsn,
            "INSERT INTO rebreak.mail_connections (id, user_id, email, imap_host, "
            "imap_port, imap_security, auth_method, encrypted_secret) VALUES "
            "(%s, %s, %s, '127.0.0.1', %s, 'plain', 'password', %s)",
            (account_id, str(uuid.uuid4()), user, self.port,
             encrypt_secret(USERS[user], KEY.encode()[:32])))
        return account_id

    def start_daemon(self, **overrides: object):  # type: ignore[no-untyped-def]
        values = dict(database_url=self.dsn, admin_secret=ADMIN, encryption_key=KEY,
                      backend_url=self.backend.url, refresh_interval=1.0,
                      heartbeat_interval=2.0, reconnect_delay=0.2, write_flush_interval=0.2,
                      shutdown_timeout=3.0)
        values.update(overrides)
        daemon = build_daemon(Settings(**values), reactor)  # type: ignore[arg-type]
        daemon.startService()
        self.addCleanup(lambda: daemon.running and daemon.stopService())
        return daemon

    async def all_idle(self, daemon) -> None:  # type: ignore[no-untyped-def]
        """Every session idling, as the server and as the daemon see it."""
        for user in USERS:
            await self.imap.wait_for_idle(user).addTimeout(15, reactor)
        await until(lambda: [s["state"] for s in daemon.snapshot()] == ["idle"] * len(USERS),
                    deadline=15, what="all sessions idle in the daemon's snapshot")


class WiringTests(DaemonCase):
    async def test_status_server_reports_sessions_and_last_scan(self) -> None:
        await self.start_parts(fresh_database())
        daemon = self.start_daemon(status_endpoint="tcp:0:interface=127.0.0.1")
        port = (await daemon.status.when_listening()).getHost().port
        await self.all_idle(daemon)
        # the sessions' heartbeat timers are on the daemon's one wheel
        self.assertGreaterEqual(len(daemon.timers), len(USERS))
        await self.backend.wait_for(2, deadline=15, answered=True)
        await until(lambda: all(s["last_scan"] for s in daemon.snapshot()), deadline=15,
                    what="last scan outcome in the snapshot")

        base = f"http://127.0.0.1:{port}"
        ready = await treq.get(f"{base}/readyz", persistent=False)
        self.assertEqual(ready.code, 200)
        await ready.content()
        denied = await treq.get(f"{base}/status", persistent=False)
        self.assertEqual(denied.code, 401)
        await denied.content()
        answer = await treq.get(f"{base}/status", headers={"x-admin-secret": ADMIN},
                               persistent=False)
        accounts = json.loads(await answer.content())
        by_email = {a["email"]: a for a in accounts}
        self.assertEqual(set(by_email), set(USERS))
        for user, account in by_email.items():
            self.assertEqual(account["id"], self.ids[user])
            self.assertEqual(account["state"], "idle")
            self.assertEqual(account["last_scan"]["outcome"], "ok")
            self.assertIsNone(account["last_error"])
        metrics = await (await treq.get(f"{base}/metrics", persistent=False)).text()
        self.assertIn('rebreak_idle_sessions{state="idle"} 2.0', metrics)
        self.assertIn(f'rebreak_idle_build_info{{version="{__version__}"}} 1.0', metrics)
        text = json.dumps(accounts) + metrics
        for secret in (ADMIN, KEY, *USERS.values()):
            self.assertNotIn(secret, text)
        await daemon.stopService()

    async def test_a_removed_account_leaves_no_scan_outcome(self) -> None:
        """The scan trigger forgets an account once its session has ended for good (its
        outcomes used to grow with every account ever seen)."""
        await self.start_parts(fresh_database())
        daemon = self.start_daemon()
        await self.all_idle(daemon)
        ann, bob = self.ids["ann@svc.test"], self.ids["bob@svc.test"]
        await until(lambda: daemon.scans.last_outcome(ann) is not None
                    and daemon.scans.last_outcome(bob) is not None, deadline=15,
                    what="both first-connect scans answered")
        sql(self.dsn, "UPDATE rebreak.mail_connections SET is_active = false WHERE id = %s",
            (ann,))
        await until(lambda: daemon.scans.last_outcome(ann) is None, deadline=15,
                    what="ann's scan outcome discarded")
        self.assertNotIn(ann, daemon.supervisor.sessions)
        self.assertEqual(daemon.scans.last_outcome(bob)["outcome"], "ok")
        await daemon.stopService()

    async def test_a_deleted_account_leaves_no_rows_behind(self) -> None:
        """The marks and the hold-off of an account whose row was deleted are pruned with
        the refresh (they used to stay forever)."""
        await self.start_parts(fresh_database())
        daemon = self.start_daemon()
        await self.all_idle(daemon)
        ann, bob = self.ids["ann@svc.test"], self.ids["bob@svc.test"]

        def stored(table: str) -> set[str]:
            return {i for (i,) in sql(self.dsn, "SELECT connection_id::text "  # noqa: S608
                                                f"FROM rebreak_idle.{table}")}

        await until(lambda: stored("mailbox_state") == {ann, bob}, deadline=15,
                    what="both marks stored")
        sql(self.dsn, "INSERT INTO rebreak_idle.account_holdoff VALUES (%s, 1, now(), 't')",
            (ann,))
        sql(self.dsn, "DELETE FROM rebreak.mail_connections WHERE id = %s", (ann,))
        await until(lambda: stored("mailbox_state") == {bob}
                    and stored("account_holdoff") == set(), deadline=15,
                    what="ann's rows pruned")
        self.assertNotIn(ann, daemon.supervisor.sessions)
        await daemon.stopService()
        self.assertEqual(stored("mailbox_state"), {bob})  # no late mark put back

    async def test_after_a_restart_a_held_off_account_shows_its_error(self) -> None:
        """A restarted daemon shows an account held off for a wrong password as
        auth-failed with the stored error and its class (they used to be empty)."""
        await self.start_parts(fresh_database())
        ann = self.ids["ann@svc.test"]
        sql(self.dsn, "UPDATE rebreak.mail_connections SET encrypted_secret = %s WHERE id = %s",
            (encrypt_secret("not-ann-pass", KEY.encode()[:32]), ann))

        def ann_entry(daemon) -> dict:  # type: ignore[no-untyped-def]
            return next((e for e in daemon.snapshot() if e["id"] == ann), {})

        def held() -> list:
            return sql(self.dsn, "SELECT strikes FROM rebreak_idle.account_holdoff "
                                 "WHERE connection_id = %s", (ann,))

        first = self.start_daemon()
        await until(lambda: ann_entry(first).get("state") == "auth-failed" and held(),
                    deadline=15, what="ann held off")
        await first.stopService()
        (stored,), = sql(self.dsn, "SELECT last_connect_error FROM rebreak.mail_connections "
                                   "WHERE id = %s", (ann,))
        self.assertTrue(stored)
        second = self.start_daemon()
        await until(lambda: ann_entry(second).get("state") == "auth-failed", deadline=15,
                    what="ann held off after the restart")
        entry = ann_entry(second)
        self.assertEqual((entry["last_error"], entry["last_end_class"]),
                         (stored, "credentials"))
        self.assertIsNotNone(entry["last_error_at"])
        self.assertEqual(held(), [(1,)])  # no new strike: no login tried
        await second.stopService()

    async def test_stop_sends_logout_and_flushes(self) -> None:
        await self.start_parts(fresh_database())
        daemon = self.start_daemon(write_flush_interval=60.0)
        await self.all_idle(daemon)
        logouts = self.imap.commands[b"LOGOUT"]
        await daemon.stopService()
        self.assertEqual(self.imap.commands[b"LOGOUT"] - logouts, len(USERS))
        [(count,)] = sql(self.dsn, "SELECT count(*) FROM rebreak.mail_connections "
                                   "WHERE last_idle_heartbeat_at IS NOT NULL")
        self.assertEqual(count, len(USERS))


class LeaseLossTests(DaemonCase):
    timeout = 90

    async def test_replica_that_loses_the_database_stops_watching(self) -> None:
        """REBREAK_LEASES=on: no renewal for a TTL → sessions stopped (another replica may
        own the accounts now); the database back → watching again."""
        server = PostgresServer()
        self.addCleanup(server.destroy)
        dsn = server.create_database()
        apply(dsn, dev_schema=True)
        await self.start_parts(dsn)
        daemon = self.start_daemon(leases="on", lease_ttl=2.0, lease_renew=0.5,
                                   replica_id="replica-under-test")
        await self.all_idle(daemon)
        self.assertEqual(len(daemon.leases.owned()), len(USERS))

        server.stop()
        await until(lambda: self.imap.open_connections == 0, deadline=20,
                    what="sessions stopped after the lease TTL")
        self.assertEqual(daemon.leases.owned(), frozenset())
        self.assertEqual(daemon.supervisor.sessions, {})

        server.start()
        await until(lambda: all(self.imap.idling_connections(u) for u in USERS), deadline=30,
                    what="watching again once the database is back")
        await daemon.stopService()
