"""The descriptor limit: raised to the hard limit at start, the session capacity, EMFILE."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import uuid
from collections import Counter

import psycopg2
from twisted.internet.error import ConnectBindError, ConnectionRefusedError
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from rebreak_idle.accounts.secrets import encrypt_secret
from rebreak_idle.net.descriptors import (
    DESCRIPTOR_RESERVE,
    DescriptorLimit,
    is_out_of_descriptors,
    session_capacity,
)
from tests.support.daemon import TWIST, DaemonProcess
from tests.support.faults import (
    KEY,
    PASSWORDS,
    FaultCase,
    child_args,
    child_env,
    free_port,
    http_get,
    save_daemon_log,
    until,
)
from tests.support.leaks import ADMIN_SECRET

_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))
from rebreak_idle.net.descriptors import raise_soft_limit
print(*raise_soft_limit())
print(*resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def in_child(soft: int, hard: int) -> list[str]:
    """raise_soft_limit() in a child process started with these limits (this process's
    limit stays as it is)."""
    done = subprocess.run([sys.executable, "-c", _CHILD, str(soft), str(hard)],
                          capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.splitlines()


class LimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        import resource

        _soft, self.hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if self.hard == resource.RLIM_INFINITY or self.hard < 1100:
            self.skipTest("needs a finite hard descriptor limit above 1,100")

    def test_soft_limit_is_raised_to_the_hard_limit(self) -> None:
        limit, after = in_child(1024, self.hard)
        self.assertEqual(limit.split(), [str(self.hard), str(self.hard), "1024"])
        self.assertEqual(after.split(), [str(self.hard), str(self.hard)])

    def test_a_hard_limit_of_1024_stays(self) -> None:
        limit, _after = in_child(1024, 1024)
        self.assertEqual(limit.split(), ["1024", "1024", "1024"])


class CapacityTests(SynchronousTestCase):
    def test_capacity_is_the_limit_minus_the_reserve(self) -> None:
        self.assertEqual(session_capacity(DescriptorLimit(1024, 1024, 1024)),
                         1024 - DESCRIPTOR_RESERVE)
        self.assertEqual(session_capacity(DescriptorLimit(50, 50, 50)), 1)
        self.assertIsNone(session_capacity(DescriptorLimit(None, None, None)))

    def test_emfile_is_the_processs_limit(self) -> None:
        self.assertTrue(is_out_of_descriptors(ConnectBindError(errno.EMFILE, "Too many")))
        self.assertTrue(is_out_of_descriptors(OSError(errno.ENFILE, "File table overflow")))
        self.assertFalse(is_out_of_descriptors(ConnectionRefusedError()))
        self.assertFalse(is_out_of_descriptors(OSError(errno.ECONNRESET, "reset")))


#: Starts argv[3:] with the descriptor limits argv[1] (soft) and argv[2] (hard), as a
#: shell or PM2 would (``ulimit -Sn 1024``).
_LIMITED = ("import os, resource, sys; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
            "os.execv(sys.argv[3], sys.argv[3:])")
N_ACCOUNTS = 1500


class ProcessLimitTests(FaultCase, TestCase):
    """``twist rebreak-idle`` started with a soft limit of 1,024 and 1,500 accounts."""

    timeout = 180

    async def start_limited(self, soft: int, hard: int) -> tuple[DaemonProcess, int]:
        import resource

        own_soft, own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if own_hard != resource.RLIM_INFINITY and own_hard < max(hard, 2 * N_ACCOUNTS + 200):
            raise SkipTest(f"needs a hard descriptor limit of {2 * N_ACCOUNTS + 200} (the "
                           f"test's IMAP server holds the other end), this one has {own_hard}")
        if own_soft < 2 * N_ACCOUNTS + 200:
            resource.setrlimit(resource.RLIMIT_NOFILE, (own_hard, own_hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (own_soft, own_hard))
        await self.start_parts()
        password = PASSWORDS["ann"]
        secret = encrypt_secret(password, KEY)
        rows = []
        for n in range(N_ACCOUNTS):
            email = f"fd{n:04d}@limit.test"
            self.imap.add_user(email, password)
            rows.append((str(uuid.uuid4()), str(uuid.uuid4()), email, self.imap_port, secret))
        conn = psycopg2.connect(self.admin_dsn)
        with conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO rebreak.mail_connections (id, user_id, email, imap_host, "
                "imap_port, imap_security, auth_method, encrypted_secret) VALUES "
                "(%s, %s, %s, '127.0.0.1', %s, 'plain', 'password', %s)", rows)
        conn.close()
        port = free_port()
        args = child_args(status_endpoint=f"tcp:{port}:interface=127.0.0.1",
                          heartbeat_interval=30, refresh_interval=2, write_flush_interval=2,
                          connect_rate=2000)
        daemon = DaemonProcess(self.reactor, env=child_env(self.dsn, self.backend.url),
                               command=[sys.executable, "-c", _LIMITED, str(soft), str(hard),
                                        TWIST, "--log-format=text", "rebreak-idle", *args])
        daemon.start()
        self.addCleanup(lambda: save_daemon_log(self.id(), daemon.lines))
        self.addCleanup(daemon.kill)
        return daemon, port

    async def states(self, port: int) -> Counter[str]:
        code, body = await http_get(self.reactor, f"http://127.0.0.1:{port}/status",
                                    headers={"x-admin-secret": ADMIN_SECRET}, timeout=20)
        self.assertEqual(code, 200)
        return Counter(a["state"] for a in json.loads(body))

    async def metric(self, port: int, name: str) -> str:
        code, body = await http_get(self.reactor, f"http://127.0.0.1:{port}/metrics")
        self.assertEqual(code, 200)
        for line in body.decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return line
        raise AssertionError(f"no {name} in /metrics")

    async def test_soft_limit_is_raised_and_every_account_goes_idle(self) -> None:
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard == resource.RLIM_INFINITY:
            hard = 4 * N_ACCOUNTS
        daemon, _port = await self.start_limited(1024, hard)
        line = await daemon.wait_for(r"\[idle/db\] file descriptor limit", deadline=30)
        self.assertIn(f"file descriptor limit {hard}, raised from 1024", line)
        await until(lambda: self.imap.idling_connections() == N_ACCOUNTS, deadline=90,
                    what=f"{N_ACCOUNTS} sessions idling")
        self.assertEqual(daemon.count("Too many open files|no file descriptor left"), 0)
        self.assertEqual(daemon.count("file descriptor limit is reached"), 0)
        self.assertEqual(await daemon.terminate(deadline=30), 0)

    async def test_a_limit_that_cannot_be_raised_holds_the_rest_back(self) -> None:
        daemon, port = await self.start_limited(1024, 1024)
        capacity = 1024 - DESCRIPTOR_RESERVE
        line = await daemon.wait_for(r"\[idle/db\] file descriptor limit", deadline=30)
        self.assertIn("file descriptor limit 1024 (hard 1024)", line)
        self.assertIn(f"up to {capacity} sessions", line)
        await until(lambda: self.imap.idling_connections() == capacity, deadline=90,
                    what=f"{capacity} sessions idling")
        waiting = N_ACCOUNTS - capacity
        self.assertEqual(await self.metric(port, "rebreak_idle_session_capacity"),
                         f"rebreak_idle_session_capacity {capacity:.1f}")
        self.assertEqual(
            await self.metric(port, 'rebreak_idle_sessions{state="waiting-for-descriptors"}'),
            f'rebreak_idle_sessions{{state="waiting-for-descriptors"}} {waiting:.1f}')
        # a few refreshes later: still exactly the capacity, said once, no EMFILE loop
        await daemon.wait_for(r"\[idle/db\] refreshed", count=4, deadline=30)
        states = await self.states(port)
        self.assertEqual(states["waiting-for-descriptors"], waiting, states)
        self.assertEqual(self.imap.idling_connections(), capacity)
        self.assertEqual(daemon.count("file descriptor limit is reached"), 1, daemon.tail())
        self.assertEqual(daemon.count("Too many open files|no file descriptor left"), 0)
        errors = self.sql("SELECT count(*) FROM rebreak.mail_connections "
                          "WHERE last_connect_error IS NOT NULL")[0][0]
        self.assertEqual(errors, 0)
        self.assertEqual(await daemon.terminate(deadline=30), 0)
