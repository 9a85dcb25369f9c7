"""The graceful stop is bounded by one REBREAK_SHUTDOWN_TIMEOUT in total: the phases
(sessions, final write, lease release) share one deadline (StopBudget, Daemon._stop)."""

from __future__ import annotations

import uuid
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.config import Settings
from rebreak_idle.deferreds import within
from rebreak_idle.service import Daemon
from rebreak_idle.timing.stop_budget import PHASE_FLOOR, StopBudget


class HangingSession(Service):
    """A session whose LOGOUT never ends."""

    def __init__(self, account_id: str) -> None:
        self.account = type("A", (), {"id": account_id, "host": "h"})()
        self.stopped: Deferred = Deferred()

    def stopService(self) -> Deferred:
        super().stopService()
        return self.stopped

    def snapshot(self) -> dict:
        return {"id": self.account.id, "state": "idle"}


class StopBudgetTests(SynchronousTestCase):
    def test_phases_share_one_deadline(self) -> None:
        clock = Clock()
        budget = StopBudget(clock, 10.0, later=2)
        self.assertEqual(budget.first(), 10.0 - 2 * PHASE_FLOOR)
        clock.advance(8)
        self.assertEqual(budget.remaining(later=1), 1.0)
        clock.advance(0.5)
        self.assertEqual(budget.remaining(later=1), PHASE_FLOOR)  # the floor, not 0.5
        self.assertEqual(budget.remaining(), 1.5)

    def test_floor_never_exceeds_a_share_of_a_tiny_budget(self) -> None:
        budget = StopBudget(Clock(), 1.0, later=2)
        self.assertAlmostEqual(budget.first() + 2 * budget.floor, 1.0)

    def test_within_neither_cancels_nor_consumes(self) -> None:
        clock, d = Clock(), Deferred()
        results: list = []
        within(d, 3, clock).addCallback(results.append)
        clock.advance(3)
        self.assertEqual(results, [False])
        self.assertFalse(d.called)
        d.callback("late")
        self.assertEqual(d.result, "late")
        done: list = []
        d2 = Deferred()
        within(d2, 5, clock).addCallback(done.append)
        d2.callback(None)
        self.assertEqual(done, [True])
        clock.advance(1)
        self.assertEqual(clock.getDelayedCalls(), [])


class DaemonStopTests(SynchronousTestCase):
    def daemon(self, timeout: float) -> tuple[Daemon, Clock, list[str]]:
        clock = Clock()
        settings = Settings(database_url="postgresql://127.0.0.1:1/none",
                            admin_secret="s" * 8, encryption_key="k" * 32,
                            shutdown_timeout=timeout)
        daemon = Daemon(settings, clock)
        self.addCleanup(daemon.store.pool.close)
        daemon.store.pool.run_operation = lambda sql, params: Deferred()  # never answers
        daemon.store.active = lambda: succeed([])  # the account source seam: no rows
        daemon.supervisor.startService()
        lines: list[str] = []
        observer = lambda e: lines.append(formatEvent(e))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return daemon, clock, lines

    def stop_with_a_hanging_session(self, daemon: Any) -> tuple[HangingSession, list]:
        """Begin ``daemon``'s stop with one session that does not log out and one status
        write buffered; ``done`` gets the stop's result."""
        session = HangingSession(str(uuid.uuid4()))
        session.startService()
        daemon.supervisor.sessions[session.account.id] = session
        daemon.store.record_heartbeat(str(uuid.uuid4()))
        done: list = []
        daemon.stopService().addCallback(done.append)
        return session, done

    def test_hanging_sessions_and_write_end_within_one_timeout(self) -> None:
        daemon, clock, lines = self.daemon(10.0)
        _session, done = self.stop_with_a_hanging_session(daemon)
        clock.advance(8.5)
        self.assertEqual(done, [])
        self.assertNotIn("[idle/db] 1 sessions did not stop within 9s", lines)
        clock.advance(0.5)  # the sessions' share: 10 s less the final write's floor
        self.assertIn("[idle/db] 1 sessions did not stop within 9s", lines)
        self.assertEqual(done, [])
        clock.advance(0.5)
        self.assertEqual(done, [])
        clock.advance(0.5)  # what remains: 1 s, at 10 s in all (not 9 + 10)
        self.assertEqual(done, [None])
        self.assertIn("[idle/db] final write did not finish within 1s; 1 writes lost", lines)
        self.assertIn("rebreak-idle stopped in 10.0s", lines)

    def test_a_quick_first_phase_leaves_the_rest_to_the_write(self) -> None:
        daemon, clock, lines = self.daemon(10.0)
        session, done = self.stop_with_a_hanging_session(daemon)
        clock.advance(2)
        session.stopped.callback(None)  # logged out after 2 s
        clock.advance(7.5)
        self.assertEqual(done, [])
        clock.advance(0.5)
        self.assertEqual(done, [None])
        self.assertIn("[idle/db] final write did not finish within 8s; 1 writes lost", lines)
