"""``MailboxSession``: one account's life — connect, log in, select INBOX, IDLE, renew,
heartbeat, reconnect with backoff — and what to record and when to ask for a scan.

Seams: an :class:`~rebreak_idle.interfaces.IRecorder` (errors, cleared errors,
heartbeats), an ``on_new_mail(account, exists, reason)`` callable and the daemon's
:class:`~rebreak_idle.session.mailbox_marks.MailboxMemory`. The life is one
:class:`~rebreak_idle.session.states.State` with an enforced transition table. Twisted's
``ClientService`` connects and retries (:mod:`rebreak_idle.net.connecting` lets the session see
every attempt); when a connection or an attempt ends, :meth:`MailboxSession._connection_ended`
detaches the client, asks :mod:`rebreak_idle.session.reconnect_policy` for the delay, records,
logs and counts, and the retry policy only returns that delay. The login runs after ClientService
reports the connection (not in ``prepareConnection``, whose state machine has no
transition for a close during the login); a failed login closes the connection.

At most one pending timer per session (``_timer``, on the shared
:class:`~rebreak_idle.timing.wheel.TimerWheel`): the next heartbeat/renewal, or the next poll
(:mod:`rebreak_idle.session.heartbeat`, which also watches the extra folders).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IProtocol, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import imap, metrics
from ..accounts.account import Account
from ..config import SessionSettings
from ..failures import account_secrets, describe, scrub
from ..interfaces import IHoldoffRecorder, IRecorder, ISession, OnNewMail
from ..net.connecting import (
    ClientFactory,
    QuietClientService,
    SessionEndpoint,
    enable_keepalive,
    shared_tls_creator,
)
from ..ops.log_folding import EventFold, exists_fold
from ..timing.backoff import Backoff, format_delay
from ..timing.wheel import TimerWheel
from .heartbeat import HeartbeatLoop, timer_resolution
from .host_budget import HostBudget
from .login_sequence import LoggedIn, LoginSequence, Phase
from .mailbox_marks import MailboxMark, MailboxMemory
from .provider_limits import ProviderLimits
from .provider_signals import CREDENTIALS
from .reconnect_policy import CLOSED, HEALTHY_AFTER, Outcome, SessionError, classify, reaction
from .states import State, StateTally, check_transition, state_gauge
from .tokens import Reread

__all__ = ["MailboxSession", "State", "timer_resolution"]

log = Logger(namespace="rebreak_idle.session")

#: Longest wait for DONE + LOGOUT when stopping, and extra time for the close itself.
STOP_DEADLINE = 5.0
STOP_GRACE = 2.0


def _ignore(*args: Any) -> None:
    return None


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


@implementer(ISession)
class MailboxSession(HeartbeatLoop, ProviderLimits, Service):
    """Keeps one account watched for as long as the service runs. ``reactor``: IReactorTCP
    and IReactorTime. ``memory``: the daemon's
    :class:`~rebreak_idle.session.mailbox_marks.MailboxMemory`
    (default: one of its own). ``tls_creator(hostname)``: the TLS connection creator
    (default: shared per host). For tests and embedding: ``endpoint`` (instead of TCP and
    implicit TLS), ``jitter`` (callable in [0, 1)), ``timers`` (the TimerWheel the
    daemon's sessions share; default one of its own), ``tally`` (the daemon's count of
    sessions by state, :class:`~rebreak_idle.session.states.StateTally`)."""

    def __init__(
        self,
        account: Account,
        settings: SessionSettings,
        recorder: IRecorder,
        on_new_mail: OnNewMail,
        reactor: Any,
        *,
        memory: MailboxMemory | None = None,
        tls_creator: Callable[[str], Any] | None = None,
        endpoint: IStreamClientEndpoint | None = None,
        jitter: Callable[[], float] | None = None,
        timers: TimerWheel | None = None,
        reread: Reread | None = None,
        budget: HostBudget | None = None,
        holdoffs: IHoldoffRecorder | None = None,
        tally: StateTally | None = None,
    ) -> None:
        self.account = account
        self._init_limits(reread, budget, holdoffs)
        self._settings = settings
        self._recorder = recorder
        self._on_new_mail = on_new_mail
        self._reactor = reactor
        self._timers = (TimerWheel(reactor, timer_resolution(settings)) if timers is None
                        else timers)
        self._tls_creator = tls_creator
        self._endpoint = endpoint
        self._memory = MailboxMemory() if memory is None else memory
        backoff_kwargs = {} if jitter is None else {"jitter": jitter}
        self._backoff = Backoff(settings.reconnect_delay, settings.reconnect_max_delay,
                                **backoff_kwargs)
        self._healthy_after = min(HEALTHY_AFTER, settings.heartbeat_interval)
        self._service: QuietClientService | None = None

        self.state = State.STOPPED
        self._tally = StateTally() if tally is None else tally
        self._since = reactor.seconds()
        # the current connection
        self._client: imap.IdleClient | None = None
        self._outcome: Outcome | None = None
        self._timer: IDelayedCall | None = None
        self._idle_since = 0.0
        self._exists = 0  # the live count, once SELECT has answered
        self._mark: MailboxMark | None = None
        # for the status endpoint
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._last_heartbeat: float | None = None
        self._last_exists: tuple[float, int] | None = None
        self._last_scan_reason: str | None = None
        self._delay: float | None = None
        self._exists_log: EventFold | None = None
        self._strikes = 0  # consecutive credential rejections
        self._last_class: str | None = None

    # -- public -------------------------------------------------------------------------

    def startService(self) -> None:
        if self.running:
            return
        super().startService()
        self._backoff.reset()
        self._begin()

    def _start_client(self) -> None:
        self._timer = None
        if not self.running or self._service is not None:
            return
        endpoint = SessionEndpoint(self._reactor, self._make_endpoint, self._attempt_started,
                                   self._transport_connected, self._connect_failed)
        factory = ClientFactory(
            self._attach,
            clock=self._timers,
            command_timeout=self._settings.command_timeout,
            noop_timeout=self._settings.noop_timeout,
            allow_plaintext_auth=self.account.security == "plain",
        )
        self._service = QuietClientService(
            endpoint, factory, retryPolicy=self._retry_delay, clock=self._reactor)
        self._service.startService()

    def stopService(self) -> Deferred[None]:
        """DONE + LOGOUT (within a short deadline) when logged in, then close; fires when the
        connection is gone. Stopping while connecting or waiting to reconnect is immediate."""
        if not self.running:
            return succeed(None)
        super().stopService()
        self._cancel_timer()
        if self._exists_log is not None:
            self._exists_log.flush()
        service, self._service = self._service, None
        if service is None:  # still waiting out a hold-off of an earlier run
            self._set_state(State.STOPPED)
            return succeed(None)
        clock = self._reactor
        deadline = min(STOP_DEADLINE, self._settings.shutdown_timeout / 2)
        client = self._client
        if client is not None and self.state.ready:
            goodbye: Deferred[Any] = client.logout()  # ends a running IDLE with DONE first
            goodbye.addTimeout(deadline, clock)
            goodbye.addErrback(self._goodbye_failed)
        else:
            goodbye = succeed(None)
            deadline = 0.0

        def abort() -> None:
            if self._client is not None:
                self._abort(self._client)

        watchdog = clock.callLater(deadline + STOP_GRACE, abort)

        def finished(result: object) -> None:
            if watchdog.active():
                watchdog.cancel()
            self._release()
            self._set_state(State.STOPPED)
            if isinstance(result, Failure):
                log.failure("{label} stopping the connection failed", result,
                            label=self.account.label, account_id=self.account.id)
            return None

        stopped = goodbye.addCallback(lambda _: service.stopService())
        stopped.addBoth(finished)
        return stopped

    @property
    def last_heartbeat_at(self) -> float | None:
        """Reactor time (epoch seconds) of the last heartbeat: IDLE entered or a NOOP
        answered. None before the first one."""
        return self._last_heartbeat

    @property
    def last_error(self) -> str | None:
        """The last error shown for this account (scrubbed), or None since a login."""
        return self._last_error

    @property
    def last_exists_at(self) -> float | None:
        """Reactor time of the last EXISTS seen (the scrape-time gauges); None before."""
        return None if self._last_exists is None else self._last_exists[0]

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state for the status endpoint (no secret)."""
        exists = self._last_exists
        return {
            "id": self.account.id,
            "email": self.account.email,
            "state": self.state.value,
            "since": _iso(self._since),
            "attempt": self._backoff.attempt,
            "next_attempt_in": self._delay if self.state.waiting else None,
            "last_error": self._last_error,
            "last_error_at": _iso(self._last_error_at),
            "last_heartbeat": _iso(self._last_heartbeat),
            "last_exists": None if exists is None else {"at": _iso(exists[0]),
                                                        "count": exists[1]},
            "last_scan_reason": self._last_scan_reason,
            "last_end_class": self._last_class,
            "queued": self._queued,
        }

    # -- state --------------------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        """Change to ``state`` (raises :class:`~rebreak_idle.session.states.
        ForbiddenTransition` when the transition table does not allow it)."""
        old = self.state
        if old is state:
            return
        check_transition(old, state)
        self.state = state
        self._tally.moved(old, state, self.account.host)
        self._since = self._reactor.seconds()
        if old is not State.STOPPED:
            state_gauge(old).dec()
        if state is not State.STOPPED:
            state_gauge(state).inc()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _fail(self, outcome: Outcome) -> None:
        """Remember why this connection ends (the first specific reason wins). This is
        where a server's text becomes the error text (recorded, shown, logged): the
        account's own secret, in any form a server may echo it, is masked here."""
        if outcome.overrides(self._outcome):
            outcome.text = self._scrubbed(outcome.text)  # a fresh Outcome of this failure
            self._outcome = outcome

    def _scrubbed(self, text: str) -> str:
        account = self.account
        return scrub(text, account_secrets(account.username, account.secret))

    def _abort(self, client: imap.IdleClient) -> None:
        transport = client.transport
        if transport is not None and not client.closed:
            transport.abortConnection()

    # -- connecting ---------------------------------------------------------------------

    def _tls_options(self) -> Any:
        if self._tls_creator is not None:
            return self._tls_creator(self.account.host)
        return shared_tls_creator(self.account.host, self._settings.tls_ca_file)

    def _attempt_started(self) -> None:
        self._outcome = None
        self._release()
        self._detach()
        self._set_state(State.CONNECTING)

    def _connect_failed(self, failure: Failure) -> Failure:
        if self.running and not failure.check(CancelledError):
            outcome = classify(failure)
            # nothing more specific will come for this attempt
            self._fail(Outcome(outcome.cause, outcome.text))
            self._connection_ended()
        return failure

    def _attach(self, client: imap.IdleClient) -> None:
        """A connection was built: route the client's events to this session (bound
        methods: the events of the current client only; :meth:`_detach` unhooks a client
        that is no longer the current one). New mail is routed once SELECT has answered."""
        self._detach()
        self._client = client
        client.on_bye = self._on_bye
        client.on_idle_ended = self._on_idle_ended
        client.on_connection_lost = self._on_connection_lost

    def _detach(self) -> None:
        """Forget the current client; its later events reach nobody."""
        client, self._client = self._client, None
        if client is not None:
            client.on_exists = client.on_expunge = client.on_bye = _ignore
            client.on_idle_ended = client.on_connection_lost = _ignore

    def _transport_connected(self, protocol: IProtocol) -> IProtocol:
        client = self._client
        if client is not None and self.running:
            enable_keepalive(client.transport)
            login = Deferred.fromCoroutine(self._login(client))
            login.addErrback(self._step_failed, client)
        return protocol

    async def _login(self, client: imap.IdleClient) -> None:
        done = await LoginSequence(
            client, self.account, self._tls_options, xoauth2=self._login_xoauth2,
            on_phase=lambda phase, done: self._login_phase(phase, done, client)).run()
        account, mark = done.account, done.mark
        if mark is None or self._mark is None:  # pragma: no cover - run() selected
            raise SessionError("protocol", "no SELECT answer")
        if done.status is not None:  # Courier: count and UIDNEXT from one STATUS answer
            self._mark = done.status
            self._exists = done.status.exists
        changed = self._mark.needs_scan(self._memory.get(account.id))
        await self._watch_folders(client)  # REBREAK_EXTRA_FOLDERS: LIST, STATUS
        if client.has_idle:
            await client.idle()
            state = State.IDLE
        else:
            state = State.POLLING
        self._idle_since = self._reactor.seconds()
        self._set_state(state)
        if self._slot is not None:
            self._slot.ready()
        self._heartbeat()
        log.info("[idle/{email}] connected ({host}:{port})", email=account.email,
                 host=account.host, port=account.port, account_id=account.id,
                 mode=state.value, exists=mark.exists)
        self._schedule()
        if changed:
            self._new_mail(self._exists, "connected")
        self._folders_checked(connecting=True)

    def _login_phase(self, phase: Phase, done: LoggedIn, client: imap.IdleClient) -> None:
        """What the session does at each step of the shared login sequence."""
        if phase is Phase.AUTHENTICATING:
            self._set_state(State.AUTHENTICATING)
        elif phase is Phase.LOGGED_IN:
            self._recorder.clear_error(done.account.id)
            self._last_error = self._last_error_at = None
            self._logged_in()
        elif phase is Phase.SELECTING:
            self._set_state(State.SELECTING)
        elif phase is Phase.SELECTED and done.mark is not None:
            self._exists = done.mark.exists
            self._mark = done.mark  # a candidate: remembered once a scan covering it is
            # acknowledged. The SELECT result carried the count: from now on EXISTS/EXPUNGE
            # move it
            client.on_exists = self._on_exists
            client.on_expunge = self._on_expunge

    def _step_failed(self, failure: Failure, client: imap.IdleClient) -> None:
        """A login, IDLE, heartbeat or poll step failed: note why and close the connection
        (ClientService then schedules the retry; :meth:`_connection_ended` picks the delay
        when the connection is gone)."""
        if not self.running or client is not self._client:
            return None
        outcome = classify(failure)
        if outcome.cause == "protocol" and not failure.check(imap.IMAPError, SessionError):
            log.failure("{label} unexpected error", failure, label=self.account.label,
                        account_id=self.account.id)
        self._fail(outcome)
        self._cancel_timer()
        self._abort(client)
        return None

    # -- connected ----------------------------------------------------------------------

    def _acknowledged(self, ok: object, mark: MailboxMark) -> None:
        """The scan asked for with ``mark`` as the candidate ended: a 2xx answer covers
        it (the request went out after the session saw it), so it is the mark now. Not
        once the session has stopped: the account may be forgotten (its row deleted) or
        watched by a newer session (never a miss: at worst one more scan)."""
        if ok is True and self.running:
            self._memory.remember(self.account.id, mark)

    def _new_mail(self, exists: int, reason: str) -> None:
        """Ask for a scan; a Deferred returned by ``on_new_mail`` fires True once a scan
        covering it was acknowledged (2xx): the candidate mark is remembered then."""
        self._last_scan_reason = reason
        mark = self._mark
        try:
            acked = self._on_new_mail(self.account, exists, reason)
        except Exception:
            log.failure("{label} on_new_mail failed", label=self.account.label,
                        account_id=self.account.id)
            return
        if isinstance(acked, Deferred) and mark is not None:
            acked.addCallback(self._acknowledged, mark)
            acked.addErrback(lambda f: log.failure("remembering a mark failed", f))

    def _on_exists(self, count: int) -> None:
        if not self.running:
            return  # after stop, nobody cares
        previous, self._exists = self._exists, count
        if count <= previous:
            return
        if self._mark is not None:
            self._mark = self._mark.after_new_mail(previous, count)
        self._last_exists = (self._reactor.seconds(), count)
        metrics.EXISTS_EVENTS.inc()
        if self._exists_log is None:  # made at the first event: a flood folds into counts
            self._exists_log = exists_fold(self._timers, self.account.email,
                                           self.account.id, lambda: self._exists)
        self._exists_log.event()
        self._new_mail(count, "exists")

    def _on_expunge(self, seq: int) -> None:
        if self._exists:
            self._exists -= 1
        if self._mark is not None:
            self._mark = self._mark.after_expunge()

    def _on_bye(self, text: str) -> None:
        if self.running:
            self._fail(Outcome("bye", text or "server said BYE"))

    def _on_idle_ended(self, text: str) -> None:
        """The server ended IDLE by itself: enter it again. The heartbeat timer waits
        until the server has answered the new IDLE (a heartbeat in between would find the
        client not idling), then is armed again."""
        client = self._client
        if client is None or not self.running or self.state is not State.IDLE:
            return
        log.debug("{label} server ended IDLE ({text}); idling again",
                  label=self.account.label, text=self._scrubbed(text),
                  account_id=self.account.id)
        self._cancel_timer()
        again = client.idle()
        again.addCallback(self._idling_again, client)
        again.addErrback(self._step_failed, client)

    def _on_connection_lost(self, reason: Failure) -> None:
        self._cancel_timer()
        if not self.running:
            self._detach()
            return
        self._fail(classify(reason))
        self._connection_ended()

    # -- reconnecting -------------------------------------------------------------------

    def _connection_ended(self) -> None:
        """The current connection (or connect attempt) ended, for the reason noted by
        :meth:`_fail`: detach the client, pick the delay before the next attempt
        (:func:`~rebreak_idle.session.reconnect_policy.reaction`), record the error, log and
        count."""
        outcome, self._outcome = self._outcome or CLOSED, None
        account = self.account
        now = self._reactor.seconds()
        uptime = now - self._since
        healthy = self.state.ready and uptime >= self._healthy_after
        self._settle(outcome, uptime)
        self._release()
        self._detach()
        self._cancel_timer()
        delay, held_off = reaction(outcome, self._backoff,
                                   self._settings.auth_failure_holdoff, healthy,
                                   strikes=self._strikes)
        if outcome.kind == CREDENTIALS:
            self._strike(now + delay)
        self._delay = delay
        self._last_class = outcome.kind
        self._set_state(State.AUTH_FAILED if held_off else State.BACKOFF)
        metrics.RECONNECTS.labels(cause=outcome.cause).inc()
        metrics.CONNECTION_ENDS.labels(outcome.kind).inc()
        self._report(outcome, now)
        log.info("[idle/{email}] reconnecting in {delay}s (attempt {attempt})",
                 email=account.email, delay=format_delay(delay),
                 attempt=max(1, self._backoff.attempt), account_id=account.id)

    def _retry_delay(self, _failed_attempts: int) -> float:
        """ClientService's retry policy, called after :meth:`_connection_ended`: the delay
        that it picked (stopService cancels the wait when stopping)."""
        delay = self._delay
        return delay if delay is not None and self.running else 3600.0

    # -- stopping -----------------------------------------------------------------------

    def _goodbye_failed(self, failure: Failure) -> None:
        log.debug("{label} logout on stop failed: {error}", label=self.account.label,
                  error=describe(failure), account_id=self.account.id)
        return None
