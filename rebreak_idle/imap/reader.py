"""``BoundedReader``: the IMAP client's line and literal reader, bounded so that a broken
or hostile server cannot grow memory.

* a line longer than ``MAX_LENGTH`` (the client's ``max_line``) without CRLF closes the
  connection;
* a literal larger than ``max_literal`` (``max_fetch_literal`` inside an untagged FETCH)
  closes it, and so does a response whose parts together exceed that size.

A mixin of the client (no object of its own per connection): it joins each response
with its literals into one line and hands it to ``_dispatch``; on anything out of bounds
it calls ``_protocol_error``. Once ``closed`` is set, whatever arrives is dropped.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

from .parser import LITERAL, excerpt, is_fetch

__all__ = ["BoundedReader"]

log = Logger(namespace="rebreak_idle.imap")


class BoundedReader(LineReceiver):
    """Line/literal reader of :class:`~rebreak_idle.imap.client.IdleClient`."""

    MAX_LENGTH = 64 * 1024
    max_literal = 1024 * 1024
    max_fetch_literal = 64 * 1024 * 1024
    closed = False
    #: the literal being read, and how many of its bytes are still to come
    _literal: bytearray | None = None
    _literal_left = 0
    #: the parts of a response with literals, their total size and the cap on it
    _response_parts: list[bytes] | None = None
    _response_size = 0
    _response_cap = 0

    # provided by the client
    _dispatch: Callable[[bytes], None]
    _protocol_error: Callable[[str], None]

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return  # closing: whatever else arrives is dropped, never buffered
        super().dataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._protocol_error(f"server line longer than {self.MAX_LENGTH} bytes")

    def rawDataReceived(self, data: bytes) -> None:
        if self.closed or self._literal is None:
            return
        take = data[: self._literal_left]
        self._literal += take
        self._literal_left -= len(take)
        if self._literal_left == 0:
            assert self._response_parts is not None
            self._response_parts.append(bytes(self._literal))
            self._literal = None
            self.setLineMode(data[len(take):])

    def lineReceived(self, line: bytes) -> None:
        if self.closed:
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
        match = LITERAL.search(line)
        if match is not None:
            self._literal_started(line, int(match.group(1)))
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
