"""Login (auth.py) through the client's login / login_xoauth2, byte for byte over
StringTransport."""

from __future__ import annotations

import base64

from rebreak_idle.imap import (
    AuthenticationFailed,
    CommandFailed,
    CommandTimeout,
    InsecureConnection,
)
from tests.support.imap_client import ClientTestCase, result_of


class LoginTests(ClientTestCase):
    def test_plain_with_sasl_ir(self) -> None:
        self.connect()
        d = result_of(self.client.login("ann", "pässword"))
        expected = base64.b64encode(b"\x00ann\x00p\xc3\xa4ssword")
        self.assertEqual(self.sent(), b"0001 AUTHENTICATE PLAIN " + expected + b"\r\n")
        self.server(b"0001 OK [CAPABILITY IMAP4rev1 IDLE MOVE] Logged in\r\n")
        self.assertEqual(self.sent(), b"")
        self.assertIn(b"MOVE", d[0])
        self.assertEqual(self.client.state, "auth")

    def test_plain_by_continuation(self) -> None:
        self.connect(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n")
        d = result_of(self.client.login("ann", "secret"))
        self.assertEqual(self.sent(), b"0001 AUTHENTICATE PLAIN\r\n")
        self.server(b"+ \r\n")
        self.assertEqual(self.sent(), base64.b64encode(b"\x00ann\x00secret") + b"\r\n")
        self.server(b"0001 OK Logged in\r\n")
        # no capabilities in the OK: they are asked again
        self.assertEqual(self.sent(), b"0002 CAPABILITY\r\n")
        self.server(b"* CAPABILITY IMAP4rev1 IDLE\r\n0002 OK\r\n")
        self.assertEqual(list(d[0]), [b"IMAP4REV1", b"IDLE"])

    def test_login_when_no_auth_plain(self) -> None:
        self.connect(b"* OK [CAPABILITY IMAP4rev1] hi\r\n")
        d = result_of(self.client.login("ann", 'se"c\\ret'))
        self.assertEqual(self.sent(), b'0001 LOGIN "ann" "se\\"c\\\\ret"\r\n')
        self.server(b"0001 NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n")
        f = d[0]
        self.assertIsInstance(f.value, AuthenticationFailed)
        self.assertEqual(f.value.text, "[AUTHENTICATIONFAILED] Invalid credentials (Failure)")
        self.assertEqual(f.value.code, "AUTHENTICATIONFAILED")
        self.assertNotIn("se", str(f.value).replace("[AUTHENTICATIONFAILED]", "")
                         .replace("credentials", ""))

    def test_login_with_literal(self) -> None:
        self.connect(b"* OK [CAPABILITY IMAP4rev1] hi\r\n")
        d = result_of(self.client.login("ann", "pä"))
        self.assertEqual(self.sent(), b'0001 LOGIN "ann" {3}\r\n')
        self.server(b"+ go ahead\r\n")
        self.assertEqual(self.sent(), b"p\xc3\xa4\r\n")
        self.server(b"0001 OK [CAPABILITY IMAP4rev1 IDLE] ok\r\n")
        self.assertTrue(self.client.has_idle)
        self.assertIsInstance(d[0], dict)

    def test_logindisabled_without_plain(self) -> None:
        self.connect(b"* OK [CAPABILITY IMAP4rev1 LOGINDISABLED STARTTLS] hi\r\n")
        d = result_of(self.client.login("ann", "x"))
        self.assertIsInstance(d[0].value, CommandFailed)
        self.assertEqual(self.sent(), b"")

    def test_bad_is_not_authentication_failure(self) -> None:
        self.connect()
        d = result_of(self.client.login("ann", "x"))
        self.sent()
        self.server(b"0001 BAD [CLIENTBUG] syntax\r\n")
        self.assertIsInstance(d[0].value, CommandFailed)
        self.assertNotIsInstance(d[0].value, AuthenticationFailed)
        self.assertEqual(d[0].value.status, "BAD")

    def test_xoauth2_sasl_ir(self) -> None:
        self.connect(b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR IDLE] hi\r\n")
        d = result_of(self.client.login_xoauth2("ann@example.org", "tok"))
        ir = base64.b64encode(b"user=ann@example.org\x01auth=Bearer tok\x01\x01")
        self.assertEqual(self.sent(), b"0001 AUTHENTICATE XOAUTH2 " + ir + b"\r\n")
        self.server(b"0001 OK [CAPABILITY IMAP4rev1 IDLE] ok\r\n")
        self.assertIsInstance(d[0], dict)

    def test_xoauth2_failure_challenge(self) -> None:
        self.connect(b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] hi\r\n")
        d = result_of(self.client.login_xoauth2("ann", "tok"))
        self.assertEqual(self.sent(), b"0001 AUTHENTICATE XOAUTH2\r\n")
        self.server(b"+ \r\n")
        self.assertEqual(self.sent(), base64.b64encode(
            b"user=ann\x01auth=Bearer tok\x01\x01") + b"\r\n")
        challenge = base64.b64encode(b'{"status":"401","schemes":"bearer"}')
        self.server(b"+ " + challenge + b"\r\n")
        self.assertEqual(self.sent(), b"\r\n")
        self.assertEqual(d, [])
        self.server(b"0001 NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n")
        self.assertIsInstance(d[0].value, AuthenticationFailed)
        self.assertEqual(d[0].value.details, '{"status":"401","schemes":"bearer"}')

    def test_insecure_refused(self) -> None:
        self.peer = "192.0.2.7"
        self.connect()
        for d in (self.client.login("a", "pw"), self.client.login_xoauth2("a", "t")):
            f = result_of(d)[0]
            self.assertIsInstance(f.value, InsecureConnection)
            self.assertIn("192.0.2.7", f.value.text)
        self.assertEqual(self.sent(), b"")

    def test_insecure_allowed_explicitly(self) -> None:
        self.peer = "192.0.2.7"
        self.connect(allow_plaintext_auth=True)
        result_of(self.client.login("a", "pw"))
        self.assertTrue(self.sent().startswith(b"0001 AUTHENTICATE PLAIN "))

    def test_login_timeout_closes(self) -> None:
        self.connect(command_timeout=60)
        d = result_of(self.client.login("ann", "pw"))
        self.clock.advance(60)
        self.assertIsInstance(d[0].value, CommandTimeout)
        self.assertEqual(d[0].value.text, "AUTHENTICATE timed out after 60s")
        self.assertTrue(self.transport.disconnecting)
