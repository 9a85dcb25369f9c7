"""``Command``: one IMAP command in the client's queue or on the wire."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

__all__ = ["Command", "ignore"]


def ignore(*args: Any) -> None:
    """A no-op callback (the default of the client's ``on_*`` callbacks)."""
    return None


class Command:
    """One command in the queue or on the wire (``tag`` is set once it has been written)."""

    __slots__ = ("auth", "deferred", "name", "next_piece", "on_continuation", "on_ok",
                 "on_untagged", "pieces", "tag", "timeout")

    def __init__(self, name: bytes, pieces: list[bytes], timeout: float, *,
                 on_untagged: Callable[[bytes, bytes], bool] | None = None,
                 on_continuation: Callable[[bytes], None] | None = None,
                 on_ok: Callable[[bytes | None, bytes], Any] | None = None,
                 auth: bool = False) -> None:
        self.name = name
        self.pieces = pieces            # pieces[:-1] each end with a literal marker
        self.timeout = timeout
        self.on_untagged = on_untagged  # (keyword, rest) -> True when consumed
        self.on_continuation = on_continuation
        self.on_ok = on_ok              # (code, text) -> result of the Deferred
        self.auth = auth
        self.deferred: defer.Deferred = defer.Deferred()
        self.tag: bytes | None = None
        self.next_piece = 1

    @property
    def label(self) -> str:
        return self.name.decode("ascii", "replace")
