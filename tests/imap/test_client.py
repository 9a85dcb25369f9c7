"""IdleClient exchanges byte for byte over StringTransport, with a Clock for deadlines."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.mail import imap4
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.failures import CertificateVerifyError, describe
from rebreak_idle.imap import (
    AuthenticationFailed,
    CommandFailed,
    CommandTimeout,
    ConnectionLost,
    IdleClient,
    IMAPError,
    ProtocolError,
    ServerBye,
)
from rebreak_idle.imap.commands import Command
from tests.support.imap_client import ClientTestCase, result_of


class GreetingTests(ClientTestCase):
    def test_capabilities_from_greeting(self) -> None:
        self.connect()
        self.assertEqual(self.sent(), b"")
        caps = self.greeted[0]
        self.assertEqual(caps[b"AUTH"], [b"PLAIN"])
        c = self.client
        self.assertTrue(c.has_idle and c.has_auth_plain and c.has_sasl_ir and c.has_starttls)
        self.assertFalse(c.has_xoauth2 or c.login_disabled)

    def test_capabilities_asked_when_not_in_greeting(self) -> None:
        self.connect(b"* OK hello\r\n")
        self.assertEqual(self.greeted, [])
        self.assertEqual(self.sent(), b"0001 CAPABILITY\r\n")
        self.server(b"* CAPABILITY IMAP4rev1 AUTH=XOAUTH2 AUTH=PLAIN LOGINDISABLED\r\n"
                    b"0001 OK done\r\n")
        self.assertEqual(self.greeted[0][b"AUTH"], [b"XOAUTH2", b"PLAIN"])
        self.assertTrue(self.client.has_xoauth2 and self.client.login_disabled)
        self.assertFalse(self.client.has_idle)

    def test_get_capabilities_cached(self) -> None:
        self.connect()
        self.assertTrue(result_of(self.client.getCapabilities())[0][b"IDLE"] is None)
        self.assertEqual(self.sent(), b"")

    def test_bad_greeting(self) -> None:
        self.connect(b"* NO go away\r\n")
        self.assertIsInstance(self.greeted[0].value, ProtocolError)
        self.assertEqual("not an IMAP server (no IMAP greeting)", self.greeted[0].value.text)
        self.assertTrue(self.transport.disconnecting)

    def test_bye_greeting(self) -> None:
        self.connect(b"* BYE too many connections\r\n")
        self.assertIsInstance(self.greeted[0].value, ServerBye)
        self.assertEqual(self.greeted[0].value.text, "too many connections")

    def test_no_greeting_times_out(self) -> None:
        self.connect(b"", command_timeout=10)
        self.clock.advance(9.9)
        self.assertEqual(self.greeted, [])
        self.clock.advance(0.2)
        self.assertIsInstance(self.greeted[0].value, CommandTimeout)
        self.assertTrue(self.transport.disconnecting)
        self.lose()
        self.assertIsInstance(self.events.seen[-1][1], CommandTimeout)

    def test_preauth(self) -> None:
        self.connect(b"* PREAUTH [CAPABILITY IMAP4rev1 IDLE] welcome\r\n")
        self.assertEqual(self.client.state, "auth")
        self.assertTrue(self.client.has_idle)

    def test_connection_lost_before_greeting(self) -> None:
        self.connect(b"")
        self.lose()
        self.assertIsInstance(self.greeted[0].value, ConnectionLost)
        self.assertEqual(self.greeted[0].value.text, "connection closed by server")


class SelectTests(ClientTestCase):
    def test_select_inbox(self) -> None:
        self.connect()
        d = result_of(self.client.select())
        self.assertEqual(self.sent(), b"0001 SELECT INBOX\r\n")
        self.server(b"* FLAGS (\\Answered \\Seen)\r\n* 17 EXISTS\r\n* 2 RECENT\r\n"
                    b"* OK [UNSEEN 12] first unseen\r\n* OK [UIDVALIDITY 3857529045] ok\r\n"
                    b"* OK [UIDNEXT 4392] next\r\n"
                    b"* OK [PERMANENTFLAGS (\\Seen \\*)] perm\r\n"
                    b"0001 OK [READ-WRITE] SELECT completed\r\n")
        info = d[0]
        self.assertEqual(
            (info["EXISTS"], info["RECENT"], info["UIDVALIDITY"], info["UIDNEXT"],
             info["UNSEEN"], info["READ-WRITE"]), (17, 2, 3857529045, 4392, 12, True))
        self.assertEqual(info["FLAGS"], ["\\Answered", "\\Seen"])
        self.assertEqual(info["PERMANENTFLAGS"], ["\\Seen", "\\*"])
        self.assertEqual(self.events.seen, [])  # SELECT's EXISTS is not an event

    def test_select_no(self) -> None:
        self.connect()
        d = result_of(self.client.select())
        self.server(b"0001 NO [NONEXISTENT] Mailbox doesn't exist\r\n")
        self.assertEqual(d[0].value.text, "[NONEXISTENT] Mailbox doesn't exist")


class IdleTests(ClientTestCase):
    def start_idle(self) -> list[Any]:
        self.connect()
        d = result_of(self.client.idle())
        self.assertEqual(self.sent(), b"0001 IDLE\r\n")
        self.assertEqual(d, [])
        self.assertFalse(self.client.idling)
        self.server(b"+ idling\r\n")
        self.assertEqual(d, [None])
        self.assertTrue(self.client.idling)
        return d

    def test_events_arrive_while_idling(self) -> None:
        self.start_idle()
        self.server(b"* 5 EXISTS\r\n")
        self.assertEqual(self.events.seen, [("exists", 5)])
        self.server(b"* 3 EXPUNGE\r\n* 4 RECENT\r\n* 2 FETCH (FLAGS (\\Seen $Junk))\r\n")
        # RECENT and FETCH (flags) are checked (a malformed one closes) but not reported
        self.assertEqual(self.events.seen[1:], [("expunge", 3)])
        self.assertFalse(self.transport.disconnecting)
        self.assertTrue(self.client.idling)

    def test_capabilities_during_idle_are_not_taken(self) -> None:
        """A CAPABILITY list pushed during IDLE (a flood of 16 KiB ``A= A= ...`` lines
        cost 25 ms each to parse) is skipped unread: the capabilities stay those learnt
        before, and the connection stays up."""
        self.start_idle()
        before = dict(self.client.capabilities)
        flood = b"* CAPABILITY " + b"A= " * 5000 + b"\r\n"
        self.server(flood + b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] hi\r\n")
        self.assertEqual(self.client.capabilities, before)
        self.assertTrue(self.client.has_idle)
        self.assertFalse(self.client.has_xoauth2)
        self.assertFalse(self.transport.disconnecting)
        self.assertTrue(self.client.idling)

    def test_done(self) -> None:
        self.start_idle()
        d = result_of(self.client.done())
        self.assertEqual(self.sent(), b"DONE\r\n")
        self.server(b"* 6 EXISTS\r\n")
        self.assertEqual(d, [])
        self.server(b"0001 OK IDLE terminated\r\n")
        self.assertEqual(d, [None])
        self.assertFalse(self.client.idling)
        self.assertEqual(self.events.seen, [("exists", 6)])
        # the next command goes out normally
        result_of(self.client.noop())
        self.assertEqual(self.sent(), b"0002 NOOP\r\n")

    def test_done_timeout(self) -> None:
        self.start_idle()
        self.clock.advance(3600)  # idling has no deadline
        self.assertFalse(self.transport.disconnecting)
        d = result_of(self.client.done())
        self.clock.advance(30)
        self.assertIsInstance(d[0].value, CommandTimeout)
        self.assertEqual(d[0].value.text, "DONE timed out after 30s")
        self.assertTrue(self.transport.disconnecting)

    def test_idle_rejected(self) -> None:
        self.connect()
        d = result_of(self.client.idle())
        self.server(b"0001 BAD Unknown command\r\n")
        self.assertIsInstance(d[0].value, CommandFailed)
        self.assertEqual(d[0].value.text, "Unknown command")
        self.assertFalse(self.client.idling)
        result_of(self.client.noop())
        self.assertEqual(self.sent(), b"0001 IDLE\r\n0002 NOOP\r\n")

    def test_idle_no_continuation_times_out(self) -> None:
        self.connect()
        d = result_of(self.client.idle())
        self.clock.advance(60)
        self.assertIsInstance(d[0].value, CommandTimeout)

    def test_commands_refused_while_idling(self) -> None:
        self.start_idle()
        f = result_of(self.client.noop())[0]
        self.assertIsInstance(f.value, IMAPError)
        self.assertIn("IDLE in progress", f.value.text)
        self.assertEqual(self.sent(), b"")

    def test_server_ends_idle(self) -> None:
        self.start_idle()
        self.server(b"0001 OK Idle timeout\r\n")
        self.assertFalse(self.client.idling)
        self.assertEqual(self.events.seen, [("idle-ended", "Idle timeout")])

    def test_logout_while_idling(self) -> None:
        self.start_idle()
        d = result_of(self.client.logout())
        self.assertEqual(self.sent(), b"DONE\r\n0002 LOGOUT\r\n")  # one write
        self.server(b"0001 OK done\r\n")
        self.assertEqual(self.sent(), b"")
        self.assertEqual(d, [])
        self.server(b"* BYE Logging out\r\n0002 OK Logout completed\r\n")
        self.assertEqual(d, [None])
        self.assertTrue(self.transport.disconnecting)
        self.assertNotIn("bye", [e[0] for e in self.events.seen])
        # closing, not yet closed (a TLS close takes a round trip): no command deadline
        # is left behind to outlive the connection
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bye_while_idling(self) -> None:
        self.start_idle()
        d = result_of(self.client.done())
        self.transport.clear()
        self.server(b"* BYE Server shutting down\r\n* 9 EXISTS\r\n")
        self.assertEqual(self.events.seen, [("bye", "Server shutting down")])
        self.assertIsInstance(d[0].value, ServerBye)
        self.assertTrue(self.transport.disconnecting)
        self.lose()
        self.assertIsInstance(self.events.seen[-1][1], ServerBye)

    def test_connection_lost_while_idling(self) -> None:
        self.start_idle()
        d = result_of(self.client.done())
        self.lose()
        self.assertIsInstance(d[0].value, ConnectionLost)
        self.assertEqual(self.events.seen, [("lost", d[0].value)])

    def test_idle_has_no_pending_timer(self) -> None:
        self.start_idle()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class PipelinedHeartbeatTests(ClientTestCase):
    """done_noop(): DONE and NOOP in one write, one deadline timer reused throughout."""

    def start_idle(self, **kw: Any) -> None:
        self.connect(**kw)
        result_of(self.client.idle())
        self.server(b"+ idling\r\n")
        self.sent()

    def test_one_write_then_answers_in_order(self) -> None:
        self.start_idle()
        writes: list[bytes] = []
        write = self.transport.write
        self.transport.write = lambda data: (writes.append(data), write(data))  # type: ignore
        d = result_of(self.client.done_noop())
        self.assertEqual(writes, [b"DONE\r\n0002 NOOP\r\n"])  # one write, one segment
        self.assertEqual(self.sent(), b"DONE\r\n0002 NOOP\r\n")
        self.server(b"* 6 EXISTS\r\n0001 OK IDLE terminated\r\n")
        self.assertEqual(d, [])
        self.assertFalse(self.client.idling)
        self.server(b"* 7 EXISTS\r\n0002 OK NOOP completed\r\n")
        self.assertEqual(d, [None])
        self.assertEqual(self.events.seen, [("exists", 6), ("exists", 7)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # IDLE again: the next tag follows
        result_of(self.client.idle())
        self.assertEqual(self.sent(), b"0003 IDLE\r\n")

    def test_answers_in_one_segment(self) -> None:
        self.start_idle()
        heartbeat = self.client.done_noop()
        d = result_of(heartbeat)
        idle_again: list[Any] = []
        heartbeat.addCallback(lambda _: idle_again.append(result_of(self.client.idle())))
        self.server(b"0001 OK IDLE terminated\r\n0002 OK NOOP completed\r\n+ idling\r\n")
        self.assertEqual(d, [None])
        self.assertEqual(idle_again[0], [None])
        self.assertTrue(self.client.idling)
        self.assertEqual(self.sent(), b"DONE\r\n0002 NOOP\r\n0003 IDLE\r\n")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_one_timer_reset_from_command_to_command(self) -> None:
        self.start_idle(noop_timeout=30, command_timeout=60)
        result_of(self.client.done_noop())
        (timer,) = self.clock.getDelayedCalls()
        self.assertEqual(timer.getTime(), 30)
        self.clock.advance(10)
        self.server(b"0001 OK IDLE terminated\r\n")
        self.assertEqual(self.clock.getDelayedCalls(), [timer])  # the same call, reset
        self.assertEqual(timer.getTime(), 40)  # the NOOP's deadline starts at the IDLE's OK

    def test_done_unanswered(self) -> None:
        self.start_idle(noop_timeout=30)
        d = result_of(self.client.done_noop())
        self.clock.advance(29.9)
        self.assertEqual(d, [])
        self.clock.advance(0.1)
        self.assertIsInstance(d[0].value, CommandTimeout)
        self.assertEqual(d[0].value.text, "DONE timed out after 30s")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noop_unanswered(self) -> None:
        self.start_idle(noop_timeout=10)
        d = result_of(self.client.done_noop())
        self.clock.advance(5)
        self.server(b"0001 OK IDLE terminated\r\n")
        self.clock.advance(9.9)
        self.assertEqual(d, [])
        self.clock.advance(0.1)
        self.assertEqual(d[0].value.text, "NOOP timed out after 10s")
        self.assertTrue(self.transport.disconnecting)

    def test_idle_ends_with_no(self) -> None:
        self.start_idle()
        d = result_of(self.client.done_noop())
        self.server(b"0001 NO IDLE failed\r\n")
        self.assertIsInstance(d[0].value, CommandFailed)
        self.assertEqual(d[0].value.text, "IDLE failed")
        self.server(b"0002 OK NOOP completed\r\n")  # the NOOP's answer is still expected
        self.assertFalse(self.transport.disconnecting)

    def test_noop_fails(self) -> None:
        self.start_idle()
        d = result_of(self.client.done_noop())
        self.server(b"0001 OK IDLE terminated\r\n0002 BAD no\r\n")
        self.assertIsInstance(d[0].value, CommandFailed)
        self.assertEqual(d[0].value.command, "NOOP")

    def test_noop_answer_before_idle_answer_is_hostile(self) -> None:
        self.start_idle()
        d = result_of(self.client.done_noop())
        self.server(b"0002 OK NOOP completed\r\n")
        self.assertIsInstance(d[0].value, ProtocolError)
        self.assertTrue(self.transport.disconnecting)

    def test_connection_lost_fails_it(self) -> None:
        self.start_idle()
        d = result_of(self.client.done_noop())
        self.server(b"0001 OK IDLE terminated\r\n")
        self.lose()
        self.assertIsInstance(d[0].value, ConnectionLost)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refused_when_not_idling_or_twice(self) -> None:
        self.connect()
        self.assertIsInstance(result_of(self.client.done_noop())[0].value, IMAPError)
        result_of(self.client.idle())
        self.server(b"+ idling\r\n")
        result_of(self.client.done_noop())
        self.sent()
        self.assertIsInstance(result_of(self.client.done_noop())[0].value, IMAPError)
        self.assertEqual(result_of(self.client.done()), [])  # the DONE already sent
        self.assertEqual(self.sent(), b"")

    def test_idle_again_in_the_same_write(self) -> None:
        self.start_idle(noop_timeout=30, command_timeout=60)
        heartbeat = result_of(self.client.done_noop(idle_again=True))
        self.assertEqual(self.sent(), b"DONE\r\n0002 NOOP\r\n0003 IDLE\r\n")
        self.server(b"0001 OK IDLE terminated\r\n")
        self.assertIsInstance(result_of(self.client.noop())[0].value, IMAPError)
        self.server(b"0002 OK NOOP completed\r\n")
        self.assertEqual(heartbeat, [None])
        idle = result_of(self.client.idle())  # the IDLE already sent: nothing written
        self.assertEqual(self.sent(), b"")
        self.assertEqual(idle, [])
        (timer,) = self.clock.getDelayedCalls()
        self.assertEqual(timer.getTime(), 60)
        self.server(b"* 9 EXISTS\r\n+ idling\r\n")
        self.assertEqual(idle, [None])
        self.assertTrue(self.client.idling)
        self.assertEqual(self.events.seen, [("exists", 9)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # and the next heartbeat works the same way
        result_of(self.client.done_noop(idle_again=True))
        self.assertEqual(self.sent(), b"DONE\r\n0004 NOOP\r\n0005 IDLE\r\n")

    def test_idle_again_answers_in_one_segment(self) -> None:
        self.start_idle()
        heartbeat = self.client.done_noop(idle_again=True)
        idle: list[Any] = []
        heartbeat.addCallback(lambda _: idle.append(result_of(self.client.idle())))
        self.server(b"0001 OK done\r\n0002 OK done\r\n+ idling\r\n")
        self.assertEqual(idle, [[None]])
        self.assertTrue(self.client.idling)
        self.assertEqual(self.sent(), b"DONE\r\n0002 NOOP\r\n0003 IDLE\r\n")

    def test_idle_again_without_continuation_times_out(self) -> None:
        self.start_idle(command_timeout=60)
        result_of(self.client.done_noop(idle_again=True))
        self.server(b"0001 OK\r\n0002 OK\r\n")
        idle = result_of(self.client.idle())
        self.clock.advance(60)
        self.assertEqual(idle[0].value.text, "IDLE timed out after 60s")
        self.assertTrue(self.transport.disconnecting)

    def test_idle_again_rejected(self) -> None:
        self.start_idle()
        result_of(self.client.done_noop(idle_again=True))
        self.server(b"0001 OK\r\n0002 OK\r\n")
        idle = result_of(self.client.idle())
        self.server(b"0003 NO not now\r\n")
        self.assertIsInstance(idle[0].value, CommandFailed)
        self.assertFalse(self.client.idling)

    def test_idle_again_lost(self) -> None:
        self.start_idle()
        heartbeat = result_of(self.client.done_noop(idle_again=True))
        self.server(b"0001 OK\r\n0002 OK\r\n")
        idle = result_of(self.client.idle())
        self.lose()
        self.assertEqual(heartbeat, [None])
        self.assertIsInstance(idle[0].value, ConnectionLost)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idle_again_lost_before_noop_answer(self) -> None:
        self.start_idle()
        heartbeat = result_of(self.client.done_noop(idle_again=True))
        self.server(b"0001 OK\r\n")
        self.lose()
        self.assertIsInstance(heartbeat[0].value, ConnectionLost)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_logout_written_with_done_keeps_its_deadline(self) -> None:
        self.connect(noop_timeout=30, command_timeout=60)
        self.start_idle()
        d = result_of(self.client.logout())
        self.assertEqual(self.sent(), b"DONE\r\n0002 LOGOUT\r\n")
        self.clock.advance(10)
        self.server(b"0001 OK IDLE terminated\r\n")  # LOGOUT's 60 s start now
        self.clock.advance(59)
        self.assertEqual(d, [])
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)  # a LOGOUT that times out closes the connection
        self.assertTrue(self.transport.disconnecting)
        self.lose()
        self.assertEqual(d, [None])

    def test_logout_before_idle_again_starts(self) -> None:
        self.start_idle()
        heartbeat = result_of(self.client.done_noop(idle_again=True))
        self.sent()
        self.server(b"0001 OK IDLE terminated\r\n")
        out = result_of(self.client.logout())  # the new IDLE is on its way: DONE on "+"
        self.assertEqual(self.sent(), b"")
        self.server(b"0002 OK NOOP completed\r\n+ idling\r\n")
        self.assertEqual(heartbeat, [None])
        self.assertEqual(self.sent(), b"DONE\r\n")
        self.server(b"0003 OK IDLE terminated\r\n")
        self.assertEqual(self.sent(), b"0004 LOGOUT\r\n")
        self.server(b"* BYE bye\r\n0004 OK Logout completed\r\n")
        self.assertEqual(out, [None])

    def test_unexpected_continuation_during_noop_is_hostile(self) -> None:
        self.start_idle()
        heartbeat = result_of(self.client.done_noop(idle_again=True))
        self.server(b"0001 OK\r\n+ idling\r\n")
        self.assertIsInstance(heartbeat[0].value, ProtocolError)
        self.assertTrue(self.transport.disconnecting)

    def test_logout_during_heartbeat(self) -> None:
        self.start_idle()
        d = result_of(self.client.done_noop())
        out = result_of(self.client.logout())
        self.assertEqual(self.sent(), b"DONE\r\n0002 NOOP\r\n")  # no second DONE
        self.server(b"0001 OK IDLE terminated\r\n0002 OK NOOP completed\r\n")
        self.assertEqual(d, [None])
        self.assertEqual(self.sent(), b"0003 LOGOUT\r\n")
        self.server(b"* BYE bye\r\n0003 OK Logout completed\r\n")
        self.assertEqual(out, [None])


class MiscTests(ClientTestCase):
    def test_untagged_between_commands(self) -> None:
        self.connect()
        self.server(b"* 7 EXISTS\r\n* 1 EXPUNGE\r\n")
        self.assertEqual(self.events.seen, [("exists", 7), ("expunge", 1)])

    def test_untagged_during_noop_delivered_at_once(self) -> None:
        self.connect()
        d = result_of(self.client.noop())
        self.server(b"* 8 EXISTS\r\n")
        self.assertEqual(self.events.seen, [("exists", 8)])
        self.assertEqual(d, [])
        self.server(b"0001 OK NOOP completed\r\n")
        self.assertEqual(d, [None])

    def test_noop_timeout(self) -> None:
        self.connect(noop_timeout=30)
        d = result_of(self.client.noop())
        self.clock.advance(29)
        self.assertEqual(d, [])
        self.clock.advance(1)
        self.assertEqual(d[0].value.text, "NOOP timed out after 30s")

    def test_queued_commands_fail_on_loss(self) -> None:
        self.connect()
        ds = [result_of(self.client.noop()) for _ in range(3)]
        self.assertEqual(self.sent(), b"0001 NOOP\r\n")
        self.server(b"0001 OK\r\n")
        self.assertEqual(self.sent(), b"0002 NOOP\r\n")
        self.lose()
        self.assertEqual(ds[0], [None])
        self.assertIsInstance(ds[1][0].value, ConnectionLost)
        self.assertIsInstance(ds[2][0].value, ConnectionLost)
        # a command after the loss fails at once
        self.assertIsInstance(result_of(self.client.noop())[0].value, ConnectionLost)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_logout_succeeds_on_close(self) -> None:
        self.connect()
        d = result_of(self.client.logout())
        self.lose()
        self.assertEqual(d, [None])

    def test_callback_errors_do_not_break_client(self) -> None:
        self.connect()

        def boom(n: int) -> None:
            raise RuntimeError("owner bug")

        self.client.on_exists = boom
        self.server(b"* 3 EXISTS\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(self.transport.disconnecting)

    def test_literal_in_response(self) -> None:
        self.connect()
        d = result_of(self.client.noop())
        self.server(b"* 1 FETCH (FLAGS (\\Seen) BODY[HEADER] {5}\r\nab")
        self.server(b"cd\n)\r\n0001 OK\r\n")
        self.assertEqual(self.events.seen, [])  # FETCH responses are not reported
        self.assertEqual(d, [None])
        self.assertFalse(self.transport.disconnecting)

    def test_built_directly(self) -> None:
        """No factory of its own: IdleClient is built with keyword arguments; what is not
        given stays a class default (few attributes per instance)."""
        client = IdleClient(clock=Clock(), noop_timeout=5)
        self.assertIsInstance(client, imap4.IMAP4Client)
        self.assertEqual(client.noop_timeout, 5)
        self.assertEqual(client.command_timeout, 60)
        self.assertNotIn("command_timeout", vars(client))

    def test_secure_transport(self) -> None:
        self.connect()
        self.assertTrue(self.client.secure_transport())
        self.peer = "10.1.2.3"
        self.connect()
        self.assertFalse(self.client.secure_transport())

    def test_paused_client_reads_nothing_until_resumed(self) -> None:
        """As Twisted's LineReceiver: while paused, what arrives is kept, not read."""
        self.connect()
        self.client.pauseProducing()
        self.server(b"* 4 EXISTS\r\n* 5 EXISTS\r\n")
        self.assertEqual(self.events.seen, [])
        self.client.resumeProducing()
        self.assertEqual(self.events.seen, [("exists", 4), ("exists", 5)])

    def test_lines_after_the_transport_started_closing_are_not_read(self) -> None:
        """As Twisted's LineReceiver: once the transport is closing (the owner closed it
        from a callback), the rest of the read is not handed on."""
        self.connect()
        self.client.on_exists = lambda n: self.transport.loseConnection()
        seen: list[int] = []
        self.client.on_expunge = seen.append
        self.server(b"* 4 EXISTS\r\n* 1 EXPUNGE\r\n")
        self.assertEqual(seen, [])


class CommandMethodTests(ClientTestCase):
    """The public command methods that login (auth.py) and LIST / STATUS (listing.py)
    are written over."""

    def test_command_writes_one_line_and_fires_with_on_ok(self) -> None:
        self.connect()
        d = result_of(self.client.command(b"ENABLE", b"UTF8=ACCEPT",
                                          on_ok=lambda code, data: data))
        self.assertEqual(self.sent(), b"0001 ENABLE UTF8=ACCEPT\r\n")
        self.server(b"0001 OK enabled\r\n")
        self.assertEqual(d, [b"enabled"])

    def test_send_writes_pieces_on_each_continuation(self) -> None:
        self.connect()
        d = result_of(self.client.send(Command(b"X", [b"X {2}", b"ab"], 60.0)))
        self.assertEqual(self.sent(), b"0001 X {2}\r\n")
        self.server(b"+ go\r\n")
        self.assertEqual(self.sent(), b"ab\r\n")
        self.server(b"0001 OK\r\n")
        self.assertEqual(d, [None])

    def test_both_refused_while_idle(self) -> None:
        self.connect()
        result_of(self.client.idle())
        self.server(b"+ idling\r\n")
        self.sent()
        refused = [result_of(self.client.command(b"NOOP"))[0].value,
                   result_of(self.client.send(Command(b"LIST", [b"LIST"], 60.0)))[0].value]
        self.assertEqual([e.text for e in refused],
                         ["NOOP refused: IDLE in progress, call done() first",
                          "LIST refused: IDLE in progress, call done() first"])
        self.assertEqual(self.sent(), b"")


class StartTLSTests(ClientTestCase):
    def test_starttls_then_capabilities(self) -> None:
        self.peer = "192.0.2.1"
        self.connect()
        started: list[Any] = []
        self.transport.startTLS = started.append  # type: ignore[attr-defined]
        from twisted.internet.interfaces import ITLSTransport
        from zope.interface import alsoProvides
        alsoProvides(self.transport, ITLSTransport)
        d = result_of(self.client.startTLS("creator"))
        self.assertEqual(self.sent(), b"0001 STARTTLS\r\n")
        self.server(b"0001 OK Begin TLS negotiation now\r\n")
        self.assertEqual(started, ["creator"])
        self.assertEqual(self.sent(), b"0002 CAPABILITY\r\n")
        self.assertFalse(self.client.has_starttls)
        self.server(b"* CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN\r\n0002 OK\r\n")
        self.assertIn(b"IDLE", d[0])
        self.assertTrue(self.client.secure_transport())

    def test_starttls_injection_refused(self) -> None:
        self.connect()
        from twisted.internet.interfaces import ITLSTransport
        from zope.interface import alsoProvides
        alsoProvides(self.transport, ITLSTransport)
        started: list[Any] = []
        self.transport.startTLS = started.append  # type: ignore[attr-defined]
        d = result_of(self.client.startTLS("creator"))
        self.server(b"0001 OK go\r\n* 1 EXISTS\r\n")
        self.assertEqual(started, [])
        self.assertIsInstance(d[0].value, ProtocolError)
        self.assertTrue(self.transport.disconnecting)

    def test_starttls_not_offered(self) -> None:
        self.connect(b"* OK [CAPABILITY IMAP4rev1] hi\r\n")
        self.assertIsInstance(result_of(self.client.startTLS("c"))[0].value, CommandFailed)

    def test_tls_failure_text(self) -> None:
        self.connect()
        d = result_of(self.client.noop())
        self.client.connectionLost(Failure(CertificateVerifyError("certificate has expired")))
        self.assertEqual(d[0].value.text, "certificate verify failed: certificate has expired")
        self.assertEqual(describe(d[0]), d[0].value.text)


class DescribeFailureTests(SynchronousTestCase):
    def test_texts(self) -> None:
        from OpenSSL import SSL
        from twisted.internet import error

        cases = [
            (error.ConnectionRefusedError(), "connection refused"),
            (error.DNSLookupError("imap.invalid"), "DNS lookup failed: imap.invalid"),
            (error.TimeoutError(), "connection timed out"),
            (error.ConnectionDone(), "connection closed by server"),
            (error.ConnectionLost(), "connection lost"),
            (SSL.Error([("SSL routines", "", "certificate verify failed")]),
             "certificate verify failed: certificate not trusted"),
            (SSL.Error([("SSL routines", "", "wrong version number")]),
             "TLS error: wrong version number"),
            (CertificateVerifyError("certificate has expired"),
             "certificate verify failed: certificate has expired"),
            (AuthenticationFailed("[AUTHENTICATIONFAILED] Invalid credentials (Failure)"),
             "[AUTHENTICATIONFAILED] Invalid credentials (Failure)"),
            (ValueError("bad\nthing"), "ValueError: bad"),
        ]
        for exc, text in cases:
            self.assertEqual(describe(exc), text)
            self.assertEqual(describe(Failure(exc)), text)

    def test_bad_ca_file(self) -> None:
        from rebreak_idle.net.tls import client_tls_options

        with self.assertRaises(ValueError) as cm:
            client_tls_options("localhost", "/nonexistent/ca.pem")
        self.assertIn("cannot read TLS CA file /nonexistent/ca.pem", str(cm.exception))
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a certificate")
        with self.assertRaises(ValueError):
            client_tls_options("localhost", path)

    def test_ca_file_with_several_certificates(self) -> None:
        from pathlib import Path

        from rebreak_idle.net.tls import client_tls_options, load_ca_file
        from rebreak_idle.testing.certs import make_test_certs

        certs = make_test_certs()
        path = self.mktemp()
        Path(path).write_bytes(Path(certs.ca).read_bytes() + Path(certs.server.cert).read_bytes())
        self.assertEqual(len(load_ca_file(path)), 2)
        self.assertIsNotNone(client_tls_options("127.0.0.1", path))
