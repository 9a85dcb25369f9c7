"""Hostile and broken servers: IdleClient closes with a clear reason, never raises into
the reactor, never hangs a Deferred, never buffers without bound.

Hand-written cases, a hypothesis property over generated server output (bounded: a few
thousand examples), and a replay of ``tests/corpus/imap_server_lines.txt`` — inputs that
once failed (one Python bytes literal per line; ``#`` starts a comment).
"""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.imap import IdleClient, IdleState, IMAPError, ProtocolError, ServerBye, parser

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "imap_server_lines.txt"
GREETING = b"* OK [CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN SASL-IR] ready\r\n"
MAX_LINE = 256
MAX_LITERAL = 1024


class Harness:
    """One client on a StringTransport; tracks every Deferred it hands out."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.client = IdleClient(clock=self.clock, max_line=MAX_LINE, max_literal=MAX_LITERAL,
                                 max_fetch_literal=4 * MAX_LITERAL)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 143))
        self.client.makeConnection(self.transport)
        self.deferreds: list[Any] = [self.client.greeted]
        self.results: list[Any] = []
        self.track(self.client.greeted)

    def track(self, d: Any) -> None:
        d.addBoth(self.results.append)

    def act(self, action: str) -> None:
        c = self.client
        call = {
            "noop": c.noop, "idle": c.idle, "done": c.done, "select": c.select,
            "login": lambda: c.login("ann", "pw"), "logout": c.logout,
            "caps": c.getCapabilities, "xoauth2": lambda: c.login_xoauth2("ann", "tok"),
        }[action]
        d = call()
        self.deferreds.append(d)
        self.track(d)

    def feed(self, data: bytes, split: int = 0) -> None:
        if split <= 0:
            self.client.dataReceived(data)
            return
        for i in range(0, len(data), split):
            self.client.dataReceived(data[i:i + split])

    def check_bounded(self, test: SynchronousTestCase) -> None:
        c = self.client
        test.assertLessEqual(c.reader.buffered, MAX_LINE + 2)
        test.assertLessEqual(c.reader.literal_held, 4 * MAX_LITERAL)
        test.assertLessEqual(c.reader.response_size, 4 * MAX_LITERAL + MAX_LINE)
        test.assertLessEqual(len(c.commands.waiting), 20)

    def finish(self, test: SynchronousTestCase) -> None:
        """Lose the connection: every Deferred must have fired, no timer may remain."""
        self.client.connectionLost(Failure(ConnectionDone()))
        for d in self.deferreds:
            test.assertTrue(d.called, f"unfired Deferred {d!r}")
        test.assertEqual(self.clock.getDelayedCalls(), [])
        for r in self.results:
            if isinstance(r, Failure):
                test.assertIsInstance(r.value, IMAPError)


class CriticalLogs:
    """Captures log events at level critical/error or with a failure (an exception that
    escaped the client's handling)."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def __call__(self, event: dict) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            self.events.append(event)

    def __enter__(self) -> CriticalLogs:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        globalLogPublisher.removeObserver(self)


class HandWrittenTests(SynchronousTestCase):
    def closes(self, data: bytes, text: str, *, actions: tuple[str, ...] = (),
               greet: bool = True, error: type = ProtocolError) -> Harness:
        h = Harness()
        if greet:
            h.feed(GREETING)
        for a in actions:
            h.act(a)
        h.feed(data)
        self.assertTrue(h.client.closed, "client did not close")
        self.assertTrue(self.transport_closed(h))
        self.assertIsInstance(h.client.close_error, error)
        self.assertIn(text, h.client.close_error.text)
        h.check_bounded(self)
        h.finish(self)
        return h

    def transport_closed(self, h: Harness) -> bool:
        return h.transport.disconnecting

    def test_line_without_crlf_that_never_ends(self) -> None:
        h = Harness()
        h.feed(GREETING)
        for _ in range(100):
            h.feed(b"x" * 100)
            if h.client.closed:
                break
        self.assertTrue(h.client.closed)
        self.assertIn("longer than 256 bytes", h.client.close_error.text)
        h.check_bounded(self)
        h.finish(self)

    def test_huge_literal(self) -> None:
        self.closes(b"* LIST () \"/\" {1025}\r\n", "literal of 1025 bytes exceeds 1024")

    def test_fetch_literal_has_its_own_cap(self) -> None:
        h = Harness()
        h.feed(GREETING)
        h.act("noop")
        h.feed(b"* 1 FETCH (BODY[] {2000}\r\n" + b"x" * 2000 + b")\r\n0001 OK\r\n")
        self.assertFalse(h.client.closed)
        h.finish(self)
        self.closes(b"* 1 FETCH (BODY[] {5000}\r\n", "exceeds 4096")

    def test_many_small_literals(self) -> None:
        self.closes(b"* LIST () \"/\" {600}\r\n" + b"a" * 600 + b" {600}\r\n" + b"b" * 600
                    + b" {600}\r\n",
                    "exceeds")

    def test_unknown_tag(self) -> None:
        self.closes(b"A999 OK what\r\n", "unknown tag")

    def test_tag_of_no_command(self) -> None:
        self.closes(b"0001 OK hi\r\n", "unknown tag")

    def test_bad_greetings(self) -> None:
        for greeting in (b"* NO busy\r\n", b"hello\r\n", b"+ go\r\n", b"0001 OK\r\n",
                         b"\r\n", b"* \r\n"):
            self.closes(greeting, "not an IMAP server (no IMAP greeting)", greet=False)

    def test_unexpected_continuation(self) -> None:
        self.closes(b"+ more please\r\n", "unexpected continuation")

    def test_malformed_untagged(self) -> None:
        for line in (b"* 5 EXISTS now\r\n", b"* 1 FETCH (FLAGS\r\n", b"* 1 FETCH FLAGS\r\n",
                     b"* 1 FETCH (FLAGS \\Seen)\r\n", b"* x\x00y\r\n",
                     b"* 7 WHAT\r\n"):
            self.closes(line, "malformed")

    def test_unsolicited_data_is_not_parsed(self) -> None:
        """The data of a response no command asked for (an unknown keyword, a LIST
        outside LIST) is skipped unread: a server cannot make the client parse it."""
        h = Harness()
        h.feed(GREETING)
        for line in (b'* LIST (\\Noselect "/" foo\r\n', b"* X (a a a (((\r\n",
                     b'* XYZZY "unterminated\r\n'):
            h.feed(line)
            self.assertFalse(h.client.closed, line)

    def test_tagged_status_unknown(self) -> None:
        self.closes(b"0001 MAYBE\r\n", "malformed tagged", actions=("noop",))

    def test_data_after_bye_in_logout(self) -> None:
        h = self.closes(b"* BYE logging out\r\n* 3 EXISTS\r\n", "data after BYE",
                        actions=("logout",))
        self.assertEqual(h.results[-1], None)  # logout itself still succeeds

    def test_bye_closes(self) -> None:
        self.closes(b"* BYE going down\r\n", "going down", actions=("noop",),
                    error=ServerBye)

    def test_starttls_injection_closes(self) -> None:
        h = Harness()
        h.feed(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n")
        from twisted.internet.interfaces import ITLSTransport
        from zope.interface import alsoProvides
        alsoProvides(h.transport, ITLSTransport)
        h.transport.startTLS = lambda creator: None  # type: ignore[attr-defined]
        d = h.client.startTLS(object())
        h.deferreds.append(d)
        h.track(d)
        h.feed(b"0001 OK go\r\n0002 OK [CAPABILITY AUTH=PLAIN] injected\r\n")
        self.assertTrue(h.client.closed)
        h.finish(self)

    def test_response_after_close_is_ignored(self) -> None:
        """What arrives after the client closed (in the same read as the line that
        closed it, and later) reaches no callback, is not buffered, is not answered and
        does not replace the reason of the close."""
        h = Harness()
        exists: list[int] = []
        h.client.on_exists = exists.append
        h.feed(GREETING)
        h.feed(b"* 1 EXISTS\r\n")
        written = h.transport.value()
        h.feed(b"A1 OK\r\n" + b"* 5 EXISTS\r\n" * 10 + b"* 6 EXIS")
        h.feed(b"TS\r\n* BYE late\r\n" + b"x" * 10 * MAX_LINE)
        self.assertEqual(exists, [1])
        self.assertTrue(h.client.closed)
        self.assertTrue(h.transport.disconnecting)
        self.assertIsInstance(h.client.close_error, ProtocolError)
        self.assertIn("unknown tag", h.client.close_error.text)
        self.assertEqual(h.client.reader.buffered, 0)
        self.assertEqual(h.transport.value(), written)
        h.finish(self)


def _piece() -> st.SearchStrategy[bytes]:
    valid = st.sampled_from([
        GREETING, b"* PREAUTH hi\r\n", b"* 3 EXISTS\r\n", b"* 2 EXPUNGE\r\n", b"* 1 RECENT\r\n",
        b"* 1 FETCH (FLAGS (\\Seen))\r\n", b"+ idling\r\n", b"+ \r\n", b"* BYE bye\r\n",
        b"* CAPABILITY IMAP4rev1 IDLE\r\n", b"* OK [UIDVALIDITY 5] x\r\n",
        b"* FLAGS (\\Seen)\r\n", b"0001 OK done\r\n", b"0002 OK done\r\n",
        b"0003 NO [ALERT] no\r\n", b"0002 BAD what\r\n", b"0004 OK\r\n", b"DONE\r\n",
        b"* 1 FETCH (BODY[] {10}\r\n0123456789)\r\n", b"* LIST () \"/\" {3}\r\nabc\r\n",
    ])
    literal = st.integers(0, 6000).map(lambda n: b"* 1 FETCH (BODY[] {%d}\r\n" % n)
    tokens = st.lists(st.sampled_from([
        b"*", b"+", b"0001", b"0002", b"0003", b"OK", b"NO", b"BAD", b"BYE", b"EXISTS",
        b"FETCH", b"FLAGS", b"(", b")", b"{3}", b"{0}", b"{99999999999}", b"\"", b"[", b"]",
        b"\r\n", b" ", b"1", b"\\Seen", b"CAPABILITY", b"\x00", b"\xff", b"}", b"{",
    ]), max_size=20).map(b"".join)
    junk = st.binary(max_size=300)
    long = st.integers(1, 3).map(lambda n: b"z" * (MAX_LINE * n))
    return st.one_of(valid, valid, valid, literal, tokens, tokens, junk, long)


ACTIONS = st.sampled_from(["noop", "idle", "done", "select", "login", "logout", "caps",
                           "xoauth2"])


def check_outcome(test: SynchronousTestCase, h: Harness) -> None:
    """After hostile input the client has either closed cleanly (the transport closing,
    the reason recorded as an IMAPError unless LOGOUT ended it) or stays usable: the
    transport open and a NOOP accepted (sent or queued), or refused with a clear
    IMAPError only because an IDLE is in progress."""
    c = h.client
    if c.closed:
        test.assertTrue(h.transport.disconnecting, "closed without closing the transport")
        if c.close_error is not None:
            test.assertIsInstance(c.close_error, IMAPError)
        return
    test.assertFalse(h.transport.disconnecting, "transport closing, client not closed")
    test.assertIsNone(c.close_error)
    d = c.noop()
    h.deferreds.append(d)
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    if outcome:
        test.assertIsInstance(outcome[0], Failure, "NOOP answered without the server")
        test.assertIsInstance(outcome[0].value, IMAPError)
        test.assertIsNot(c.idle_state, IdleState.OFF, outcome[0].value)
        outcome.clear()
    h.track(d)


def run_script(test: SynchronousTestCase, script: list[bytes | str], split: int,
               advance: bool = True) -> None:
    """Run a script of server data (bytes) and client actions (str, see Harness.act),
    then check the bounds and the outcome (closed cleanly or usable), pass every
    deadline and lose the connection."""
    h = Harness()
    with CriticalLogs() as logs:
        for item in script:
            if isinstance(item, str):
                if not h.client.closed:
                    h.act(item)
            else:
                h.feed(item, split)
            h.check_bounded(test)
        check_outcome(test, h)
        h.check_bounded(test)
        if advance:
            h.clock.advance(120)  # every deadline has passed: all must have fired
            # every exchange but a running IDLE has a deadline, and a NOOP was sent
            test.assertTrue(h.client.closed or h.client.idling,
                            "a deadline passed and the client neither closed nor idles")
        h.finish(test)
    test.assertEqual(logs.events, [], "an exception escaped into the log")


def run_exchange(test: SynchronousTestCase, pieces: list[bytes], actions: list[str],
                 split: int, advance: bool = True) -> None:
    script: list[bytes | str] = []
    for i, piece in enumerate(pieces):
        if i < len(actions):
            script.append(actions[i])
        script.append(piece)
    run_script(test, script, split, advance)


class GeneratedOutputTests(SynchronousTestCase):
    @settings(max_examples=3000, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(pieces=st.lists(_piece(), max_size=12), actions=st.lists(ACTIONS, max_size=6),
           split=st.integers(0, 40), advance=st.booleans())
    def test_generated_server_output(self, pieces: list[bytes], actions: list[str],
                                     split: int, advance: bool) -> None:
        run_exchange(self, pieces, actions, split, advance)

    def test_corpus(self) -> None:
        entries = 0
        for lineno, line in enumerate(CORPUS.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            entry = ast.literal_eval(line)
            script = [entry] if isinstance(entry, bytes) else list(entry)
            for split in (0, 1, 7):
                try:
                    run_script(self, script, split)
                except AssertionError as e:
                    raise AssertionError(f"corpus line {lineno}: {e}") from e
            entries += 1
        self.assertGreater(entries, 10)


def _unquote(quoted: bytes) -> bytes:
    assert quoted.startswith(b'"') and quoted.endswith(b'"') and len(quoted) >= 2
    inner = quoted[1:-1]
    assert re.search(rb'(?<!\\)(?:\\\\)*"', inner) is None, "unescaped quote"
    return re.sub(rb"\\(.)", rb"\1", inner)


SERVER_BYTES = st.one_of(st.binary(max_size=400), _piece(), st.lists(st.sampled_from([
    b"*", b"1", b"EXISTS", b"FETCH", b"(", b")", b"FLAGS", b"\\Seen", b"[", b"]", b" ",
    b"CAPABILITY", b"AUTH=PLAIN", b"OK", b"{5}", b"\"", b"BYE", b"RECENT", b"x\x00"]),
    max_size=20).map(b"".join))


class ParserTests(SynchronousTestCase):
    """The pure parser on any bytes: a result or ProtocolError, never anything else."""

    @settings(max_examples=2000, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(data=SERVER_BYTES)
    def test_any_server_bytes(self, data: bytes) -> None:
        for rest in (data, data.removeprefix(b"* ")):
            try:
                keyword, number, after = parser.parse_untagged(rest)
            except ProtocolError as e:
                self.assertTrue(e.text.startswith("malformed "), e.text)
            else:
                self.assertEqual(keyword, keyword.upper())
                if number is not None:
                    self.assertIn(keyword, (b"EXISTS", b"EXPUNGE", b"RECENT", b"FETCH"))
                    self.assertGreaterEqual(number, 0)
                    self.assertTrue(keyword == b"FETCH" or after == b"")
        code, _ = parser.split_code(data)
        self.assertTrue(code is None or b"]" not in code)
        words = parser.capability_words(code)
        self.assertIsInstance(parser.parse_capabilities(words or data), dict)
        size = parser.literal_size(data)
        self.assertTrue(size is None or size >= 0)
        self.assertIsInstance(parser.is_fetch(data), bool)
        self.assertIsInstance(parser.flag_list(data), list)
        flags = parser.fetch_flags(data)
        self.assertTrue(flags is None or flags is parser.MALFORMED or isinstance(flags, list))
        status = parser.parse_status(data, (b"OK", b"NO", b"BAD"))
        self.assertTrue(status is None or status[0] in (b"OK", b"NO", b"BAD"))
        shown = parser.text(data)
        self.assertLessEqual(len(shown), parser.TEXT_LIMIT)
        self.assertTrue(shown.isprintable())
        self.assertLessEqual(len(parser.excerpt(data)), 4 * 80 + 3)

    @settings(max_examples=1000, deadline=None, derandomize=True)
    @given(value=st.text(max_size=60))
    def test_astring_encodes_any_text(self, value: str) -> None:
        raw = value.encode("utf-8")
        if b"\x00" in raw:
            self.assertRaises(ValueError, parser.astring, value)
            return
        pieces = parser.astring(value)
        if len(pieces) == 1:
            self.assertEqual(_unquote(pieces[0]), raw)
        else:
            self.assertEqual(parser.literal_size(pieces[0]), len(raw))
            self.assertEqual(pieces[1], raw)

    @settings(max_examples=500, deadline=None, derandomize=True)
    @given(user=st.text(max_size=20).filter(lambda v: "\x00" not in v),
           password=st.text(max_size=20).filter(lambda v: "\x00" not in v))
    def test_pieces_wait_for_each_literal(self, user: str, password: str) -> None:
        a, b = parser.astring(user), parser.astring(password)
        pieces = parser.join_pieces([b"LOGIN"], a, b)
        self.assertTrue(pieces[0].startswith(b"LOGIN "))
        self.assertEqual(len(pieces), 1 + (len(a) == 2) + (len(b) == 2))
        for piece, after in itertools.pairwise(pieces):
            size = parser.literal_size(piece)
            self.assertIsNotNone(size)
            self.assertIn(after[:size], (a[-1], b[-1]))
