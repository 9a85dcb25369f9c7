"""Log formats: text by default (also when stdout is a pipe), JSON lines on request, no
secret in either; twist / twistd / the .tac start and stop cleanly on SIGTERM."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from treq.client import HTTPClient
from twisted.application.twist import _options as twist_options
from twisted.application.twist._options import TwistOptions
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel, jsonFileLogObserver, textFileLogObserver
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from rebreak_idle.ops import logs
from rebreak_idle.ops.logs import configure_runner_logging, event_as_json, json_observer
from rebreak_idle.ops.logs import text_observer as make_text_observer
from rebreak_idle.options import Options

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ADMIN = "adm1n-s3cret-for-logs"
KEY = "enc-key-0123456789-0123456789-abcdef"
DB_PASSWORD = "db-pa55-w0rd"
SECRETS = (ADMIN, KEY, DB_PASSWORD)
ENV = {
    "DATABASE_URL": f"postgresql://app:{DB_PASSWORD}@127.0.0.1:1/rebreak",
    "ADMIN_SECRET": ADMIN,
    "ENCRYPTION_KEY": KEY,
    "REBREAK_STATUS_ENDPOINT": "tcp:0:interface=127.0.0.1",
}
LISTENING = re.compile(r"status server listening on (127\.0\.0\.1:\d+)")
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[[^\]]+\] ")


def event(**fields: Any) -> dict[str, Any]:
    base = {"log_format": "[idle/{email}] connected ({host}:{port})", "log_level": LogLevel.info,
            "log_namespace": "rebreak_idle.session", "log_time": 1_767_225_600.25,
            "email": "a@example.com", "host": "imap.example.com", "port": 993,
            "account_id": "0a1b"}
    base.update(fields)
    return base


class JsonEventTests(SynchronousTestCase):
    def test_fields(self) -> None:
        record = event_as_json(event(extra=[1, "two", {"three": 3.0}], log_source=object()))
        self.assertEqual(record["time"], "2026-01-01T00:00:00.250+00:00")
        self.assertEqual(record["level"], "info")
        self.assertEqual(record["message"], "[idle/a@example.com] connected (imap.example.com:993)")
        self.assertEqual(record["namespace"], "rebreak_idle.session")
        self.assertEqual(record["account_id"], "0a1b")
        self.assertEqual((record["email"], record["host"], record["port"]),
                         ("a@example.com", "imap.example.com", 993))
        self.assertEqual(record["extra"], [1, "two", {"three": 3.0}])
        self.assertFalse([k for k in record if k.startswith("log_")])

    def test_non_json_values_and_secret_names_are_skipped(self) -> None:
        record = event_as_json(event(thing=object(), nan=float("nan"), blob=b"bytes",
                                     nested={"x": object()}, admin_secret="a", password="p",
                                     access_token="t", database_url="postgresql://x"))
        for key in ("thing", "nan", "blob", "nested", "admin_secret", "password",
                    "access_token", "database_url"):
            self.assertNotIn(key, record)
        json.dumps(record)

    def test_failure_traceback_is_part_of_the_message(self) -> None:
        try:
            raise ValueError("boom")
        except ValueError:
            failure = Failure()
        record = event_as_json(event(log_format="scan failed", log_failure=failure,
                                     log_level=LogLevel.critical))
        self.assertTrue(record["message"].startswith("scan failed\nTraceback"))
        self.assertIn("ValueError: boom", record["message"])
        self.assertEqual(record["level"], "critical")

    def test_legacy_events(self) -> None:
        from twisted.python import log as legacy

        out = io.StringIO()
        observer = json_observer(out)
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        legacy.msg("old style", system="sys")
        line = next(json.loads(x) for x in out.getvalue().splitlines() if "old style" in x)
        self.assertEqual(line["message"], "old style")
        self.assertNotIn("format", line)


class ObserverTests(SynchronousTestCase):
    def emit(self, observer: Any, **fields: Any) -> None:
        log = Logger(namespace="rebreak_idle.test", observer=observer)
        log.info("[idle/{email}] connect failed: {error}", account_id="0a1b", **fields)

    def test_text_lines(self) -> None:
        out = io.StringIO()
        self.emit(make_text_observer(out), email="a@example.com", error="timeout")
        line = out.getvalue()
        self.assertRegex(line, TEXT_LINE)
        self.assertIn("[rebreak_idle.test#info] [idle/a@example.com] connect failed: timeout",
                      line)

    def test_secret_values_are_masked_in_both_formats(self) -> None:
        for factory in (make_text_observer, json_observer):
            out = io.StringIO()
            self.emit(factory(out, SECRETS), email="a@example.com",
                      error=f"server said {ADMIN} and {KEY} and {DB_PASSWORD}")
            text = out.getvalue()
            for secret in SECRETS:
                self.assertNotIn(secret, text)
            # the message, and in JSON also the "error" field
            self.assertEqual(text.count("***"), 3 if factory is make_text_observer else 6)

    def test_short_secrets_are_not_masked(self) -> None:
        out = io.StringIO()
        self.emit(make_text_observer(out, ["a", ""]), email="a@example.com", error="x")
        self.assertIn("a@example.com", out.getvalue())

    def test_make_observer_rejects_unknown_formats(self) -> None:
        with self.assertRaises(ValueError):
            logs.make_observer("xml", io.StringIO())


class RunnerConfigurationTests(SynchronousTestCase):
    def twist(self, **options: Any) -> dict[str, Any]:
        parent = {"fileLogObserverFactory": jsonFileLogObserver, "logFormat": "json"}
        parent.update(options)
        return parent

    def test_twist_defaults_to_text_even_when_piped(self) -> None:
        parent = self.twist()
        configure_runner_logging(parent, "text", False, argv=["rebreak-idle"])
        self.assertEqual(parent["fileLogObserverFactory"].log_format, "text")
        self.assertEqual(parent["logFormat"], "text")

    def test_our_setting_wins(self) -> None:
        parent = self.twist(fileLogObserverFactory=textFileLogObserver, logFormat="text")
        configure_runner_logging(parent, "json", True,
                                 argv=["--log-format", "text", "rebreak-idle"])
        self.assertEqual(parent["fileLogObserverFactory"].log_format, "json")

    def test_twists_own_choice_is_kept_when_ours_is_unset(self) -> None:
        parent = self.twist()
        configure_runner_logging(parent, "text", False,
                                 argv=["--log-format=json", "rebreak-idle"])
        self.assertEqual(parent["fileLogObserverFactory"].log_format, "json")
        parent = self.twist()
        configure_runner_logging(parent, "text", False,
                                 argv=["rebreak-idle", "--log-format", "json"])
        self.assertEqual(parent["fileLogObserverFactory"].log_format, "text")

    def test_twist_factory_masks_secrets(self) -> None:
        parent = self.twist()
        configure_runner_logging(parent, "json", True, SECRETS, argv=["rebreak-idle"])
        out = io.StringIO()
        Logger(observer=parent["fileLogObserverFactory"](out)).info(
            "x {v}", v=ADMIN, account_id="1")
        self.assertEqual(json.loads(out.getvalue())["message"], "x ***")

    def test_twistd_json_goes_through_its_logger_option(self) -> None:
        self.addCleanup(logs.twistd_choice.clear)
        parent = {"logger": None, "nodaemon": True, "logfile": None, "syslog": False}
        configure_runner_logging(parent, "json", True, SECRETS)
        self.assertEqual(parent["logger"], "rebreak_idle.ops.logs.twistd_observer")
        self.assertEqual(logs.twistd_choice["logfile"], None)
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        Logger(observer=logs.twistd_observer()).info("x {v}", v=KEY)
        self.assertEqual(json.loads(out.getvalue())["message"], "x ***")

        daemon = {"logger": None, "nodaemon": False, "logfile": None, "syslog": False}
        configure_runner_logging(daemon, "json", True)
        self.assertEqual(logs.twistd_choice["logfile"], "twistd.log")

    def test_twistd_text_and_operator_choices_are_left_alone(self) -> None:
        cases = [
            ("text", {"logger": None, "nodaemon": True, "logfile": None}),
            ("json", {"logger": "my.observer", "nodaemon": True, "logfile": None}),
            ("json", {"logger": None, "nodaemon": True, "logfile": None, "syslog": True}),
            ("json", {"logger": None, "nodaemon": False, "logfile": "-"}),
        ]
        for log_format, parent in cases:
            before = dict(parent)
            configure_runner_logging(parent, log_format, True)
            self.assertEqual(parent, before)

    def test_twistd_observer_for_the_tac_reads_the_environment(self) -> None:
        self.assertEqual(logs.twistd_choice, {})
        self.patch(os, "environ", {**os.environ, **ENV, "REBREAK_LOG_FORMAT": "json"})
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        Logger(observer=logs.twistd_observer()).info("x {v}", v=ADMIN)
        self.assertEqual(json.loads(out.getvalue())["message"], "x ***")

    def test_format_choice_from_flag_or_environment(self) -> None:
        options = Options()
        self.assertEqual(options.log_format_choice({}), ("text", False))
        self.assertEqual(options.log_format_choice({"REBREAK_LOG_FORMAT": "JSON"}),
                         ("json", True))
        self.assertEqual(options.log_format_choice({"REBREAK_LOG_FORMAT": "xml"}),
                         ("text", False))
        options.parseOptions(["--log-format", "text"])
        self.assertEqual(options.log_format_choice({"REBREAK_LOG_FORMAT": "json"}),
                         ("text", True))

    def test_through_twists_own_option_parser(self) -> None:
        """postOptions runs inside TwistOptions.parseOptions, after twist chose its default."""
        piped = io.StringIO()  # not a tty: twist alone would pick JSON
        self.patch(twist_options, "stdout", piped)
        self.patch(sys, "argv", ["twist", "rebreak-idle"])
        options = TwistOptions()
        options.parseOptions(["rebreak-idle"])
        self.assertIs(options["logFile"], piped)
        self.assertEqual(options["fileLogObserverFactory"].log_format, "text")

        options = TwistOptions()
        options.parseOptions(["rebreak-idle", "--log-format", "json"])
        self.assertEqual(options["fileLogObserverFactory"].log_format, "json")


# --- the real commands, in a subprocess with stdout piped ---------------------------------

# Runs exactly what the console scripts run, and tells (on file descriptor 2) when the reactor runs,
# i.e. when the signal handlers are in place: SIGTERM is sent only after that.
LAUNCHER = """
import os, sys
from twisted.internet import reactor
# callLater(0): after every when-running call (the daemon's SIGTERM handler is one);
# fd 2 directly: the runner redirects sys.stderr into the log.
reactor.callWhenRunning(reactor.callLater, 0, os.write, 2, b"REACTOR-RUNNING\\n")
command = sys.argv[1]
sys.argv = sys.argv[1:]
if command == "twist":
    from twisted.application.twist._twist import Twist
    Twist.main(sys.argv)
else:
    from twisted.scripts.twistd import run
    run()
"""


class _Daemon(ProcessProtocol):
    def __init__(self, marker: bool) -> None:
        self.marker = marker
        self.out = bytearray()
        self.err = bytearray()
        self.running: Deferred[None] = Deferred()
        self.status_url: Deferred[str | None] = Deferred()  # None: ended without one
        self.ended: Deferred[Exception] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data
        found = LISTENING.search(self.out.decode("utf-8", "replace"))
        if found and not self.status_url.called:
            self.status_url.callback(f"http://{found.group(1)}")

    def errReceived(self, data: bytes) -> None:
        self.err += data
        if not self.running.called and b"REACTOR-RUNNING\n" in self.err:
            self.running.callback(None)

    def processEnded(self, reason: Failure) -> None:
        if self.marker and not self.running.called:
            self.running.errback(RuntimeError(
                f"exited before the reactor ran: {reason.value}\n{self.err.decode()}"))
        if not self.status_url.called:
            self.status_url.callback(None)
        self.ended.callback(reason.value)


class CommandTests(TestCase):
    timeout = 60

    async def run_daemon(self, *argv: str, probe: Callable[[str], Awaitable[None]] | None = None,
                         script: bool = False, **env: str) -> tuple[list[str], Exception]:
        """Start a command, wait until its reactor runs (and ``probe`` its status server),
        stop it with SIGTERM; its stdout lines and how it ended.

        With ``script``, the installed console script itself runs; then the status server
        answering ``probe`` (required) is the sign that the reactor runs."""
        daemon = _Daemon(marker=not script)
        environ = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", **ENV, **env}
        if script:
            assert probe is not None
            executable = os.path.join(os.path.dirname(sys.executable), argv[0])
            args = [executable, *argv[1:]]
        else:
            executable, args = sys.executable, [sys.executable, "-c", LAUNCHER, *argv]
        process = reactor.spawnProcess(daemon, executable, args, env=environ, path=ROOT)

        def kill_leftover() -> Deferred[Exception] | None:
            if daemon.ended.called:
                return None
            process.signalProcess("KILL")
            return daemon.ended

        self.addCleanup(kill_leftover)
        if not script:
            await daemon.running
        if probe is not None:
            url = await daemon.status_url
            self.assertIsNotNone(url, daemon.out.decode() + daemon.err.decode())
            await probe(url)
        process.signalProcess("TERM")
        reason = await daemon.ended
        output = daemon.out.decode("utf-8") + daemon.err.decode("utf-8")
        for secret in SECRETS:
            self.assertNotIn(secret, output)
        lines = [line for line in daemon.out.decode("utf-8").splitlines() if line]
        self.assertTrue(lines, daemon.err.decode())
        return lines, reason

    def assertText(self, lines: list[str]) -> None:
        for line in lines:
            self.assertRegex(line, TEXT_LINE)
            self.assertFalse(line.startswith("{"), line)

    def assertStoppedBySigterm(self, reason: Exception) -> None:
        """SIGTERM is a graceful stop with exit status 0 (the daemon's own handler: Twisted's
        would re-raise the signal once the reactor stopped)."""
        self.assertIsInstance(reason, ProcessDone)

    async def probe_status_server(self, base: str) -> None:
        pool = HTTPConnectionPool(reactor, persistent=False)
        http = HTTPClient(Agent(reactor, pool=pool))
        answers = {}
        for path, headers in (("/healthz", None), ("/readyz", None), ("/metrics", None),
                              ("/status", None), ("/status", {"x-admin-secret": ADMIN})):
            response = await http.get(base + path, headers=headers)
            answers[path, bool(headers)] = (response.code, await response.text())
        self.assertEqual(answers["/healthz", False], (200, "ok\n"))
        self.assertEqual(answers["/readyz", False][0], 503)  # the database is unreachable
        self.assertIn("rebreak_idle_sessions", answers["/metrics", False][1])
        self.assertEqual(answers["/status", False][0], 401)
        self.assertEqual(answers["/status", True][0], 200)
        for _, body in answers.values():
            for secret in SECRETS:
                self.assertNotIn(secret, body)

    async def test_twist_logs_text_when_piped(self) -> None:
        lines, reason = await self.run_daemon("twist", "rebreak-idle",
                                              probe=self.probe_status_server)
        self.assertText(lines)
        self.assertTrue(any("Starting reactor..." in line for line in lines), lines)
        self.assertTrue(any("Main loop terminated." in line for line in lines), lines)
        self.assertStoppedBySigterm(reason)

    async def test_the_installed_twist_script(self) -> None:
        lines, reason = await self.run_daemon("twist", "rebreak-idle", script=True,
                                              probe=self.probe_status_server)
        self.assertText(lines)
        self.assertTrue(any("status server listening on 127.0.0.1:" in line for line in lines))
        self.assertStoppedBySigterm(reason)

    async def test_twist_logs_json_on_request(self) -> None:
        for argv, env in ((("twist", "rebreak-idle", "--log-format", "json"), {}),
                          (("twist", "rebreak-idle"), {"REBREAK_LOG_FORMAT": "json"})):
            lines, reason = await self.run_daemon(*argv, **env)
            records = [json.loads(line) for line in lines]
            for record in records:
                self.assertLessEqual({"time", "level", "message", "namespace"}, set(record))
            self.assertIn("Starting reactor...", [r["message"] for r in records])
            self.assertStoppedBySigterm(reason)

    async def test_twistd_nodaemon(self) -> None:
        lines, reason = await self.run_daemon("twistd", "-n", "--pidfile=", "rebreak-idle")
        self.assertText(lines)
        self.assertTrue(any("Server Shut Down." in line for line in lines), lines)
        self.assertStoppedBySigterm(reason)

    async def test_twistd_nodaemon_json(self) -> None:
        lines, reason = await self.run_daemon("twistd", "-n", "--pidfile=", "rebreak-idle",
                                              REBREAK_LOG_FORMAT="json")
        messages = [json.loads(line)["message"] for line in lines]
        self.assertIn("Server Shut Down.", messages)
        self.assertStoppedBySigterm(reason)

    async def test_twistd_tac_json_through_the_logger_option(self) -> None:
        lines, reason = await self.run_daemon(
            "twistd", "-n", "--pidfile=", "--logger", "rebreak_idle.ops.logs.twistd_observer",
            "-y", os.path.join(ROOT, "rebreak.tac"), REBREAK_LOG_FORMAT="json")
        messages = [json.loads(line)["message"] for line in lines]
        self.assertIn("Server Shut Down.", messages)
        self.assertStoppedBySigterm(reason)

    async def test_twistd_tac(self) -> None:
        lines, reason = await self.run_daemon(
            "twistd", "-n", "--pidfile=", "-y", os.path.join(ROOT, "rebreak.tac"))
        self.assertText(lines)
        self.assertTrue(any("Server Shut Down." in line for line in lines), lines)
        self.assertStoppedBySigterm(reason)
