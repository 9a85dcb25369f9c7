"""Smoke run of the harness without the daemon, and a stand-in IDLE client.

``python -m bench.smoke check --clients 300`` starts the load server and the sink as
subprocesses, connects that many raw asyncio IMAP clients (half of them over TLS), has
each log in, select and IDLE, injects EXISTS into a sample of them and checks that every
injection reached the sink as a scan POST (each client POSTs on EXISTS, like the daemon).

``python -m bench.smoke client`` is the same client as a stand-in daemon: it reads the
accounts from ``DATABASE_URL`` (``ENCRYPTION_KEY``, ``BACKEND_URL``, ``ADMIN_SECRET``,
``REBREAK_TLS_CA_FILE``, ``REBREAK_CONNECT_RATE``, ``REBREAK_HEARTBEAT_INTERVAL``) so that
the runner can be tried end to end with ``--daemon-cmd 'python -m bench.smoke client'``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["main"]


@dataclass(frozen=True)
class Acct:
    id: str
    user_id: str
    username: str
    password: str
    host: str
    port: int
    tls: bool


class Poster:
    """POSTs scan triggers over a few keep-alive HTTP/1.1 connections."""

    def __init__(self, backend_url: str, secret: str, workers: int = 4) -> None:
        u = urlsplit(backend_url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.secret = secret
        self.queue: asyncio.Queue[dict] = asyncio.Queue()
        self.tasks = [asyncio.ensure_future(self._worker()) for _ in range(workers)]
        self.sent = 0

    def post(self, doc: dict) -> None:
        self.queue.put_nowait(doc)

    async def _worker(self) -> None:
        reader = writer = None
        while True:
            doc = await self.queue.get()
            body = json.dumps(doc).encode()
            for _attempt in range(3):
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(self.host, self.port)
                    writer.write(
                        b"POST /api/mail/scan-internal HTTP/1.1\r\nhost: %s\r\n"
                        b"content-type: application/json\r\nx-admin-secret: %s\r\n"
                        b"content-length: %d\r\n\r\n%s"
                        % (self.host.encode(), self.secret.encode(), len(body), body))
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    await reader.readexactly(length)
                    self.sent += 1
                    break
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    writer = None


class Client:
    """One IDLE session: AUTHENTICATE PLAIN (SASL-IR), SELECT INBOX, IDLE; POST on EXISTS;
    DONE/NOOP/IDLE every heartbeat."""

    def __init__(self, acct: Acct, poster: Poster, heartbeat: float,
                 ctx: ssl.SSLContext | None) -> None:
        self.acct, self.poster, self.heartbeat, self.ctx = acct, poster, heartbeat, ctx
        self.exists = 0
        self.tag = 0
        self.idling = False

    async def _command(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       text: bytes) -> list[bytes]:
        self.tag += 1
        tag = b"a%d" % self.tag
        writer.write(tag + b" " + text + b"\r\n")
        lines = []
        for _ in range(1000):
            line = await asyncio.wait_for(reader.readline(), 30)
            if not line:
                raise ConnectionError("closed")
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise ConnectionError(line.decode(errors="replace").strip())
                return lines
            lines.append(line)
            self._untagged(line)
        raise ConnectionError("too many lines")

    def _untagged(self, line: bytes) -> None:
        parts = line.split()
        if len(parts) >= 3 and parts[0] == b"*" and parts[2].upper() == b"EXISTS":
            n = int(parts[1])
            if self.exists and n > self.exists:
                self.poster.post({"connectionId": self.acct.id, "userId": self.acct.user_id,
                                  "reason": "exists", "exists": n})
            self.exists = max(self.exists, n)

    async def run(self, deadline: float) -> None:
        a = self.acct
        reader, writer = await asyncio.open_connection(
            a.host, a.port, ssl=self.ctx if a.tls else None,
            server_hostname=a.host if a.tls else None, limit=8192)
        try:
            await reader.readline()
            ir = base64.b64encode(b"\0" + a.username.encode() + b"\0" + a.password.encode())
            await self._command(reader, writer, b"AUTHENTICATE PLAIN " + ir)
            for line in await self._command(reader, writer, b"SELECT INBOX"):
                parts = line.split()
                if len(parts) >= 3 and parts[2] == b"EXISTS":
                    self.exists = int(parts[1])
            self.poster.post({"connectionId": a.id, "userId": a.user_id, "reason": "connected",
                              "exists": self.exists})
            while time.monotonic() < deadline:
                self.tag += 1
                tag = b"a%d" % self.tag
                writer.write(tag + b" IDLE\r\n")
                line = await asyncio.wait_for(reader.readline(), 30)
                if not line.startswith(b"+"):
                    raise ConnectionError("IDLE refused")
                until = time.monotonic() + self.heartbeat
                for _ in range(1_000_000):
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        line = await asyncio.wait_for(reader.readline(), left)
                    except TimeoutError:
                        break
                    if not line:
                        raise ConnectionError("closed")
                    self._untagged(line)
                writer.write(b"DONE\r\n")
                for _ in range(1000):
                    line = await asyncio.wait_for(reader.readline(), 30)
                    if line.startswith(tag + b" "):
                        break
                    self._untagged(line)
                await self._command(reader, writer, b"NOOP")
        finally:
            writer.close()


async def run_clients(accounts: list[Acct], backend_url: str, secret: str, rate: float,
                      heartbeat: float, ca_file: str | None, seconds: float) -> None:
    poster = Poster(backend_url, secret)
    ctx = ssl.create_default_context(cafile=ca_file) if ca_file else None
    start = time.monotonic()
    deadline = start + seconds
    failures = []

    async def one(acct: Acct) -> None:
        try:
            await Client(acct, poster, heartbeat, ctx).run(deadline)
        except (OSError, ConnectionError, TimeoutError, ValueError) as e:
            failures.append(f"{acct.username}: {e!r}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = []
    for i, acct in enumerate(accounts):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(acct)))
    try:
        await asyncio.wait_for(stop.wait(), max(0.1, deadline - time.monotonic()))
    except TimeoutError:
        pass
    finally:
        for t in [*tasks, *poster.tasks]:
            t.cancel()
        await asyncio.gather(*tasks, *poster.tasks, return_exceptions=True)
    if failures:
        sys.stderr.write(f"{len(failures)} client(s) failed, first: {failures[0]}\n")


def accounts_from_db() -> list[Acct]:
    import psycopg2

    from rebreak_idle.accounts.secrets import decrypt_secret

    key = os.environ["ENCRYPTION_KEY"].encode()[:32]
    conn = psycopg2.connect(os.environ["DATABASE_URL"])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, user_id, email, imap_host, imap_port, imap_security, "
                        "imap_username, encrypted_secret FROM rebreak.mail_connections "
                        "WHERE is_active")
            rows = cur.fetchall()
    finally:
        conn.close()
    return [Acct(str(r[0]), str(r[1]), r[6] or r[2], decrypt_secret(r[7], key), r[3], r[4],
                 r[5] == "tls") for r in rows]


def _start(args: list[str]) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    return proc, json.loads(line)


async def _check(n: int, injections: int) -> dict:
    from .certs import make_test_certificates
    from .runner import Control, http_get_json

    certs = make_test_certificates(Path(tempfile.mkdtemp(prefix="bench-smoke-")))
    ls, ready = _start(["bench.loadserver", "--cert", certs["cert"], "--key", certs["key"],
                        "--max-seconds", "120"])
    sk, sready = _start(["bench.sink", "--admin-secret", "s" * 16, "--max-seconds", "120"])
    try:
        accounts = [Acct(f"id-{i}", f"user-{i}", f"smoke{i}@bench.test", "pw", "127.0.0.1",
                         ready["tls_port"] if i % 2 else ready["port"], bool(i % 2))
                    for i in range(n)]
        url = f"http://127.0.0.1:{sready['port']}"
        task = asyncio.ensure_future(run_clients(accounts, url, "s" * 16, 500.0, 5.0,
                                                 certs["ca"], 20.0))
        control = Control("127.0.0.1", ready["control_port"])
        t0 = time.monotonic()
        while time.monotonic() - t0 < 15:
            stats = await asyncio.to_thread(control.stats)
            if stats["idling"] >= n:
                break
            await asyncio.sleep(0.05)
        all_idle = time.monotonic() - t0
        sample = random.sample(accounts, min(injections, n))
        sent = [await asyncio.to_thread(control.inject, a.username) for a in sample]
        await asyncio.sleep(8)  # two heartbeats (DONE/NOOP/IDLE) happen meanwhile
        arrivals = await asyncio.to_thread(http_get_json, url + "/_bench/arrivals")
        got = {(cid, ex) for _, cid, reason, ex in arrivals if reason == "exists"}
        by_user = {a.username: a.id for a in accounts}
        lost = [s for s in sent if s is None or (by_user[s[0]], s[1]) not in got]
        stats = await asyncio.to_thread(control.stats)
        sink_stats = await asyncio.to_thread(http_get_json, url + "/_bench/stats")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return {"clients": n, "all_idle_s": round(all_idle, 3), "injected": len(sent),
                "lost": len(lost), "server": stats, "sink": sink_stats}
    finally:
        for p in (ls, sk):
            p.terminate()
            p.wait(10)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.smoke")
    sub = p.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("check")
    c.add_argument("--clients", type=int, default=300)
    c.add_argument("--injections", type=int, default=100)
    d = sub.add_parser("client")
    d.add_argument("--seconds", type=float, default=900.0)
    args = p.parse_args(argv)
    from .loopback import raise_nofile_limit

    raise_nofile_limit()
    if args.mode == "check":
        result = asyncio.run(_check(args.clients, args.injections))
        print(json.dumps(result))
        ok = result["lost"] == 0 and result["server"]["idling"] >= args.clients
        raise SystemExit(0 if ok else 1)
    env = os.environ
    asyncio.run(run_clients(
        accounts_from_db(), env.get("BACKEND_URL", "http://127.0.0.1:3016"),
        env["ADMIN_SECRET"], float(env.get("REBREAK_CONNECT_RATE", "50")),
        float(env.get("REBREAK_HEARTBEAT_INTERVAL", "120")), env.get("REBREAK_TLS_CA_FILE"),
        args.seconds))


if __name__ == "__main__":
    main()
