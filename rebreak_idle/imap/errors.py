"""The IMAP client's errors: each ``text`` is the server's response text or a short
description, never a secret."""

from __future__ import annotations

from twisted.mail import imap4

__all__ = [
    "AuthenticationFailed",
    "CommandFailed",
    "CommandTimeout",
    "ConnectionLost",
    "IMAPError",
    "InputFlood",
    "InsecureConnection",
    "ProtocolError",
    "ServerBye",
]


class IMAPError(imap4.IMAP4Exception):
    """Base of the client's errors; ``text`` is the server's response text or a short
    description, never a secret."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class CommandFailed(IMAPError):
    """A tagged NO or BAD. ``status`` is ``"NO"``/``"BAD"``, ``code`` the response code
    (e.g. ``"AUTHENTICATIONFAILED"``) or None, ``text`` e.g. ``"[ALERT] ..."``."""

    def __init__(self, text: str, status: str = "NO", code: str | None = None,
                 command: str = "") -> None:
        super().__init__(text)
        self.status = status
        self.code = code
        self.command = command


class AuthenticationFailed(CommandFailed):
    """LOGIN / AUTHENTICATE answered NO. ``details`` holds a decoded XOAUTH2 error
    challenge (JSON text) when the server sent one."""

    details: str | None = None


class CommandTimeout(IMAPError):
    """No answer in time; the connection has been aborted."""


class ServerBye(IMAPError):
    """``* BYE <text>``; ``text`` is ``<text>``."""


class ProtocolError(IMAPError):
    """The server sent something a correct server does not; the connection is closed."""


class InputFlood(ProtocolError):
    """The server sent more than the connection's input budget (lines or bytes over
    time): a flood, closed and retried only after a long wait."""


class ConnectionLost(IMAPError):
    """The connection was lost while the command was pending."""


class InsecureConnection(IMAPError):
    """Refusing to send a password or token over a connection that is neither TLS nor to
    a loopback address."""
