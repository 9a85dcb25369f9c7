"""``Supervisor``: keeps one session per active, valid row (CONTRACT §3, §7).

Every ``refresh_interval`` seconds (and, with a NOTIFY channel, about a second after each
notification) it reads the active rows, decrypts and validates them, and reconciles:

* a new row gets a new session;
* a row that is gone or inactive has its session stopped (LOGOUT);
* a row whose ``connection_key`` changed has its session replaced (the new session
  starts once the old one has logged out: never two connections watching one mailbox);
* an unchanged row keeps its session untouched (no reconnect);
* a row that cannot be decrypted or is invalid gets ``last_connect_error`` (only when the
  text changed) and no session; the other rows are not affected.

New sessions are started at most ``connect_rate`` per second (the start-up ramp). A failed
refresh (database unreachable) logs one line and changes nothing. Refreshes never overlap:
a refresh asked for while one runs is coalesced into one more run after it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from . import metrics
from .account import Account, InvalidAccount, account_from_row
from .config import Settings
from .deferreds import Coalesced
from .pool import db_error_text
from .secrets import SecretError, decrypt_secret

__all__ = ["AccountSource", "Supervisor"]

log = Logger()

#: Seconds between a NOTIFY and the refresh it causes (notifications in between coalesce).
NOTIFY_DEBOUNCE = 1.0
#: The ramp starts sessions in small batches this many seconds apart (at most).
RAMP_TICK = 0.1


class AccountSource(Protocol):
    """What the supervisor needs of :class:`~rebreak_idle.store.AccountStore`."""

    def active(self) -> Deferred: ...
    def record_error(self, account_id: str, text: str) -> None: ...
    def start(self) -> None: ...
    def close(self, timeout: float = ...) -> Deferred: ...
    def listen(self, channel: str, on_notify: Callable[[], None]) -> Any: ...


class Supervisor(MultiService):
    """See the module docstring. ``session_factory(account)`` returns an unstarted
    ``IService`` with ``.account`` and ``snapshot()``; ``account_filter(rows)`` (replica
    leases) may narrow the active rows before reconciling; ``on_session_removed(account_id)``
    is called once an account has no session left (stopped, none replacing it)."""

    def __init__(self, store: AccountSource, session_factory: Callable[[Account], IService],
                 settings: Settings, clock: Any, *,
                 account_filter: Callable[[list[dict]], Deferred] | None = None,
                 on_session_removed: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.on_session_removed = on_session_removed
        self.store = store
        self.session_factory = session_factory
        self.settings = settings
        self.clock = clock
        self.account_filter = account_filter
        key = settings.key_bytes
        self._decrypt: Callable[[str], str] = lambda v: decrypt_secret(v, key)
        self.sessions: dict[str, IService] = {}
        self._invalid: dict[str, tuple[Mapping[str, Any], str]] = {}
        self._queue: OrderedDict[str, IService] = OrderedDict()
        self._ramp: Any = None
        #: account id -> the stop (LOGOUT) of its session, still running. One per account:
        #: a replacement session starts only after its predecessor's stop has fired.
        self._leaving: dict[str, Deferred] = {}
        self._refresh = Coalesced(lambda: Deferred.fromCoroutine(self._refresh_once()),
                                  self._refresh_crashed)
        self._debounce: Any = None
        self._ready = False
        self.listener: Any = None  # the store's Listener when notify_channel is set
        timer = TimerService(settings.refresh_interval, self._tick)
        timer.clock = clock
        timer.setServiceParent(self)

    # -- public -----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once a refresh has succeeded."""
        return self._ready

    def snapshot(self) -> list[dict]:
        """One dict per session (its ``snapshot()``; state ``queued`` while it waits for the
        start-up ramp or for its predecessor's LOGOUT) plus one per invalid row (state
        ``invalid``, ``last_error`` saying why)."""
        out = []
        for account_id, session in self.sessions.items():
            snap = dict(session.snapshot())
            if account_id in self._queue or (not session.running
                                             and account_id in self._leaving):
                snap["state"] = "queued"
            out.append(snap)
        for account_id, (row, message) in self._invalid.items():
            out.append({"id": account_id, "email": row.get("email"), "state": "invalid",
                        "since": None, "attempt": 0, "next_attempt_in": None,
                        "last_error": message, "last_error_at": None, "last_heartbeat": None,
                        "last_exists": None, "last_scan_reason": None})
        return out

    def refresh(self) -> Deferred:
        """Read the rows and reconcile; fires with True (done) or False (the read failed).
        Never fails. Asked while a refresh runs, it runs once more after that one."""
        return self._refresh()

    def stop_all_sessions(self) -> None:
        """Stop every session now, without reading the table (a replica that lost its
        leases); the next successful refresh starts sessions again."""
        for account_id in list(self.sessions):
            self._stop_session(account_id)
        self._update_gauge()

    def request_refresh(self) -> None:
        """A refresh in about a second (NOTIFY); calls before then are folded into it."""
        if self._debounce is None and self.running:
            self._debounce = self.clock.callLater(NOTIFY_DEBOUNCE, self._debounced)

    # -- service ----------------------------------------------------------------------

    def startService(self) -> None:
        self.store.start()
        super().startService()  # the timer refreshes at once
        if self.settings.notify_channel:
            self.listener = self.store.listen(self.settings.notify_channel,
                                              self.request_refresh)

    def stopService(self) -> Deferred:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        timer_stopped = super().stopService()  # running = False: no more reconciling
        if self._debounce is not None and self._debounce.active():
            self._debounce.cancel()
        self._debounce = None
        if self._ramp is not None and self._ramp.active():
            self._ramp.cancel()
        self._ramp = None
        self._queue.clear()
        started, count = self.clock.seconds(), len(self.sessions)
        for account_id in list(self.sessions):
            self._stop_session(account_id)
        timeout = self.settings.shutdown_timeout
        if not await self._all_stopped(timeout):
            log.warn("[idle/db] {n} sessions did not stop within {timeout}s",
                     n=len(self._leaving), timeout=timeout)
        else:
            log.info("[idle/db] {n} sessions stopped in {seconds:.1f}s", n=count,
                     seconds=self.clock.seconds() - started)
        started, pending = self.clock.seconds(), self.store.pending
        await self.store.close(timeout)
        log.info("[idle/db] final write of {n} status updates took {seconds:.1f}s", n=pending,
                 seconds=self.clock.seconds() - started)
        timer_stopped.addErrback(lambda f: log.failure("[idle/db] refresh timer", f))
        self._update_gauge()

    def _all_stopped(self, timeout: float) -> Deferred:
        """Fires True when every stopping session is gone, False after ``timeout`` (the
        sessions' own Deferreds are left alone)."""
        waiter: Deferred = Deferred()
        timer = self.clock.callLater(timeout, lambda: waiter.called or waiter.callback(False))

        def all_gone(_: Any) -> None:
            if timer.active():
                timer.cancel()
            if not waiter.called:
                waiter.callback(True)

        defer.DeferredList(list(self._leaving.values())).addBoth(all_gone)
        return waiter

    # -- refresh ------------------------------------------------------------------------

    def _tick(self) -> Deferred:
        return self.refresh()

    def _debounced(self) -> None:
        self._debounce = None
        self.refresh()

    @staticmethod
    def _refresh_crashed(failure: Any) -> bool:
        log.failure("[idle/db] refresh crashed", failure)
        return False

    async def _refresh_once(self) -> bool:
        started = self.clock.seconds()
        try:
            rows = await self.store.active()
            count = len(rows)
            if self.account_filter is not None:
                rows = await self.account_filter(rows)
        except Exception as e:
            if not self.running:
                return False
            metrics.REFRESH_FAILURES.inc()
            log.warn("[idle/db] refresh failed, keeping {sessions} sessions: {error}",
                     sessions=len(self.sessions), error=self._scrub(db_error_text(e)))
            return False
        if not self.running:
            return False
        self._reconcile(rows)
        self._ready = True
        metrics.REFRESH_DURATION.observe(max(0.0, self.clock.seconds() - started))
        log.info("[idle/db] refreshed — {active} active connections, {sessions} sessions",
                 active=count, sessions=len(self.sessions))
        return True

    def _scrub(self, text: str) -> str:
        for secret in self.settings.secret_values():
            text = text.replace(secret, "***")
        return text

    # -- reconcile ----------------------------------------------------------------------

    def _reconcile(self, rows: list[dict]) -> None:
        wanted: dict[str, Account] = {}
        invalid: dict[str, tuple[Mapping[str, Any], str]] = {}
        ages: list[float] = []
        for row in rows:
            account_id = str(row["id"])
            try:
                wanted[account_id] = account_from_row(row, self._decrypt)
            except (SecretError, InvalidAccount) as e:
                message = str(e)
                invalid[account_id] = (row, message)
                known = self._invalid.get(account_id, (None, None))[1]
                if message not in (known, row.get("last_connect_error")):
                    self.store.record_error(account_id, message)
                    log.warn("[idle/{email}] not watched: {error}", email=row.get("email"),
                             error=message, account_id=account_id)
                continue
            if row.get("heartbeat_age") is not None:
                ages.append(float(row["heartbeat_age"]))
        self._invalid = invalid

        for account_id, session in list(self.sessions.items()):
            account = wanted.get(account_id)
            if account is None:
                self._stop_session(account_id)
            elif account.connection_key != session.account.connection_key:
                log.info("{label} settings changed; restarting the session",
                         label=account.label, account_id=account_id)
                self._stop_session(account_id)
        for account_id, account in wanted.items():
            if account_id not in self.sessions:
                session = self.session_factory(account)
                self.sessions[account_id] = session
                leaving = self._leaving.get(account_id)
                if leaving is None:
                    self._queue[account_id] = session
                else:  # one connection per mailbox: start after the old one's LOGOUT
                    leaving.addBoth(self._predecessor_gone, account_id, session)
        self._ramp_step()
        metrics.HEARTBEAT_AGE.set(max(ages) if ages else 0)
        self._update_gauge()

    def _stop_session(self, account_id: str) -> None:
        session = self.sessions.pop(account_id)
        if self._queue.pop(account_id, None) is not None or not session.running:
            self._removed(account_id)
            return
        d = defer.maybeDeferred(session.stopService)
        self._leaving[account_id] = d

        def gone(result: Any) -> None:
            del self._leaving[account_id]
            self._removed(account_id)
            self._update_gauge()

        d.addErrback(lambda f: log.failure("[idle/db] stopping session {account_id} failed", f,
                                           account_id=account_id))
        d.addBoth(gone)

    def _removed(self, account_id: str) -> None:
        """Call ``on_session_removed`` when no session of the account is left (none
        running, stopping or replacing it)."""
        if (self.on_session_removed is not None and account_id not in self.sessions
                and account_id not in self._leaving):
            try:
                self.on_session_removed(account_id)
            except Exception:
                log.failure("[idle/db] on_session_removed({account_id}) failed",
                            account_id=account_id)

    def _predecessor_gone(self, result: Any, account_id: str, session: IService) -> Any:
        """The previous session of this account has stopped: queue its successor, unless
        that one was dropped meanwhile or the supervisor is stopping."""
        if self.running and self.sessions.get(account_id) is session:
            self._queue[account_id] = session
            self._ramp_step()
        return result

    # -- start-up ramp --------------------------------------------------------------------

    def _ramp_step(self) -> None:
        """Start the next batch of queued sessions and schedule the one after."""
        if self._ramp is not None or not self._queue or not self.running:
            return
        rate = self.settings.connect_rate
        batch = max(1, int(rate * RAMP_TICK))
        for _ in range(min(batch, len(self._queue))):
            account_id, session = self._queue.popitem(last=False)
            try:
                session.startService()
            except Exception:
                log.failure("[idle/db] starting session {account_id} failed",
                            account_id=account_id)
        if self._queue:
            self._ramp = self.clock.callLater(batch / rate, self._ramp_next)
        self._update_gauge()

    def _ramp_next(self) -> None:
        self._ramp = None
        self._ramp_step()

    def _update_gauge(self) -> None:
        metrics.SESSIONS.labels(state="queued").set(len(self._queue))
        metrics.SESSIONS.labels(state="invalid").set(len(self._invalid))
