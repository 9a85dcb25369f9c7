"""The per-host login budget and connection limit, on a Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle import metrics
from rebreak_idle.config import DEFAULT_HOST_LOGIN_BURST, DEFAULT_HOST_LOGIN_RATE, Settings
from rebreak_idle.session.host_budget import HostBudget, Slot, host_key
from rebreak_idle.session.provider_limits import ProviderLimits
from rebreak_idle.session.states import State
from tests.support.provider_days import Sim, account


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
            session.limits = ProviderLimits(None, budget, None)
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


def default_budget(clock: Clock) -> HostBudget:
    """The budget as the daemon builds it from the default settings (service.py)."""
    s = Settings(database_url="postgresql://x", admin_secret="s" * 8, encryption_key="k" * 32)
    return HostBudget(clock, rate=s.host_login_rate, burst=s.host_login_burst,
                      max_connections=s.host_max_connections, sources=s.source_addresses)


def assert_paced(case: SynchronousTestCase, times: list[float], start: float,
                 rate: float, burst: float) -> None:
    """Within every t seconds from ``start``: at most burst + rate * t logins."""
    times = sorted(t for t in times if t >= start)
    for n, t in enumerate(times, 1):
        case.assertLessEqual(n, burst + rate * (t - start) + 1e-6,
                             f"{n} logins within {t - start:.2f}s")


class DefaultBudgetTests(SynchronousTestCase):
    """The budget is on by default and paces every connection attempt of one host."""

    def test_default_is_on(self) -> None:
        budget = default_budget(Clock())
        self.assertTrue(budget.limited)
        self.assertEqual((budget.rate, budget.burst),
                         (DEFAULT_HOST_LOGIN_RATE, DEFAULT_HOST_LOGIN_BURST))

    def test_300_sessions_dropped_at_once_come_back_paced(self) -> None:
        """A provider restart drops 300 sessions of one host at once: within t seconds
        at most burst + rate * t logins go to it (unpaced: 300 within about a second)."""
        n = 300
        sim = Sim(self, "gmx", [account(i) for i in range(n)])
        budget = default_budget(sim.clock)
        for session in sim.sessions:
            session.limits = ProviderLimits(None, budget, None)
        sim.start()
        sim.run(n / budget.rate + 30)
        self.assertTrue(all(s.state is State.IDLE for s in sim.sessions))
        assert_paced(self, sim.server.login_times, 0.0, budget.rate, budget.burst)
        drop = sim.clock.seconds()
        for conn in list(sim.server.connections):
            conn.close()
        sim.run(n / budget.rate + 30)
        self.assertTrue(all(s.state is State.IDLE for s in sim.sessions))
        after = [t for t in sim.server.login_times if t >= drop]
        self.assertEqual(len(after), n)
        assert_paced(self, after, drop, budget.rate, budget.burst)
        self.assertEqual(budget.queued(), 0)

    def test_takeover_and_reconnects_share_the_budget(self) -> None:
        """Sessions taken over from a dead replica start while this replica's own sessions
        of the same host reconnect: together they stay within the one budget."""
        sim = Sim(self, "gmx", [account(i) for i in range(200)])
        budget = default_budget(sim.clock)
        for session in sim.sessions:
            session.limits = ProviderLimits(None, budget, None)
        own, taken = sim.sessions[:100], sim.sessions[100:]
        for session in own:
            session.startService()
        sim.run(60)
        self.assertTrue(all(s.state is State.IDLE for s in own))
        start = sim.clock.seconds()
        for conn in list(sim.server.connections):
            conn.close()  # the host drops this replica's sessions ...
        for session in taken:
            session.startService()  # ... as the takeover starts the others
        sim.run(60)
        self.assertTrue(all(s.state is State.IDLE for s in sim.sessions))
        self.assertEqual(sum(1 for t in sim.server.login_times if t >= start), 200)
        assert_paced(self, sim.server.login_times, start, budget.rate, budget.burst)

    def test_every_session_of_the_daemon_gets_its_budget(self) -> None:
        """Start-up, takeover and reconnect all start sessions through the daemon's one
        factory, which hands every session the daemon's one budget."""
        from rebreak_idle.service import build_daemon

        s = Settings(database_url="postgresql://x", admin_secret="s" * 8,
                     encryption_key="k" * 32)
        daemon = build_daemon(s, Clock())
        session = daemon.new_session(account(1))
        self.assertIs(session.limits.budget, daemon.budget)
        self.assertEqual(daemon.budget.rate, DEFAULT_HOST_LOGIN_RATE)


class HostNameTests(SynchronousTestCase):
    def test_one_budget_per_host_whatever_its_spelling(self) -> None:
        self.assertEqual(host_key("Imap.Example.COM."), "imap.example.com")
        self.assertEqual(host_key("IMAP.bücher.example"), "imap.xn--bcher-kva.example")
        self.assertEqual(host_key("192.0.2.1"), "192.0.2.1")
        budget = HostBudget(Clock(), rate=1.0, burst=2)
        boxes = [grants(budget, host, 1)[0] for host in
                 ("imap.example.com", "Imap.Example.com.", "IMAP.EXAMPLE.COM")]
        self.assertEqual([bool(b) for b in boxes], [True, True, False])
        self.assertEqual(budget.hosts(), ["imap.example.com"])
        self.assertEqual(budget.queued("Imap.Example.com."), 1)

    def test_a_host_no_session_uses_is_forgotten(self) -> None:
        clock = Clock()
        budget = HostBudget(clock, rate=1.0, burst=2)
        slot = grants(budget, "gone.example", 1)[0][0]
        self.assertEqual(budget.hosts(), ["gone.example"])
        slot.release()
        self.assertEqual(budget.hosts(), ["gone.example"])  # its bucket is still refilling
        clock.advance(1)
        for n in range(200):  # new hosts sweep the table now and then
            for s in grants(budget, f"h{n}.example", 1):
                s[0].release()
            clock.advance(1)
        self.assertLess(len(budget.hosts()), 200)
        self.assertNotIn("gone.example", budget.hosts())

    def test_a_full_bucket_is_forgotten_at_release(self) -> None:
        budget = HostBudget(Clock(), max_connections=5)
        slot = grants(budget, "h.example", 1)[0][0]
        slot.release()
        self.assertEqual(budget.hosts(), [])
