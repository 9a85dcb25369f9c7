"""Issue 17, points 1 and 6: what one hostile server can cost the client (memory kept
from one response, SASL challenges, the per-connection input budget on the injected
clock) and numbers above 2^32-1. Byte for byte over StringTransport with a Clock."""

from __future__ import annotations

import base64

from rebreak_idle.imap import AuthenticationFailed, InputFlood, ProtocolError
from tests.support.imap_client import ClientTestCase, result_of

XOAUTH2_GREETING = b"* OK [CAPABILITY IMAP4rev1 IDLE AUTH=XOAUTH2] hi\r\n"


class NumberTests(ClientTestCase):
    def closed_with(self, text: str) -> None:
        self.assertTrue(self.client.closed)
        self.assertIsInstance(self.client.close_error, ProtocolError)
        self.assertIn(text, self.client.close_error.text)

    def test_exists_above_2_32_is_a_protocol_error(self) -> None:
        self.connect()
        self.server(b"* 4294967296 EXISTS\r\n")
        self.closed_with("number above 2^32-1")
        self.assertEqual([e for e in self.events.seen if e[0] == "exists"], [])

    def test_largest_number_is_accepted(self) -> None:
        self.connect()
        self.server(b"* 4294967295 EXISTS\r\n")
        self.assertFalse(self.client.closed)
        self.assertEqual(self.events.seen, [("exists", 4294967295)])

    def test_huge_digit_runs_are_protocol_errors(self) -> None:
        for line in (b"* 99999999999999999999 EXPUNGE\r\n", b"* 4294967296 FETCH (FLAGS ())\r\n",
                     b"* 1 FETCH (UID 4294967296 FLAGS (\\Seen))\r\n"):
            self.connect()
            self.server(line)
            self.closed_with("malformed")

    def test_select_numbers_above_2_32(self) -> None:
        for code in (b"UIDNEXT 4294967296", b"UIDVALIDITY 123456789012"):
            self.connect()
            d = result_of(self.client.select())
            self.sent()
            self.server(b"* 3 EXISTS\r\n* OK [" + code + b"] x\r\n0001 OK [READ-WRITE] done\r\n")
            self.closed_with("out of range")
            self.assertIsInstance(d[0].value, ProtocolError)


class ResponseCapTests(ClientTestCase):
    def test_fetch_literal_during_idle_beyond_the_small_cap_closes(self) -> None:
        self.connect()
        result_of(self.client.idle())
        self.server(b"+ idling\r\n")
        self.server(b"* 1 FETCH (BODY[] {60000000}\r\n")
        self.assertTrue(self.client.closed)
        self.assertIn("server literal of 60000000 bytes exceeds 8192 bytes",
                      self.client.close_error.text)
        self.server(b"x" * 1_000_000)  # the rest is dropped, never kept
        self.assertEqual(self.client.reader.literal_held, 0)
        self.assertLessEqual(self.client.reader.buffered, self.client.reader.max_line)

    def test_small_fetch_literal_passes(self) -> None:
        self.connect()
        self.server(b"* 1 FETCH (BODY[HEADER] {8000}\r\n" + b"h" * 8000 + b")\r\n")
        self.assertFalse(self.client.closed)

    def test_line_cap_is_a_few_kib(self) -> None:
        self.connect()
        self.server(b"* OK " + b"x" * 20_000)
        self.assertTrue(self.client.closed)
        self.assertIn("longer than 16384 bytes", self.client.close_error.text)


class ChallengeTests(ClientTestCase):
    def test_xoauth2_one_challenge_kept_then_cancel_then_close(self) -> None:
        self.connect(XOAUTH2_GREETING)
        d = result_of(self.client.login_xoauth2("ann", "tok"))
        self.sent()
        self.server(b"+ \r\n")  # asks for the response
        self.sent()
        challenge = base64.b64encode(b'{"status":"401"}')
        self.server(b"+ " + challenge + b"\r\n")
        self.assertEqual(self.sent(), b"\r\n")
        self.server(b"+ " + challenge + b"\r\n")
        self.assertEqual(self.sent(), b"*\r\n")  # the second challenge: cancelled
        self.assertFalse(self.client.closed)
        for _ in range(1000):
            self.server(b"+ " + b"A" * 10_000 + b"\r\n")
        self.assertEqual(self.sent(), b"")
        self.assertTrue(self.client.closed)
        self.assertIn("XOAUTH2 challenge after cancel", d[0].value.text)

    def test_xoauth2_cancelled_then_no_keeps_first_challenge(self) -> None:
        self.connect(XOAUTH2_GREETING)
        d = result_of(self.client.login_xoauth2("ann", "tok"))
        self.server(b"+ \r\n")
        self.server(b"+ " + base64.b64encode(b'{"status":"400"}') + b"\r\n")
        self.server(b"+ " + base64.b64encode(b'{"status":"500"}') + b"\r\n")
        self.server(b"0001 NO [AUTHENTICATIONFAILED] nope\r\n")
        self.assertIsInstance(d[0].value, AuthenticationFailed)
        self.assertEqual(d[0].value.details, '{"status":"400"}')

    def test_plain_challenge_cancelled_once_then_closed(self) -> None:
        self.connect(b"* OK [CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN] hi\r\n")
        d = result_of(self.client.login("ann", "pw"))
        self.server(b"+ \r\n")
        self.sent()
        self.server(b"+ more\r\n")
        self.assertEqual(self.sent(), b"*\r\n")
        self.server(b"+ more\r\n")
        self.assertTrue(self.client.closed)
        self.assertIsInstance(d[0].value, ProtocolError)


class InputBudgetTests(ClientTestCase):
    def budget(self, lines: int = 1000, rate: float = 100.0) -> None:
        self.connect()
        self.client.reader.input_burst_lines = lines
        self.client.reader.input_lines_per_second = rate
        self.client.reader.restart_budget()  # the buckets start full at the next data

    def test_burst_within_budget_passes(self) -> None:
        self.budget()
        self.server(b"".join(b"* %d EXISTS\r\n" % n for n in range(1, 900)))
        self.assertFalse(self.client.closed)

    def test_sustained_flood_closes_with_input_flood(self) -> None:
        self.budget()
        n = 0
        for _second in range(10):
            self.server(b"".join(b"* %d EXISTS\r\n" % (n + i) for i in range(1, 301)))
            n += 300
            self.clock.advance(1)
            if self.client.closed:
                break
        self.assertTrue(self.client.closed)
        self.assertIsInstance(self.client.close_error, InputFlood)
        self.assertIn("server flooded the connection", self.client.close_error.text)
        # 1000 at once plus 100/s: closed in the fifth second (1000 + 4*100 < 5*300)
        self.assertEqual(_second, 4)
        exists = [e for e in self.events.seen if e[0] == "exists"]
        self.assertLessEqual(len(exists), 1000 + 5 * 100)

    def test_steady_rate_below_budget_never_closes(self) -> None:
        self.budget()
        for second in range(100):
            self.server(b"".join(b"* %d EXISTS\r\n" % (second * 90 + i) for i in range(90)))
            self.clock.advance(1)
        self.assertFalse(self.client.closed)

    def test_byte_budget(self) -> None:
        self.connect()
        self.client.reader.input_burst_bytes = 10_000
        self.client.reader.input_bytes_per_second = 1_000.0
        self.client.reader.restart_budget()
        self.server(b"* OK " + b"x" * 9_000 + b"\r\n")
        self.assertFalse(self.client.closed)
        self.server(b"* OK " + b"x" * 2_000 + b"\r\n")
        self.assertTrue(self.client.closed)
        self.assertIsInstance(self.client.close_error, InputFlood)
        self.assertIn("bytes", self.client.close_error.text)
