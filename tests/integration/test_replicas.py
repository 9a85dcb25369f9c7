"""Several whole daemons (``twist rebreak-idle`` with REBREAK_LEASES=on) share 300 accounts.

Parts, all real and on 127.0.0.1: one throwaway PostgreSQL, the load IMAP server of
``bench/loadserver.py`` (accepts any login, IDLE), the backend sink of ``bench/sink.py``,
and 3 (then 4) daemon processes with short leases (TTL 6 s, renewal every 2 s).

"Watched by a replica" is read from that replica's ``GET /status``: an account with a
session in state ``idle`` is watched; any session that exists at all (connecting, idle, ...)
counts for double watching. A sampler reads the status of every replica every 0.2 s — the
sampler *is* the measurement (its period bounds the measuring error); every wait has a
deadline. The leases table is checked against /status at steady state.

Checked: each account watched by exactly one replica at steady state; SIGKILL of one
replica → all its accounts watched again within TTL + renew (+ the supervisor's refresh
debounce and the loopback connect); a fourth replica → shares rebalance to 75 each; over
the whole run no account unwatched for longer than that bound, none watched twice for
longer than one renewal interval; a clean stop releases every lease.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from bench.runner import free_port, ready_line

ROOT = Path(__file__).resolve().parents[2]
N_ACCOUNTS = 300
TTL = 6.0
RENEW = 2.0
SAMPLE = 0.2
DEBOUNCE = 1.0  # the supervisor's refresh debounce after on_change
CONNECT_SLACK = 1.0  # refresh query + ramp + loopback LOGIN/SELECT/IDLE, and sampling
ADMIN_SECRET = "replica-test-admin-secret"
ENCRYPTION_KEY = "replica-test-encryption-key-0123456789"


def _missing_parts() -> str | None:
    twist = ROOT / ".venv" / "bin" / "twist"
    if not twist.exists() and shutil.which("twist") is None:
        return "the twist command is not installed"
    for module in ("bench.loadserver", "bench.sink", "rebreak_idle.service"):
        try:
            __import__(module)
        except ImportError as e:
            return f"{module} is missing ({e})"
    source = (ROOT / "rebreak_idle" / "service.py").read_text(encoding="utf-8")
    if "LeaseKeeper" not in source:
        return "service.py does not wire the LeaseKeeper yet"
    return None


class Timeline:
    """Per-account watch intervals from the samples: the longest unwatched gap and the
    longest double watch, over the whole run."""

    def __init__(self, ids: set[str]) -> None:
        self.ids = ids
        self.armed = False  # gaps count once every account was watched
        self.gap_since: dict[str, float] = {}
        self.double_since: dict[str, float] = {}
        self.max_gap = 0.0
        self.max_gap_id: str | None = None
        self.max_double = 0.0

    def add(self, t: float, present: dict[str, set[str]], idle: dict[str, set[str]]) -> None:
        watchers: dict[str, int] = {}
        for ids in idle.values():
            for i in ids:
                watchers[i] = watchers.get(i, 0) + 1
        holders: dict[str, int] = {}
        for ids in present.values():
            for i in ids:
                holders[i] = holders.get(i, 0) + 1
        if not self.armed and all(watchers.get(i, 0) >= 1 for i in self.ids):
            self.armed = True
        for i in self.ids:
            if self.armed and watchers.get(i, 0) == 0:
                self.gap_since.setdefault(i, t)
            elif i in self.gap_since:
                gap = t - self.gap_since.pop(i)
                if gap > self.max_gap:
                    self.max_gap, self.max_gap_id = gap, i
            if holders.get(i, 0) >= 2:
                self.double_since.setdefault(i, t)
            elif i in self.double_since:
                self.max_double = max(self.max_double, t - self.double_since.pop(i))

    def close(self, t: float) -> None:
        for since in self.gap_since.values():
            self.max_gap = max(self.max_gap, t - since)
        for since in self.double_since.values():
            self.max_double = max(self.max_double, t - since)


class ReplicaProcessTests(TestCase):
    timeout = 240

    def setUp(self) -> None:
        missing = _missing_parts()
        if missing:
            raise SkipTest(f"needs the whole daemon: {missing}")
        from rebreak_idle.testing.pg import fresh_database

        self.dsn = fresh_database()
        self.dir = Path(tempfile.mkdtemp(prefix="rebreak-replicas-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.status_ports: dict[str, int] = {}
        self.addCleanup(self._kill_all)

        self.imap = self._helper([sys.executable, "-m", "bench.loadserver", "--tls-port", "-1",
                                  "--max-seconds", "600"], "load server")
        imap_port = ready_line(self.imap, "load server")["port"]
        self.sink = self._helper([sys.executable, "-m", "bench.sink", "--admin-secret",
                                  ADMIN_SECRET, "--max-seconds", "600"], "sink")
        self.backend_port = ready_line(self.sink, "sink")["port"]
        self.ids = self._seed(imap_port)

        from twisted.web.client import Agent, HTTPConnectionPool

        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=self.pool)

    def _helper(self, argv: list[str], what: str) -> subprocess.Popen:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
        self.addCleanup(self._stop_proc, proc)
        return proc

    @staticmethod
    def _stop_proc(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()

    def _kill_all(self) -> None:
        for proc in self.procs.values():
            self._stop_proc(proc)

    def _seed(self, port: int) -> set[str]:
        from rebreak_idle.accounts.secrets import encrypt_secret

        secret = encrypt_secret("password", ENCRYPTION_KEY.encode()[:32])
        buf = io.StringIO()
        ids = set()
        for i in range(N_ACCOUNTS):
            cid = str(uuid.uuid4())
            ids.add(cid)
            email = f"replica{i:03d}@example.test"
            buf.write(f"{cid}\t{uuid.uuid4()}\t{email}\t127.0.0.1\t{port}\tplain\t{email}\t"
                      f"password\t{secret}\tt\n")
        buf.seek(0)
        with contextlib.closing(psycopg2.connect(self.dsn)) as c, c, c.cursor() as cur:
            cur.copy_expert(
                "COPY rebreak.mail_connections (id, user_id, email, imap_host, imap_port, "
                "imap_security, imap_username, auth_method, encrypted_secret, is_active) "
                "FROM STDIN", buf)
        return ids

    def start_replica(self, name: str) -> None:
        port = free_port()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("REBREAK_") and k not in (
                   "DATABASE_URL", "ADMIN_SECRET", "ENCRYPTION_KEY", "BACKEND_URL", "NODE_ENV")}
        env.update({
            "DATABASE_URL": self.dsn,
            "ADMIN_SECRET": ADMIN_SECRET,
            "ENCRYPTION_KEY": ENCRYPTION_KEY,
            "BACKEND_URL": f"http://127.0.0.1:{self.backend_port}",
            "REBREAK_LEASES": "on",
            "REBREAK_REPLICA_ID": name,
            "REBREAK_LEASE_TTL": str(TTL),
            "REBREAK_LEASE_RENEW": str(RENEW),
            "REBREAK_CONNECT_RATE": "2000",
            # one loopback host: the timings below are the leases', not the login budget's
            "REBREAK_HOST_LOGIN_RATE": "2000",
            "REBREAK_HOST_LOGIN_BURST": "2000",
            "REBREAK_STATUS_ENDPOINT": f"tcp:{port}:interface=127.0.0.1",
            "REBREAK_SHUTDOWN_TIMEOUT": "5",
        })
        twist = ROOT / ".venv" / "bin" / "twist"
        argv = [str(twist) if twist.exists() else "twist", "rebreak-idle"]
        out = open(self.dir / f"{name}.log", "ab")
        try:
            self.procs[name] = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out,
                                                stderr=subprocess.STDOUT,
                                                start_new_session=True)
        finally:
            out.close()
        self.status_ports[name] = port

    # -- sampling ------------------------------------------------------------------------

    async def status(self, name: str) -> list[dict] | None:
        from twisted.web.client import readBody
        from twisted.web.http_headers import Headers

        url = f"http://127.0.0.1:{self.status_ports[name]}/status".encode()
        try:
            response = await self.agent.request(
                b"GET", url, Headers({b"x-admin-secret": [ADMIN_SECRET.encode()],
                                      b"accept": [b"application/json"]}))
            body = await readBody(response)
        except Exception:
            return None  # not listening yet, or killed
        if response.code != 200:
            return None
        return json.loads(body)

    async def sample(self) -> tuple[float, dict[str, set[str]], dict[str, set[str]]]:
        names = [n for n, p in self.procs.items() if p.poll() is None]
        answers = await gatherResults([Deferred.fromCoroutine(self.status(n)) for n in names])
        t = time.monotonic()
        present: dict[str, set[str]] = {}
        idle: dict[str, set[str]] = {}
        for name, answer in zip(names, answers, strict=True):
            answer = answer or []
            present[name] = {a["id"] for a in answer if a.get("state") != "invalid"}
            idle[name] = {a["id"] for a in answer if a.get("state") in ("idle", "polling")}
        return t, present, idle

    async def wait_for(self, what: str, done: Callable[[dict[str, set[str]]], bool],
                       deadline: float) -> float:
        """Sample until ``done(idle)``; the monotonic time it first held."""
        end = time.monotonic() + deadline
        for _ in range(int(deadline / SAMPLE) + 50):
            t, present, idle = await self.sample()
            self.timeline.add(t, present, idle)
            if done(idle):
                return t
            if time.monotonic() > end:
                break
            await deferLater(reactor, SAMPLE, lambda: None)
        counts = {n: len(s) for n, s in idle.items()}
        self.fail(f"{what}: not reached within {deadline}s (idle sessions: {counts})")

    def partition(self, names: list[str], size: int | None = None) -> Callable[..., bool]:
        def done(idle: dict[str, set[str]]) -> bool:
            sets = [idle.get(n, set()) for n in names]
            union: set[str] = set().union(*sets)
            if union != self.ids or sum(map(len, sets)) != len(self.ids):
                return False
            return size is None or all(len(s) == size for s in sets)

        return done

    def table(self) -> dict[str, str]:
        with contextlib.closing(psycopg2.connect(self.dsn)) as c, c, c.cursor() as cur:
            cur.execute("SELECT connection_id::text, replica_id FROM rebreak_idle.leases "
                        "WHERE replica_id IS NOT NULL AND expires_at > now()")
            return dict(cur.fetchall())

    # -- the test ------------------------------------------------------------------------

    def test_replicas_share_take_over_and_rebalance(self) -> Deferred:
        return Deferred.fromCoroutine(self._scenario())

    async def _scenario(self) -> None:
        self.timeline = Timeline(self.ids)
        figures: dict[str, Any] = {}
        names = ["r1", "r2", "r3"]
        t0 = time.monotonic()
        for n in names:
            self.start_replica(n)
        t = await self.wait_for("3 replicas share the accounts", self.partition(names, 100),
                                60)
        figures["steady_3_after_s"] = round(t - t0, 2)
        _, _, idle = await self.sample()
        table = self.table()
        for n in names:
            self.assertEqual({c for c, r in table.items() if r == n}, idle[n])

        # SIGKILL one: its accounts come back within TTL + renew (+ debounce, connect)
        victim = "r2"
        t_kill = time.monotonic()
        self.procs[victim].send_signal(signal.SIGKILL)
        self.procs[victim].wait(timeout=30)
        survivors = ["r1", "r3"]
        t = await self.wait_for("survivors take over", self.partition(survivors), TTL + RENEW
                                + 20)
        figures["takeover_after_kill_s"] = round(t - t_kill, 2)
        self.assertLessEqual(t - t_kill, TTL + RENEW + DEBOUNCE + CONNECT_SLACK)
        t = await self.wait_for("survivors balanced", self.partition(survivors, 150), 30)

        # a fourth replica: 75 each
        t_new = time.monotonic()
        self.start_replica("r4")
        four = ["r1", "r3", "r4"]
        await self.wait_for("fourth replica balanced", self.partition(four, 100), 60)
        figures["rebalance_after_start_s"] = round(time.monotonic() - t_new, 2)
        # r2 stays dead: three live replicas now hold 100 each; bring a fourth live one
        self.start_replica("r5")
        t_new = time.monotonic()
        five = ["r1", "r3", "r4", "r5"]
        await self.wait_for("four live replicas balanced", self.partition(five, 75), 60)
        figures["rebalance_to_4_after_start_s"] = round(time.monotonic() - t_new, 2)
        t_end, present, idle = await self.sample()
        self.timeline.add(t_end, present, idle)
        self.timeline.close(t_end)
        figures["max_unwatched_s"] = round(self.timeline.max_gap, 2)
        figures["max_double_watched_s"] = round(self.timeline.max_double, 2)
        self.assertLessEqual(self.timeline.max_gap, TTL + RENEW + DEBOUNCE + CONNECT_SLACK)
        self.assertLessEqual(self.timeline.max_double, RENEW + SAMPLE)

        # a clean stop releases every lease
        for n in five:
            self.procs[n].send_signal(signal.SIGTERM)
        for n in five:
            # twist ends a SIGTERM'd run by re-raising the signal once the reactor stopped
            self.assertIn(self.procs[n].wait(timeout=60), (0, -signal.SIGTERM))
            log = (self.dir / f"{n}.log").read_text(encoding="utf-8", errors="replace")
            self.assertIn(f"replica {n} released its", log)
        self.assertEqual(self.table(), {})
        sys.stderr.write(f"\nreplica figures (TTL {TTL:g}s, renew {RENEW:g}s): "
                         f"{json.dumps(figures)}\n")
