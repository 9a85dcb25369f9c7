"""Applying the migration (CONTRACT §3) and, for development, the schema.

Runs before the reactor starts (``--migrate``, ``rebreak-idle migrate``), so it uses
psycopg2 directly and blocks; the daemon itself never calls it.
"""

from __future__ import annotations

import sys
from importlib.resources import files

import psycopg2

from ..failures import describe

__all__ = ["MIGRATION_SQL", "SCHEMA_SQL", "apply", "migrate_or_exit"]

_SQL = files("rebreak_idle.db").joinpath("sql")
SCHEMA_SQL = _SQL.joinpath("schema.sql").read_text(encoding="utf-8")
MIGRATION_SQL = _SQL.joinpath("migration.sql").read_text(encoding="utf-8")


def apply(dsn: str, dev_schema: bool = False) -> None:
    """Apply the migration (and the development schema first, when asked) in one
    transaction. Idempotent."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            if dev_schema:
                cur.execute(SCHEMA_SQL)
            cur.execute(MIGRATION_SQL)
            from .leases import LEASES_SQL

            cur.execute(LEASES_SQL)
    finally:
        conn.close()


def migrate_or_exit(dsn: str, dev_schema: bool = False) -> None:
    """Apply, print one line, and exit: 0 on success, 1 with the database's reason."""
    try:
        apply(dsn, dev_schema=dev_schema)
    except psycopg2.Error as e:
        sys.stderr.write(f"rebreak-idle: migration failed: {describe(e)}\n")
        raise SystemExit(1) from None
    sys.stdout.write("rebreak-idle: migration applied\n")
    raise SystemExit(0)
