"""CommandQueue on its own: given a link (what it writes, whom it tells of a deadline)
and a Clock, it tags, writes one command at a time, keeps one deadline and reports its
expiry."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.imap import AuthenticationFailed, CommandFailed
from rebreak_idle.imap.commands import Command, CommandQueue, command_failed
from tests.support.imap_client import QueueLink, result_of


class QueueTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        link = QueueLink()
        self.written, self.timeouts = link.written, link.timeouts
        self.queue = CommandQueue(clock=self.clock, link=link, command_timeout=60.0,
                                  noop_timeout=30.0)

    def answer(self) -> Command:
        """The running command's answer arrives (as the client does on a tagged line)."""
        cmd = self.queue.answered()
        assert cmd is not None
        cmd.deferred.callback(None)
        self.queue.send_next()
        self.queue.settle()
        return cmd


class SendingTests(QueueTestCase):
    def test_one_command_at_a_time_in_order(self) -> None:
        noop = result_of(self.queue.send(Command(b"NOOP", [b"NOOP"], 30.0)))
        self.queue.send(Command(b"CAPABILITY", [b"CAPABILITY"], 60.0))
        self.assertEqual(self.written, [b"0001 NOOP\r\n"])
        self.assertEqual([c.name for c in self.queue.waiting], [b"CAPABILITY"])
        self.assertEqual(self.answer().name, b"NOOP")
        self.assertEqual(noop, [None])
        self.assertEqual(self.written, [b"0001 NOOP\r\n", b"0002 CAPABILITY\r\n"])
        self.assertEqual(self.queue.current.name, b"CAPABILITY")

    def test_tags_count_up_in_hex(self) -> None:
        tags = [self.queue.make_tag() for _ in range(11)]
        self.assertEqual(tags[0], b"0001")
        self.assertEqual(tags[-1], b"000B")

    def test_ahead_is_tagged_and_not_written(self) -> None:
        """A command written ahead returns its line for the caller's one write; when it
        becomes the running one it is not written again, its hook is told instead."""
        self.queue.send(Command(b"NOOP", [b"NOOP"], 30.0))
        ahead = Command(b"IDLE", [b"IDLE"], 60.0)
        started: list[str] = []
        ahead.on_ahead_started = lambda: started.append("started")
        self.assertEqual(self.queue.ahead(ahead), b"0002 IDLE\r\n")
        self.answer()
        self.assertIs(self.queue.current, ahead)
        self.assertEqual(started, ["started"])
        self.assertEqual(self.written, [b"0001 NOOP\r\n"])

    def test_drain_returns_every_command_and_cancels_the_deadline(self) -> None:
        first = Command(b"NOOP", [b"NOOP"], 30.0)
        second = Command(b"LOGOUT", [b"LOGOUT"], 60.0)
        self.queue.send(first)
        self.queue.send(second)
        self.assertEqual(self.queue.drain(), [first, second])
        self.assertIsNone(self.queue.current)
        self.assertEqual(self.queue.waiting, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class DeadlineTests(QueueTestCase):
    def test_expiry_names_the_command_and_its_timeout(self) -> None:
        self.queue.send(Command(b"SELECT", [b"SELECT INBOX"], 60.0))
        self.clock.advance(59.9)
        self.assertEqual(self.timeouts, [])
        self.clock.advance(0.1)
        self.assertEqual(self.timeouts, ["SELECT timed out after 60s"])

    def test_done_deadline_is_named_done(self) -> None:
        idle = Command(b"IDLE", [b"IDLE"], 60.0)
        self.queue.send(idle)
        self.queue.arm(idle, self.queue.noop_timeout, "DONE")
        self.clock.advance(30)
        self.assertEqual(self.timeouts, ["DONE timed out after 30s"])

    def test_one_timer_reset_from_command_to_command(self) -> None:
        self.queue.send(Command(b"NOOP", [b"NOOP"], 30.0))
        self.queue.send(Command(b"NOOP", [b"NOOP"], 30.0))
        (timer,) = self.clock.getDelayedCalls()
        self.clock.advance(10)
        self.answer()
        self.assertEqual(self.clock.getDelayedCalls(), [timer])
        self.assertEqual(timer.getTime(), 40.0)
        self.answer()
        self.assertEqual(self.clock.getDelayedCalls(), [])  # nothing runs: no deadline

    def test_disarmed_deadline_reports_nothing(self) -> None:
        self.queue.send(Command(b"NOOP", [b"NOOP"], 30.0))
        self.queue.disarm()
        self.clock.advance(3600)
        self.assertEqual(self.timeouts, [])


class CommandFailedTests(SynchronousTestCase):
    def test_no_of_a_login_is_an_authentication_failure(self) -> None:
        login = Command(b"LOGIN", [b"LOGIN a b"], 60.0, auth=True)
        error = command_failed(login, b"NO", b"AUTHENTICATIONFAILED", b"[AUTHENTICATIONFAILED] no")
        self.assertIsInstance(error, AuthenticationFailed)
        self.assertEqual((error.text, error.code, error.command),
                         ("[AUTHENTICATIONFAILED] no", "AUTHENTICATIONFAILED", "LOGIN"))

    def test_bad_or_other_commands_are_command_failures(self) -> None:
        login = Command(b"LOGIN", [b"LOGIN a b"], 60.0, auth=True)
        self.assertNotIsInstance(command_failed(login, b"BAD", None, b"syntax"),
                                 AuthenticationFailed)
        error = command_failed(Command(b"NOOP", [b"NOOP"], 30.0), b"NO", None, b"")
        self.assertIsInstance(error, CommandFailed)
        self.assertEqual(error.text, "NOOP failed")
