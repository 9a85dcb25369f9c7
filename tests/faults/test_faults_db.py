"""Fault suite, PostgreSQL side (issue 9): a dedicated PostgreSQL server that the tests stop
and start under the daemon — restarted during operation (in-process daemon) and
unreachable at start (``twist rebreak-idle`` in a child process, readiness over HTTP).
Results: docs/reliability.md.
"""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime
from typing import Any

from twisted.internet import threads
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from rebreak_idle.db.migrate import apply
from rebreak_idle.testing.pg import PostgresServer
from tests.support.faults import FaultCase, http_get, record_figure, until
from tests.support.leaks import DB_ROLE, IMAP_PASSWORDS, KNOWN_SECRETS

ANN, BOB, CAT, WRONG = IMAP_PASSWORDS

_server: PostgresServer | None = None


def dedicated_server() -> PostgresServer:
    """One PostgreSQL server of this module that tests may stop and start. Unlike the
    shared test server, it checks the password of the daemon's role (scram-sha-256), so
    DB_PASSWORD really travels in the daemon's connections."""
    global _server
    if _server is None:
        server = PostgresServer()
        hba = server.data / "pg_hba.conf"
        hba.write_text(f"host all {DB_ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        server.stop()
        server.start()
        _server = server
    return _server


def _ensure_running(server: PostgresServer) -> None:
    try:
        server.start()
    except subprocess.CalledProcessError:
        pass  # already running: pg_ctl says so and exits non-zero


async def dedicated_database() -> tuple[PostgresServer, str]:
    server = await threads.deferToThread(dedicated_server)

    def create() -> str:
        _ensure_running(server)
        dsn = server.create_database()
        apply(dsn, dev_schema=True)
        return dsn

    return server, await threads.deferToThread(create)


def _running(server: PostgresServer) -> Any:
    return threads.deferToThread(_ensure_running, server)


def _stopped(server: PostgresServer) -> Any:
    return threads.deferToThread(server.stop)


class RestartTests(FaultCase, TestCase):
    timeout = 60

    async def test_postgresql_restarted_during_operation(self) -> None:
        """Sessions keep idling through the outage (no reconnect, no new login); status
        writes made during it (heartbeats and an error) are written after the restart;
        the refresh resumes and picks up a row added after the restart."""
        server, admin = await dedicated_database()
        self.addCleanup(_running, server)
        await self.start_parts(admin_dsn=admin)
        ann = self.add_account("ann@faults.test", ANN)
        bob = self.add_account("bob@faults.test", BOB)
        daemon = self.start_daemon()
        await self.connected("ann@faults.test")
        await self.connected("bob@faults.test")
        await until(lambda: self.status_row(ann)["heartbeat"], what="first heartbeat")

        await _stopped(server)
        stopped_at = datetime.now(UTC)
        await self.wait_log(r"\[idle/db\] refresh failed, keeping 2 sessions: ", deadline=10)
        # bob's password changes at the server and his connection drops: his
        # AUTHENTICATIONFAILED error can only be buffered while the database is down
        self.imap.add_user("bob@faults.test", WRONG)
        self.imap.drop_connections("bob@faults.test")
        await self.wait_log(r"\[idle/bob@faults\.test\] connect failed: .*AUTHENTICATIONFAILED")
        await self.wait_log(r"\[idle/db\] writing \d+ .* failed, keeping them", deadline=10)
        await self.wait_log(r"\[idle/db\] refresh failed", count=3, deadline=10)
        self.assertGreater(daemon.store.pending, 0)
        self.assertEqual(self.snap(ann)["state"], "idle")
        self.assertEqual(self.imap.idling_connections("ann@faults.test"), 1)

        outage_started = time.monotonic()
        await _running(server)
        restarted_at = datetime.now(UTC)
        await self.wait_log(r"\[idle/db\] status writes work again", deadline=15)
        record_figure(self, "writes_back_after_restart_s", time.monotonic() - outage_started)
        row = await until(lambda: (r := self.status_row(bob))["error"] and r,
                          what="bob's buffered error written")
        self.assertIn("[AUTHENTICATIONFAILED]", row["error"])
        self.assertLess(row["error_at"], restarted_at)  # recorded during the outage
        self.assertGreater(row["error_at"], stopped_at)
        await until(lambda: self.status_row(ann)["heartbeat"] > restarted_at,
                    what="heartbeats written again")

        refreshed = self.logs.count(r"\[idle/db\] refreshed — ")
        await self.wait_log(r"\[idle/db\] refreshed — 2 active connections",
                            count=refreshed + 1, deadline=10)
        self.add_account("cat@faults.test", CAT)
        await self.connected("cat@faults.test", deadline=10)
        # ann never reconnected: one login, one connection, still idling
        self.assertEqual(self.imap.logins_ok["ann@faults.test"], 1)
        self.assertEqual(self.logs.count(r"\[idle/ann@faults\.test\] connect failed"), 0)
        self.assertEqual(self.snap(ann)["state"], "idle")


class UnreachableAtStartTests(FaultCase, TestCase):
    timeout = 60

    async def test_postgresql_unreachable_at_start(self) -> None:
        """The daemon starts while PostgreSQL is down: a clear log line, retries at every
        refresh, /readyz 503 (/healthz 200) and the same process all along; once the
        database is up, /readyz turns 200 and the sessions start."""
        server, admin = await dedicated_database()
        self.addCleanup(_running, server)
        await self.start_parts(admin_dsn=admin)
        self.add_account("ann@faults.test", ANN)
        await _stopped(server)

        daemon, port = self.start_child_daemon()
        base = f"http://127.0.0.1:{port}"

        line = await daemon.wait_for(r"\[idle/db\] refresh failed", deadline=20)
        self.assertRegex(line, r"refresh failed, keeping 0 sessions: .*(refused|connect)")
        pid = daemon.process.pid
        for n in range(2, 5):
            await daemon.wait_for(r"\[idle/db\] refresh failed", count=n, deadline=5)
            code, _ = await http_get(self.reactor, base + "/readyz")
            self.assertEqual(code, 503)
            code, _ = await http_get(self.reactor, base + "/healthz")
            self.assertEqual(code, 200)
        self.assertIsNone(daemon.exit_code)
        self.assertEqual(daemon.process.pid, pid)
        self.assertEqual(daemon.count(r"Traceback"), 0, daemon.output)

        started = time.monotonic()
        await _running(server)

        async def ready() -> bool:
            code, _ = await http_get(self.reactor, base + "/readyz")
            return code == 200

        end = time.monotonic() + 15
        while not await ready():
            self.assertLess(time.monotonic(), end, "readyz not 200 within 15s of the restart")
            await deferLater(self.reactor, 0.1, lambda: None)
        record_figure(self, "ready_after_db_start_s", time.monotonic() - started)
        await daemon.wait_for(r"\[idle/ann@faults\.test\] connected \(", deadline=10)
        self.assertEqual(await daemon.terminate(deadline=15), 0)
        for secret in KNOWN_SECRETS:
            self.assertNotIn(secret, daemon.output)
