"""Fault suite, backend side (issues 9 and 23): the whole daemon against a backend that
answers 500, does not answer, refuses connections, or is slow while 1,000 EXISTS arrive.
A scan the backend does not acknowledge stays owed and is sent when it answers again.
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

    async def test_500_owed_and_probed_then_one_scan_of_the_latest(self) -> None:
        ann = await self._watching()
        self.backend.statuses(500, 500)
        self.imap.deliver(EMAIL, subject="one")
        await self.backend.wait_for(2)
        await self.wait_log(r"\[idle/db\] backend down: HTTP 500: .*; 1 scans owed")
        for n in range(5):  # more mail while the backend is down: the same owed scan
            self.imap.deliver(EMAIL, subject=f"more {n}")
        await until(lambda: (self.snap(ann)["last_exists"] or {}).get("count") == 6,
                    what="the session saw all 6 messages")
        await self.wait_log(r"\[idle/db\] backend back after [\d.]+s: sending \d+ owed scans",
                            deadline=10)
        await self.wait_log(r"\[idle/ann@faults\.test\] scan-triggered → ", count=2,
                            deadline=10)
        await self.daemon.scans.when_quiet().addTimeout(10, self.reactor)
        requests = self.scans_of(ann)[1:]
        self.assertEqual([r.status for r in requests], [500, 500, 200])
        self.assertEqual([r.body["exists"] for r in requests], [1, 6, 6])
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
        await self.wait_log(r"scan-trigger failed \(no answer within 0.5s\); scan owed")
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
        self.imap.deliver(EMAIL, subject="while down")
        await self.wait_log(r"scan-trigger failed \(connection refused\); scan owed")
        await self.wait_log(r"\[idle/db\] backend down: connection refused; 1 scans owed")
        for n in range(3):
            self.imap.deliver(EMAIL, subject=f"more while down {n}")
        # a probe (about 1 s later) is refused too: the scan stays owed
        await self.wait_log(r"scan-trigger failed \(connection refused\); scan owed",
                            count=2, deadline=5)
        self.assertEqual(self.daemon.scans.health.state, "down")
        self.assertIsNotNone(self.snap(ann)["scan_owed_since"])
        down = len(self.scans_of(ann))
        await self.backend.start()  # same port
        await self.wait_log(r"\[idle/ann@faults\.test\] scan-triggered → ", count=2,
                            deadline=40)
        await self.daemon.scans.when_quiet().addTimeout(10, self.reactor)
        after = self.scans_of(ann)[down:]
        # one scan for the mail during the outage, with the latest count
        self.assertEqual([(r.body["reason"], r.body["exists"]) for r in after],
                         [("exists", 4)])
        self.assertIsNone(self.snap(ann)["scan_owed_since"])

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
