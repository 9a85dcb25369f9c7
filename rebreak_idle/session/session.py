"""``MailboxSession``: one account's life — connect, log in, select INBOX, IDLE, renew,
heartbeat, reconnect with backoff — and what to record and when to ask for a scan.

Seams: an :class:`~rebreak_idle.interfaces.IRecorder` (errors, cleared errors,
heartbeats), an ``on_new_mail(account, exists, reason)`` callable and the daemon's
:class:`~rebreak_idle.session.mailbox_marks.MailboxMemory`.

The session owns its state (one :class:`~rebreak_idle.session.states.State`, moved only by the
events of :data:`~rebreak_idle.session.states.MOVES`) and drives its connection itself: it connects,
and when a connection or an attempt ends (:meth:`MailboxSession._connection_ended`) it asks
:mod:`rebreak_idle.session.reconnect_policy` for the delay, records, logs and counts, and arms its
one wait, after which it connects again. It wires three collaborators, each with its own narrow
interface and tests:

* :class:`~rebreak_idle.session.heartbeat.Heartbeat`: the connection's one timer
  (heartbeat, renewal, poll) on the shared :class:`~rebreak_idle.timing.wheel.TimerWheel`;
* :class:`~rebreak_idle.session.mail_watch.MailWatch`: INBOX's count and mark, the extra
  folders, the scans asked for and the marks remembered after a 2xx;
* :class:`~rebreak_idle.session.provider_limits.ProviderLimits`: the host budget, credential
  strikes and hold-offs across restarts, early closes, the OAuth token re-read.

The login runs once the endpoint reports the connection; a failed login closes it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IProtocol, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import imap, metrics
from ..accounts.account import Account
from ..accounts.destinations import policy_for
from ..config import SessionSettings
from ..failures import account_secrets, describe, scrub
from ..interfaces import Holdoff, IHoldoffRecorder, IRecorder, ISession, OnNewMail
from ..net.connecting import (
    ClientFactory,
    enable_keepalive,
    server_endpoint,
    shared_tls_creator,
)
from ..timing.backoff import Backoff, format_delay
from ..timing.wheel import TimerWheel
from .heartbeat import Heartbeat, timer_resolution
from .host_budget import HostBudget
from .login_sequence import LoggedIn, LoginSequence, Phase
from .mail_watch import MailWatch
from .mailbox_marks import MailboxMemory
from .provider_limits import ProviderLimits
from .provider_signals import CREDENTIALS, RECYCLE
from .reconnect_policy import CLOSED, HEALTHY_AFTER, Outcome, SessionError, classify, reaction
from .states import Event, State, StateTally, check_transition, move, state_gauge
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


def _probe(result: object, results: list[object]) -> object:
    results.append(result)
    return result


@implementer(ISession)
class MailboxSession(Service):
    """Keeps one account watched for as long as the service runs. ``reactor``: IReactorTCP and
    IReactorTime. ``memory``: the daemon's
    :class:`~rebreak_idle.session.mailbox_marks.MailboxMemory` (default: one of its own).
    ``tls_creator(hostname)``: the TLS connection creator (default: shared per host). For tests and
    embedding: ``endpoint`` (instead of TCP and implicit TLS), ``jitter`` (callable in [0, 1)),
    ``timers`` (the TimerWheel the daemon's sessions share; default one of its own), ``tally`` (the
    daemon's count of sessions by state, :class:`~rebreak_idle.session.states.StateTally`);
    ``reread``, ``budget``, ``holdoffs``: see
    :class:`~rebreak_idle.session.provider_limits.ProviderLimits`."""

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
        self._settings = settings
        self._recorder = recorder
        self._reactor = reactor
        timers = TimerWheel(reactor, timer_resolution(settings)) if timers is None else timers
        self._timers = timers
        self._tls_creator = tls_creator
        self._endpoint = endpoint
        backoff_kwargs = {} if jitter is None else {"jitter": jitter}
        self._backoff = Backoff(settings.reconnect_delay, settings.reconnect_max_delay,
                                **backoff_kwargs)
        self._healthy_after = min(HEALTHY_AFTER, settings.heartbeat_interval)
        # the collaborators
        self.limits = ProviderLimits(reread, budget, holdoffs)
        self.mail = MailWatch(self, on_new_mail, MailboxMemory() if memory is None else memory,
                              settings, reactor, timers)
        self.heartbeat = Heartbeat(self, self.mail, settings, recorder, reactor, timers)

        self.state = State.STOPPED
        self._tally = StateTally() if tally is None else tally
        self._since = reactor.seconds()
        # the current connection
        self._client: imap.IdleClient | None = None
        self._attempt: Deferred[Any] | None = None  # the endpoint's connect, while pending
        self._lost: Deferred[None] | None = None  # fires when the connection is gone
        self._outcome: Outcome | None = None
        self._wait: IDelayedCall | None = None  # the wait before the next attempt
        # for the status endpoint
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._delay: float | None = None
        self._last_class: str | None = None

    # -- public -------------------------------------------------------------------------

    def startService(self) -> None:
        if self.running:
            return
        super().startService()
        self._backoff.reset()
        self._begin()

    def stopService(self) -> Deferred[None]:
        """DONE + LOGOUT (within a short deadline) when logged in, then close; fires when the
        connection is gone. Stopping while connecting or waiting to reconnect is immediate."""
        if not self.running:
            return succeed(None)
        super().stopService()
        self._cancel_wait()
        self.heartbeat.stop()
        self.mail.flush()
        if self._attempt is None and self._client is None:  # waiting, or not begun
            self._stopped()
            return succeed(None)
        ready = self.state.ready
        self._stopping()
        clock = self._reactor
        deadline = min(STOP_DEADLINE, self._settings.shutdown_timeout / 2)
        client = self._client
        if client is not None and ready:
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
            self._stopped()
            if isinstance(result, Failure):
                log.failure("{label} stopping the connection failed", result,
                            label=self.account.label, account_id=self.account.id)
            return None

        stopped = goodbye.addCallback(self._close)
        stopped.addBoth(finished)
        return stopped

    def renew_secret(self, account: Account) -> bool:
        """Take ``account``'s newer OAuth token for the next login, keeping the connection;
        False (the caller restarts the session) while waiting out a credential hold-off."""
        if self.state is State.AUTH_FAILED:
            return False
        self.account = account
        return True

    @property
    def last_heartbeat_at(self) -> float | None:
        """Reactor time (epoch seconds) of the last heartbeat: IDLE entered or a NOOP
        answered. None before the first one."""
        return self.heartbeat.last_at

    @property
    def last_error(self) -> str | None:
        """The last error shown for this account (scrubbed), or None since a login."""
        return self._last_error

    @property
    def last_exists_at(self) -> float | None:
        """Reactor time of the last EXISTS seen (the scrape-time gauges); None before."""
        exists = self.mail.last_exists
        return None if exists is None else exists[0]

    @property
    def queued(self) -> bool:
        """Connecting, and waiting for the host budget's admission."""
        return self.state is State.CONNECTING and not self.limits.admitted

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state for the status endpoint (no secret)."""
        exists = self.mail.last_exists
        return {
            "id": self.account.id,
            "email": self.account.email,
            "state": self.state.value,
            "since": _iso(self._since),
            "attempt": self._backoff.attempt,
            "next_attempt_in": self._delay if self.state.waiting else None,
            "last_error": self._last_error,
            "last_error_at": _iso(self._last_error_at),
            "last_heartbeat": _iso(self.heartbeat.last_at),
            "last_exists": None if exists is None else {"at": _iso(exists[0]),
                                                        "count": exists[1]},
            "last_scan_reason": self.mail.last_scan_reason,
            "last_end_class": self._last_class,
            "queued": self.queued,
        }

    # -- what the collaborators see (HeartbeatOwner, MailOwner) ---------------------------

    @property
    def email(self) -> str:
        return self.account.email

    @property
    def account_id(self) -> str:
        return self.account.id

    @property
    def client(self) -> imap.IdleClient | None:
        """The live connection's client, or None."""
        return self._client

    def current(self, client: imap.IdleClient) -> bool:
        """``client`` is the live connection and the session runs."""
        return client is self._client and self.running

    # -- state --------------------------------------------------------------------------

    def _on(self, event: Event) -> None:
        """Move by ``event`` (:data:`~rebreak_idle.session.states.MOVES`)."""
        self._set_state(move(self.state, event))

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

    def _stopping(self) -> None:
        """STOP: a connection (or attempt) is closing (stopping); a wait just ends
        (stopped)."""
        if self.state is not State.STOPPED and self.state is not State.STOPPING:
            self._on(Event.STOP)

    def _stopped(self) -> None:
        """The stopped session's connection is gone (GONE), or it had none."""
        self.limits.release()
        self._stopping()
        if self.state is State.STOPPING:
            self._on(Event.GONE)

    def _cancel_wait(self) -> None:
        wait, self._wait = self._wait, None
        if wait is not None and wait.active():
            wait.cancel()

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
        if transport is not None:
            transport.abortConnection()  # nothing when already gone

    # -- starting: connect now, or after a hold-off saved by an earlier run ---------------

    def _begin(self) -> None:
        self.limits.saved_holdoff(self.account).addCallback(self._resume)

    def _resume(self, held: Holdoff | None) -> None:
        """Connect, or first wait out a credential hold-off saved by an earlier session of
        the account (this process before a restart, or another replica before a
        takeover)."""
        if not self.running or self.state is not State.STOPPED:
            return
        now = self._reactor.seconds()
        if held is None:
            self._connect()
            return
        self._last_class = CREDENTIALS
        self._last_error = held.error
        self._last_error_at = held.error_at
        if held.until <= now:
            self._connect()
            return
        self._delay = held.until - now
        self._on(Event.HELD_OFF)
        log.info("[idle/{email}] credentials were rejected before a restart or takeover; "
                 "reconnecting in {delay}s (attempt {attempt})", email=self.account.email,
                 delay=format_delay(self._delay), attempt=held.strikes,
                 account_id=self.account.id)
        self._wait = self._timers.callLater(self._delay, self._connect)

    # -- connecting ---------------------------------------------------------------------

    def _tls_options(self) -> Any:
        if self._tls_creator is not None:
            return self._tls_creator(self.account.host)
        return shared_tls_creator(self.account.host, self._settings.tls_ca_file)

    def _make_endpoint(self) -> IStreamClientEndpoint:
        return self.limits.endpoint(self.account.host, self._bound_endpoint)

    def _bound_endpoint(self, source: str | None) -> IStreamClientEndpoint:
        if self._endpoint is not None:
            return self._endpoint
        return server_endpoint(self._reactor, self.account, self._settings.command_timeout,
                               self._tls_options,
                               policy_for(self._settings.allow_private_hosts), source)

    def _connect(self) -> None:
        """ATTEMPT: one connect attempt. An attempt that fails at once (inside
        ``connect()``) is reported on the next turn of the reactor, as a TCP endpoint
        reports a refused connection."""
        self._wait = None
        if not self.running or self._attempt is not None or self._client is not None:
            return
        self._outcome = None
        self.limits.release()
        self._on(Event.ATTEMPT)
        factory = ClientFactory(
            self._attach,
            clock=self._timers,
            command_timeout=self._settings.command_timeout,
            noop_timeout=self._settings.noop_timeout,
            allow_plaintext_auth=self.account.security == "plain",
        )
        try:
            connecting = self._make_endpoint().connect(factory)
        except Exception:
            connecting = fail()
        results: list[object] = []
        connecting.addBoth(_probe, results)
        if results and isinstance(results[0], Failure):
            failure = results[0]
            connecting.addErrback(_ignore)  # handed on below
            connecting = Deferred()
            self._reactor.callLater(0, connecting.errback, failure)
        self._attempt = connecting
        connecting.addCallbacks(self._transport_connected, self._connect_failed,
                                callbackArgs=(connecting,), errbackArgs=(connecting,))

    def _connect_failed(self, failure: Failure, attempt: Deferred[Any]) -> None:
        if attempt is not self._attempt:
            return None
        self._attempt = None
        if self.running and not failure.check(CancelledError):
            outcome = classify(failure)
            # nothing more specific will come for this attempt
            self._fail(Outcome(outcome.cause, outcome.text))
            self._connection_ended()
        return None

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

    def _transport_connected(self, protocol: IProtocol, attempt: Deferred[Any]) -> None:
        if attempt is self._attempt:
            self._attempt = None
        client = self._client
        if client is not None and self.running:
            enable_keepalive(client.transport)
            login = Deferred.fromCoroutine(self._login(client))
            login.addErrback(self.step_failed, client)

    async def _login(self, client: imap.IdleClient) -> None:
        done = await LoginSequence(
            client, self.account, self._tls_options, xoauth2=self._login_xoauth2,
            on_phase=lambda phase, done: self._login_phase(phase, done, client)).run()
        if not self.current(client):  # stopped meanwhile: the stop closes it
            return
        account, mark = done.account, done.mark
        mail = self.mail
        if mark is None or mail.mark is None:  # pragma: no cover - run() selected
            raise SessionError("protocol", "no SELECT answer")
        if done.status is not None:  # Courier: count and UIDNEXT from one STATUS answer
            mail.status(done.status)
        changed = mail.changed()
        await mail.watch_folders(client)  # REBREAK_EXTRA_FOLDERS: LIST, STATUS
        if client.has_idle:
            await client.idle()
        if not self.current(client):  # stopped meanwhile: the stop closes it
            return
        if client.has_idle:
            self._on(Event.IDLING)
        else:
            self._on(Event.POLLING)
        self.limits.ready()
        self.heartbeat.start(client, polling=self.state is State.POLLING)
        log.info("[idle/{email}] connected ({host}:{port})", email=account.email,
                 host=account.host, port=account.port, account_id=account.id,
                 mode=self.state.value, exists=mark.exists)
        if changed:
            mail.new_mail(mail.exists, "connected")
        mail.folders_checked(connecting=True)

    def _login_phase(self, phase: Phase, done: LoggedIn, client: imap.IdleClient) -> None:
        """What the session does at each step of the shared login sequence."""
        if not self.current(client):  # stopped meanwhile: the stop closes it
            return
        if phase is Phase.AUTHENTICATING:
            self._on(Event.GREETED)
        elif phase is Phase.LOGGED_IN:
            self._recorder.clear_error(done.account.id)
            self._last_error = self._last_error_at = None
            self.limits.logged_in(done.account.id)
        elif phase is Phase.SELECTING:
            self._on(Event.SELECTING)
        elif phase is Phase.SELECTED and done.mark is not None:
            # a candidate mark: remembered once a scan covering it is acknowledged. The
            # SELECT result carried the count: from now on EXISTS/EXPUNGE move it
            self.mail.selected(client, done.mark)

    async def _login_xoauth2(self, client: Any, account: Account) -> Account:
        """AUTHENTICATE XOAUTH2; a refused token re-reads the row once and, when the backend
        wrote a newer token, tries that on the same connection. Returns the account used."""
        try:
            await client.login_xoauth2(account.username, account.secret)
            return account
        except imap.AuthenticationFailed as refused:
            fresh = None
            if classify(Failure(refused)).kind == CREDENTIALS:
                fresh = await self.limits.fresher(account)
            if fresh is None or client is not self._client or not self.running:
                raise
        self.account = fresh
        await client.login_xoauth2(fresh.username, fresh.secret)
        return fresh

    def step_failed(self, failure: Failure, client: imap.IdleClient) -> None:
        """A login, IDLE, heartbeat or poll step failed: note why and close the connection
        (:meth:`_connection_ended` picks the delay when the connection is gone)."""
        if not self.current(client):
            return None
        outcome = classify(failure)
        if outcome.cause == "protocol" and not failure.check(imap.IMAPError, SessionError):
            log.failure("{label} unexpected error", failure, label=self.account.label,
                        account_id=self.account.id)
        self._fail(outcome)
        self.heartbeat.stop()
        self._abort(client)
        return None

    # -- connected ----------------------------------------------------------------------

    def _on_bye(self, text: str) -> None:
        if self.running:
            self._fail(Outcome("bye", text or "server said BYE"))

    def _on_idle_ended(self, text: str) -> None:
        """The server ended IDLE by itself: enter it again (the heartbeat's timer is armed
        again once the server answered the new IDLE)."""
        client = self._client
        if client is None or not self.running or self.state is not State.IDLE:
            return
        log.debug("{label} server ended IDLE ({text}); idling again",
                  label=self.account.label, text=self._scrubbed(text),
                  account_id=self.account.id)
        self.heartbeat.idle_ended(client).addErrback(self.step_failed, client)

    def _on_connection_lost(self, reason: Failure) -> None:
        self.heartbeat.stop()
        if not self.running:
            self._detach()
            lost, self._lost = self._lost, None
            if lost is not None:
                lost.callback(None)
            return
        self._fail(classify(reason))
        self._connection_ended()

    # -- reconnecting -------------------------------------------------------------------

    def _connection_ended(self) -> None:
        """The current connection (or connect attempt) ended, for the reason noted by
        :meth:`_fail`: detach the client, pick the delay before the next attempt
        (:func:`~rebreak_idle.session.reconnect_policy.reaction`), record the error, log
        and count, and wait (ENDED or REFUSED, then ATTEMPT when the wait is over)."""
        outcome, self._outcome = self._outcome or CLOSED, None
        account = self.account
        now = self._reactor.seconds()
        uptime = now - self._since
        state = self.state
        healthy = state.ready and uptime >= self._healthy_after
        limits = self.limits
        limits.settle(outcome, connecting=state is State.CONNECTING, ready=state.ready,
                      uptime=uptime, healthy_after=self._healthy_after)
        limits.release()
        self._detach()
        self.heartbeat.stop()
        delay, held_off = reaction(outcome, self._backoff,
                                   self._settings.auth_failure_holdoff, healthy,
                                   strikes=limits.strikes)
        if outcome.kind == CREDENTIALS:
            limits.strike(account, now + delay)
        self._delay = delay
        self._last_class = outcome.kind
        self._on(Event.REFUSED if held_off else Event.ENDED)
        metrics.RECONNECTS.labels(cause=outcome.cause).inc()
        metrics.CONNECTION_ENDS.labels(outcome.kind).inc()
        self._report(outcome, now)
        log.info("[idle/{email}] reconnecting in {delay}s (attempt {attempt})",
                 email=account.email, delay=format_delay(delay),
                 attempt=max(1, self._backoff.attempt), account_id=account.id)
        if self.running:  # (a recorder may have stopped the session)
            self._cancel_wait()
            self._wait = self._reactor.callLater(delay, self._connect)

    def _report(self, outcome: Outcome, now: float) -> None:
        """Record and log why the connection ended; a recycle is routine: the mailbox is
        fine, nothing is recorded and no ``connect failed`` line is logged."""
        account = self.account
        if outcome.cause == "descriptors":  # the process's limit: not the account's error
            log.warn("[idle/{email}] connect postponed: {reason}; not the account's error "
                     "(docs/operations.md, \"File descriptors\")", email=account.email,
                     reason=outcome.text, account_id=account.id)
            return
        if outcome.kind == RECYCLE:
            log.info("[idle/{email}] connection recycled by the server: {reason}",
                     email=account.email, reason=outcome.text, account_id=account.id)
            return
        self._last_error, self._last_error_at = outcome.text, now
        self._recorder.record_error(account.id, outcome.text)
        log.warn("[idle/{email}] connect failed: {error}", email=account.email,
                 error=outcome.text, cause=outcome.cause, kind=outcome.kind,
                 account_id=account.id)

    # -- stopping -----------------------------------------------------------------------

    def _close(self, _: object) -> Deferred[None] | None:
        """After the goodbye: cancel a pending attempt, or close the connection and wait
        until it is gone."""
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.cancel()
        client = self._client
        if client is None or client.transport is None:
            self._detach()
            return None
        # attached means its connectionLost has not come yet, even when the client is
        # already closing (LOGOUT answered): a TLS close takes a round trip more
        self._lost = lost = Deferred()
        if not client.closed:
            client.transport.loseConnection()
        return lost

    def _goodbye_failed(self, failure: Failure) -> None:
        log.debug("{label} logout on stop failed: {error}", label=self.account.label,
                  error=describe(failure), account_id=self.account.id)
        return None
