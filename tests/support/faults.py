"""Harness of the fault suite (``tests/test_faults*.py``): the real daemon on real parts.

:class:`FaultCase` is a mixin for ``twisted.trial.unittest.TestCase`` (real reactor). It
starts, per test, a fresh PostgreSQL database (the daemon connects as a role with a
password, :data:`~tests.support.leaks.DB_PASSWORD`), the in-process IMAP server, the
backend double, and the daemon itself — ``build_daemon(settings, reactor)``, the same wiring
as ``twist rebreak-idle`` — with short intervals. Every secret is one of
:data:`~tests.support.leaks.KNOWN_SECRETS`; every log event of the test is captured and
checked for them (and for tracebacks) when the test ends.

:class:`ScriptedIMAPServer` is a small IMAP server whose connections misbehave on purpose
(``* BYE`` at a chosen point, garbage, over-long lines, huge literals, unknown tags),
then behave on the next connection.
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
from twisted.internet.protocol import Factory
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.protocols.basic import LineOnlyReceiver

from rebreak_idle.config import Settings
from rebreak_idle.secrets import encrypt_secret
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


# -- a misbehaving IMAP server ----------------------------------------------------------

#: Faults of :class:`ScriptedIMAPServer`, one per connection: what it does, and when.
FAULTS = ("bye-greeting", "bye-login", "bye-idle", "garbage-idle", "long-line-idle",
          "huge-literal-idle", "unknown-tag-idle", "normal")



class _Scripted(LineOnlyReceiver):
    delimiter = b"\r\n"
    MAX_LENGTH = 64 * 1024
    server: ScriptedIMAPServer

    def connectionMade(self) -> None:
        s = self.server
        s.connections.append(self)
        self.fault = s.plan.pop(0) if s.plan else "normal"
        self.idle_tag: bytes | None = None
        self.streamed = 0
        self.lost = False
        if self.fault == "bye-greeting":
            self.send(b"* BYE [UNAVAILABLE] maintenance, come back later")
            self.transport.loseConnection()
            return
        self.send(b"* OK [CAPABILITY " + s.caps() + b"] scripted server ready")
        self.told = s.exists

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True

    def send(self, line: bytes) -> None:
        self.transport.write(line + b"\r\n")

    def lineReceived(self, line: bytes) -> None:
        s = self.server
        if self.idle_tag is not None:
            tag, self.idle_tag = self.idle_tag, None
            self.send(tag + (b" OK IDLE terminated" if line.strip().upper() == b"DONE"
                             else b" BAD expected DONE"))
            return
        tag, _, rest = line.partition(b" ")
        cmd, _, _args = rest.partition(b" ")
        cmd = cmd.upper()
        s.commands.append(cmd)
        if cmd == b"CAPABILITY":
            self.send(b"* CAPABILITY " + s.caps())
            self.send(tag + b" OK done")
        elif cmd in (b"LOGIN", b"AUTHENTICATE"):
            s.logins += 1
            if self.fault == "bye-login":
                self.send(tag + b" OK logged in")
                self.send(b"* BYE [UNAVAILABLE] too many connections, closing")
                self.transport.loseConnection()
                return
            self.send(tag + b" OK logged in")
        elif cmd in (b"SELECT", b"EXAMINE"):
            self.told = s.exists
            self.send(b"* %d EXISTS" % s.exists)
            self.send(b"* OK [UIDVALIDITY 7] ok")
            self.send(b"* OK [UIDNEXT %d] ok" % (s.exists + 1))
            self.send(tag + b" OK [READ-WRITE] selected")
        elif cmd == b"IDLE" and s.idle_enabled:
            self.idle_tag = tag
            self.send(b"+ idling")
            s._idle_started(self)
            if self.fault.endswith("-idle"):
                s.reactor.callLater(0, self.misbehave)
        elif cmd == b"NOOP":
            self.tell()
            self.send(tag + b" OK noop")
        elif cmd == b"LOGOUT":
            s.logouts += 1
            self.send(b"* BYE logging out")
            self.send(tag + b" OK bye")
            self.transport.loseConnection()
        else:
            self.send(tag + b" BAD unknown command")

    def tell(self) -> None:
        """Send ``* N EXISTS`` when mail arrived since this connection last heard."""
        if self.server.exists != self.told:
            self.told = self.server.exists
            self.send(b"* %d EXISTS" % self.told)

    def misbehave(self) -> None:
        if self.lost:
            return
        fault = self.fault
        if fault == "bye-idle":
            self.send(b"* BYE [UNAVAILABLE] server shutting down")
            self.transport.loseConnection()
        elif fault == "garbage-idle":
            self.transport.write(b"\x16\x03\x01\x00\xff\xfe binary garbage \x07\r\n")
        elif fault == "unknown-tag-idle":
            self.send(b"Z999 OK completed something nobody asked for")
        elif fault == "huge-literal-idle":
            self.transport.write(b"* 1 FETCH (BODY[] {4000000000}\r\n")
            self._stream(b"\x00" * 65536)
        elif fault == "long-line-idle":
            self.transport.write(b"* OK ")
            self._stream(b"x" * 65536)

    def _stream(self, chunk: bytes) -> None:
        """Write ``chunk`` repeatedly as fast as the client reads (a pull producer) until
        ``server.stream_limit`` bytes are out or the connection is gone."""
        proto = self

        class Producer:
            def resumeProducing(self) -> None:
                if proto.lost or proto.streamed >= proto.server.stream_limit:
                    proto.transport.unregisterProducer()
                    return
                proto.streamed += len(chunk)
                proto.transport.write(chunk)

            def stopProducing(self) -> None:
                pass

        self.transport.registerProducer(Producer(), False)


class ScriptedIMAPServer:
    """A loopback IMAP server whose n-th connection follows ``plan[n]`` (one of
    :data:`FAULTS`; later connections are ``normal``). Any login succeeds. Counters:
    ``logins``, ``logouts``, ``commands``, ``connections`` (protocols, with ``fault``,
    ``streamed`` bytes and ``lost``)."""

    def __init__(self, reactor: Any, plan: list[str] | None = None,
                 stream_limit: int = 32 * 1024 * 1024) -> None:
        self.reactor = reactor
        self.plan = list(plan or [])
        self.stream_limit = stream_limit
        self.exists = 3
        #: advertise and accept IDLE; without it, new mail is told only in NOOP answers
        self.idle_enabled = True
        self.logins = 0
        self.logouts = 0
        self.commands: list[bytes] = []
        self.connections: list[_Scripted] = []
        self._port: Any = None
        self._idle_waiters: list[tuple[int, defer.Deferred]] = []

    def caps(self) -> bytes:
        return b"IMAP4rev1 " + (b"IDLE " if self.idle_enabled else b"") + \
            b"AUTH=PLAIN SASL-IR"

    def deliver(self) -> None:
        """One more message: idling connections hear ``* N EXISTS`` at once, the others
        at their next NOOP (as servers without IDLE do)."""
        self.exists += 1
        for c in self.connections:
            if not c.lost and c.idle_tag is not None:
                c.tell()

    def listen(self) -> int:
        factory = Factory.forProtocol(_Scripted)
        factory.noisy = False
        original = factory.buildProtocol

        def build(addr: Any) -> _Scripted:
            p = original(addr)
            p.server = self
            return p

        factory.buildProtocol = build  # type: ignore[method-assign]
        self._port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        return self._port.getHost().port

    def idling(self) -> int:
        return sum(1 for c in self.connections if c.idle_tag is not None and not c.lost)

    def wait_for_idle(self, n: int = 1) -> defer.Deferred:
        """Fires once ``n`` connections have entered IDLE in total."""
        d: defer.Deferred = defer.Deferred()
        self._idle_waiters.append((n, d))
        self._check_idle()
        return d

    def _idle_started(self, proto: _Scripted) -> None:
        proto.entered_idle = True
        self._check_idle()

    def _check_idle(self) -> None:
        entered = sum(1 for c in self.connections if getattr(c, "entered_idle", False))
        keep = []
        for n, d in self._idle_waiters:
            if d.called:
                continue
            if entered >= n:
                d.callback(entered)
            else:
                keep.append((n, d))
        self._idle_waiters = keep

    def stop(self) -> defer.Deferred:
        ds = []
        if self._port is not None:
            ds.append(defer.maybeDeferred(self._port.stopListening))
        for c in self.connections:
            if not c.lost and c.transport is not None:
                c.transport.abortConnection()
        for _n, d in self._idle_waiters:
            if not d.called:
                d.cancel()
        return defer.gatherResults(ds, consumeErrors=True)


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
