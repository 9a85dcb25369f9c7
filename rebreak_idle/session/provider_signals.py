"""What real IMAP servers say when they refuse or end a connection, and what it means.

:data:`SIGNALS` is the one table: a case-insensitive pattern of a server's response text,
the :data:`CLASSES` member it stands for, the provider that sends it and where that is
documented (the same rows, with their reactions, are in ``docs/providers.md``).
:func:`match` finds the first row whose pattern occurs anywhere in a text (a code behind
``[ALERT]`` counts as much as a leading one); :func:`suggested_delay` reads a delay the
server asks for ("Suggested Backoff Time: 299999 milliseconds").

The classes:

* ``credentials`` — the secret was refused: wait long, and longer on repeats;
* ``capacity`` — too many connections (per account, per IP): wait minutes, growing;
* ``throttled`` — too many requests: wait at least what the server suggests;
* ``transient`` — the server is in trouble (UNAVAILABLE, SERVERBUG): normal backoff;
* ``recycle`` — a routine end of a healthy session (token or session expiry, restart):
  reconnect within seconds, record nothing;
* ``network``, ``tls``, ``protocol`` — decided by the failure's type, not by text.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .. import __version__

__all__ = ["CAPACITY", "CLASSES", "CLIENT_ID", "CREDENTIALS", "NETWORK", "PROTOCOL", "RECYCLE",
           "SIGNALS", "THROTTLED", "TLS", "TRANSIENT", "Signal", "match", "suggested_delay"]

CREDENTIALS = "credentials"
CAPACITY = "capacity"
THROTTLED = "throttled"
TRANSIENT = "transient"
RECYCLE = "recycle"
NETWORK = "network"
TLS = "tls"
PROTOCOL = "protocol"
#: What the daemon tells servers in RFC 2971 ID: its name and version, nothing about users.
CLIENT_ID = {"name": "rebreak-idle", "version": __version__}

CLASSES = (CREDENTIALS, CAPACITY, THROTTLED, TRANSIENT, RECYCLE, NETWORK, TLS, PROTOCOL)


class Signal(NamedTuple):
    """One row of the table: ``pattern`` (a regular expression, matched
    case-insensitively anywhere in the text) means ``kind``."""

    provider: str
    pattern: str
    kind: str
    source: str


def _codes(kind: str, *codes: str) -> tuple[Signal, ...]:
    """Rows for RFC 5530 response codes (``[CODE]``, lower case here) that mean ``kind``."""
    return tuple(Signal("RFC 5530", rf"\[{code}\]", kind, "RFC 5530 section 3")
                 for code in codes)


#: Provider texts first (they are more specific than the codes they may carry), then the
#: RFC 5530 response codes. The first matching row wins.
SIGNALS: tuple[Signal, ...] = (
    # -- provider texts
    Signal("Gmail", r"too many simultaneous connections", CAPACITY,
           "support.google.com/mail/answer/97150; zone-eu/wildduck#35; dinhvh/libetpan#160"),
    Signal("Gmail", r"session expired, please login again", RECYCLE,
           "emailjs/emailjs-imap-client#142; joeyates/imap-backup#92"),
    Signal("Microsoft 365", r"request is throttled", THROTTLED,
           "ikvk/imap_tools#135; imapsync/imapsync#198; postalsys/imapflow#142"),
    Signal("Microsoft 365", r"accesstokenexpired", RECYCLE,
           "iroco-co/aioimaplib#83"),
    Signal("Microsoft 365", r"user is authenticated but not connected", CAPACITY,
           "mscdex/node-imap#523, #689; jstedfast/MailKit#1494; imapsync FAQ.Office365"),
    Signal("Yahoo", r"too many bad (auth|login) attempts", CREDENTIALS,
           "nodemailer/nodemailer#1112; jstedfast/MailKit#320"),
    Signal("Dovecot", r"maximum number of connections from user\+ip exceeded", CAPACITY,
           "mscdex/node-imap#606, #882 (mail_max_userip_connections)"),
    Signal("Dovecot", r"server shutting down", RECYCLE,
           "Dovecot's BYE on shutdown (doc.dovecot.org, imap-login)"),
    Signal("Yandex, Cyrus", r"autologout", RECYCLE,
           "jstedfast/MailKit#938 (\"BYE Autologout; idle for too long\")"),
    Signal("any", r"too many (connections|concurrent connections|open connections)",
           CAPACITY, "stalwartlabs/stalwart#190; RFC 5530 [LIMIT] texts"),
    Signal("any", r"temporarily unavailable|try again later", TRANSIENT,
           "RFC 5530 section 3 ([UNAVAILABLE] examples)"),
    # -- RFC 5530 response codes (anywhere in the text)
    *_codes(CREDENTIALS, "authenticationfailed", "authorizationfailed", "expired",
            "contactadmin", "privacyrequired"),
    *_codes(CAPACITY, "limit", "inuse"),
    Signal("Gmail, Yahoo", r"\[throttled\]", THROTTLED, "mscdex/node-imap#593"),
    *_codes(TRANSIENT, "unavailable", "serverbug"),
)

_COMPILED = tuple((re.compile(s.pattern, re.IGNORECASE), s) for s in SIGNALS)

_SUGGESTED = re.compile(r"suggested backoff time:\s*(\d{1,12})\s*(milliseconds|ms|seconds|s)\b",
                        re.IGNORECASE)

#: The longest delay a server may ask for (a hostile one must not park a session for ever).
MAX_SUGGESTED = 3600.0


def match(text: str) -> Signal | None:
    """The first row of :data:`SIGNALS` whose pattern occurs in ``text``, or None."""
    probe = text[:1000]  # texts come from servers: bound the work
    for pattern, signal in _COMPILED:
        if pattern.search(probe):
            return signal
    return None


def suggested_delay(text: str) -> float | None:
    """Seconds the server asks to wait ("Suggested Backoff Time: N milliseconds"), capped
    at :data:`MAX_SUGGESTED`; None when the text names none."""
    found = _SUGGESTED.search(text[:1000])
    if found is None:
        return None
    value = float(found.group(1))
    if found.group(2).lower() in ("milliseconds", "ms"):
        value /= 1000.0
    return min(value, MAX_SUGGESTED)
