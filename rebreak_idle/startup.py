"""Starting the daemon from a command: settings and the wired daemon, or a one-line reason
on stderr and exit status 78 (EX_CONFIG) — no traceback, no secret."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from twisted.application.service import IService

from .config import ConfigError, Settings, load_settings

__all__ = ["daemon_or_exit", "settings_or_exit"]

#: Exit status of a configuration error (``EX_CONFIG`` of sysexits.h).
EX_CONFIG = 78


def _exit_config_error(error: Exception) -> SystemExit:
    sys.stderr.write(f"rebreak-idle: configuration error: {error}\n")
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


def daemon_or_exit(settings: Settings) -> IService:
    """The daemon that owns this process (global reactor, signal handlers, GC tuning), or
    the one-line reason and exit status 78 when a setting only the wiring can check is
    wrong (e.g. an unparsable REBREAK_STATUS_ENDPOINT)."""
    from twisted.internet import reactor

    from .service import build_daemon

    try:
        return build_daemon(settings, reactor, owns_process=True)
    except ValueError as e:
        raise _exit_config_error(e) from None
