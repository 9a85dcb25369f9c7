"""Progress of the start-up ramp in the log (ramp_progress, fed by the supervisor)."""

from __future__ import annotations

import re

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.fleet.supervisor import Supervisor
from tests.support.fleet import DECODE, MemoryStore, capture_logs, row, settings
from tests.support.state_session import StateSession

RAMP = re.compile(r"\[idle/db\] ramp: ")


class RampProgressTests(SynchronousTestCase):
    def start(self, n: int, rate: float) -> tuple[Supervisor, Clock, list[str]]:
        clock = Clock()
        logs = capture_logs(self)
        sup = Supervisor(MemoryStore([row(i) for i in range(n)]), StateSession, DECODE,
                         settings(connect_rate=rate), clock)
        sup.startService()
        self.addCleanup(lambda: sup.running and sup.stopService())
        return sup, clock, logs

    def ramp_lines(self, logs: list[str]) -> list[str]:
        return [line for line in logs if RAMP.match(line)]

    def settle(self, sup: Supervisor, state: str = "idle", skip: int = 0) -> None:
        for n, session in enumerate(sup.sessions.values()):
            if session.running and session.state == "connecting" and n >= skip:
                session.state = state

    def test_progress_every_five_seconds_then_one_line_when_all_are_idle(self) -> None:
        sup, clock, logs = self.start(500, rate=50)  # 10 s of ramp
        for _ in range(55):  # 5.5 s: about 270 started, all of them idle at once
            clock.advance(0.1)
            self.settle(sup)
        lines = self.ramp_lines(logs)
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], r"^\[idle/db\] ramp: started 2\d\d / idle 2\d\d / "
                                   r"failed 0 of 500$")
        for _ in range(60):
            clock.advance(0.1)
            self.settle(sup)
        clock.advance(1)
        lines = self.ramp_lines(logs)
        self.assertEqual(len(lines), 2, lines)
        self.assertRegex(lines[-1], r"^\[idle/db\] ramp: all 500 sessions idle after 1[01]\.\ds$")
        clock.advance(30)
        self.assertEqual(len(self.ramp_lines(logs)), 2)  # nothing more once done
        sup.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_ramp_ending_with_some_not_idle(self) -> None:
        sup, clock, logs = self.start(20, rate=1000)  # all started at once
        sessions = list(sup.sessions.values())
        for s in sessions[:15]:
            s.state = "idle"
        for s in sessions[15:18]:
            s.state = "auth-failed"
        clock.advance(1)
        self.assertEqual(self.ramp_lines(logs), [])  # two still connecting
        clock.advance(4)
        self.assertEqual(self.ramp_lines(logs),
                         ["[idle/db] ramp: started 20 / idle 15 / failed 3 of 20"])
        sessions[18].state = "backoff"
        sessions[19].state = "polling"
        clock.advance(1)
        self.assertEqual(self.ramp_lines(logs)[-1],
                         "[idle/db] ramp: 20 sessions started in 6.0s; 16 idle, 4 not idle "
                         "(auth-failed 3, backoff 1)")

    def test_stop_during_the_ramp_cancels_its_timer(self) -> None:
        sup, clock, logs = self.start(100, rate=10)
        clock.advance(3)
        sup.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(self.ramp_lines(logs), [])


class RampSettledHookTests(SynchronousTestCase):
    def test_hook_runs_once_when_the_ramp_settles(self) -> None:
        from rebreak_idle.ops import memory

        clock = Clock()
        capture_logs(self)
        sup = Supervisor(MemoryStore([row(i) for i in range(30)]), StateSession, DECODE,
                         settings(connect_rate=1000), clock)
        calls: list[int] = []
        sup.ramp.on_settled = lambda: calls.append(memory.release_free_heap("test"))
        sup.startService()
        self.addCleanup(lambda: sup.running and sup.stopService())
        clock.advance(0.1)
        self.assertEqual(calls, [])  # still connecting
        for session in sup.sessions.values():
            session.state = "idle"
        clock.advance(1)
        clock.advance(30)
        self.assertEqual(len(calls), 1)
        self.assertGreaterEqual(calls[0], 0)
        self.assertIn("uordblks", memory.heap_figures())
        self.assertGreater(memory.rss_kib(), 0)
