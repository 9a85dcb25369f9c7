"""Coalesced: one run going, at most one waiting, callers never see a failure."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.coalesce import Coalesced


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
