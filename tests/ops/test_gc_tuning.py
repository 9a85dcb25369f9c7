"""The collector settings the daemon's process applies to itself."""

from __future__ import annotations

import gc

from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.ops import gc_tuning


class GcTuningTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.addCleanup(gc.set_threshold, *gc.get_threshold())

    def test_young_threshold_raised_older_ones_kept(self) -> None:
        gc.set_threshold(700, 11, 12)
        gc_tuning.tune_for_many_sessions()
        self.assertEqual(gc.get_threshold(), (gc_tuning.GEN0_THRESHOLD, 11, 12))

    def test_a_higher_threshold_is_kept(self) -> None:
        gc.set_threshold(50_000, 10, 10)
        gc_tuning.tune_for_many_sessions()
        self.assertEqual(gc.get_threshold(), (50_000, 10, 10))

    def test_stopping_freezes_what_exists(self) -> None:
        self.addCleanup(gc.unfreeze)
        kept = [[i] for i in range(100)]
        gc_tuning.stopping()
        self.assertGreater(gc.get_freeze_count(), len(kept))
        self.assertTrue(gc.isenabled())  # new garbage is still collected

    def test_starting_again_unfreezes(self) -> None:
        self.addCleanup(gc.unfreeze)
        gc_tuning.stopping()
        gc_tuning.tune_for_many_sessions()
        self.assertEqual(gc.get_freeze_count(), 0)
