"""Starting the daemon from a command: settings, the database check and the wired daemon,
or a one-line reason on stderr and exit status 78 (EX_CONFIG) — no traceback, no secret."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from twisted.application.service import IService
from twisted.logger import Logger

from . import __version__ as VERSION
from .config import ConfigError, Settings, load_settings

__all__ = ["VERSION", "check_database_or_exit", "daemon_or_exit", "settings_or_exit"]

log = Logger()

#: Exit status of a configuration error (``EX_CONFIG`` of sysexits.h).
EX_CONFIG = 78


def _exit_config_error(error: Exception, what: str = "configuration error") -> SystemExit:
    sys.stderr.write(f"rebreak-idle: {what}: {error}\n")
    sys.stderr.flush()
    return SystemExit(EX_CONFIG)


def settings_or_exit(
    flags: Mapping[str, str | None] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Load settings, or print the one-line reason to stderr and exit with status 78."""
    try:
        return load_settings(environ=environ, flags=flags)
    except ConfigError as e:
        raise _exit_config_error(e) from None


def check_database_or_exit(settings: Settings) -> None:
    """The start-up check of the database (:func:`rebreak_idle.db.migrate.ensure_schema`):
    the daemon's own tables created when missing; a missing backend table or column is the
    one-line reason and exit 78. An unreachable database is logged and the start goes on
    (the refreshes retry until it is back)."""
    import psycopg2

    from .db.migrate import SchemaProblem, ensure_schema
    from .failures import describe, maskable, scrub

    try:
        created = ensure_schema(settings.database_url)
    except SchemaProblem as e:
        raise _exit_config_error(e, "database not ready") from None
    except psycopg2.Error as e:
        log.warn("[idle/db] start-up check: the database cannot be reached ({error}); "
                 "starting anyway, the refreshes retry",
                 error=scrub(describe(e), maskable(settings.secret_values())))
        return
    if created:
        log.info("[idle/db] created the daemon's own table(s) {tables} (schema rebreak_idle)",
                 tables=", ".join(created))


def daemon_or_exit(settings: Settings) -> IService:
    """The daemon that owns this process (global reactor, signal handlers, GC tuning), or
    the one-line reason and exit status 78 when a setting only the wiring can check is
    wrong (e.g. an unparsable REBREAK_STATUS_ENDPOINT)."""
    from twisted.internet import reactor

    from .service import build_daemon

    try:
        daemon = build_daemon(settings, reactor, owns_process=True)
    except ValueError as e:
        raise _exit_config_error(e) from None
    check_database_or_exit(settings)
    return daemon
