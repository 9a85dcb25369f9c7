"""``Listener``: one dedicated connection kept in ``LISTEN <channel>`` (instant refresh).

LISTEN holds session state, so this connection must reach PostgreSQL directly (or through a
pooler in session mode), never through a transaction-mode pooler; see docs/notify.md.
The connection is checked with ``SELECT 1`` every ``ping_interval`` seconds (a silent
network cut is noticed) and reopened with backoff whenever it dies.

After every LISTEN the listener checks itself: it sends a NOTIFY on the channel from a
second, short-lived connection, with a unique payload, and expects it within
:data:`SELF_TEST_WAIT` seconds. A transaction-mode pooler (PgBouncer ``pool_mode =
transaction``) accepts LISTEN but never delivers the notifications; then it warns, once,
and the daemon keeps refreshing on its timer. Self-test payloads (of any replica) never
cause a refresh.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..deferreds import Waiters, within
from ..failures import describe
from ..timing.backoff import Backoff
from .connect import DBConnection, StatementTimeout, connect, new_connection, with_deadline

__all__ = ["SELF_TEST_PREFIX", "SELF_TEST_WAIT", "Listener", "quote_ident"]

log = Logger()

#: Seconds the self-test NOTIFY may take to come back.
SELF_TEST_WAIT = 5.0
#: The payload of every self-test NOTIFY begins with this (then a random hex string).
SELF_TEST_PREFIX = "rebreak-idle-self-test:"


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier in double quotes."""
    return '"' + name.replace('"', '""') + '"'


class Listener:
    """Calls ``on_notify()`` for every NOTIFY on ``channel``, and once after every
    reconnect (notifications sent while the connection was down are lost)."""

    def __init__(self, dsn: str, channel: str, on_notify: Callable[[], None], reactor: Any,
                 *, clock: Any = None, connect_timeout: float = 10.0,
                 retry_delay: float = 1.0, max_retry_delay: float = 30.0,
                 ping_interval: float = 60.0, refresh_interval: float | None = None
                 ) -> None:
        self._dsn = dsn
        self.channel = channel
        self._on_notify = on_notify
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._connect_timeout = connect_timeout
        #: reconnect delays: doubling from ``retry_delay`` up to ``max_retry_delay``
        self._backoff = Backoff(retry_delay, max_retry_delay, spread=0.0)
        self._ping_interval = ping_interval
        self._conn: DBConnection | None = None
        self._connecting: DBConnection | None = None
        self._retry: Any = None
        self._ping: LoopingCall | None = None
        self._waiters = Waiters()
        self._ever_listened = False
        self.running = False
        #: seconds between the daemon's periodic refreshes (named in the warning)
        self._refresh_interval = refresh_interval
        self._self_test: tuple[str, Deferred] | None = None
        #: whether the last self-test NOTIFY came back (None: not known yet)
        self.notifications_arrive: bool | None = None
        #: self-tests that ran to a result (True or False)
        self.self_tests = 0
        self._warned = False
        self._notifier: DBConnection | None = None

    @property
    def listening(self) -> bool:
        return self._conn is not None and self._conn.alive

    def start(self) -> None:
        if not self.running:
            self.running = True
            self._attempt()

    def stop(self) -> None:
        self.running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._stop_ping()
        self._end_self_test()
        if self._connecting is not None:
            self._connecting.kill()  # the attempt fails and, stopped, schedules nothing
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.lost_callbacks.clear()
            conn.kill()

    def when_listening(self) -> Deferred:
        """A Deferred that fires once LISTEN is in place (at once if it is now)."""
        return succeed(None) if self.listening else self._waiters.wait()

    def _attempt(self) -> None:
        self._retry = None
        d = Deferred.fromCoroutine(self._open())
        d.addErrback(self._failed)

    async def _open(self) -> None:
        conn = self._connecting = new_connection(self._reactor)
        try:
            await connect(self._dsn, self._reactor, self._connect_timeout, conn)
            await conn.runOperation(f"LISTEN {quote_ident(self.channel)}")
        except BaseException:
            conn.kill()
            raise
        finally:
            self._connecting = None
        if not self.running:
            conn.kill()
            return
        conn.addNotifyObserver(self._notified)
        conn.lost_callbacks.append(self._lost)
        self._conn = conn
        self._backoff.reset()
        log.info("[idle/db] listening on channel {channel}", channel=self.channel)
        self._ping = LoopingCall(self._check)
        self._ping.clock = self._clock
        self._ping.start(self._ping_interval, now=False).addErrback(
            lambda f: log.failure("[idle/db] listen check stopped", f))
        again = self._ever_listened
        self._ever_listened = True
        self._waiters.fire(None)
        if again:
            self._on_notify()
        Deferred.fromCoroutine(self.self_test(conn)).addErrback(
            lambda f: log.failure("[idle/db] LISTEN self-test crashed", f))

    async def self_test(self, conn: DBConnection) -> bool | None:
        """Send a NOTIFY with a unique payload from another connection and wait for it on
        ``conn``; True when it came back, False (one warning) when not, None when it could
        not be sent or the connection went away meanwhile."""
        payload = SELF_TEST_PREFIX + uuid.uuid4().hex
        arrived: Deferred = Deferred()
        self._self_test = (payload, arrived)
        try:
            sent = await self._send_notify(payload)
            if not sent:
                return None
            came = await within(arrived, SELF_TEST_WAIT, self._clock)
        finally:
            self._self_test = None
        if conn is not self._conn or not self.running:
            return None
        self.notifications_arrive = came
        self.self_tests += 1
        if came:
            log.debug("[idle/db] LISTEN self-test: notifications arrive on {channel}",
                      channel=self.channel)
        elif not self._warned:
            self._warned = True
            every = (f"every {self._refresh_interval:g}s" if self._refresh_interval
                     else "on the refresh timer")
            log.warn("[idle/db] notifications do not arrive on channel {channel}; a "
                     "transaction pooler (PgBouncer in transaction mode?) drops them — "
                     "refreshing {every} instead (point DATABASE_URL at PostgreSQL or a "
                     "session-mode pooler: docs/notify.md)", channel=self.channel,
                     every=every)
        return came

    async def _send_notify(self, payload: str) -> bool:
        conn = self._notifier = new_connection(self._reactor)
        try:
            await connect(self._dsn, self._reactor, self._connect_timeout, conn)
            late = StatementTimeout(
                f"the self-test NOTIFY took longer than {self._connect_timeout:g}s")
            await with_deadline(conn.runOperation("SELECT pg_notify(%s, %s)",
                                                  (self.channel, payload)),
                                self._connect_timeout, self._clock, conn.kill, late)
        except Exception as e:
            if self.running:
                log.warn("[idle/db] LISTEN self-test: could not send a NOTIFY on {channel}: "
                         "{error}", channel=self.channel, error=describe(e))
            return False
        finally:
            self._notifier = None
            conn.kill()
        return True

    def _end_self_test(self) -> None:
        """Stop a running self-test at once (the listener stops or lost its connection)."""
        if self._notifier is not None:
            self._notifier.kill()
        test = self._self_test
        if test is not None and not test[1].called:
            test[1].callback(None)

    def _notified(self, notify: Any) -> None:
        if notify.channel != self.channel:
            return
        payload = notify.payload or ""
        if payload.startswith(SELF_TEST_PREFIX):  # ours or another replica's: no refresh
            test = self._self_test
            if test is not None and payload == test[0] and not test[1].called:
                test[1].callback(None)
            return
        self._on_notify()

    def _check(self) -> Deferred | None:
        conn = self._conn
        if conn is None or not conn.alive:
            return None
        late = StatementTimeout(f"the listen check took longer than {self._connect_timeout:g}s")
        d = with_deadline(conn.runOperation("SELECT 1"), self._connect_timeout, self._clock,
                          conn.kill, late)
        return d.addErrback(lambda _: conn.kill())

    def _lost(self, conn: DBConnection) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        self._stop_ping()
        self._end_self_test()
        if self.running:
            log.warn("[idle/db] LISTEN connection lost; reconnecting")
            self._schedule()

    def _failed(self, failure: Any) -> None:
        if not self.running:
            return
        delay = self._schedule()
        log.warn("[idle/db] LISTEN {channel} failed, retrying in {delay:.0f}s: {error}",
                 channel=self.channel, delay=delay, error=describe(failure))

    def _schedule(self) -> float:
        """Schedule the next attempt (unless one is scheduled); return its delay."""
        if self._retry is None:
            delay = self._backoff.next()
            self._retry = self._clock.callLater(delay, self._attempt)
            return delay
        return self._retry.getTime() - self._clock.seconds()

    def _stop_ping(self) -> None:
        if self._ping is not None and self._ping.running:
            self._ping.stop()
        self._ping = None
