"""The migration (CONTRACT §3): idempotent, on fresh and existing tables, from both commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg2
from twisted.trial.unittest import SynchronousTestCase, TestCase

from rebreak_idle import __version__
from rebreak_idle.db.migrate import MIGRATION_SQL, OWN_TABLES, SchemaProblem, apply, ensure_schema
from rebreak_idle.testing.pg import fresh_database, sql
from tests.support.daemon import DaemonProcess
from tests.support.faults import app_dsn
from tests.support.leaks import DB_PASSWORD

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STATUS_COLUMNS = ["last_connect_error", "last_connect_error_at", "last_idle_heartbeat_at"]

#: The backend's table as it was before the daemon's migration.
LEGACY_TABLE = """
CREATE SCHEMA rebreak;
CREATE TABLE rebreak.mail_connections (
    id uuid PRIMARY KEY, user_id uuid NOT NULL, email text NOT NULL, imap_host text NOT NULL,
    imap_port integer NOT NULL, imap_security text NOT NULL, imap_username text,
    auth_method text NOT NULL, encrypted_secret text NOT NULL, is_active boolean NOT NULL
);
INSERT INTO rebreak.mail_connections VALUES (
    '00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000002',
    'a@example.org', 'imap.example.org', 993, 'tls', NULL, 'password', 'x:y:z', true);
"""


def columns(dsn: str) -> dict[str, str]:
    rows = sql(dsn, "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = 'rebreak' AND table_name = 'mail_connections'")
    return dict(rows)


def run(argv: list[str], dsn: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "ADMIN_SECRET", "ENCRYPTION_KEY")}
    env.update(DATABASE_URL=dsn, ADMIN_SECRET="s" * 8, ENCRYPTION_KEY="k" * 32)
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)


class MigrationTests(SynchronousTestCase):
    def test_status_columns_and_types(self) -> None:
        cols = columns(fresh_database())
        self.assertEqual(cols["last_connect_error"], "text")
        self.assertEqual(cols["last_connect_error_at"], "timestamp with time zone")
        self.assertEqual(cols["last_idle_heartbeat_at"], "timestamp with time zone")

    def test_apply_twice(self) -> None:
        dsn = fresh_database()
        before = columns(dsn)
        apply(dsn, dev_schema=True)
        apply(dsn)
        self.assertEqual(columns(dsn), before)

    def test_legacy_table_gets_the_columns_and_keeps_its_rows(self) -> None:
        dsn = fresh_database(dev_schema=False)
        sql(dsn, LEGACY_TABLE)
        apply(dsn)
        cols = columns(dsn)
        for name in STATUS_COLUMNS:
            self.assertIn(name, cols)
        self.assertEqual(sql(dsn, "SELECT count(*), max(last_connect_error) "
                                  "FROM rebreak.mail_connections")[0], (1, None))

    def test_table_that_already_has_the_columns(self) -> None:
        dsn = fresh_database(dev_schema=False)
        sql(dsn, LEGACY_TABLE)
        sql(dsn, "ALTER TABLE rebreak.mail_connections ADD COLUMN last_connect_error text, "
                 "ADD COLUMN last_connect_error_at timestamptz, "
                 "ADD COLUMN last_idle_heartbeat_at timestamptz")
        sql(dsn, "UPDATE rebreak.mail_connections SET last_connect_error = 'kept'")
        apply(dsn)
        self.assertEqual(sql(dsn, "SELECT last_connect_error FROM rebreak.mail_connections"),
                         [("kept",)])

    def test_missing_table_fails_cleanly(self) -> None:
        dsn = fresh_database(dev_schema=False)
        with self.assertRaises(psycopg2.Error):
            apply(dsn)


class CommandTests(SynchronousTestCase):
    def test_twist_migrate_flag(self) -> None:
        dsn = fresh_database(dev_schema=False)
        sql(dsn, LEGACY_TABLE)
        done = run([str(BIN / "twist"), "rebreak-idle", "--migrate"], dsn)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("migration applied", done.stdout)
        for name in STATUS_COLUMNS:
            self.assertIn(name, columns(dsn))

    def test_twist_migrate_with_dev_schema_on_an_empty_database(self) -> None:
        dsn = fresh_database(dev_schema=False)
        done = run([str(BIN / "twist"), "rebreak-idle", "--migrate", "--dev-schema"], dsn)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("encrypted_secret", columns(dsn))

    def test_console_script(self) -> None:
        dsn = fresh_database(dev_schema=False)
        sql(dsn, LEGACY_TABLE)
        for _ in range(2):
            done = run([str(BIN / "rebreak-idle"), "migrate"], dsn)
            self.assertEqual(done.returncode, 0, done.stderr)
        for name in STATUS_COLUMNS:
            self.assertIn(name, columns(dsn))

    def test_console_script_reports_failure(self) -> None:
        dsn = fresh_database(dev_schema=False)
        done = run([str(BIN / "rebreak-idle"), "migrate"], dsn)
        self.assertEqual(done.returncode, 1)
        self.assertIn("migration failed", done.stderr)
        self.assertIn("rebreak", done.stderr.removeprefix("rebreak-idle: "))
        self.assertNotIn("Traceback", done.stderr)

    def test_clear_folder_marks(self) -> None:
        """``migrate --clear-folder-marks``: every folder's mark goes, INBOX's stay (a
        start over after folders were watched with a backend that ignored "mailbox")."""
        dsn = fresh_database()
        apply(dsn)
        a, b = "00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"
        sql(dsn, "INSERT INTO rebreak_idle.mailbox_state (connection_id, mailbox, "
                 "uidvalidity, uidnext, message_count) SELECT c::uuid, m, 1, 5, 4 FROM "
                 "(VALUES ('00000000-0000-0000-0000-00000000000a', 'INBOX'), "
                 "('00000000-0000-0000-0000-00000000000a', 'INBOX.Junk'), "
                 "('00000000-0000-0000-0000-00000000000a', 'Spam'), "
                 "('00000000-0000-0000-0000-00000000000b', 'INBOX'), "
                 "('00000000-0000-0000-0000-00000000000b', 'Unbekannt')) AS v (c, m)")
        done = run([str(BIN / "rebreak-idle"), "migrate", "--clear-folder-marks"], dsn)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("migration applied; 3 folder marks cleared", done.stdout)
        self.assertEqual(sorted(sql(dsn, "SELECT connection_id::text, mailbox FROM "
                                         "rebreak_idle.mailbox_state")),
                         [(a, "INBOX"), (b, "INBOX")])
        done = run([str(BIN / "rebreak-idle"), "migrate", "--clear-folder-marks"], dsn)
        self.assertIn("0 folder marks cleared", done.stdout)
        done = run([str(BIN / "rebreak-idle"), "migrate"], dsn)
        self.assertEqual(done.stdout, "rebreak-idle: migration applied\n")



def own_tables(dsn: str) -> list[str]:
    return [name for (name,) in sql(
        dsn, "SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass(t) IS NOT NULL",
        (list(OWN_TABLES),))]


def backend_only(with_status_columns: bool = True) -> str:
    """A database with the backend's table (and, by default, the migration's three columns)
    but none of the daemon's own schema: an upgrade that skipped the migration."""
    dsn = fresh_database(dev_schema=False)
    sql(dsn, LEGACY_TABLE)
    if with_status_columns:
        sql(dsn, MIGRATION_SQL)
    return dsn


class StartupCheckTests(SynchronousTestCase):
    """The daemon's start-up check (issue 25): its own schema created when missing, a
    missing backend column one clear line."""

    def test_missing_own_schema_is_created_and_the_backend_table_untouched(self) -> None:
        dsn = backend_only()
        before = columns(dsn)
        self.assertEqual(own_tables(dsn), [])
        self.assertEqual(sorted(ensure_schema(dsn)), sorted(OWN_TABLES))
        self.assertEqual(sorted(own_tables(dsn)), sorted(OWN_TABLES))
        self.assertEqual(columns(dsn), before)
        self.assertEqual(ensure_schema(dsn), [])  # nothing to do the second time

    def test_replicas_starting_together_both_pass(self) -> None:
        """Several replicas (PM2 instances) check at the same moment: one creates the
        schema, the others find it; none fails."""
        from concurrent.futures import ThreadPoolExecutor

        dsn = backend_only()
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: ensure_schema(dsn), range(4)))
        self.assertEqual(sorted(len(r) for r in results), [0, 0, 0, len(OWN_TABLES)])

    def test_a_missing_written_column_says_to_run_the_migration(self) -> None:
        dsn = backend_only(with_status_columns=False)
        before = columns(dsn)
        with self.assertRaises(SchemaProblem) as caught:
            ensure_schema(dsn)
        text = str(caught.exception)
        self.assertIn("last_connect_error, last_connect_error_at, last_idle_heartbeat_at",
                      text)
        self.assertIn("run `rebreak-idle migrate`", text)
        self.assertEqual(columns(dsn), before)  # never altered without --migrate
        self.assertEqual(own_tables(dsn), [])

    def test_a_missing_read_column_is_named(self) -> None:
        dsn = backend_only()
        sql(dsn, "ALTER TABLE rebreak.mail_connections DROP COLUMN imap_security")
        with self.assertRaises(SchemaProblem) as caught:
            ensure_schema(dsn)
        self.assertIn("lacks the column(s) imap_security that the daemon reads",
                      str(caught.exception))

    def test_no_backend_table(self) -> None:
        with self.assertRaises(SchemaProblem) as caught:
            ensure_schema(fresh_database(dev_schema=False))
        self.assertIn("rebreak.mail_connections not found", str(caught.exception))


class StartupCommandTests(SynchronousTestCase):
    """``twist rebreak-idle`` refuses to start degraded: one line and exit 78."""

    def start(self, dsn: str) -> subprocess.CompletedProcess:
        return run([str(BIN / "twist"), "rebreak-idle", "--refresh-interval", "1"], dsn)

    def test_missing_backend_column_is_one_line_and_exit_78(self) -> None:
        done = self.start(backend_only(with_status_columns=False))
        self.assertEqual(done.returncode, 78, done.stdout + done.stderr)
        (line,) = done.stderr.strip().splitlines()
        self.assertRegex(line, r"^rebreak-idle: database not ready: table "
                               r"rebreak.mail_connections lacks the column\(s\) .* run "
                               r"`rebreak-idle migrate`")
        self.assertNotIn("Traceback", done.stdout + done.stderr)

    def test_own_schema_that_cannot_be_created_is_one_line_and_exit_78(self) -> None:
        admin = backend_only()
        dsn = app_dsn(admin)  # the backend's grants only: no CREATE on the database
        done = self.start(dsn)
        self.assertEqual(done.returncode, 78, done.stdout + done.stderr)
        (line,) = done.stderr.strip().splitlines()
        self.assertIn("rebreak_idle.mailbox_state", line)
        self.assertIn("run `rebreak-idle migrate`", line)
        self.assertNotIn(DB_PASSWORD, done.stdout + done.stderr)
        self.assertEqual(own_tables(admin), [])

    def test_version(self) -> None:
        for argv in ([str(BIN / "rebreak-idle"), "--version"],
                     [str(BIN / "twist"), "rebreak-idle", "--version"]):
            done = run(argv, "postgresql://unused")
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertTrue(done.stdout.startswith(f"rebreak-idle {__version__}"), done.stdout)


class StartupCreatesOwnSchemaTests(TestCase):
    timeout = 60

    async def test_daemon_creates_its_schema_and_runs(self) -> None:
        """An upgrade that skipped the migration: the daemon creates its own tables at
        start (one line), then runs normally; the backend's table is unchanged."""
        from twisted.internet import reactor

        dsn = backend_only()
        before = columns(dsn)
        daemon = DaemonProcess(reactor, env={"DATABASE_URL": dsn, "ADMIN_SECRET": "s" * 8,
                                             "ENCRYPTION_KEY": "k" * 32},
                               args=["--refresh-interval", "1"])
        daemon.start()
        self.addCleanup(daemon.kill)
        line = await daemon.wait_for(r"created the daemon's own table", deadline=30)
        self.assertIn("rebreak_idle.mailbox_state", line)
        await daemon.wait_for(r"\[idle/db\] refreshed — 1 active connections", deadline=30)
        self.assertEqual(sorted(own_tables(dsn)), sorted(OWN_TABLES))
        self.assertEqual(columns(dsn), before)
        self.assertEqual(daemon.count(r"\[idle/db\].*(failed|unreadable)"), 0, daemon.output)
        self.assertEqual(await daemon.terminate(deadline=20), 0)
