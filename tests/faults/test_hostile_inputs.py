"""Issue 17, points 2-5 and 7 without a network: forged log lines, row validation, the
destination policy on addresses, the account's secrets in server texts, the EXISTS log
fold, the scan minimum interval, and the start-up checks."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from rebreak_idle.accounts.account import InvalidAccount, account_from_row
from rebreak_idle.accounts.destinations import DestinationPolicy, kind_of
from rebreak_idle.config import ConfigError, load_settings, scan_settings
from rebreak_idle.failures import account_secrets, describe, scrub
from rebreak_idle.ops.log_folding import EventFold
from rebreak_idle.ops.logs import escape_controls, json_observer, text_observer
from rebreak_idle.scan.trigger import ScanTrigger
from tests.support.scan_harness import account, settings

ENV = {"DATABASE_URL": "postgresql://app@127.0.0.1/x", "ADMIN_SECRET": "admin-secret-1",
       "ENCRYPTION_KEY": "k" * 32}


def emit(observer: Any, fmt: str, **fields: Any) -> None:
    observer({"log_format": fmt, "log_level": LogLevel.info, "log_namespace": "t",
              "log_time": 0.0, "log_system": "-", **fields})


class ForgedLogLineTests(SynchronousTestCase):
    FORGED = "a@b.test\n2026-01-01T00:00:00+0000 [-] [idle/db] refreshed — 777\r\x1b[2J\x85"

    def test_text_log_escapes_every_interpolated_control_character(self) -> None:
        out = io.StringIO()
        emit(text_observer(out), "[idle/{email}] connected ({host}:{port})",
             email=self.FORGED, host="h\u2028x\x7f", port=993)
        text = out.getvalue()
        self.assertEqual(text.count("\n"), 1)  # one physical line
        self.assertNotIn("\r", text)
        self.assertNotIn("\x1b", text)
        self.assertNotIn("\x85", text)
        self.assertNotIn("\u2028", text)
        self.assertIn(r"a@b.test\n2026-01-01", text)
        self.assertIn(r"\r\x1b[2J\x85", text)
        self.assertIn(r"h\u2028x\x7f:993", text)

    def test_plain_values_are_unchanged(self) -> None:
        self.assertEqual(escape_controls("ann@example.org — ok"), "ann@example.org — ok")
        self.assertEqual(escape_controls("\t\x00\x9f"), r"\t\x00\x9f")

    def test_json_log_escapes_line_separators_and_c1(self) -> None:
        out = io.StringIO()
        emit(json_observer(out), "[idle/{email}] connected", email="a\u2028b\u2029c\x85d\x7f")
        raw = out.getvalue()
        self.assertEqual(raw.count("\n"), 1)
        for ch in ("\u2028", "\u2029", "\x85", "\x7f"):
            self.assertNotIn(ch, raw)
        record = json.loads(raw)
        self.assertEqual(record["email"], "a\u2028b\u2029c\x85d\x7f")  # same value, escaped


def row(**kw: Any) -> dict[str, Any]:
    base = dict(id="1", user_id="u", email="ann@example.org", imap_host="imap.example.org",
                imap_port=993, imap_security="tls", imap_username=None,
                auth_method="password", encrypted_secret="x")
    base.update(kw)
    return base


class RowValidationTests(SynchronousTestCase):
    def invalid(self, text: str, **kw: Any) -> None:
        with self.assertRaises(InvalidAccount) as e:
            account_from_row(row(**kw), lambda s: "pw")
        self.assertIn(text, str(e.exception))
        self.assertNotIn("\n", str(e.exception))
        self.assertLess(len(str(e.exception)), 200)

    def test_hosts(self) -> None:
        for host, text in (
                ("imap.exa mple.org", "contains spaces or control characters"),
                ("imap\r\n.org", "contains spaces or control characters"),
                ("[::1]", "must be written without brackets"), ("a..b.test", "has an empty label"),
                (".a.test", "has an empty label"), ("-a.test", "is not a valid host name"),
                ("a" * 64 + ".test", "has a label longer than 63"),
                (("a" * 60 + ".") * 5 + "test", "is longer than 253"),
                ("::g", "is not a valid IPv6 address"), ("a/b.test", "is not a valid host name")):
            self.invalid(f"invalid settings: imap_host {text}", imap_host=host)

    def test_valid_hosts(self) -> None:
        for host in ("imap.example.org", "imap.example.org.", "mail_1.example.org",
                     "127.0.0.1", "::1", "localhost", "bücher.example", "8.8.8.8",
                     "2001:4860:4860::8888"):
            self.assertEqual(account_from_row(row(imap_host=host, imap_security="tls"),
                                              lambda s: "pw").host, host)

    def test_emails(self) -> None:
        self.invalid("email is longer than 254 characters",
                     email="a" * 250 + "@b.org")
        self.invalid("email contains spaces or control characters", email="a@b\n.org")
        self.invalid("email contains spaces or control characters", email="a\x1b@b.org")

    def test_ports_and_long_values(self) -> None:
        for port in (0, 65536, -1, "993", None, True):
            self.invalid("is outside 1-65535", imap_port=port)
        self.invalid("imap_security 'xxxxxxxx", imap_security="x" * 100_000)

    def test_private_address_literals_refused_unless_allowed(self) -> None:
        self.invalid("destination refused: 192.168.1.10 is a private address",
                     imap_host="192.168.1.10")
        allowed = DestinationPolicy(["192.168.0.0/16"])
        self.assertEqual(account_from_row(row(imap_host="192.168.1.10"), lambda s: "pw",
                                          allowed).host, "192.168.1.10")


class DestinationPolicyTests(SynchronousTestCase):
    def test_kinds(self) -> None:
        import ipaddress

        for address, kind in (
                ("10.0.0.1", "private"), ("172.16.5.4", "private"),
                ("192.168.0.1", "private"), ("100.64.0.1", "CGNAT"),
                ("100.127.255.254", "CGNAT"), ("169.254.1.1", "link-local"),
                ("169.254.169.254", "cloud metadata"), ("fd00:ec2::254", "cloud metadata"),
                ("100.100.100.200", "cloud metadata"), ("fe80::1", "link-local"),
                ("fd12:3456::1", "unique-local"), ("0.0.0.0", "unspecified"),  # noqa: S104
                ("::ffff:10.0.0.1", "private"), ("64:ff9b::a00:1", "private"),
                ("2002:a00:1::1", "private"), ("224.0.0.1", "multicast"),
                ("192.0.2.7", "non-public"), ("8.8.8.8", None), ("127.0.0.1", None),
                ("127.0.0.2", None), ("::1", None), ("2001:4860:4860::8888", None)):
            self.assertEqual(kind_of(ipaddress.ip_address(address)), kind, address)

    def test_allow_list(self) -> None:
        policy = DestinationPolicy(["10.0.0.0/8", "fd00::/8", "169.254.0.0/16"])
        self.assertIsNone(policy.problem("10.9.8.7"))
        self.assertIsNone(policy.problem("fd12::1"))
        self.assertIsNone(policy.problem("169.254.1.1"))
        # a metadata address needs an entry of its own
        self.assertIn("cloud metadata", policy.problem("169.254.169.254"))
        self.assertIsNone(DestinationPolicy(["169.254.169.254/32"]).problem("169.254.169.254"))
        self.assertIn("private", policy.problem("192.168.1.1"))
        self.assertIsNone(policy.problem("imap.example.org"))  # a name: checked on connect

    def test_text_names_the_row_host(self) -> None:
        text = DestinationPolicy().problem("10.1.2.3", "imap.rebind.test")
        self.assertEqual(text, "destination refused: imap.rebind.test resolves to a private "
                               "address (allowed only through REBREAK_ALLOW_PRIVATE_HOSTS)")


class AccountSecretTests(SynchronousTestCase):
    def test_every_form_of_the_secret_is_masked(self) -> None:
        secret = 'S3cr"et\\pw'
        forms = account_secrets("ann", secret)
        plain = base64.b64encode(b"\x00ann\x00" + secret.encode()).decode()
        xoauth = base64.b64encode(b"user=ann\x01auth=Bearer " + secret.encode()
                                  + b"\x01\x01").decode()
        for echoed in (secret, 'S3cr\\"et\\\\pw', plain, xoauth,
                       base64.b64encode(secret.encode()).decode()):
            masked = scrub(f"NO [AUTHENTICATIONFAILED] bad login ann/{echoed} x", forms)
            self.assertEqual(masked, "NO [AUTHENTICATIONFAILED] bad login ann/*** x")


class FoldTests(SynchronousTestCase):
    def test_a_flood_folds_into_one_line_per_window(self) -> None:
        clock = task.Clock()
        firsts: list[int] = []
        summaries: list[tuple[int, float]] = []
        fold = EventFold(clock, lambda: firsts.append(1),
                         lambda n, s: summaries.append((n, s)), window=10.0, full=3)
        for _ in range(100_000):
            fold.event()
        self.assertEqual((len(firsts), summaries), (3, []))
        clock.advance(10)
        self.assertEqual(summaries, [(99_997, 10.0)])
        fold.event()
        clock.advance(10)
        self.assertEqual(summaries[-1], (1, 10.0))
        clock.advance(10)  # a quiet window ends the burst
        self.assertEqual(clock.getDelayedCalls(), [])
        fold.event()
        self.assertEqual(len(firsts), 4)
        fold.flush()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_few_messages_each_get_their_line(self) -> None:
        clock = task.Clock()
        firsts: list[int] = []
        fold = EventFold(clock, lambda: firsts.append(1), lambda n, s: None)
        fold.event()
        fold.event()
        self.assertEqual(len(firsts), 2)


class _Answering:
    """A treq double: each POST waits for the test to answer it."""

    def __init__(self) -> None:
        self.posts: list[tuple[float, Deferred]] = []
        self.posts_bodies: list[bytes] = []

    def post(self, url: str, **kw: Any) -> Deferred:
        self.posts_bodies.append(kw.get("data", b""))
        d: Deferred = Deferred()
        self.posts.append((self.clock.seconds(), d))
        return d


class _Response:
    code = 200
    headers = Headers()

    def deliverBody(self, protocol: Any) -> None:
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseDone

        protocol.dataReceived(b'{"scanned": 1, "blocked": 0}')
        protocol.connectionLost(Failure(ResponseDone()))


class ScanMinIntervalTests(SynchronousTestCase):
    def trigger(self) -> tuple[ScanTrigger, _Answering, task.Clock]:
        clock = task.Clock()
        http = _Answering()
        http.clock = clock
        trigger = ScanTrigger(scan_settings(settings(scan_min_interval=5.0)), clock,
                              http_client=http)
        trigger.startService()
        self.addCleanup(lambda: trigger.stopService() if trigger.running else None)
        return trigger, http, clock

    def answer(self, http: _Answering, n: int) -> None:
        http.posts[n][1].callback(_Response())

    def test_first_scan_at_once_then_one_per_interval(self) -> None:
        trigger, http, clock = self.trigger()
        trigger.request(account(), 4, "exists")
        self.assertEqual(len(http.posts), 1)  # at once after a quiet spell
        self.answer(http, 0)
        for n in range(5, 1005):  # a flood of EXISTS within the interval
            trigger.request(account(), n, "exists")
            clock.advance(0.004)
        self.assertEqual(len(http.posts), 1)
        clock.advance(1)  # the interval ends at 5.0: the folded scan goes out then
        self.assertEqual(len(http.posts), 2)
        self.assertAlmostEqual(http.posts[1][0], 5.0, places=6)
        self.assertIn(b'"exists": 1004', http.posts_bodies[1])
        self.answer(http, 1)
        self.assertFalse(trigger.busy())
        clock.advance(60)  # quiet: the next one goes out at once
        trigger.request(account(), 2000, "exists")
        self.assertEqual(len(http.posts), 3)
        self.answer(http, 2)

    def test_still_one_follow_up_after_a_slow_scan(self) -> None:
        trigger, http, clock = self.trigger()
        trigger.request(account(), 4, "exists")
        trigger.request(account(), 5, "exists")
        trigger.request(account(), 6, "exists")
        clock.advance(20)  # the scan takes longer than the interval (not the timeout)
        self.assertEqual(len(http.posts), 1)
        self.answer(http, 0)
        self.assertEqual(len(http.posts), 2)  # the follow-up at once: interval passed
        self.answer(http, 1)
        self.assertFalse(trigger.busy())

    def test_the_connect_scan_does_not_delay_new_mail(self) -> None:
        trigger, http, clock = self.trigger()
        trigger.request(account(), 4, "connected")
        self.answer(http, 0)
        trigger.request(account(), 5, "exists")
        self.assertEqual(len(http.posts), 2)  # at once
        self.answer(http, 1)
        trigger.request(account(), 6, "exists")
        self.assertEqual(len(http.posts), 2)  # within the interval: waits
        clock.advance(5)
        self.assertEqual(len(http.posts), 3)
        self.answer(http, 2)

    def test_stop_drops_a_waiting_scan(self) -> None:
        trigger, http, clock = self.trigger()
        trigger.request(account(), 4, "exists")
        self.answer(http, 0)
        trigger.request(account(), 5, "exists")
        self.assertTrue(trigger.busy())
        done = trigger.stopService()
        self.assertTrue(done.called)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(len(http.posts), 1)


class StartupCheckTests(SynchronousTestCase):
    def test_ca_file_without_a_certificate_stops_the_start(self) -> None:
        path = Path(self.mktemp())
        path.write_text("not a certificate\n")
        with self.assertRaises(ConfigError) as e:
            load_settings({**ENV, "REBREAK_TLS_CA_FILE": str(path)})
        self.assertIn("REBREAK_TLS_CA_FILE", str(e.exception))
        self.assertIn("holds no PEM certificate", str(e.exception))
        self.assertNotIn("\n", str(e.exception))

    def test_ca_file_with_a_certificate_is_accepted(self) -> None:
        from rebreak_idle.testing.certs import make_test_certs

        certs = make_test_certs()
        settings_ = load_settings({**ENV, "REBREAK_TLS_CA_FILE": certs.ca})
        self.assertEqual(settings_.tls_ca_file, certs.ca)

    def test_dsn_with_a_space_in_the_password_shows_none_of_it(self) -> None:
        dsn = "host=127.0.0.1 dbname=x user=app password=half secondhalf"
        with self.assertRaises(ConfigError) as e:
            load_settings({**ENV, "DATABASE_URL": dsn})
        for part in ("half", "secondhalf"):
            self.assertNotIn(part, str(e.exception))
        import psycopg2

        try:
            psycopg2.connect(dsn)
        except psycopg2.Error as error:
            text = describe(error)
        self.assertNotIn("secondhalf", text)
        self.assertIn("invalid dsn", text)

    def test_quoted_password_is_masked_whole(self) -> None:
        s = load_settings({**ENV, "DATABASE_URL":
                           "host=127.0.0.1 dbname=x user=app password='two words'"})
        self.assertIn("two words", s.secret_values())

    def test_allow_private_hosts_is_a_list_of_cidrs(self) -> None:
        s = load_settings({**ENV, "REBREAK_ALLOW_PRIVATE_HOSTS": "10.0.0.0/8, fd00::/8"})
        self.assertEqual(s.allow_private_hosts, ("10.0.0.0/8", "fd00::/8"))
        with self.assertRaises(ConfigError) as e:
            load_settings({**ENV, "REBREAK_ALLOW_PRIVATE_HOSTS": "10.0.0.0/33"})
        self.assertIn("REBREAK_ALLOW_PRIVATE_HOSTS must be a list of CIDRs", str(e.exception))



class StartupCommandTests(SynchronousTestCase):
    """``twist rebreak-idle`` itself: one line and exit 78."""

    def test_ca_file_without_a_certificate_exits_78(self) -> None:
        from tests.support.twist import env, run_twist

        path = Path(self.mktemp())
        path.write_text("-----BEGIN NOTHING-----\n")
        result = run_twist("rebreak-idle", environ=env(REBREAK_TLS_CA_FILE=str(path.resolve())))
        self.assertEqual(result.returncode, 78, result.stderr)
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("REBREAK_TLS_CA_FILE", lines[0])
        self.assertIn("holds no PEM certificate", lines[0])

    def test_dsn_with_a_space_in_the_password_exits_78_without_it(self) -> None:
        from tests.support.twist import env, run_twist

        dsn = "host=127.0.0.1 dbname=x user=app password=first secondhalf"
        result = run_twist("rebreak-idle", environ=env(DATABASE_URL=dsn))
        self.assertEqual(result.returncode, 78, result.stderr)
        out = result.stdout + result.stderr
        self.assertIn("DATABASE_URL is not a valid libpq connection string", out)
        self.assertNotIn("first", out)
        self.assertNotIn("secondhalf", out)
