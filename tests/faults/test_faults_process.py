"""Fault suite, whole process (issue 9): ``twist rebreak-idle`` in a child process under
load gets SIGTERM; and the leak check (``python -m tests.support.leaks``) that ``make test``
runs over the suite's logs. Results: docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg2
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from rebreak_idle.accounts.secrets import encrypt_secret
from tests.support.faults import KEY, FaultCase, http_get, record_figure, until
from tests.support.leaks import (
    ADMIN_SECRET,
    DB_PASSWORD,
    IMAP_PASSWORDS,
    KNOWN_SECRETS,
    XOAUTH2_TOKEN,
    text_has_secret,
)

ROOT = Path(__file__).resolve().parents[2]
N_ACCOUNTS = 200
SHUTDOWN_TIMEOUT = 4.0


class SigtermUnderLoadTests(FaultCase, TestCase):
    timeout = 90

    async def test_sigterm_under_load(self) -> None:
        """200 idling sessions, 200 first-connect scans held by a slow backend, new mail
        arriving, heartbeats (every second) only in the write buffer (flush interval
        10 min): SIGTERM → exit 0 within shutdown_timeout + 2 s, LOGOUT from every
        session, every buffered heartbeat in the table."""
        await self.start_parts()
        gate = self.backend.hold()
        self.addCleanup(gate.release)
        rows = []
        for n in range(N_ACCOUNTS):
            email = f"u{n:03d}@load.test"
            password = IMAP_PASSWORDS[n % 3]
            self.imap.add_user(email, password)
            rows.append((str(uuid.uuid4()), str(uuid.uuid4()), email, self.imap_port,
                         encrypt_secret(password, KEY)))
        with psycopg2.connect(self.admin_dsn) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO rebreak.mail_connections (id, user_id, email, imap_host, "
                "imap_port, imap_security, auth_method, encrypted_secret) VALUES "
                "(%s, %s, %s, '127.0.0.1', %s, 'plain', 'password', %s)", rows)
        conn.close()

        daemon, port = self.start_child_daemon(
            write_flush_interval=600, heartbeat_interval=1, shutdown_timeout=SHUTDOWN_TIMEOUT,
            refresh_interval=5, scan_timeout=30)

        await until(lambda: self.imap.idling_connections() == N_ACCOUNTS, deadline=30,
                    what=f"{N_ACCOUNTS} sessions idling")
        await self.backend.wait_for(16, deadline=10)  # scan_concurrency requests held
        code, body = await http_get(self.reactor, f"http://127.0.0.1:{port}/status",
                                    headers={"x-admin-secret": ADMIN_SECRET})
        self.assertEqual(code, 200)
        self.assertIsNone(text_has_secret(body.decode("utf-8")))
        states = [a["state"] for a in json.loads(body)]
        self.assertEqual(states.count("idle"), N_ACCOUNTS)
        # Every session sends a NOOP heartbeat each second; no error or clear happens any
        # more, so nothing flushes them (interval 10 min): after 2 heartbeats, each
        # session has a buffered heartbeat newer than its row.
        await daemon.wait_for(r"\[idle/u199@load\.test\] connected", deadline=10)
        await until(lambda: self.imap.commands[b"NOOP"] >= 2 * N_ACCOUNTS, deadline=10,
                    what="two heartbeats per session")
        stored = dict(self.sql("SELECT email, last_idle_heartbeat_at FROM "
                               "rebreak.mail_connections"))
        for n in range(0, N_ACCOUNTS, 4):  # new mail for 50 accounts, as the stop begins
            self.imap.deliver(f"u{n:03d}@load.test", subject="during shutdown")
        await daemon.wait_for(r"exists-event received", count=10, deadline=10)

        logouts = self.imap.commands[b"LOGOUT"]
        started = time.monotonic()
        code = await daemon.terminate(deadline=SHUTDOWN_TIMEOUT + 10)
        took = time.monotonic() - started
        self.assertEqual(code, 0, daemon.tail())
        self.assertLessEqual(took, SHUTDOWN_TIMEOUT + 2.0)
        self.assertEqual(self.imap.commands[b"LOGOUT"] - logouts, N_ACCOUNTS)
        after = dict(self.sql("SELECT email, last_idle_heartbeat_at FROM "
                              "rebreak.mail_connections"))
        stale = [e for e, at in after.items()
                 if at is None or (stored[e] is not None and at <= stored[e])]
        self.assertEqual(stale, [], "heartbeats buffered at SIGTERM were not written")
        self.assertIn("rebreak-idle stopped", daemon.output)
        self.assertEqual(daemon.count("Traceback"), 0, daemon.output)
        self.assertIsNone(text_has_secret(daemon.output))
        record_figure(self, "exit_after_sigterm_s", took)


class LeakCheckTests(TestCase):
    """``python -m tests.support.leaks FILE...`` (run by ``make test`` over trial's
    test.log and the saved child-daemon logs)."""

    timeout = 30

    async def _run(self, *paths: str) -> tuple[bytes, bytes, int]:
        return await getProcessOutputAndValue(
            sys.executable, ["-m", "tests.support.leaks", *paths], env=dict(os.environ),
            path=str(ROOT))

    async def test_names_the_file_not_the_secret(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="rebreak-leaks-"))
        clean = directory / "clean.log"
        clean.write_text("[idle/ann@x] connected (127.0.0.1:993)\n")
        out, err, code = await self._run(str(clean))
        self.assertEqual(code, 0, err)
        for secret in KNOWN_SECRETS:
            dirty = directory / "dirty.log"
            dirty.write_text(f"line one\nconnect failed: {secret}\n")
            out, err, code = await self._run(str(clean), str(dirty))
            self.assertEqual(code, 1)
            self.assertIn(str(dirty).encode(), err)
            self.assertNotIn(str(clean).encode(), err)
            self.assertNotIn(secret.encode(), out + err)
        out, err, code = await self._run(str(directory / "missing.log"))
        self.assertEqual(code, 1)
        self.assertIn(b"missing", err)

    def test_secrets_cover_every_kind(self) -> None:
        kinds = {text_has_secret(s) for s in KNOWN_SECRETS}
        self.assertEqual(kinds, {"ADMIN_SECRET", "ENCRYPTION_KEY", "IMAP password",
                                 "XOAUTH2 token", "database password"})
        self.assertIn(DB_PASSWORD, KNOWN_SECRETS)
        self.assertIn(XOAUTH2_TOKEN, KNOWN_SECRETS)
