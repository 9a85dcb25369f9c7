"""Harness of the fault suite (``tests/faults/``): the real daemon on real parts.

:class:`FaultCase` is a mixin for ``twisted.trial.unittest.TestCase`` (real reactor). It
starts, per test, a fresh PostgreSQL database (the daemon connects as a role with a
password, :data:`~tests.support.leaks.DB_PASSWORD`), the in-process IMAP server, the
backend double, and the daemon itself — ``build_daemon(settings, reactor)``, the same wiring
as ``twist rebreak-idle`` — with short intervals. Every secret is one of
:data:`~tests.support.leaks.KNOWN_SECRETS`; every log event of the test is captured and
checked for them (and for tracebacks) when the test ends.

:class:`ScriptedIMAPServer` (tests.support.scripted_imap, shared with the session unit
tests) is a small IMAP server whose connections misbehave on purpose (``* BYE`` at a chosen
point, garbage, over-long lines, huge literals, unknown tags), then behave on the next
connection.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2.extensions import parse_dsn
from twisted.internet import defer
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from rebreak_idle.accounts.secrets import encrypt_secret
from rebreak_idle.config import Settings
from rebreak_idle.service import Daemon, build_daemon
from rebreak_idle.testing.backend import BackendDouble
from rebreak_idle.testing.imapserver import InProcessIMAPServer
from rebreak_idle.testing.pg import fresh_database, sql

from .daemon import DaemonProcess
from .leaks import (
    ADMIN_SECRET,
    DB_PASSWORD,
    DB_ROLE,
    ENCRYPTION_KEY,
    IMAP_PASSWORDS,
    text_has_secret,
)
from .scripted_imap import ScriptedIMAPServer
from .wait import until

__all__ = ["FAST", "FaultCase", "LogCapture", "ScriptedIMAPServer",
           "app_dsn", "child_args", "child_env", "daemon_logs_dir", "free_port", "http_get",
           "record_figure",
           "save_daemon_log", "until"]

def daemon_logs_dir() -> Path:
    """Where tests save the output of child daemons (checked by ``python -m
    tests.support.leaks``): ``daemon-logs/`` in trial's temporary directory (the working
    directory while tests run: ``/tmp/rebreak-trial/daemon-logs`` under ``make test``), or
    ``$REBREAK_DAEMON_LOGS``."""
    return Path(os.environ.get("REBREAK_DAEMON_LOGS") or Path.cwd() / "daemon-logs")

#: Short intervals for the whole suite (seconds).
FAST: dict[str, Any] = dict(
    refresh_interval=1.0, heartbeat_interval=1.0, noop_timeout=1.0, reconnect_delay=0.2,
    reconnect_max_delay=2.0, command_timeout=2.0, poll_interval=1.0,
    write_flush_interval=0.2, shutdown_timeout=3.0, scan_timeout=2.0, connect_rate=1000.0,
    scan_min_interval=0.5, host_login_rate=1000.0, host_login_burst=1000,
)

KEY = ENCRYPTION_KEY.encode("utf-8")[:32]
PASSWORDS = dict(zip(("ann", "bob", "cat"), IMAP_PASSWORDS, strict=False))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_dsn(admin_dsn: str) -> str:
    """The DSN of the application role (with password) for the database of ``admin_dsn``;
    creates the role on that server and grants it the schema (idempotent)."""
    params = parse_dsn(admin_dsn)
    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DB_ROLE,))
            if not cur.fetchone():
                try:
                    cur.execute(f"CREATE ROLE {DB_ROLE} LOGIN PASSWORD %s", (DB_PASSWORD,))
                except psycopg2.errors.DuplicateObject:
                    pass
            cur.execute(f"GRANT ALL ON SCHEMA rebreak TO {DB_ROLE}")
            cur.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA rebreak TO {DB_ROLE}")
            cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'rebreak_idle'")
            if cur.fetchone():  # the daemon's own tables (marks)
                cur.execute(f"GRANT ALL ON SCHEMA rebreak_idle TO {DB_ROLE}")
                cur.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA rebreak_idle TO {DB_ROLE}")
    finally:
        conn.close()
    host = params.get("host", "127.0.0.1")
    return (f"postgresql://{DB_ROLE}:{DB_PASSWORD}@{host}:{params.get('port', 5432)}/"
            f"{params['dbname']}")


class LogCapture:
    """Every log event while a test runs; ``text()`` is what a log file would hold."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.events: list[dict] = []
        self._waiters: list[tuple[re.Pattern[str], int, defer.Deferred]] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)
        if self._waiters:
            line = self.format(event)
            for entry in list(self._waiters):
                regex, count, d = entry
                if regex.search(line) and self.count(regex.pattern) >= count:
                    self._waiters.remove(entry)
                    # on the next turn: the code that logs must finish its own step
                    # before the test goes on (and, say, stops the daemon)
                    self.reactor.callLater(0, d.callback, line)

    @staticmethod
    def format(event: dict) -> str:
        text = formatEvent(event) or ""
        failure = event.get("log_failure")
        if failure is not None:
            text += "\n" + failure.getTraceback()
        return text

    def lines(self) -> list[str]:
        return [self.format(e) for e in self.events]

    def text(self) -> str:
        return "\n".join(self.lines())

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        return sum(1 for line in self.lines() if regex.search(line))

    def matching(self, pattern: str) -> list[str]:
        regex = re.compile(pattern)
        return [line for line in self.lines() if regex.search(line)]

    def tracebacks(self) -> list[str]:
        """Events carrying a failure, or logged at critical level (an exception escaped)."""
        return [self.format(e) for e in self.events
                if e.get("log_failure") is not None or e.get("log_level") == LogLevel.critical]

    def wait_for(self, reactor: Any, pattern: str, count: int = 1,
                 deadline: float = 10.0) -> defer.Deferred:
        """Fires with the line once ``count`` log lines match ``pattern``; fails after
        ``deadline`` seconds naming the pattern."""
        regex = re.compile(pattern)
        d: defer.Deferred = defer.Deferred()
        matches = self.matching(pattern)
        if len(matches) >= count:
            d.callback(matches[count - 1])
            return d
        entry = (regex, count, d)
        self._waiters.append(entry)

        def timed_out(failure: Any) -> Any:
            if entry in self._waiters:
                self._waiters.remove(entry)
            if failure.check(defer.TimeoutError):
                tail = "\n".join(self.lines()[-15:])
                raise AssertionError(f"no log line matching {pattern!r} (x{count}) within "
                                     f"{deadline}s; last lines:\n{tail}")
            return failure

        return d.addTimeout(deadline, reactor).addErrback(timed_out)


class FaultCase:
    """Mixin for a trial ``TestCase``: see the module docstring."""

    timeout = 60
    admin_dsn: str
    dsn: str
    imap: InProcessIMAPServer
    imap_port: int
    backend: BackendDouble
    daemon: Daemon | None = None
    allow_tracebacks = False

    # -- life ---------------------------------------------------------------------------

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.logs = LogCapture(reactor)
        globalLogPublisher.addObserver(self.logs)
        self.addCleanup(self._check_logs)  # runs last: after the parts have stopped
        self.addCleanup(globalLogPublisher.removeObserver, self.logs)

    def _check_logs(self) -> None:
        for line in self.logs.lines():
            what = text_has_secret(line)
            if what:
                self.fail(f"a log line holds a secret ({what})")  # type: ignore[attr-defined]
        if not self.allow_tracebacks:
            tracebacks = self.logs.tracebacks()
            if tracebacks:
                self.fail("traceback in the log:\n" + tracebacks[0])  # type: ignore

    async def start_parts(self, *, admin_dsn: str | None = None, imap: bool = True) -> None:
        self.admin_dsn = admin_dsn or fresh_database()
        self.dsn = app_dsn(self.admin_dsn)
        if imap:
            self.imap = InProcessIMAPServer(self.reactor)
            self.imap_port = self.imap.listen().getHost().port
            self.addCleanup(self.imap.stop)
        self.backend = BackendDouble(ADMIN_SECRET, reactor=self.reactor)
        await self.backend.start()
        self.addCleanup(lambda: defer.ensureDeferred(self.backend.stop()))

    def settings(self, **overrides: Any) -> Settings:
        values = dict(FAST, database_url=self.dsn, admin_secret=ADMIN_SECRET,
                      encryption_key=ENCRYPTION_KEY, backend_url=self.backend.url)
        values.update(overrides)
        return Settings(**values)

    def start_daemon(self, **overrides: Any) -> Daemon:
        daemon = build_daemon(self.settings(**overrides), self.reactor)
        daemon.startService()
        self.daemon = daemon
        self.addCleanup(self.stop_daemon, daemon)
        return daemon

    def stop_daemon(self, daemon: Daemon) -> defer.Deferred:
        if not daemon.running:
            return defer.succeed(None)
        return defer.maybeDeferred(daemon.stopService).addTimeout(20, self.reactor)

    def start_child_daemon(self, **overrides: Any) -> tuple[DaemonProcess, int]:
        """``twist rebreak-idle`` in a child process on this test's database and backend,
        with :func:`child_args` (``overrides`` on :data:`FAST`) and the status endpoint on a
        free loopback port. Returns the process and that port. Cleanup kills the process,
        then saves its output with :func:`save_daemon_log` (for the leak check)."""
        port = free_port()
        daemon = DaemonProcess(self.reactor, env=child_env(self.dsn, self.backend.url),
                               args=child_args(**overrides, status_endpoint=f"tcp:{port}:"
                                               "interface=127.0.0.1"))
        daemon.start()
        self.addCleanup(lambda: save_daemon_log(self.id(), daemon.lines))
        self.addCleanup(daemon.kill)
        return daemon, port

    # -- the table ----------------------------------------------------------------------

    def sql(self, statement: str, args: tuple = ()) -> list[tuple]:
        return sql(self.admin_dsn, statement, args)

    def add_account(self, email: str, password: str, *, port: int | None = None,
                    host: str = "127.0.0.1", security: str = "plain",
                    auth: str = "password", stored: str | None = None,
                    server_password: str | None = None, active: bool = True,
                    server: Any = None) -> str:
        """A row (secret encrypted with the suite's key unless ``stored`` is given), and
        the user on the IMAP server (``server``, default the in-process one) with
        ``server_password`` (default: ``password``)."""
        target = self.imap if server is None else server
        if target is not None and hasattr(target, "add_user"):
            if auth == "xoauth2":
                target.add_user(email, IMAP_PASSWORDS[0], token=password)
            else:
                target.add_user(email, server_password or password)
        account_id = str(uuid.uuid4())
        secret = stored if stored is not None else encrypt_secret(password, KEY)
        self.sql("INSERT INTO rebreak.mail_connections (id, user_id, email, imap_host, "
                 "imap_port, imap_security, auth_method, encrypted_secret, is_active) "
                 "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                 (account_id, str(uuid.uuid4()), email, host,
                  self.imap_port if port is None else port, security, auth, secret, active))
        return account_id

    def status_row(self, account_id: str) -> dict[str, Any]:
        [(error, error_at, heartbeat)] = self.sql(
            "SELECT last_connect_error, last_connect_error_at, last_idle_heartbeat_at "
            "FROM rebreak.mail_connections WHERE id = %s", (account_id,))
        return {"error": error, "error_at": error_at, "heartbeat": heartbeat}

    # -- the daemon -----------------------------------------------------------------------

    def snap(self, account_id: str) -> dict[str, Any]:
        assert self.daemon is not None
        for entry in self.daemon.snapshot():
            if entry["id"] == account_id:
                return entry
        raise AssertionError(f"no account {account_id} in the snapshot")

    def wait_log(self, pattern: str, count: int = 1, deadline: float = 10.0
                 ) -> defer.Deferred:
        return self.logs.wait_for(self.reactor, pattern, count, deadline)

    def connected(self, email: str, count: int = 1, deadline: float = 10.0
                  ) -> defer.Deferred:
        return self.wait_log(rf"\[idle/{re.escape(email)}\] connected \(", count, deadline)

    async def idle(self, email: str, deadline: float = 10.0) -> None:
        await self.imap.wait_for_idle(email).addTimeout(deadline, self.reactor)

    def scans_of(self, account_id: str) -> list[Any]:
        return [r for r in self.backend.requests
                if isinstance(r.body, dict) and r.body.get("connectionId") == account_id]


# -- child daemons ----------------------------------------------------------------------

def save_daemon_log(test_id: str, lines: list[str]) -> Path:
    """Write a child daemon's output to :func:`daemon_logs_dir` (for the leak check)."""
    directory = daemon_logs_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (re.sub(r"[^A-Za-z0-9_.-]", "_", test_id) + ".log")
    path.write_text("\n".join(lines) + "\n")
    return path


def child_env(dsn: str, backend_url: str) -> dict[str, str]:
    return {"DATABASE_URL": dsn, "ADMIN_SECRET": ADMIN_SECRET,
            "ENCRYPTION_KEY": ENCRYPTION_KEY, "BACKEND_URL": backend_url}


def child_args(**overrides: Any) -> list[str]:
    """Flags for ``twist rebreak-idle`` from :data:`FAST` (plus ``overrides``)."""
    values = dict(FAST, **overrides)
    args = []
    for name, value in values.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    return args


async def http_get(reactor: Any, url: str, headers: dict[str, str] | None = None,
                   timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a GET on loopback; the connection is closed afterwards."""
    import treq
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    client = treq.client.HTTPClient(Agent(reactor, pool=pool))
    try:
        d = client.get(url, headers=headers or {})
        d.addTimeout(timeout, reactor)
        response = await d
        body = await treq.content(response)
        return response.code, body
    finally:
        await pool.closeCachedConnections()


def record_figure(test: Any, name: str, value: Any) -> None:
    """Append a measured figure of ``test`` to ``fault-figures.jsonl`` next to the daemon
    logs (for docs/reliability.md)."""
    import json

    path = daemon_logs_dir().parent / "fault-figures.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"test": test.id(), "name": name,
                            "value": round(value, 3) if isinstance(value, float) else value})
                + "\n")
