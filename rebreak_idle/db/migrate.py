"""Applying the migration (CONTRACT §3) and, for development, the schema.

Runs before the reactor starts (``--migrate``, ``rebreak-idle migrate``), so it uses
psycopg2 directly and blocks; the daemon itself never calls it.
"""

from __future__ import annotations

import sys
from importlib.resources import files

import psycopg2

from ..failures import describe

__all__ = ["CLEAR_FOLDER_MARKS_SQL", "MIGRATION_SQL", "SCHEMA_SQL", "apply",
           "migrate_or_exit"]

_SQL = files("rebreak_idle.db").joinpath("sql")
SCHEMA_SQL = _SQL.joinpath("schema.sql").read_text(encoding="utf-8")
MIGRATION_SQL = _SQL.joinpath("migration.sql").read_text(encoding="utf-8")


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
            from .leases import LEASES_SQL

            cur.execute(LEASES_SQL)
            if clear_folder_marks:
                cur.execute(CLEAR_FOLDER_MARKS_SQL)
                return int(cur.rowcount)
            return 0
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
