"""The plugin's module: ``Options`` and ``makeService`` for twist/twistd."""

from __future__ import annotations

from twisted.application.service import IService

from .options import Options
from .startup import daemon_or_exit, settings_or_exit

__all__ = ["Options", "makeService"]


def makeService(options: Options) -> IService:
    """Twisted's plugin API: the daemon for these flags (or exit 78, see startup.py)."""
    settings = settings_or_exit(options.flag_values())
    if options["migrate"]:
        from .db.migrate import migrate_or_exit

        migrate_or_exit(settings.database_url, dev_schema=options["dev-schema"])
    return daemon_or_exit(settings)
