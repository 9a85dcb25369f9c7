"""IdleClient's LIST (bounded) and STATUS of listed folders, and the heartbeat's pipeline
with STATUS commands between NOOP and IDLE (StringTransport, task.Clock)."""

from __future__ import annotations

import tracemalloc
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from rebreak_idle.imap import CommandFailed
from rebreak_idle.imap.listing import ListEntry, decode_mutf7, encode_mutf7
from rebreak_idle.session.folders import STATUS_ITEMS, resolve
from tests.support.imap_client import GREETING, ClientTestCase, result_of


class ListTests(ClientTestCase):
    def test_list_keeps_what_is_asked(self) -> None:
        self.connect()
        d = result_of(self.client.list_mailboxes(keep=lambda e: e.has("\\Junk")))
        self.assertEqual(self.sent(), b'0001 LIST "" "*"\r\n')
        self.server(b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
                    b'* LIST (\\HasNoChildren \\Junk) "/" "Spam"\r\n'
                    b'* LIST (\\Junk) "/" {6}\r\n')
        self.server(b'Junk 2\r\n* LIST garbage\r\n0001 OK LIST done\r\n')
        self.assertEqual(d, [[ListEntry(("\\HasNoChildren", "\\Junk"), "/", b"Spam"),
                              ListEntry(("\\Junk",), "/", b"Junk 2")]])
        self.assertFalse(self.client.closed)

    def test_long_list_in_literals_is_not_a_flood(self) -> None:
        """A LIST answered in literals, many in one read: each byte counts once against
        the input budget (the rest of a read after each literal used to be counted
        again, 200 literals in one 8 KiB read cost ~800 KiB of budget)."""
        self.connect(greeting=b"")
        self.client.reader.input_burst_bytes = 64 * 1024  # the budget starts at the greeting
        self.client.reader.input_bytes_per_second = 1.0
        self.server(GREETING)
        d = result_of(self.client.list_mailboxes(limit=500))
        chunk = b"".join(b'* LIST () "/" {9}\r\nFolder%03d\r\n' % i for i in range(200))
        self.assertLess(len(chunk), 8 * 1024)
        self.server(chunk + b"0001 OK LIST done\r\n")
        self.assertFalse(self.client.closed)
        self.assertEqual(len(d[0]), 200)
        self.assertEqual(d[0][-1].raw, b"Folder199")

    def test_special_use_selection(self) -> None:
        self.connect()
        result_of(self.client.list_mailboxes(special_use=True))
        self.assertEqual(self.sent(), b'0001 LIST (SPECIAL-USE) "" "*"\r\n')
        result_of(self.client.list_mailboxes(b"Junk Email"))
        self.server(b"0001 OK done\r\n")
        self.assertEqual(self.sent(), b'0002 LIST "" "Junk Email"\r\n')

    def test_hundred_thousand_folders_cost_no_memory(self) -> None:
        self.connect()
        d = result_of(self.client.list_mailboxes(limit=3))
        lines = b"".join(b'* LIST (\\HasNoChildren) "/" "Folder %d"\r\n' % i
                         for i in range(100_000))
        cut = lines.index(b"* LIST", len(lines) * 95 // 100)
        self.server(lines[:cut])  # 95,000 folders
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            self.server(lines[cut:])  # 5,000 more: were they kept, ~1 MB
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.server(b"0001 OK LIST done\r\n")
        self.assertEqual([e.raw for e in d[0]], [b"Folder 0", b"Folder 1", b"Folder 2"])
        self.assertLess(grown, 32 * 1024)

    def test_status_of_a_listed_name(self) -> None:
        self.connect()
        d = result_of(self.client.status(b"Junk Email", STATUS_ITEMS))
        self.assertEqual(self.sent(),
                         b'0001 STATUS "Junk Email" (UIDNEXT UIDVALIDITY MESSAGES)\r\n')
        self.server(b'* STATUS "Junk Email" (MESSAGES 2 UIDNEXT 9 UIDVALIDITY 4)\r\n'
                    b'* STATUS other (MESSAGES 7)\r\n0001 OK done\r\n')
        self.assertEqual(d, [{"MESSAGES": 2, "UIDNEXT": 9, "UIDVALIDITY": 4}])
        refused = result_of(self.client.status("Entwürfe".encode(), STATUS_ITEMS))
        self.assertIsInstance(refused[0].value, CommandFailed)


class PipelineTests(ClientTestCase):
    def test_done_noop_status_idle_in_one_write(self) -> None:
        self.connect()
        result_of(self.client.idle())
        self.server(b"+ idling\r\n")
        self.sent()
        writes: list[bytes] = []
        write = self.transport.write
        self.transport.write = lambda data: (writes.append(data), write(data))  # type: ignore
        spam = self.client.status_command(b"Spam", STATUS_ITEMS, 30.0)
        other = self.client.status_command(b"Junk Email", STATUS_ITEMS, 30.0)
        assert spam is not None and other is not None
        got = [result_of(spam.deferred), result_of(other.deferred)]
        beat = self.client.done_noop(idle_again=True, between=(spam, other))
        again: list[Any] = []
        beat.addCallback(lambda _: again.append(result_of(self.client.idle())))
        self.assertEqual(writes, [b"DONE\r\n0002 NOOP\r\n"
                                  b"0003 STATUS Spam (UIDNEXT UIDVALIDITY MESSAGES)\r\n"
                                  b'0004 STATUS "Junk Email" (UIDNEXT UIDVALIDITY MESSAGES)'
                                  b"\r\n0005 IDLE\r\n"])
        self.server(b"0001 OK IDLE done\r\n0002 OK NOOP done\r\n"
                    b"* STATUS Spam (UIDNEXT 5 UIDVALIDITY 1 MESSAGES 3)\r\n0003 OK s\r\n")
        self.assertEqual(got[0], [{"UIDNEXT": 5, "UIDVALIDITY": 1, "MESSAGES": 3}])
        self.assertEqual(again[0], [])
        self.server(b"0004 NO [NONEXISTENT] no such folder\r\n+ idling\r\n")
        self.assertIsInstance(got[1][0].value, CommandFailed)
        self.assertEqual(again[0], [None])
        self.assertTrue(self.client.idling)
        self.assertEqual(len(writes), 1)


class ResolveTests(ClientTestCase):
    def run_resolve(self, specs: tuple[str, ...], caps: bytes) -> list[Any]:
        self.connect(greeting=b"* OK [CAPABILITY IMAP4rev1 " + caps + b"] hi\r\n")
        return result_of(Deferred.fromCoroutine(resolve(self.client, specs)))

    def test_special_use_and_a_name(self) -> None:
        found = self.run_resolve(("\\Junk", "Unbekannt", "Gelöscht"), b"SPECIAL-USE")
        self.assertEqual(self.sent(), b'0001 LIST (SPECIAL-USE) "" "*"\r\n')
        self.server(b'* LIST (\\Junk) "/" Spam\r\n0001 OK\r\n')
        self.assertEqual(self.sent(), b'0002 LIST "" Unbekannt\r\n')
        self.server(b'* LIST () "/" Unbekannt\r\n0002 OK\r\n')
        self.assertEqual(self.sent(), b'0003 LIST "" Gel&APY-scht\r\n')
        self.server(b"0003 OK\r\n")
        self.assertEqual([e.name for e in found[0]], ["Spam", "Unbekannt"])

    def test_without_special_use_the_attributes_of_list(self) -> None:
        found = self.run_resolve(("\\Junk",), b"IDLE")
        self.assertEqual(self.sent(), b'0001 LIST "" "*"\r\n')
        self.server(b'* LIST (\\Noselect \\Junk) "/" A\r\n* LIST (\\Junk) "/" "Junk"\r\n'
                    b'* LIST (\\Junk) "/" "B"\r\n0001 OK\r\n')
        self.assertEqual([e.name for e in found[0]], ["Junk"])

    def test_names_with_control_characters_are_refused(self) -> None:
        """``&AAA-`` decodes to NUL (C0), ``&AH8-`` to DEL, ``&AIU-`` to NEL (C1): such a
        folder is not watched but reported as refused; the next match is taken."""
        self.connect(greeting=b"* OK [CAPABILITY IMAP4rev1 SPECIAL-USE] hi\r\n")
        refused: list[Any] = []
        found = result_of(Deferred.fromCoroutine(resolve(self.client, ("\\Junk",),
                                                         refused)))
        self.server(b'* LIST (\\Junk) "/" "&AAA-"\r\n* LIST (\\Junk) "/" "a&AH8-"\r\n'
                    b'* LIST (\\Junk) "/" "&AIU-b"\r\n* LIST (\\Junk) "/" Spam\r\n'
                    b"0001 OK\r\n")
        self.assertEqual([e.name for e in found[0]], ["Spam"])
        self.assertEqual([e.name for e in refused], ["\x00", "a\x7f", "\x85b"])

    def test_cyrus_lower_case_attribute_and_inbox_junk(self) -> None:
        """Cyrus lists ``\\junk`` (attributes are case-insensitive, RFC 3501 §9) and
        Courier's folders live under ``INBOX.`` (a name given as such is found)."""
        found = self.run_resolve(("\\Junk",), b"SPECIAL-USE")
        self.server(b'* LIST (\\HasNoChildren \\junk) "." INBOX.Junk\r\n0001 OK\r\n')
        self.assertEqual([e.name for e in found[0]], ["INBOX.Junk"])
        found = self.run_resolve(("INBOX.Junk",), b"IDLE")
        self.assertEqual(self.sent(), b'0001 LIST "" INBOX.Junk\r\n')
        self.server(b'* LIST (\\HasNoChildren) "." "INBOX.Junk"\r\n0001 OK\r\n')
        self.assertEqual([e.name for e in found[0]], ["INBOX.Junk"])

    def test_status_answered_before_the_noop(self) -> None:
        """Dovecot runs the STATUS commands beside the NOOP (RFC 3501 §5.5) and answers
        them first: each completes on its own tag, the NOOP and IDLE follow."""
        self.connect()
        result_of(self.client.idle())
        self.server(b"+ idling\r\n")
        self.sent()
        junk = self.client.status_command(b"Junk", STATUS_ITEMS, 30.0)
        other = self.client.status_command(b"Unbekannt", STATUS_ITEMS, 30.0)
        assert junk is not None and other is not None
        got = [result_of(junk.deferred), result_of(other.deferred)]
        beat = result_of(self.client.done_noop(idle_again=True, between=(junk, other)))
        self.server(b"0001 OK Idle completed\r\n"
                    b"* STATUS Junk (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 7)\r\n"
                    b"0003 OK Status completed\r\n"
                    b"* STATUS Unbekannt (MESSAGES 0 UIDNEXT 1 UIDVALIDITY 8)\r\n"
                    b"0004 OK Status completed\r\n")
        self.assertEqual(got, [[{"MESSAGES": 1, "UIDNEXT": 2, "UIDVALIDITY": 7}],
                               [{"MESSAGES": 0, "UIDNEXT": 1, "UIDVALIDITY": 8}]])
        self.assertEqual(beat, [])
        self.server(b"0002 OK NOOP completed\r\n+ idling\r\n")
        self.assertEqual(beat, [None])
        self.assertEqual(result_of(self.client.idle()), [None])
        self.assertTrue(self.client.idling)
        self.assertFalse(self.client.closed)
        # a tag nobody sent is still a protocol error
        self.server(b"0009 OK what\r\n")
        self.assertTrue(self.client.closed)


class ModifiedUtf7Tests(TestCase):
    """Names go through Twisted's ``imap4-utf-7`` codec; the refusals on top keep what
    the codec alone would get wrong on a hostile name."""

    NAMES = ["Entwürfe", "A&B", "&", "日本語", "Gelöschte Elemente", "😀 Spam", "a-b&-c",
             "\x85b", "Ünïcödé/Ordner", "~user", ""]

    def test_names_decode_as_twisted_decodes_them(self) -> None:
        for name in self.NAMES:
            wire = name.encode("imap4-utf-7")
            self.assertEqual(encode_mutf7(name), wire, name)
            self.assertEqual(decode_mutf7(wire), wire.decode("imap4-utf-7"), wire)
            self.assertEqual(decode_mutf7(wire), name, wire)

    @given(st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                          blacklist_characters="\t\n\r"), max_size=20))
    @settings(max_examples=300, deadline=None)
    def test_any_name_round_trips_like_twisted(self, name: str) -> None:
        name = "".join(c for c in name if not ("\x00" <= c < " " or c == "\x7f"))
        wire = encode_mutf7(name)
        self.assertEqual(wire, name.encode("imap4-utf-7"))
        self.assertEqual(decode_mutf7(wire), name)

    def test_odd_runs_are_shown_as_sent(self) -> None:
        """Where the codec alone raises or guesses, the name is shown as the server sent
        it: a run of an odd number of bytes, non-zero padding bits, half a surrogate
        pair, a run without its ``-``, a ``&`` that starts no run (the codec makes it a
        ``+``), 8-bit bytes (the codec raises)."""
        for wire, shown in [(b"a&A-b", "a&A-b"), (b"&A,-", "&A,-"), (b"&AOR-", "&AOR-"),
                            (b"&2D0-x", "&2D0-x"), (b"&AOQ", "&AOQ"), (b"abc&", "abc&"),
                            (b"&\xff", "&\ufffd"), (b"a\x80b", "a\ufffdb"),
                            (b"ok&AOQ-&A-", "ok\xe4&A-")]:
            self.assertEqual(decode_mutf7(wire), shown, wire)

    def test_control_characters_decode_and_are_flagged(self) -> None:
        for wire in (b"&AAA-", b"a&AH8-", b"&AIU-b", b"&AA0ACg-"):
            entry = ListEntry((), "/", wire)
            self.assertTrue(entry.control_characters, wire)
            self.assertEqual(entry.name, wire.decode("imap4-utf-7"))
        self.assertFalse(ListEntry((), "/", b"Entw&APw-rfe").control_characters)

    def test_encoding_refuses_control_characters(self) -> None:
        """Twisted's codec mangles TAB, CR and LF (Python's UTF-7 leaves them
        unencoded): "a\\r\\nb" would become the name of another folder. Such a name is
        refused before the codec sees it."""
        self.assertNotEqual(decode_mutf7("a\r\nb".encode("imap4-utf-7")), "a\r\nb")
        for name in ("a\r\nb", "\t", "x\x00", "del\x7f"):
            with self.assertRaises(ValueError):
                encode_mutf7(name)
