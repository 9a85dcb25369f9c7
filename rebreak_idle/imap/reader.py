"""``BoundedReader``: the IMAP client's line and literal reader, bounded so that a broken
or hostile server cannot grow memory.

* a line longer than ``max_line`` without CRLF closes the connection;
* a literal larger than ``max_literal`` (``max_fetch_literal`` inside an untagged FETCH)
  closes it, and so does a response whose parts together exceed that size. The daemon
  never asks for a message body, so both caps are a few KiB: a 60 MB FETCH literal pushed
  during IDLE costs 8 KiB, not 60 MB;
* an input budget per connection, two token buckets on the given clock: at most
  ``input_burst_lines`` lines (``input_burst_bytes`` bytes) at once, refilled at
  ``input_lines_per_second`` (``input_bytes_per_second``). A server that keeps sending
  more (an EXISTS flood at 60,000 lines a second empties the line bucket in about three
  seconds) is closed with :class:`~rebreak_idle.imap.errors.InputFlood`. A burst such as
  the FETCH FLAGS of a mailbox-wide flag change (tens of thousands of lines) passes. The
  budget bounds the CPU one server can take; the caps bound the memory.

An object of its own, owned by the client, whose ``dataReceived`` feeds it the bytes
(:meth:`BoundedReader.feed`). It knows the client only as a :class:`LineSink`, two
methods: it joins each response with its literals into one line and hands it to
``sink.lineReceived``, which returns True to stop reading what is buffered (the transport
is closing, or paused: as Twisted's ``LineReceiver``); anything out of bounds goes to
``sink.read_failed`` (a :class:`~rebreak_idle.imap.errors.ProtocolError`, or its
``InputFlood`` kind) and the reader stops. Once stopped (:meth:`stop`), whatever arrives is
dropped, never buffered. (One reference to the sink rather than two stored bound methods:
those would be two more objects, 128 bytes, on each of 10,000 connections.)

Its mode is a small state machine (:data:`MODES`): ``LINES → LITERAL`` when a line ends
with ``{size}``, ``LITERAL → LINES`` when the literal's bytes have arrived, and any mode
``→ STOPPED`` for good. It is the hot path of every line of every connection: slots, no
allocation per line besides the line itself, one call per line into the client.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .errors import InputFlood, ProtocolError
from .parser import excerpt, is_fetch, literal_size

__all__ = ["MODES", "BoundedReader", "LineSink", "ReadMode"]

log = Logger(namespace="rebreak_idle.imap")


class ReadMode(enum.Enum):
    LINES = "lines"        # reading lines up to CRLF
    LITERAL = "literal"    # reading the bytes of a {size} literal
    STOPPED = "stopped"    # closed or out of bounds: whatever arrives is dropped

    __hash__ = object.__hash__


LINES, LITERAL, STOPPED = ReadMode

#: mode → the modes it may move to (the event beside each move)
MODES: dict[ReadMode, frozenset[ReadMode]] = {
    LINES: frozenset({LITERAL,       # a line ends with {size}
                      STOPPED}),     # stop(): the client closes, or out of bounds
    LITERAL: frozenset({LINES,       # the literal's last byte arrived
                        STOPPED}),   # stop()
    STOPPED: frozenset(),
}

_CRLF = b"\r\n"


class LineSink(Protocol):
    """What the reader calls: the client (``IdleClient``) in the daemon."""

    def lineReceived(self, line: bytes) -> Any:
        """One complete response, its literals joined in; True: stop reading the bytes
        buffered until the next :meth:`BoundedReader.feed`."""

    def read_failed(self, error: ProtocolError) -> None:
        """The server broke a bound; the reader has stopped."""


class BoundedReader:
    """Line/literal reader of one connection, handing what it reads to ``sink``."""

    __slots__ = ("_budget_at", "_buffer", "_busy", "_bytes_left", "_clock", "_lines_left",
                 "_literal", "_literal_left", "_mode", "_response_cap", "_response_parts",
                 "_response_size", "_sink",
                 "input_burst_bytes", "input_burst_lines", "input_bytes_per_second",
                 "input_lines_per_second", "max_fetch_literal", "max_line", "max_literal")

    MAX_LINE = 16 * 1024
    MAX_LITERAL = 8 * 1024
    MAX_FETCH_LITERAL = 8 * 1024
    #: the input budget (see the module docstring)
    INPUT_BURST_LINES = 200_000
    INPUT_LINES_PER_SECOND = 2_000.0
    INPUT_BURST_BYTES = 32 * 1024 * 1024
    INPUT_BYTES_PER_SECOND = 1024 * 1024.0

    def __init__(self, *, clock: IReactorTime, sink: LineSink, max_line: int = MAX_LINE,
                 max_literal: int = MAX_LITERAL,
                 max_fetch_literal: int = MAX_FETCH_LITERAL) -> None:
        self._clock = clock
        self._sink = sink
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_fetch_literal = max_fetch_literal
        self.input_burst_lines = self.INPUT_BURST_LINES
        self.input_lines_per_second = self.INPUT_LINES_PER_SECOND
        self.input_burst_bytes = self.INPUT_BURST_BYTES
        self.input_bytes_per_second = self.INPUT_BYTES_PER_SECOND
        self._mode = LINES
        self._buffer = b""
        self._busy = False
        #: the budget's buckets and when they were last refilled (None: not yet started)
        self._budget_at: float | None = None
        self._lines_left = 0.0
        self._bytes_left = 0.0
        #: the literal being read, and how many of its bytes are still to come
        self._literal: bytearray | None = None
        self._literal_left = 0
        #: the parts of a response with literals, their total size and the cap on it
        self._response_parts: list[bytes] | None = None
        self._response_size = 0
        self._response_cap = 0

    # ------------------------------------------------------------------ the client's calls

    @property
    def mode(self) -> ReadMode:
        return self._mode

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read (a partial line, the rest of a read)."""
        return len(self._buffer)

    @property
    def literal_held(self) -> int:
        """Bytes of the literal being read, so far (0: none is being read)."""
        return len(self._literal) if self._literal is not None else 0

    @property
    def response_size(self) -> int:
        """The size, literals included, of the response with literals being read."""
        return self._response_size

    def restart_budget(self) -> None:
        """Start the input budget's buckets full again at the next bytes (after changing
        its settings)."""
        self._budget_at = None

    def stop(self) -> None:
        """Read nothing more: whatever is fed from now on is dropped."""
        if self._mode is not STOPPED:
            self._move(STOPPED)

    def clear(self) -> bytes:
        """Drop the bytes buffered (as ``LineReceiver.clearLineBuffer``); returns them."""
        held, self._buffer = self._buffer, b""
        return held

    def feed(self, data: bytes, read: bool = True) -> None:
        """Bytes from the server; with ``read`` False (the client is paused) they are
        counted and kept, and read at the next ``feed`` (as Twisted's ``LineReceiver``)."""
        if self._mode is STOPPED:
            return  # closing: whatever else arrives is dropped, never buffered
        self._refill()
        self._bytes_left -= len(data)
        if self._bytes_left < 0:
            self._fail(InputFlood(
                f"server flooded the connection: more than {self.input_burst_bytes} bytes "
                f"at once or {self.input_bytes_per_second:g} bytes/s sustained"))
            return
        self._buffer += data
        if self._busy or not read:
            return  # fed from within the sink: the loop below goes on with it
        self._busy = True
        try:
            self._read()
        finally:
            self._busy = False

    # ------------------------------------------------------------------ reading

    def _read(self) -> None:
        while self._buffer:
            mode = self._mode
            if mode is LINES:
                try:
                    line, self._buffer = self._buffer.split(_CRLF, 1)
                except ValueError:
                    if len(self._buffer) >= self.max_line + 2:
                        self._buffer = b""
                        self._too_long()
                    return
                if len(line) > self.max_line:
                    self._buffer = b""
                    self._too_long()
                    return
                if self._line(line):
                    return
            elif mode is LITERAL:
                self._literal_bytes()
            else:
                return

    def _move(self, to: ReadMode) -> None:
        if to not in MODES[self._mode]:
            raise RuntimeError(f"reader mode {self._mode.value} cannot move to {to.value}")
        self._mode = to

    def _fail(self, error: ProtocolError) -> None:
        self.stop()
        self._sink.read_failed(error)

    def _too_long(self) -> None:
        self._fail(ProtocolError(f"server line longer than {self.max_line} bytes"))

    def _refill(self) -> None:
        now = self._clock.seconds()
        last = self._budget_at
        if last is None:
            self._lines_left = float(self.input_burst_lines)
            self._bytes_left = float(self.input_burst_bytes)
        elif now > last:
            elapsed = now - last
            self._lines_left = min(float(self.input_burst_lines),
                                   self._lines_left + elapsed * self.input_lines_per_second)
            self._bytes_left = min(float(self.input_burst_bytes),
                                   self._bytes_left + elapsed * self.input_bytes_per_second)
        self._budget_at = now

    def _line(self, line: bytes) -> Any:
        """One line (CRLF removed); the sink's answer (True: stop reading)."""
        if self._budget_at is None:
            self._refill()
        self._lines_left -= 1
        if self._lines_left < 0:
            self._fail(InputFlood(
                f"server flooded the connection: more than {self.input_burst_lines} lines "
                f"at once or {self.input_lines_per_second:g} lines/s sustained"))
            return True
        try:
            if self._response_parts is not None:
                self._response_size += len(line) + 2
                if self._response_size > self._response_cap:
                    self._fail(ProtocolError(
                        f"server response larger than {self._response_cap} bytes"))
                    return True
            size = literal_size(line)
            if size is not None:
                self._literal_started(line, size)
                return False
            if self._response_parts is not None:
                self._response_parts.append(line)
                line = b"".join(self._response_parts)
                self._response_parts = None
                self._response_size = 0
            return self._sink.lineReceived(line)
        except Exception:
            log.failure("unexpected error handling an IMAP server line")
            self._fail(ProtocolError(f"cannot handle server line: {excerpt(line)}"))
            return True

    def _literal_started(self, line: bytes, size: int) -> None:
        """``line`` ends with ``{size}``: check the bounds, then read the literal raw."""
        if self._response_parts is None:
            self._response_parts = []
            self._response_size = len(line) + 2
            self._response_cap = (self.max_fetch_literal if is_fetch(line)
                                  else self.max_literal) + self.max_line
        cap = self._response_cap - self.max_line
        if size > cap or self._response_size + size > self._response_cap:
            self._fail(ProtocolError(f"server literal of {size} bytes exceeds {cap} bytes"))
            return
        self._response_size += size
        self._response_parts.append(line + _CRLF)
        if size == 0:
            self._response_parts.append(b"")
            return
        self._literal = bytearray()
        self._literal_left = size
        self._move(LITERAL)

    def _literal_bytes(self) -> None:
        """The buffered bytes belong to the literal being read (up to its size)."""
        assert self._literal is not None and self._response_parts is not None
        data, left = self._buffer, self._literal_left
        take = data[:left]
        self._buffer = data[left:]
        self._literal += take
        self._literal_left = left - len(take)
        if self._literal_left == 0:
            self._response_parts.append(bytes(self._literal))
            self._literal = None
            self._move(LINES)
