"""The bench's load IMAP server as the replica bench reads it: it must see an account that
is selected on two connections at once (the "no account on two connections" check), keep
injecting into the account's remaining connection when one of the two ends, and count
logins per second (the login rate one host sees during a takeover).

The server runs as its own process on 127.0.0.1 (as the bench runs it); the clients are
plain blocking sockets with a timeout on every read.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial.unittest import TestCase

from bench.runner import Control, ready_line

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0


class Client:
    """One IMAP connection: LOGIN and SELECT INBOX, then idle."""

    def __init__(self, port: int, user: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.reader = self.sock.makefile("rb")
        self.reader.readline()  # greeting
        self.command(b"a1 LOGIN " + user.encode() + b" secret")
        self.command(b"a2 SELECT INBOX")

    def command(self, line: bytes) -> list[bytes]:
        self.sock.sendall(line + b"\r\n")
        tag = line.split(b" ", 1)[0]
        lines = []
        for _ in range(100):
            got = self.reader.readline()
            if not got:
                raise ConnectionError("closed")
            lines.append(got)
            if got.startswith(tag + b" "):
                return lines
        raise AssertionError("no tagged answer")

    def read_line(self) -> bytes:
        return self.reader.readline()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.reader.close()  # the file object holds the socket open otherwise
            self.sock.close()


class LoadServerCountsTests(TestCase):
    def setUp(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.loadserver", "--tls-port", "-1", "--max-seconds",
             "120"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        self.addCleanup(self._stop)
        ready = ready_line(self.proc, "load server")
        self.port = ready["port"]
        self.control = Control("127.0.0.1", ready["control_port"])
        self.addCleanup(self.control.close)

    def _stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def stats_until(self, check, what: str) -> dict:
        deadline = time.monotonic() + TIMEOUT
        while True:
            stats = self.control.stats()
            if check(stats):
                return stats
            if time.monotonic() > deadline:
                self.fail(f"not within {TIMEOUT}s: {what} ({stats})")
            time.sleep(0.02)

    def test_one_connection_per_account(self) -> None:
        a, b = Client(self.port, "alice"), Client(self.port, "bob")
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        stats = self.control.stats()
        self.assertEqual((stats["max_selected_per_user"], stats["double_selected"]), (1, 0))

    def test_double_watch_seen_and_injection_follows_the_survivor(self) -> None:
        first, second = Client(self.port, "alice"), Client(self.port, "alice")
        self.addCleanup(first.close)
        self.addCleanup(second.close)
        stats = self.control.stats()
        self.assertEqual((stats["max_selected_per_user"], stats["double_selected"]), (2, 1))

        second.close()  # the connection the server would inject into ends
        self.stats_until(lambda s: s["connections"] == 1, "the second connection gone")
        words = self.control.ask("inject alice").split()
        self.assertEqual(words[:3], ["ok", "alice", "4"])
        self.assertEqual(first.read_line(), b"* 4 EXISTS\r\n")
        # the maximum is a record of the whole run
        self.assertEqual(self.control.stats()["max_selected_per_user"], 2)

    def test_logins_per_second(self) -> None:
        since = int(time.time())
        clients = [Client(self.port, f"user{i}") for i in range(5)]
        for c in clients:
            self.addCleanup(c.close)
        per_second = json.loads(self.control.ask(f"logins {since}"))
        self.assertEqual(sum(per_second.values()), 5)
        self.assertTrue(all(int(t) >= since for t in per_second))
        self.assertEqual(json.loads(self.control.ask(f"logins {int(time.time()) + 5}")), {})
