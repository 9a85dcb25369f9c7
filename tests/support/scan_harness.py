"""A scan trigger against a recording HTTP backend on one Clock: its account,
settings and harness."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet import error, task
from twisted.internet.defer import Deferred, fail
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from rebreak_idle.accounts.account import Account
from rebreak_idle.config import Settings, scan_settings
from rebreak_idle.scan.backend_health import BackendHealth
from rebreak_idle.scan.trigger import ScanTrigger

SECRET = "adm1n-S3cret-for-scan-tests"
KEY = "e" * 32


def settings(**kw: Any) -> Settings:
    base: dict[str, Any] = dict(database_url="postgresql://app:db-pw-123@127.0.0.1/x",
                                admin_secret=SECRET, encryption_key=KEY,
                                backend_url="http://backend.test:3016",
                                scan_min_interval=0.0)  # the minimum: ScanMinIntervalTests
    base.update(kw)
    return Settings(**base)


def account(n: int = 1) -> Account:
    return Account(id=f"00000000-0000-0000-0000-{n:012d}", user_id=f"user-{n}",
                   email=f"user{n}@example.test", host="imap.example.test", port=993,
                   security="tls", username=f"user{n}", auth_method="password",
                   secret=f"imap-password-{n}")


class LogCapture:
    """Every log event published while a test runs."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def until(self, text: str, count: int = 1, deadline: float = 10.0) -> Deferred[None]:
        """Fires once ``count`` events of the scan trigger contain ``text``."""
        from twisted.internet import reactor

        d: Deferred[None] = Deferred()

        def observe(event: dict[str, Any]) -> None:
            if not d.called and sum(text in line for line in self.mine()) >= count:
                d.callback(None)

        globalLogPublisher.addObserver(observe)
        d.addTimeout(deadline, reactor)
        d.addBoth(lambda r: (globalLogPublisher.removeObserver(observe), r)[1])
        return d

    def texts(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def mine(self) -> list[str]:
        return [formatEvent(e) for e in self.events
                if e.get("log_namespace") == "rebreak_idle.scan"]

    def everything(self) -> str:
        """All formatted events, every field value and every failure's traceback."""
        parts = []
        for e in self.events:
            parts.append(formatEvent(e))
            for k, v in e.items():
                if k == "log_failure":
                    parts.append(v.getTraceback())
                elif k not in ("log_logger", "log_source", "log_observer"):
                    parts.append(repr(v))
        return "\n".join(parts)


class Pending(Resource):
    """The scan endpoint inside StubTreq: requests stay open until ``answer``."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []
        self.open: list[Any] = []

    def render(self, request: Any) -> Any:
        request.parsed = json.loads(request.content.read())
        request.gone = False
        request.notifyFinish().addErrback(lambda _: setattr(request, "gone", True))
        self.requests.append(request)
        self.open.append(request)
        return NOT_DONE_YET

    def answer(self, index: int = 0, status: int = 200, body: bytes = b"") -> None:
        request = self.open.pop(index)
        request.setResponseCode(status)
        request.write(body)
        request.finish()


class StubBackend:
    """The trigger's HTTP client in the unit tests: StubTreq over ``resource`` (the scan
    endpoint), refusing connections while ``refusing`` is set or for the next
    ``refusals`` requests."""

    def __init__(self, resource: Resource) -> None:
        self.stub = StubTreq(resource)
        self.refusing = False
        self.refusals = 0

    def post(self, url: str, **kw: Any) -> Deferred[Any]:
        if self.refusals:
            self.refusals -= 1
            return fail(error.ConnectionRefusedError("127.0.0.1:9"))
        if self.refusing:
            return fail(error.ConnectionRefusedError("127.0.0.1:9"))
        return self.stub.post(url, **kw)


class Harness:
    def __init__(self, case: SynchronousTestCase, **kw: Any) -> None:
        self.clock = task.Clock()
        self.resource = Pending()
        self.backend = StubBackend(self.resource)
        self.stub = self.backend.stub
        client = kw.pop("http_client", None) or self.backend
        self.settings = settings(**kw)
        self.trigger = ScanTrigger(scan_settings(self.settings), self.clock,
                                   http_client=client,
                                   health=BackendHealth(self.clock, jitter=lambda: 0.0))
        self.trigger.startService()
        self.log = LogCapture(case)
        case.addCleanup(self.shutdown)

    def shutdown(self) -> None:
        """Leave no scan suspended (its gauges would move when it is collected)."""
        d = self.trigger.stopService() if self.trigger.running else self.trigger.when_quiet()
        self.advance(self.settings.shutdown_timeout)
        assert d.called, "the trigger did not stop"
        assert not self.trigger.busy()

    def answer(self, index: int = 0, status: int = 200, body: bytes | dict = b"") -> None:
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        self.resource.answer(index, status, body)
        self.stub.flush()

    @property
    def requests(self) -> list[Any]:
        return self.resource.requests

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.stub.flush()
