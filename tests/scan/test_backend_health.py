"""BackendHealth: the transition table, the probes' pace, Retry-After and its bound."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.scan.backend_health import (
    MAX_RETRY_AFTER,
    REFUSING_PROBE_INTERVAL,
    TRANSITIONS,
    BackendHealth,
    BackendState,
    Event,
)

UP, DOWN, REFUSING = BackendState.UP, BackendState.DOWN, BackendState.REFUSING


def health(jitter: float = 0.0) -> tuple[BackendHealth, Clock]:
    clock = Clock()
    return BackendHealth(clock, jitter=lambda: jitter), clock


class TransitionTests(SynchronousTestCase):
    def test_the_table_covers_every_state_and_event(self) -> None:
        self.assertEqual(set(TRANSITIONS), {(s, e) for s in BackendState for e in Event})

    def test_each_event_leads_where_the_table_says(self) -> None:
        moves = {Event.ANSWERED: "answered", Event.FAILED: "failed",
                 Event.REJECTED: "rejected"}
        for (state, event), target in TRANSITIONS.items():
            h, _ = health()
            if state is DOWN:
                h.failed("x")
            elif state is REFUSING:
                h.rejected("x")
            method = getattr(h, moves[event])
            old = method() if event is Event.ANSWERED else method("why")
            self.assertEqual((old, h.state), (state, target), (state, event))

    def test_since_and_reason_of_the_move_out_of_up(self) -> None:
        h, clock = health()
        self.assertEqual((h.state, h.since, h.reason, h.down_for()), (UP, None, None, 0.0))
        clock.advance(10)
        h.failed("connection refused")
        clock.advance(5)
        h.failed("HTTP 502: bad gateway")  # still down: the first reason stays
        self.assertEqual((h.since, h.reason, h.down_for()), (10, "connection refused", 5))
        h.rejected("HTTP 401")  # a move: its reason
        self.assertEqual((h.state, h.since, h.reason), (REFUSING, 10, "HTTP 401"))
        h.answered()
        self.assertEqual((h.state, h.since, h.reason, h.down_for()), (UP, None, None, 0.0))


class ProbePaceTests(SynchronousTestCase):
    def test_down_doubles_from_one_second_to_at_most_ten(self) -> None:
        h, _ = health(jitter=0.0)
        h.failed("x")
        self.assertEqual([h.probe_delay() for _ in range(6)], [1, 2, 4, 8, 8, 8])
        top, _ = health(jitter=0.999)
        top.failed("x")
        delays = [top.probe_delay() for _ in range(8)]
        self.assertLess(delays[0], 1.25 + 1e-9)
        self.assertLessEqual(max(delays), 10.0)

    def test_answered_starts_the_pace_again(self) -> None:
        h, _ = health()
        h.failed("x")
        for _ in range(5):
            h.probe_delay()
        h.answered()
        h.failed("x")
        self.assertEqual(h.probe_delay(), 1)

    def test_refusing_probes_every_few_minutes(self) -> None:
        h, _ = health(jitter=0.5)
        h.rejected("HTTP 401")
        self.assertEqual(h.probe_delay(), REFUSING_PROBE_INTERVAL * 1.125)

    def test_retry_after_holds_the_probe_back_within_a_bound(self) -> None:
        h, clock = health()
        h.failed("HTTP 503", retry_after=90)
        self.assertEqual(h.probe_delay(), 90)
        clock.advance(90)
        self.assertEqual(h.probe_delay(), 2)  # over: the pace again
        h.failed("HTTP 429", retry_after=10 ** 9)
        self.assertEqual(h.probe_delay(), MAX_RETRY_AFTER)
        h.failed("HTTP 429", retry_after=-5)  # nonsense: no wait beyond the pace
        self.assertEqual(h.probe_delay(), MAX_RETRY_AFTER)
        h.answered()
        h.failed("x")
        self.assertEqual(h.probe_delay(), 1)  # a 2xx forgets the old Retry-After
