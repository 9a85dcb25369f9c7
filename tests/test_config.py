"""Settings from environment and flags; the start-up failures an operator sees."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.config import (
    OPTIONS,
    ConfigError,
    Settings,
    load_settings,
    parse_folders,
    scan_settings,
    session_settings,
    status_settings,
)
from tests.support.twist import KEY, SECRET, env, run_twist


class LoadSettingsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        s = load_settings(env())
        self.assertEqual(s.backend_url, "http://127.0.0.1:3016")
        self.assertEqual(
            (s.refresh_interval, s.idle_renew, s.heartbeat_interval, s.reconnect_delay),
            (300.0, 1500.0, 120.0, 5.0),
        )
        self.assertIsNone(s.status_endpoint)
        self.assertEqual(s.key_bytes, KEY.encode()[:32])

    def test_host_login_budget_is_on_by_default_and_can_be_switched_off(self) -> None:
        s = load_settings(env())
        self.assertEqual((s.host_login_rate, s.host_login_burst), (10.0, 20))
        self.assertIsNone(load_settings(env(REBREAK_HOST_LOGIN_RATE="off")).host_login_rate)
        self.assertEqual(load_settings(env(REBREAK_HOST_LOGIN_RATE="2.5")).host_login_rate,
                         2.5)
        with self.assertRaises(ConfigError):
            load_settings(env(REBREAK_HOST_LOGIN_RATE="0"))

    def test_production_switches_backend_port(self) -> None:
        self.assertEqual(load_settings(env(NODE_ENV="production")).backend_url,
                         "http://127.0.0.1:3015")
        explicit = load_settings(env(NODE_ENV="production", BACKEND_URL="https://api.example/"))
        self.assertEqual(explicit.backend_url, "https://api.example")

    def test_flag_wins_over_environment(self) -> None:
        s = load_settings(env(REBREAK_REFRESH_INTERVAL="300"), {"refresh_interval": "7"})
        self.assertEqual(s.refresh_interval, 7.0)
        s = load_settings(env(REBREAK_REFRESH_INTERVAL="9"), {"refresh_interval": None})
        self.assertEqual(s.refresh_interval, 9.0)

    def test_every_option_is_a_setting(self) -> None:
        names = {f for f in Settings.__dataclass_fields__}
        self.assertEqual({o.attr for o in OPTIONS}, names)
        for opt in OPTIONS:
            if opt.default is not None:
                self.assertEqual(Settings.__dataclass_fields__[opt.attr].default, opt.default,
                                 opt.attr)

    def assertConfigError(self, environ: dict[str, str], *expected: str) -> str:
        with self.assertRaises(ConfigError) as cm:
            load_settings(environ)
        message = str(cm.exception)
        for text in expected:
            self.assertIn(text, message)
        for secret in (SECRET, KEY, "db-pa55word"):
            self.assertNotIn(secret, message)
        self.assertNotIn("\n", message)
        return message

    def test_missing_required(self) -> None:
        for name in ("DATABASE_URL", "ADMIN_SECRET", "ENCRYPTION_KEY"):
            self.assertConfigError(env(**{name: None}), name, "required")

    def test_short_key(self) -> None:
        self.assertConfigError(env(ENCRYPTION_KEY="x" * 31), "ENCRYPTION_KEY", "32", "31")

    def test_bad_intervals(self) -> None:
        for raw in ("abc", "0", "-5", "nan", "inf"):
            self.assertConfigError(env(REBREAK_HEARTBEAT_INTERVAL=raw),
                                   "REBREAK_HEARTBEAT_INTERVAL")
        self.assertConfigError(env(REBREAK_SCAN_CONCURRENCY="1.5"), "REBREAK_SCAN_CONCURRENCY")

    def test_bad_backend_url(self) -> None:
        for raw in ("localhost:3016", "ftp://x", "http://", "http://h:99999"):
            self.assertConfigError(env(BACKEND_URL=raw), "BACKEND_URL")

    def test_repr_hides_secrets(self) -> None:
        text = repr(load_settings(env()))
        for secret in (SECRET, KEY, "db-pa55word"):
            self.assertNotIn(secret, text)

    def test_secret_values_include_database_password(self) -> None:
        self.assertIn("db-pa55word", load_settings(env()).secret_values())
        s = load_settings(env(DATABASE_URL="host=db user=u password=kv-pass dbname=x"))
        self.assertIn("kv-pass", s.secret_values())


class RoomViewTests(SynchronousTestCase):
    """Each room gets the settings it needs, secrets kept out of ``repr``."""

    def test_scan_view(self) -> None:
        s = load_settings(env(REBREAK_SCAN_CONCURRENCY="3", REBREAK_SCAN_TIMEOUT="7",
                              REBREAK_SCAN_ATTEMPTS="2", REBREAK_SHUTDOWN_TIMEOUT="4"))
        view = scan_settings(s)
        self.assertEqual((view.backend_url, view.admin_secret, view.scan_concurrency,
                          view.scan_timeout, view.scan_attempts, view.shutdown_timeout),
                         (s.backend_url, SECRET, 3, 7.0, 2, 4.0))
        self.assertEqual(view.secrets, s.secret_values())
        for secret in s.secret_values():
            self.assertNotIn(secret, repr(view))

    def test_status_view(self) -> None:
        self.assertIsNone(status_settings(load_settings(env())))
        view = status_settings(load_settings(env(REBREAK_STATUS_ENDPOINT="tcp:9464")))
        assert view is not None
        self.assertEqual((view.status_endpoint, view.admin_secret), ("tcp:9464", SECRET))
        self.assertNotIn(SECRET, repr(view))


class CommandLineTests(SynchronousTestCase):
    """The plugin as an operator runs it, in a subprocess from another directory."""

    def test_help_lists_every_option(self) -> None:
        result = run_twist("rebreak-idle", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        flat = " ".join(result.stdout.split())
        for opt in OPTIONS:
            self.assertIn(f"--{opt.flag}=", flat)
            self.assertIn(f"env {opt.env}", flat)
        self.assertIn("--migrate", flat)
        self.assertIn("default 300.0", flat)

    def test_missing_admin_secret_is_one_line(self) -> None:
        result = run_twist("rebreak-idle", environ=env(ADMIN_SECRET=None))
        self.assertNotEqual(result.returncode, 0)
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        self.assertEqual(lines, ["rebreak-idle: configuration error: ADMIN_SECRET is required "
                                 "but not set"])

    def test_bad_flag_value_names_the_variable(self) -> None:
        result = run_twist("rebreak-idle", "--heartbeat-interval", "soon", environ=env())
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("REBREAK_HEARTBEAT_INTERVAL must be a number of seconds", result.stderr)
        self.assertNotIn("Traceback", result.stderr + result.stdout)
        self.assertNotIn(SECRET, result.stderr + result.stdout)


class WiringErrorTests(SynchronousTestCase):
    def test_bad_status_endpoint_is_one_line(self) -> None:
        result = run_twist("rebreak-idle", "--status-endpoint", "nonsense:1:2",
                           environ=env())
        self.assertEqual(result.returncode, 78, result.stderr)
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("REBREAK_STATUS_ENDPOINT", lines[0])
        self.assertNotIn(SECRET, lines[0])

class ExtraFoldersTests(SynchronousTestCase):
    """REBREAK_EXTRA_FOLDERS, read by :func:`parse_folders`."""

    def test_off_by_default(self) -> None:
        self.assertEqual(load_settings(env()).extra_folders, ())
        self.assertEqual(session_settings(load_settings(env())).extra_folders, ())

    def test_parsed(self) -> None:
        s = load_settings(env(**{"REBREAK_EXTRA_FOLDERS": "\\Junk, Unbekannt,\\Junk"}))
        self.assertEqual(s.extra_folders, ("\\Junk", "Unbekannt"))
        self.assertEqual(parse_folders("Junk Email,[Gmail]/Spam"),
                         ("Junk Email", "[Gmail]/Spam"))

    def test_refused(self) -> None:
        for value, words in [("INBOX", "INBOX is always watched"),
                             ("\\Ju nk", "special-use"), ("a\x01b", "not usable"),
                             (",".join(f"F{i}" for i in range(9)), "at most 8")]:
            with self.assertRaises(ConfigError) as e:
                load_settings(env(**{"REBREAK_EXTRA_FOLDERS": value}))
            self.assertIn("REBREAK_EXTRA_FOLDERS", str(e.exception))
            self.assertIn(words, str(e.exception))
