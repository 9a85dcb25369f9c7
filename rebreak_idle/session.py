"""``MailboxSession``: one account's life — connect, log in, select INBOX, IDLE, renew,
heartbeat, reconnect with backoff — and what to record and when to ask for a scan.

The session talks to the rest of the daemon through two seams only: an
:class:`~rebreak_idle.interfaces.IRecorder` (errors, cleared errors, heartbeats) and an
``on_new_mail(account, exists, reason)`` callable.

Connecting and retrying is Twisted's :class:`~twisted.application.internet.ClientService`;
the session wraps its endpoint (to see every attempt and every connect error) and gives it
a retry policy that reads why the last connection ended: exponential backoff with jitter
for network, TLS, protocol and timeout failures (reset after a connection that stayed
healthy), a long hold-off after the server rejected the credentials.

The login sequence runs after ClientService reports the connection, not in its
``prepareConnection`` hook: a server that closes the connection during the login (common
after a failed authentication) would otherwise hit a missing transition of ClientService's
state machine. A failed login closes the connection, which ClientService treats like any
other lost connection.

Per session there is at most one pending timer (``_timer``, on the
:class:`~rebreak_idle.wheel.TimerWheel` the daemon's sessions share): the next
heartbeat/renewal while idling, the next poll while polling.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet import error as ierror
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import imap, metrics
from .account import Account
from .backoff import Backoff, format_delay
from .config import Settings
from .failures import describe
from .interfaces import IRecorder, OnNewMail
from .tls import TLSClientEndpoint, client_tls_options
from .wheel import TimerWheel

__all__ = ["CAUSES", "STATES", "MailboxSession", "timer_resolution"]

log = Logger(namespace="rebreak_idle.session")

STATES = ("connecting", "authenticating", "idle", "polling", "backoff", "auth-failed",
          "stopped")
CAUSES = ("network", "tls", "auth", "bye", "timeout", "protocol")

#: RFC 5530 response codes of a login NO that say "try again later", not "wrong secret":
#: these get the normal backoff instead of the long hold-off.
TRANSIENT_LOGIN_CODES = ("[UNAVAILABLE]", "[SERVERBUG]", "[INUSE]", "[LIMIT]")

#: What this process last saw of each mailbox: account id → (UIDVALIDITY, UIDNEXT or the
#: EXISTS count when the server sends no UIDNEXT). Shared by the sessions of one process so
#: that a session restarted by the supervisor does not rescan an unchanged mailbox.
MAILBOX_MEMORY: dict[str, tuple[Any, ...]] = {}

#: Longest wait for DONE + LOGOUT when stopping, and extra time for the close itself.
STOP_DEADLINE = 5.0
STOP_GRACE = 2.0
#: A connection that stayed up this long (capped by the heartbeat interval) resets backoff.
HEALTHY_AFTER = 60.0

_TCP_KEEPALIVE_OPTIONS = (
    # (option name, value): first probe after 60 s idle, then every 20 s, dead after 4 misses
    ("TCP_KEEPIDLE", 60),
    ("TCP_KEEPINTVL", 20),
    ("TCP_KEEPCNT", 4),
)


class _SessionError(Exception):
    """A failure the session itself detects (missing STARTTLS, a stuck step)."""

    def __init__(self, cause: str, text: str) -> None:
        super().__init__(text)
        self.cause = cause
        self.text = text


class _Outcome:
    """Why the current connection (attempt) ended. ``weak`` outcomes (a bare connection
    loss) give way to a more specific one seen for the same connection."""

    __slots__ = ("cause", "text", "weak")

    def __init__(self, cause: str, text: str, weak: bool = False) -> None:
        self.cause = cause
        self.text = text
        self.weak = weak

    def __repr__(self) -> str:
        return f"_Outcome({self.cause!r}, {self.text!r}, weak={self.weak})"


_TLS_TEXTS = ("certificate verify failed", "TLS error")


def classify(failure: Failure) -> _Outcome:
    """The reconnect cause and text of a failure (a bare loss of the connection is a weak
    "network" outcome that a more specific reason of the same connection overrides)."""
    exc = failure.value
    if isinstance(exc, _SessionError):
        return _Outcome(exc.cause, exc.text)
    text = describe(failure)
    if isinstance(exc, imap.ConnectionLost):
        # the client turns the transport's reason into its text
        if text.startswith(_TLS_TEXTS):
            return _Outcome("tls", text)
        return _Outcome("network", text, weak=True)
    if isinstance(exc, imap.AuthenticationFailed):
        return _Outcome("auth", text)
    if isinstance(exc, imap.CommandTimeout):
        return _Outcome("timeout", text)
    if isinstance(exc, imap.ServerBye):
        return _Outcome("bye", text)
    if isinstance(exc, imap.IMAPError):
        return _Outcome("protocol", text)
    module = type(exc).__module__
    if module.startswith(("OpenSSL", "service_identity")) or module == "rebreak_idle.tls":
        return _Outcome("tls", text)
    if isinstance(exc, ierror.TimeoutError | ierror.TCPTimedOutError | TimeoutError):
        return _Outcome("timeout", text)
    if isinstance(exc, ierror.ConnectionDone | ierror.ConnectionLost):
        return _Outcome("network", text, weak=True)
    if isinstance(exc, ierror.ConnectError | ierror.DNSLookupError | OSError):
        return _Outcome("network", text)
    return _Outcome("protocol", text)


def _ignore(*args: Any) -> None:
    return None


def timer_resolution(settings: Settings) -> float:
    """Tick of the sessions' :class:`~rebreak_idle.wheel.TimerWheel`: 1 s, or a twentieth of
    the shortest heartbeat, poll or command interval when that is shorter (so a timer is
    never more than 5 % of its interval late)."""
    shortest = min(settings.heartbeat_interval, settings.poll_interval,
                   settings.noop_timeout, settings.command_timeout)
    return max(0.001, min(1.0, shortest / 20))


#: SESSIONS{state} children by state (``labels()`` takes a lock and builds a key per call)
_STATE_GAUGES: dict[str, Any] = {}


def _state_gauge(state: str) -> Any:
    gauge = _STATE_GAUGES.get(state)
    if gauge is None:
        gauge = _STATE_GAUGES[state] = metrics.SESSIONS.labels(state=state)
    return gauge


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


@functools.lru_cache(maxsize=4096)
def _shared_tls_creator(hostname: str, ca_file: str | None) -> Any:
    """One TLS context per (host, CA file), shared by every session of that host: building
    a context loads the trust store, which 10,000 sessions must not each do."""
    return client_tls_options(hostname, ca_file)


def _enable_keepalive(transport: Any) -> None:
    """TCP keepalive with short probe intervals where the platform allows (TLS wrappers
    forward these calls to the TCP transport)."""
    setter = getattr(transport, "setTcpKeepAlive", None)
    if setter is None:
        return
    try:
        setter(True)
        handle = transport.getHandle()
        for name, value in _TCP_KEEPALIVE_OPTIONS:
            option = getattr(socket, name, None)
            if option is not None:
                handle.setsockopt(socket.IPPROTO_TCP, option, value)
    except (AttributeError, OSError):  # pragma: no cover - platform without these options
        pass


class _QuietClientService(ClientService):
    """ClientService without its own per-retry info line (the session logs the contract's
    ``reconnecting in`` line instead; 10,000 sessions need no second one)."""

    _log = Logger(observer=lambda event: None)


@implementer(IStreamClientEndpoint)
class _SessionEndpoint:
    """Tells the session about every connect attempt, its success and its failure."""

    def __init__(self, session: MailboxSession, make: Callable[[], IStreamClientEndpoint]):
        self._session = session
        self._make = make

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        session = self._session
        session._attempt_started()
        try:
            connecting = self._make().connect(factory)
        except Exception:
            connecting = Deferred()
            connecting.errback()
        connecting.addCallbacks(session._transport_connected, session._connect_failed)
        return connecting


class _ClientFactory(Factory):
    noisy = False

    def __init__(self, session: MailboxSession, **client_kwargs: Any) -> None:
        self._session = session
        self._kwargs = client_kwargs

    def buildProtocol(self, addr: Any) -> imap.IdleClient:
        client = imap.IdleClient(**self._kwargs)
        client.factory = self
        self._session._attach(client)
        return client


class MailboxSession(Service):
    """Keeps one account watched for as long as the service runs.

    ``reactor`` provides IReactorTCP and IReactorTime (a ``MemoryReactorClock`` in tests).
    ``tls_creator(hostname)`` returns the client TLS connection creator (default: shared
    :func:`~rebreak_idle.tls.client_tls_options` with ``settings.tls_ca_file``).
    Keyword-only extras for tests and embedding: ``endpoint`` (an IStreamClientEndpoint used
    instead of HostnameEndpoint and implicit TLS), ``jitter`` (0-argument callable in
    [0, 1)), ``memory`` (mapping of what was last seen per mailbox, default process-wide),
    ``timers`` (the :class:`~rebreak_idle.wheel.TimerWheel` that the daemon's sessions
    share for their heartbeat timers and command deadlines; default one of its own).
    """

    def __init__(
        self,
        account: Account,
        settings: Settings,
        recorder: IRecorder,
        on_new_mail: OnNewMail,
        reactor: Any,
        *,
        tls_creator: Callable[[str], Any] | None = None,
        endpoint: IStreamClientEndpoint | None = None,
        jitter: Callable[[], float] | None = None,
        memory: MutableMapping[str, tuple[Any, ...]] | None = None,
        timers: TimerWheel | None = None,
    ) -> None:
        self.account = account
        self._settings = settings
        self._recorder = recorder
        self._on_new_mail = on_new_mail
        self._reactor = reactor
        self._timers = (TimerWheel(reactor, timer_resolution(settings)) if timers is None
                        else timers)
        self._tls_creator = tls_creator
        self._endpoint = endpoint
        self._memory = MAILBOX_MEMORY if memory is None else memory
        backoff_kwargs = {} if jitter is None else {"jitter": jitter}
        self._backoff = Backoff(settings.reconnect_delay, settings.reconnect_max_delay,
                                **backoff_kwargs)
        self._healthy_after = min(HEALTHY_AFTER, settings.heartbeat_interval)
        self._service: ClientService | None = None
        self._stopping = False
        self._in_policy = False

        self.state = "stopped"
        self._since = reactor.seconds()
        # the current connection
        self._client: imap.IdleClient | None = None
        self._outcome: _Outcome | None = None
        self._timer: IDelayedCall | None = None
        self._ready_at: float | None = None
        self._idle_since = 0.0
        self._exists: int | None = None
        self._mailbox_key: tuple[Any, ...] | None = None
        # for the status endpoint
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._last_heartbeat: float | None = None
        self._last_exists: tuple[float, int] | None = None
        self._last_scan_reason: str | None = None
        self._delay: float | None = None

    # -- public -------------------------------------------------------------------------

    def startService(self) -> None:
        if self.running:
            return
        super().startService()
        self._stopping = False
        self._backoff.reset()
        endpoint = _SessionEndpoint(self, self._make_endpoint)
        factory = _ClientFactory(
            self,
            clock=self._timers,
            command_timeout=self._settings.command_timeout,
            noop_timeout=self._settings.noop_timeout,
            allow_plaintext_auth=self.account.security == "plain",
        )
        self._service = _QuietClientService(
            endpoint, factory, retryPolicy=self._retry_delay, clock=self._reactor)
        self._service.startService()

    def stopService(self) -> Deferred[None]:
        """DONE + LOGOUT (within a short deadline) when logged in, then close; fires when the
        connection is gone. Stopping while connecting or waiting to reconnect is immediate."""
        if not self.running:
            return succeed(None)
        super().stopService()
        self._stopping = True
        self._cancel_timer()
        service, self._service = self._service, None
        assert service is not None
        clock = self._reactor
        deadline = min(STOP_DEADLINE, self._settings.shutdown_timeout / 2)
        client = self._client
        if client is not None and self.state in ("idle", "polling"):
            goodbye: Deferred[Any] = Deferred.fromCoroutine(self._goodbye(client))
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
            self._set_state("stopped")
            if isinstance(result, Failure):
                log.failure("{label} stopping the connection failed", result,
                            label=self.account.label, account_id=self.account.id)
            return None

        def stop_connecting(_: object) -> Deferred[None]:
            if self._in_policy:
                # called back from inside ClientService's own transition (a recorder that
                # stops its session at once): let that transition finish first
                return deferLater(clock, 0, service.stopService)
            return service.stopService()

        stopped = goodbye.addCallback(stop_connecting)
        stopped.addBoth(finished)
        return stopped

    @property
    def last_heartbeat_at(self) -> float | None:
        """Reactor time (epoch seconds) of the last heartbeat: IDLE entered or a NOOP
        answered. None before the first one."""
        return self._last_heartbeat

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state for the status endpoint (no secret)."""
        exists = self._last_exists
        return {
            "id": self.account.id,
            "email": self.account.email,
            "state": self.state,
            "since": _iso(self._since),
            "attempt": self._backoff.attempt,
            "next_attempt_in": (self._delay if self.state in ("backoff", "auth-failed")
                                else None),
            "last_error": self._last_error,
            "last_error_at": _iso(self._last_error_at),
            "last_heartbeat": _iso(self._last_heartbeat),
            "last_exists": None if exists is None else {"at": _iso(exists[0]),
                                                        "count": exists[1]},
            "last_scan_reason": self._last_scan_reason,
        }

    # -- state --------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        old = self.state
        if old == state:
            return
        self.state = state
        self._since = self._reactor.seconds()
        if old != "stopped":
            _state_gauge(old).dec()
        if state != "stopped":
            _state_gauge(state).inc()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _fail(self, outcome: _Outcome) -> None:
        """Remember why this connection ends (the first specific reason wins)."""
        current = self._outcome
        if current is None or (current.weak and not outcome.weak):
            self._outcome = outcome

    def _abort(self, client: imap.IdleClient) -> None:
        transport = client.transport
        if transport is not None and not client.closed:
            transport.abortConnection()

    # -- connecting ---------------------------------------------------------------------

    def _make_endpoint(self) -> IStreamClientEndpoint:
        if self._endpoint is not None:
            return self._endpoint
        account = self.account
        host, timeout = account.host, max(1, int(self._settings.command_timeout))
        endpoint: IStreamClientEndpoint
        if isIPAddress(host):  # an IP literal needs no resolver (and no thread)
            endpoint = TCP4ClientEndpoint(self._reactor, host, account.port, timeout=timeout)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self._reactor, host, account.port, timeout=timeout)
        else:
            endpoint = HostnameEndpoint(self._reactor, host, account.port, timeout=timeout)
        if account.security == "tls":
            endpoint = TLSClientEndpoint(self._tls_options(), endpoint)
        return endpoint

    def _tls_options(self) -> Any:
        if self._tls_creator is not None:
            return self._tls_creator(self.account.host)
        return _shared_tls_creator(self.account.host, self._settings.tls_ca_file)

    def _attempt_started(self) -> None:
        self._outcome = None
        self._ready_at = None
        self._exists = None
        self._detach()
        self._set_state("connecting")

    def _connect_failed(self, failure: Failure) -> Failure:
        if not self._stopping and not failure.check(CancelledError):
            outcome = classify(failure)
            outcome.weak = False  # nothing more specific will come for this attempt
            self._fail(outcome)
        return failure

    def _attach(self, client: imap.IdleClient) -> None:
        """A connection was built: route the client's events to this session (bound
        methods: the events of the current client only; :meth:`_detach` unhooks a client
        that is no longer the current one)."""
        self._detach()
        self._client = client
        client.on_exists = self._on_exists
        client.on_expunge = self._on_expunge
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
        if client is not None and not self._stopping:
            _enable_keepalive(client.transport)
            login = Deferred.fromCoroutine(self._login(client))
            login.addErrback(self._step_failed, client)
        return protocol

    async def _login(self, client: imap.IdleClient) -> None:
        account = self.account
        await client.greeted  # the client's greeting deadline applies
        if account.security == "starttls":
            if not client.has_starttls:
                raise _SessionError("protocol", "server does not offer STARTTLS")
            await client.startTLS(self._tls_options())
        self._set_state("authenticating")
        if account.auth_method == "xoauth2":
            await client.login_xoauth2(account.username, account.secret)
        else:
            await client.login(account.username, account.secret)
        self._recorder.clear_error(account.id)
        self._last_error = self._last_error_at = None
        mailbox = await client.select()
        exists = int(mailbox.get("EXISTS") or 0)
        uidvalidity, uidnext = mailbox.get("UIDVALIDITY"), mailbox.get("UIDNEXT")
        self._exists = exists
        key = (uidvalidity, uidnext) if uidnext is not None else (uidvalidity, None, exists)
        changed = self._memory.get(account.id) != key
        self._remember(key)
        if client.has_idle:
            await client.idle()
            state = "idle"
        else:
            state = "polling"
        now = self._reactor.seconds()
        self._ready_at = self._idle_since = now
        self._set_state(state)
        self._heartbeat()
        log.info("[idle/{email}] connected ({host}:{port})", email=account.email,
                 host=account.host, port=account.port, account_id=account.id,
                 mode=state, exists=exists)
        self._schedule()
        if changed:
            self._new_mail(self._exists, "connected")

    def _step_failed(self, failure: Failure, client: imap.IdleClient) -> None:
        """A login, IDLE, heartbeat or poll step failed: note why and close the connection
        (ClientService then schedules the retry through :meth:`_retry_delay`)."""
        if self._stopping or client is not self._client:
            return None
        outcome = classify(failure)
        if outcome.cause == "protocol" and not failure.check(imap.IMAPError, _SessionError):
            log.failure("{label} unexpected error", failure, label=self.account.label,
                        account_id=self.account.id)
        self._fail(outcome)
        self._cancel_timer()
        self._abort(client)
        return None

    # -- connected ----------------------------------------------------------------------

    def _remember(self, key: tuple[Any, ...]) -> None:
        self._mailbox_key = key
        self._memory[self.account.id] = key

    def _heartbeat(self) -> None:
        self._last_heartbeat = self._reactor.seconds()
        self._recorder.record_heartbeat(self.account.id)

    def _new_mail(self, exists: int, reason: str) -> None:
        self._last_scan_reason = reason
        try:
            self._on_new_mail(self.account, exists, reason)
        except Exception:
            log.failure("{label} on_new_mail failed", label=self.account.label,
                        account_id=self.account.id)

    def _on_exists(self, count: int) -> None:
        if self._client is None or self._exists is None or self._stopping:
            return  # during SELECT the result carries the count; after stop, nobody cares
        previous, self._exists = self._exists, count
        if count <= previous:
            return
        key = self._mailbox_key
        if key is not None and len(key) == 2 and isinstance(key[1], int):
            # new messages take UIDs from UIDNEXT on: keep the expected UIDNEXT in step so
            # that a reconnect does not rescan what this connection already announced
            self._remember((key[0], key[1] + count - previous))
        elif key is not None and len(key) == 3:
            self._remember((key[0], None, count))
        self._last_exists = (self._reactor.seconds(), count)
        metrics.EXISTS_EVENTS.inc()
        log.info("[idle/{email}] exists-event received (new mail)", email=self.account.email,
                 account_id=self.account.id, exists=count)
        self._new_mail(count, "exists")

    def _on_expunge(self, seq: int) -> None:
        if self._client is not None and self._exists:
            self._exists -= 1

    def _on_bye(self, text: str) -> None:
        if self._client is not None and not self._stopping:
            self._fail(_Outcome("bye", text or "server said BYE"))

    def _on_idle_ended(self, text: str) -> None:
        """The server ended IDLE by itself: enter it again."""
        client = self._client
        if client is None or self._stopping or self.state != "idle":
            return
        log.debug("{label} server ended IDLE ({text}); idling again",
                  label=self.account.label, text=text, account_id=self.account.id)
        again = client.idle()
        again.addCallback(lambda _: setattr(self, "_idle_since", self._reactor.seconds()))
        again.addErrback(self._step_failed, client)

    def _on_connection_lost(self, reason: Failure) -> None:
        if self._client is None:
            return
        self._cancel_timer()
        self._detach()
        if not self._stopping:
            self._fail(classify(reason))

    def _schedule(self) -> None:
        """Arm the one timer for the next heartbeat, renewal or poll."""
        settings = self._settings
        base = self._last_heartbeat if self._last_heartbeat is not None else self._ready_at
        assert base is not None
        if self.state == "polling":
            due = base + settings.poll_interval
        else:
            due = min(self._idle_since + settings.idle_renew, base + settings.heartbeat_interval)
        self._cancel_timer()
        self._timer = self._timers.callLater(due - self._reactor.seconds(), self._tick)

    def _tick(self) -> None:
        self._timer = None
        client = self._client
        if client is None or self._stopping:
            return
        if self.state == "polling":
            step = Deferred.fromCoroutine(self._poll(client))
        elif self._reactor.seconds() >= ((self._last_heartbeat or 0.0)
                                         + self._settings.heartbeat_interval):
            # DONE, NOOP and IDLE in one write; the NOOP's OK records the heartbeat. No
            # answer to DONE or NOOP within noop_timeout fails with CommandTimeout and the
            # client closes the connection (half-open TCP, NAT drop). Plain callbacks, not
            # a coroutine: this runs 10,000 times per heartbeat interval.
            step = client.done_noop(idle_again=True)
            step.addCallback(self._heartbeat_answered, client)
        else:
            step = Deferred.fromCoroutine(self._renew(client))
        step.addErrback(self._step_failed, client)

    def _heartbeat_answered(self, _: object, client: imap.IdleClient) -> Deferred[None]:
        self._heartbeat()
        return client.idle().addCallback(self._idling_again, client)

    def _idling_again(self, _: object, client: imap.IdleClient) -> None:
        self._idle_since = self._reactor.seconds()
        if client is self._client and not self._stopping:
            self._schedule()

    async def _renew(self, client: imap.IdleClient) -> None:
        """End IDLE with DONE and enter it again (no heartbeat was due)."""
        log.info("[idle/{email}] idle renewing (25min threshold)",
                 email=self.account.email, account_id=self.account.id)
        await client.done()
        await client.idle()
        self._idling_again(None, client)

    async def _poll(self, client: imap.IdleClient) -> None:
        await client.noop()
        self._heartbeat()
        if client is self._client and not self._stopping:
            self._schedule()

    # -- reconnecting -------------------------------------------------------------------

    def _retry_delay(self, _failed_attempts: int) -> float:
        """ClientService's retry policy: called once per failed attempt or lost
        connection; logs, records and returns the delay before the next attempt."""
        if self._stopping:
            return 3600.0  # stopService cancels this wait at once
        account = self.account
        now = self._reactor.seconds()
        outcome = self._outcome or _Outcome("network", "connection closed", weak=True)
        self._outcome = None
        if self._ready_at is not None and now - self._ready_at >= self._healthy_after:
            self._backoff.reset()
        self._ready_at = None
        self._detach()
        self._exists = None
        self._cancel_timer()
        if outcome.cause == "auth" and not outcome.text.upper().startswith(
                TRANSIENT_LOGIN_CODES):
            self._backoff.attempt += 1
            delay = self._settings.auth_failure_holdoff
            state = "auth-failed"
        else:
            delay = self._backoff.next()
            state = "backoff"
        self._delay = delay
        self._last_error, self._last_error_at = outcome.text, now
        self._set_state(state)
        metrics.RECONNECTS.labels(cause=outcome.cause).inc()
        self._in_policy = True
        try:
            self._recorder.record_error(account.id, outcome.text)
        finally:
            self._in_policy = False
        log.warn("[idle/{email}] connect failed: {error}", email=account.email,
                 error=outcome.text, cause=outcome.cause,
                 account_id=account.id)
        log.info("[idle/{email}] reconnecting in {delay}s (attempt {attempt})",
                 email=account.email, delay=format_delay(delay),
                 attempt=self._backoff.attempt, account_id=account.id)
        return delay

    # -- stopping -----------------------------------------------------------------------

    async def _goodbye(self, client: imap.IdleClient) -> None:
        await client.logout()  # ends a running IDLE with DONE first

    def _goodbye_failed(self, failure: Failure) -> None:
        log.debug("{label} logout on stop failed: {error}", label=self.account.label,
                  error=describe(failure), account_id=self.account.id)
        return None
