"""Command-line flags of ``twist rebreak-idle``: one per setting (CONTRACT §1), flag wins."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from twisted.python import usage

from .config import OPTIONS, ConfigError, Settings, describe, load_settings

__all__ = ["Options", "settings_or_exit"]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Watch every active mail connection of the Rebreak backend's database with one IMAP "
        "IDLE session and POST a scan trigger to the backend on every new message. Each "
        "option can also be given as the environment variable named in brackets; a flag wins "
        "over the environment."
    )
    optFlags = [
        ["migrate", None, "apply the idempotent migration of rebreak.mail_connections, then exit"],
        ["dev-schema", None, "with --migrate: also create the development schema and table"],
    ]
    optParameters = [[opt.flag, None, None, describe(opt)] for opt in OPTIONS]

    def flag_values(self) -> dict[str, str | None]:
        """Attribute name → raw flag value (None when the flag was not given)."""
        return {opt.attr: self[opt.flag] for opt in OPTIONS}


def settings_or_exit(
    flags: Mapping[str, str | None] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Load settings, or print the one-line reason to stderr and exit with status 78
    (EX_CONFIG) — no traceback, no secret."""
    try:
        return load_settings(environ=environ, flags=flags)
    except ConfigError as e:
        sys.stderr.write(f"rebreak-idle: configuration error: {e}\n")
        sys.stderr.flush()
        raise SystemExit(78) from None
