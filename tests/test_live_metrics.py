"""Gauges computed at scrape time from the supervisor's live sessions (live_metrics)."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import generate_latest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle import metrics
from rebreak_idle.fleet.supervisor import Supervisor
from rebreak_idle.live_metrics import LIVE, SCANS_LIVE
from rebreak_idle.session.states import State, StateTally
from tests.support.fleet import DECODE, MemoryStore, row, settings
from tests.support.state_session import StateSession


def sample(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


class LiveGaugeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        rows = [row(n) for n in range(5)] + [row(9, encrypted_secret="broken")]
        tally = StateTally()
        self.sup = Supervisor(MemoryStore(rows), lambda a: StateSession(a, tally), DECODE,
                              settings(connect_rate=10), self.clock, tally=tally)
        self.addCleanup(lambda: self.sup.running and self.sup.stopService())

    def sessions(self) -> list[StateSession]:
        return list(self.sup.sessions.values())  # type: ignore[arg-type]

    def test_oldest_heartbeat_among_idle_sessions_only(self) -> None:
        self.sup.startService()  # 5 rows at 10/s: one started now, the rest queued
        self.assertEqual(sample("rebreak_idle_accounts", state="queued"), 4.0)
        self.assertEqual(sample("rebreak_idle_accounts", state="connecting"), 1.0)
        self.assertEqual(sample("rebreak_idle_accounts", state="invalid"), 1.0)
        for _ in range(10):  # the ramp: one session every 0.1 s
            self.clock.advance(0.1)
        now = self.clock.seconds()
        a, b, c, d, e = self.sessions()
        for s, state, age in ((a, State.IDLE, 11), (b, State.IDLE, 301),
                              (c, State.POLLING, 41), (d, State.AUTH_FAILED, 999),
                              (e, State.BACKOFF, 998)):
            s.move(state)
            s.last_heartbeat_at = now - age
        c.last_exists_at, b.last_exists_at = now - 5, now - 100
        self.assertAlmostEqual(sample("rebreak_idle_oldest_heartbeat_age_seconds"), 301.0)
        self.assertEqual(sample("rebreak_idle_heartbeat_age_seconds_count"), 3.0)
        self.assertAlmostEqual(sample("rebreak_idle_heartbeat_age_seconds_sum"), 11 + 301 + 41)
        self.assertEqual(sample("rebreak_idle_heartbeat_age_seconds_bucket", le="15.0"), 1.0)
        self.assertEqual(sample("rebreak_idle_heartbeat_age_seconds_bucket", le="60.0"), 2.0)
        self.assertEqual(sample("rebreak_idle_heartbeat_age_seconds_bucket", le="+Inf"), 3.0)
        self.assertAlmostEqual(sample("rebreak_idle_last_exists_age_seconds"), 5.0)
        self.assertEqual(sample("rebreak_idle_accounts", state="idle"), 2.0)
        self.assertEqual(sample("rebreak_idle_accounts", state="auth-failed"), 1.0)
        self.assertIsNone(sample("rebreak_idle_accounts", state="queued"))
        self.clock.advance(100)  # computed at scrape time: no refresh in between
        self.assertAlmostEqual(sample("rebreak_idle_oldest_heartbeat_age_seconds"), 401.0)

    def test_without_a_running_supervisor(self) -> None:
        self.sup.startService()
        self.sup.stopService()
        self.assertEqual(sample("rebreak_idle_oldest_heartbeat_age_seconds"), None)
        text = generate_latest(metrics.REGISTRY).decode()
        self.assertIn("# TYPE rebreak_idle_oldest_heartbeat_age_seconds gauge", text)
        self.assertIn("# TYPE rebreak_idle_heartbeat_age_seconds histogram", text)

    def test_no_idle_session_is_zero_and_no_exists_is_nan(self) -> None:
        self.sup.startService()
        self.assertEqual(sample("rebreak_idle_oldest_heartbeat_age_seconds"), 0.0)
        value = sample("rebreak_idle_last_exists_age_seconds")
        self.assertNotEqual(value, value)  # NaN
        self.assertIs(LIVE.source, self.sup)


class LiveScanGaugeTests(SynchronousTestCase):
    """The scan trigger's gauges: the backend's state, the owed scans, the oldest's age."""

    def test_read_from_the_attached_trigger_only(self) -> None:
        trigger = SimpleNamespace(health=SimpleNamespace(state="refusing"),
                                  owed=lambda: (7, 42.5))
        SCANS_LIVE.attach(trigger)
        self.addCleanup(SCANS_LIVE.detach, trigger)
        self.assertEqual([sample("rebreak_idle_backend_state", state=s)
                          for s in ("up", "down", "refusing")], [0, 0, 1])
        self.assertEqual(sample("rebreak_idle_scans_owed"), 7)
        self.assertEqual(sample("rebreak_idle_oldest_owed_scan_age_seconds"), 42.5)
        SCANS_LIVE.detach(object())  # another one: still attached
        self.assertEqual(sample("rebreak_idle_scans_owed"), 7)
        SCANS_LIVE.detach(trigger)
        self.assertIsNone(sample("rebreak_idle_scans_owed"))
        self.assertIn("# TYPE rebreak_idle_scans_owed gauge",
                      generate_latest(metrics.REGISTRY).decode())
