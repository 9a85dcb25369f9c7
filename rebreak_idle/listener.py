"""``Listener``: one dedicated connection kept in ``LISTEN <channel>`` (instant refresh).

LISTEN holds session state, so this connection must reach PostgreSQL directly (or through a
pooler in session mode), never through a transaction-mode pooler; see docs/notify.md.
The connection is checked with ``SELECT 1`` every ``ping_interval`` seconds (a silent
network cut is noticed) and reopened with backoff whenever it dies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .pool import _Connection, connect, db_error_text, new_connection

__all__ = ["Listener", "quote_ident"]

log = Logger()


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier in double quotes."""
    return '"' + name.replace('"', '""') + '"'


class Listener:
    """Calls ``on_notify()`` for every NOTIFY on ``channel``, and once after every
    reconnect (notifications sent while the connection was down are lost)."""

    def __init__(self, dsn: str, channel: str, on_notify: Callable[[], None], reactor: Any,
                 *, clock: Any = None, connect_timeout: float = 10.0,
                 retry_delay: float = 1.0, max_retry_delay: float = 30.0,
                 ping_interval: float = 60.0) -> None:
        self._dsn = dsn
        self.channel = channel
        self._on_notify = on_notify
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._connect_timeout = connect_timeout
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._delay = retry_delay
        self._ping_interval = ping_interval
        self._conn: _Connection | None = None
        self._connecting: _Connection | None = None
        self._retry: Any = None
        self._ping: LoopingCall | None = None
        self._waiters: list[Deferred] = []
        self._ever_listened = False
        self.running = False

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
        if self._connecting is not None:
            self._connecting.kill()  # the attempt fails and, stopped, schedules nothing
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.lost_callbacks.clear()
            conn.kill()

    def when_listening(self) -> Deferred:
        """A Deferred that fires once LISTEN is in place (at once if it is now)."""
        if self.listening:
            return Deferred.fromCoroutine(_noop())
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

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
        self._delay = self._retry_delay
        log.info("[idle/db] listening on channel {channel}", channel=self.channel)
        self._ping = LoopingCall(self._check)
        self._ping.clock = self._clock
        self._ping.start(self._ping_interval, now=False).addErrback(
            lambda f: log.failure("[idle/db] listen check stopped", f))
        again = self._ever_listened
        self._ever_listened = True
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.callback(None)
        if again:
            self._on_notify()

    def _notified(self, notify: Any) -> None:
        if notify.channel == self.channel:
            self._on_notify()

    def _check(self) -> Deferred | None:
        conn = self._conn
        if conn is None or not conn.alive:
            return None
        timer = self._clock.callLater(self._connect_timeout, conn.kill)

        def stop_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        d = conn.runOperation("SELECT 1").addBoth(stop_timer)
        return d.addErrback(lambda _: conn.kill())

    def _lost(self, conn: _Connection) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        self._stop_ping()
        if self.running:
            log.warn("[idle/db] LISTEN connection lost; reconnecting")
            self._schedule()

    def _failed(self, failure: Any) -> None:
        if not self.running:
            return
        log.warn("[idle/db] LISTEN {channel} failed, retrying in {delay:.0f}s: {error}",
                 channel=self.channel, delay=self._delay, error=db_error_text(failure.value))
        self._schedule()

    def _schedule(self) -> None:
        if self._retry is None:
            self._retry = self._clock.callLater(self._delay, self._attempt)
            self._delay = min(self._delay * 2, self._max_retry_delay)

    def _stop_ping(self) -> None:
        if self._ping is not None and self._ping.running:
            self._ping.stop()
        self._ping = None


async def _noop() -> None:
    return None
