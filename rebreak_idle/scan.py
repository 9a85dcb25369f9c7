"""The scan trigger (CONTRACT §5): ``POST {BACKEND_URL}/api/mail/scan-internal``.

One :class:`ScanTrigger` serves every account of the daemon:

- per account, scans never overlap; new mail during a scan is coalesced into exactly one
  follow-up scan that carries the latest ``exists`` count and reason;
- per account, new-mail scans start at most once per ``scan_min_interval``: the first
  one after a quiet spell goes out at once, whatever arrives within the interval is folded
  into one scan at its end (a server pushing EXISTS by the thousand costs the backend one
  mailbox read per interval, not one per EXISTS). The scan of a (re)connect does not
  count: the mail that arrives right after it is still scanned at once;
- across accounts, at most ``scan_concurrency`` requests are in flight, the rest wait in
  order (a :class:`~twisted.internet.defer.DeferredSemaphore`);
- connection errors, timeouts and 5xx answers are retried with exponential backoff
  (1 s, 2 s, 4 s ... at most 60 s) up to ``scan_attempts`` attempts; 4xx answers are
  logged and not retried.

The admin secret is only ever put in the request header: log events and the status
page see neither it nor any other secret of the settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
    succeed,
)
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

from . import metrics
from .backoff import Backoff
from .deferreds import Waiters
from .failures import maskable
from .quiet_http import QuietHTTPConnectionPool
from .scan_request import (
    Job,
    Retryable,
    answer_counts,
    attempt_error,
    coalesce,
    read_body,
    snippet,
    timed_out,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from .account import Account
    from .config import ScanSettings

__all__ = ["SCAN_PATH", "ScanTrigger"]

#: Path of the backend's scan endpoint, appended to ``BACKEND_URL``.
SCAN_PATH = "/api/mail/scan-internal"

#: Seconds an unused keep-alive connection to the backend stays open.
IDLE_CONNECTION_TIMEOUT = 4.0
#: Delay before the first retry of a scan, in seconds (then doubling).
FIRST_RETRY_DELAY = 1.0
#: Longest backoff between two attempts, in seconds.
MAX_RETRY_DELAY = 60.0

OUTCOMES = ("ok", "client_error", "gave_up", "abandoned")

log = Logger(namespace="rebreak_idle.scan")


def retry_backoff() -> Backoff:
    """The retry delays of one scan: 1 s, 2 s, 4 s ... at most 60 s, without jitter (the
    concurrency cap already spreads the retries of many accounts)."""
    return Backoff(FIRST_RETRY_DELAY, MAX_RETRY_DELAY, factor=2.0, spread=0.0)


@dataclass
class _AccountState:
    """Per-account coalescing state: the scan in flight and at most one follow-up.
    ``keep`` is False once the account was discarded: its outcome is then not kept."""

    running: Deferred[None] | None = None
    pending: Job | None = None
    keep: bool = True
    #: the pending scan waits for the account's minimum interval to pass
    waiting: Any = None


class ScanTrigger(Service):
    """Send scan triggers to the backend; ``request`` is the sessions' ``OnNewMail``.

    :param settings: the scan view of the settings (:func:`rebreak_idle.config.scan_settings`).
    :param reactor: provides every timer (tests pass :class:`~twisted.internet.task.Clock`);
        with the default HTTP client it must also be a full reactor.
    :param http_client: a treq-like object (``treq.HTTPClient``, ``StubTreq``) with
        ``post(url, data=, headers=, allow_redirects=, unbuffered=)``; by default a
        ``treq.HTTPClient`` over one persistent :class:`HTTPConnectionPool`.
    :param backoff: makes the :class:`~rebreak_idle.backoff.Backoff` of one scan's retries;
        default :func:`retry_backoff` (1, 2, 4 ... capped at 60 s).
    """

    name = "scan-trigger"

    def __init__(
        self,
        settings: ScanSettings,
        reactor: IReactorTime,
        *,
        http_client: Any = None,
        backoff: Callable[[], Backoff] = retry_backoff,
    ) -> None:
        self._settings = settings
        self._reactor = reactor
        self._pool: HTTPConnectionPool | None = None
        if http_client is None:
            self._pool = QuietHTTPConnectionPool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = max(2, settings.scan_concurrency)
            # Close idle connections before the backend does (Node.js drops them after
            # 5 s), so that a trigger rarely goes out on a connection closing under it.
            self._pool.cachedConnectionTimeout = IDLE_CONNECTION_TIMEOUT
            http_client = HTTPClient(Agent(reactor, pool=self._pool))
        self._http = http_client
        self._backoff = backoff
        self._url = settings.backend_url.rstrip("/") + SCAN_PATH
        self._semaphore = DeferredSemaphore(max(1, settings.scan_concurrency))
        self._states: dict[str, _AccountState] = {}
        self._outcomes: dict[str, dict[str, Any]] = {}
        self._quiet = Waiters()
        self._quiet.settle()
        self._stopping = False
        self._abandoning = False
        self._secrets = maskable(settings.secrets)
        #: account id → reactor time its last scan started (for scan_min_interval)
        self._last_start: dict[str, float] = {}

    # -- the OnNewMail seam ---------------------------------------------------------------

    def request(self, account: Account, exists: int, reason: str) -> None:
        """Ask for a scan of ``account``; coalesced with one in flight. Never raises."""
        self.submit(account, exists, reason)

    def submit(self, account: Account, exists: int, reason: str,
               mailbox: str | None = None) -> Deferred[bool] | None:
        """:meth:`request`, and a Deferred that fires True once a scan sent after this
        call was answered 2xx, False when it was given up, refused (4xx), abandoned or
        dropped — the sessions' ``OnNewMail``: they remember a mailbox mark only on True.
        None (nothing requested) for a request it cannot read. Never raises."""
        try:
            job = Job(account, int(exists), reason, mailbox=mailbox)
        except Exception:
            log.failure("[idle/{email}] scan-trigger request failed",
                        email=getattr(account, "email", "?"),
                        account_id=getattr(account, "id", None))
            return None
        acked: Deferred[bool] = Deferred()
        job.acks.append(acked)
        try:
            self._request(job)
        except Exception:
            log.failure("[idle/{email}] scan-trigger request failed",
                        email=getattr(account, "email", "?"),
                        account_id=getattr(account, "id", None))
            job.settle(False)
            return None
        return acked

    def _request(self, job: Job) -> None:
        if self._stopping:
            self._count(job, "abandoned")
            log.info("[idle/{email}] scan-trigger not sent: shutting down",
                     email=job.account.email, account_id=job.account.id)
            return
        state = self._states.get(job.account.id)
        if state is None:
            state = self._states[job.account.id] = _AccountState()
            self._quiet.unsettle()
        state.keep = True
        if state.running is not None or state.waiting is not None:
            # coalesced without a log event: a flood of EXISTS would make one each
            state.pending = job if state.pending is None else coalesce(state.pending, job)
            return
        self._start_or_wait(state, job)

    def _start_or_wait(self, state: _AccountState, job: Job) -> None:
        """Start ``job`` now, or hold it as the pending one until the account's minimum
        interval since its last scan has passed."""
        interval = self._settings.scan_min_interval
        last = self._last_start.get(job.account.id)
        wait = 0.0 if last is None else last + interval - self._reactor.seconds()
        if wait <= 0:
            self._start(state, job)
            return
        state.pending = job
        state.waiting = self._reactor.callLater(wait, self._wait_over, job.account.id, state)

    def _wait_over(self, account_id: str, state: _AccountState) -> None:
        state.waiting = None
        job, state.pending = state.pending, None
        if job is not None and not self._stopping:
            self._start(state, job)
        elif state.running is None:
            self._forget(account_id, state)

    def _start(self, state: _AccountState, job: Job) -> None:
        if job.reason != "connected":  # a (re)connect's scan: its own pace (the backoff)
            self._last_start[job.account.id] = self._reactor.seconds()
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
            self._start_or_wait(state, job)
            return
        if job is not None:
            self._count(job, "abandoned")
        self._forget(account_id, state)

    def _forget(self, account_id: str, state: _AccountState) -> None:
        """``state`` has nothing in flight or waiting any more."""
        if self._states.get(account_id) is state:
            del self._states[account_id]
        if not self._states:
            self._quiet.settle()

    # -- one scan, with retries -----------------------------------------------------------

    async def _run(self, job: Job) -> None:
        attempts = max(1, self._settings.scan_attempts)
        backoff = self._backoff()
        payload = job.payload()
        try:
            while True:
                try:
                    status, body = await self._attempt(payload)
                except Exception:
                    if self._abandoning:
                        raise CancelledError() from None
                    failure = Failure()
                    text = attempt_error(failure, self._settings.scan_timeout, self._secrets)
                    status = failure.value.status if failure.check(Retryable) else None
                    delay = backoff.next()
                    if backoff.attempt >= attempts:
                        self._record(job, "gave_up", status=status)
                        log.error("[idle/{email}] scan-trigger gave up after {attempts} "
                                  "attempts: {error}", email=job.account.email,
                                  account_id=job.account.id, attempts=backoff.attempt,
                                  error=text, reason=job.reason, exists=job.exists)
                        return
                    metrics.SCAN_RETRIES.inc()
                    log.warn("[idle/{email}] scan-trigger failed ({error}); retry "
                             "{next}/{attempts} in {delay:g}s", email=job.account.email,
                             account_id=job.account.id, error=text,
                             next=backoff.attempt + 1, attempts=attempts, delay=delay)
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
                                onTimeoutCancel=timed_out)
            status, body = await exchange
        finally:
            metrics.SCAN_LATENCY.observe(max(0.0, self._reactor.seconds() - started))
            metrics.SCANS_IN_FLIGHT.dec()
            self._semaphore.release()
        if status >= 500:
            raise Retryable(status, f"HTTP {status}: {snippet(body, self._secrets)}")
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
        body = await read_body(response)
        return int(response.code), body

    # -- outcomes -------------------------------------------------------------------------

    def _answered(self, job: Job, status: int, body: bytes) -> None:
        email, account_id = job.account.email, job.account.id
        if 200 <= status < 300:
            scanned, blocked, note = answer_counts(body)
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
                  body=snippet(body, self._secrets), reason=job.reason, exists=job.exists)

    def _record(self, job: Job, outcome: str, *, status: int | None = None,
                scanned: int | None = None, blocked: int | None = None) -> None:
        self._count(job, outcome)
        state = self._states.get(job.account.id)
        if state is not None and not state.keep:
            return
        self._outcomes[job.account.id] = {
            "time": self._reactor.seconds(),
            "outcome": outcome,
            "scanned": scanned,
            "blocked": blocked,
            "status": status,
        }

    @staticmethod
    def _count(job: Job, outcome: str) -> None:
        """Count the job's one final outcome, and tell its waiters."""
        reason = job.reason if job.reason in ("exists", "connected") else "other"
        metrics.SCANS.labels(reason=reason, outcome=outcome).inc()
        job.settle(outcome == "ok")

    # -- for the status page, tests and the daemon ----------------------------------------

    def last_outcome(self, account_id: str) -> dict[str, Any] | None:
        """The latest finished scan of the account: ``time`` (epoch seconds), ``outcome``
        (ok, client_error, gave_up, abandoned), ``scanned``, ``blocked``, ``status``."""
        outcome = self._outcomes.get(account_id)
        return dict(outcome) if outcome is not None else None

    def discard(self, account_id: str) -> None:
        """Forget an account that is no longer watched: its last outcome, and the outcome of
        a scan still in flight (which is left to finish; its follow-up is dropped)."""
        self._outcomes.pop(account_id, None)
        self._last_start.pop(account_id, None)
        state = self._states.get(account_id)
        if state is not None:
            state.keep = False
            if state.pending is not None:
                self._count(state.pending, "abandoned")
                state.pending = None
            self._stop_waiting(account_id, state)

    def _stop_waiting(self, account_id: str, state: _AccountState) -> None:
        """Cancel the wait of a pending scan already dropped."""
        waiting, state.waiting = state.waiting, None
        if waiting is not None and waiting.active():
            waiting.cancel()
        if waiting is not None and state.running is None:
            self._forget(account_id, state)

    def busy(self) -> bool:
        """True while a scan is in flight, retrying or queued."""
        return bool(self._states)

    def when_quiet(self) -> Deferred[None]:
        """A Deferred that fires once no scan is in flight, retrying or queued (at once if
        none is)."""
        return self._quiet.wait()

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
        for account_id, state in list(self._states.items()):
            if state.pending is not None:
                self._count(state.pending, "abandoned")
                state.pending = None
            self._stop_waiting(account_id, state)
        done = Deferred.fromCoroutine(self._stop())
        done.addErrback(lambda f: log.failure("scan-trigger stop failed", f))
        return done

    async def _stop(self) -> None:
        try:
            await self.when_quiet().addTimeout(self._settings.shutdown_timeout,
                                               self._reactor)
        except DeferredTimeoutError:
            self._abandon()
            await self.when_quiet()
        await self._close_pool()

    def _abandon(self) -> None:
        """Cancel every scan: each fails at once (a cancelled Deferred always fires), is
        recorded as abandoned, and the last one makes ``when_quiet()`` fire."""
        self._abandoning = True
        for state in list(self._states.values()):
            if state.running is not None:
                state.running.cancel()

    def _close_pool(self) -> Deferred[None]:
        if self._pool is None:
            return succeed(None)
        closing = self._pool.closeCachedConnections()
        return DeferredList([closing], consumeErrors=True).addCallback(lambda _: None)
