"""STARTTLS and login (AUTH PLAIN, LOGIN, XOAUTH2) of ``IdleClient``: a mixin of the
client. Credentials are only sent over TLS or to a loopback address (unless
``allow_plaintext_auth``), and never appear in an error text or a log event."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import INegotiated, ISSLTransport, ITLSTransport
from twisted.python.failure import Failure

from ..accounts.addresses import is_loopback
from .commands import Command
from .errors import (
    AuthenticationFailed,
    CommandFailed,
    IMAPError,
    InsecureConnection,
    ProtocolError,
)
from .parser import TEXT_LIMIT, Capabilities, astring, capability_words, join_pieces, text

__all__ = ["Authentication"]


class Authentication:
    """``startTLS``, ``login`` and ``login_xoauth2``."""

    allow_plaintext_auth = False
    startedTLS = False

    # provided by the client
    transport: Any
    capabilities: Capabilities
    _caps_known: bool
    _buffer: bytes
    _close_error: IMAPError | None
    has_starttls: bool
    has_auth_plain: bool
    has_sasl_ir: bool
    login_disabled: bool
    _command: Callable[..., defer.Deferred]
    _send: Callable[[Command], defer.Deferred]
    _protocol_error: Callable[[str], None]
    _refresh_caps: Callable[[], defer.Deferred]
    getCapabilities: Callable[[], defer.Deferred]
    _authenticated: Callable[[], None]
    _refused_while_idle: Callable[[bytes], defer.Deferred | None]
    command_timeout: float

    # ------------------------------------------------------------------ TLS

    def tls_active(self) -> bool:
        """True when the transport is encrypted (implicit TLS or STARTTLS done)."""
        t = self.transport
        return bool(self.startedTLS or (t is not None and (
            ISSLTransport.providedBy(t) or INegotiated.providedBy(t))))

    def secure_transport(self) -> bool:
        """True when TLS is active or the peer is a loopback address."""
        if self.tls_active():
            return True
        try:
            host = getattr(self.transport.getPeer(), "host", "")
        except Exception:
            return False
        return is_loopback(str(host))

    def startTLS(self, contextFactory: Any = None) -> defer.Deferred:
        """STARTTLS, then the TLS handshake (verified by ``contextFactory``), then CAPABILITY
        again; fires with the new capabilities. A verification failure fails it with
        :class:`ConnectionLost` whose text is ``certificate verify failed: ...``."""
        if self.tls_active():
            return defer.fail(IMAPError("TLS is already active"))
        if not self.has_starttls:
            return defer.fail(CommandFailed("server does not offer STARTTLS",
                                            command="STARTTLS"))
        if ITLSTransport(self.transport, None) is None:
            return defer.fail(IMAPError("transport cannot start TLS"))

        def ok(code: bytes | None, data: bytes) -> None:
            if self._buffer:
                # bytes the server sent after its OK, before TLS: an injection attempt
                self._protocol_error("data after STARTTLS response before TLS")
                raise self._close_error or ProtocolError("data after STARTTLS response")
            self.transport.startTLS(contextFactory)
            self.startedTLS = True
            self.capabilities = {}
            self._caps_known = False

        d = self._command(b"STARTTLS", on_ok=ok)
        d.addCallback(lambda _: self._refresh_caps())
        return d

    # ------------------------------------------------------------------ login

    def login(self, username: str, password: str) -> defer.Deferred:
        """AUTHENTICATE PLAIN when offered (with SASL-IR when offered), else LOGIN.
        Fires with the capabilities after login; fails :class:`AuthenticationFailed`
        (server text), :class:`InsecureConnection` or :class:`CommandFailed`."""
        refused = self._check_secure()
        if refused is not None:
            return refused
        if self.has_auth_plain:
            response = base64.b64encode(
                b"\x00" + username.encode("utf-8") + b"\x00" + password.encode("utf-8"))
            return self._login_done(self._authenticate(b"PLAIN", response))
        if self.login_disabled:
            return defer.fail(CommandFailed(
                "server disables LOGIN and offers no AUTH=PLAIN", command="LOGIN"))
        try:
            user_pieces, pass_pieces = astring(username), astring(password)
        except ValueError:
            return defer.fail(CommandFailed("user name or password holds a NUL character",
                                            command="LOGIN"))
        pieces = join_pieces([b"LOGIN"], user_pieces, pass_pieces)
        refused = self._refused_while_idle(b"LOGIN")
        if refused is not None:
            return refused
        cmd = Command(b"LOGIN", pieces, self.command_timeout, on_ok=self._after_login,
                      auth=True)
        return self._login_done(self._send(cmd))

    def login_xoauth2(self, username: str, token: str) -> defer.Deferred:
        """AUTHENTICATE XOAUTH2 (SASL-IR when offered). On failure the server's base64
        JSON challenge is answered with an empty line; the tagged NO then fails the
        Deferred with :class:`AuthenticationFailed` (``details`` = the JSON)."""
        refused = self._check_secure()
        if refused is not None:
            return refused
        response = base64.b64encode(
            b"user=" + username.encode("utf-8") + b"\x01auth=Bearer "
            + token.encode("utf-8") + b"\x01\x01")
        return self._login_done(self._authenticate(b"XOAUTH2", response))

    def _check_secure(self) -> defer.Deferred | None:
        if self.secure_transport() or self.allow_plaintext_auth:
            return None
        host = getattr(self.transport.getPeer(), "host", "?") if self.transport else "?"
        return defer.fail(InsecureConnection(
            f"refusing to send credentials over an unencrypted connection to {host}"))

    def _after_login(self, code: bytes | None, data: bytes) -> None:
        self._authenticated()
        if capability_words(code) is None:
            self._caps_known = False

    def _login_done(self, d: defer.Deferred) -> defer.Deferred:
        d.addCallback(lambda _: self.getCapabilities())
        return d

    def _authenticate(self, mechanism: bytes, response: bytes) -> defer.Deferred:
        """AUTHENTICATE ``mechanism``. Bounded whatever the server sends: the response goes
        out once; XOAUTH2's one error challenge is kept (at most ``TEXT_LIMIT``
        characters) and answered with an empty line; any further challenge is cancelled
        (``*``, RFC 3501 §6.2.2) and a continuation after the cancel closes the
        connection."""
        # [response sent, challenges seen]: two small ints, nothing grows
        seen = [self.has_sasl_ir, 0]
        details: list[str] = []
        use_ir = self.has_sasl_ir

        def continuation(rest: bytes) -> None:
            if not seen[0]:
                seen[0] = True
                self.transport.write(response + b"\r\n")
                return
            seen[1] += 1
            if seen[1] == 1 and mechanism == b"XOAUTH2":
                details.append(_challenge_text(rest))
                self.transport.write(b"\r\n")
            elif seen[1] <= (2 if mechanism == b"XOAUTH2" else 1):
                self.transport.write(b"*\r\n")  # cancel an unexpected challenge
            else:
                self._protocol_error(f"{mechanism.decode()} challenge after cancel")

        args = mechanism + (b" " + response if use_ir else b"")
        d = self._command(b"AUTHENTICATE", args, on_continuation=continuation,
                          on_ok=self._after_login, auth=True)

        def add_details(f: Failure) -> Failure:
            if details and isinstance(f.value, AuthenticationFailed):
                f.value.details = details[0]
            return f

        d.addErrback(add_details)
        return d


def _challenge_text(rest: bytes) -> str:
    """A bounded, printable text of an XOAUTH2 error challenge (base64 JSON)."""
    rest = rest.strip()[: 4 * TEXT_LIMIT]
    try:
        return text(base64.b64decode(rest, validate=True))
    except Exception:
        return text(rest)
