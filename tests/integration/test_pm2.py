"""contrib/ecosystem.config.js under a real PM2 (installed from npm into a temporary prefix):
the daemon starts through the file with its settings from the environment, connects to the
test IMAP server, logs its own lines unchanged into PM2's log, and ``pm2 stop`` is a
graceful stop (LOGOUT, exit 0 recorded by PM2).

Needs ``npm`` (``.ci/run`` installs it); without it the test is skipped, unless
``REBREAK_REQUIRE_DOVECOT=1`` (CI), where a missing npm is a failure.
"""

from __future__ import annotations

import collections
import json
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from tests.support.daemon import TWIST, DaemonProcess
from tests.support.faults import (
    FAST,
    PASSWORDS,
    FaultCase,
    child_env,
    free_port,
    http_get,
    save_daemon_log,
    until,
)
from tests.support.tools import tool

ROOT = Path(__file__).resolve().parents[2]
ECOSYSTEM = ROOT / "contrib" / "ecosystem.config.js"
SHUTDOWN_TIMEOUT = 3.0


def _npm() -> str:
    return tool("npm", package="npm")


def _two_free_ports() -> int:
    """A loopback port p with p + 1 also free (at the time of asking)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports")


def _settings_env(**overrides: Any) -> dict[str, str]:
    """The suite's short intervals as the daemon's environment variables (the process
    file passes no flags: every setting comes from the environment, as in production)."""
    return {"REBREAK_" + name.upper(): str(value)
            for name, value in dict(FAST, **overrides).items()}


class PM2Tests(FaultCase, TestCase):
    timeout = 300

    async def command(self, argv: list[str], env: dict[str, str], deadline: float = 60.0
                  ) -> tuple[int, str]:
        """One command to its end: (exit code, output)."""
        process = DaemonProcess(self.reactor, env=env, command=argv)
        process.start()
        code = await process.exited(deadline)
        return code, process.output

    async def pm2_binary(self) -> str:
        """``pm2`` installed once per test run under trial's temporary directory."""
        npm = _npm()
        prefix = Path.cwd() / "pm2-prefix"
        binary = prefix / "node_modules" / ".bin" / "pm2"
        if not binary.exists():
            code, output = await self.command(
                [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "pm2"],
                env={"npm_config_update_notifier": "false"}, deadline=240)
            self.assertEqual(code, 0, f"npm install pm2 failed:\n{output}")
        return str(binary)

    def test_pm2_stop_sends_sigint(self) -> Any:
        """PM2's default stop signal."""
        return self.start_and_stop("SIGINT")

    def test_pm2_kill_signal_sigterm(self) -> Any:
        """``PM2_KILL_SIGNAL=SIGTERM`` in the environment of the PM2 daemon."""
        return self.start_and_stop("SIGTERM")

    async def start_and_stop(self, signal_name: str) -> None:
        pm2 = await self.pm2_binary()
        await self.start_parts()
        self.add_account("ann@pm2.test", PASSWORDS["ann"])

        home = tempfile.mkdtemp(prefix="rebreak-pm2-home-")
        port = free_port()
        env = {**child_env(self.dsn, self.backend.url),
               **_settings_env(shutdown_timeout=SHUTDOWN_TIMEOUT,
                               status_endpoint=f"tcp:{port}:interface=127.0.0.1"),
               "PM2_HOME": home, "REBREAK_IDLE_VENV": str(Path(TWIST).parent.parent)}
        if signal_name != "SIGINT":
            env["PM2_KILL_SIGNAL"] = signal_name
        self.addCleanup(shutil.rmtree, home, True)
        # PM2 lists its own processes: "pm2 kill" stops the daemon it started and the app
        self.addCleanup(self.command, [pm2, "kill"], env)

        code, output = await self.command([pm2, "start", str(ECOSYSTEM)], env)
        self.assertEqual(code, 0, output)
        [app] = await self.jlist(pm2, env)
        out_log = Path(app["pm2_env"]["pm_out_log_path"])
        self.addCleanup(lambda: save_daemon_log(self.id(), self.log_lines(out_log)))
        self.assertEqual(app["pm2_env"]["kill_timeout"], (SHUTDOWN_TIMEOUT + 5) * 1000)

        connected = r"\[idle/ann@pm2\.test\] connected \(127\.0\.0\.1:\d+\)"
        await until(lambda: any(re.search(connected, line)
                                for line in self.log_lines(out_log)),
                    deadline=30, what=f"{connected!r} in {out_log}")
        await self.idle("ann@pm2.test")
        # our own line, unchanged: the daemon's timestamp first, no prefix added by PM2
        [line] = [line for line in self.log_lines(out_log) if re.search(connected, line)]
        self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[[^\]]+\] "
                               r"\[idle/ann@pm2\.test\] connected \(")

        logouts = self.imap.commands[b"LOGOUT"]
        code, output = await self.command([pm2, "stop", "rebreak-idle"], env,
                                      deadline=2 * SHUTDOWN_TIMEOUT + 20)
        self.assertEqual(code, 0, output)
        [app] = await self.jlist(pm2, env)
        self.assertEqual(app["pm2_env"]["status"], "stopped")
        self.assertEqual(app["pm2_env"]["exit_code"], 0, "\n".join(self.log_lines(out_log)))
        self.assertEqual(self.imap.commands[b"LOGOUT"] - logouts, 1)
        lines = self.log_lines(out_log)
        graceful = f"received {signal_name}: stopping gracefully"
        self.assertTrue(any(graceful in x for x in lines), lines)
        self.assertTrue(any("rebreak-idle stopped" in x for x in lines), lines)
        self.assertFalse(any("Traceback" in x for x in lines), lines)

    async def test_two_instances_with_leases(self) -> None:
        """``REBREAK_IDLE_INSTANCES=2``: two replicas on this host, each account watched
        exactly once (one selected IDLE session per account on the IMAP server, one lease
        each, both replicas holding some), and ``pm2 stop rebreak-idle`` stops both and
        releases every lease."""
        n = 40
        pm2 = await self.pm2_binary()
        await self.start_parts()
        users = [f"u{i:02d}@pm2.test" for i in range(n)]
        for user in users:
            self.add_account(user, PASSWORDS["ann"])
        home = tempfile.mkdtemp(prefix="rebreak-pm2-home-")
        self.addCleanup(shutil.rmtree, home, True)
        port = _two_free_ports()  # the second instance listens on port + 1
        env = {**child_env(self.dsn, self.backend.url),
               **_settings_env(shutdown_timeout=SHUTDOWN_TIMEOUT, lease_ttl=6, lease_renew=2,
                               status_endpoint=f"tcp:{port}:interface=127.0.0.1"),
               "PM2_HOME": home, "REBREAK_IDLE_VENV": str(Path(TWIST).parent.parent),
               "REBREAK_IDLE_INSTANCES": "2"}
        self.addCleanup(self.command, [pm2, "kill"], env)

        code, output = await self.command([pm2, "start", str(ECOSYSTEM)], env)
        self.assertEqual(code, 0, output)
        apps = await self.jlist(pm2, env)
        self.assertEqual(sorted(a["name"] for a in apps), ["rebreak-idle-0", "rebreak-idle-1"])
        for a in apps:
            out_log = Path(a["pm2_env"]["pm_out_log_path"])
            self.addCleanup(lambda p=out_log, name=a["name"]: save_daemon_log(
                f"{self.id()}.{name}", self.log_lines(p)))

        def leases() -> dict[str, str]:
            return dict(self.sql("SELECT connection_id::text, replica_id FROM "
                                 "rebreak_idle.leases WHERE replica_id IS NOT NULL "
                                 "AND expires_at > now()"))

        def settled() -> bool:
            held = leases()
            return (len(held) == n and len(set(held.values())) == 2
                    and self.imap.idling_connections() == n
                    and all(self.imap.idling_connections(u) == 1 for u in users))

        await until(settled, deadline=60, what="every account watched once by two replicas")
        held = leases()
        self.assertEqual(sorted(set(held.values())),
                         [f"{socket.gethostname()}-0", f"{socket.gethostname()}-1"])
        self.assertEqual(sorted(collections.Counter(held.values()).values()), [n // 2] * 2)
        # each instance answers on its own status port
        for p in (port, port + 1):
            code, _ = await http_get(self.reactor, f"http://127.0.0.1:{p}/readyz")
            self.assertEqual(code, 200)

        code, output = await self.command([pm2, "stop", "rebreak-idle"], env,
                                          deadline=2 * SHUTDOWN_TIMEOUT + 30)
        self.assertEqual(code, 0, output)
        apps = await self.jlist(pm2, env)
        self.assertEqual([a["pm2_env"]["status"] for a in apps], ["stopped", "stopped"])
        self.assertEqual([a["pm2_env"]["exit_code"] for a in apps], [0, 0])
        self.assertEqual(self.sql("SELECT count(*) FROM rebreak_idle.leases "
                                  "WHERE replica_id IS NOT NULL"), [(0,)])
        self.assertEqual(self.imap.idling_connections(), 0)

    async def jlist(self, pm2: str, env: dict[str, str]) -> list[dict[str, Any]]:
        code, output = await self.command([pm2, "jlist"], env)
        self.assertEqual(code, 0, output)
        # the JSON document is the last line (PM2 may print notices before it)
        return json.loads(output.strip().splitlines()[-1])

    @staticmethod
    def log_lines(path: Path) -> list[str]:
        return path.read_text().splitlines() if path.exists() else []


class EcosystemFileTests(TestCase):
    def test_nothing_secret_in_the_file(self) -> None:
        text = ECOSYSTEM.read_text()
        for name in ("DATABASE_URL", "ADMIN_SECRET", "ENCRYPTION_KEY"):
            self.assertNotRegex(text, rf"{name}\s*:", f"{name} is set in the process file")
        self.assertIn('interpreter: "none"', text)
