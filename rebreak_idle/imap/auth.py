"""Login of ``IdleClient``: AUTHENTICATE PLAIN (with SASL-IR when offered), LOGIN and
AUTHENTICATE XOAUTH2, as functions over the client's public methods (``command``,
``send``, its capability flags, ``secure_transport``), and whether a transport is secure
enough for credentials. ``IdleClient.login``, ``login_xoauth2``, ``tls_active`` and
``secure_transport`` delegate here. A login command is sent with ``auth=True``: its tagged
OK moves the client to AUTH, its NO fails with :class:`AuthenticationFailed`.
Credentials are only sent over TLS or to a loopback address (unless the client's
``allow_plaintext_auth``), and never appear in an error text or a log event."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import INegotiated, ISSLTransport
from twisted.python.failure import Failure

from ..accounts.addresses import is_loopback
from .commands import Command
from .errors import AuthenticationFailed, CommandFailed, InsecureConnection, ProtocolError
from .parser import TEXT_LIMIT, astring, join_pieces, text

if TYPE_CHECKING:
    from .client import IdleClient

__all__ = ["login", "login_xoauth2", "secure_transport", "tls_active"]


def tls_active(transport: Any, started_tls: bool) -> bool:
    """True when ``transport`` is encrypted (implicit TLS, or ``started_tls``: STARTTLS
    done)."""
    return bool(started_tls or (transport is not None and (
        ISSLTransport.providedBy(transport) or INegotiated.providedBy(transport))))


def secure_transport(transport: Any, started_tls: bool) -> bool:
    """True when TLS is active or the peer is a loopback address: credentials may go."""
    if tls_active(transport, started_tls):
        return True
    try:
        host = getattr(transport.getPeer(), "host", "")
    except Exception:
        return False
    return is_loopback(str(host))


def login(client: IdleClient, username: str, password: str) -> defer.Deferred:
    """AUTHENTICATE PLAIN when offered (with SASL-IR when offered), else LOGIN.
    Fires with the capabilities after login; fails :class:`AuthenticationFailed`
    (server text), :class:`InsecureConnection` or :class:`CommandFailed`."""
    refused = _check_secure(client)
    if refused is not None:
        return refused
    if client.has_auth_plain:
        response = base64.b64encode(
            b"\x00" + username.encode("utf-8") + b"\x00" + password.encode("utf-8"))
        return _login_done(client, _authenticate(client, b"PLAIN", response))
    if client.login_disabled:
        return defer.fail(CommandFailed(
            "server disables LOGIN and offers no AUTH=PLAIN", command="LOGIN"))
    try:
        user_pieces, pass_pieces = astring(username), astring(password)
    except ValueError:
        return defer.fail(CommandFailed("user name or password holds a NUL character",
                                        command="LOGIN"))
    pieces = join_pieces([b"LOGIN"], user_pieces, pass_pieces)
    cmd = Command(b"LOGIN", pieces, client.command_timeout, auth=True)
    return _login_done(client, client.send(cmd))


def login_xoauth2(client: IdleClient, username: str, token: str) -> defer.Deferred:
    """AUTHENTICATE XOAUTH2 (SASL-IR when offered). On failure the server's base64
    JSON challenge is answered with an empty line; the tagged NO then fails the
    Deferred with :class:`AuthenticationFailed` (``details`` = the JSON)."""
    refused = _check_secure(client)
    if refused is not None:
        return refused
    response = base64.b64encode(
        b"user=" + username.encode("utf-8") + b"\x01auth=Bearer "
        + token.encode("utf-8") + b"\x01\x01")
    return _login_done(client, _authenticate(client, b"XOAUTH2", response))


def _check_secure(client: IdleClient) -> defer.Deferred | None:
    if client.secure_transport() or client.allow_plaintext_auth:
        return None
    transport = client.transport
    host = getattr(transport.getPeer(), "host", "?") if transport else "?"
    return defer.fail(InsecureConnection(
        f"refusing to send credentials over an unencrypted connection to {host}"))


def _login_done(client: IdleClient, d: defer.Deferred) -> defer.Deferred:
    d.addCallback(lambda _: client.getCapabilities())
    return d


def _authenticate(client: IdleClient, mechanism: bytes, response: bytes) -> defer.Deferred:
    """AUTHENTICATE ``mechanism``. Bounded whatever the server sends: the response goes
    out once; XOAUTH2's one error challenge is kept (at most ``TEXT_LIMIT`` characters)
    and answered with an empty line; any further challenge is cancelled (``*``, RFC 3501
    §6.2.2) and a continuation after the cancel closes the connection (ProtocolError)."""
    use_ir = client.has_sasl_ir
    # [response sent, challenges seen]: two small ints, nothing grows
    seen = [use_ir, 0]
    details: list[str] = []

    def continuation(rest: bytes) -> None:
        if not seen[0]:
            seen[0] = True
            client.transport.write(response + b"\r\n")
            return
        seen[1] += 1
        if seen[1] == 1 and mechanism == b"XOAUTH2":
            details.append(_challenge_text(rest))
            client.transport.write(b"\r\n")
        elif seen[1] <= (2 if mechanism == b"XOAUTH2" else 1):
            client.transport.write(b"*\r\n")  # cancel an unexpected challenge
        else:
            raise ProtocolError(f"{mechanism.decode()} challenge after cancel")

    args = mechanism + (b" " + response if use_ir else b"")
    d = client.command(b"AUTHENTICATE", args, on_continuation=continuation, auth=True)

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
