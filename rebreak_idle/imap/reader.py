"""``BoundedReader``: the IMAP client's line and literal reader, bounded so that a broken
or hostile server cannot grow memory.

* a line longer than ``MAX_LENGTH`` (the client's ``max_line``) without CRLF closes the
  connection;
* a literal larger than ``max_literal`` (``max_fetch_literal`` inside an untagged FETCH)
  closes it, and so does a response whose parts together exceed that size. The daemon
  never asks for a message body, so both caps are a few KiB: a 60 MB FETCH literal pushed
  during IDLE costs 8 KiB, not 60 MB;
* an input budget per connection, two token buckets on the client's clock: at most
  ``input_burst_lines`` lines (``input_burst_bytes`` bytes) at once, refilled at
  ``input_lines_per_second`` (``input_bytes_per_second``). A server that keeps sending
  more (an EXISTS flood at 60,000 lines a second empties the line bucket in about three
  seconds) is closed with :class:`~rebreak_idle.imap.errors.InputFlood`. A burst such as
  the FETCH FLAGS of a mailbox-wide flag change (tens of thousands of lines) passes. The
  budget bounds the CPU one server can take; the caps bound the memory.

A mixin of the client (no object of its own per connection): it joins each response
with its literals into one line and hands it to ``_dispatch``; on anything out of bounds
it calls ``_protocol_error``. Once the connection state is CLOSED, whatever arrives is
dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

from .connection_state import CLOSED, GREETING, ConnectionState
from .errors import InputFlood
from .parser import excerpt, is_fetch, literal_size

__all__ = ["BoundedReader"]

log = Logger(namespace="rebreak_idle.imap")


class BoundedReader(LineReceiver):
    """Line/literal reader of :class:`~rebreak_idle.imap.client.IdleClient`."""

    MAX_LENGTH = 16 * 1024
    max_literal = 8 * 1024
    max_fetch_literal = 8 * 1024
    #: the input budget (see the module docstring)
    input_burst_lines = 200_000
    input_lines_per_second = 2_000.0
    input_burst_bytes = 32 * 1024 * 1024
    input_bytes_per_second = 1024 * 1024.0
    #: the budget's buckets and when they were last refilled (None: not yet started)
    _budget_at: float | None = None
    _lines_left = 0.0
    _bytes_left = 0.0
    #: the literal being read, and how many of its bytes are still to come
    _literal: bytearray | None = None
    _literal_left = 0
    #: the parts of a response with literals, their total size and the cap on it
    _response_parts: list[bytes] | None = None
    _response_size = 0
    _response_cap = 0

    state: ConnectionState = GREETING  # the client's; CLOSED: whatever arrives is dropped
    # provided by the client
    clock: Any
    _dispatch: Callable[[bytes], None]
    _protocol_error: Callable[[str], None]
    _close: Callable[[Any], None]

    def dataReceived(self, data: bytes) -> None:
        if self.state is CLOSED:
            return  # closing: whatever else arrives is dropped, never buffered
        self._refill()
        self._bytes_left -= len(data)
        if self._bytes_left < 0:
            self._flood(f"more than {self.input_burst_bytes} bytes at once or "
                        f"{self.input_bytes_per_second:g} bytes/s sustained")
            return
        super().dataReceived(data)

    def _refill(self) -> None:
        now = self.clock.seconds()
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

    def _flood(self, what: str) -> None:
        self._close(InputFlood(f"server flooded the connection: {what}"))

    def lineLengthExceeded(self, line: bytes) -> None:
        self._protocol_error(f"server line longer than {self.MAX_LENGTH} bytes")

    def rawDataReceived(self, data: bytes) -> None:
        if self.state is CLOSED or self._literal is None:
            return
        take = data[: self._literal_left]
        self._literal += take
        self._literal_left -= len(take)
        if self._literal_left == 0:
            assert self._response_parts is not None
            self._response_parts.append(bytes(self._literal))
            self._literal = None
            # back to lines with the rest of this read, which dataReceived has already
            # counted against the budget: handed to the line splitter directly
            # (setLineMode(rest) would go through dataReceived and count it again)
            self.line_mode = 1
            rest = data[len(take):]
            if rest:
                LineReceiver.dataReceived(self, rest)

    def lineReceived(self, line: bytes) -> None:
        if self.state is CLOSED:
            return
        if self._budget_at is None:
            self._refill()
        self._lines_left -= 1
        if self._lines_left < 0:
            self._flood(f"more than {self.input_burst_lines} lines at once or "
                        f"{self.input_lines_per_second:g} lines/s sustained")
            return
        try:
            self._line_received(line)
        except Exception:
            log.failure("unexpected error handling an IMAP server line")
            self._protocol_error(f"cannot handle server line: {excerpt(line)}")

    def _line_received(self, line: bytes) -> None:
        if self._response_parts is not None:
            self._response_size += len(line) + 2
            if self._response_size > self._response_cap:
                self._protocol_error(f"server response larger than {self._response_cap} "
                                     "bytes")
                return
        size = literal_size(line)
        if size is not None:
            self._literal_started(line, size)
            return
        if self._response_parts is not None:
            self._response_parts.append(line)
            line = b"".join(self._response_parts)
            self._response_parts = None
            self._response_size = 0
        self._dispatch(line)

    def _literal_started(self, line: bytes, size: int) -> None:
        """``line`` ends with ``{size}``: check the bounds, then read the literal raw."""
        if self._response_parts is None:
            self._response_parts = []
            self._response_size = len(line) + 2
            self._response_cap = (self.max_fetch_literal if is_fetch(line)
                                  else self.max_literal) + self.MAX_LENGTH
        cap = self._response_cap - self.MAX_LENGTH
        if size > cap or self._response_size + size > self._response_cap:
            self._protocol_error(f"server literal of {size} bytes exceeds {cap} bytes")
            return
        self._response_size += size
        self._response_parts.append(line + b"\r\n")
        if size == 0:
            self._response_parts.append(b"")
            return
        self._literal = bytearray()
        self._literal_left = size
        self.setRawMode()
