"""Coalesced: one run going, at most one waiting, callers never see a failure; Waiters."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.deferreds import Coalesced, Waiters


class CoalescedTests(SynchronousTestCase):
    def test_calls_during_a_run_share_one_more_run(self) -> None:
        runs: list[Deferred] = []

        def operation() -> Deferred:
            runs.append(Deferred())
            return runs[-1]

        run = Coalesced(operation, lambda f: "failed")
        first = run()
        later = [run() for _ in range(100)]
        self.assertEqual(len(runs), 1)
        self.assertTrue(run.running)
        runs[0].callback("one")
        self.assertEqual(self.successResultOf(first), "one")
        self.assertEqual(len(runs), 2)
        self.assertEqual([d.called for d in later], [False] * 100)
        runs[1].callback("two")
        self.assertEqual({self.successResultOf(d) for d in later}, {"two"})
        self.assertFalse(run.running)

    def test_a_failed_run_answers_with_on_failure(self) -> None:
        seen = []
        run = Coalesced(lambda: fail(RuntimeError("boom")),
                        lambda f: seen.append(f.value) or "fallback")
        self.assertEqual(self.successResultOf(run()), "fallback")
        self.assertEqual(str(seen[0]), "boom")
        self.assertFalse(run.running)


class WaitersTests(SynchronousTestCase):
    def test_fire_answers_current_waiters_only(self) -> None:
        w = Waiters()
        first = w.wait()
        w.fire("x")
        self.assertEqual(self.successResultOf(first), "x")
        later = w.wait()
        self.assertNoResult(later)
        w.fire(None)
        self.assertIsNone(self.successResultOf(later))

    def test_settle_answers_later_waiters_until_unsettled(self) -> None:
        w = Waiters()
        before = w.wait()
        w.settle(7)
        self.assertEqual(self.successResultOf(before), 7)
        self.assertEqual(self.successResultOf(w.wait()), 7)
        w.unsettle()
        self.assertNoResult(w.wait())

    def test_failure_errbacks(self) -> None:
        w = Waiters()
        d = w.wait()
        w.settle(Failure(ValueError("no port")))
        self.failureResultOf(d, ValueError)
        self.failureResultOf(w.wait(), ValueError)
