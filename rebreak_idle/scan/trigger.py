"""The scan trigger (CONTRACT §5): ``POST {BACKEND_URL}/api/mail/scan-internal``.

One :class:`ScanTrigger` serves every account of the daemon. It composes two small
objects: the book of owed scans (:class:`~rebreak_idle.scan.owed.OwedScans`) and the
backend's health (:class:`~rebreak_idle.scan.backend_health.BackendHealth`).

- No scan is ever dropped: a request makes its mailbox (INBOX or an extra folder) *owe* a
  scan until a 2xx answers one sent after it, however long the backend is down, for as long
  as the account is watched. One owed entry per mailbox: new mail on a mailbox that owes
  a scan only updates its entry (the latest ``exists`` and reason), so memory stays
  O(mailboxes) under any flood of EXISTS, and an INBOX request never replaces a folder's;
- per account, scans never overlap: one mailbox's scan at a time, the oldest owed first;
- per account, new-mail scans start at most once per ``scan_min_interval``: the first
  one after a quiet spell goes out at once, whatever arrives within the interval is folded
  into one scan at its end. The scan of a (re)connect does not count: the mail that
  arrives right after it is still scanned at once;
- across accounts, at most ``scan_concurrency`` requests are in flight, the rest wait in
  order (a :class:`~twisted.internet.defer.DeferredSemaphore`);
- a connection error, a timeout, a 5xx, 408 or 429 answer makes the backend *down* for
  every account: no account sends its own retries any more, one probe at a time (a real
  scan of the oldest owed mailbox) goes out at a growing, jittered interval (1 s, 2 s, 4 s,
  then every 8-10 s; ``Retry-After`` honoured); the first 2xx makes it *up* and the owed scans drain
  at ``scan_concurrency``, the oldest first. 401, 403 and 404 (a wrong secret or URL) make
  it *refusing*: the scans stay owed, the reason is logged once, and a probe goes out
  every few minutes, so that a fixed backend needs no restart of the daemon. Another 4xx
  concerns one request: that account's scan stays owed and is tried again after
  :data:`REJECTED_RETRY_DELAY`;
- ``scan_attempts`` (``REBREAK_SCAN_ATTEMPTS``) no longer ends anything: it is accepted
  for compatibility and not used.

Each move of the backend's state is logged (``[idle/db] backend down: <reason>; <n> scans
owed``, ``[idle/db] backend back after <s>s: sending <n> owed scans``); the state, the
owed scans and the age of the oldest are gauges (:mod:`rebreak_idle.live_metrics`).

The admin secret is only ever put in the request header: log events and the status
page see neither it nor any other secret of the settings.
"""

from __future__ import annotations

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
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

from .. import metrics
from ..deferreds import Waiters
from ..failures import maskable
from ..live_metrics import SCANS_LIVE
from ..timing.backoff import format_delay
from .backend_health import BackendHealth, BackendState
from .http_pool import QuietHTTPConnectionPool
from .owed import OwedScans
from .request import (
    BACKEND_REFUSALS,
    RETRYABLE_4XX,
    Job,
    answer_counts,
    attempt_error,
    read_body,
    retry_after,
    snippet,
    timed_out,
)
from .trigger_states import AccountScan, Phase, PhaseEvent, ScanEvent, ScanState, next_phase

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from ..accounts.account import Account
    from ..config import ScanSettings

__all__ = ["REJECTED_RETRY_DELAY", "SCAN_PATH", "ScanTrigger"]

#: Path of the backend's scan endpoint, appended to ``BACKEND_URL``.
SCAN_PATH = "/api/mail/scan-internal"

#: Seconds an unused keep-alive connection to the backend stays open.
IDLE_CONNECTION_TIMEOUT = 4.0
#: Seconds before an account's scan refused with a 4xx of its own (not 401/403/404, 408,
#: 429) is tried again.
REJECTED_RETRY_DELAY = 180.0

#: ``outcome`` label values of rebreak_idle_scan_triggers_total: ``ok`` a 2xx (once per
#: acknowledged scan), ``client_error`` each 4xx answer, ``abandoned`` a scan dropped at
#: shutdown or with its account.
OUTCOMES = ("ok", "client_error", "abandoned")

log = Logger(namespace="rebreak_idle.scan")


OWING, WAITING, SENDING, DISCARDED = ScanState


class ScanTrigger(Service):
    """Send scan triggers to the backend; ``request`` is the sessions' ``OnNewMail``.

    :param settings: the scan view of the settings (:func:`rebreak_idle.config.scan_settings`).
    :param reactor: provides every timer (tests pass :class:`~twisted.internet.task.Clock`);
        with the default HTTP client it must also be a full reactor.
    :param http_client: a treq-like object (``treq.HTTPClient``, ``StubTreq``) with
        ``post(url, data=, headers=, allow_redirects=, unbuffered=)``; by default a
        ``treq.HTTPClient`` over one persistent :class:`HTTPConnectionPool`.
    :param health: the backend's :class:`~rebreak_idle.scan.backend_health.BackendHealth`
        (tests pass one with a jitter of their own); by default a new one.
    """

    name = "scan-trigger"

    def __init__(
        self,
        settings: ScanSettings,
        reactor: IReactorTime,
        *,
        http_client: Any = None,
        health: BackendHealth | None = None,
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
        self._url = settings.backend_url.rstrip("/") + SCAN_PATH
        self._semaphore = DeferredSemaphore(max(1, settings.scan_concurrency))
        self._owed = OwedScans()
        self.health = BackendHealth(reactor) if health is None else health
        #: while the backend is not up: the next probe's timer, or the account probed now
        self._probe_timer: IDelayedCall | None = None
        self._probing: str | None = None
        #: one AccountScan per account that owes a scan or has one in flight
        self._states: dict[str, AccountScan] = {}
        self._outcomes: dict[str, dict[str, Any]] = {}
        self._quiet = Waiters()
        self._quiet.settle()
        self._phase = Phase.OPEN
        self._secrets = maskable(settings.secrets)
        #: account id → reactor time its last scan started (for scan_min_interval)
        self._last_start: dict[str, float] = {}

    # -- the OnNewMail seam ---------------------------------------------------------------

    def request(self, account: Account, exists: int, reason: str) -> None:
        """Ask for a scan of ``account``; coalesced with one owed. Never raises."""
        self.submit(account, exists, reason)

    def submit(self, account: Account, exists: int, reason: str,
               mailbox: str | None = None) -> Deferred[bool] | None:
        """:meth:`request`, and a Deferred that fires True once a scan sent after this
        call was answered 2xx; False when the request is dropped (shutdown, the account
        discarded) or replaced by a later request of the same mailbox before it went out
        (that one's answer covers it) — the sessions' ``OnNewMail``: they remember a
        mailbox mark only on True. None (nothing requested) for a request it cannot read.
        Never raises."""
        try:
            job = Job(account, int(exists), reason, mailbox=mailbox)
            job.payload()  # a request that cannot be sent is refused here, not later
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

    @property
    def phase(self) -> Phase:
        """The trigger's phase (:mod:`rebreak_idle.scan.trigger_states`)."""
        return self._phase

    @property
    def _stopping(self) -> bool:
        return self._phase is not Phase.OPEN

    def _request(self, job: Job) -> None:
        if self._stopping:
            self._count(job, "abandoned")
            log.info("[idle/{email}] scan-trigger not sent: shutting down",
                     email=job.account.email, account_id=job.account.id)
            return
        account_id = job.account.id
        state = self._states.get(account_id)
        if state is None:
            state = self._states[account_id] = AccountScan()
            self._quiet.unsettle()
        else:
            state.move(ScanEvent.REQUEST)  # a discarded account is watched again
        # coalesced without a log event: a flood of EXISTS would make one each
        self._owed.owe(job, self._reactor.seconds())
        self._kick(account_id, state)

    # -- when to send -----------------------------------------------------------------------

    def _kick(self, account_id: str, state: AccountScan) -> None:
        """Send the account's oldest owed scan now if it may go: nothing of the account in
        flight or waiting, the backend up, its minimum interval over (else wait for it)."""
        if state.state is not OWING:
            return
        if not self._owed.owes(account_id):
            self._forget(account_id, state)
            return
        if not self.health.up:
            self._arm_probe()  # (armed already, as a rule): the probe comes for it
            return
        wait = self._interval_left(account_id)
        if wait > 0:
            state.move(ScanEvent.WAIT)
            state.timer = self._reactor.callLater(wait, self._wait_over, account_id, state)
            return
        self._start(account_id, state, probe=False)

    def _interval_left(self, account_id: str) -> float:
        last = self._last_start.get(account_id)
        if last is None:
            return 0.0
        return last + self._settings.scan_min_interval - self._reactor.seconds()

    def _wait_over(self, account_id: str, state: AccountScan) -> None:
        state.move(ScanEvent.WAIT_OVER)
        if not self._stopping:
            self._kick(account_id, state)

    def _start(self, account_id: str, state: AccountScan, *, probe: bool) -> None:
        job = self._owed.take(account_id)
        assert job is not None
        if job.reason != "connected":  # a (re)connect's scan: its own pace (the backoff)
            self._last_start[account_id] = self._reactor.seconds()
        state.move(ScanEvent.SEND)  # before it runs: an answer at once must not start another
        state.job = job
        if probe:
            self._probing = account_id
        d = Deferred.fromCoroutine(self._run(job, probe))
        if state.job is job:
            state.running = d
        d.addErrback(lambda f: log.failure(
            "[idle/{email}] scan-trigger crashed", f, email=job.account.email,
            account_id=account_id))
        d.addBoth(lambda _: self._finished(account_id, state, job, probe))

    def _finished(self, account_id: str, state: AccountScan, job: Job,
                  probe: bool) -> None:
        if state.job is job:  # (not after a 4xx of its own: WAITING already)
            state.move(ScanEvent.FINISHED)
        if probe and self._probing == account_id:
            self._probing = None
        if self._stopping:
            if state.state is OWING:
                self._forget(account_id, state)
            return
        self._kick(account_id, state)
        if probe and not self.health.up:
            self._arm_probe()

    def _forget(self, account_id: str, state: AccountScan) -> None:
        """``state`` has nothing in flight, waiting or owed any more."""
        if self._states.get(account_id) is state:
            del self._states[account_id]
        if not self._states:
            self._quiet.settle()

    # -- the probe, while the backend is not up -----------------------------------------

    def _arm_probe(self) -> None:
        if self._probe_timer is None and self._probing is None and not self._stopping:
            self._probe_timer = self._reactor.callLater(self.health.probe_delay(),
                                                        self._probe_due)

    def _probe_due(self) -> None:
        """Send one probe: the scan of the oldest owed mailbox whose account may send."""
        self._probe_timer = None
        if self._stopping or self.health.up:
            return
        for account_id in self._owed.waiting_accounts():
            state = self._states.get(account_id)
            if (state is None or state.state is not OWING
                    or self._interval_left(account_id) > 0):
                continue
            self._start(account_id, state, probe=True)
            return
        self._arm_probe()  # nothing may go now: look again later

    def _drain(self) -> None:
        """The backend is up again: every owed scan goes, the oldest first (the semaphore
        keeps them in order and at ``scan_concurrency``)."""
        timer, self._probe_timer = self._probe_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        for account_id in self._owed.waiting_accounts():
            state = self._states.get(account_id)
            if state is not None:
                self._kick(account_id, state)

    # -- one scan ---------------------------------------------------------------------------

    async def _run(self, job: Job, probe: bool) -> None:
        """One request, holding a concurrency slot until its outcome is taken in (so that
        a scan waiting for the slot sees the backend's state after it)."""
        metrics.SCAN_QUEUE.inc()
        try:
            await self._semaphore.acquire()
        except CancelledError:
            self._abandoned(job)
            return
        finally:
            metrics.SCAN_QUEUE.dec()
        try:
            if probe or self.health.up:
                await self._attempt(job, probe)
            else:  # the backend went down while it waited for the slot: nothing sent
                self._owed.not_acknowledged(job)
        finally:
            self._semaphore.release()

    def _abandoned(self, job: Job) -> None:
        self._record(job, "abandoned")
        log.warn("[idle/{email}] scan-trigger abandoned at shutdown",
                 email=job.account.email, account_id=job.account.id,
                 reason=job.reason, exists=job.exists)

    async def _attempt(self, job: Job, probe: bool) -> None:
        """Send ``job`` and take its outcome in."""
        metrics.SCANS_IN_FLIGHT.inc()
        started = self._reactor.seconds()
        try:
            exchange = Deferred.fromCoroutine(self._exchange(job.payload()))
            exchange.addTimeout(self._settings.scan_timeout, self._reactor,
                                onTimeoutCancel=timed_out)
            status, body, headers = await exchange
        except CancelledError:
            self._abandoned(job)
            return
        except Exception:
            if self._phase is Phase.ABANDONING:
                self._abandoned(job)
                return
            failure = Failure()
            self._failed(job, attempt_error(failure, self._settings.scan_timeout,
                                            self._secrets), None, None, probe)
            return
        finally:
            metrics.SCAN_LATENCY.observe(max(0.0, self._reactor.seconds() - started))
            metrics.SCANS_IN_FLIGHT.dec()
        if 200 <= status < 300:
            self._acknowledged(job, status, body)
        elif status >= 500 or status in RETRYABLE_4XX:
            wait = (retry_after(headers.getRawHeaders(b"retry-after"),
                                self._reactor.seconds())
                    if status in (429, 503) else None)
            self._failed(job, f"HTTP {status}: {snippet(body, self._secrets)}", wait,
                         status, probe)
        else:
            self._rejected(job, status, body)

    async def _exchange(self, payload: bytes) -> tuple[int, bytes, Any]:
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
        return int(response.code), body, response.headers

    # -- outcomes -------------------------------------------------------------------------

    def _acknowledged(self, job: Job, status: int, body: bytes) -> None:
        self._owed.acknowledged(job)
        scanned, blocked, note = answer_counts(body)
        self._record(job, "ok", status=status, scanned=scanned, blocked=blocked)
        log.info("[idle/{email}] scan-triggered → scanned={scanned} blocked={blocked}"
                 "{note}", email=job.account.email, account_id=job.account.id,
                 scanned="?" if scanned is None else scanned,
                 blocked="?" if blocked is None else blocked,
                 note=f" ({note})" if note else "", status=status, reason=job.reason,
                 exists=job.exists)
        self._answered()

    def _answered(self) -> None:
        """The backend answered (2xx, or a 4xx about one request only)."""
        down_for = self.health.down_for()
        if self.health.answered() is BackendState.UP:
            return
        log.info("[idle/db] backend back after {seconds}s: sending {n} owed scans",
                 seconds=format_delay(down_for), n=len(self._owed))
        self._drain()

    def _failed(self, job: Job, text: str, wait: float | None, status: int | None,
                probe: bool) -> None:
        """No answer, or one that says "later" (5xx, 408, 429): the scan stays owed and the
        backend is down."""
        if self._stopping:
            self._record(job, "abandoned", status=status)
            return
        self._owed.not_acknowledged(job)
        self._record(job, "failed", status=status)
        metrics.SCAN_RETRIES.inc()
        old = self.health.failed(text, wait)
        # a probe's failure is the expected news while down: not a line each
        (log.debug if probe else log.warn)(
            "[idle/{email}] scan-trigger failed ({error}); scan owed",
            email=job.account.email, account_id=job.account.id, error=text,
            reason=job.reason, exists=job.exists, status=status)
        self._left_up(old)

    def _rejected(self, job: Job, status: int, body: bytes) -> None:
        """A 4xx that is not "later": the scan stays owed. 401, 403 and 404 concern every
        account (the backend refuses); another one this request only."""
        if self._stopping:
            self._record(job, "abandoned", status=status)
            return
        self._owed.not_acknowledged(job)
        previous = self._outcomes.get(job.account.id) or {}
        repeated = (previous.get("outcome"), previous.get("status")) == ("client_error",
                                                                          status)
        self._record(job, "client_error", status=status)
        hint = " — the admin secret is wrong (check ADMIN_SECRET)" if status in (401, 403) \
            else " — check BACKEND_URL" if status == 404 else ""
        text = f"HTTP {status}{hint}: {snippet(body, self._secrets)}"
        if status in BACKEND_REFUSALS:
            old = self.health.rejected(text)
            if old is not BackendState.REFUSING:
                log.error("[idle/{email}] scan-trigger rejected: {error}",
                          email=job.account.email, account_id=job.account.id, error=text,
                          status=status, reason=job.reason, exists=job.exists)
            self._left_up(old)
            return
        # logged once: the same refusal of the same account again is a debug line
        (log.debug if repeated else log.error)(
            "[idle/{email}] scan-trigger rejected: {error}; scan owed, next try in "
            "{delay:g}s", email=job.account.email, account_id=job.account.id, error=text,
            delay=REJECTED_RETRY_DELAY, status=status, reason=job.reason, exists=job.exists)
        state = self._states.get(job.account.id)
        if state is not None and state.state is SENDING and state.job is job:
            state.move(ScanEvent.REJECTED)
            state.timer = self._reactor.callLater(REJECTED_RETRY_DELAY, self._wait_over,
                                                  job.account.id, state)
        self._answered()

    def _left_up(self, old: BackendState) -> None:
        """After a failure or refusal: log a move of the backend's state, and keep a probe
        coming while it is not up."""
        if old is not self.health.state:
            log.warn("[idle/db] backend down: {reason}; {n} scans owed",
                     reason=self.health.reason, n=len(self._owed),
                     state=self.health.state.value)
        self._arm_probe()

    def _record(self, job: Job, outcome: str, *, status: int | None = None,
                scanned: int | None = None, blocked: int | None = None) -> None:
        """Remember the account's latest outcome (for /status); a final one (``ok``,
        ``abandoned``) is counted and tells the job's waiters; ``client_error`` is
        counted for each rejected attempt."""
        state = self._states.get(job.account.id)
        if state is None or state.keeps_outcomes:
            self._outcomes[job.account.id] = {
                "time": self._reactor.seconds(),
                "outcome": outcome,
                "scanned": scanned,
                "blocked": blocked,
                "status": status,
            }
        if outcome in ("ok", "abandoned"):
            self._count(job, outcome)  # last: a waiter may look at the outcome
        elif outcome == "client_error":
            metrics.SCANS.labels(reason=_reason(job), outcome=outcome).inc()

    @staticmethod
    def _count(job: Job, outcome: str) -> None:
        """Count the job's one final outcome, and tell its waiters."""
        metrics.SCANS.labels(reason=_reason(job), outcome=outcome).inc()
        job.settle(outcome == "ok")

    # -- for the status page, metrics, tests and the daemon -------------------------------

    def last_outcome(self, account_id: str) -> dict[str, Any] | None:
        """The latest finished attempt of the account: ``time`` (epoch seconds), ``outcome``
        (ok, failed, client_error, abandoned), ``scanned``, ``blocked``, ``status``."""
        outcome = self._outcomes.get(account_id)
        return dict(outcome) if outcome is not None else None

    def owed_since(self, account_id: str) -> float | None:
        """Reactor time (epoch seconds) since which the account owes a scan (its oldest
        mailbox not covered by an acknowledged scan); None when it owes none."""
        return self._owed.owed_since(account_id)

    @property
    def owed_scans(self) -> OwedScans:
        """The book of owed scans, one entry per mailbox (read it; the trigger writes it)."""
        return self._owed

    def owed(self) -> tuple[int, float | None]:
        """The number of mailboxes owing a scan and the age in seconds of the oldest
        (None when none owes)."""
        oldest = self._owed.oldest_since()
        age = None if oldest is None else max(0.0, self._reactor.seconds() - oldest)
        return len(self._owed), age

    def discard(self, account_id: str) -> None:
        """Forget an account that is no longer watched: its owed scans (their waiters are
        told False), its last outcome, and the outcome of a scan still in flight (which is
        left to finish)."""
        self._outcomes.pop(account_id, None)
        self._last_start.pop(account_id, None)
        for job in self._owed.drop(account_id):
            self._count(job, "abandoned")
        state = self._states.get(account_id)
        if state is not None:
            if state.state is SENDING:
                state.move(ScanEvent.DISCARD)
            self._stop_waiting(account_id, state)

    def _stop_waiting(self, account_id: str, state: AccountScan) -> None:
        """Cancel the account's timer; forget it when nothing of it is in flight."""
        timer = state.timer
        if timer is not None and timer.active():
            timer.cancel()
        if state.state is OWING or state.state is WAITING:
            self._forget(account_id, state)

    def busy(self) -> bool:
        """True while a scan is in flight or owed."""
        return bool(self._states)

    def when_quiet(self) -> Deferred[None]:
        """A Deferred that fires once no scan is in flight or owed (at once if none is)."""
        return self._quiet.wait()

    # -- service --------------------------------------------------------------------------

    def startService(self) -> None:
        self._phase = next_phase(self._phase, PhaseEvent.START)
        super().startService()
        SCANS_LIVE.attach(self)
        if not self.health.up:  # stopped while down: the probe comes again
            self._arm_probe()

    def stopService(self) -> Deferred[None]:
        """Wait for scans in flight (at most ``shutdown_timeout``), then abandon the rest
        (cancel, counted as ``abandoned``), close the pool's cached connections and fire.

        Owed scans not in flight are dropped at once (counted as ``abandoned``): their
        marks were never stored, so the next start (or the replica that takes the accounts
        over) scans those mailboxes (reason ``connected``, CONTRACT §5)."""
        super().stopService()
        SCANS_LIVE.detach(self)
        self._phase = next_phase(self._phase, PhaseEvent.STOP)
        timer, self._probe_timer = self._probe_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        for account_id, state in list(self._states.items()):
            for job in self._owed.drop(account_id):
                self._count(job, "abandoned")
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
        self._phase = next_phase(self._phase, PhaseEvent.TIMEOUT)
        for state in list(self._states.values()):
            if state.running is not None:
                state.running.cancel()

    def _close_pool(self) -> Deferred[None]:
        if self._pool is None:
            return succeed(None)
        closing = self._pool.closeCachedConnections()
        return DeferredList([closing], consumeErrors=True).addCallback(lambda _: None)


def _reason(job: Job) -> str:
    return job.reason if job.reason in ("exists", "connected") else "other"
