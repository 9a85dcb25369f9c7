"""What the TLS layer frees or never keeps (issue 20): tickets off, renewed memory BIOs."""

from __future__ import annotations

from OpenSSL import SSL
from OpenSSL._util import ffi, lib
from twisted.trial.unittest import TestCase

from rebreak_idle.net.tls import _renew_bios, client_tls_options


class TLSMemoryTests(TestCase):
    def test_context_keeps_verification_and_asks_for_no_tickets(self) -> None:
        creator = client_tls_options("imap.example.com")
        context = creator._context
        self.assertTrue(context.set_options(0) & SSL.OP_NO_TICKET)
        self.assertTrue(context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS)
        self.assertEqual(context.get_verify_mode(),
                         SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)

    def test_renewed_bios_keep_pending_bytes(self) -> None:
        creator = client_tls_options("imap.example.com")
        connection = creator.clientConnectionForTLS(object())
        old_in, old_out = connection._into_ssl, connection._from_ssl
        incoming = bytes(range(256)) * 40  # more than one copy chunk
        connection.bio_write(incoming)
        outgoing = b"pending ClientHello bytes"
        self.assertEqual(lib.BIO_write(old_out, outgoing, len(outgoing)), len(outgoing))
        _renew_bios(connection)
        self.assertNotEqual(connection._into_ssl, old_in)
        self.assertNotEqual(connection._from_ssl, old_out)
        buf = ffi.new("char[]", len(incoming) + 10)
        got = lib.BIO_read(connection._into_ssl, buf, len(incoming) + 10)
        self.assertEqual(ffi.buffer(buf, got)[:], incoming)
        self.assertEqual(connection.bio_read(100), outgoing)
