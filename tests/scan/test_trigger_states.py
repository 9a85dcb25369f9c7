"""The scan trigger's state tables: its phases and one account's scans."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.scan.trigger_states import (
    PHASE_TRANSITIONS,
    SCAN_TRANSITIONS,
    AccountScan,
    Phase,
    PhaseEvent,
    ScanEvent,
    ScanState,
    ScanTransitionError,
    next_phase,
)

E = ScanEvent
S = ScanState


class PhaseTests(SynchronousTestCase):
    def test_every_phase_can_start_again(self) -> None:
        for phase in Phase:
            self.assertIs(PHASE_TRANSITIONS[(phase, PhaseEvent.START)], Phase.OPEN)

    def test_a_stop_that_times_out(self) -> None:
        phase = Phase.OPEN
        seen = []
        for event in (PhaseEvent.STOP, PhaseEvent.TIMEOUT, PhaseEvent.START):
            phase = next_phase(phase, event)
            seen.append(phase)
        self.assertEqual(seen, [Phase.DRAINING, Phase.ABANDONING, Phase.OPEN])

    def test_no_timeout_without_a_stop(self) -> None:
        with self.assertRaises(ScanTransitionError):
            next_phase(Phase.OPEN, PhaseEvent.TIMEOUT)


class AccountScanTests(SynchronousTestCase):
    def test_table_stays_within_the_states(self) -> None:
        self.assertEqual({s for s, _ in SCAN_TRANSITIONS}, set(ScanState))
        self.assertLessEqual(set(SCAN_TRANSITIONS.values()), set(ScanState))
        for state in ScanState:  # a new request is taken in every state
            self.assertIn((state, E.REQUEST), SCAN_TRANSITIONS)

    def test_a_scan_rejected_then_sent_again(self) -> None:
        scan = AccountScan()
        seen = [scan.state]
        for event in (E.WAIT, E.WAIT_OVER, E.SEND, E.REJECTED, E.WAIT_OVER, E.SEND,
                      E.FINISHED):
            seen.append(scan.move(event))
        self.assertEqual(seen, [S.OWING, S.WAITING, S.OWING, S.SENDING, S.WAITING,
                                S.OWING, S.SENDING, S.OWING])

    def test_fields_belong_to_their_state(self) -> None:
        scan = AccountScan()
        scan.move(E.SEND)
        scan.job, scan.running = object(), object()  # type: ignore[assignment]
        scan.move(E.REQUEST)
        self.assertIsNotNone(scan.job)  # still in flight
        scan.move(E.REJECTED)
        self.assertIsNone(scan.job)
        self.assertIsNone(scan.running)
        scan.timer = object()  # type: ignore[assignment]
        scan.move(E.WAIT_OVER)
        self.assertIsNone(scan.timer)

    def test_discarded_in_flight_keeps_no_outcome_until_requested_again(self) -> None:
        scan = AccountScan()
        scan.move(E.SEND)
        self.assertTrue(scan.keeps_outcomes)
        scan.move(E.DISCARD)
        self.assertFalse(scan.keeps_outcomes)
        scan.move(E.REQUEST)
        self.assertIs(scan.state, S.SENDING)
        self.assertTrue(scan.keeps_outcomes)

    def test_forbidden_move_raises_and_changes_nothing(self) -> None:
        scan = AccountScan()
        with self.assertRaises(ScanTransitionError) as cm:
            scan.move(E.FINISHED)  # nothing in flight
        self.assertIn("owing cannot take finished", str(cm.exception))
        self.assertIs(scan.state, S.OWING)

    def test_small(self) -> None:
        self.assertFalse(hasattr(AccountScan(), "__dict__"))
