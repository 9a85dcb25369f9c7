"""Re-arming and cancelling a held IDelayedCall (rebreak_idle.timing.delayed_calls)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.timing.delayed_calls import cancel_pending, rearm
from rebreak_idle.timing.wheel import TimerWheel


class RearmTests(SynchronousTestCase):
    def test_a_pending_call_is_moved_not_replaced(self) -> None:
        clock, fired = Clock(), []
        call = rearm(None, clock, 5, lambda: fired.append(clock.seconds()))
        clock.advance(3)
        self.assertIs(rearm(call, clock, 5, lambda: fired.append(-1.0)), call)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(4.9)
        self.assertEqual(fired, [])
        clock.advance(0.1)
        self.assertEqual(fired, [8.0])

    def test_a_call_that_ran_or_was_cancelled_is_replaced(self) -> None:
        clock, fired = Clock(), []
        ran = rearm(None, clock, 1, lambda: fired.append("first"))
        clock.advance(1)
        again = rearm(ran, clock, 2, lambda: fired.append("second"))
        self.assertIsNot(again, ran)
        again.cancel()
        third = rearm(again, clock, 1, lambda: fired.append("third"))
        self.assertIsNot(third, again)
        clock.advance(5)
        self.assertEqual(fired, ["first", "third"])

    def test_on_the_wheel(self) -> None:
        clock, fired = Clock(), []
        wheel = TimerWheel(clock)
        timer = rearm(None, wheel, 10, lambda: fired.append(clock.seconds()))
        self.assertIs(rearm(timer, wheel, 20, fired.clear), timer)
        clock.advance(19)
        self.assertEqual(fired, [])
        clock.advance(1)
        self.assertEqual(fired, [20.0])


class CancelPendingTests(SynchronousTestCase):
    def test_none_ran_cancelled_and_pending(self) -> None:
        clock, fired = Clock(), []
        cancel_pending(None)
        ran = clock.callLater(1, fired.append, "ran")
        clock.advance(1)
        cancel_pending(ran)  # no AlreadyCalled
        pending = clock.callLater(1, fired.append, "pending")
        cancel_pending(pending)
        self.assertFalse(pending.active())
        cancel_pending(pending)  # no AlreadyCancelled
        clock.advance(5)
        self.assertEqual(fired, ["ran"])
        self.assertEqual(clock.getDelayedCalls(), [])
