"""The classification table of real providers' signals, and the reaction per class."""

from __future__ import annotations

import re
from pathlib import Path

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle import imap
from rebreak_idle.session import provider_signals
from rebreak_idle.session.reconnect_policy import (
    MAX_HOLDOFF,
    Outcome,
    classify,
    holdoff_for,
    reaction,
    settle,
)
from rebreak_idle.timing.backoff import Backoff

DOC = Path(__file__).resolve().parents[2] / "docs" / "providers.md"


def kind_of(exc: BaseException) -> str:
    return classify(Failure(exc)).kind


def login_no(text: str) -> imap.AuthenticationFailed:
    return imap.AuthenticationFailed(text)


class TableTests(SynchronousTestCase):
    def test_every_row_is_in_the_doc_with_a_source(self) -> None:
        doc = DOC.read_text()
        for signal in provider_signals.SIGNALS:
            self.assertIn(signal.kind, provider_signals.CLASSES)
            self.assertTrue(signal.source.strip())
            self.assertIn("`" + signal.pattern.replace("|", "\\|") + "`", doc)
            re.compile(signal.pattern)

    def test_provider_texts(self) -> None:
        cases = {
            "[ALERT] Too many simultaneous connections. (Failure)": "capacity",
            "Request is throttled. Suggested Backoff Time: 299999 milliseconds": "throttled",
            "Session invalidated - AccessTokenExpired": "recycle",
            "Session expired, please login again.": "recycle",
            "User is authenticated but not connected.": "capacity",
            "[AUTHENTICATIONFAILED] Too many bad auth attempts": "credentials",
            "[UNAVAILABLE] Maximum number of connections from user+IP exceeded "
            "(mail_max_userip_connections=10)": "capacity",
            "Server shutting down.": "recycle",
            "[LIMIT] too busy": "capacity",
            "[INUSE] mailbox locked": "capacity",
            "[UNAVAILABLE] Try again later": "transient",
            "[SERVERBUG] oops": "transient",
            "[CONTACTADMIN] call us": "credentials",
            "[EXPIRED] password expired": "credentials",
            "[PRIVACYREQUIRED] use TLS": "credentials",
            "[AUTHORIZATIONFAILED] no access": "credentials",
            "[THROTTLED] slow down": "throttled",
        }
        for text, expected in cases.items():
            self.assertEqual(provider_signals.match(text).kind, expected, text)
            self.assertEqual(provider_signals.match(text.upper()).kind, expected, text)
        self.assertIsNone(provider_signals.match("Invalid credentials (Failure)"))

    def test_suggested_delay(self) -> None:
        self.assertEqual(provider_signals.suggested_delay(
            "Request is throttled. Suggested Backoff Time: 299999 milliseconds"), 299.999)
        self.assertEqual(provider_signals.suggested_delay("suggested backoff time: 30 seconds"), 30)
        self.assertEqual(provider_signals.suggested_delay(
            "Suggested Backoff Time: 99999999999 milliseconds"), provider_signals.MAX_SUGGESTED)
        self.assertIsNone(provider_signals.suggested_delay("Request is throttled."))


class ClassifyTests(SynchronousTestCase):
    def test_login_refusals(self) -> None:
        self.assertEqual(kind_of(login_no("[AUTHENTICATIONFAILED] Invalid credentials")),
                         "credentials")
        self.assertEqual(kind_of(login_no("Invalid credentials (Failure)")), "credentials")
        self.assertEqual(kind_of(login_no(
            "[ALERT] Too many simultaneous connections. (Failure)")), "capacity")
        self.assertEqual(kind_of(login_no("[UNAVAILABLE] Try again later")), "transient")

    def test_byes_and_commands(self) -> None:
        self.assertEqual(kind_of(imap.ServerBye("Session invalidated - AccessTokenExpired")),
                         "recycle")
        self.assertEqual(kind_of(imap.ServerBye("see you")), "transient")
        failed = imap.CommandFailed("User is authenticated but not connected.", "BAD")
        self.assertEqual(kind_of(failed), "capacity")
        self.assertEqual(kind_of(imap.CommandFailed("SELECT Unsafe Login.")), "protocol")

    def test_xoauth2_details_kept_without_anything_else(self) -> None:
        exc = login_no("[AUTHENTICATIONFAILED] Invalid credentials (Failure)")
        exc.details = ('{"status":"401","schemes":"bearer","scope":"https://mail.google.com/",'
                       '"token":"ya29.secret-token"}')
        text = classify(Failure(exc)).text
        self.assertIn('{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}',
                      text)
        self.assertNotIn("secret-token", text)
        exc.details = "not json ya29.secret"
        self.assertNotIn("ya29", classify(Failure(exc)).text)


class SettleTests(SynchronousTestCase):
    def test_recycle_only_after_a_healthy_connection(self) -> None:
        bye = Outcome("bye", "Session expired, please login again.")
        self.assertEqual(settle(bye, ready=True, uptime=10, healthy_after=120).kind,
                         "transient")
        bye = Outcome("bye", "Session expired, please login again.")
        self.assertEqual(settle(bye, ready=True, uptime=3600, healthy_after=120).kind,
                         "recycle")
        bye = Outcome("bye", "Server shutting down.")
        self.assertEqual(settle(bye, ready=False, uptime=3600, healthy_after=120).kind,
                         "transient")

    def test_bare_close_after_a_long_healthy_connection_is_a_recycle(self) -> None:
        closed = Outcome("network", "connection closed by server", weak=True)
        self.assertEqual(settle(closed, ready=True, uptime=600, healthy_after=120).kind,
                         "recycle")
        closed = Outcome("network", "connection closed by server", weak=True)
        self.assertEqual(settle(closed, ready=True, uptime=200, healthy_after=120).kind,
                         "network")


class EarlyCloseTests(SynchronousTestCase):
    def test_closed_before_the_greeting_again_and_again_is_capacity(self) -> None:
        def kind(n: int) -> str:
            closed = Outcome("network", "connection closed by server", weak=True)
            return settle(closed, ready=False, uptime=0, healthy_after=120,
                          early_closes=n).kind

        self.assertEqual([kind(n) for n in range(1, 5)],
                         ["network", "network", "capacity", "capacity"])
        refused = Outcome("network", "connection refused")
        self.assertEqual(settle(refused, ready=False, uptime=0, healthy_after=120,
                                early_closes=5).kind, "network")


class ReactionTests(SynchronousTestCase):
    def backoff(self) -> Backoff:
        return Backoff(5, 300, jitter=lambda: 0.0)

    def test_credentials_hold_off_grows_to_a_day(self) -> None:
        self.assertEqual([holdoff_for(1800, n) for n in range(8)],
                         [1800, 3600, 7200, 14400, 28800, 57600, 86400, 86400])
        self.assertEqual(holdoff_for(100000, 3), 100000)
        rejected = Outcome("auth", "[AUTHENTICATIONFAILED] Invalid credentials")
        self.assertEqual(reaction(rejected, self.backoff(), 1800, strikes=2), (7200, True))
        self.assertEqual(MAX_HOLDOFF, 86400)

    def test_capacity_waits_long_and_grows(self) -> None:
        backoff = self.backoff()
        cap = Outcome("auth", "[ALERT] Too many simultaneous connections. (Failure)")
        delays = [reaction(cap, backoff, 1800) for _ in range(7)]
        self.assertEqual([d.delay for d in delays], [5, 120, 240, 480, 960, 1920, 3600])
        self.assertFalse(any(d.held_off for d in delays))

    def test_throttled_waits_for_the_suggested_delay(self) -> None:
        text = "Request is throttled. Suggested Backoff Time: 299999 milliseconds"
        self.assertEqual(reaction(Outcome("protocol", text), self.backoff(), 1800).delay,
                         299.999)
        plain = Outcome("protocol", "[THROTTLED] slow down")
        self.assertEqual(reaction(plain, self.backoff(), 1800).delay, 60)

    def test_recycle_comes_back_within_seconds_without_growth(self) -> None:
        backoff = self.backoff()
        backoff.attempt = 4
        recycle = Outcome("bye", "Session invalidated - AccessTokenExpired", kind="recycle")
        for _ in range(3):
            delay, held = reaction(recycle, backoff, 1800)
            self.assertEqual((delay, held), (1.0, False))
            self.assertEqual(backoff.attempt, 0)
        jittered = Backoff(5, 300, jitter=lambda: 0.99)
        self.assertLess(reaction(recycle, jittered, 1800).delay, 5)
