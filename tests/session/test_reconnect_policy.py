"""Reconnect classification and reaction: which cause, which delay."""

from __future__ import annotations

from twisted.internet import error as ierror
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle import imap
from rebreak_idle.failures import CertificateVerifyError
from rebreak_idle.session.reconnect_policy import (
    CAUSES,
    Outcome,
    SessionError,
    classify,
    credentials_rejected,
    reaction,
)
from rebreak_idle.timing.backoff import Backoff


def cause(exc: BaseException) -> tuple[str, bool]:
    outcome = classify(Failure(exc))
    return outcome.cause, outcome.weak


class ClassifyTests(SynchronousTestCase):
    def test_causes(self) -> None:
        self.assertEqual(cause(SessionError("protocol", "no STARTTLS")), ("protocol", False))
        self.assertEqual(cause(ierror.ConnectionRefusedError()), ("network", False))
        self.assertEqual(cause(ierror.ConnectionDone()), ("network", True))
        self.assertEqual(cause(ierror.TimeoutError()), ("timeout", False))
        self.assertEqual(cause(CertificateVerifyError("self-signed certificate")),
                         ("tls", False))
        self.assertEqual(cause(imap.ConnectionLost("connection closed by server")),
                         ("network", True))
        self.assertEqual(cause(imap.ConnectionLost("certificate verify failed: expired")),
                         ("tls", False))
        self.assertEqual(cause(RuntimeError("boom")), ("protocol", False))
        for name in ("network", "tls", "timeout", "protocol"):
            self.assertIn(name, CAUSES)

    def test_specific_outcome_overrides_weak_one(self) -> None:
        weak, strong = Outcome("network", "closed", weak=True), Outcome("bye", "bye")
        self.assertTrue(weak.overrides(None))
        self.assertTrue(strong.overrides(weak))
        self.assertFalse(weak.overrides(strong))
        self.assertFalse(Outcome("timeout", "t").overrides(strong))


class ReactionTests(SynchronousTestCase):
    def test_backoff_grows_and_resets_when_healthy(self) -> None:
        backoff = Backoff(5, 60, jitter=lambda: 0.0)
        network = Outcome("network", "refused")
        self.assertEqual([reaction(network, backoff, 1800).delay for _ in range(3)],
                         [5, 10, 20])
        self.assertEqual(reaction(network, backoff, 1800, healthy=True), (5, False))
        self.assertEqual(backoff.attempt, 1)

    def test_rejected_credentials_hold_off(self) -> None:
        backoff = Backoff(5, 60, jitter=lambda: 0.0)
        rejected = Outcome("auth", "[AUTHENTICATIONFAILED] Invalid credentials")
        self.assertTrue(credentials_rejected(rejected))
        self.assertEqual(reaction(rejected, backoff, 1800), (1800, True))
        self.assertEqual(backoff.attempt, 1)
        transient = Outcome("auth", "[UNAVAILABLE] Try again later")
        self.assertFalse(credentials_rejected(transient))
        self.assertEqual(reaction(transient, backoff, 1800), (10, False))
