"""``Supervisor``: keeps one session per active, valid row (CONTRACT §3, §7).

Every ``refresh_interval`` seconds (and about a second after each :meth:`request_refresh`,
which the daemon calls on every NOTIFY) it reads the active rows, turns them into accounts
with the injected ``decode(row)`` (which decrypts and validates), and reconciles:

* a new row gets a new session;
* a row that is gone or inactive has its session stopped (LOGOUT);
* a row whose ``connection_key`` changed has its session replaced (the new session
  starts once the old one has logged out: never two connections watching one mailbox);
* an unchanged row keeps its session untouched (no reconnect);
* a row that cannot be decrypted or is invalid gets ``last_connect_error`` (only when the
  text changed) and no session; the other rows are not affected.

New sessions are started at most ``connect_rate`` per second (the start-up ramp), and no
more than ``capacity`` run at once (what the process's descriptor limit allows,
:mod:`rebreak_idle.net.descriptors`): the accounts beyond wait in the queue, state
``waiting-for-descriptors``, said once in the log, and start when sessions end. A failed
refresh (database unreachable) logs one line and changes nothing. Refreshes never overlap:
a refresh asked for while one runs is coalesced into one more run after it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .. import metrics
from ..accounts.account import Account
from ..config import SupervisorSettings
from ..deferreds import Coalesced
from ..failures import describe, maskable, scrub
from ..interfaces import IAccountSource
from ..live_metrics import LIVE
from ..session.states import State, StateTally
from ..session.tokens import token_only_change
from .ramp_progress import RampProgress

__all__ = ["Decode", "InvalidRow", "Supervisor"]

log = Logger(namespace="rebreak_idle.supervisor")  # the namespace operators know


def _no(account: Account) -> bool:
    """A session that cannot take a new token without a restart."""
    return False


#: Seconds between a NOTIFY and the refresh it causes (notifications in between coalesce).
NOTIFY_DEBOUNCE = 1.0
#: The ramp starts sessions in small batches this many seconds apart (at most).
RAMP_TICK = 0.1
#: The state shown for an account that waits because the descriptor limit is reached.
WAITING_FOR_DESCRIPTORS = "waiting-for-descriptors"


@dataclass(frozen=True, slots=True)
class InvalidRow:
    """A row that cannot be watched, and why (``reason`` is stored as its
    ``last_connect_error``; it never holds a secret)."""

    id: str
    email: str | None
    reason: str


#: ``decode(row)``: the row's :class:`Account` (its secret decrypted), or an
#: :class:`InvalidRow` saying why it cannot be watched.
Decode = Callable[[Mapping[str, Any]], "Account | InvalidRow"]


class Supervisor(MultiService):
    """See the module docstring. ``store`` provides
    :class:`~rebreak_idle.interfaces.IAccountSource`; ``session_factory(account)`` returns
    an unstarted ``IService`` with ``.account`` and ``snapshot()``; ``account_filter(rows)``
    (replica leases) may narrow the active rows before reconciling;
    ``on_session_removed(account_id)`` is called once an account has no session left
    (stopped, none replacing it); ``after_refresh()`` runs after each successful refresh,
    as its last step (the store's pruning of rows of deleted accounts); ``capacity``:
    sessions running (or logging out) at most (None: no limit)."""

    def __init__(self, store: IAccountSource, session_factory: Callable[[Account], IService],
                 decode: Decode, settings: SupervisorSettings, clock: Any, *,
                 account_filter: Callable[[list[dict]], Deferred] | None = None,
                 on_session_removed: Callable[[str], None] | None = None,
                 after_refresh: Callable[[], Deferred] | None = None,
                 tally: StateTally | None = None,
                 capacity: int | None = None) -> None:
        super().__init__()
        self.after_refresh = after_refresh
        #: the sessions' count by state (each session made by ``session_factory`` moves
        #: it): :meth:`counts` reads it, never walking the sessions
        self.tally = StateTally() if tally is None else tally
        self.capacity = capacity
        #: accounts waiting for descriptors at the last count (the log line is said once)
        self._over_capacity = 0
        self.on_session_removed = on_session_removed
        self.store = store
        self.session_factory = session_factory
        self.decode = decode
        self.settings = settings
        self.clock = clock
        self.account_filter = account_filter
        self._secrets = maskable(settings.secret_values)
        self.sessions: dict[str, IService] = {}
        self._invalid: dict[str, InvalidRow] = {}
        self._queue: OrderedDict[str, IService] = OrderedDict()
        self._ramp: Any = None
        self._progress = RampProgress(clock, lambda: len(self._queue))
        #: account id -> the stop (LOGOUT) of its session, still running. One per account:
        #: a replacement session starts only after its predecessor's stop has fired.
        self._leaving: dict[str, Deferred] = {}
        self._stopping: dict[str, IService] = {}  # those sessions (shown nowhere)
        self._version = 0  # see version
        #: accounts whose new session waits for that stop (not started, not in the ramp)
        self._successors: set[str] = set()
        self._refresh = Coalesced(lambda: Deferred.fromCoroutine(self._refresh_once()),
                                  self._refresh_crashed)
        self._debounce: Any = None
        self._ready = False
        #: how long the stop waits for the sessions when set (the daemon's stop budget)
        self.stop_timeout: float | None = None
        timer = TimerService(settings.refresh_interval, self._tick)
        timer.clock = clock
        timer.setServiceParent(self)

    # -- public -----------------------------------------------------------------------

    @property
    def ramp(self) -> RampProgress:
        """The start-up ramp's progress lines; its ``on_settled`` hook runs once the ramp
        has settled (the daemon gives freed heap back then: :mod:`rebreak_idle.ops.memory`)."""
        return self._progress

    @property
    def ready(self) -> bool:
        """True once a refresh has succeeded."""
        return self._ready

    def snapshot(self) -> list[dict]:
        """One dict per session (its ``snapshot()``; state ``queued`` while it waits for the
        start-up ramp or for its predecessor's LOGOUT, ``waiting-for-descriptors`` while
        the descriptor limit holds it back) plus one per invalid row (state ``invalid``,
        ``last_error`` saying why)."""
        waiting = self._waiting_for_descriptors()
        return [self.snapshot_of(entry, waiting) for entry in
                (*self.sessions.values(), *self._invalid.values())]

    def snapshot_of(self, entry: IService | InvalidRow,
                    waiting: set[str] | None = None) -> dict:
        """The :meth:`snapshot` dict of one session or invalid row (``waiting``: the
        accounts held back by the descriptor limit, when the caller has them already)."""
        if isinstance(entry, InvalidRow):
            return {"id": entry.id, "email": entry.email, "state": "invalid",
                    "since": None, "attempt": 0, "next_attempt_in": None,
                    "last_error": entry.reason, "last_error_at": None,
                    "last_heartbeat": None, "last_exists": None,
                    "last_scan_reason": None}
        snap = dict(entry.snapshot())
        account_id = entry.account.id
        if self._is_queued(account_id):
            if waiting is None:
                waiting = self._waiting_for_descriptors()
            snap["state"] = WAITING_FOR_DESCRIPTORS if account_id in waiting else "queued"
        return snap

    @property
    def version(self) -> int:
        """Changes whenever the set of sessions or invalid rows changes (a refresh, a
        stop): what the status page may keep derived from that set until then."""
        return self._version

    def invalid_rows(self) -> list[InvalidRow]:
        return list(self._invalid.values())

    def stopping(self) -> list[IService]:
        """Sessions being stopped (logging out): no longer in :attr:`sessions`."""
        return list(self._stopping.values())

    def is_queued(self, account_id: str) -> bool:
        """Waiting for the start-up ramp, or for its predecessor's LOGOUT."""
        return self._is_queued(account_id)

    def counts(self) -> dict[str, int]:
        """The accounts by state as :meth:`snapshot` shows them (``queued``,
        ``waiting-for-descriptors``, ``invalid`` and the session states), from
        :attr:`tally` and the supervisor's own sets: O(sessions being stopped), not
        O(sessions)."""
        tally = self.tally.counts()
        for session in self._stopping.values():  # still moving the tally, shown nowhere
            state = getattr(session, "state", State.STOPPED)
            if state is not State.STOPPED:
                tally[state] -= 1
        queued = len(self._queue) + len(self._successors)
        waiting = self._waiting_count()
        out = {str(state): n for state, n in tally.items() if n}
        stopped = len(self.sessions) - queued - sum(tally.values())
        for name, n in (("stopped", stopped), ("queued", queued - waiting),
                        (WAITING_FOR_DESCRIPTORS, waiting),
                        ("invalid", len(self._invalid))):
            if n:
                out[name] = n
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
        LIVE.attach(self)  # the scrape-time gauges read the sessions from now on
        super().startService()  # the timer refreshes at once

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
        self._progress.stop()
        started, count = self.clock.seconds(), len(self.sessions)
        for account_id in list(self.sessions):
            self._stop_session(account_id)
        timeout = self.settings.shutdown_timeout if self.stop_timeout is None \
            else self.stop_timeout
        if not await self._all_stopped(timeout):
            log.warn("[idle/db] {n} sessions did not stop within {timeout:g}s",
                     n=len(self._leaving), timeout=timeout)
        else:
            log.info("[idle/db] {n} sessions stopped in {seconds:.1f}s", n=count,
                     seconds=self.clock.seconds() - started)
        timer_stopped.addErrback(lambda f: log.failure("[idle/db] refresh timer", f))
        self._update_gauge()
        LIVE.detach(self)

    def _all_stopped(self, timeout: float) -> Deferred:
        """Fires True when every stopping session is gone, False after ``timeout``. The
        deadline is on a Deferred of its own that the sessions' stops feed: a timeout must
        not cancel them (a DeferredList would)."""
        gone: Deferred = Deferred()
        defer.DeferredList(list(self._leaving.values())).chainDeferred(gone)
        gone.addCallback(lambda _: True)
        return gone.addTimeout(timeout, self.clock, onTimeoutCancel=lambda _r, _t: False)

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
                     sessions=len(self.sessions), error=scrub(describe(e), self._secrets))
            return False
        if not self.running:
            return False
        self._reconcile(rows)
        self._ready = True
        metrics.REFRESH_DURATION.observe(max(0.0, self.clock.seconds() - started))
        log.info("[idle/db] refreshed — {active} active connections, {sessions} sessions",
                 active=count, sessions=len(self.sessions))
        if self.after_refresh is not None:
            try:
                await self.after_refresh()
            except Exception:
                log.failure("[idle/db] after the refresh")
        return True

    # -- reconcile ----------------------------------------------------------------------

    def _reconcile(self, rows: list[dict]) -> None:
        wanted: dict[str, Account] = {}
        invalid: dict[str, InvalidRow] = {}
        for row in rows:
            account_id = str(row["id"])
            decoded = self.decode(row)
            if isinstance(decoded, InvalidRow):
                invalid[account_id] = decoded
                known = self._invalid.get(account_id)
                stored = row.get("last_connect_error")
                if decoded.reason not in (known.reason if known else None, stored):
                    self.store.record_error(account_id, decoded.reason)
                    log.warn("[idle/{email}] not watched: {error}", email=decoded.email,
                             error=decoded.reason, account_id=account_id)
                continue
            wanted[account_id] = decoded
        self._invalid = invalid

        for account_id, session in list(self.sessions.items()):
            account = wanted.get(account_id)
            if account is None:
                self._stop_session(account_id)
            elif account.connection_key != session.account.connection_key:
                if token_only_change(session.account, account) and \
                        getattr(session, "renew_secret", _no)(account):
                    continue  # a refreshed OAuth token: used at the next login
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
                    self._successors.add(account_id)
                    leaving.addBoth(self._predecessor_gone, account_id, session)
        self._version += 1
        self._ramp_step()
        self._update_gauge()

    def _stop_session(self, account_id: str) -> None:
        session = self.sessions.pop(account_id)
        self._version += 1
        self._successors.discard(account_id)
        if self._queue.pop(account_id, None) is not None or not session.running:
            self._removed(account_id)
            return
        d = defer.maybeDeferred(session.stopService)
        self._leaving[account_id] = d
        self._stopping[account_id] = session

        def gone(result: Any) -> None:
            del self._leaving[account_id]
            self._stopping.pop(account_id, None)
            self._removed(account_id)
            self._ramp_step()  # its descriptor is free: a waiting account may start
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
        if self.sessions.get(account_id) is session:
            self._successors.discard(account_id)
            if self.running:
                self._queue[account_id] = session
            self._ramp_step()
            self._update_gauge()
        return result

    # -- start-up ramp --------------------------------------------------------------------

    def _ramp_step(self) -> None:
        """Start the next batch of queued sessions and schedule the one after."""
        if self._ramp is not None or not self._queue or not self.running:
            return
        room = self._room()
        if room == 0:
            return  # the descriptor limit: a session that ends starts the next
        rate = self.settings.connect_rate
        batch = max(1, int(rate * RAMP_TICK))
        for _ in range(min(batch, len(self._queue), len(self._queue) if room is None
                           else room)):
            account_id, session = self._queue.popitem(last=False)
            try:
                session.startService()
            except Exception:
                log.failure("[idle/db] starting session {account_id} failed",
                            account_id=account_id)
            self._progress.started(session)
        if self._queue and self._room() != 0:
            self._ramp = self.clock.callLater(batch / rate, self._ramp_next)
        self._update_gauge()

    def _ramp_next(self) -> None:
        self._ramp = None
        self._ramp_step()

    def _is_queued(self, account_id: str) -> bool:
        """Waiting for the start-up ramp, or for its predecessor's LOGOUT."""
        return account_id in self._queue or account_id in self._successors

    def _room(self) -> int | None:
        """Sessions that may still start under ``capacity`` (None: no limit): running and
        logging-out sessions each hold a descriptor."""
        if self.capacity is None:
            return None
        started = len(self.sessions) - len(self._queue) - len(self._successors)
        return max(0, self.capacity - started - len(self._leaving))

    def _waiting_for_descriptors(self) -> set[str]:
        """The queued accounts that the descriptor limit holds back (the queue's tail)."""
        room = self._room()
        if room is None or room >= len(self._queue):
            return set()
        return set(islice(self._queue, room, None))

    def waiting_for_descriptors(self) -> set[str]:
        """The accounts the descriptor limit holds back (state ``waiting-for-descriptors``)."""
        return self._waiting_for_descriptors()

    def _waiting_count(self) -> int:
        """How many accounts :meth:`_waiting_for_descriptors` holds back, in O(1)."""
        room = self._room()
        return 0 if room is None else max(0, len(self._queue) - room)

    def _update_gauge(self) -> None:
        waiting = self._waiting_count()
        if waiting and not self._over_capacity:
            log.warn("[idle/db] the file descriptor limit is reached: it allows {capacity} "
                     "sessions, {waiting} accounts wait (state waiting-for-descriptors) until "
                     "sessions end or the daemon restarts with a higher limit "
                     "(docs/operations.md, \"File descriptors\")",
                     capacity=self.capacity, waiting=waiting)
        self._over_capacity = waiting
        metrics.SESSIONS.labels(state=WAITING_FOR_DESCRIPTORS).set(waiting)
        metrics.SESSIONS.labels(state="queued").set(
            len(self._queue) - waiting + len(self._successors))
        metrics.SESSIONS.labels(state="invalid").set(len(self._invalid))
