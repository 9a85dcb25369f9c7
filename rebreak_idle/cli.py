"""``rebreak-idle`` console script: ``rebreak-idle migrate [--dev-schema]
[--clear-folder-marks]`` and
``rebreak-idle probe ACCOUNT_ID | --email ADDRESS [--json]``."""

from __future__ import annotations

import argparse

from .db.migrate import migrate_or_exit
from .startup import VERSION, settings_or_exit

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="rebreak-idle",
        description="Maintenance commands. Run the daemon itself with `twist rebreak-idle`.",
    )
    parser.add_argument("--version", action="version", version=f"rebreak-idle {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("migrate", help="apply the idempotent migration (needs DATABASE_URL)")
    m.add_argument("--dev-schema", action="store_true",
                   help="also create the development schema and table")
    m.add_argument("--database-url", help="overrides DATABASE_URL")
    m.add_argument("--clear-folder-marks", action="store_true",
                   help="also delete the stored marks of every folder but INBOX, so that "
                   "each watched folder is scanned again after the next start (stop the "
                   "daemon first; docs/folders.md)")
    p = sub.add_parser("probe", help="one diagnostic run for one row (DNS, TCP, TLS, login, "
                       "SELECT, IDLE), without the daemon; needs the daemon's environment")
    p.add_argument("account_id", nargs="?", help="the row's id")
    p.add_argument("--email", help="the row's e-mail address instead of its id")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    args = parser.parse_args(argv)
    if args.command == "probe":
        _probe(parser, args)
        return
    import os

    dsn = args.database_url or os.environ.get("DATABASE_URL")
    if not dsn:
        settings_or_exit()  # prints the one-line reason and exits
    migrate_or_exit(dsn, dev_schema=args.dev_schema,
                    clear_folder_marks=args.clear_folder_marks)


def _probe(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    import sys

    from .probe import run_probe

    if (args.account_id is None) == (args.email is None):
        parser.error("probe needs ACCOUNT_ID or --email ADDRESS (one of them)")
    settings = settings_or_exit()
    status = run_probe(settings, account_id=args.account_id, email=args.email,
                       as_json=args.json, write=sys.stdout.write)
    sys.stdout.flush()
    raise SystemExit(status)
