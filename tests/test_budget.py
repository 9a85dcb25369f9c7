"""The per-host login budget and connection limit, on a Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle import metrics
from rebreak_idle.budget import HostBudget, Slot
from rebreak_idle.session_state import State
from tests.test_provider_days import Sim, account


def grants(budget: HostBudget, host: str, n: int) -> list[list[Any]]:
    boxes: list[list[Any]] = []
    for _ in range(n):
        box: list[Any] = []
        budget.acquire(host).addBoth(box.append)
        boxes.append(box)
    return boxes


class TokenBucketTests(SynchronousTestCase):
    def test_5000_attempts_are_paced_at_the_rate(self) -> None:
        clock = Clock()
        budget = HostBudget(clock, rate=20.0, burst=50)
        granted_at: list[float] = []
        for _ in range(5000):
            budget.acquire("imap.gmx.net").addCallback(
                lambda _slot: granted_at.append(clock.seconds()))
        self.assertEqual(len(granted_at), 50)  # the burst at once
        self.assertEqual(budget.queued("imap.gmx.net"), 4950)
        self.assertEqual(len(clock.getDelayedCalls()), 1)  # one timer for the host
        while budget.queued():
            clock.advance(0.05)
            self.assertLessEqual(len(clock.getDelayedCalls()), 1)
        self.assertEqual(len(granted_at), 5000)
        # no second of the wave admits more than the rate (after the burst)
        for second in range(1, int(granted_at[-1])):
            in_second = sum(1 for t in granted_at if second <= t < second + 1)
            self.assertLessEqual(in_second, 21, second)
        self.assertGreaterEqual(granted_at[-1], (5000 - 50) / 20.0 - 0.1)
        self.assertLessEqual(granted_at[-1], (5000 - 50) / 20.0 + 1)
        # other hosts are not held up
        self.assertTrue(grants(budget, "imap.gmail.com", 1)[0])

    def test_cancelled_attempt_leaves_the_queue(self) -> None:
        clock = Clock()
        budget = HostBudget(clock, rate=1.0, burst=1)
        gauge = metrics.REGISTRY.get_sample_value("rebreak_idle_login_queue") or 0
        first, second = budget.acquire("h"), budget.acquire("h")
        self.assertTrue(first.called)
        self.assertEqual(budget.queued("h"), 1)
        second.cancel()
        self.failureResultOf(second, CancelledError)
        self.assertEqual(budget.queued("h"), 0)
        self.assertEqual(metrics.REGISTRY.get_sample_value("rebreak_idle_login_queue"), gauge)

    def test_unlimited_budget_is_not_in_the_way(self) -> None:
        budget = HostBudget(Clock())
        self.assertFalse(budget.limited)
        self.assertTrue(all(grants(budget, "h", 100)))


class ConnectionLimitTests(SynchronousTestCase):
    def test_limit_per_source_address_and_spread(self) -> None:
        clock = Clock()
        budget = HostBudget(clock, max_connections=2, sources=("127.0.0.2", "127.0.0.3"))
        boxes = grants(budget, "h", 6)
        slots: list[Slot] = [b[0] for b in boxes if b]
        self.assertEqual(len(slots), 4)
        self.assertEqual(sorted(s.source for s in slots),
                         ["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"])
        self.assertEqual(budget.queued("h"), 2)
        slots[0].release()
        slots[0].release()  # idempotent
        self.assertEqual(sum(1 for b in boxes if b), 5)
        self.assertEqual(boxes[4][0].source, slots[0].source)
        self.assertEqual(budget.open_connections("h"), 4)


class SessionBudgetTests(SynchronousTestCase):
    def test_mass_reconnect_after_an_outage_is_paced_and_logged(self) -> None:
        """A host drops all its sessions at once; they come back no faster than the host
        budget, shown as queued meanwhile, and the wave's settling time is logged."""
        events: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "rebreak_idle.budget":
                events.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        n = 200
        sim = Sim(self, "gmx", [account(i) for i in range(n)])
        budget = HostBudget(sim.clock, rate=5.0, burst=10)
        for session in sim.sessions:
            session._init_limits(None, budget, None)
        sim.start()
        sim.run(60)
        self.assertTrue(all(s.state is State.IDLE for s in sim.sessions))
        start = sim.clock.seconds()
        for conn in list(sim.server.connections):
            conn.close()  # the provider's outage: no BYE, all at once
        sim.run(7)  # the first reconnect delay (5 s and jitter) is over
        self.assertGreater(sum(1 for s in sim.sessions if s.snapshot()["queued"]), n // 2)
        sim.run(120)
        self.assertTrue(all(s.state is State.IDLE for s in sim.sessions))
        logins = sorted(t for t in sim.server.login_times if t >= start)
        self.assertEqual(len(logins), n)
        for second in range(int(start), int(logins[-1]) + 1):
            in_second = sum(1 for t in logins if second <= t < second + 1)
            self.assertLessEqual(in_second, 10 + 5, second)
        self.assertGreaterEqual(logins[-1] - logins[0], (n - 10) / 5.0 - 1)
        self.assertTrue(any("queued connection attempts settled in" in e for e in events),
                        events)
