"""The status server over real HTTP on 127.0.0.1: routes, the admin secret, escaping, logs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from rebreak_idle.config import StatusSettings
from rebreak_idle.status.page import render_page
from rebreak_idle.status.server import StatusService, make_status_resource

SECRET = "st4tus-admin-s3cret"
ANY_PORT = "tcp:0:interface=127.0.0.1"


def view(endpoint: str = ANY_PORT) -> StatusSettings:
    return StatusSettings(status_endpoint=endpoint, admin_secret=SECRET)
HOSTILE = "<script>alert('x')</script>@evil.example"


def accounts() -> list[dict[str, Any]]:
    return [
        {"id": "0a1b", "email": "ok@example.com", "state": "idle", "since": 1_700_000_000.0,
         "last_error": None, "last_heartbeat": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
         "last_event": "exists 12", "encrypted_secret": "iv:tag:cipher",
         "password": "imap-pa55"},
        {"id": "0c1d", "email": HOSTILE, "state": "backoff", "since": None,
         "last_error": "<b>[AUTHENTICATIONFAILED]</b> Invalid credentials",
         "last_heartbeat": None, "last_event": None},
        {"id": "0e1f", "email": "other@example.com", "state": "idle"},
    ]


class StatusServerTests(TestCase):
    timeout = 20

    async def setUp(self) -> None:
        self.ready = False
        self.accounts = accounts()
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.bodies: list[bytes] = []

        resource = make_status_resource(view(), ready=lambda: self.ready,
                                        snapshot=lambda: self.accounts)
        self.service = StatusService(view(), resource, reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        port = await self.service.when_listening()
        self.base = f"http://127.0.0.1:{port.getHost().port}"

        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))

    async def request(self, path: str, method: str = "GET",
                      headers: dict[str, str] | None = None) -> tuple[int, Any, str]:
        response = await self.http.request(method, self.base + path, headers=headers)
        body = await response.content()
        self.bodies.append(body)
        return response.code, response.headers, body.decode("utf-8")

    def logged(self) -> str:
        return "\n".join(f"{formatEvent(e)} {e!r}" for e in self.events)

    def assertNoSecretAnywhere(self) -> None:
        for secret in (SECRET, "iv:tag:cipher", "imap-pa55"):
            for body in self.bodies:
                self.assertNotIn(secret.encode(), body)
            self.assertNotIn(secret, self.logged())

    async def test_healthz(self) -> None:
        code, _, body = await self.request("/healthz")
        self.assertEqual((code, body), (200, "ok\n"))
        code, _, _ = await self.request("/healthz", method="HEAD")
        self.assertEqual(code, 200)

    async def test_readyz_flips_after_first_refresh(self) -> None:
        code, _, body = await self.request("/readyz")
        self.assertEqual(code, 503)
        self.assertIn("first account refresh", body)
        self.ready = True
        code, _, body = await self.request("/readyz")
        self.assertEqual((code, body), (200, "ready\n"))

    async def test_metrics(self) -> None:
        code, headers, body = await self.request("/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(headers.getRawHeaders("content-type")[0].startswith("text/plain"))
        for name in ("rebreak_idle_sessions", "rebreak_idle_exists_events_total",
                     "rebreak_idle_scan_triggers_total", "rebreak_idle_reconnects_total",
                     "rebreak_idle_refresh_duration_seconds",
                     "rebreak_idle_oldest_heartbeat_age_seconds"):
            self.assertIn(f"# TYPE {name.removesuffix('_total')}", body)

    async def test_metrics_of_another_registry(self) -> None:
        registry = CollectorRegistry()
        age = Gauge("rebreak_idle_test_age", "test", registry=registry)
        service = StatusService(view(), make_status_resource(
            view(), ready=lambda: True, snapshot=list, registry=registry), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        port = await service.when_listening()
        url = f"http://127.0.0.1:{port.getHost().port}/metrics"
        for value in (42, 43):
            age.set(value)
            response = await self.http.get(url)
            self.assertEqual(response.code, 200)
            self.assertIn(f"rebreak_idle_test_age {value}.0", await response.text())

    async def test_status_requires_the_admin_secret(self) -> None:
        for headers in (None, {"x-admin-secret": "wrong"}, {"x-admin-secret": SECRET + "x"},
                        {"x-admin-secret": SECRET[:-1]}, {"x-admin-secret": ""}):
            code, _, body = await self.request("/status", headers=headers)
            self.assertEqual((code, body), (401, "unauthorized\n"), headers)
        code, _, body = await self.request(f"/status?secret={SECRET}")
        self.assertEqual(code, 401)
        self.assertNoSecretAnywhere()

    async def test_status_with_the_secret(self) -> None:
        code, headers, body = await self.request("/status", headers={"x-admin-secret": SECRET})
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
        answer = json.loads(body)
        self.assertEqual([a["id"] for a in answer], ["0a1b", "0c1d", "0e1f"])
        self.assertEqual(answer[1]["email"], HOSTILE)
        self.assertEqual(answer[0]["last_heartbeat"], "2026-01-02T03:04:05+00:00")
        self.assertEqual(answer[0]["since"], 1_700_000_000.0)
        self.assertNotIn("encrypted_secret", answer[0])
        self.assertNotIn("password", answer[0])
        self.assertNoSecretAnywhere()

    async def test_status_one_page(self) -> None:
        """With the page's parameters, /status answers one page in the page's order
        (attention first, then by e-mail) and says how many match."""
        code, headers, body = await self.request("/status?limit=1&offset=1",
                                                 headers={"x-admin-secret": SECRET})
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("x-total-count"), ["3"])
        answer = json.loads(body)
        self.assertEqual([a["email"] for a in answer], ["ok@example.com"])
        self.assertNotIn("password", answer[0])
        code, headers, body = await self.request("/status?state=backoff",
                                                 headers={"x-admin-secret": SECRET})
        self.assertEqual([a["id"] for a in json.loads(body)], ["0c1d"])
        self.assertEqual(headers.getRawHeaders("x-total-count"), ["1"])
        code, _, _ = await self.request("/status?limit=1")
        self.assertEqual(code, 401)
        self.assertNoSecretAnywhere()

    async def test_status_accepts_only_get(self) -> None:
        code, _, _ = await self.request("/status", method="POST",
                                        headers={"x-admin-secret": SECRET})
        self.assertEqual(code, 405)

    async def test_page_without_secret_shows_only_counts(self) -> None:
        code, headers, body = await self.request("/")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"])
        self.assertIn("<td>idle</td><td>2</td>", body)
        self.assertIn("<td>backoff</td><td>1</td>", body)
        self.assertIn("3 accounts", body)
        self.assertIn("not ready", body)
        for private in ("ok@example.com", "evil.example", "AUTHENTICATIONFAILED"):
            self.assertNotIn(private, body)
        self.assertNotIn("<script", body)

    async def test_page_without_secret_takes_no_snapshot(self) -> None:
        """An anonymous ``GET /`` reads the counts kept up to date, never the per-account
        snapshot (at 50,000 accounts that took over a second, on the reactor)."""
        taken: list[int] = []

        def snapshot() -> list[dict[str, Any]]:
            taken.append(1)
            return self.accounts

        service = StatusService(view(), make_status_resource(
            view(), ready=lambda: True, snapshot=snapshot,
            counts=lambda: {"idle": 49_000, "backoff": 1_000}), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        port = await service.when_listening()
        url = f"http://127.0.0.1:{port.getHost().port}/"
        response = await self.http.get(url)
        body = await response.text()
        self.assertEqual(response.code, 200)
        self.assertIn("<td>idle</td><td>49000</td>", body)
        self.assertIn("50000 accounts", body)
        self.assertEqual(taken, [])
        response = await self.http.get(url, headers={"x-admin-secret": SECRET})
        self.assertIn("ok@example.com", await response.text())
        self.assertEqual(taken, [1])  # the account table needs it

    async def test_page_with_secret_escapes_every_value(self) -> None:
        self.ready = True
        code, headers, body = await self.request("/", headers={"x-admin-secret": SECRET})
        self.assertEqual(code, 200)
        self.assertIn("default-src 'none'", headers.getRawHeaders("content-security-policy")[0])
        self.assertNotIn("<script", body)
        self.assertNotIn("<b>", body)
        self.assertIn("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;@evil.example", body)
        self.assertIn("&lt;b&gt;[AUTHENTICATIONFAILED]&lt;/b&gt; Invalid credentials", body)
        self.assertIn("ok@example.com", body)
        self.assertIn("2023-11-14 22:13:20Z", body)  # since, from epoch seconds
        self.assertIn("2026-01-02 03:04:05Z", body)  # last heartbeat, from a datetime
        self.assertIn("exists 12", body)
        self.assertNotIn("not ready", body)
        self.assertNoSecretAnywhere()

    async def test_page_with_a_wrong_secret_is_refused(self) -> None:
        code, _, body = await self.request("/", headers={"x-admin-secret": "nope"})
        self.assertEqual((code, body), (401, "unauthorized\n"))

    async def test_unknown_path_is_404(self) -> None:
        code, _, _ = await self.request("/nothing-here")
        self.assertEqual(code, 404)

    async def test_access_log_skips_polling_and_never_logs_headers_or_query(self) -> None:
        await self.request("/healthz")
        await self.request("/readyz")
        await self.request("/metrics")
        await self.request(f"/status?secret={SECRET}", headers={"x-admin-secret": "guess"})
        await self.request("/status", headers={"x-admin-secret": SECRET})
        access = [formatEvent(e) for e in self.events
                  if e.get("log_format", "").startswith("status server: ")]
        self.assertEqual(len(access), 2, access)
        self.assertTrue(access[0].startswith("status server: GET /status 401 from 127.0.0.1"))
        self.assertTrue(access[1].startswith("status server: GET /status 200 from 127.0.0.1"))
        self.assertNotIn("guess", self.logged())
        self.assertNoSecretAnywhere()

    async def test_listening_failure_is_reported(self) -> None:
        taken = (await self.service.when_listening()).getHost().port
        other = StatusService(view(f"tcp:{taken}:interface=127.0.0.1"),
                              make_status_resource(view(), ready=lambda: True, snapshot=list),
                              reactor)
        other.startService()
        self.addCleanup(other.stopService)
        with self.assertRaises(CannotListenError):
            await other.when_listening()
        self.assertIn(f"status server could not listen on tcp:{taken}:interface=127.0.0.1",
                      self.logged())

    async def test_stop_closes_the_listener(self) -> None:
        port = (await self.service.when_listening()).getHost().port
        await self.service.stopService()
        with self.assertRaises(Exception):  # noqa: B017 - connection refused, any flavour
            await self.http.get(f"http://127.0.0.1:{port}/healthz")


class EndpointTests(SynchronousTestCase):
    def test_invalid_endpoint_is_a_clear_error(self) -> None:
        resource = make_status_resource(view(), ready=lambda: True, snapshot=list)
        with self.assertRaises(ValueError) as caught:
            StatusService(view("nonsense:9464"), resource, reactor)
        self.assertIn("REBREAK_STATUS_ENDPOINT", str(caught.exception))

    def test_empty_admin_secret_admits_nobody(self) -> None:
        from rebreak_idle.status.server import _Secret

        class FakeRequest:
            def __init__(self, value: bytes | None) -> None:
                self.value = value

            def getHeader(self, name: bytes) -> bytes | None:
                return self.value

        self.assertFalse(_Secret("").check(FakeRequest(b"")))
        self.assertIsNone(_Secret("x").check(FakeRequest(None)))


class RenderPageTests(SynchronousTestCase):
    def test_counts_only(self) -> None:
        page = render_page(None, {"idle": 1}, ready=True)
        self.assertIn("ready — 1 account<", page)
        self.assertIn("x-admin-secret", page)
        self.assertNotIn("<th>E-mail</th>", page)

    def test_hostile_state_names_are_escaped(self) -> None:
        page = render_page([{"email": "a@b", "state": "<i>"}], {"<i>": 1}, ready=True)
        self.assertNotIn("<i>", page)
        self.assertIn("&lt;i&gt;", page)

    def test_the_daemons_snapshot_shape(self) -> None:
        """The keys Daemon.snapshot gives: ISO times, last_exists, last_scan, attempts."""
        account = {
            "id": "0a1b", "email": "a@example.com", "state": "backoff",
            "since": "2026-01-02T03:04:05+00:00", "attempt": 3, "next_attempt_in": 40.0,
            "last_error": "connection refused <x>", "last_error_at": "2026-01-02T03:04:06+00:00",
            "last_heartbeat": None,
            "last_exists": {"at": "2026-01-02T03:00:00+00:00", "count": 12},
            "last_scan_reason": "exists",
            "last_scan": {"time": 1_767_322_800.0, "outcome": "ok", "scanned": 2, "blocked": 1,
                          "status": 200},
        }
        page = render_page([account], {"backoff": 1}, ready=True)
        self.assertIn("<td>backoff <span class=muted>attempt 3, next in 40s</span></td>", page)
        self.assertIn("<td>2026-01-02 03:04:05Z</td>", page)
        self.assertIn("connection refused &lt;x&gt; <span class=muted>2026-01-02 03:04:06Z", page)
        self.assertIn("EXISTS 12 <span class=muted>2026-01-02 03:00:00Z</span><br>"
                      "scan ok (scanned=2 blocked=1) <span class=muted>2026-01-02 03:00:00Z",
                      page)
        self.assertNotIn("scan owed", page)

    def test_scan_owed_since(self) -> None:
        account = {"id": "0a1b", "email": "a@example.com", "state": "idle",
                   "last_scan": {"time": 1_767_322_800.0, "outcome": "failed",
                                 "scanned": None, "blocked": None, "status": 503},
                   "scan_owed_since": "2026-01-02T03:00:00+00:00"}
        page = render_page([account], {"idle": 1}, ready=True)
        self.assertIn("scan failed <span class=muted>2026-01-02 03:00:00Z</span><br>"
                      "<strong>scan owed since 2026-01-02 03:00:00Z</strong>", page)
        account["scan_owed_since"] = "<script>"
        self.assertIn("scan owed since &lt;script&gt;",
                      render_page([account], {"idle": 1}, ready=True))
