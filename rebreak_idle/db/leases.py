"""Replica leases: several daemons share the accounts of one database (docs/replicas.md).

Each replica heartbeats into ``rebreak_idle.replicas`` and holds one row per watched account
in ``rebreak_idle.leases``; both tables belong to the daemon (nothing is added to the
backend's tables). Every ``lease_renew`` seconds, and whenever the supervisor refreshes its
account list, a replica runs one *round* — a single transaction, so it works through a
transaction-mode pooler (no advisory locks, no session state, no prepared statements):

1. heartbeat (upsert its replica row) and count the live replicas (seen within one TTL);
2. drop its leases of accounts that are no longer active;
3. renew its other leases for one TTL;
4. fair share = ceil(active accounts / live replicas): above it, release the extra leases
   so that a new replica finds work; below it, claim unowned or expired leases with
   ``INSERT ... ON CONFLICT DO NOTHING`` and ``SELECT ... FOR UPDATE SKIP LOCKED``.

A replica's first round only registers it (heartbeat, renewal of leases it still holds from
before a restart): it claims and releases only from the round one renewal interval later,
when every replica started at about the same time has its heartbeat in the live count (so
that the first one up does not claim everything and give two thirds back).

A release is a hand-over in three steps, so that no account is ever watched twice: the
round stops renewing the released leases and calls ``on_release(ids)`` (the supervisor
stops those sessions at once: LOGOUT, queued ones never start); once they have stopped, the
rows are deleted. Another replica claims only rows that are missing or expired, so it
cannot take an account before its old session has logged out (or, if that hangs, before the
unrenewed lease has run out, one TTL after its last renewal).

The supervisor watches only the rows :meth:`LeaseKeeper.filter` returns. A replica that has
not completed a round for one TTL can no longer prove that it owns anything: its owned set
becomes empty and ``on_lost_ownership()`` is called, before any other replica may take over.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import metrics
from ..config import LeaseSettings
from ..failures import describe
from .connect import StatementTimeout, connect, new_connection, with_deadline

__all__ = ["LEASES_SQL", "LeaseKeeper", "QuotedIds", "RoundResult"]

LEASES_SQL = """
CREATE SCHEMA IF NOT EXISTS rebreak_idle;
CREATE TABLE IF NOT EXISTS rebreak_idle.leases (
    connection_id uuid PRIMARY KEY,
    replica_id    text,
    expires_at    timestamptz NOT NULL
);
ALTER TABLE rebreak_idle.leases ALTER COLUMN replica_id DROP NOT NULL;
CREATE INDEX IF NOT EXISTS leases_replica_idx ON rebreak_idle.leases (replica_id);
CREATE TABLE IF NOT EXISTS rebreak_idle.replicas (
    replica_id   text PRIMARY KEY,
    seen_at      timestamptz NOT NULL
);
"""

log = Logger(namespace="rebreak_idle.leases")

#: ``run_interaction(interaction)``: run ``interaction(cursor)`` (which returns a Deferred)
#: in one transaction and fire with its result — txpostgres ``runInteraction``.
RunInteraction = Callable[[Callable[[Any], Deferred]], Deferred]

# -- SQL of one round (parameters: r = replica id, now, ttl seconds, ids = uuid[]) ----------

_HEARTBEAT = """
INSERT INTO rebreak_idle.replicas (replica_id, seen_at)
VALUES (%(r)s, coalesce(to_timestamp(%(clock)s), now()))
ON CONFLICT (replica_id) DO UPDATE SET seen_at = EXCLUDED.seen_at
RETURNING seen_at
"""
_LIVE = """
WITH gone AS (
    DELETE FROM rebreak_idle.replicas WHERE replica_id IN (
        SELECT replica_id FROM rebreak_idle.replicas
        WHERE seen_at < %(now)s - 10 * %(ttl)s * interval '1 second'
        FOR UPDATE SKIP LOCKED))
SELECT count(*) FROM rebreak_idle.replicas
WHERE seen_at >= %(now)s - %(ttl)s * interval '1 second'
"""
_DROP_INACTIVE = """
DELETE FROM rebreak_idle.leases
WHERE replica_id = %(r)s AND NOT (connection_id = ANY(%(ids)s::uuid[]))
"""
# leases being handed over (their sessions are stopping) are not renewed
_RENEW = """
UPDATE rebreak_idle.leases SET expires_at = %(now)s + %(ttl)s * interval '1 second'
WHERE replica_id = %(r)s AND NOT (connection_id = ANY(%(releasing)s::uuid[]))
RETURNING connection_id::text
"""
# the rows of released leases whose sessions have stopped
_FREE = """
DELETE FROM rebreak_idle.leases
WHERE replica_id = %(r)s AND connection_id = ANY(%(free)s::uuid[])
"""
# Unowned accounts get a placeholder row (no replica, expired) in id order — the same order
# in every replica, so that concurrent inserts wait on each other without deadlocking; the
# claim then takes expired rows that no concurrent claimer has locked.
_PLACEHOLDERS = """
INSERT INTO rebreak_idle.leases (connection_id, replica_id, expires_at)
SELECT t.id, NULL, '-infinity' FROM unnest(%(ids)s::uuid[]) AS t(id)
WHERE NOT EXISTS (SELECT 1 FROM rebreak_idle.leases l WHERE l.connection_id = t.id)
ORDER BY t.id
ON CONFLICT (connection_id) DO NOTHING
"""
_CLAIM = """
UPDATE rebreak_idle.leases l
SET replica_id = %(r)s, expires_at = %(now)s + %(ttl)s * interval '1 second'
FROM (SELECT connection_id FROM rebreak_idle.leases
      WHERE connection_id = ANY(%(ids)s::uuid[]) AND expires_at < %(now)s
      ORDER BY connection_id LIMIT %(k)s
      FOR UPDATE SKIP LOCKED) c
WHERE l.connection_id = c.connection_id
RETURNING l.connection_id::text
"""
# Rows of accounts this replica no longer knows, expired for over a TTL (deleted accounts).
_COLLECT = """
DELETE FROM rebreak_idle.leases WHERE connection_id IN (
    SELECT connection_id FROM rebreak_idle.leases
    WHERE expires_at < %(now)s - %(ttl)s * interval '1 second'
      AND NOT (connection_id = ANY(%(ids)s::uuid[]))
    FOR UPDATE SKIP LOCKED)
"""
_RELEASE_ALL = """
WITH me AS (DELETE FROM rebreak_idle.replicas WHERE replica_id = %(r)s)
DELETE FROM rebreak_idle.leases WHERE replica_id = %(r)s
"""

_RETRYABLE = {"40P01", "40001"}  # deadlock detected, serialization failure


@dataclass(frozen=True)
class RoundResult:
    """What one round found: the leases held afterwards and how they changed."""

    owned: frozenset[str]
    live: int
    share: int | None  # None when the active accounts are not known yet
    claimed: int = 0
    released: int = 0
    #: the leases released by this round (not renewed; deleted once their sessions stop)
    releasing: frozenset[str] = frozenset()


def fair_share(accounts: int, live: int) -> int:
    """The most accounts one of ``live`` replicas takes: ceil(accounts / live)."""
    return math.ceil(accounts / max(live, 1))


#: Seconds a connect of the lease connection may take.
CONNECT_TIMEOUT = 10.0


class _Database:
    """One txpostgres connection, opened on demand and dropped after any failure (the next
    round reconnects). Each call is one transaction."""

    def __init__(self, dsn: str, reactor: Any) -> None:
        self._dsn = dsn
        self._reactor = reactor
        self._conn: Any = None

    def run(self, interaction: Callable[[Any], Deferred]) -> Deferred:
        return Deferred.fromCoroutine(self._run(interaction))

    async def _run(self, interaction: Callable[[Any], Deferred]) -> Any:
        if self._conn is None:
            # the pool's connection type: closes quietly when the server goes away, and
            # connecting has a deadline
            conn = new_connection(self._reactor)
            self._conn = conn
            try:
                await connect(self._dsn, self._reactor, CONNECT_TIMEOUT, conn)
            except BaseException:
                self.reset(conn)
                raise
        conn = self._conn
        try:
            # BEGIN/COMMIT by hand: after any failure the connection is closed (which rolls
            # the transaction back) instead of attempting a ROLLBACK on a broken link.
            cur = conn.cursor()
            await cur.execute("BEGIN")
            result = await interaction(cur)
            await cur.execute("COMMIT")
            return result
        except BaseException:
            self.reset(conn)
            raise

    def reset(self, conn: Any = None) -> None:
        """Forget (and close) the connection, e.g. after a failure or a timeout."""
        if conn is None:
            conn = self._conn
        if conn is None:
            return
        if self._conn is conn:
            self._conn = None
        if conn.pollable() is not None:
            with contextlib.suppress(Exception):  # closing a broken connection: best effort
                conn.close()

    def close(self) -> None:
        self.reset()


class LeaseKeeper(Service):
    """Holds this replica's account leases (a Twisted service).

    ``filter(rows)`` is the supervisor's ``account_filter``: it runs a round against the
    given active rows and fires with the rows this replica owns. While running, the keeper
    renews every ``settings.lease_renew`` seconds and calls ``on_change()`` when its owned
    set changed outside ``filter`` (accounts of a dead replica taken over, some released for
    balance), and ``on_lost_ownership()`` when it could not renew for one TTL (the owned set
    is then empty). Whenever a round (``filter``'s too) drops accounts from the owned set
    (released for balance, or lost), it calls ``on_release(ids)`` at once; the released
    leases' rows are deleted once the Deferred it returns has fired (its sessions stopped).
    ``stopService()`` releases every lease of this replica.

    ``run_interaction`` is a txpostgres-style ``runInteraction``; by default the keeper opens its
    own connection to ``settings.database_url`` (and reconnects after failures).
    ``use_clock_time`` takes "now" from ``clock.seconds()`` instead of the database's
    ``now()`` (for tests with a ``task.Clock``; in production the database clock is the
    single time reference of all replicas).
    """

    name = "leases"

    def __init__(
        self,
        settings: LeaseSettings,
        run_interaction: RunInteraction | None = None,
        clock: IReactorTime | None = None,
        *,
        reactor: Any = None,
        use_clock_time: bool = False,
        on_change: Callable[[], object] | None = None,
        on_lost_ownership: Callable[[], object] | None = None,
        on_release: Callable[[frozenset[str]], object] | None = None,
    ) -> None:
        if reactor is None and (run_interaction is None or clock is None):
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.replica_id = settings.replica_id
        self.ttl = settings.lease_ttl
        self.renew_interval = settings.lease_renew
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._db: _Database | None = None
        if run_interaction is None:
            self._db = _Database(settings.database_url, reactor)
            run_interaction = self._db.run
        self._run_interaction = run_interaction
        self._use_clock_time = use_clock_time
        self.on_change = on_change
        self.on_lost_ownership = on_lost_ownership
        self.on_release = on_release
        #: released leases not renewed any more, and those of them whose sessions stopped
        #: (their rows are deleted by the next transaction)
        self._releasing: set[str] = set()
        self._to_free: set[str] = set()
        #: start of the first successful round: claims and releases begin one renewal
        #: interval later
        self._registered_at: float | None = None
        #: the longest a round may take before it counts as failed
        self.round_timeout = min(self.renew_interval, self.ttl / 2)
        self._owned: frozenset[str] = frozenset()
        self._universe: tuple[str, ...] | None = None
        self._universe_sql: QuotedIds | None = None  # the same ids, quoted once
        self._lock = DeferredLock()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._expiry: IDelayedCall | None = None
        self._failing = False
        self._stopped = False
        self.live_replicas = 0
        self.fair_share: int | None = None

    # -- public API -------------------------------------------------------------------

    def owned(self) -> frozenset[str]:
        """Ids of the accounts this replica may watch now (empty after ownership was lost)."""
        return self._owned

    def filter(self, rows: list[dict]) -> Deferred[list[dict]]:
        """Renew and claim against ``rows`` (the active accounts), then fire with those of
        ``rows`` this replica owns. Never fails: when the database cannot be reached, the
        rows still proven owned (none after one TTL) are returned."""
        if self._stopped:
            return defer.succeed([])
        universe = tuple(sorted({str(row["id"]) for row in rows}))
        self._universe = universe

        def pick(_: object) -> list[dict]:
            owned = self._owned
            return [row for row in rows if str(row["id"]) in owned]

        return self._lock.run(self._round, universe, notify=False).addCallback(pick)

    def renew(self) -> Deferred[bool]:
        """Run one round now (what the timer does); fires with whether the owned set
        changed. Never fails."""
        return self._lock.run(self._round, self._universe, notify=True)

    def wait_idle(self) -> Deferred[None]:
        """Fires once every round started or queued so far has finished, and the rounds
        or row deletions those queued in turn."""
        return Deferred.fromCoroutine(self._wait_idle())

    async def _wait_idle(self) -> None:
        await self._lock.run(lambda: None)
        while self._lock.locked:  # queued meanwhile (a hand-over's deletion)
            await self._lock.run(lambda: None)

    def disconnect(self) -> None:
        """Stop renewing and close the own connection *without* releasing anything, as a
        crash would (tests; the leases run out after one TTL)."""
        self._stopped = True
        if self._loop.running:
            self._loop.stop()
        self._cancel_expiry()
        if self._db is not None:
            self._db.close()

    # -- service ----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        d = self._loop.start(self.renew_interval, now=True)
        d.addErrback(lambda f: log.failure("lease renewal loop stopped", f))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopped = True
        if self._loop.running:
            self._loop.stop()
        self._cancel_expiry()
        return self._lock.run(self._release_all)

    # -- rounds -----------------------------------------------------------------------

    def _tick(self) -> None:
        # Not returned to the LoopingCall, so that its schedule does not depend on how long
        # a round takes; a tick while a round still runs is skipped (the lock serializes).
        if not self._lock.locked:
            self.renew()

    async def _release_all(self) -> None:
        params = {"r": self.replica_id}
        held = len(self._owned)
        self._owned = frozenset()
        self._releasing.clear()
        self._to_free.clear()
        self._cancel_expiry()
        metrics.LEASES_HELD.set(0)

        def interaction(cur: Any) -> Deferred:
            return cur.execute(_RELEASE_ALL, params)

        try:
            await self._timed(self._run_interaction(interaction))
        except Exception:  # reported, then the leases simply expire
            log.warn("[idle/leases] could not release the leases of replica {replica_id} "
                     "({reason}); they expire in {ttl:g}s", replica_id=self.replica_id,
                     reason=describe(Failure()), ttl=self.ttl)
        else:
            log.info("[idle/leases] replica {replica_id} released its {held} leases",
                     replica_id=self.replica_id, held=held)
        finally:
            if self._db is not None:
                self._db.close()

    async def _round(self, universe: tuple[str, ...] | None, notify: bool) -> bool:
        started = self._clock.seconds()
        before = self._owned
        freeing = frozenset(self._to_free)
        balance = (self._registered_at is not None
                   and started >= self._registered_at + self.renew_interval)
        try:
            result = await self._attempt(universe, started, freeing, balance)
        except Exception:  # any failure: keep what is still proven owned
            metrics.LEASE_ROUND_FAILURES.inc()
            if not self._failing:
                self._failing = True
                log.warn("[idle/leases] lease renewal failed ({reason}); holding {held} "
                         "accounts for at most {ttl:g}s", reason=describe(Failure()),
                         held=len(self._owned), ttl=self.ttl)
            return False
        valid_until = started + self.ttl
        if valid_until <= self._clock.seconds():
            # the round took a whole TTL: its renewals may already have run out
            log.warn("[idle/leases] lease round took longer than the TTL; not trusted")
            self._expire()
            return before != self._owned
        if self._failing:
            self._failing = False
            log.info("[idle/leases] lease renewal recovered")
        if self._registered_at is None:
            self._registered_at = started
        self._to_free -= freeing
        self._releasing -= freeing
        self._releasing |= result.releasing
        self._releasing -= result.owned  # expired and claimed back
        self._to_free -= result.owned
        self._owned = result.owned
        self.live_replicas = result.live
        self.fair_share = result.share
        metrics.LEASES_HELD.set(len(result.owned))
        metrics.LIVE_REPLICAS.set(result.live)
        self._schedule_expiry(valid_until)
        changed = result.owned != before
        if changed or result.claimed or result.released:
            log.info("[idle/leases] replica {replica_id} holds {held} accounts (claimed "
                     "{claimed}, released {released}); {live} live replicas, fair share "
                     "{share}", replica_id=self.replica_id, held=len(result.owned),
                     claimed=result.claimed, released=result.released, live=result.live,
                     share=result.share)
        dropped = before - result.owned
        if dropped:
            self._hand_over(dropped, result.releasing)
        if changed and notify and self.on_change is not None:
            self._call(self.on_change, "on_change")
        return changed

    def _hand_over(self, dropped: frozenset[str], released: frozenset[str]) -> None:
        """Stop the sessions of the accounts no longer held, then delete the rows of the
        released leases (until then nobody else may claim them)."""
        stopped = defer.maybeDeferred(self.on_release, dropped) \
            if self.on_release is not None else defer.succeed(None)
        stopped.addErrback(lambda f: log.failure("[idle/leases] on_release failed", f))

        def free(_: object) -> Deferred | None:
            ids = released & self._releasing
            if not ids or self._stopped:
                return None
            self._to_free |= ids
            return self._lock.run(self._free)

        stopped.addCallback(free)

    async def _free(self) -> None:
        freeing = frozenset(self._to_free)
        if not freeing or self._stopped:
            return
        params = {"r": self.replica_id, "free": list(freeing)}
        try:
            await self._timed(self._run_interaction(lambda cur: cur.execute(_FREE, params)))
        except Exception:  # the next round deletes them, or they expire
            log.warn("[idle/leases] could not delete {n} released leases ({reason}); the "
                     "next round retries", n=len(freeing), reason=describe(Failure()))
            return
        self._to_free -= freeing
        self._releasing -= freeing

    async def _attempt(self, universe: tuple[str, ...] | None, started: float,
                       freeing: frozenset[str], balance: bool) -> RoundResult:
        clock_now = started if self._use_clock_time else None
        try:
            return await self._timed(
                self._run_interaction(lambda cur: Deferred.fromCoroutine(
                    self._transaction(cur, universe, clock_now, freeing, balance))))
        except Exception as e:
            if getattr(e, "pgcode", None) not in _RETRYABLE:
                raise
        return await self._timed(
            self._run_interaction(lambda cur: Deferred.fromCoroutine(
                self._transaction(cur, universe, clock_now, freeing, balance))))

    def _timed(self, d: Deferred) -> Deferred:
        """``d``, failing after ``round_timeout`` (the connection is then dropped;
        txpostgres queries are not cancelled, their late result is ignored)."""
        return with_deadline(d, self.round_timeout, self._clock, self._drop_connection,
                             StatementTimeout("lease round timed out"))

    def _drop_connection(self) -> None:
        if self._db is not None:
            self._db.reset()

    async def _transaction(
        self, cur: Any, universe: tuple[str, ...] | None, clock_now: float | None,
        freeing: frozenset[str] = frozenset(), balance: bool = True,
    ) -> RoundResult:
        r = self.replica_id
        await cur.execute(_HEARTBEAT, {"r": r, "clock": clock_now})
        now = cur.fetchone()[0]
        p: dict[str, Any] = {"r": r, "now": now, "ttl": self.ttl,
                             "releasing": sorted(self._releasing)}
        await cur.execute(_LIVE, p)
        live = int(cur.fetchone()[0])
        if freeing:  # released leases whose sessions stopped since (a failed deletion)
            await cur.execute(_FREE, {**p, "free": sorted(freeing)})
        if universe is None:
            await cur.execute(_RENEW, p)
            return RoundResult(_ids(cur.fetchall()), live, None)
        p["ids"] = self._quoted(universe)
        await cur.execute(_DROP_INACTIVE, p)
        await cur.execute(_RENEW, p)
        owned = set(_ids(cur.fetchall()))
        share = fair_share(len(universe), live)
        claimed = released = 0
        gone: frozenset[str] = frozenset()
        if not balance:
            pass  # registering: the others' heartbeats are not all in yet
        elif len(owned) > share:
            # the highest ids, as every replica would pick them
            gone = frozenset(sorted(owned, reverse=True)[:len(owned) - share])
            owned -= gone
            released = len(gone)
        elif len(owned) < share:
            p["k"] = share - len(owned)
            await cur.execute(_PLACEHOLDERS, p)
            await cur.execute(_CLAIM, p)
            got = _ids(cur.fetchall())
            owned |= got
            claimed = len(got)
        await cur.execute(_COLLECT, p)
        return RoundResult(frozenset(owned), live, share, claimed, released, gone)

    def _quoted(self, universe: tuple[str, ...]) -> QuotedIds:
        """``universe`` as a quoted SQL array, quoted again only when it changed (at a
        refresh): every round sends it in up to four statements."""
        quoted = self._universe_sql
        if quoted is None or quoted.ids is not universe:
            quoted = self._universe_sql = QuotedIds(universe)
        return quoted

    # -- proof of ownership -------------------------------------------------------------

    def _schedule_expiry(self, valid_until: float) -> None:
        self._cancel_expiry()
        self._expiry = self._clock.callLater(
            max(0.0, valid_until - self._clock.seconds()), self._expire)

    def _cancel_expiry(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None

    def _expire(self) -> None:
        self._expiry = None
        if not self._owned:
            return
        held = len(self._owned)
        self._owned = frozenset()
        metrics.LEASES_HELD.set(0)
        log.error("[idle/leases] replica {replica_id} could not renew its leases for "
                  "{ttl:g}s: stopping its {held} sessions (another replica may take them)",
                  replica_id=self.replica_id, ttl=self.ttl, held=held)
        if self.on_lost_ownership is not None:
            self._call(self.on_lost_ownership, "on_lost_ownership")

    def _call(self, fn: Callable[[], object], what: str) -> None:
        d = defer.maybeDeferred(fn)
        d.addErrback(lambda f: log.failure("[idle/leases] {what} failed", f, what=what))


class QuotedIds:
    """A list of ids as a query parameter (``ARRAY['…', …]``), quoted once by psycopg2's
    own adapter and then reused: psycopg2 adapts a parameter anew in every statement, and
    quoting 50,000 ids takes about 35 ms, four times a round, every renewal interval, in
    every replica (``python -m bench --replicas``: the lease rounds were the largest part of
    the replicas' idle CPU). Follows psycopg2's ``ISQLQuote`` protocol."""

    __slots__ = ("_sql", "ids")

    def __init__(self, ids: tuple[str, ...]) -> None:
        from psycopg2.extensions import adapt

        self.ids = ids
        self._sql: bytes = adapt(list(ids)).getquoted()

    def __conform__(self, protocol: object) -> QuotedIds:
        return self

    def getquoted(self) -> bytes:
        return self._sql


def _ids(rows: Iterable[tuple]) -> frozenset[str]:
    return frozenset(row[0] for row in rows)
