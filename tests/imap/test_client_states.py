"""IdleClient's shape: the IDLE state machine and its table, the connection state, and
what it inherits from Twisted's IMAP4Client (each method works or fails clearly)."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.mail import imap4
from twisted.python.failure import Failure

from rebreak_idle.imap import ConnectionLost, IdleClient, IdleState
from rebreak_idle.imap.client import CONNECTION_TRANSITIONS, ConnectionState
from rebreak_idle.imap.idle import TRANSITIONS, IdleTransitionError
from rebreak_idle.imap.inherited import UNSUPPORTED_COMMANDS, UNSUPPORTED_HOOKS, Unsupported
from tests.support.imap_client import ClientTestCase, result_of

S = IdleState
#: inherited from IMAP4Client and its bases, working as they are (tested below)
WORKING = {"makeConnection", "makeTag", "logPrefix", "clearLineBuffer", "sendLine",
           "pauseProducing", "resumeProducing", "stopProducing"}


def _public_methods(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))
            and not isinstance(getattr(cls, n), type)}


class IdleStateTests(ClientTestCase):
    def test_table_names_every_state(self) -> None:
        self.assertEqual(set(TRANSITIONS), set(IdleState))
        for state, targets in TRANSITIONS.items():
            self.assertLessEqual(targets, set(IdleState))
            if state is not S.OFF:
                self.assertIn(S.OFF, targets, state)  # a lost connection ends any state

    def test_forbidden_transition_raises(self) -> None:
        self.connect()
        with self.assertRaises(IdleTransitionError) as cm:
            self.client.idle_exchange.move(S.IDLING)  # OFF → IDLING skips the IDLE command
        self.assertIn("off cannot move to idling", str(cm.exception))
        self.assertIs(self.client.idle_state, S.OFF)
        self.assertFalse(self.client.idling)

    def test_states_through_a_heartbeat(self) -> None:
        self.connect()
        c = self.client
        seen = [c.idle_state]
        idle = result_of(c.idle())
        seen.append(c.idle_state)
        self.server(b"+ idling\r\n")
        seen.append(c.idle_state)
        heartbeat = result_of(c.done_noop(idle_again=True))
        seen.append(c.idle_state)
        self.server(b"0001 OK IDLE terminated\r\n")
        seen.append(c.idle_state)
        self.server(b"0002 OK NOOP completed\r\n")
        seen.append(c.idle_state)  # nobody called idle() yet
        self.server(b"+ idling\r\n")
        seen.append(c.idle_state)
        again = result_of(c.idle())  # claims the IDLE already running
        seen.append(c.idle_state)
        done = result_of(c.done())
        seen.append(c.idle_state)
        self.server(b"0003 OK IDLE terminated\r\n")
        seen.append(c.idle_state)
        self.assertEqual(seen, [S.OFF, S.REQUESTED, S.IDLING, S.DONE_SENT_IDLE_AHEAD,
                                S.IDLE_AHEAD, S.AHEAD_REQUESTED, S.AHEAD_IDLING, S.IDLING,
                                S.DONE_SENT, S.OFF])
        self.assertEqual((idle, heartbeat, again, done), ([None], [None], [None], [None]))
        self.assertEqual(self.sent(), b"0001 IDLE\r\nDONE\r\n0002 NOOP\r\n0003 IDLE\r\n"
                                      b"DONE\r\n")

    def test_connection_lost_ends_any_state(self) -> None:
        self.connect()
        result_of(self.client.idle())
        self.server(b"+ idling\r\n")
        result_of(self.client.done_noop(idle_again=True))
        self.lose()
        self.assertIs(self.client.idle_state, S.OFF)


class ConnectionStateTests(ClientTestCase):
    def test_table_names_every_state(self) -> None:
        self.assertEqual(set(CONNECTION_TRANSITIONS), set(ConnectionState))
        self.assertEqual(CONNECTION_TRANSITIONS[ConnectionState.CLOSED], frozenset())

    def test_states_of_a_session(self) -> None:
        self.connect(b"")
        c = self.client
        seen = [c.state]
        self.server(b"* OK [CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN SASL-IR] hi\r\n")
        seen.append(c.state)
        result_of(c.login("ann", "pw"))
        self.server(b"0001 OK [CAPABILITY IMAP4rev1 IDLE] ok\r\n")
        seen.append(c.state)
        result_of(c.select())
        self.server(b"* 1 EXISTS\r\n0002 OK [READ-WRITE] ok\r\n")
        seen.append(c.state)
        out = result_of(c.logout())
        self.server(b"* BYE bye\r\n0003 OK bye\r\n")
        seen.append(c.state)
        self.lose()
        self.assertEqual(seen, ["greeting", "unauth", "auth", "selected", "closed"])
        self.assertEqual(out, [None])

    def test_bye_during_logout_is_a_state(self) -> None:
        """``* BYE`` while LOGOUT runs moves to BYE (only LOGOUT's answer may follow);
        the answer closes; a second BYE is data after BYE and closes too."""
        self.connect()
        c = self.client
        out = result_of(c.logout())
        self.server(b"* BYE bye\r\n")
        self.assertIs(c.state, ConnectionState.BYE)
        self.assertFalse(c.closed)
        self.server(b"0001 OK bye\r\n")
        self.assertIs(c.state, ConnectionState.CLOSED)
        self.assertTrue(c.closed)
        self.assertIsNone(c.close_error)
        self.assertEqual(out, [None])
        self.connect()
        c = self.client
        result_of(c.logout())
        self.server(b"* BYE bye\r\n* BYE again\r\n")
        self.assertIs(c.state, ConnectionState.CLOSED)
        self.assertIn("data after BYE", c.close_error.text)

    def test_forbidden_transition_raises(self) -> None:
        self.connect()
        self.lose()
        with self.assertRaises(RuntimeError):
            self.client._enter(ConnectionState.AUTH)  # nothing follows CLOSED
        self.assertEqual(self.client.state, ConnectionState.CLOSED)


class InheritedMethodTests(ClientTestCase):
    def test_every_inherited_public_method_works_or_fails_clearly(self) -> None:
        self.connect()
        own = set()
        for cls in IdleClient.__mro__[: IdleClient.__mro__.index(imap4.IMAP4Client)]:
            if cls is not Unsupported:
                own |= set(vars(cls))
        inherited = _public_methods(imap4.IMAP4Client)
        self.assertLessEqual(set(UNSUPPORTED_COMMANDS) | set(UNSUPPORTED_HOOKS), inherited)
        checked = 0
        for name in sorted(inherited - own - WORKING):
            expected = f"IdleClient does not implement {name}; "
            try:
                result = getattr(self.client, name)("any", "arguments")
            except NotImplementedError as e:
                self.assertIn(name, UNSUPPORTED_HOOKS)
                self.assertTrue(str(e).startswith(expected), str(e))
            else:
                self.assertIn(name, UNSUPPORTED_COMMANDS)
                self.assertIsInstance(result, Deferred)
                failure = result_of(result)[0]
                self.assertIsInstance(failure, Failure)
                self.assertIsInstance(failure.value, NotImplementedError)
                self.assertTrue(str(failure.value).startswith(expected), str(failure.value))
            checked += 1
        self.assertGreater(checked, 40)
        self.assertEqual(self.sent(), b"")
        self.assertFalse(self.transport.disconnecting)

    def test_authenticate_names_the_replacement(self) -> None:
        self.connect()
        failure = result_of(self.client.authenticate("secret"))[0]
        self.assertIn("use login()", str(failure.value))

    def test_the_inherited_methods_that_work(self) -> None:
        self.connect()
        c = self.client
        self.assertEqual(c.makeTag(), b"0001")
        c.sendLine(b"0001 NOOP")
        self.assertEqual(self.sent(), b"0001 NOOP\r\n")
        self.assertIsInstance(c.logPrefix(), str)
        c.pauseProducing()
        self.assertEqual(self.transport.producerState, "paused")
        c.resumeProducing()
        self.server(b"* 4 EXISTS\r\n")
        self.assertEqual(self.events.seen, [("exists", 4)])
        result_of(c.noop())
        self.assertEqual(self.sent(), b"0002 NOOP\r\n")
        c.clearLineBuffer()
        c.stopProducing()
        self.assertEqual(self.transport.producerState, "stopped")


class AfterCloseTests(ClientTestCase):
    def test_idle_after_the_connection_closed_fails_at_once(self) -> None:
        self.connect()
        self.lose()
        idle = result_of(self.client.idle())
        self.assertIsInstance(idle[0].value, ConnectionLost)  # like any command after it
        self.assertIs(self.client.idle_state, S.OFF)
