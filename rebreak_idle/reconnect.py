"""How a session's connection ended, and how the session reacts to it.

:func:`classify` turns a failure into an :class:`Outcome`: one of :data:`CAUSES` (the
``cause`` label of the reconnects metric) and the one-line text that is logged and
recorded. :func:`reaction` is the reconnect policy for an outcome: the session's
exponential :class:`~rebreak_idle.backoff.Backoff` (with jitter, reset after a connection
that stayed healthy) for network, TLS, protocol, BYE and timeout failures, or the long
hold-off after the server rejected the credentials.
"""

from __future__ import annotations

from typing import NamedTuple

from twisted.internet import error as ierror
from twisted.internet.defer import TimeoutError
from twisted.python.failure import Failure

from . import imap
from .backoff import Backoff
from .failures import describe

__all__ = ["CAUSES", "FLOOD_MIN_DELAY", "HEALTHY_AFTER",
           "TRANSIENT_LOGIN_CODES", "Outcome", "Reaction",
           "SessionError", "classify", "credentials_rejected", "reaction"]

CAUSES = ("network", "tls", "auth", "bye", "timeout", "protocol", "destination", "flood")

#: Least wait after a connection was closed for flooding (issue 17): a capacity-style
#: wait of minutes, growing with the attempts like any backoff.
FLOOD_MIN_DELAY = 120.0

#: RFC 5530 response codes of a login NO that say "try again later", not "wrong secret":
#: these get the normal backoff instead of the long hold-off.
TRANSIENT_LOGIN_CODES = ("[UNAVAILABLE]", "[SERVERBUG]", "[INUSE]", "[LIMIT]")

#: A connection that stayed up this long (capped by the heartbeat interval) resets backoff.
HEALTHY_AFTER = 60.0

_TLS_TEXTS = ("certificate verify failed", "TLS error")


class SessionError(Exception):
    """A failure the session itself detects (missing STARTTLS, a stuck step)."""

    def __init__(self, cause: str, text: str) -> None:
        super().__init__(text)
        self.cause = cause
        self.text = text


class Outcome:
    """Why the current connection (attempt) ended. ``weak`` outcomes (a bare connection
    loss) give way to a more specific one seen for the same connection."""

    __slots__ = ("cause", "text", "weak")

    def __init__(self, cause: str, text: str, weak: bool = False) -> None:
        self.cause = cause
        self.text = text
        self.weak = weak

    def __repr__(self) -> str:
        return f"Outcome({self.cause!r}, {self.text!r}, weak={self.weak})"

    def overrides(self, current: Outcome | None) -> bool:
        """Whether this outcome replaces ``current`` (the first specific reason wins)."""
        return current is None or (current.weak and not self.weak)


#: What a session assumes when a connection ended without any reason seen.
CLOSED = Outcome("network", "connection closed", weak=True)


def classify(failure: Failure) -> Outcome:
    """The reconnect cause and text of a failure (a bare loss of the connection is a weak
    "network" outcome that a more specific reason of the same connection overrides)."""
    exc = failure.value
    if isinstance(exc, SessionError):
        return Outcome(exc.cause, exc.text)
    text = describe(failure)
    if isinstance(exc, imap.ConnectionLost):
        # the client turns the transport's reason into its text
        if text.startswith(_TLS_TEXTS):
            return Outcome("tls", text)
        return Outcome("network", text, weak=True)
    if isinstance(exc, imap.InputFlood):
        return Outcome("flood", text)
    if isinstance(exc, imap.AuthenticationFailed):
        return Outcome("auth", text)
    if isinstance(exc, imap.CommandTimeout):
        return Outcome("timeout", text)
    if isinstance(exc, imap.ServerBye):
        return Outcome("bye", text)
    if isinstance(exc, imap.IMAPError):
        return Outcome("protocol", text)
    module = type(exc).__module__
    if module.startswith(("OpenSSL", "service_identity")) or module == "rebreak_idle.tls":
        return Outcome("tls", text)
    if isinstance(exc, ierror.TimeoutError | ierror.TCPTimedOutError | TimeoutError):
        return Outcome("timeout", text)
    if isinstance(exc, ierror.ConnectionDone | ierror.ConnectionLost):
        return Outcome("network", text, weak=True)
    if isinstance(exc, ierror.ConnectError | ierror.DNSLookupError | OSError):
        return Outcome("network", text)
    return Outcome("protocol", text)


def credentials_rejected(outcome: Outcome) -> bool:
    """The server refused the login for good (not one of :data:`TRANSIENT_LOGIN_CODES`)."""
    return outcome.cause == "auth" and not outcome.text.upper().startswith(
        TRANSIENT_LOGIN_CODES)


class Reaction(NamedTuple):
    """What to do after a connection ended: wait ``delay`` seconds; ``held_off`` after
    rejected credentials (the session's ``auth-failed`` state), else plain backoff."""

    delay: float
    held_off: bool


def reaction(outcome: Outcome, backoff: Backoff, holdoff: float,
             healthy: bool = False) -> Reaction:
    """The reconnect policy: reset ``backoff`` when the connection was ``healthy`` (up for
    :data:`HEALTHY_AFTER`), then count the attempt and pick the delay."""
    if healthy:
        backoff.reset()
    if credentials_rejected(outcome):
        backoff.attempt += 1
        return Reaction(holdoff, True)
    if outcome.cause == "flood":
        return Reaction(max(FLOOD_MIN_DELAY, backoff.next()), False)
    return Reaction(backoff.next(), False)
