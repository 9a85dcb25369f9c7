"""How a session's connection ended, and how the session reacts to it.

:func:`classify` turns a failure into an :class:`Outcome`: one of :data:`CAUSES` (the
``cause`` label of the reconnects metric), the one-line text that is logged and recorded,
and its class (``kind``, one of :data:`~rebreak_idle.session.provider_signals.CLASSES`, from
the server's text through :mod:`rebreak_idle.session.provider_signals` or from the failure's
type). :func:`settle`
adds what only the session knows (a recycle is only a recycle after a healthy connection;
a bare close after a long healthy one is a recycle). :func:`reaction` is the reconnect
policy per class: the growing credential hold-off (30 min doubling to 24 h), a long
growing wait for capacity refusals, at least the server's suggested delay when throttled,
a few seconds for a recycle (no backoff growth), else the session's exponential
:class:`~rebreak_idle.timing.backoff.Backoff` (with jitter, reset after a healthy connection).
"""

from __future__ import annotations

import json
from typing import NamedTuple

from twisted.internet import error as ierror
from twisted.internet.defer import TimeoutError
from twisted.python.failure import Failure

from .. import imap
from ..failures import CertificateVerifyError, describe
from ..net.descriptors import is_out_of_descriptors
from ..session_errors import SessionError
from ..timing.backoff import Backoff
from . import provider_signals
from .provider_signals import CAPACITY, CREDENTIALS, NETWORK, RECYCLE, THROTTLED, TRANSIENT

__all__ = ["CAUSES", "FLOOD_MIN_DELAY", "HEALTHY_AFTER", "MAX_HOLDOFF", "TRANSIENT_LOGIN_CODES",
           "Outcome", "Reaction", "SessionError", "classify", "credentials_rejected",
           "holdoff_for", "reaction", "settle"]

CAUSES = ("network", "tls", "auth", "bye", "timeout", "protocol", "destination", "flood",
          "descriptors")

#: Least wait after a connection was closed for flooding (issue 17): a capacity-style
#: wait of minutes, growing with the attempts like any backoff.
FLOOD_MIN_DELAY = 120.0

#: RFC 5530 response codes of a login NO that say "try again later", not "wrong secret":
#: these get the normal backoff instead of the long hold-off.
TRANSIENT_LOGIN_CODES = ("[UNAVAILABLE]", "[SERVERBUG]", "[INUSE]", "[LIMIT]")

#: A connection that stayed up this long (capped by the heartbeat interval) resets backoff.
HEALTHY_AFTER = 300.0
#: A bare close (no BYE, no error) after a connection was up this long is a recycle.
RECYCLE_AFTER = 600.0
#: A recycle reconnects after ``RECYCLE_DELAY[0]`` plus up to ``RECYCLE_DELAY[1]`` seconds.
RECYCLE_DELAY = (1.0, 4.0)
#: The credential hold-off doubles on each repeat up to this (or the configured hold-off).
MAX_HOLDOFF = 86400.0
#: Capacity refusals retry once after the normal backoff, then wait
#: ``CAPACITY_WAIT * 2 ** (attempt - 2)``, at most CAPACITY_MAX.
CAPACITY_WAIT = 120.0
CAPACITY_MAX = 3600.0
#: This many connections in a row closed before the greeting: a connection limit.
EARLY_CLOSES = 3
#: Throttled without a suggested delay: wait at least this.
THROTTLE_WAIT = 60.0

_DEFAULT_KIND = {"network": NETWORK, "timeout": NETWORK, "tls": provider_signals.TLS,
                 "protocol": provider_signals.PROTOCOL, "bye": TRANSIENT, "auth": CREDENTIALS,
                 "flood": CAPACITY, "destination": provider_signals.PROTOCOL,
                 "descriptors": NETWORK}

_TLS_TEXTS = ("certificate verify failed", "TLS error")


class Outcome:
    """Why the current connection (attempt) ended. ``weak`` outcomes (a bare connection
    loss) give way to a more specific one seen for the same connection."""

    __slots__ = ("cause", "hint", "kind", "text", "weak")

    def __init__(self, cause: str, text: str, weak: bool = False,
                 kind: str | None = None) -> None:
        self.cause = cause
        self.text = text
        self.weak = weak
        self.hint: float | None = None  # the server's suggested delay
        if kind is None:
            kind = _DEFAULT_KIND.get(cause, provider_signals.PROTOCOL)
            if cause in ("auth", "bye", "protocol") and not weak:
                signal = provider_signals.match(text)
                if signal is not None:
                    kind = signal.kind
        self.kind = kind
        if kind == THROTTLED:
            self.hint = provider_signals.suggested_delay(text)

    def __repr__(self) -> str:
        return f"Outcome({self.cause!r}, {self.text!r}, weak={self.weak}, kind={self.kind!r})"

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
        return Outcome("auth", _with_details(text, exc.details))
    if isinstance(exc, imap.CommandTimeout):
        return Outcome("timeout", text)
    if isinstance(exc, imap.ServerBye):
        return Outcome("bye", text)
    if isinstance(exc, imap.IMAPError):
        return Outcome("protocol", text)
    module = type(exc).__module__
    if module.startswith(("OpenSSL", "service_identity")) \
            or isinstance(exc, CertificateVerifyError):
        return Outcome("tls", text)
    if isinstance(exc, ierror.TimeoutError | ierror.TCPTimedOutError | TimeoutError):
        return Outcome("timeout", text)
    if isinstance(exc, ierror.ConnectionDone | ierror.ConnectionLost):
        return Outcome("network", text, weak=True)
    if is_out_of_descriptors(exc):  # the process's limit, not the account's trouble
        return Outcome("descriptors", "this process has no file descriptor left (EMFILE)")
    if isinstance(exc, ierror.ConnectError | ierror.DNSLookupError | OSError):
        return Outcome("network", text)
    return Outcome("protocol", text)


def _with_details(text: str, details: str | None) -> str:
    """``text`` and the XOAUTH2 error challenge (``{"status":"401",...}``) when the server
    sent one: only its short ``status``, ``schemes`` and ``scope`` fields (a hostile server
    could echo anything into it)."""
    if not details:
        return text
    try:
        parsed = json.loads(details[:2000])
    except ValueError:
        return text
    if not isinstance(parsed, dict):
        return text
    kept = {k: str(parsed[k])[:100] for k in _XOAUTH2_FIELDS if k in parsed}
    return f"{text} {json.dumps(kept, separators=(',', ':'))}" if kept else text


_XOAUTH2_FIELDS = ("status", "schemes", "scope")


def credentials_rejected(outcome: Outcome) -> bool:
    """The server refused the secret (class ``credentials``: a login NO without a capacity,
    throttling or transient signal, or a credential code or text anywhere else)."""
    return outcome.kind == CREDENTIALS


def settle(outcome: Outcome, *, ready: bool, uptime: float, healthy_after: float,
           early_closes: int = 0) -> Outcome:
    """Fix the class with what the session knows: a recycle text counts only after a
    connection that was ready for ``healthy_after`` seconds (else it is transient trouble);
    a bare close after :data:`RECYCLE_AFTER` seconds of a ready connection is a recycle;
    the :data:`EARLY_CLOSES`-th connection in a row closed before the greeting is capacity
    (a per-IP limit such as Courier's ``MAXPERIP`` closes before greeting)."""
    if outcome.kind == RECYCLE and not (ready and uptime >= healthy_after):
        outcome.kind = TRANSIENT
    elif outcome.kind == NETWORK and outcome.weak and ready and uptime >= RECYCLE_AFTER:
        outcome.kind = RECYCLE
    elif outcome.kind == NETWORK and outcome.weak and early_closes >= EARLY_CLOSES:
        outcome.kind = CAPACITY
    return outcome


def holdoff_for(holdoff: float, strikes: int) -> float:
    """The credential hold-off after ``strikes`` earlier consecutive rejections: ``holdoff``
    doubling per strike, at most :data:`MAX_HOLDOFF` (or ``holdoff`` when longer)."""
    return min(holdoff * 2.0 ** min(max(strikes, 0), 32), max(MAX_HOLDOFF, holdoff))


class Reaction(NamedTuple):
    """What to do after a connection ended: wait ``delay`` seconds; ``held_off`` after
    rejected credentials (the session's ``auth-failed`` state), else plain backoff."""

    delay: float
    held_off: bool


def reaction(outcome: Outcome, backoff: Backoff, holdoff: float,
             healthy: bool = False, *, strikes: int = 0) -> Reaction:
    """The reconnect policy: reset ``backoff`` when the connection was ``healthy`` (up for
    :data:`HEALTHY_AFTER`), then count the attempt and pick the delay by class
    (``strikes``: earlier consecutive credential rejections of this account)."""
    if healthy:
        backoff.reset()
    kind = outcome.kind
    if kind == CREDENTIALS:
        backoff.attempt += 1
        return Reaction(holdoff_for(holdoff, strikes), True)
    if outcome.cause == "flood":  # closed for flooding: a capacity-style wait of minutes
        return Reaction(max(FLOOD_MIN_DELAY, backoff.next()), False)
    if kind == RECYCLE:  # routine: no growth, back within seconds
        backoff.reset()
        low, span = RECYCLE_DELAY
        return Reaction(low + span * backoff.jitter(), False)
    delay = backoff.next()
    stretch = 1.0 + backoff.spread * backoff.jitter()
    if kind == CAPACITY and backoff.attempt > 1:  # the first retry: a slot may free up
        wait = min(CAPACITY_WAIT * 2.0 ** min(backoff.attempt - 2, 32), CAPACITY_MAX)
        delay = max(delay, wait * stretch)
    elif kind == THROTTLED:
        delay = max(delay, (outcome.hint or THROTTLE_WAIT) * stretch)
    return Reaction(delay, False)
