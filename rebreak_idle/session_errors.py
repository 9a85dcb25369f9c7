"""``SessionError``: a failure a session itself detects (no STARTTLS offered, a refused
destination, an untrusted store). A module of its own with no imports, so that the rooms
that raise it (destinations, connecting) need not load the reconnect policy or the IMAP
client."""

from __future__ import annotations

__all__ = ["SessionError"]


class SessionError(Exception):
    """A failure the session itself detects; ``cause`` is one of reconnect.CAUSES and
    ``text`` the one line that is logged and recorded."""

    def __init__(self, cause: str, text: str) -> None:
        super().__init__(text)
        self.cause = cause
        self.text = text
