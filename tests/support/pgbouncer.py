"""A private PgBouncer (Debian's ``pgbouncer`` package) in front of the test PostgreSQL,
for the LISTEN self-test: ``pool_mode = transaction`` by default, on a free loopback port,
with its own config and auth file in a temporary directory. As root it runs as the
unprivileged user of the test PostgreSQL (PgBouncer refuses to run as root).

:func:`skip_without_pgbouncer` returns a skip reason when the binary is missing, unless
``REBREAK_REQUIRE_DOVECOT=1`` (CI: every integration dependency is required).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from psycopg2.extensions import make_dsn, parse_dsn

from rebreak_idle.testing.pg import _demote_kwargs

from .tools import all_required
from .wait import end_process, server_started

__all__ = ["PGBOUNCER", "PgBouncer", "skip_without_pgbouncer"]

PGBOUNCER = os.environ.get("REBREAK_PGBOUNCER", "/usr/sbin/pgbouncer")


def skip_without_pgbouncer() -> str | None:
    if os.path.exists(PGBOUNCER) or all_required():
        return None
    return "pgbouncer is not installed (apt-get install pgbouncer)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgBouncer:
    """PgBouncer for the server of ``dsn`` (users trusted: the test server trusts them)."""

    def __init__(self, dsn: str, pool_mode: str = "transaction",
                 startup_timeout: float = 15.0) -> None:
        params = parse_dsn(dsn)
        self._params = params
        self.dir = Path(tempfile.mkdtemp(prefix="rebreak-pgbouncer-"))
        os.chmod(self.dir, 0o777)
        self.port = _free_port()
        user = params.get("user", "postgres")
        (self.dir / "users.txt").write_text(f'"{user}" ""\n')
        self.log = self.dir / "pgbouncer.log"
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={params.get('host', '127.0.0.1')} port={params.get('port', 5432)}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.dir / 'users.txt'}\n"
            f"pool_mode = {pool_mode}\nlogfile = {self.log}\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            "default_pool_size = 4\n")
        for name in ("users.txt", "pgbouncer.ini"):
            os.chmod(self.dir / name, 0o644)
        self.process = subprocess.Popen(
            [PGBOUNCER, str(self.dir / "pgbouncer.ini")], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, **_demote_kwargs())
        self._wait_ready(startup_timeout)

    def dsn(self) -> str:
        """The DSN of the same database and user through PgBouncer."""
        values = dict(self._params, host="127.0.0.1", port=str(self.port))
        return make_dsn(**values)

    def _wait_ready(self, timeout: float) -> None:
        try:
            server_started(self.process, self.port, timeout, "pgbouncer")
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        end_process(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)
