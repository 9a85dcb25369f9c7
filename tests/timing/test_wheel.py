"""TimerWheel: coarse timers on one reactor timer (task.Clock only)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import error
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from rebreak_idle.timing.wheel import TimerWheel


class TimerWheelTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.wheel = TimerWheel(self.clock, resolution=1.0)
        self.fired: list[tuple[str, float]] = []

    def note(self, name: str) -> None:
        self.fired.append((name, self.clock.seconds()))

    def test_provides_the_reactor_interfaces(self) -> None:
        verifyObject(IReactorTime, self.wheel)
        verifyObject(IDelayedCall, self.wheel.callLater(1, self.note, "a"))

    def test_many_timers_share_one_reactor_call(self) -> None:
        for i in range(1000):
            self.wheel.callLater(100 + i % 30 + 0.25, self.note, str(i))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(self.wheel), 1000)
        self.clock.advance(131)
        self.assertEqual(len(self.fired), 1000)
        self.assertEqual(len(self.wheel), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timers_of_a_tick_run_in_one_turn_in_order(self) -> None:
        self.wheel.callLater(4.2, self.note, "a")
        self.wheel.callLater(4.9, self.note, "b")
        self.wheel.callLater(5.0, self.note, "c")
        self.clock.advance(4.5)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.5)
        self.assertEqual(self.fired, [("a", 5.0), ("b", 5.0), ("c", 5.0)])

    @settings(max_examples=200, deadline=None)
    @given(delays=st.lists(st.floats(min_value=0, max_value=500, allow_nan=False),
                           min_size=1, max_size=40),
           start=st.floats(min_value=0, max_value=1e6, allow_nan=False),
           step=st.sampled_from([0.1, 0.25, 0.5, 1.0, 3.0]),
           resolution=st.sampled_from([0.05, 0.3, 1.0]))
    def test_never_early_at_most_one_resolution_late(self, delays: list[float],
                                                     start: float, step: float,
                                                     resolution: float) -> None:
        clock = Clock()
        clock.advance(start)
        wheel = TimerWheel(clock, resolution=resolution)
        fired: dict[int, float] = {}
        due = {i: clock.seconds() + d for i, d in enumerate(delays)}
        for i, d in enumerate(delays):
            wheel.callLater(d, lambda i=i: fired.__setitem__(i, clock.seconds()))
        end = clock.seconds() + 503
        while clock.seconds() < end:
            clock.advance(step)
        self.assertEqual(sorted(fired), sorted(due))
        for i, at in fired.items():
            self.assertGreaterEqual(at, due[i] - 1e-6)
            self.assertLessEqual(at, due[i] + resolution + step + 1e-6)

    def test_cancel(self) -> None:
        a = self.wheel.callLater(3, self.note, "a")
        self.wheel.callLater(3, self.note, "b")
        a.cancel()
        self.assertFalse(a.active())
        self.assertEqual(len(self.wheel), 1)
        self.assertRaises(error.AlreadyCancelled, a.cancel)
        self.assertRaises(error.AlreadyCancelled, a.reset, 5)
        self.clock.advance(3)
        self.assertEqual(self.fired, [("b", 3.0)])

    def test_cancelling_the_last_timer_leaves_no_reactor_call_behind(self) -> None:
        a = self.wheel.callLater(3, self.note, "a")
        a.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(3)
        b = self.wheel.callLater(2, self.note, "b")
        self.clock.advance(2)
        self.assertEqual(self.fired, [("b", 5.0)])
        self.assertFalse(b.active())
        self.assertRaises(error.AlreadyCalled, b.cancel)

    def test_reset_and_delay_move_a_timer(self) -> None:
        a = self.wheel.callLater(30, self.note, "a")
        b = self.wheel.callLater(30, self.note, "b")
        self.clock.advance(10)
        a.reset(5)  # earlier: now + 5 = 15
        b.delay(20)  # later: 30 + 20 = 50
        self.assertEqual((a.getTime(), b.getTime()), (15.0, 50.0))
        self.clock.advance(5)
        self.assertEqual(self.fired, [("a", 15.0)])
        self.clock.advance(34)
        self.assertEqual(len(self.fired), 1)
        self.clock.advance(1)
        self.assertEqual(self.fired, [("a", 15.0), ("b", 50.0)])

    def test_a_timer_set_while_firing_runs_on_a_later_turn(self) -> None:
        armed = []

        def again() -> None:
            self.note("first")
            self.wheel.callLater(0, self.note, "second")
            armed.append(list(self.fired))  # "second" has not run inside this turn

        self.wheel.callLater(2, again)
        self.clock.advance(2)
        self.assertEqual(self.fired, [("first", 2.0), ("second", 2.0)])
        self.assertEqual(armed, [[("first", 2.0)]])

    def test_a_timer_may_cancel_or_move_another_of_its_tick(self) -> None:
        timers = {}

        def first() -> None:
            self.note("first")
            timers["b"].cancel()
            timers["c"].reset(10)

        self.wheel.callLater(1, first)
        timers["b"] = self.wheel.callLater(1, self.note, "b")
        timers["c"] = self.wheel.callLater(1, self.note, "c")
        self.clock.advance(1)
        self.assertEqual(self.fired, [("first", 1.0)])
        self.assertEqual(len(self.wheel), 1)
        self.clock.advance(10)
        self.assertEqual(self.fired, [("first", 1.0), ("c", 11.0)])
        self.assertEqual(len(self.wheel), 0)

    def test_earlier_timer_rearms_the_reactor_call(self) -> None:
        self.wheel.callLater(100, self.note, "late")
        self.wheel.callLater(2, self.note, "early")
        self.clock.advance(2)
        self.assertEqual(self.fired, [("early", 2.0)])
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [100.0])

    def test_a_failing_timer_is_logged_and_the_others_run(self) -> None:
        self.wheel.callLater(1, lambda: 1 / 0)
        self.wheel.callLater(1, self.note, "after")
        self.clock.advance(1)
        self.assertEqual(self.fired, [("after", 1.0)])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_resolution_must_be_positive(self) -> None:
        self.assertRaises(ValueError, TimerWheel, self.clock, 0)
