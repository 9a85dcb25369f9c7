"""A double of the backend's scan endpoint (CONTRACT §5) on a real ``twisted.web`` server.

Usage in a trial test (real reactor, loopback only)::

    backend = BackendDouble(admin_secret=SECRET)
    await backend.start()                  # 127.0.0.1, port 0; backend.url is the base URL
    self.addCleanup(backend.stop)
    backend.script(Answer(status=503), Answer(status=200, json={"scanned": 3, "blocked": 1}))
    gate = backend.hold()                  # every request waits until gate.release()
    requests = await backend.wait_for(2, deadline=10)

Every request is recorded in ``backend.requests`` (time, headers, parsed JSON body); a
wrong or missing ``x-admin-secret`` gets 401. Unscripted requests are answered 200 with
the result of ``scan(body)``, which calls the ``scanner`` callable given to the
constructor (``scanner(body) -> Deferred[{"scanned": n, "blocked": n}]`` or a plain dict)
— subclasses or the demo plug a real scanner in there.

``stop()`` closes the listener and aborts every open connection (so the port refuses
connections); ``start()`` afterwards listens again on the same port: the backend "comes
back".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

__all__ = ["SCAN_PATH", "Answer", "BackendDouble", "Gate", "RecordedRequest"]

SCAN_PATH = b"/api/mail/scan-internal"

log = Logger()

_DEFAULT: Any = object()


class Gate:
    """A barrier requests can wait on; ``release()`` lets every waiter (and all later
    ones) through at once."""

    def __init__(self) -> None:
        self.released = False
        self._waiters: list[Deferred[None]] = []

    def wait(self) -> Deferred[None]:
        if self.released:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    @property
    def waiting(self) -> int:
        return sum(1 for d in self._waiters if not d.called)

    def release(self) -> None:
        self.released = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)


@dataclass
class Answer:
    """One scripted answer. ``json`` (any JSON value) or ``body`` (raw bytes) override
    the scanner's result; ``delay`` (a :class:`Gate` or a Deferred) holds the answer back
    until it fires; ``drop=True`` aborts the connection instead of answering."""

    status: int = 200
    json: Any = _DEFAULT
    body: bytes | None = None
    delay: Gate | Deferred[Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


@dataclass
class RecordedRequest:
    time: float
    method: str
    path: str
    headers: dict[str, str]  # lower-case name -> last value
    raw: bytes
    body: Any  # parsed JSON, None when the body is not JSON
    authorized: bool
    status: int | None = None  # the status answered, once answered
    answered_at: float | None = None


class _QuietSite(Site):
    noisy = False

    def log(self, request: Request) -> None:
        """No access log: tests capture log events and look for secrets in them."""


class _Tracking(WrappingFactory):
    """Remembers open server connections so ``stop()`` can abort and await them."""

    noisy = False

    def __init__(self, wrapped: Site) -> None:
        super().__init__(wrapped)
        self._closed_waiters: list[Deferred[None]] = []

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._closed_waiters = self._closed_waiters, []
            for d in waiters:
                d.callback(None)

    def all_closed(self) -> Deferred[None]:
        if not self.protocols:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed_waiters.append(d)
        return d


class _ScanResource(Resource):
    isLeaf = True

    def __init__(self, backend: BackendDouble) -> None:
        super().__init__()
        self._backend = backend

    def render(self, request: Request) -> bytes | int:
        if request.path != SCAN_PATH:
            request.setResponseCode(404)
            return b'{"error":"not found"}'
        if request.method != b"POST":
            request.setResponseCode(405)
            return b'{"error":"method not allowed"}'
        self._backend._handle(request)
        return NOT_DONE_YET


class BackendDouble:
    """The backend's ``POST /api/mail/scan-internal`` on 127.0.0.1."""

    def __init__(
        self,
        admin_secret: str,
        *,
        reactor: Any = None,
        scanner: Callable[[Any], Any] | None = None,
    ) -> None:
        self.admin_secret = admin_secret
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.scanner = scanner
        self.requests: list[RecordedRequest] = []
        self.answers: list[Answer] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.port: int | None = None
        self._gate: Gate | None = None
        self._listener: Any = None
        self._factory = _Tracking(_QuietSite(_ScanResource(self), reactor=self.reactor))
        self._waiters: list[tuple[int, bool, Deferred[list[RecordedRequest]]]] = []

    # -- life -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL, the daemon's BACKEND_URL (``http://127.0.0.1:<port>``)."""
        if self.port is None:
            raise RuntimeError("BackendDouble is not started")
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> BackendDouble:
        """Listen on 127.0.0.1 (port 0 the first time, the same port after a stop)."""
        endpoint = TCP4ServerEndpoint(self.reactor, self.port or 0, interface="127.0.0.1")
        self._listener = await endpoint.listen(self._factory)
        self.port = self._listener.getHost().port
        return self

    async def stop(self) -> None:
        """Stop listening and abort every open connection; fires when all are closed."""
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await maybeDeferred(listener.stopListening)
        for p in list(self._factory.protocols):
            if p.transport is not None:
                p.transport.abortConnection()
        await self._factory.all_closed()

    @property
    def listening(self) -> bool:
        return self._listener is not None

    @property
    def open_connections(self) -> int:
        """How many client connections are open now (kept-alive ones included)."""
        return len(self._factory.protocols)

    def all_closed(self) -> Deferred[None]:
        """Fires once no client connection is open (at once if none is)."""
        return self._factory.all_closed()

    # -- scripting ----------------------------------------------------------------------

    def script(self, *answers: Answer) -> None:
        """Queue answers for the next authorized requests, in order."""
        self.answers.extend(answers)

    def statuses(self, *codes: int) -> None:
        """Shortcut: queue plain answers with these status codes."""
        self.script(*(Answer(status=c) for c in codes))

    def hold(self) -> Gate:
        """Hold every authorized request (scripted or not) until the gate is released."""
        self._gate = Gate()
        return self._gate

    async def scan(self, body: Any) -> Any:
        """The JSON of a default 2xx answer; calls ``scanner`` when one was given."""
        if self.scanner is None:
            return {"scanned": 0, "blocked": 0}
        return await maybeDeferred(self.scanner, body)

    # -- waiting --------------------------------------------------------------------------

    def wait_for(
        self, count: int, deadline: float = 10.0, *, answered: bool = False
    ) -> Deferred[list[RecordedRequest]]:
        """Fires with ``requests`` once ``count`` requests arrived (or were answered, with
        ``answered=True``); fails with TimeoutError after ``deadline`` seconds."""
        d: Deferred[list[RecordedRequest]] = Deferred()
        self._waiters.append((count, answered, d))
        self._check_waiters()
        if not d.called:
            d.addTimeout(deadline, self.reactor)
        return d

    @property
    def answered(self) -> int:
        return sum(1 for r in self.requests if r.status is not None)

    def _check_waiters(self) -> None:
        keep = []
        for count, answered, d in self._waiters:
            if d.called:
                continue
            have = self.answered if answered else len(self.requests)
            if have >= count:
                d.callback(list(self.requests))
            else:
                keep.append((count, answered, d))
        self._waiters = keep

    # -- serving --------------------------------------------------------------------------

    def _handle(self, request: Request) -> None:
        raw = request.content.read() if request.content is not None else b""
        headers = {
            name.decode("latin-1").lower(): values[-1].decode("latin-1")
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        try:
            body = json.loads(raw.decode("utf-8"))
        except ValueError:
            body = None
        authorized = headers.get("x-admin-secret") == self.admin_secret
        record = RecordedRequest(
            time=self.reactor.seconds(), method=request.method.decode("ascii"),
            path=request.path.decode("latin-1"), headers=headers, raw=raw, body=body,
            authorized=authorized)
        self.requests.append(record)

        gone: list[bool] = []
        finished = request.notifyFinish()
        finished.addErrback(lambda _: gone.append(True))

        if not authorized:
            self._check_waiters()
            self._write(request, record, Answer(status=401, json={"error": "unauthorized"}),
                        None, gone)
            return
        answer = self.answers.pop(0) if self.answers else Answer()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._check_waiters()
        Deferred.fromCoroutine(self._answer(request, record, answer, body, gone)).addErrback(
            self._failed, request, record, gone)

    async def _answer(self, request: Request, record: RecordedRequest, answer: Answer,
                      body: Any, gone: list[bool]) -> None:
        try:
            if self._gate is not None:
                await self._gate.wait()
            if isinstance(answer.delay, Gate):
                await answer.delay.wait()
            elif answer.delay is not None:
                await answer.delay
            result = None
            if answer.body is None and answer.json is _DEFAULT and 200 <= answer.status < 300:
                result = await self.scan(body)
        finally:
            self.in_flight -= 1
        self._write(request, record, answer, result, gone)

    def _failed(self, failure: Failure, request: Request, record: RecordedRequest,
                gone: list[bool]) -> None:
        log.failure("backend double: answering failed", failure)
        self._write(request, record, Answer(status=500, json={"error": "double failed"}),
                    None, gone)

    def _write(self, request: Request, record: RecordedRequest, answer: Answer,
               result: Any, gone: list[bool]) -> None:
        if gone:
            return
        if answer.drop:
            request.channel.transport.abortConnection()
            return
        if answer.body is not None:
            payload = answer.body
        else:
            value = answer.json if answer.json is not _DEFAULT else result
            payload = b"" if value is None else json.dumps(value).encode("utf-8")
        request.setResponseCode(answer.status)
        if answer.body is None and payload:
            request.setHeader(b"content-type", b"application/json")
        for name, value in answer.headers.items():
            request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        request.write(payload)
        request.finish()
        record.status = answer.status
        record.answered_at = self.reactor.seconds()
        self._check_waiters()
