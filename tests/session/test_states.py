"""The session's transition table: every move with the event that causes it."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.session.states import (
    MOVES,
    TRANSITIONS,
    Event,
    ForbiddenTransition,
    State,
    move,
)


class MoveTests(SynchronousTestCase):
    def test_the_path_of_a_connection(self) -> None:
        state = State.STOPPED
        path = []
        for event in (Event.ATTEMPT, Event.GREETED, Event.SELECTING, Event.IDLING,
                      Event.ENDED, Event.ATTEMPT, Event.GREETED, Event.REFUSED,
                      Event.ATTEMPT, Event.STOP, Event.GONE):
            state = move(state, event)
            path.append(state.value)
        self.assertEqual(path, ["connecting", "authenticating", "selecting", "idle",
                                "backoff", "connecting", "authenticating", "auth-failed",
                                "connecting", "stopping", "stopped"])

    def test_a_stop_closes_a_connection_first_and_ends_a_wait_at_once(self) -> None:
        for connected in (State.CONNECTING, State.AUTHENTICATING, State.SELECTING,
                          State.IDLE, State.POLLING):
            self.assertIs(move(connected, Event.STOP), State.STOPPING)
        for waiting in (State.BACKOFF, State.AUTH_FAILED):
            self.assertIs(move(waiting, Event.STOP), State.STOPPED)
        # stopping only ends: no new attempt, no late login step
        self.assertEqual({e for (s, e) in MOVES if s is State.STOPPING}, {Event.GONE})
        self.assertIs(move(State.STOPPING, Event.GONE), State.STOPPED)

    def test_waits_end_only_with_an_attempt_or_a_stop(self) -> None:
        for waiting in (State.BACKOFF, State.AUTH_FAILED):
            self.assertEqual({e for (s, e) in MOVES if s is waiting},
                             {Event.ATTEMPT, Event.STOP})
            self.assertTrue(waiting.waiting)

    def test_a_saved_holdoff_is_waited_out_from_the_start(self) -> None:
        self.assertIs(move(State.STOPPED, Event.HELD_OFF), State.AUTH_FAILED)

    def test_a_server_without_idle_polls(self) -> None:
        self.assertIs(move(State.SELECTING, Event.POLLING), State.POLLING)

    def test_a_move_not_in_the_table_is_refused(self) -> None:
        with self.assertRaises(ForbiddenTransition):
            move(State.IDLE, Event.GREETED)
        with self.assertRaises(ForbiddenTransition):
            move(State.STOPPED, Event.ENDED)
        with self.assertRaises(ForbiddenTransition):
            move(State.STOPPED, Event.STOP)

    def test_transitions_are_the_targets_of_the_moves(self) -> None:
        for state in State:
            self.assertEqual(TRANSITIONS[state],
                             {new for (old, _), new in MOVES.items() if old is state})

    def test_every_event_is_used(self) -> None:
        self.assertEqual({e for (_, e) in MOVES}, set(Event))
