"""Command-line flags of ``twist rebreak-idle``: one per setting (CONTRACT §1), flag wins."""

from __future__ import annotations

import os
from collections.abc import Mapping

from twisted.python import usage

from .config import OPTIONS, ConfigError, describe, load_settings
from .ops.logs import FORMATS, configure_runner_logging

__all__ = ["Options"]


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

    def opt_version(self) -> None:
        """Print the daemon's version (and Twisted's) and exit."""
        import sys

        from twisted import copyright

        from . import __version__

        sys.stdout.write(f"rebreak-idle {__version__} (Twisted {copyright.version})\n")
        sys.stdout.flush()
        raise SystemExit(0)

    def flag_values(self) -> dict[str, str | None]:
        """Attribute name → raw flag value (None when the flag was not given)."""
        return {opt.attr: self[opt.flag] for opt in OPTIONS}

    def postOptions(self) -> None:
        """Under ``twist``/``twistd`` (``self.parent``), choose the runner's log observer.

        Runs inside the runner's own ``parseOptions`` — after its flags, before its
        ``postOptions`` and long before it starts logging — so the choice takes effect.
        ``twist`` would log JSON whenever stdout is not a terminal; we log text unless
        ``--log-format json`` / ``REBREAK_LOG_FORMAT=json`` (or twist's own --log-format)."""
        super().postOptions()
        if self.parent is None:
            return
        log_format, explicit = self.log_format_choice()
        configure_runner_logging(self.parent, log_format, explicit, self._secret_values())

    def log_format_choice(self, environ: Mapping[str, str] | None = None) -> tuple[str, bool]:
        """(format, whether the operator chose it) from the flag, else REBREAK_LOG_FORMAT.

        An invalid value falls back to text here; loading the settings reports it."""
        environ = os.environ if environ is None else environ
        raw = self["log-format"]
        if raw is None or not raw.strip():
            raw = environ.get("REBREAK_LOG_FORMAT")
        if raw is None or not raw.strip():
            return "text", False
        value = raw.strip().lower()
        return (value, True) if value in FORMATS else ("text", False)

    def _secret_values(self) -> tuple[str, ...]:
        """The configured secrets to mask in the log (none when the settings are invalid:
        the plugin's makeService then stops with the configuration error before anything
        is logged)."""
        try:
            return load_settings(flags=self.flag_values()).secret_values()
        except ConfigError:
            return ()

