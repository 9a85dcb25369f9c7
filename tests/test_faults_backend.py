"""Fault suite, backend side (issue 9): the whole daemon against a backend that answers
500, does not answer, refuses connections, or is slow while 1,000 EXISTS arrive.
Results: docs/reliability.md.
"""

from __future__ import annotations

import itertools

from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from rebreak_idle import metrics
from rebreak_idle.testing.backend import Answer, Gate
from tests.support.faults import FaultCase, record_figure, until
from tests.support.leaks import IMAP_PASSWORDS

ANN = IMAP_PASSWORDS[0]
EMAIL = "ann@faults.test"


def gave_up_count() -> float:
    return metrics.REGISTRY.get_sample_value(
        "rebreak_idle_scan_triggers_total", {"reason": "exists", "outcome": "gave_up"}) or 0.0


def exists_events() -> float:
    return metrics.REGISTRY.get_sample_value("rebreak_idle_exists_events_total") or 0.0


class BackendFaultTests(FaultCase, TestCase):
    timeout = 40

    async def _watching(self, **settings) -> str:
        """ann's session idles and its first-connect scan has been answered."""
        await self.start_parts()
        ann = self.add_account(EMAIL, ANN)
        self.start_daemon(**settings)
        await self.connected(EMAIL)
        await self.backend.wait_for(1, answered=True)
        await self.daemon.scans.when_quiet().addTimeout(10, self.reactor)
        return ann

    async def test_500_retried_with_backoff_then_one_follow_up(self) -> None:
        ann = await self._watching()
        self.backend.statuses(500, 500)
        self.imap.deliver(EMAIL, subject="one")
        await self.backend.wait_for(2)
        for n in range(5):  # more mail during the retries: coalesced
            self.imap.deliver(EMAIL, subject=f"more {n}")
        await self.wait_log(r"scan-trigger failed \(HTTP 500: .*\); retry 2/6 in 1s")
        await self.wait_log(r"scan-trigger failed \(HTTP 500: .*\); retry 3/6 in 2s",
                            deadline=5)
        await self.wait_log(r"\[idle/ann@faults\.test\] scan-triggered → ", count=2,
                            deadline=10)
        await self.daemon.scans.when_quiet().addTimeout(10, self.reactor)
        requests = self.scans_of(ann)[1:]
        self.assertEqual([r.status for r in requests], [500, 500, 200, 200])
        self.assertEqual([r.body["exists"] for r in requests], [1, 1, 1, 6])
        gaps = [b.time - a.time for a, b in itertools.pairwise(requests[:3])]
        self.assertGreaterEqual(gaps[0], 0.95)
        self.assertGreaterEqual(gaps[1], 1.95)
        record_figure(self, "retry_gaps_s", [round(g, 2) for g in gaps])
        self.assertEqual(self.daemon.scans.last_outcome(ann)["outcome"], "ok")

    async def test_timeout_retried(self) -> None:
        ann = await self._watching(scan_timeout=0.5)
        gate = Gate()
        self.addCleanup(gate.release)
        self.backend.script(Answer(delay=gate))
        self.imap.deliver(EMAIL, subject="slow")
        await self.wait_log(r"scan-trigger failed \(no answer within 0.5s\); retry 2/6 in 1s")
        await self.wait_log(r"\[idle/ann@faults\.test\] scan-triggered → ", count=2,
                            deadline=5)
        await self.daemon.scans.when_quiet().addTimeout(10, self.reactor)
        requests = self.scans_of(ann)[1:]
        self.assertEqual(len(requests), 2)
        self.assertEqual([r.body["reason"] for r in requests], ["exists", "exists"])
        self.assertIsNone(requests[0].status)  # never answered: abandoned by the client
        self.assertEqual(requests[1].status, 200)

    async def test_refused_until_the_backend_is_back(self) -> None:
        ann = await self._watching()
        await self.backend.stop()
        gave_up = gave_up_count()
        self.imap.deliver(EMAIL, subject="while down")
        await self.wait_log(r"scan-trigger failed \(connection refused\); retry 2/6 in 1s")
        for n in range(3):
            self.imap.deliver(EMAIL, subject=f"more while down {n}")
        await self.wait_log(r"scan-trigger failed \(connection refused\); retry 3/6 in 2s",
                            deadline=5)
        down = len(self.scans_of(ann))
        await self.backend.start()  # same port
        await self.wait_log(r"\[idle/ann@faults\.test\] scan-triggered → ", count=2,
                            deadline=10)
        await self.daemon.scans.when_quiet().addTimeout(10, self.reactor)
        after = self.scans_of(ann)[down:]
        # the retried scan, then exactly one follow-up for the mail during the outage
        self.assertEqual([(r.body["reason"], r.body["exists"]) for r in after],
                         [("exists", 1), ("exists", 4)])
        self.assertEqual(gave_up_count(), gave_up)

    async def test_thousand_exists_during_one_slow_scan(self) -> None:
        # scan_timeout well above the test's length: the one scan stays in flight (a
        # timed-out attempt would be retried, correctly, and add a request)
        ann = await self._watching(scan_timeout=60)
        gate = self.backend.hold()
        self.addCleanup(gate.release)
        events = exists_events()
        self.imap.deliver(EMAIL, subject="first")
        await self.backend.wait_for(2)
        for burst in range(10):
            for n in range(100):
                self.imap.deliver(EMAIL, subject=f"burst {burst}/{n}")
            await deferLater(self.reactor, 0.01, lambda: None)
        await until(lambda: (self.snap(ann)["last_exists"] or {}).get("count") == 1001,
                    what="the session saw all 1,001 messages")
        self.assertEqual(exists_events() - events, 1001)
        self.assertEqual(len(self.scans_of(ann)), 2)  # nothing sent while one is in flight
        gate.release()
        await self.wait_log(r"\[idle/ann@faults\.test\] scan-triggered → ", count=3,
                            deadline=10)
        await self.daemon.scans.when_quiet().addTimeout(10, self.reactor)
        requests = self.scans_of(ann)
        self.assertEqual([(r.body["reason"], r.body["exists"]) for r in requests],
                         [("connected", 0), ("exists", 1), ("exists", 1001)])
        self.assertEqual(self.backend.max_in_flight, 1)
