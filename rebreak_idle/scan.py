"""The scan trigger (CONTRACT §5): ``POST {BACKEND_URL}/api/mail/scan-internal``.

One :class:`ScanTrigger` serves every account of the daemon:

- per account, scans never overlap; new mail during a scan is coalesced into exactly one
  follow-up scan that carries the latest ``exists`` count and reason;
- across accounts, at most ``scan_concurrency`` requests are in flight, the rest wait in
  order (a :class:`~twisted.internet.defer.DeferredSemaphore`);
- connection errors, timeouts and 5xx answers are retried with exponential backoff
  (1 s, 2 s, 4 s ... at most 60 s) up to ``scan_attempts`` attempts; 4xx answers are
  logged and not retried.

The admin secret is only ever put in the request header: log events and the status
page see neither it nor any other secret of the settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from treq.client import HTTPClient
from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet import error as neterror
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
    succeed,
)
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss

from . import metrics

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from .account import Account
    from .config import Settings

__all__ = ["SCAN_PATH", "ScanTrigger"]

#: Path of the backend's scan endpoint, appended to ``BACKEND_URL``.
SCAN_PATH = "/api/mail/scan-internal"

#: Characters of a response body that reach a log line.
BODY_LOG_LIMIT = 200
#: Bytes of a response body read at most (the rest is discarded).
BODY_READ_LIMIT = 64 * 1024
#: Seconds an unused keep-alive connection to the backend stays open.
IDLE_CONNECTION_TIMEOUT = 4.0
#: Longest backoff between two attempts, in seconds.
MAX_RETRY_DELAY = 60.0

OUTCOMES = ("ok", "client_error", "gave_up", "abandoned")

log = Logger(namespace="rebreak_idle.scan")


class _Retryable(Exception):
    """An attempt failed in a way worth retrying (5xx answer)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass
class _Job:
    """What one scan (including its retries) is about."""

    account: Account
    exists: int
    reason: str

    def payload(self) -> bytes:
        return json.dumps({
            "connectionId": self.account.id,
            "userId": self.account.user_id,
            "reason": self.reason,
            "exists": self.exists,
        }).encode("utf-8")


@dataclass
class _AccountState:
    """Per-account coalescing state: the scan in flight and at most one follow-up."""

    running: Deferred[None] | None = None
    pending: _Job | None = None


class _BodyReader(Protocol):
    """Collect a response body up to ``limit`` bytes; cancelling drops the connection."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] = []
        self.done: Deferred[bytes] = Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        room = self.limit - self.size
        if room > 0:
            self.chunks.append(data[:room])
            self.size += min(room, len(data))

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)

    def _cancel(self, _: Deferred[bytes]) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


def _read_body(response: Any) -> Deferred[bytes]:
    reader = _BodyReader(BODY_READ_LIMIT)
    response.deliverBody(reader)
    return reader.done


def _no_jitter() -> float:
    return 0.0


def _timed_out(result: object, timeout: float) -> NoReturn:
    """``onTimeoutCancel``: whatever the cancelled request failed with, it timed out."""
    raise DeferredTimeoutError(timeout, "scan request")


class ScanTrigger(Service):
    """Send scan triggers to the backend; ``request`` is the sessions' ``OnNewMail``.

    :param settings: uses ``backend_url``, ``admin_secret``, ``scan_concurrency``,
        ``scan_timeout``, ``scan_attempts`` and ``shutdown_timeout``.
    :param reactor: provides every timer (tests pass :class:`~twisted.internet.task.Clock`);
        with the default HTTP client it must also be a full reactor.
    :param http_client: a treq-like object (``treq.HTTPClient``, ``StubTreq``) with
        ``post(url, data=, headers=, allow_redirects=, unbuffered=)``; by default a
        ``treq.HTTPClient`` over one persistent :class:`HTTPConnectionPool`.
    :param retry_delay: ``attempt -> seconds`` before the retry that follows the failed
        attempt number ``attempt`` (0-based); default 1, 2, 4 ... capped at 60 s.
    """

    name = "scan-trigger"

    def __init__(
        self,
        settings: Settings,
        reactor: IReactorTime,
        *,
        http_client: Any = None,
        retry_delay: Callable[[int], float] | None = None,
    ) -> None:
        self._settings = settings
        self._reactor = reactor
        self._pool: HTTPConnectionPool | None = None
        if http_client is None:
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = max(2, settings.scan_concurrency)
            # Close idle connections before the backend does (Node.js drops them after
            # 5 s), so that a trigger rarely goes out on a connection closing under it.
            self._pool.cachedConnectionTimeout = IDLE_CONNECTION_TIMEOUT
            http_client = HTTPClient(Agent(reactor, pool=self._pool))
        self._http = http_client
        self._retry_delay = retry_delay or backoffPolicy(
            initialDelay=1.0, maxDelay=MAX_RETRY_DELAY, factor=2.0, jitter=_no_jitter)
        self._url = settings.backend_url.rstrip("/") + SCAN_PATH
        self._semaphore = DeferredSemaphore(max(1, settings.scan_concurrency))
        self._states: dict[str, _AccountState] = {}
        self._outcomes: dict[str, dict[str, Any]] = {}
        self._idle_waiters: list[Deferred[None]] = []
        self._stopping = False
        self._abandoning = False
        self._secrets = tuple(s for s in settings.secret_values() if s)

    # -- the OnNewMail seam ---------------------------------------------------------------

    def request(self, account: Account, exists: int, reason: str) -> None:
        """Ask for a scan of ``account``; coalesced with one in flight. Never raises."""
        try:
            self._request(_Job(account, int(exists), reason))
        except Exception:
            log.failure("[idle/{email}] scan-trigger request failed",
                        email=getattr(account, "email", "?"),
                        account_id=getattr(account, "id", None))

    def _request(self, job: _Job) -> None:
        if self._stopping:
            self._count(job, "abandoned")
            log.info("[idle/{email}] scan-trigger not sent: shutting down",
                     email=job.account.email, account_id=job.account.id)
            return
        state = self._states.get(job.account.id)
        if state is None:
            state = self._states[job.account.id] = _AccountState()
        if state.running is not None:
            if state.pending is not None:
                log.debug("[idle/{email}] scan already queued; coalesced (exists={exists})",
                          email=job.account.email, account_id=job.account.id,
                          exists=job.exists)
            state.pending = job
            return
        self._start(state, job)

    def _start(self, state: _AccountState, job: _Job) -> None:
        d = Deferred.fromCoroutine(self._run(job))
        state.running = d
        d.addErrback(lambda f: log.failure(
            "[idle/{email}] scan-trigger crashed", f, email=job.account.email,
            account_id=job.account.id))
        d.addBoth(lambda _: self._finished(job.account.id, state))

    def _finished(self, account_id: str, state: _AccountState) -> None:
        state.running = None
        job, state.pending = state.pending, None
        if job is not None and not self._stopping:
            self._start(state, job)
            return
        if job is not None:
            self._count(job, "abandoned")
        if self._states.get(account_id) is state:
            del self._states[account_id]
        self._check_idle()

    # -- one scan, with retries -----------------------------------------------------------

    async def _run(self, job: _Job) -> None:
        attempts = max(1, self._settings.scan_attempts)
        attempt = 0
        payload = job.payload()
        try:
            while True:
                try:
                    status, body = await self._attempt(payload)
                except Exception:
                    if self._abandoning:
                        raise CancelledError() from None
                    failure = Failure()
                    text = self._describe(failure)
                    status = failure.value.status if failure.check(_Retryable) else None
                    attempt += 1
                    if attempt >= attempts:
                        self._record(job, "gave_up", status=status)
                        log.error("[idle/{email}] scan-trigger gave up after {attempts} "
                                  "attempts: {error}", email=job.account.email,
                                  account_id=job.account.id, attempts=attempt, error=text,
                                  reason=job.reason, exists=job.exists)
                        return
                    delay = self._retry_delay(attempt - 1)
                    metrics.SCAN_RETRIES.inc()
                    log.warn("[idle/{email}] scan-trigger failed ({error}); retry "
                             "{next}/{attempts} in {delay:g}s", email=job.account.email,
                             account_id=job.account.id, error=text, next=attempt + 1,
                             attempts=attempts, delay=delay)
                    await deferLater(self._reactor, delay, lambda: None)
                    continue
                self._answered(job, status, body)
                return
        except CancelledError:
            self._record(job, "abandoned")
            log.warn("[idle/{email}] scan-trigger abandoned at shutdown",
                     email=job.account.email, account_id=job.account.id,
                     reason=job.reason, exists=job.exists)

    async def _attempt(self, payload: bytes) -> tuple[int, bytes]:
        """One request, holding a concurrency slot; returns (status, body) of a
        non-5xx answer and raises on anything to retry."""
        metrics.SCAN_QUEUE.inc()
        try:
            await self._semaphore.acquire()
        finally:
            metrics.SCAN_QUEUE.dec()
        metrics.SCANS_IN_FLIGHT.inc()
        started = self._reactor.seconds()
        try:
            exchange = Deferred.fromCoroutine(self._exchange(payload))
            exchange.addTimeout(self._settings.scan_timeout, self._reactor,
                                onTimeoutCancel=_timed_out)
            status, body = await exchange
        finally:
            metrics.SCAN_LATENCY.observe(max(0.0, self._reactor.seconds() - started))
            metrics.SCANS_IN_FLIGHT.dec()
            self._semaphore.release()
        if status >= 500:
            raise _Retryable(status, f"HTTP {status}: {self._snippet(body)}")
        return status, body

    async def _exchange(self, payload: bytes) -> tuple[int, bytes]:
        response = await self._http.post(
            self._url,
            data=payload,
            headers={
                b"content-type": [b"application/json"],
                b"x-admin-secret": [self._settings.admin_secret.encode("utf-8")],
            },
            allow_redirects=False,
            unbuffered=True,
        )
        body = await _read_body(response)
        return int(response.code), body

    # -- outcomes -------------------------------------------------------------------------

    def _answered(self, job: _Job, status: int, body: bytes) -> None:
        email, account_id = job.account.email, job.account.id
        if 200 <= status < 300:
            scanned, blocked, note = _counts(body)
            self._record(job, "ok", status=status, scanned=scanned, blocked=blocked)
            log.info("[idle/{email}] scan-triggered → scanned={scanned} blocked={blocked}"
                     "{note}", email=email, account_id=account_id,
                     scanned="?" if scanned is None else scanned,
                     blocked="?" if blocked is None else blocked,
                     note=f" ({note})" if note else "", status=status, reason=job.reason,
                     exists=job.exists)
            return
        self._record(job, "client_error", status=status)
        hint = ""
        if status in (401, 403):
            hint = " — the admin secret is wrong (check ADMIN_SECRET)"
        log.error("[idle/{email}] scan-trigger rejected: HTTP {status}{hint}: {body}",
                  email=email, account_id=account_id, status=status, hint=hint,
                  body=self._snippet(body), reason=job.reason, exists=job.exists)

    def _record(self, job: _Job, outcome: str, *, status: int | None = None,
                scanned: int | None = None, blocked: int | None = None) -> None:
        self._count(job, outcome)
        self._outcomes[job.account.id] = {
            "time": self._reactor.seconds(),
            "outcome": outcome,
            "scanned": scanned,
            "blocked": blocked,
            "status": status,
        }

    @staticmethod
    def _count(job: _Job, outcome: str) -> None:
        reason = job.reason if job.reason in ("exists", "connected") else "other"
        metrics.SCANS.labels(reason=reason, outcome=outcome).inc()

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _snippet(self, body: bytes) -> str:
        text = " ".join(body.decode("utf-8", "replace").split())
        text = self._scrub(text)
        if not text:
            return "(empty answer)"
        if len(text) > BODY_LOG_LIMIT:
            text = text[:BODY_LOG_LIMIT] + "…"
        return text

    def _describe(self, failure: Failure) -> str:
        """A short, secret-free description of a failed attempt."""
        value = failure.value
        if isinstance(value, _Retryable):
            text = value.text
        elif failure.check(DeferredTimeoutError, neterror.TimeoutError):
            text = f"no answer within {self._settings.scan_timeout:g}s"
        elif failure.check(neterror.ConnectionRefusedError):
            text = "connection refused"
        elif failure.check(ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed):
            reasons = [r.getErrorMessage() or r.type.__name__
                       for r in getattr(value, "reasons", [])]
            text = ("connection lost while sending"
                    if failure.check(RequestTransmissionFailed)
                    else "connection lost before the answer")
            if reasons:
                text += f" ({'; '.join(reasons)})"
        elif failure.check(neterror.ConnectError):
            text = value.__class__.__name__ + (f": {value}" if str(value) else "")
        else:
            text = f"{value.__class__.__name__}: {value}"
        text = self._scrub(text)
        return text[:BODY_LOG_LIMIT]

    # -- for the status page, tests and the daemon ----------------------------------------

    def last_outcome(self, account_id: str) -> dict[str, Any] | None:
        """The latest finished scan of the account: ``time`` (epoch seconds), ``outcome``
        (ok, client_error, gave_up, abandoned), ``scanned``, ``blocked``, ``status``."""
        outcome = self._outcomes.get(account_id)
        return dict(outcome) if outcome is not None else None

    def forget(self, account_id: str) -> None:
        """Drop the remembered outcome of an account that is no longer watched."""
        self._outcomes.pop(account_id, None)

    def busy(self) -> bool:
        """True while a scan is in flight, retrying or queued."""
        return bool(self._states)

    def idle(self) -> Deferred[None]:
        """A Deferred that fires when nothing is in flight or queued."""
        if not self._states:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        return d

    def _check_idle(self) -> None:
        if self._states:
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for d in waiters:
            d.callback(None)

    # -- service --------------------------------------------------------------------------

    def startService(self) -> None:
        self._stopping = False
        self._abandoning = False
        super().startService()

    def stopService(self) -> Deferred[None]:
        """Wait for scans in flight (at most ``shutdown_timeout``), then abandon the rest
        (cancel, counted as ``abandoned``), close the pool's cached connections and fire.

        Follow-ups not started yet are dropped at once (counted as ``abandoned``): the
        next start scans every mailbox anyway (reason ``connected``, CONTRACT §5)."""
        super().stopService()
        self._stopping = True
        for state in self._states.values():
            if state.pending is not None:
                self._count(state.pending, "abandoned")
                state.pending = None
        done: Deferred[None] = Deferred()
        timers: list[Any] = []

        def finish(_: object = None) -> None:
            for timer in timers:
                if timer.active():
                    timer.cancel()
            if not done.called:
                done.callback(None)

        idle = self.idle()
        if not idle.called:
            timers.append(self._reactor.callLater(self._settings.shutdown_timeout,
                                                  self._abandon))
        idle.addCallback(finish)
        done.addCallback(lambda _: self._close_pool())
        done.addErrback(lambda f: log.failure("scan-trigger stop failed", f))
        return done

    def _abandon(self) -> None:
        """Cancel every scan: each fails at once (a cancelled Deferred always fires), is
        recorded as abandoned, and the last one makes ``idle()`` fire."""
        self._abandoning = True
        for state in list(self._states.values()):
            if state.running is not None:
                state.running.cancel()

    def _close_pool(self) -> Deferred[None]:
        if self._pool is None:
            return succeed(None)
        closing = self._pool.closeCachedConnections()
        return DeferredList([closing], consumeErrors=True).addCallback(lambda _: None)


def _counts(body: bytes) -> tuple[int | None, int | None, str]:
    """``(scanned, blocked, note)`` from a 2xx answer; None where the JSON says nothing."""
    try:
        data = json.loads(body.decode("utf-8")) if body.strip() else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return None, None, "no JSON in answer"

    def number(key: str) -> int | None:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        return value

    scanned, blocked = number("scanned"), number("blocked")
    note = "" if scanned is not None and blocked is not None else "answer without counts"
    return scanned, blocked, note
