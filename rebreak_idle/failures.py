"""Failures as text, and secrets kept out of text: the one place for both.

:func:`describe` turns any connection, command, TLS, network or database failure into the
one line that is logged and stored as ``last_connect_error``; it never contains a secret.

:func:`scrub` replaces configured secret values by ``***`` in any text;
:func:`is_secret_name` tells whether a field or key name suggests a secret (log fields,
status objects), from the one list :data:`SECRET_WORDS`.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence

from OpenSSL import SSL, crypto
from service_identity.hazmat import VerificationError
from twisted.internet import error as ierror
from twisted.python.failure import Failure

__all__ = ["MASK", "MIN_MASKED", "SECRET_WORDS", "CertificateVerifyError", "account_secrets",
           "describe", "is_secret_name", "maskable", "printable", "scrub"]

MASK = "***"
#: Secrets shorter than this are not masked: replacing every "a" of the log would only
#: garble it (configuration validation is where short secrets should be refused).
MIN_MASKED = 4
#: Field and key names containing one of these words are never logged or shown.
SECRET_WORDS = ("secret", "password", "passwd", "token", "authorization", "encryption_key",
                "database_url", "dsn", "credential", "encrypted")


class CertificateVerifyError(Exception):
    """Raised by :mod:`rebreak_idle.net.tls` (here, so that :func:`describe` needs no room):
    the server's certificate did not verify; ``str()`` is ``certificate verify failed: ...``."""

    def __init__(self, reason: str, certificate: crypto.X509 | None = None,
                 depth: int | None = None) -> None:
        self.reason = reason
        #: the certificate that failed (``depth`` 0: the server's own), from the handshake
        #: itself: ``rebreak-idle probe`` shows it without a second connection
        self.certificate = certificate
        self.depth = depth
        super().__init__(f"certificate verify failed: {reason}")

    @property
    def text(self) -> str:
        return str(self)


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret value replaced by ``***`` (pass :func:`maskable` values)."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def printable(text: str) -> str:
    """``text`` for one line of an error: printable characters as they are, each other
    one as its escape (``\\x00``, ``\\u2028``). Applied to a server's line *and* to the
    secrets :func:`account_secrets` lists, so that a secret in an escaped line is still
    found by :func:`scrub` (escaping a line first, then scrubbing it with the raw secret,
    would miss a secret with a control character)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def maskable(secrets: Iterable[str]) -> tuple[str, ...]:
    """The secrets worth masking, longest first, so a secret containing another is masked
    whole."""
    kept = {s for s in secrets if s and len(s) >= MIN_MASKED}
    return tuple(sorted(kept, key=len, reverse=True))


def account_secrets(username: str, secret: str) -> tuple[str, ...]:
    """The forms in which an account's own password or token may come back in a server's
    text (a server that echoes what it got: ``NO bad login user/Secret``): the secret
    itself, as LOGIN quotes it, base64 of it, and the base64 payloads of AUTHENTICATE
    PLAIN and XOAUTH2 that carry it. For :func:`scrub`."""
    if not secret:
        return ()
    raw, user = secret.encode("utf-8"), username.encode("utf-8")
    quoted = secret.replace("\\", "\\\\").replace('"', '\\"')
    payloads = (raw, b"\x00" + user + b"\x00" + raw,
                b"user=" + user + b"\x01auth=Bearer " + raw + b"\x01\x01")
    forms = [secret, quoted, *(base64.b64encode(p).decode("ascii") for p in payloads)]
    return maskable([*forms, printable(secret), printable(quoted)])


def is_secret_name(name: object) -> bool:
    """Whether a field or key called ``name`` may hold a secret."""
    lowered = str(name).lower()
    return any(word in lowered for word in SECRET_WORDS)


def _ssl_error_text(exc: SSL.Error) -> str:
    """OpenSSL's error queue ``[(lib, func, reason), ...]`` as one short line."""
    reasons: list[str] = []
    for arg in exc.args:
        items = arg if isinstance(arg, list) else [arg]
        for item in items:
            text = str(item[-1]) if isinstance(item, tuple) and item else str(item)
            if text and text not in reasons:
                reasons.append(text)
    text = ", ".join(reasons) or "handshake failed"
    if "certificate verify failed" in text:
        rest = ", ".join(r for r in reasons if r != "certificate verify failed")
        return f"certificate verify failed: {rest or 'certificate not trusted'}"
    return f"TLS error: {text}"


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of ``str(exc)``, or the exception's class name."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def describe(failure_or_exception: Failure | BaseException) -> str:
    """One line for ``last_connect_error`` and logs: an exception's own ``text`` (IMAP
    server responses, the database deadlines), ``certificate verify failed: <reason>`` for
    TLS verification, the first line of a PostgreSQL/libpq message, short texts for
    network errors. Never includes a secret (exception texts here are built from server
    responses and addresses only; libpq does not repeat a password)."""
    exc = (failure_or_exception.value if isinstance(failure_or_exception, Failure)
           else failure_or_exception)
    text = getattr(exc, "text", None)
    if isinstance(text, str) and text:
        return text
    if _is_database_error(exc):  # libpq messages span several lines
        line = _first_line(exc)
        if line.startswith("invalid dsn"):
            # libpq quotes the text after the point it failed at: maybe half a password
            return "invalid dsn: the connection string cannot be parsed"
        return line
    if isinstance(exc, CertificateVerifyError):
        return str(exc)
    if isinstance(exc, VerificationError):
        return "certificate verify failed: certificate is not valid for this host"
    if isinstance(exc, SSL.Error):
        return _ssl_error_text(exc)
    if isinstance(exc, ierror.DNSLookupError):
        return f"DNS lookup failed: {exc.args[0] if exc.args else 'unknown host'}"
    if isinstance(exc, ierror.ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ierror.TimeoutError | ierror.TCPTimedOutError):
        return "connection timed out"
    if isinstance(exc, ierror.NoRouteError):
        return "no route to host"
    if isinstance(exc, ierror.ConnectionDone):
        return "connection closed by server"
    if isinstance(exc, ierror.ConnectionAborted):
        return "connection aborted"
    if isinstance(exc, ierror.ConnectionLost):
        return "connection lost"
    if isinstance(exc, ierror.ConnectError):
        return f"network error: {exc.osError}" if exc.osError else "network error"
    name = exc.__class__.__name__
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{name}: {msg}"[:300] if msg else name


def _is_database_error(exc: BaseException) -> bool:
    """A psycopg2 error, without importing the driver into rooms that never touch it."""
    if not type(exc).__module__.startswith("psycopg2"):
        return False
    import psycopg2

    return isinstance(exc, psycopg2.Error)
