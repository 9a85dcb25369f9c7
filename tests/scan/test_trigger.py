"""ScanTrigger (CONTRACT §5): coalescing, concurrency cap, owed scans while the backend is
down (the probe, Retry-After, 4xx), outcomes, shutdown.

Unit tests drive the trigger with ``task.Clock`` and ``treq.testing.StubTreq`` over a
resource that keeps every request open until the test answers it; integration tests
talk HTTP over loopback to :class:`rebreak_idle.testing.backend.BackendDouble`.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource

from rebreak_idle import metrics
from rebreak_idle.config import scan_settings
from rebreak_idle.scan.backend_health import BackendHealth
from rebreak_idle.scan.trigger import SCAN_PATH, ScanTrigger
from rebreak_idle.scan.trigger_states import Phase
from rebreak_idle.testing.backend import Answer, BackendDouble, Gate
from tests.support.scan_harness import (
    SECRET,
    Harness,
    LogCapture,
    StubBackend,
    account,
    settings,
)


def sample(name: str, **labels: str) -> float:
    """The current value of one series of the daemon's registry (0 before its first use)."""
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def scans(**labels: str) -> float:
    return sample("rebreak_idle_scan_triggers_total", **labels)


def retries() -> float:
    return sample("rebreak_idle_scan_retries_total")


def queue_length() -> float:
    return sample("rebreak_idle_scan_queue_length")


def in_flight() -> float:
    return sample("rebreak_idle_scans_in_flight")


def quick_probes(reactor: Any, delay: float) -> BackendHealth:
    """A health for tests on the real reactor: the first probe after ``delay``."""
    return BackendHealth(reactor, jitter=lambda: 0.0, first_probe_delay=delay)


def latency_count() -> float:
    return sample("rebreak_idle_scan_latency_seconds_count")


class WireFormatStubTests(SynchronousTestCase):
    def test_post_path_headers_and_body(self) -> None:
        h = Harness(self)
        h.trigger.request(account(1), 7, "exists")
        self.assertEqual(len(h.requests), 1)
        r = h.requests[0]
        self.assertEqual(r.method, b"POST")
        self.assertEqual(r.path, SCAN_PATH.encode())
        self.assertEqual(r.requestHeaders.getRawHeaders(b"content-type"),
                         [b"application/json"])
        self.assertEqual(r.requestHeaders.getRawHeaders(b"x-admin-secret"), [SECRET.encode()])
        self.assertEqual(r.parsed, {"connectionId": account(1).id, "userId": "user-1",
                                    "reason": "exists", "exists": 7})


class OutcomeTests(SynchronousTestCase):
    def test_ok_logs_counts_and_records_outcome(self) -> None:
        h = Harness(self)
        ok_before = scans(reason="connected", outcome="ok")
        latency_before = latency_count()
        h.clock.advance(100)
        h.trigger.request(account(1), 3, "connected")
        h.clock.advance(0.25)
        h.answer(body={"scanned": 3, "blocked": 1})
        self.assertIn("[idle/user1@example.test] scan-triggered → scanned=3 blocked=1",
                      h.log.mine())
        self.assertEqual(h.trigger.last_outcome(account(1).id),
                         {"time": 100.25, "outcome": "ok", "scanned": 3, "blocked": 1,
                          "status": 200})
        self.assertEqual(scans(reason="connected", outcome="ok"),
                         ok_before + 1)
        self.assertEqual(latency_count(), latency_before + 1)
        self.assertIsNone(h.trigger.last_outcome(account(2).id))
        event = next(e for e in h.log.events if "scan-triggered" in formatEvent(e))
        self.assertEqual(event["account_id"], account(1).id)

    def test_2xx_without_json_is_a_success(self) -> None:
        h = Harness(self)
        h.trigger.request(account(1), 3, "exists")
        h.answer(status=204)
        h.trigger.request(account(2), 3, "exists")
        h.answer(status=200, body=b"<html>fine</html>")
        h.trigger.request(account(3), 3, "exists")
        h.answer(status=202, body={"queued": True, "scanned": 2})
        self.assertEqual(h.log.mine(), [
            "[idle/user1@example.test] scan-triggered → scanned=? blocked=? "
            "(no JSON in answer)",
            "[idle/user2@example.test] scan-triggered → scanned=? blocked=? "
            "(no JSON in answer)",
            "[idle/user3@example.test] scan-triggered → scanned=2 blocked=? "
            "(answer without counts)",
        ])
        self.assertEqual(h.trigger.last_outcome(account(1).id)["outcome"], "ok")
        self.assertEqual(h.trigger.last_outcome(account(1).id)["status"], 204)

    def test_401_keeps_the_scan_owed_and_names_the_admin_secret(self) -> None:
        h = Harness(self)
        before = scans(reason="exists", outcome="client_error")
        h.trigger.request(account(1), 3, "exists")
        h.answer(status=401, body={"error": "unauthorized"})
        h.advance(179)  # the next try comes at the slow cadence only
        self.assertEqual(len(h.requests), 1)
        line, down = h.log.mine()
        self.assertIn("HTTP 401", line)
        self.assertIn("the admin secret is wrong", line)
        self.assertEqual(down, "[idle/db] backend down: HTTP 401 — the admin secret is wrong "
                               '(check ADMIN_SECRET): {"error": "unauthorized"}; 1 scans owed')
        self.assertEqual(h.trigger.last_outcome(account(1).id)["outcome"], "client_error")
        self.assertEqual(h.trigger.last_outcome(account(1).id)["status"], 401)
        self.assertEqual(scans(reason="exists", outcome="client_error"),
                         before + 1)
        self.assertTrue(h.trigger.busy())  # owed

    def test_403_also_names_the_admin_secret(self) -> None:
        h = Harness(self)
        h.trigger.request(account(1), 3, "exists")
        h.answer(status=403)
        self.assertIn("the admin secret is wrong", h.log.mine()[0])

    def test_other_4xx_logged_with_status_and_truncated_body(self) -> None:
        h = Harness(self)
        h.trigger.request(account(1), 3, "exists")
        h.answer(status=422, body=b"x" * 5000)
        h.advance(179)
        self.assertEqual(len(h.requests), 1)
        [line] = h.log.mine()
        self.assertIn("HTTP 422", line)
        self.assertNotIn("admin secret", line)
        self.assertIn("x" * 200 + "…", line)
        self.assertNotIn("x" * 201, line)
        self.assertTrue(line.endswith("; scan owed, next try in 180s"), line)
        h.advance(1)
        self.assertEqual(len(h.requests), 2)  # tried again after 180 s
        h.answer(status=422, body=b"x" * 5000)
        errors = [e for e in h.log.events if e.get("log_level") == LogLevel.error]
        self.assertEqual(len(errors), 1)  # the same refusal again: logged once

    def test_a_4xx_of_one_account_holds_only_that_account(self) -> None:
        h = Harness(self)
        h.trigger.request(account(1), 3, "exists")
        h.answer(status=400)
        h.trigger.request(account(1), 4, "exists")  # owed: waits for the next try
        h.trigger.request(account(2), 1, "exists")  # another account: at once
        self.assertEqual([r.parsed["userId"] for r in h.requests], ["user-1", "user-2"])
        h.answer()
        self.assertEqual(h.trigger.health.state, "up")
        h.advance(180)
        self.assertEqual(len(h.requests), 3)
        self.assertEqual(h.requests[2].parsed["exists"], 4)  # the latest count
        h.answer()
        self.successResultOf(h.trigger.when_quiet())


class CoalescingTests(SynchronousTestCase):
    def test_burst_during_a_scan_gives_exactly_one_follow_up(self) -> None:
        h = Harness(self)
        h.trigger.request(account(1), 1, "connected")
        for n in range(2, 1002):
            h.trigger.request(account(1), n, "exists")
        self.assertEqual(len(h.requests), 1)
        h.answer()
        self.assertEqual(len(h.requests), 2)
        self.assertEqual(h.requests[1].parsed["exists"], 1001)
        self.assertEqual(h.requests[1].parsed["reason"], "exists")
        h.answer()
        h.advance(3600)
        self.assertEqual(len(h.requests), 2)
        self.successResultOf(h.trigger.when_quiet())

    def test_follow_up_carries_latest_reason(self) -> None:
        h = Harness(self)
        h.trigger.request(account(1), 1, "exists")
        h.trigger.request(account(1), 2, "exists")
        h.trigger.request(account(1), 2, "connected")
        h.answer()
        self.assertEqual(h.requests[1].parsed["reason"], "connected")

    def test_new_mail_while_the_backend_is_down_joins_the_owed_scan(self) -> None:
        h = Harness(self)
        h.trigger.request(account(1), 1, "exists")
        h.answer(status=503)
        h.trigger.request(account(1), 2, "exists")
        self.assertEqual(len(h.requests), 1)  # nothing until the probe
        h.advance(1)
        self.assertEqual(len(h.requests), 2)
        self.assertEqual(h.requests[1].parsed["exists"], 2)  # one scan, the latest count
        h.answer()
        h.advance(3600)
        self.assertEqual(len(h.requests), 2)
        self.successResultOf(h.trigger.when_quiet())

    def test_accounts_are_independent(self) -> None:
        h = Harness(self)
        h.trigger.request(account(1), 1, "exists")
        h.trigger.request(account(2), 1, "exists")
        self.assertEqual(len(h.requests), 2)

    def test_when_quiet_fires_when_nothing_is_in_flight(self) -> None:
        h = Harness(self)
        self.successResultOf(h.trigger.when_quiet())
        h.trigger.request(account(1), 1, "exists")
        h.trigger.request(account(1), 2, "exists")
        d = h.trigger.when_quiet()
        self.assertNoResult(d)
        self.assertTrue(h.trigger.busy())
        h.answer()
        self.assertNoResult(d)
        h.answer()
        self.successResultOf(d)
        self.assertFalse(h.trigger.busy())

    def test_request_never_raises(self) -> None:
        h = Harness(self)
        self.assertIsNone(h.trigger.request(object(), 1, "exists"))  # type: ignore[arg-type]
        self.assertIsNone(h.trigger.request(account(1), "many", "exists"))  # type: ignore
        self.assertEqual(len(self.flushLoggedErrors(AttributeError, ValueError)), 2)

        class Broken:  # no user_id: the job fails before any request is sent
            id = "broken"
            email = "broken@example.test"

        self.assertIsNone(h.trigger.request(Broken(), 1, "exists"))  # type: ignore[arg-type]
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)
        self.successResultOf(h.trigger.when_quiet())
        self.assertEqual(h.requests, [])
        h.trigger.request(account(1), 1, "exists")  # the trigger still works
        self.assertEqual(len(h.requests), 1)


class ConcurrencyTests(SynchronousTestCase):
    def test_cap_and_order(self) -> None:
        queue_before = queue_length()
        flight_before = in_flight()
        h = Harness(self, scan_concurrency=3)
        for n in range(1, 11):
            h.trigger.request(account(n), 1, "exists")
        self.assertEqual([r.parsed["userId"] for r in h.requests],
                         ["user-1", "user-2", "user-3"])
        self.assertEqual(queue_length() - queue_before, 7)
        self.assertEqual(in_flight() - flight_before, 3)
        h.answer(1)  # user-2 done: user-4 takes its slot
        self.assertEqual(len(h.requests), 4)
        self.assertEqual(h.requests[3].parsed["userId"], "user-4")
        while h.resource.open:
            h.answer(0)
            self.assertLessEqual(len(h.resource.open), 3)
        self.assertEqual([r.parsed["userId"] for r in h.requests],
                         [f"user-{n}" for n in range(1, 11)])
        self.assertEqual(queue_length(), queue_before)
        self.assertEqual(in_flight(), flight_before)

    def test_queued_scans_stay_owed_when_the_backend_goes_down(self) -> None:
        h = Harness(self, scan_concurrency=1)
        h.trigger.request(account(1), 1, "exists")
        h.trigger.request(account(2), 1, "exists")
        h.answer(status=503)  # down: account 2's scan, waiting for the slot, is not sent
        self.assertEqual([r.parsed["userId"] for r in h.requests], ["user-1"])
        self.assertEqual(queue_length(), 0)
        h.advance(1)  # the probe: the oldest owed mailbox (account 1's)
        self.assertEqual([r.parsed["userId"] for r in h.requests], ["user-1", "user-1"])
        h.answer()  # up: account 2 drains
        self.assertEqual([r.parsed["userId"] for r in h.requests],
                         ["user-1", "user-1", "user-2"])
        h.answer()
        self.successResultOf(h.trigger.when_quiet())


class RetryTests(SynchronousTestCase):
    """A failed attempt makes the backend down: the scan stays owed and one probe at a time
    retries it (the scenarios across accounts: tests/test_owed_scans_trigger.py)."""

    def test_503_probed_with_growing_delays_then_success(self) -> None:
        h = Harness(self)
        retries_before = retries()
        h.trigger.request(account(1), 5, "exists")
        h.answer(status=503, body=b"busy")
        h.advance(0.999)
        self.assertEqual(len(h.requests), 1)
        h.advance(0.001)
        self.assertEqual(len(h.requests), 2)
        h.answer(status=502)
        h.advance(1.999)
        self.assertEqual(len(h.requests), 2)
        h.advance(0.001)
        self.assertEqual(len(h.requests), 3)
        self.assertEqual(h.requests[2].parsed["exists"], 5)
        h.answer(body={"scanned": 1, "blocked": 0})
        self.assertEqual(retries(), retries_before + 2)
        self.assertEqual(h.trigger.last_outcome(account(1).id)["outcome"], "ok")
        self.assertEqual(h.log.mine()[:2], [
            "[idle/user1@example.test] scan-trigger failed (HTTP 503: busy); scan owed",
            "[idle/db] backend down: HTTP 503: busy; 1 scans owed"])
        self.assertIn("[idle/db] backend back after 3s: sending 0 owed scans", h.log.mine())

    def test_probe_delay_doubles_to_at_most_ten_seconds_and_never_gives_up(self) -> None:
        h = Harness(self, scan_attempts=9)
        h.trigger.request(account(1), 5, "exists")
        times = []
        while h.clock.seconds() < 6 * 3600:
            h.answer(status=500)
            while not h.resource.open:
                h.advance(0.5)
            times.append(h.clock.seconds())
        gaps = [round(b - a, 1) for a, b in zip([0.0, *times], times, strict=False)]
        self.assertEqual(gaps[:6], [1, 2, 4, 8, 8, 8])
        self.assertEqual(set(gaps[3:]), {8})
        h.answer()
        self.assertEqual(h.trigger.last_outcome(account(1).id)["outcome"], "ok")
        self.assertNotIn("gave up", "\n".join(h.log.mine()))
        self.successResultOf(h.trigger.when_quiet())

    def test_timeout_is_retried(self) -> None:
        h = Harness(self, scan_timeout=30.0)
        h.trigger.request(account(1), 5, "exists")
        h.advance(29.9)
        self.assertEqual(len(h.requests), 1)
        h.advance(0.1)
        self.assertTrue(h.requests[0].gone)  # the connection was dropped
        self.assertIn("[idle/user1@example.test] scan-trigger failed (no answer within "
                      "30s); scan owed", h.log.mine())
        h.advance(1)
        self.assertEqual(len(h.requests), 2)
        h.answer(1)
        self.assertEqual(h.trigger.last_outcome(account(1).id)["outcome"], "ok")

    def test_timeout_covers_a_stalled_body(self) -> None:
        h = Harness(self, scan_timeout=5.0)
        h.trigger.request(account(1), 5, "exists")
        request = h.resource.open.pop()
        request.setResponseCode(200)
        request.write(b'{"scanned": ')  # headers and half a body, then nothing
        h.stub.flush()
        h.advance(5)
        self.assertTrue(request.gone)
        self.assertIn("no answer within 5s", h.log.mine()[0])

    def test_connection_refused_is_retried(self) -> None:
        h = Harness(self)
        h.backend.refusals = 2
        h.trigger.request(account(1), 5, "exists")
        for n in range(6, 20):
            h.trigger.request(account(1), n, "exists")
        self.assertIn("[idle/user1@example.test] scan-trigger failed (connection refused); "
                      "scan owed", h.log.mine())
        h.advance(1)  # the probe: refused
        h.advance(2)  # the next one gets through
        self.assertEqual(len(h.requests), 1)
        self.assertEqual(h.requests[0].parsed["exists"], 19)  # one scan, the latest count
        h.answer()
        h.advance(3600)
        self.assertEqual(len(h.requests), 1)


class SecretTests(SynchronousTestCase):
    def test_no_log_event_contains_a_secret(self) -> None:
        echo = f"bad request, you sent x-admin-secret: {SECRET}".encode()
        h = Harness(self)
        for n, status in enumerate((500, 200, 401, 200, 422, 200), start=1):
            h.trigger.request(account(n), 1, "exists")
            while not h.resource.open:
                h.advance(1)  # the probe, while the backend is down or refusing
            h.answer(status=status, body=echo)
        h.trigger.request(account(9), 1, "exists")
        h.advance(60)  # timeout
        h.advance(60)
        text = h.log.everything()
        self.assertIn("scan-trigger rejected: HTTP 401", text)
        self.assertIn("scan-trigger rejected: HTTP 422", text)
        self.assertIn("backend down: HTTP 500", text)
        self.assertIn("backend down: HTTP 401", text)
        self.assertIn("***", text)
        for secret in h.settings.secret_values():
            self.assertNotIn(secret, text)
        self.assertNotIn(SECRET, repr(h.trigger.last_outcome(account(3).id)))


class DiscardTests(SynchronousTestCase):
    """An account no longer watched leaves nothing behind (outcomes did grow with every
    account ever seen)."""

    def test_discard_forgets_the_last_outcome(self) -> None:
        h = Harness(self)
        for n in range(1, 4):
            h.trigger.request(account(n), 1, "exists")
            h.answer()
        h.trigger.discard(account(2).id)
        self.assertIsNone(h.trigger.last_outcome(account(2).id))
        self.assertEqual(h.trigger.last_outcome(account(1).id)["outcome"], "ok")
        self.assertEqual(h.trigger.last_outcome(account(3).id)["outcome"], "ok")
        h.trigger.discard(account(9).id)  # never seen: nothing to do

    def test_discard_during_a_scan_lets_it_finish_without_keeping_it(self) -> None:
        h = Harness(self)
        abandoned = scans(reason="exists", outcome="abandoned")
        h.trigger.request(account(1), 1, "exists")
        h.trigger.request(account(1), 2, "exists")  # follow-up: dropped by discard
        h.trigger.discard(account(1).id)
        self.assertEqual(scans(reason="exists", outcome="abandoned"), abandoned + 1)
        h.answer()
        self.assertEqual(len(h.requests), 1)
        self.assertIsNone(h.trigger.last_outcome(account(1).id))
        self.successResultOf(h.trigger.when_quiet())
        h.trigger.request(account(1), 3, "exists")  # watched again: kept again
        h.answer()
        self.assertEqual(h.trigger.last_outcome(account(1).id)["outcome"], "ok")


class ShutdownTests(SynchronousTestCase):
    def test_stop_waits_for_the_scan_in_flight(self) -> None:
        h = Harness(self, shutdown_timeout=10.0)
        h.trigger.request(account(1), 1, "exists")
        h.trigger.request(account(1), 2, "exists")  # pending follow-up: dropped on stop
        d = h.trigger.stopService()
        self.assertNoResult(d)
        h.advance(5)
        h.answer()
        self.successResultOf(d)
        self.assertEqual(len(h.requests), 1)
        self.assertEqual(h.trigger.last_outcome(account(1).id)["outcome"], "ok")
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_stop_abandons_after_the_timeout(self) -> None:
        abandoned = scans(reason="exists", outcome="abandoned")
        h = Harness(self, shutdown_timeout=10.0, scan_timeout=60.0, scan_concurrency=1)
        h.trigger.request(account(1), 1, "exists")  # in flight
        h.trigger.request(account(2), 1, "exists")  # waiting for the slot
        h.trigger.request(account(1), 2, "exists")  # follow-up
        d = h.trigger.stopService()
        h.advance(9.9)
        self.assertNoResult(d)
        h.advance(0.1)
        self.successResultOf(d)
        self.assertTrue(h.requests[0].gone)
        self.assertEqual(h.trigger.last_outcome(account(1).id)["outcome"], "abandoned")
        self.assertEqual(h.trigger.last_outcome(account(2).id)["outcome"], "abandoned")
        self.assertEqual(scans(reason="exists", outcome="abandoned"),
                         abandoned + 3)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertFalse(h.trigger.running)

    def test_phases_of_a_stop_that_abandons_and_a_new_start(self) -> None:
        h = Harness(self, shutdown_timeout=10.0, scan_timeout=60.0)
        seen = [h.trigger.phase]
        h.trigger.request(account(1), 1, "exists")  # in flight
        d = h.trigger.stopService()
        seen.append(h.trigger.phase)
        h.trigger.request(account(2), 1, "exists")  # refused: shutting down
        h.advance(10)
        seen.append(h.trigger.phase)
        self.successResultOf(d)
        h.trigger.startService()
        seen.append(h.trigger.phase)
        self.assertEqual(seen, [Phase.OPEN, Phase.DRAINING, Phase.ABANDONING, Phase.OPEN])
        self.assertEqual(len(h.requests), 1)
        self.assertIn("[idle/user2@example.test] scan-trigger not sent: shutting down",
                      h.log.texts())

    def test_stop_drops_the_owed_scans_while_the_backend_is_down(self) -> None:
        h = Harness(self, shutdown_timeout=10.0)
        abandoned = scans(reason="exists", outcome="abandoned")
        acked = h.trigger.submit(account(1), 1, "exists")
        h.answer(status=503)
        h.advance(1)
        h.answer(status=503)  # next probe in 2 s
        h.trigger.request(account(2), 1, "exists")
        d = h.trigger.stopService()
        self.successResultOf(d)  # nothing in flight: at once
        self.assertIs(self.successResultOf(acked), False)  # never stored: scanned at start
        self.assertEqual(scans(reason="exists", outcome="abandoned"), abandoned + 2)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertFalse(h.trigger.busy())

    def test_stop_during_a_probe_waits_for_it(self) -> None:
        h = Harness(self, shutdown_timeout=10.0)
        h.trigger.request(account(1), 1, "exists")
        h.answer(status=503)
        h.advance(1)  # the probe is in flight
        d = h.trigger.stopService()
        self.assertNoResult(d)
        h.answer(status=503)
        self.successResultOf(d)
        self.assertEqual(h.trigger.last_outcome(account(1).id)["outcome"], "abandoned")
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_requests_after_stop_are_not_sent(self) -> None:
        h = Harness(self)
        self.successResultOf(h.trigger.stopService())
        h.trigger.request(account(1), 1, "exists")
        self.assertEqual(h.requests, [])
        self.successResultOf(h.trigger.when_quiet())


class BackendTests(TestCase):
    """Real HTTP over 127.0.0.1 against the backend double."""

    timeout = 30

    async def make(self, **kw: Any) -> tuple[ScanTrigger, BackendDouble]:
        from twisted.internet import reactor

        backend = BackendDouble(SECRET)
        await backend.start()
        self.addCleanup(lambda: ensureDeferred(backend.stop()))
        trigger = ScanTrigger(scan_settings(settings(backend_url=backend.url, **kw)), reactor,
                              health=quick_probes(reactor, 0.02))
        trigger.startService()
        self.addCleanup(trigger.stopService)
        self.log = LogCapture(self)
        return trigger, backend

    async def test_wire_format(self) -> None:
        trigger, backend = await self.make()
        backend.script(Answer(json={"scanned": 4, "blocked": 2}))
        trigger.request(account(1), 42, "connected")
        await trigger.when_quiet()
        [r] = backend.requests
        self.assertEqual((r.method, r.path), ("POST", "/api/mail/scan-internal"))
        self.assertEqual(r.headers["content-type"], "application/json")
        self.assertEqual(r.headers["x-admin-secret"], SECRET)
        self.assertEqual(r.headers["host"], f"127.0.0.1:{backend.port}")
        self.assertEqual(json.loads(r.raw), {"connectionId": account(1).id,
                                             "userId": "user-1", "reason": "connected",
                                             "exists": 42})
        self.assertTrue(r.authorized)
        self.assertIn("[idle/user1@example.test] scan-triggered → scanned=4 blocked=2",
                      self.log.mine())

    async def test_burst_of_1000_exists_during_a_slow_scan(self) -> None:
        trigger, backend = await self.make()
        gate = backend.hold()
        trigger.request(account(1), 1, "exists")
        await backend.wait_for(1)
        for n in range(2, 1002):
            trigger.request(account(1), n, "exists")
        gate.release()
        await trigger.when_quiet()
        self.assertEqual([r.body["exists"] for r in backend.requests], [1, 1001])

    async def test_concurrency_cap_over_the_wire(self) -> None:
        queue_before = queue_length()
        trigger, backend = await self.make(scan_concurrency=4)
        gate = backend.hold()
        for n in range(1, 21):
            trigger.request(account(n), 1, "exists")
        await backend.wait_for(4)
        self.assertEqual(queue_length() - queue_before, 16)
        gate.release()
        await trigger.when_quiet()
        self.assertEqual(len(backend.requests), 20)
        self.assertEqual(backend.max_in_flight, 4)
        self.assertEqual({r.body["userId"] for r in backend.requests},
                         {f"user-{n}" for n in range(1, 21)})

    async def test_persistent_connections_are_reused_and_closed_on_stop(self) -> None:
        trigger, backend = await self.make(scan_concurrency=2)
        for n in range(1, 4):
            trigger.request(account(1), n, "exists")
            await trigger.when_quiet()
        self.assertEqual(len(backend.requests), 3)
        self.assertEqual(backend.open_connections, 1)  # one kept-alive connection
        await trigger.stopService()
        await backend.all_closed()

    async def test_retry_on_503_then_success(self) -> None:
        trigger, backend = await self.make()
        backend.statuses(503, 503)
        trigger.request(account(1), 3, "exists")
        await trigger.when_quiet()
        self.assertEqual([r.status for r in backend.requests], [503, 503, 200])
        self.assertEqual(trigger.last_outcome(account(1).id)["outcome"], "ok")

    async def test_wrong_secret_gets_401_and_no_retry(self) -> None:
        from twisted.internet import reactor

        backend = BackendDouble("the-right-secret")
        await backend.start()
        self.addCleanup(lambda: ensureDeferred(backend.stop()))
        trigger = ScanTrigger(scan_settings(settings(backend_url=backend.url)), reactor,
                              health=quick_probes(reactor, 0.01))
        self.addCleanup(trigger.stopService)
        log = LogCapture(self)
        down = log.until("backend down")
        trigger.request(account(1), 3, "exists")
        await down
        [r] = backend.requests
        self.assertFalse(r.authorized)
        self.assertEqual(r.status, 401)
        self.assertIn("the admin secret is wrong", "\n".join(log.mine()))
        self.assertNotIn(SECRET, log.everything())

    async def test_timeout_then_success(self) -> None:
        trigger, backend = await self.make(scan_timeout=0.2)
        stalled = Gate()
        self.addCleanup(stalled.release)
        backend.script(Answer(delay=stalled), Answer())
        trigger.request(account(1), 3, "exists")
        await trigger.when_quiet()
        self.assertEqual([r.status for r in backend.requests], [None, 200])
        self.assertIn("no answer within 0.2s", "\n".join(self.log.mine()))
        self.assertEqual(trigger.last_outcome(account(1).id)["outcome"], "ok")

    async def test_connection_refused_then_backend_comes_back(self) -> None:
        trigger, backend = await self.make()
        await backend.stop()
        refused = self.log.until("connection refused", count=6)
        trigger.request(account(1), 1, "exists")
        for n in range(2, 12):
            trigger.request(account(1), n, "exists")
        trigger.request(account(2), 1, "connected")
        await refused
        self.assertEqual(backend.requests, [])
        await backend.start()
        await trigger.when_quiet()
        bodies = sorted((r.body["userId"], r.body["exists"]) for r in backend.requests)
        self.assertEqual(bodies, [("user-1", 11), ("user-2", 1)])  # the owed, latest

    async def test_dropped_connection_is_retried(self) -> None:
        trigger, backend = await self.make()
        backend.script(Answer(drop=True))
        trigger.request(account(1), 3, "exists")
        await trigger.when_quiet()
        self.assertEqual([r.status for r in backend.requests], [None, 200])
        self.assertIn("connection lost before the answer", "\n".join(self.log.mine()))
        self.assertEqual(trigger.last_outcome(account(1).id)["outcome"], "ok")

    async def test_owed_through_500s_until_acknowledged(self) -> None:
        trigger, backend = await self.make(scan_attempts=2)  # accepted, ends nothing
        backend.statuses(*[500] * 5)
        acked = trigger.submit(account(1), 1, "exists")
        self.assertIs(await acked, True)
        self.assertEqual([r.status for r in backend.requests], [500] * 5 + [200])
        self.assertEqual(trigger.last_outcome(account(1).id)["outcome"], "ok")

    async def test_stop_abandons_a_stalled_scan(self) -> None:
        from twisted.internet import reactor

        backend = BackendDouble(SECRET)
        await backend.start()
        self.addCleanup(lambda: ensureDeferred(backend.stop()))
        gate = backend.hold()
        self.addCleanup(gate.release)
        trigger = ScanTrigger(scan_settings(settings(backend_url=backend.url,
                                                     shutdown_timeout=0.2)), reactor)
        trigger.startService()
        trigger.request(account(1), 1, "exists")
        await backend.wait_for(1)
        await trigger.stopService()
        self.assertEqual(trigger.last_outcome(account(1).id)["outcome"], "abandoned")
        await backend.all_closed()


class BackendDoubleTests(TestCase):
    timeout = 30

    async def test_scanner_plug_and_wait_for_deadline(self) -> None:
        from twisted.internet import reactor

        seen: list[Any] = []

        def scanner(body: Any) -> Deferred[dict[str, int]]:
            seen.append(body)
            return task.deferLater(reactor, 0, lambda: {"scanned": 9, "blocked": 8})

        backend = BackendDouble(SECRET, scanner=scanner)
        await backend.start()
        self.addCleanup(lambda: ensureDeferred(backend.stop()))
        with self.assertRaises(defer.TimeoutError):
            await backend.wait_for(1, deadline=0.05)
        trigger = ScanTrigger(scan_settings(settings(backend_url=backend.url)), reactor)
        self.addCleanup(trigger.stopService)
        trigger.request(account(1), 5, "exists")
        [r] = await backend.wait_for(1, answered=True)
        self.assertEqual(seen, [r.body])
        self.assertEqual(r.status, 200)
        await trigger.when_quiet()
        self.assertEqual(trigger.last_outcome(account(1).id)["scanned"], 9)

    async def test_deferred_delay_json_answer_and_routing(self) -> None:
        from treq.client import HTTPClient
        from twisted.internet import reactor
        from twisted.web.client import Agent

        backend = BackendDouble(SECRET)
        await backend.start()
        self.addCleanup(lambda: ensureDeferred(backend.stop()))
        release: Deferred[None] = Deferred()
        backend.script(Answer(status=207, json={"scanned": 1, "blocked": 1}, delay=release))
        trigger = ScanTrigger(scan_settings(settings(backend_url=backend.url)), reactor)
        self.addCleanup(trigger.stopService)
        trigger.request(account(1), 5, "exists")
        await backend.wait_for(1)
        self.assertEqual(backend.in_flight, 1)
        release.callback(None)
        await trigger.when_quiet()
        self.assertEqual(trigger.last_outcome(account(1).id)["status"], 207)
        self.assertEqual(backend.in_flight, 0)

        client = HTTPClient(Agent(reactor))  # not persistent: nothing left open
        wrong_path = await client.post(backend.url + "/api/mail/other", data=b"{}")
        await wrong_path.content()
        wrong_method = await client.get(backend.url + "/api/mail/scan-internal")
        await wrong_method.content()
        self.assertEqual((wrong_path.code, wrong_method.code), (404, 405))
        self.assertEqual(len(backend.requests), 1)


class FlakyBackend(StubBackend):
    """The backend as an HTTP client for the trigger (a StubBackend): it refuses
    connections, or answers every request at once with ``status`` (and ``headers``); every
    request is recorded with the clock's time."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.status = 200
        self.headers: dict[bytes, bytes] = {}
        self.requests: list[tuple[float, dict[str, Any]]] = []
        backend = self

        class Answering(Resource):
            isLeaf = True

            def render(self, request: Any) -> bytes:
                request.setResponseCode(backend.status)
                for name, value in backend.headers.items():
                    request.setHeader(name, value)
                return b'{"scanned": 1, "blocked": 0}'

        super().__init__(Answering())

    def post(self, url: str, **kw: Any) -> Deferred[Any]:
        self.requests.append((self.clock.seconds(), json.loads(kw["data"])))
        return super().post(url, **kw)

    def since(self, t: float) -> list[tuple[float, dict[str, Any]]]:
        """Requests sent after ``t``: one sent at ``t`` itself went out before the test
        changed the backend's answer at that instant (a probe's jitter can land there)."""
        return [(at, body) for at, body in self.requests if at > t]


class OwedHarness:
    """A trigger on a Clock against a :class:`FlakyBackend` (random jitter: the bounds of
    the probe's pace must hold whatever it draws)."""

    def __init__(self, case: SynchronousTestCase, **kw: Any) -> None:
        self.clock = task.Clock()
        self.backend = FlakyBackend(self.clock)
        self.settings = settings(**kw)
        self.trigger = ScanTrigger(scan_settings(self.settings), self.clock,
                                   http_client=self.backend)
        self.trigger.startService()
        self.log = LogCapture(case)
        case.addCleanup(self.shutdown)

    def shutdown(self) -> None:
        self.backend.refusing = False
        d = self.trigger.stopService()
        self.advance(self.settings.shutdown_timeout)
        assert d.called

    def advance(self, seconds: float, step: float = 0.1) -> None:
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end - 1e-9:
            self.clock.advance(min(step, end - self.clock.seconds()))
            self.backend.stub.flush()

    def acked(self, d: Deferred[bool] | None) -> list[Any]:
        box: list[Any] = []
        assert d is not None
        d.addBoth(box.append)
        return box

    def lines(self, text: str) -> list[str]:
        return [line for line in self.log.mine() if text in line]


class OwedScanTests(SynchronousTestCase):
    """Issue 23: no scan is ever dropped while the backend is down."""

    def test_backend_refusing_for_60s_every_owed_mailbox_scanned_on_its_return(self) -> None:
        h = OwedHarness(self, scan_min_interval=5.0)
        for n in range(1, 21):  # 20 watched accounts, their first scans acknowledged
            h.trigger.request(account(n), 1, "connected")
        h.advance(10)
        h.backend.refusing = True
        down_at = h.clock.seconds()
        waiters = {}
        for n in range(1, 11):  # 10 of them get mail during the deploy
            h.advance(5)
            waiters[n] = h.acked(h.trigger.submit(account(n), 2, "exists"))
            h.trigger.request(account(n), 3, "exists")
        h.advance(down_at + 60 - h.clock.seconds())
        self.assertEqual(h.trigger.health.state, "down")
        self.assertEqual(h.trigger.owed()[0], 10)
        during = h.backend.since(down_at)
        # one probe at a time: never two requests within the first probe delay
        times = [at for at, _ in during]
        self.assertTrue(all(b - a >= 1.0 for a, b in itertools.pairwise(times)), times)
        h.backend.refusing = False
        back_at = h.clock.seconds()
        h.advance(10)  # at most one probe interval (10 s) until the return is seen
        after = h.backend.since(back_at)
        scanned = {body["userId"]: (at, body["exists"]) for at, body in after}
        self.assertEqual(sorted(scanned), sorted(f"user-{n}" for n in range(1, 11)))
        self.assertEqual({e for _, e in scanned.values()}, {3})  # the latest count each
        first = min(at for at, _ in scanned.values())
        self.assertLess(max(at for at, _ in scanned.values()) - first, 1.0)  # drained at once
        self.assertEqual(len(after), 10)  # nothing twice
        self.assertEqual([w for w in waiters.values() if w != [False]], [])  # superseded
        self.assertEqual(h.trigger.owed(), (0, None))
        [down] = h.lines("backend down")
        self.assertEqual(down, "[idle/db] backend down: connection refused; 1 scans owed")
        [back] = h.lines("backend back after")
        self.assertRegex(back, r"^\[idle/db\] backend back after [\d.]+s: sending \d+ owed scans$")
        self.successResultOf(h.trigger.when_quiet())

    def test_backend_refusing_for_six_hours_one_request_per_probe_interval(self) -> None:
        h = OwedHarness(self, scan_concurrency=16)
        h.backend.refusing = True
        for n in range(1, 51):  # 50 accounts, all with mail during the outage
            h.trigger.request(account(n), 1, "exists")
        for hour in range(6):
            for n in range(1, 51, 7):
                h.trigger.request(account(n), 10 + hour, "exists")
            h.advance(3600, step=0.5)
        during = h.backend.requests
        # the first account's attempt, then one probe per interval (1 s doubling to about
        # 10 s): a few hundred per hour, not 50 accounts' retries
        self.assertLess(len(during), 6 * 3600 / 8 + 10)
        self.assertGreater(len(during), 6 * 3600 / 10.1)
        times = [at for at, _ in during]
        self.assertTrue(all(b - a >= 1.0 for a, b in itertools.pairwise(times)))
        self.assertEqual(h.trigger.owed()[0], 50)
        self.assertGreaterEqual(h.trigger.owed()[1], 6 * 3600 - 1)
        h.backend.refusing = False
        back_at = h.clock.seconds()
        h.advance(10)
        after = h.backend.since(back_at)
        self.assertEqual(sorted({b["userId"] for _, b in after}),
                         sorted(f"user-{n}" for n in range(1, 51)))
        self.assertEqual(len(after), 50)
        self.assertEqual(h.trigger.owed(), (0, None))
        self.successResultOf(h.trigger.when_quiet())

    def test_connected_scans_at_start_up_while_the_backend_refuses(self) -> None:
        h = OwedHarness(self)
        h.backend.refusing = True
        for n in range(1, 21):
            h.trigger.request(account(n), 5, "connected")
        h.advance(45)
        self.assertEqual(h.trigger.owed()[0], 20)
        h.backend.refusing = False
        back_at = h.clock.seconds()
        h.advance(10)
        after = h.backend.since(back_at)
        self.assertEqual(sorted(b["userId"] for _, b in after),
                         sorted(f"user-{n}" for n in range(1, 21)))
        self.assertEqual({b["reason"] for _, b in after}, {"connected"})
        self.assertLess(max(at for at, _ in after) - min(at for at, _ in after), 1.0)

    def test_503_with_retry_after_seconds_holds_the_probe_back(self) -> None:
        h = OwedHarness(self)
        h.backend.status, h.backend.headers = 503, {b"retry-after": b"120"}
        h.trigger.request(account(1), 1, "exists")
        h.trigger.request(account(2), 1, "exists")  # down already: not sent
        h.advance(119.9)
        self.assertEqual(len(h.backend.requests), 1)
        h.backend.status, h.backend.headers = 200, {}
        h.advance(35)
        self.assertEqual([b["userId"] for _, b in h.backend.requests],
                         ["user-1", "user-1", "user-2"])
        self.assertGreaterEqual(h.backend.requests[1][0], 120.0)

    def test_retry_after_http_date_and_its_bound(self) -> None:
        h = OwedHarness(self)
        h.clock.advance(1_700_000_000)  # the reactor's time is the epoch
        start = h.clock.seconds()
        h.backend.status = 503
        h.backend.headers = {b"retry-after": b"Tue, 14 Nov 2023 22:18:20 GMT"}  # +300 s
        h.trigger.request(account(1), 1, "exists")
        h.advance(299)
        self.assertEqual(len(h.backend.requests), 1)
        h.backend.headers = {b"retry-after": b"86400"}  # a day: taken as 10 minutes
        h.advance(35)
        self.assertEqual(len(h.backend.requests), 2)
        probe = h.backend.requests[1][0]
        self.assertGreaterEqual(probe - start, 300)
        h.backend.status, h.backend.headers = 200, {}
        h.advance(probe + 599 - h.clock.seconds())
        self.assertEqual(len(h.backend.requests), 2)
        h.advance(35)
        self.assertEqual(len(h.backend.requests), 3)
        self.assertEqual(h.trigger.health.state, "up")

    def test_429_is_retried_like_a_5xx(self) -> None:
        h = OwedHarness(self)
        h.backend.status = 429
        acked = h.acked(h.trigger.submit(account(1), 1, "exists"))
        h.advance(10)
        self.assertEqual(h.trigger.health.state, "down")
        self.assertEqual(acked, [])  # owed, not refused
        self.assertEqual(h.lines("backend down"),
                         ['[idle/db] backend down: HTTP 429: {"scanned": 1, "blocked": 0}; '
                          "1 scans owed"])
        h.backend.status = 200
        h.advance(35)
        self.assertEqual(acked, [True])

    def test_408_is_retried_too(self) -> None:
        h = OwedHarness(self)
        h.backend.status = 408
        acked = h.acked(h.trigger.submit(account(1), 1, "exists"))
        h.advance(3)
        self.assertEqual(h.trigger.health.state, "down")
        h.backend.status = 200
        h.advance(35)
        self.assertEqual(acked, [True])

    def test_401_until_the_secret_is_fixed(self) -> None:
        h = OwedHarness(self)
        h.backend.status = 401
        for n in range(1, 6):
            h.trigger.request(account(n), 1, "exists")
        h.advance(3600, step=1)
        self.assertEqual(h.trigger.health.state, "refusing")
        self.assertEqual(h.trigger.owed()[0], 5)
        # a probe every few minutes, not five accounts' retries
        self.assertLessEqual(len(h.backend.requests), 1 + 3600 // 180)
        self.assertGreaterEqual(len(h.backend.requests), 1 + 3600 // 226)
        self.assertEqual(len(h.lines("rejected")), 1)  # logged once, with the reason
        self.assertEqual(len(h.lines("backend down")), 1)
        self.assertIn("the admin secret is wrong (check ADMIN_SECRET)",
                      h.lines("backend down")[0])
        h.backend.status = 200  # the backend's secret fixed: no restart of the daemon
        back_at = h.clock.seconds()
        h.advance(230, step=1)
        self.assertEqual(h.trigger.health.state, "up")
        self.assertEqual(sorted(b["userId"] for _, b in h.backend.since(back_at)),
                         [f"user-{n}" for n in range(1, 6)])
        self.assertEqual(h.trigger.owed(), (0, None))

    def test_the_inbox_no_longer_starves_a_folder(self) -> None:
        h = Harness(self)
        h.trigger.request(account(1), 1, "exists")  # INBOX, in flight
        h.advance(1)
        junk = h.trigger.submit(account(1), 7, "exists", mailbox="Junk")
        for n in range(2, 50):  # a busy INBOX
            h.advance(0.1)
            h.trigger.request(account(1), n, "exists")
        h.answer()
        self.assertEqual(h.requests[1].parsed.get("mailbox"), "Junk")  # the older owed
        h.trigger.request(account(1), 50, "exists")
        h.answer()
        self.assertIs(self.successResultOf(junk), True)
        self.assertEqual(h.requests[2].parsed["exists"], 50)
        self.assertNotIn("mailbox", h.requests[2].parsed)
        h.answer()
        self.successResultOf(h.trigger.when_quiet())

    def test_one_owed_entry_per_mailbox_under_a_flood_of_exists(self) -> None:
        h = OwedHarness(self)
        h.backend.refusing = True
        waiters = []
        for n in range(1, 11):
            for count in range(1, 1001):
                waiters.append(h.trigger.submit(account(n), count, "exists"))
                waiters.append(h.trigger.submit(account(n), count, "exists",
                                                mailbox="Junk"))
        self.assertEqual(h.trigger.owed()[0], 20)
        # every request but the latest of each mailbox (and the first, in flight when the
        # backend went down) was answered False at once: nothing accumulates per event
        unfired = [d for d in waiters if not d.called]
        self.assertEqual(len(unfired), 20)
        entries = list(h.trigger.owed_scans)
        self.assertEqual(len(entries), 20)
        self.assertTrue(all(e.job is not None and len(e.job.acks) == 1
                            for _, _, e in entries))

    def test_discard_drops_the_owed_scans_of_the_account(self) -> None:
        h = OwedHarness(self)
        h.backend.refusing = True
        one = h.acked(h.trigger.submit(account(1), 1, "exists"))
        two = h.acked(h.trigger.submit(account(2), 1, "exists"))
        h.trigger.discard(account(1).id)
        self.assertEqual(one, [False])
        self.assertEqual(h.trigger.owed()[0], 1)
        self.assertIsNone(h.trigger.owed_since(account(1).id))
        self.assertEqual(h.trigger.owed_since(account(2).id), 0.0)
        h.backend.refusing = False
        h.advance(35)
        self.assertEqual(two, [True])
        self.assertEqual([b["userId"] for _, b in h.backend.requests[1:]], ["user-2"])

    def test_gauges_of_the_state_and_the_owed_scans(self) -> None:
        h = OwedHarness(self)
        h.backend.refusing = True
        h.trigger.request(account(1), 1, "exists")
        h.advance(5)
        h.trigger.request(account(2), 1, "exists")
        self.assertEqual(sample("rebreak_idle_backend_state", state="down"), 1)
        self.assertEqual(sample("rebreak_idle_backend_state", state="up"), 0)
        self.assertEqual(sample("rebreak_idle_scans_owed"), 2)
        self.assertAlmostEqual(sample("rebreak_idle_oldest_owed_scan_age_seconds"), 5.0)
        h.backend.refusing = False
        h.advance(35)
        self.assertEqual(sample("rebreak_idle_backend_state", state="up"), 1)
        self.assertEqual(sample("rebreak_idle_scans_owed"), 0)
        self.assertEqual(sample("rebreak_idle_oldest_owed_scan_age_seconds"), 0)


class SessionOwedTests(SynchronousTestCase):
    """A session's mail during an outage: scanned once the backend is back, with no new
    mail and no reconnect, and its mark stored then."""

    def test_mark_stored_once_the_backend_is_back_without_a_reconnect(self) -> None:
        from rebreak_idle.session.mailbox_marks import MailboxMark, MailboxMemory
        from tests.support.session_harness import Harness as SessionHarness

        memory = MailboxMemory()
        holder: list[ScanTrigger] = []
        s = SessionHarness(self, memory=memory,
                           on_new_mail=lambda *a, **kw: holder[0].submit(*a, **kw))
        backend = FlakyBackend(s.clock)
        trigger = ScanTrigger(scan_settings(settings()), s.clock, http_client=backend)
        holder.append(trigger)
        trigger.startService()
        self.addCleanup(trigger.stopService)
        s.start()
        backend.stub.flush()
        self.assertEqual(memory.get("acc-1"), MailboxMark(1000, 4, 3))
        backend.refusing = True
        s.server.deliver()
        s.pump()
        self.assertEqual(trigger.health.state, "down")
        s.run(600)  # ten minutes down: heartbeats go on, nothing reconnects
        self.assertEqual(memory.get("acc-1"), MailboxMark(1000, 4, 3))
        backend.refusing = False
        for _ in range(35):
            s.run(1)
            backend.stub.flush()
        self.assertEqual(memory.get("acc-1"), MailboxMark(1000, 5, 4))
        self.assertEqual(len(s.server.connections), 1)  # no reconnect
        self.assertEqual(backend.requests[-1][1]["exists"], 4)
