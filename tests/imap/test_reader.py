"""BoundedReader on its own: fed bytes, it hands whole responses (literals joined in) to
its sink and reports a broken bound to it, then reads nothing more."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.imap import InputFlood, ProtocolError
from rebreak_idle.imap.reader import MODES, BoundedReader, ReadMode


class Sink:
    """A LineSink that records the responses and errors; True after ``stop_after``."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.errors: list[ProtocolError] = []
        self.stop_after: bytes | None = None

    def lineReceived(self, line: bytes) -> bool:
        self.lines.append(line)
        return line == self.stop_after

    def read_failed(self, error: ProtocolError) -> None:
        self.errors.append(error)


class BrokenSink(Sink):
    def lineReceived(self, line: bytes) -> bool:
        raise ValueError("bug")


class ReaderTestCase(SynchronousTestCase):
    def make(self, sink: Sink | None = None, **kw: Any) -> BoundedReader:
        self.clock = Clock()
        self.sink = sink or Sink()
        self.lines, self.errors = self.sink.lines, self.sink.errors
        self.reader = BoundedReader(clock=self.clock, sink=self.sink, **kw)
        return self.reader


class LineTests(ReaderTestCase):
    def test_lines_across_reads(self) -> None:
        r = self.make()
        r.feed(b"* 1 EXI")
        self.assertEqual(self.lines, [])
        self.assertEqual(r.buffered, 7)
        r.feed(b"STS\r\n* 2 EXISTS\r\n0001 O")
        self.assertEqual(self.lines, [b"* 1 EXISTS", b"* 2 EXISTS"])
        self.assertEqual(r.buffered, len(b"0001 O"))

    def test_literal_joined_into_its_response(self) -> None:
        r = self.make()
        r.feed(b"* 1 FETCH (BODY[HEADER] {5}\r\nab")
        self.assertIs(r.mode, ReadMode.LITERAL)
        self.assertEqual(r.literal_held, 2)
        r.feed(b"c\r\n)\r\n0001 OK\r\n")
        self.assertEqual(self.lines, [b"* 1 FETCH (BODY[HEADER] {5}\r\nabc\r\n)", b"0001 OK"])
        self.assertIs(r.mode, ReadMode.LINES)
        self.assertEqual(r.literal_held, 0)

    def test_true_from_on_line_keeps_the_rest_for_the_next_read(self) -> None:
        """As Twisted's LineReceiver when the transport is closing or paused."""
        r = self.make()
        self.sink.stop_after = b"0001 OK"
        r.feed(b"0001 OK\r\n* 3 EXISTS\r\n")
        self.assertEqual(self.lines, [b"0001 OK"])
        self.assertEqual(r.buffered, len(b"* 3 EXISTS\r\n"))
        r.feed(b"")
        self.assertEqual(self.lines, [b"0001 OK", b"* 3 EXISTS"])

    def test_kept_unread_until_the_next_feed_that_reads(self) -> None:
        r = self.make()
        r.feed(b"* 1 EXISTS\r\n", read=False)
        self.assertEqual((self.lines, r.buffered), ([], 12))
        r.feed(b"")
        self.assertEqual(self.lines, [b"* 1 EXISTS"])

    def test_stopped_reader_drops_everything(self) -> None:
        r = self.make()
        r.feed(b"* 1 EXISTS\r\n* 2 EXI")
        r.stop()
        r.feed(b"STS\r\n* 3 EXISTS\r\n")
        self.assertEqual(self.lines, [b"* 1 EXISTS"])
        self.assertEqual(r.clear(), b"* 2 EXI")
        self.assertEqual(r.buffered, 0)

    def test_error_in_on_line_closes_with_the_line_excerpt(self) -> None:
        r = self.make(BrokenSink())
        r.feed(b"* 1 EXISTS\r\n* 2 EXISTS\r\n")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual([e.text for e in self.errors],
                         ["cannot handle server line: * 1 EXISTS"])
        self.assertIs(r.mode, ReadMode.STOPPED)

    def test_mode_table(self) -> None:
        self.assertEqual(set(MODES), set(ReadMode))
        self.assertEqual(MODES[ReadMode.STOPPED], frozenset())
        for mode in (ReadMode.LINES, ReadMode.LITERAL):
            self.assertIn(ReadMode.STOPPED, MODES[mode])


class BoundTests(ReaderTestCase):
    def test_line_too_long_without_crlf(self) -> None:
        r = self.make(max_line=100)
        r.feed(b"x" * 101)
        self.assertEqual(self.errors, [])
        r.feed(b"x")
        self.assertEqual([e.text for e in self.errors],
                         ["server line longer than 100 bytes"])
        self.assertIs(r.mode, ReadMode.STOPPED)
        self.assertEqual(r.buffered, 0)

    def test_literal_beyond_its_cap(self) -> None:
        r = self.make(max_literal=1000, max_fetch_literal=4000)
        r.feed(b"* 1 FETCH (BODY[] {3000}\r\n" + b"x" * 3000 + b")\r\n")
        self.assertEqual(len(self.lines), 1)  # FETCH has the larger cap
        r.feed(b"* LIST () \"/\" {1001}\r\n")
        self.assertEqual([e.text for e in self.errors],
                         ["server literal of 1001 bytes exceeds 1000 bytes"])
        self.assertEqual(r.literal_held, 0)

    def test_line_budget(self) -> None:
        r = self.make()
        r.input_burst_lines = 10
        r.input_lines_per_second = 1.0
        r.restart_budget()
        r.feed(b"* 1 EXISTS\r\n" * 10)
        self.clock.advance(1)
        r.feed(b"* 1 EXISTS\r\n")
        self.assertEqual(self.errors, [])
        r.feed(b"* 1 EXISTS\r\n")
        (error,) = self.errors
        self.assertIsInstance(error, InputFlood)
        self.assertEqual(error.text, "server flooded the connection: more than 10 lines at "
                                     "once or 1 lines/s sustained")
        self.assertEqual(len(self.lines), 11)

    def test_byte_budget_counts_each_byte_once(self) -> None:
        r = self.make()
        r.input_burst_bytes = 1000
        r.input_bytes_per_second = 1.0
        r.restart_budget()
        chunk = b"".join(b'* LIST () "/" {3}\r\nF%02d\r\n' % i for i in range(40))
        self.assertLess(len(chunk), 1000)
        r.feed(chunk)  # literals: the rest of the read after each is not counted again
        self.assertEqual(self.errors, [])
        self.assertEqual(len(self.lines), 40)
        r.feed(b"x" * (1000 - len(chunk) + 1))
        self.assertIsInstance(self.errors[0], InputFlood)
