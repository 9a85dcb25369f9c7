"""OwedScans: one entry per mailbox, coalescing, what is in flight, acknowledgement, the
oldest first, forgetting an account."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.accounts.account import Account
from rebreak_idle.scan.owed import OwedScans
from rebreak_idle.scan.request import Job


def account(n: int) -> Account:
    return Account(id=f"a{n}", user_id=f"u{n}", email=f"u{n}@example.test",
                   host="imap.example.test", port=993, security="tls", username=f"u{n}",
                   auth_method="password", secret="pw")


def job(n: int, exists: int, mailbox: str | None = None) -> tuple[Job, list[Any]]:
    j = Job(account(n), exists, "exists", mailbox=mailbox)
    got: list[Any] = []
    d: Deferred[bool] = Deferred()
    d.addCallback(got.append)
    j.acks.append(d)
    return j, got


class OwedScansTests(SynchronousTestCase):
    def test_one_entry_per_mailbox_the_latest_request_wins(self) -> None:
        owed = OwedScans()
        outcomes = []
        for exists in range(1, 1001):
            j, got = job(1, exists)
            owed.owe(j, float(exists))
            outcomes.append(got)
        self.assertEqual(len(owed), 1)
        self.assertTrue(all(got == [False] for got in outcomes[:-1]))  # replaced
        self.assertEqual(outcomes[-1], [])
        self.assertEqual(owed.owed_since("a1"), 1.0)  # the oldest request not covered
        taken = owed.take("a1")
        assert taken is not None
        self.assertEqual(taken.exists, 1000)

    def test_a_request_during_the_scan_in_flight_waits_for_one_more(self) -> None:
        owed = OwedScans()
        first, _ = job(1, 1)
        owed.owe(first, 0.0)
        self.assertIs(owed.take("a1"), first)
        self.assertIsNone(owed.take("a1"))  # in flight: nothing else waits
        self.assertFalse(owed.owes("a1"))
        self.assertEqual(len(owed), 1)  # still owed until acknowledged
        second, _ = job(1, 2)
        owed.owe(second, 5.0)
        owed.acknowledged(first)
        self.assertEqual(owed.owed_since("a1"), 5.0)  # the follow-up's time now
        self.assertIs(owed.take("a1"), second)
        owed.acknowledged(second)
        self.assertEqual((len(owed), owed.owed_since("a1"), owed.oldest_since()),
                         (0, None, None))

    def test_not_acknowledged_is_owed_again_unless_a_later_request_waits(self) -> None:
        owed = OwedScans()
        first, got1 = job(1, 1)
        owed.owe(first, 0.0)
        owed.take("a1")
        owed.not_acknowledged(first)
        self.assertEqual(got1, [])
        self.assertIs(owed.take("a1"), first)
        second, _ = job(1, 2)
        owed.owe(second, 3.0)
        owed.not_acknowledged(first)  # the later request covers it
        self.assertEqual(got1, [False])
        self.assertEqual(owed.owed_since("a1"), 0.0)
        self.assertIs(owed.take("a1"), second)

    def test_mailboxes_are_separate_and_the_longest_waiting_goes_first(self) -> None:
        owed = OwedScans()
        inbox, _ = job(1, 1)
        owed.owe(inbox, 0.0)
        owed.take("a1")
        junk, got_junk = job(1, 7, "Junk")
        owed.owe(junk, 1.0)
        later, _ = job(1, 2)
        owed.owe(later, 2.0)
        self.assertEqual(got_junk, [])  # INBOX never replaces a folder's request
        self.assertEqual(len(owed), 2)
        owed.acknowledged(inbox)
        self.assertIs(owed.take("a1"), junk)
        self.assertIs(owed.take("a1"), later)

    def test_accounts_oldest_first_and_drop(self) -> None:
        owed = OwedScans()
        for n, t in ((1, 30.0), (2, 10.0), (3, 20.0)):
            owed.owe(job(n, 1)[0], t)
        self.assertEqual(owed.waiting_accounts(), ["a2", "a3", "a1"])
        self.assertEqual(owed.oldest_since(), 10.0)
        dropped = owed.drop("a2")
        self.assertEqual([j.account.id for j in dropped], ["a2"])
        self.assertEqual((len(owed), owed.oldest_since()), (2, 20.0))
        taken = owed.take("a3")
        assert taken is not None
        self.assertEqual(owed.drop("a3"), [])  # in flight: nothing waiting to tell
        owed.acknowledged(taken)  # its answer finds no entry: nothing happens
        owed.not_acknowledged(taken)
        self.assertEqual(len(owed), 1)
        self.assertEqual(owed.drop("a9"), [])
