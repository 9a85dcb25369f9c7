"""The session's provider limits alone: the host budget's admission, credential strikes
and saved hold-offs, early closes, the token re-read."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.accounts.account import Account
from rebreak_idle.interfaces import Holdoff
from rebreak_idle.session.host_budget import GatedEndpoint, HostBudget
from rebreak_idle.session.provider_limits import ProviderLimits
from rebreak_idle.session.provider_signals import CAPACITY, NETWORK
from rebreak_idle.session.reconnect_policy import CLOSED, Outcome

ACCOUNT = Account(id="acc-1", user_id="u", email="ann@example.test", host="imap.example.test",
                  port=993, security="tls", username="ann", auth_method="xoauth2",
                  secret="token-1")


class Endpoint:
    def __init__(self) -> None:
        self.factories: list[Any] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        self.factories.append(factory)
        return Deferred()


class Holdoffs:
    """An IHoldoffRecorder in memory; the tag is the secret's (the login's) stand-in."""

    def __init__(self) -> None:
        self.rows: dict[str, Holdoff] = {}

    def tag(self, account: Account) -> str:
        return f"tag-{account.secret}"

    def get(self, account_id: str) -> Deferred[Holdoff | None]:
        return succeed(self.rows.get(account_id))

    def save(self, account_id: str, holdoff: Holdoff) -> None:
        self.rows[account_id] = holdoff

    def clear(self, account_id: str) -> None:
        self.rows.pop(account_id, None)


def result(d: Deferred[Any]) -> Any:
    box: list[Any] = []
    d.addBoth(box.append)
    return box[0]


class BudgetTests(SynchronousTestCase):
    def test_without_a_budget_the_endpoint_is_the_servers(self) -> None:
        limits = ProviderLimits()
        endpoint = Endpoint()
        sources: list[str | None] = []
        self.assertIs(limits.endpoint("h", lambda s: sources.append(s) or endpoint), endpoint)
        self.assertEqual(sources, [None])
        self.assertTrue(limits.admitted)
        self.assertIsNone(limits.budget)

    def test_an_unlimited_budget_is_no_budget(self) -> None:
        self.assertIsNone(ProviderLimits(budget=HostBudget(Clock())).budget)

    def test_admission_then_release(self) -> None:
        budget = HostBudget(Clock(), rate=1.0, burst=1)
        first, second = ProviderLimits(budget=budget), ProviderLimits(budget=budget)
        endpoint = Endpoint()
        gated = first.endpoint("imap.example.test", lambda s: endpoint)
        self.assertIsInstance(gated, GatedEndpoint)
        self.assertFalse(first.admitted)
        gated.connect(object())
        self.assertTrue(first.admitted)
        self.assertEqual(len(endpoint.factories), 1)
        second.endpoint("imap.example.test", lambda s: endpoint).connect(object())
        self.assertFalse(second.admitted)  # waits: the bucket is empty
        self.assertEqual(budget.queued("imap.example.test"), 1)
        first.release()
        self.assertFalse(first.admitted)
        first.release()  # idempotent


class CredentialTests(SynchronousTestCase):
    def test_strikes_are_kept_and_cleared(self) -> None:
        holdoffs = Holdoffs()
        limits = ProviderLimits(holdoffs=holdoffs)
        limits.strike(ACCOUNT, 1800.0)
        limits.strike(ACCOUNT, 3600.0)
        self.assertEqual(limits.strikes, 2)
        self.assertEqual(holdoffs.rows["acc-1"], Holdoff(2, 3600.0, "tag-token-1"))
        limits.logged_in("acc-1")
        self.assertEqual(limits.strikes, 0)
        self.assertEqual(holdoffs.rows, {})

    def test_a_saved_holdoff_counts_for_the_same_login_only(self) -> None:
        holdoffs = Holdoffs()
        holdoffs.rows["acc-1"] = Holdoff(3, 5000.0, "tag-token-1")
        limits = ProviderLimits(holdoffs=holdoffs)
        self.assertIsNone(result(limits.saved_holdoff(replace(ACCOUNT, secret="token-2"))))
        self.assertEqual(limits.strikes, 0)
        held = result(limits.saved_holdoff(ACCOUNT))
        self.assertEqual(held.until, 5000.0)
        self.assertEqual(limits.strikes, 3)  # counting goes on from the saved ones

    def test_without_a_recorder_nothing_is_saved(self) -> None:
        limits = ProviderLimits()
        self.assertIsNone(result(limits.saved_holdoff(ACCOUNT)))
        limits.strike(ACCOUNT, 10.0)
        self.assertEqual(limits.strikes, 1)

    def test_the_third_close_before_the_greeting_is_capacity(self) -> None:
        limits = ProviderLimits()
        kinds = []
        for _ in range(3):
            outcome = Outcome(CLOSED.cause, CLOSED.text, weak=True)
            limits.settle(outcome, connecting=True, ready=False, uptime=0.1,
                          healthy_after=120.0)
            kinds.append(outcome.kind)
        self.assertEqual(kinds, [NETWORK, NETWORK, CAPACITY])
        limits.settle(Outcome("network", "reset", weak=True), connecting=False, ready=True,
                      uptime=5.0, healthy_after=120.0)
        self.assertEqual(limits.early_closes, 0)


class TokenTests(SynchronousTestCase):
    def test_a_newer_token_of_the_row(self) -> None:
        fresh = replace(ACCOUNT, secret="token-2")
        limits = ProviderLimits(reread=lambda account_id: succeed(fresh))
        self.assertEqual(result(Deferred.fromCoroutine(limits.fresher(ACCOUNT))), fresh)

    def test_the_same_token_is_none(self) -> None:
        limits = ProviderLimits(reread=lambda account_id: succeed(ACCOUNT))
        self.assertIsNone(result(Deferred.fromCoroutine(limits.fresher(ACCOUNT))))

    def test_slots(self) -> None:
        self.assertFalse(hasattr(ProviderLimits(), "__dict__"))
