"""The parser's own functions on hand-written input: nested data as RFC 3501 §4 writes
it, capability lists, and the excerpt of a line for an error text. (Any bytes at all:
the property tests of tests/faults/test_imap_hostile.py.)"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.imap.parser import excerpt, parse_capabilities, parse_parens


class ParseParensTests(SynchronousTestCase):
    def test_data(self) -> None:
        self.assertEqual(parse_parens(b'(\\HasNoChildren \\Junk) "/" "Spam"'),
                         [[b"\\HasNoChildren", b"\\Junk"], b"/", b"Spam"])
        self.assertEqual(parse_parens(b'() NIL Unbekannt'), [[], None, b"Unbekannt"])
        self.assertEqual(parse_parens(b'() "." {10}\r\nJunk Email'),
                         [[], b".", b"Junk Email"])
        self.assertEqual(
            parse_parens(b"(FLAGS (\\Seen) UID 5 BODY[HEADER.FIELDS (DATE)] {3}\r\nabc)"),
            [[b"FLAGS", [b"\\Seen"], b"UID", b"5", b"BODY",
              [b"HEADER.FIELDS", [b"DATE"]], b"abc"]])
        self.assertEqual(parse_parens(b""), [])
        self.assertEqual(parse_parens(b"  a\tb  "), [b"a", b"b"])

    def test_quoted_strings_are_unescaped(self) -> None:
        # RFC 3501 §4.3: \\ and \" inside a quoted string (a folder named a\b"c)
        self.assertEqual(parse_parens(b'"a\\\\b\\"c"'), [b'a\\b"c'])

    def test_malformed(self) -> None:
        for bad in (b"(a b", b"a b)", b'"unterminated', b'a"b', b"(a]", b"{5}\r\nab",
                    b"(" * 65 + b")" * 65):
            self.assertRaises(ValueError, parse_parens, bad)

    def test_long_flat_list(self) -> None:
        """``(a a a ...)`` of a full line: one list, one pass (bench/parsecost.py
        prints the cost per line)."""
        parsed = parse_parens(b"(" + b"a " * 8000 + b")")
        self.assertEqual(len(parsed), 1)
        self.assertEqual(len(parsed[0]), 8000)


class CapabilityTests(SynchronousTestCase):
    def test_values_gathered(self) -> None:
        caps = parse_capabilities(b"IMAP4rev1 auth=PLAIN AUTH=XOAUTH2 IDLE A= A=")
        self.assertEqual(caps, {b"IMAP4REV1": None, b"AUTH": [b"PLAIN", b"XOAUTH2"],
                                b"IDLE": None, b"A": [b"", b""]})

    def test_many_values_of_one_name(self) -> None:
        caps = parse_capabilities(b"A= " * 5000)
        self.assertEqual(caps, {b"A": [b""] * 5000})


class ExcerptTests(SynchronousTestCase):
    def test_printable_characters_are_kept(self) -> None:
        """A password the server echoes stays whole in the excerpt (with its backslash,
        quote and non-ASCII letters), so that the session's scrubber finds it."""
        line = "Z999 OK p\\w'örd".encode()
        self.assertEqual(excerpt(line), "Z999 OK p\\w'örd")

    def test_other_characters_escaped_and_long_lines_cut(self) -> None:
        self.assertEqual(excerpt(b"a\x00b\x7f"), "a\\x00b\\x7f")
        self.assertEqual(excerpt(b"x" * 100), "x" * 80 + "...")


class LongAnswerTests(SynchronousTestCase):
    """STATUS and LIST lines come only while such a command runs, but a server may send
    many and long ones then: beyond what a real answer holds they are not parsed."""

    def test_long_status_answer_is_malformed(self) -> None:
        from rebreak_idle.imap import ProtocolError
        from rebreak_idle.imap.parser import status_items

        self.assertEqual(status_items(b"INBOX (UIDNEXT 5 MESSAGES 3)"),
                         ("INBOX", {"UIDNEXT": 5, "MESSAGES": 3}))
        with self.assertRaises(ProtocolError):
            status_items(b"INBOX (" + b"X 1 " * 1000 + b")")

    def test_long_list_line_is_skipped(self) -> None:
        from rebreak_idle.imap.listing import parse_list

        self.assertIsNotNone(parse_list(b'(\\Junk) "/" "' + b"x" * 1000 + b'"'))
        self.assertIsNone(parse_list(b"(" + b"\\Junk " * 1000 + b') "/" Spam'))
