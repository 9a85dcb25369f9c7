"""TLS for IMAP connections: verified client options and an unbuffered TLS endpoint.

:func:`client_tls_options` builds an ``IOpenSSLClientConnectionCreator`` on Twisted's
``CertificateOptions`` (host-name checks by service_identity, as ``optionsForClientTLS``
does) that trusts the platform's roots plus every certificate of an optional PEM file
(``REBREAK_TLS_CA_FILE``), and lets OpenSSL release idle connections' buffers. When the
chain or the host name does not verify, the connection is lost with a
:class:`CertificateVerifyError` whose message reads ``certificate verify failed: <reason>``.

:class:`TLSClientEndpoint` runs a client endpoint's connections over TLS (implicit TLS,
port 993) without Twisted's small-write aggregation.
"""

from __future__ import annotations

import weakref
from typing import Any

from OpenSSL import SSL, crypto
from service_identity.hazmat import (
    DNS_ID,
    IPAddress_ID,
    VerificationError,
    verify_service_identity,
)
from service_identity.pyopenssl import extract_patterns
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import CertificateOptions
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ..config import read_ca_file
from ..failures import CertificateVerifyError

__all__ = ["CertificateVerifyError", "TLSClientEndpoint", "client_tls_options",
           "load_ca_file"]




# OpenSSL X509_V_ERR_* codes and their texts, for the common cases.
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
    62: "hostname mismatch",
}


def _verify_error_text(code: int) -> str:
    if code in _VERIFY_ERRORS:
        return _VERIFY_ERRORS[code]
    try:  # pragma: no cover - depends on OpenSSL build
        from OpenSSL._util import ffi, lib

        return ffi.string(lib.X509_verify_cert_error_string(code)).decode("ascii", "replace")
    except Exception:  # pragma: no cover
        return f"verify error {code}"


def load_ca_file(path: str) -> list[crypto.X509]:
    """All PEM certificates of ``path`` (:func:`~rebreak_idle.config.read_ca_file`, which
    checked the file at start); ValueError with a clear text when there are none."""
    return [crypto.X509.from_cryptography(c) for c in read_ca_file(path)]


@implementer(IOpenSSLTrustRoot)
class _PlatformPlusCertificates:
    """The platform's default verify paths plus some extra CA certificates."""

    def __init__(self, certificates: list[crypto.X509]) -> None:
        self._certificates = certificates

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        context.set_default_verify_paths()
        store = context.get_cert_store()
        for cert in self._certificates:
            try:
                store.add_cert(cert)
            except crypto.Error:  # pragma: no cover - duplicate of a platform root
                pass


@implementer(IOpenSSLClientConnectionCreator)
class _VerifyingCreator:
    """Client connections from one shared context (``CertificateOptions``: Twisted's
    secure defaults for protocols and ciphers), with SNI, peer verification and a host-name
    check (service_identity) in the verify callback. A failed verification is lost with a
    :class:`CertificateVerifyError` naming the reason (expired, self-signed, unknown
    issuer, host-name mismatch) instead of OpenSSL's bare "certificate verify failed"."""

    def __init__(self, context: SSL.Context, hostname: str) -> None:
        self._context = context
        self._hostname = hostname
        if isIPAddress(hostname) or isIPv6Address(hostname):
            self._service_id: Any = IPAddress_ID(hostname)
            self._sni: bytes | None = None  # RFC 6066: no IP addresses in SNI
        else:
            self._service_id = DNS_ID(hostname)
            self._sni = hostname.encode("idna")
        #: connections whose verification failed (their later callbacks fail at once)
        self._failed: weakref.WeakSet[SSL.Connection] = weakref.WeakSet()
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        connection.set_connect_state()
        return connection

    def _verify(self, conn: SSL.Connection, cert: crypto.X509, err: int, depth: int,
                ok: int) -> bool:
        """The context's verify callback, shared by its connections (one callback per
        context instead of a closure and a C callback per connection)."""
        if conn in self._failed:
            return False
        reason = None
        if not ok:
            reason = _verify_error_text(err)
        elif depth == 0:
            try:
                verify_service_identity(extract_patterns(cert), [self._service_id], [])
            except VerificationError:
                reason = f"certificate is not valid for {self._hostname}"
            except Exception as e:  # pragma: no cover - malformed certificate
                reason = f"cannot check certificate names: {e}"
        if reason is None:
            return True
        self._failed.add(conn)
        conn.get_app_data().failVerification(
            Failure(CertificateVerifyError(reason, cert, depth)))
        return False


def client_tls_options(hostname: str, ca_file: str | None = None) -> Any:
    """Client TLS options for ``hostname`` (a DNS name or an IP address) that verify the
    chain against the platform roots plus every certificate in ``ca_file`` (PEM) and the
    host name with service_identity. Raises ValueError when ``ca_file`` is unusable."""
    extra = load_ca_file(ca_file) if ca_file else []
    context = CertificateOptions(trustRoot=_PlatformPlusCertificates(extra)).getContext()
    # An idle IMAP connection has no TLS record in flight for minutes: let OpenSSL free
    # each connection's read and write buffers (about 34 KB) between records.
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    # No session is ever resumed (each connection is a new SSL object without
    # set_session): without tickets the server sends no NewSessionTicket after a TLS 1.3
    # handshake and the client keeps no ticket-bearing sessions (about 3 KB each,
    # bench.tlscost). Verification is unchanged: every connection does a full handshake.
    context.set_options(SSL.OP_NO_TICKET)
    return _VerifyingCreator(context, hostname)


def _renew_bios(connection: SSL.Connection) -> None:
    """Replace an established connection's two memory BIOs by new ones. A memory BIO's
    buffer only ever grows: after the handshake the incoming one still holds the size of
    the server's whole first flight and the outgoing one that of the ClientHello (3.6 KB a
    connection together, bench.tlscost). Bytes still pending are moved over;
    ``SSL_set_bio`` frees the old pair."""
    from OpenSSL._util import ffi, lib

    old = (connection._into_ssl, connection._from_ssl)  # type: ignore[attr-defined]
    new = (lib.BIO_new(lib.BIO_s_mem()), lib.BIO_new(lib.BIO_s_mem()))
    if ffi.NULL in new:  # pragma: no cover - out of memory: keep the old pair
        for bio in new:
            if bio != ffi.NULL:
                lib.BIO_free(bio)
        return
    buf = ffi.new("char[]", 4096)
    for src, dst in zip(old, new, strict=True):
        while (got := lib.BIO_read(src, buf, 4096)) > 0:
            lib.BIO_write(dst, buf, got)
    lib.SSL_set_bio(connection._ssl, new[0], new[1])  # type: ignore[attr-defined]
    connection._into_ssl, connection._from_ssl = new  # type: ignore[attr-defined]


class _LeanTLSProtocol(TLSMemoryBIOProtocol):
    """TLS whose memory BIOs are renewed once, on the first read after the handshake
    (when OpenSSL has drained the incoming one): see :func:`_renew_bios`. Then the
    connection becomes a plain ``TLSMemoryBIOProtocol``."""

    _bios_renewed = False

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self._handshakeDone and not self._bios_renewed:
            connection = getattr(self, "_tlsConnection", None)
            if connection is not None and not self._aborted:
                self._bios_renewed = True
                _renew_bios(connection)
                # from now on Twisted's own class: no extra call on each later read
                self.__class__ = TLSMemoryBIOProtocol  # type: ignore[assignment]


class _UnbufferedTLSFactory(TLSMemoryBIOFactory):
    """TLS whose writes go to OpenSSL at once. Twisted's default TLS transport collects
    small writes and sends them on the next reactor turn (a ``callLater(0)`` and one more
    turn per write); ``IdleClient`` already writes each command, and a heartbeat's DONE,
    NOOP and IDLE, in one piece, so that buys nothing here and costs per heartbeat."""

    protocol = _LeanTLSProtocol


@implementer(IStreamClientEndpoint)
class TLSClientEndpoint:
    """``wrapClientTLS(creator, endpoint)`` with :class:`_UnbufferedTLSFactory`: connects
    ``endpoint`` and runs TLS over it; ``connect`` fires with the application protocol."""

    def __init__(self, creator: Any, endpoint: IStreamClientEndpoint) -> None:
        self.creator = creator
        self.endpoint = endpoint

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting = self.endpoint.connect(_UnbufferedTLSFactory(self.creator, True, factory))
        return connecting.addCallback(lambda protocol: protocol.wrappedProtocol)
