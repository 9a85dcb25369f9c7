"""Applying the migration (CONTRACT §3) and, for development, the schema; the start-up
check of the database.

Runs before the reactor starts (``--migrate``, ``rebreak-idle migrate``, and the commands'
start-up check :func:`ensure_schema`), so it uses psycopg2 directly and blocks.

The start-up check never lets the daemon run degraded: the daemon's own schema
(``rebreak_idle``: marks, hold-offs, leases) is created when a table of it is missing —
its own schema only; the backend's table is altered by the migration alone — and a
missing backend table or column stops the start with one line that says what to run.
"""

from __future__ import annotations

import sys
from importlib.resources import files

import psycopg2

from ..failures import describe

__all__ = ["BACKEND_READS", "BACKEND_WRITES", "CLEAR_FOLDER_MARKS_SQL", "MIGRATION_SQL",
           "OWN_SCHEMA_SQL", "OWN_TABLES", "SCHEMA_SQL", "SchemaProblem", "apply",
           "ensure_schema", "migrate_or_exit"]

_SQL = files("rebreak_idle.db").joinpath("sql")
SCHEMA_SQL = _SQL.joinpath("schema.sql").read_text(encoding="utf-8")
#: the backend table's three status columns (``ALTER TABLE ... ADD COLUMN IF NOT EXISTS``)
MIGRATION_SQL = _SQL.joinpath("migration.sql").read_text(encoding="utf-8")
#: the daemon's own schema and tables (``CREATE ... IF NOT EXISTS``)
OWN_SCHEMA_SQL = _SQL.joinpath("own_schema.sql").read_text(encoding="utf-8")

#: The backend table's columns that the daemon reads (CONTRACT §3) and the three it writes.
BACKEND_READS = ("id", "user_id", "email", "imap_host", "imap_port", "imap_security",
                 "imap_username", "auth_method", "encrypted_secret", "is_active")
BACKEND_WRITES = ("last_connect_error", "last_connect_error_at", "last_idle_heartbeat_at")
#: The daemon's own tables; any of them missing: :data:`OWN_SCHEMA_SQL` is applied at start.
OWN_TABLES = ("rebreak_idle.mailbox_state", "rebreak_idle.account_holdoff",
              "rebreak_idle.leases", "rebreak_idle.replicas")

_COLUMNS_SQL = ("SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = 'rebreak' AND table_name = 'mail_connections'")


class SchemaProblem(Exception):
    """The database cannot serve the daemon; the message is the one line to print."""


def _own_schema_sql() -> str:
    from .leases import LEASES_SQL

    return OWN_SCHEMA_SQL + LEASES_SQL


#: every folder mark (all but INBOX's): what ``--clear-folder-marks`` deletes
CLEAR_FOLDER_MARKS_SQL = "DELETE FROM rebreak_idle.mailbox_state WHERE mailbox <> 'INBOX'"


def apply(dsn: str, dev_schema: bool = False, clear_folder_marks: bool = False) -> int:
    """Apply the migration (and the development schema first, when asked) in one
    transaction. Idempotent. With ``clear_folder_marks``, the same transaction deletes
    the stored marks of every folder but INBOX (a start over after watching folders with a
    backend that ignored the ``mailbox`` field: docs/folders.md); returns how many."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            if dev_schema:
                cur.execute(SCHEMA_SQL)
            cur.execute(MIGRATION_SQL)
            cur.execute(_own_schema_sql())
            if clear_folder_marks:
                cur.execute(CLEAR_FOLDER_MARKS_SQL)
                return int(cur.rowcount)
            return 0
    finally:
        conn.close()


def _absent(cur: psycopg2.extensions.cursor) -> list[str]:
    """The daemon's own tables that do not exist (read from pg_tables with the statement's
    snapshot: after waiting for another replica's creation it sees what that one made)."""
    cur.execute("SELECT t FROM unnest(%s::text[]) AS t WHERE NOT EXISTS (SELECT 1 FROM "
                "pg_catalog.pg_tables p WHERE p.schemaname || '.' || p.tablename = t)",
                (list(OWN_TABLES),))
    return [row[0] for row in cur.fetchall()]


def ensure_schema(dsn: str, connect_timeout: int = 10) -> list[str]:
    """The start-up check: the backend's table has every column the daemon reads and
    writes, and the daemon's own tables exist (created here when missing). Returns the
    own tables it created; raises :class:`SchemaProblem` with the one line to print, or
    psycopg2's ``OperationalError`` when the database cannot be reached."""
    conn = psycopg2.connect(dsn, connect_timeout=connect_timeout)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(_COLUMNS_SQL)
            have = {row[0] for row in cur.fetchall()}
            if not have:
                raise SchemaProblem(
                    "table rebreak.mail_connections not found (or not readable by this "
                    "user): is DATABASE_URL the backend's database?")
            missing = [c for c in BACKEND_READS if c not in have]
            if missing:
                raise SchemaProblem(
                    "table rebreak.mail_connections lacks the column(s) "
                    f"{', '.join(missing)} that the daemon reads: the backend's schema is "
                    "older than this daemon needs (CONTRACT section 3)")
            missing = [c for c in BACKEND_WRITES if c not in have]
            if missing:
                raise SchemaProblem(
                    "table rebreak.mail_connections lacks the column(s) "
                    f"{', '.join(missing)} that the daemon writes: run `rebreak-idle "
                    "migrate` (or `twist rebreak-idle --migrate`) once")
            absent = _absent(cur)
            if not absent:
                return []
            try:
                with conn.cursor() as ddl:
                    ddl.execute("BEGIN")
                    # replicas starting together: one creates, the others wait and find it
                    ddl.execute("SELECT pg_advisory_xact_lock(hashtext('rebreak_idle schema'))")
                    absent = _absent(ddl)
                    if absent:
                        ddl.execute(_own_schema_sql())
                    ddl.execute("COMMIT")
            except psycopg2.Error as e:
                raise SchemaProblem(
                    f"the daemon's own table(s) {', '.join(absent)} are missing and could "
                    f"not be created ({describe(e)}): run `rebreak-idle migrate` as a user "
                    "that may create the schema rebreak_idle") from None
            return absent
    finally:
        conn.close()


def migrate_or_exit(dsn: str, dev_schema: bool = False,
                    clear_folder_marks: bool = False) -> None:
    """Apply, print one line, and exit: 0 on success, 1 with the database's reason."""
    try:
        cleared = apply(dsn, dev_schema=dev_schema, clear_folder_marks=clear_folder_marks)
    except psycopg2.Error as e:
        sys.stderr.write(f"rebreak-idle: migration failed: {describe(e)}\n")
        raise SystemExit(1) from None
    done = f"; {cleared} folder marks cleared" if clear_folder_marks else ""
    sys.stdout.write(f"rebreak-idle: migration applied{done}\n")
    raise SystemExit(0)
