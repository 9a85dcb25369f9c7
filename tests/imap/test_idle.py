"""IdleExchange on its own, over a CommandQueue writing into a list: the state table,
IDLE / DONE, the pipelined heartbeat and what it hands back to the client."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.imap import CommandFailed, IdleState, IMAPError
from rebreak_idle.imap.commands import Command, CommandQueue
from rebreak_idle.imap.idle import TRANSITIONS, IdleExchange
from tests.support.imap_client import QueueLink, result_of

S = IdleState


class ExchangeTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        link = QueueLink()
        self.written, self.timeouts = link.written, link.timeouts
        self.commands = CommandQueue(clock=self.clock, link=link)
        self.exchange = IdleExchange(self.commands)

    def plus(self) -> None:
        """The server's ``+`` for the running command (as the client hands it on)."""
        cmd = self.commands.current
        assert cmd is not None and cmd.on_continuation is not None
        cmd.on_continuation(b"idling")

    def tagged(self, status: bytes = b"OK", data: bytes = b"done") -> str | None:
        """The running IDLE's tagged answer (as the client hands it on)."""
        cmd = self.commands.answered()
        assert cmd is not None
        ended = self.exchange.answered(cmd, status, None, data)
        self.commands.send_next()
        self.commands.settle()
        return ended


class TableTests(SynchronousTestCase):
    def test_table_names_every_state(self) -> None:
        self.assertEqual(set(TRANSITIONS), set(IdleState))
        for state, targets in TRANSITIONS.items():
            self.assertLessEqual(targets, set(IdleState))
            if state is not S.OFF:
                self.assertIn(S.OFF, targets, state)  # a lost connection ends any state


class ExchangeTests(ExchangeTestCase):
    def test_idle_then_done(self) -> None:
        idle = result_of(self.exchange.idle())
        self.assertEqual(self.written, [b"0001 IDLE\r\n"])
        self.assertIs(self.exchange.state, S.REQUESTED)
        self.plus()
        self.assertEqual(idle, [None])
        self.assertTrue(self.exchange.idling)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # no deadline while idling
        done = result_of(self.exchange.done())
        self.assertEqual(self.written[-1], b"DONE\r\n")
        self.assertIsNone(self.tagged())
        self.assertEqual(done, [None])
        self.assertIs(self.exchange.state, S.OFF)

    def test_server_ending_the_idle_is_handed_back(self) -> None:
        self.exchange.idle()
        self.plus()
        self.assertEqual(self.tagged(data=b"timeout, bye"), "timeout, bye")
        self.assertIs(self.exchange.state, S.OFF)

    def test_done_deadline_is_reported_as_done(self) -> None:
        self.exchange.idle()
        self.plus()
        self.exchange.done()
        self.clock.advance(self.commands.noop_timeout)
        self.assertEqual(self.timeouts, ["DONE timed out after 30s"])

    def test_done_noop_idle_again_in_one_write(self) -> None:
        self.exchange.idle()
        self.plus()
        heartbeat = result_of(self.exchange.done_noop(idle_again=True))
        self.assertEqual(self.written[-1], b"DONE\r\n0002 NOOP\r\n0003 IDLE\r\n")
        self.assertIs(self.exchange.state, S.DONE_SENT_IDLE_AHEAD)
        self.tagged()
        self.assertIs(self.exchange.state, S.IDLE_AHEAD)
        noop = self.commands.answered()
        noop.deferred.callback(None)
        self.commands.send_next()  # the IDLE written ahead runs, unclaimed
        self.assertEqual(heartbeat, [None])
        self.assertIs(self.exchange.state, S.AHEAD_REQUESTED)
        self.plus()
        self.assertIs(self.exchange.state, S.AHEAD_IDLING)
        self.assertEqual(result_of(self.exchange.idle()), [None])  # claims it
        self.assertIs(self.exchange.state, S.IDLING)
        self.assertEqual(len(self.written), 2)  # nothing more written

    def test_idle_answered_no_fails_the_waiter(self) -> None:
        idle = result_of(self.exchange.idle())
        self.tagged(b"NO", b"not now")
        self.assertIsInstance(idle[0].value, CommandFailed)
        self.assertEqual(idle[0].value.text, "not now")

    def test_commands_refused_while_idle_in_progress(self) -> None:
        self.assertIsNone(self.exchange.refused(b"NOOP"))
        self.exchange.idle()
        refused = result_of(self.exchange.refused(b"NOOP"))
        self.assertIsInstance(refused[0].value, IMAPError)
        self.assertEqual(refused[0].value.text,
                         "NOOP refused: IDLE in progress, call done() first")

    def test_end_with_writes_done_and_the_command_together(self) -> None:
        self.exchange.idle()
        self.plus()
        logout = Command(b"LOGOUT", [b"LOGOUT"], 60.0)
        self.assertTrue(self.exchange.end_with(logout))
        self.assertEqual(self.written[-1], b"DONE\r\n0002 LOGOUT\r\n")
        self.assertIs(self.exchange.state, S.DONE_SENT)

    def test_ended_returns_the_waiters_and_moves_off(self) -> None:
        idle = self.exchange.idle()
        self.assertEqual(self.exchange.ended(), [idle, None])
        self.assertIs(self.exchange.state, S.OFF)
