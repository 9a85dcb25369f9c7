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

Each account the supervisor knows has one :class:`AccountSlot`: its session or its
invalid row, in one :class:`SlotState` (the moves in :data:`SLOT_TRANSITIONS`, with the
event of each, checked on every move). The counts by slot state are kept up to date on
each move, so that :meth:`Supervisor.counts` reads them in O(1). A session that logs out
(a :class:`Departure`, at most one per account) is no longer the account's: the account
may already have a successor waiting for it (state ``SUCCESSOR``) or an invalid row.
``waiting-for-descriptors`` is not a state of its own: it is the tail of the ramp's
queue that the descriptor room does not reach, and moves with every other account's
start and stop (:meth:`Supervisor.waiting_for_descriptors`).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
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

__all__ = ["SLOT_ENTRIES", "SLOT_TRANSITIONS", "AccountSlot", "Decode", "Departure", "InvalidRow",
           "SlotState", "Supervisor"]

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


class SlotState(enum.Enum):
    """What an account the supervisor knows is doing (``AccountSlot.state``)."""

    QUEUED = "queued"        # its session is made and waits in the ramp's queue
    SUCCESSOR = "successor"  # its session waits for the previous one's LOGOUT (shown queued)
    RUNNING = "running"      # its session was started (the session's own states go on)
    INVALID = "invalid"      # the row cannot be watched: no session

    __hash__ = object.__hash__


QUEUED, SUCCESSOR, RUNNING, INVALID = SlotState
#: the states an account's slot enters with, and the event of each
SLOT_ENTRIES: dict[SlotState, str] = {
    QUEUED: "a valid row without a session logging out",
    SUCCESSOR: "a valid row while its previous session logs out",
    INVALID: "a row that cannot be watched",
}
#: state → the states it may move to, with the event of each move. Any slot may also be
#: dropped: its row is gone, changed or now invalid (a RUNNING session then departs).
SLOT_TRANSITIONS: dict[SlotState, frozenset[SlotState]] = {
    QUEUED: frozenset({
        RUNNING,    # the ramp starts it (room under the descriptor limit)
    }),
    SUCCESSOR: frozenset({
        QUEUED,     # the previous session's stop fired
    }),
    RUNNING: frozenset(),  # it only departs: row gone, changed or invalid; stop
    INVALID: frozenset({
        INVALID,    # the row is still invalid, maybe for another reason
    }),
}


class AccountSlot:
    """One account the supervisor knows: its state and its session (None when INVALID)
    or its invalid row (None otherwise)."""

    __slots__ = ("invalid", "session", "state")

    def __init__(self, state: SlotState, session: IService | None = None,
                 invalid: InvalidRow | None = None) -> None:
        self.state = state
        self.session = session
        self.invalid = invalid


class Departure:
    """A session logging out (no longer its account's): ``done`` fires once it stopped."""

    __slots__ = ("done", "session")

    def __init__(self, session: IService, done: Deferred) -> None:
        self.session = session
        self.done = done


class _Sessions(Mapping[str, IService]):
    """``Supervisor.sessions``: account id → its session (queued, waiting for its
    predecessor or started), a read-only view of the slots; its length in O(1)."""

    __slots__ = ("_sup",)

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor

    def __getitem__(self, account_id: str) -> IService:
        slot = self._sup._slots[account_id]
        if slot.session is None:
            raise KeyError(account_id)
        return slot.session

    def __len__(self) -> int:
        return self._sup._session_count()

    def __iter__(self) -> Iterator[str]:
        return (account_id for account_id, slot in list(self._sup._slots.items())
                if slot.session is not None)


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
        #: one slot per account known (a session or an invalid row), and the counts by
        #: slot state, kept up to date by _add, _move and _drop
        self._slots: dict[str, AccountSlot] = {}
        self._count: dict[SlotState, int] = dict.fromkeys(SlotState, 0)
        #: the ramp's order: the QUEUED slots, oldest first (kept by _add, _move, _drop)
        self._queue: OrderedDict[str, AccountSlot] = OrderedDict()
        #: account id → its previous session logging out (shown nowhere). One per
        #: account: a successor starts only after its predecessor's stop has fired.
        self._departures: dict[str, Departure] = {}
        #: account id → its session (a read-only view of the slots)
        self.sessions: Mapping[str, IService] = _Sessions(self)
        self._ramp: Any = None
        self._progress = RampProgress(clock, lambda: len(self._queue))
        self._version = 0  # see version
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
                (*self.sessions.values(), *self.invalid_rows())]

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
        return [slot.invalid for slot in list(self._slots.values())
                if slot.invalid is not None]

    def stopping(self) -> list[IService]:
        """Sessions being stopped (logging out): no longer in :attr:`sessions`."""
        return [departure.session for departure in self._departures.values()]

    def slot(self, account_id: str) -> AccountSlot | None:
        """The account's slot (None when the supervisor does not know it)."""
        return self._slots.get(account_id)

    def adopt(self, session: IService, *, queued: bool = False) -> None:
        """Take a session made elsewhere as its account's (tests, benchmarks): QUEUED
        (waits for the ramp's next step) or, by default, RUNNING as it is."""
        account_id = session.account.id  # type: ignore[attr-defined]
        self._add(account_id, AccountSlot(QUEUED, session))
        if not queued:
            self._move(account_id, self._slots[account_id], RUNNING)
        self._version += 1

    def adopt_invalid(self, row: InvalidRow) -> None:
        """Take an invalid row as if a refresh had read it (tests, benchmarks)."""
        self._add(row.id, AccountSlot(INVALID, invalid=row))
        self._version += 1

    def stop_session(self, account_id: str) -> None:
        """Stop the account's session now (its row is not read again until the next
        refresh, which starts a new one if the row is still active)."""
        self._stop_session(account_id)
        self._update_gauge()

    def is_queued(self, account_id: str) -> bool:
        """Waiting for the start-up ramp, or for its predecessor's LOGOUT."""
        return self._is_queued(account_id)

    def counts(self) -> dict[str, int]:
        """The accounts by state as :meth:`snapshot` shows them (``queued``,
        ``waiting-for-descriptors``, ``invalid`` and the session states), from
        :attr:`tally` and the counts by slot state: O(sessions being stopped), not
        O(sessions)."""
        tally = self.tally.counts()
        for departure in self._departures.values():  # still moving the tally, shown nowhere
            state = getattr(departure.session, "state", State.STOPPED)
            if state is not State.STOPPED:
                tally[state] -= 1
        queued = self._count[QUEUED] + self._count[SUCCESSOR]
        waiting = self._waiting_count()
        out = {str(state): n for state, n in tally.items() if n}
        stopped = self._session_count() - queued - sum(tally.values())
        for name, n in (("stopped", stopped), ("queued", queued - waiting),
                        (WAITING_FOR_DESCRIPTORS, waiting),
                        ("invalid", self._count[INVALID])):
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

    def release_accounts(self, account_ids: frozenset[str]) -> Deferred[None]:
        """Stop the sessions of accounts this replica no longer holds, at once and
        without a read (a lease round released or lost them): queued ones leave the ramp
        and never start, running ones log out. Fires once every session of those accounts
        (a predecessor still logging out included) has stopped; never fails."""
        for account_id in account_ids:
            slot = self._slots.get(account_id)
            if slot is not None and slot.state is not INVALID:
                self._stop_session(account_id)
        self._update_gauge()
        stopping = [self._departures[a].done for a in account_ids if a in self._departures]
        gone: Deferred = defer.DeferredList(stopping, consumeErrors=True)
        return gone.addCallback(lambda _: None)

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
        self._progress.stop()
        started, count = self.clock.seconds(), len(self.sessions)
        for account_id in list(self.sessions):
            self._stop_session(account_id)
        timeout = self.settings.shutdown_timeout if self.stop_timeout is None \
            else self.stop_timeout
        if not await self._all_stopped(timeout):
            log.warn("[idle/db] {n} sessions did not stop within {timeout:g}s",
                     n=len(self._departures), timeout=timeout)
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
        defer.DeferredList([d.done for d in self._departures.values()]).chainDeferred(gone)
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
                slot = self._slots.get(account_id)
                known = slot.invalid if slot is not None else None
                stored = row.get("last_connect_error")
                if decoded.reason not in (known.reason if known else None, stored):
                    self.store.record_error(account_id, decoded.reason)
                    log.warn("[idle/{email}] not watched: {error}", email=decoded.email,
                             error=decoded.reason, account_id=account_id)
                continue
            wanted[account_id] = decoded

        for account_id, slot in list(self._slots.items()):
            if slot.state is INVALID:
                if account_id not in invalid:
                    self._drop(account_id)  # valid again, or gone
                continue
            session = slot.session
            assert session is not None
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
        for account_id, row in invalid.items():
            slot = self._slots.get(account_id)
            if slot is None:
                self._add(account_id, AccountSlot(INVALID, invalid=row))
            else:
                self._move(account_id, slot, INVALID)
                slot.invalid = row
        for account_id, account in wanted.items():
            if account_id not in self._slots:
                session = self.session_factory(account)
                departure = self._departures.get(account_id)
                if departure is None:
                    self._add(account_id, AccountSlot(QUEUED, session))
                else:  # one connection per mailbox: start after the old one's LOGOUT
                    self._add(account_id, AccountSlot(SUCCESSOR, session))
                    departure.done.addBoth(self._predecessor_gone, account_id, session)
        self._version += 1
        self._ramp_step()
        self._update_gauge()

    # -- the slots' moves (the only places that change _slots, _count and _queue) -------

    def _add(self, account_id: str, slot: AccountSlot) -> None:
        if account_id in self._slots or slot.state not in SLOT_ENTRIES:
            raise RuntimeError(f"account {account_id} cannot enter as {slot.state.value}")
        self._slots[account_id] = slot
        self._count[slot.state] += 1
        if slot.state is QUEUED:
            self._queue[account_id] = slot

    def _move(self, account_id: str, slot: AccountSlot, to: SlotState) -> None:
        if to not in SLOT_TRANSITIONS[slot.state]:
            raise RuntimeError(f"account {account_id}: {slot.state.value} cannot move to "
                               f"{to.value}")
        if slot.state is QUEUED:
            self._queue.pop(account_id, None)
        self._count[slot.state] -= 1
        slot.state = to
        self._count[to] += 1
        if to is QUEUED:
            self._queue[account_id] = slot

    def _drop(self, account_id: str) -> AccountSlot:
        slot = self._slots.pop(account_id)
        self._count[slot.state] -= 1
        if slot.state is QUEUED:
            self._queue.pop(account_id, None)
        return slot

    def _session_count(self) -> int:
        count = self._count
        return count[QUEUED] + count[SUCCESSOR] + count[RUNNING]

    def _stop_session(self, account_id: str) -> None:
        slot = self._drop(account_id)
        session = slot.session
        assert session is not None
        self._version += 1
        if slot.state is not RUNNING or not session.running:
            self._removed(account_id)
            return
        d = defer.maybeDeferred(session.stopService)
        self._departures[account_id] = Departure(session, d)

        def gone(result: Any) -> None:
            del self._departures[account_id]
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
                and account_id not in self._departures):
            try:
                self.on_session_removed(account_id)
            except Exception:
                log.failure("[idle/db] on_session_removed({account_id}) failed",
                            account_id=account_id)

    def _predecessor_gone(self, result: Any, account_id: str, session: IService) -> Any:
        """The previous session of this account has stopped: queue its successor, unless
        that one was dropped meanwhile or the supervisor is stopping."""
        slot = self._slots.get(account_id)
        if slot is not None and slot.session is session and self.running:
            self._move(account_id, slot, QUEUED)
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
            account_id, slot = next(iter(self._queue.items()))
            self._move(account_id, slot, RUNNING)
            session = slot.session
            assert session is not None
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
        slot = self._slots.get(account_id)
        return slot is not None and (slot.state is QUEUED or slot.state is SUCCESSOR)

    def _room(self) -> int | None:
        """Sessions that may still start under ``capacity`` (None: no limit): running and
        logging-out sessions each hold a descriptor."""
        if self.capacity is None:
            return None
        return max(0, self.capacity - self._count[RUNNING] - len(self._departures))

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
            self._count[QUEUED] - waiting + self._count[SUCCESSOR])
        metrics.SESSIONS.labels(state="invalid").set(self._count[INVALID])
