"""``IdleClient.status()`` and the parser's ``status_items`` (RFC 3501 §6.3.10, §7.2.4)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.imap import CommandFailed, ProtocolError
from rebreak_idle.imap.parser import status_items
from tests.support.imap_client import ClientTestCase, result_of


class StatusItemsTests(SynchronousTestCase):
    def test_items(self) -> None:
        self.assertEqual(status_items(b"INBOX (UIDNEXT 5 MESSAGES 3 UIDVALIDITY 1000)"),
                         ("INBOX", {"UIDNEXT": 5, "MESSAGES": 3, "UIDVALIDITY": 1000}))
        self.assertEqual(status_items(b'"Sent Items" (uidnext 12)'),
                         ("Sent Items", {"UIDNEXT": 12}))
        self.assertEqual(status_items(b"INBOX ()"), ("INBOX", {}))

    def test_values_that_are_not_numbers_are_left_out(self) -> None:
        self.assertEqual(status_items(b"INBOX (UIDNEXT x MESSAGES 99999999999 UNSEEN 2)"),
                         ("INBOX", {"UNSEEN": 2}))

    def test_malformed(self) -> None:
        for data in (b"", b"INBOX", b"INBOX (UIDNEXT)", b"INBOX UIDNEXT 5", b"(a) (b 1)",
                     b"INBOX ((x) 1)", b"INBOX (UIDNEXT 5", b"INBOX (A 1) extra"):
            with self.assertRaises(ProtocolError, msg=data):
                status_items(data)

    @given(st.binary(max_size=200))
    def test_any_bytes_parse_or_raise_protocol_error(self, data: bytes) -> None:
        try:
            name, items = status_items(data)
        except ProtocolError:
            return
        self.assertIsInstance(name, str)
        for key, value in items.items():
            self.assertIsInstance(key, str)
            self.assertTrue(0 <= value < 10**10)


class StatusCommandTests(ClientTestCase):
    def test_status_uidnext(self) -> None:
        self.connect()
        d = result_of(self.client.status("INBOX", ("UIDNEXT",)))
        self.assertEqual(self.sent(), b"0001 STATUS INBOX (UIDNEXT)\r\n")
        self.server(b"* STATUS INBOX (UIDNEXT 42)\r\n0001 OK STATUS completed\r\n")
        self.assertEqual(d, [{"UIDNEXT": 42}])

    def test_several_items_only_those_asked(self) -> None:
        self.connect()
        d = result_of(self.client.status("Archive", ("UIDNEXT", "UIDVALIDITY", "MESSAGES")))
        self.assertEqual(self.sent(), b"0001 STATUS Archive (UIDNEXT UIDVALIDITY MESSAGES)\r\n")
        self.server(b"* STATUS Archive (MESSAGES 3 UIDNEXT 9 UIDVALIDITY 77 UNSEEN 1)\r\n"
                    b"* STATUS Other (UIDNEXT 1000)\r\n"
                    b"0001 OK done\r\n")
        self.assertEqual(d, [{"MESSAGES": 3, "UIDNEXT": 9, "UIDVALIDITY": 77}])

    def test_answer_without_the_item(self) -> None:
        self.connect()
        d = result_of(self.client.status())
        self.server(b"* STATUS INBOX (MESSAGES 3)\r\n0001 OK done\r\n")
        self.assertEqual(d, [{}])

    def test_refused(self) -> None:
        self.connect()
        d = result_of(self.client.status())
        self.server(b"0001 BAD unknown command\r\n")
        self.assertIsInstance(d[0].value, CommandFailed)

    def test_malformed_answer_closes_the_connection(self) -> None:
        self.connect()
        d = result_of(self.client.status())
        self.server(b"* STATUS INBOX UIDNEXT 5\r\n")
        self.assertTrue(self.client.closed)
        self.assertIsInstance(d[0].value, ProtocolError)

    def test_names_that_need_a_literal_and_items_that_are_not_atoms(self) -> None:
        self.connect()
        for mailbox, items in (("Entwürfe", ("UIDNEXT",)), ("IN\x01BOX", ("UIDNEXT",)),
                               ("INBOX", ("UID NEXT",)), ("INBOX", ())):
            d = result_of(self.client.status(mailbox, items))
            self.assertIsInstance(d[0].value, CommandFailed)
        self.assertEqual(self.sent(), b"")

    def test_a_name_with_a_space_is_quoted(self) -> None:
        self.connect()
        d = result_of(self.client.status("Junk Email", ("UIDNEXT",)))
        self.assertEqual(self.sent(), b'0001 STATUS "Junk Email" (UIDNEXT)\r\n')
        self.server(b'* STATUS "Junk Email" (UIDNEXT 3)\r\n0001 OK done\r\n')
        self.assertEqual(d, [{"UIDNEXT": 3}])
