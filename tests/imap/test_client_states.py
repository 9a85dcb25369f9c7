"""IdleClient's states: the IDLE state machine as the client drives it and the connection
state (RFC 3501 §3) with its table."""

from __future__ import annotations

from rebreak_idle.imap import ConnectionLost, IdleState
from rebreak_idle.imap.client import CONNECTION_TRANSITIONS, ConnectionState
from rebreak_idle.imap.idle import IdleTransitionError
from tests.support.imap_client import ClientTestCase, result_of

S = IdleState


class IdleStateTests(ClientTestCase):
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


class AfterCloseTests(ClientTestCase):
    def test_idle_after_the_connection_closed_fails_at_once(self) -> None:
        self.connect()
        self.lose()
        idle = result_of(self.client.idle())
        self.assertIsInstance(idle[0].value, ConnectionLost)  # like any command after it
        self.assertIs(self.client.idle_state, S.OFF)
