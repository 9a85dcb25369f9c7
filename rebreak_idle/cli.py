"""``rebreak-idle`` console script: ``rebreak-idle migrate [--dev-schema]``."""

from __future__ import annotations

import argparse

from .db.migrate import migrate_or_exit
from .startup import settings_or_exit

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="rebreak-idle",
        description="Maintenance commands. Run the daemon itself with `twist rebreak-idle`.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("migrate", help="apply the idempotent migration (needs DATABASE_URL)")
    m.add_argument("--dev-schema", action="store_true",
                   help="also create the development schema and table")
    m.add_argument("--database-url", help="overrides DATABASE_URL")
    args = parser.parse_args(argv)
    import os

    dsn = args.database_url or os.environ.get("DATABASE_URL")
    if not dsn:
        settings_or_exit()  # prints the one-line reason and exits
    migrate_or_exit(dsn, dev_schema=args.dev_schema)
