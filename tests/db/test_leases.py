"""Replica leases: several LeaseKeepers in one process against a real PostgreSQL.

Time is a ``task.Clock`` shared by the keepers and passed to SQL as "now"
(``use_clock_time``), so expiry is exact; the database I/O is real.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import psycopg2
from twisted.application.service import Service
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from rebreak_idle.accounts.account import Account
from rebreak_idle.config import LeaseSettings, Settings, lease_settings, supervisor_settings
from rebreak_idle.db.leases import LEASES_SQL, LeaseKeeper, QuotedIds, fair_share
from rebreak_idle.db.marks import MarkLoader
from rebreak_idle.fleet.supervisor import Supervisor
from rebreak_idle.session.mailbox_marks import MailboxMemory
from rebreak_idle.testing.pg import PostgresServer, fresh_database

TTL = 30.0
RENEW = 10.0


def inline(f: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Deferred]:
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Deferred:
        return Deferred.fromCoroutine(f(*args, **kwargs))

    return wrapper


def settings(dsn: str, replica_id: str, **kw: Any) -> LeaseSettings:
    return lease_settings(Settings(
        database_url=dsn, admin_secret="s" * 8, encryption_key="k" * 32, leases="on",
        replica_id=replica_id, lease_ttl=TTL, lease_renew=RENEW, **kw))


def make_rows(n: int) -> list[dict]:
    return [{"id": str(uuid.uuid4()), "email": f"user{i}@example.test"} for i in range(n)]


class QuotedIdsTests(SynchronousTestCase):
    def test_quoted_as_psycopg2_quotes_the_list_and_adapted_as_itself(self) -> None:
        ids = tuple(str(uuid.uuid4()) for _ in range(3))
        quoted = QuotedIds(ids)
        self.assertIs(psycopg2.extensions.adapt(quoted), quoted)
        self.assertEqual(quoted.getquoted(), psycopg2.extensions.adapt(list(ids)).getquoted())
        self.assertEqual(QuotedIds(()).getquoted(), b"'{}'")


class FairShareTests(SynchronousTestCase):
    def test_ceiling(self) -> None:
        self.assertEqual(fair_share(300, 3), 100)
        self.assertEqual(fair_share(300, 4), 75)
        self.assertEqual(fair_share(300, 7), 43)
        self.assertEqual(fair_share(1, 3), 1)
        self.assertEqual(fair_share(0, 3), 0)
        self.assertEqual(fair_share(10, 0), 10)

    def test_schema_owns_its_tables_only(self) -> None:
        self.assertNotIn("rebreak.mail_connections", LEASES_SQL)
        self.assertIn("rebreak_idle.leases", LEASES_SQL)
        self.assertIn("rebreak_idle.replicas", LEASES_SQL)


class _KeeperCase(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.dsn = fresh_database()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.keepers: list[LeaseKeeper] = []
        self.changes: dict[str, int] = {}
        self.losses: dict[str, int] = {}

    def keeper(self, replica_id: str, dsn: str | None = None, **kw: Any) -> LeaseKeeper:
        def changed() -> None:
            self.changes[replica_id] = self.changes.get(replica_id, 0) + 1

        def lost() -> None:
            self.losses[replica_id] = self.losses.get(replica_id, 0) + 1

        k = LeaseKeeper(settings(dsn or self.dsn, replica_id), clock=self.clock,
                        use_clock_time=True, on_change=changed, on_lost_ownership=lost, **kw)
        self.keepers.append(k)
        self.addCleanup(k.disconnect)
        return k

    async def settle(self, *keepers: LeaseKeeper) -> None:
        await defer.gatherResults([k.wait_idle() for k in keepers or self.keepers])

    async def register(self, *keepers: LeaseKeeper) -> None:
        """A keeper's first round only registers it (heartbeat): it claims from its round
        one renewal interval later. Run those first rounds and let the interval pass."""
        await defer.gatherResults([k.renew() for k in keepers])
        self.clock.advance(RENEW)
        await self.settle(*keepers)

    async def tick(self, seconds: float, *keepers: LeaseKeeper) -> None:
        """Advance time; the running keepers' timers start rounds: wait for them."""
        self.clock.advance(seconds)
        await self.settle(*keepers)

    def table(self, live_only: bool = True) -> dict[str, str]:
        """connection_id → replica_id of the unexpired leases, straight from the table."""
        conn = psycopg2.connect(self.dsn)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT connection_id::text, replica_id FROM rebreak_idle.leases "
                    "WHERE replica_id IS NOT NULL AND (%s OR expires_at > to_timestamp(%s))",
                    (not live_only, self.clock.seconds()))
                return dict(cur.fetchall())
        finally:
            conn.close()

    def assertPartition(self, rows: list[dict], keepers: list[LeaseKeeper],
                        sizes: list[int] | None = None) -> None:
        """Every row owned by exactly one keeper, in memory and in the table."""
        ids = {r["id"] for r in rows}
        union: set[str] = set()
        for k in keepers:
            self.assertFalse(union & k.owned(), f"{k.replica_id} shares accounts")
            union |= k.owned()
        self.assertEqual(union, ids)
        table = self.table()
        self.assertEqual(set(table), ids)
        for k in keepers:
            self.assertEqual({c for c, r in table.items() if r == k.replica_id}, k.owned())
        if sizes is not None:
            self.assertEqual(sorted(len(k.owned()) for k in keepers), sorted(sizes))


class SingleReplicaTests(_KeeperCase):
    @inline
    async def test_alone_claims_everything_and_filters(self) -> None:
        rows = make_rows(20)
        k = self.keeper("a")
        await self.register(k)
        got = await k.filter(rows)
        self.assertEqual(got, rows)
        self.assertEqual(k.owned(), {r["id"] for r in rows})
        self.assertEqual((k.live_replicas, k.fair_share), (1, 20))
        self.assertPartition(rows, [k])

    @inline
    async def test_deactivated_rows_are_released(self) -> None:
        rows = make_rows(10)
        k = self.keeper("a")
        await self.register(k)
        await k.filter(rows)
        got = await k.filter(rows[:6])
        self.assertEqual(got, rows[:6])
        self.assertEqual(set(self.table()), {r["id"] for r in rows[:6]})

    @inline
    async def test_uuid_objects_and_extra_columns_pass_through(self) -> None:
        rows = [{"id": uuid.uuid4(), "email": "x@example.test"} for _ in range(3)]
        k = self.keeper("a")
        await self.register(k)
        self.assertEqual(await k.filter(rows), rows)

    @inline
    async def test_the_ids_are_quoted_once_per_refresh_not_per_round(self) -> None:
        made: list[int] = []
        original = QuotedIds.__init__

        def counting(quoted: QuotedIds, ids: tuple[str, ...]) -> None:
            made.append(len(ids))
            original(quoted, ids)

        self.patch(QuotedIds, "__init__", counting)
        rows = make_rows(30)
        k = self.keeper("a")
        k.startService()
        await self.register(k)
        await k.filter(rows)
        for _ in range(5):  # five renewals of the same accounts
            await self.tick(RENEW)
        self.assertEqual(made, [30])
        await k.filter(rows[:20])  # a refresh with fewer accounts: quoted again
        await self.tick(RENEW)
        self.assertEqual(made, [30, 20])
        self.assertEqual(k.owned(), {r["id"] for r in rows[:20]})
        self.assertPartition(rows[:20], [k])

    @inline
    async def test_renewal_keeps_leases_alive_past_the_ttl(self) -> None:
        rows = make_rows(5)
        k = self.keeper("a")
        k.startService()
        await self.register(k)
        await k.filter(rows)
        for _ in range(10):  # 100 s, far beyond one TTL
            await self.tick(RENEW)
        self.assertEqual(k.owned(), {r["id"] for r in rows})
        self.assertPartition(rows, [k])
        self.assertEqual(self.losses, {})
        await k.stopService()

    @inline
    async def test_clean_stop_releases_everything_at_once(self) -> None:
        rows = make_rows(30)
        a, b = self.keeper("a"), self.keeper("b")
        a.startService()
        b.startService()
        await self.settle()
        await self.register(a, b)
        await a.filter(rows)
        await b.filter(rows)
        self.assertPartition(rows, [a, b], [15, 15])
        await a.stopService()
        self.assertEqual(set(self.table().values()), {"b"})
        self.assertEqual(a.owned(), frozenset())
        # b takes over at its next renewal, not a TTL later
        await self.tick(RENEW, b)
        self.assertPartition(rows, [b], [30])
        self.assertEqual(self.changes.get("b"), 1)
        self.assertEqual(await a.filter(rows), [])  # a stopped keeper claims nothing
        await b.stopService()
        self.assertEqual(self.table(live_only=False), {})

    @inline
    async def test_restart_with_the_same_id_keeps_its_accounts(self) -> None:
        rows = make_rows(8)
        first = self.keeper("fixed")
        await self.register(first)
        await first.filter(rows)
        first.disconnect()  # crash
        second = self.keeper("fixed")
        second.startService()
        await self.settle(second)
        self.assertEqual(second.owned(), {r["id"] for r in rows})
        await second.stopService()


class ReplicaTests(_KeeperCase):
    async def start(self, n: int, rows: list[dict]) -> list[LeaseKeeper]:
        keepers = [self.keeper(f"r{i}") for i in range(n)]
        for k in keepers:
            k.startService()  # heartbeats at once
        await self.settle(*keepers)
        await self.register(*keepers)
        await defer.gatherResults([k.filter(rows) for k in keepers])  # concurrent claims
        return keepers

    @inline
    async def test_three_replicas_share_300_accounts_concurrently(self) -> None:
        rows = make_rows(300)
        keepers = await self.start(3, rows)
        self.assertPartition(rows, keepers, [100, 100, 100])
        for k in keepers:
            self.assertEqual((k.live_replicas, k.fair_share), (3, 100))
        # steady state: nothing moves
        for _ in range(5):
            await self.tick(RENEW)
            self.assertPartition(rows, keepers, [100, 100, 100])
        self.assertEqual(self.changes, {})
        for k in keepers:
            await k.stopService()

    @inline
    async def test_dead_replica_is_taken_over_within_ttl_plus_renew(self) -> None:
        rows = make_rows(300)
        a, b, c = await self.start(3, rows)
        dead = set(c.owned())
        c.disconnect()  # SIGKILL: no release, no more renewals
        died = self.clock.seconds()
        # before the TTL ran out nobody touches its accounts (no double watching)
        while self.clock.seconds() + RENEW < died + TTL:
            await self.tick(RENEW, a, b)
            self.assertFalse((a.owned() | b.owned()) & dead)
        await self.tick(died + TTL - self.clock.seconds(), a, b)
        self.assertFalse((a.owned() | b.owned()) & dead)  # exactly at expiry: not yet
        await self.tick(RENEW, a, b)
        self.assertLessEqual(self.clock.seconds() - died, TTL + RENEW)
        self.assertPartition(rows, [a, b], [150, 150])
        self.assertEqual(self.changes, {"r0": 1, "r1": 1})
        self.assertEqual((a.live_replicas, a.fair_share), (2, 150))
        await a.stopService()
        await b.stopService()

    @inline
    async def test_new_replica_gets_a_fair_share(self) -> None:
        rows = make_rows(300)
        keepers = await self.start(3, rows)
        d = self.keeper("r3")
        d.startService()
        await self.settle(d)
        self.assertEqual(await d.filter(rows), [])  # all taken, the others release next
        # one renewal: the old ones release 25 each (nothing is watched twice); the new
        # one may already claim what was released before its own round ran...
        await self.tick(RENEW)
        self.assertEqual([len(k.owned()) for k in keepers], [75, 75, 75])
        union = set().union(*(k.owned() for k in keepers))
        self.assertFalse(union & d.owned())
        # ...at the latest the next one claims the rest (unwatched for at most one renewal)
        await self.tick(RENEW)
        self.assertPartition(rows, [*keepers, d], [75, 75, 75, 75])
        self.assertEqual({k: v for k, v in self.changes.items() if k != "r3"},
                         {"r0": 1, "r1": 1, "r2": 1})
        self.assertIn(self.changes["r3"], (1, 2))  # one claim, or two half claims
        for k in [*keepers, d]:
            await k.stopService()

    @inline
    async def test_a_lone_replica_gives_half_to_a_newcomer(self) -> None:
        rows = make_rows(61)
        a = self.keeper("a")
        a.startService()
        await self.register(a)
        self.assertEqual(len(await a.filter(rows)), 61)
        b = self.keeper("b")
        b.startService()
        await b.filter(rows)
        await self.tick(RENEW)
        await self.tick(RENEW)
        self.assertPartition(rows, [a, b], [31, 30])
        await a.stopService()
        await b.stopService()

    @inline
    async def test_accounts_added_later_are_claimed_by_someone(self) -> None:
        rows = make_rows(30)
        a, b = await self.start(2, rows)
        more = rows + make_rows(4)
        await a.filter(more)
        await b.filter(more)
        self.assertPartition(more, [a, b], [17, 17])
        await a.stopService()
        await b.stopService()

    @inline
    async def test_pooler_style_one_transaction_per_round_on_any_connection(self) -> None:
        """Through a transaction pooler, consecutive transactions land on different
        server connections: rounds must not depend on session state."""
        from txpostgres.txpostgres import ConnectionPool

        pool = ConnectionPool(None, self.dsn, min=3)
        await pool.start()
        self.addCleanup(pool.close)
        turn = iter(range(10**6))

        def run_interaction(interaction: Callable[[Any], Deferred]) -> Deferred:
            conns = sorted(pool.connections, key=id)
            conn = conns[next(turn) % len(conns)]
            return conn.runInteraction(interaction)

        rows = make_rows(90)
        keepers = []
        for i in range(3):
            k = LeaseKeeper(settings(self.dsn, f"p{i}"), run_interaction=run_interaction,
                            clock=self.clock, use_clock_time=True)
            keepers.append(k)
            k.startService()
        await self.settle(*keepers)
        await defer.gatherResults([k.filter(rows) for k in keepers])
        for _ in range(3):
            await self.tick(RENEW, *keepers)
        self.assertPartition(rows, keepers, [30, 30, 30])
        for k in keepers:
            await k.stopService()

    @inline
    async def test_database_time_mode(self) -> None:
        """Without use_clock_time the database's now() is the reference."""
        rows = make_rows(4)
        k = LeaseKeeper(settings(self.dsn, "dbtime"), reactor=reactor, clock=self.clock)
        self.addCleanup(k.disconnect)
        await self.register(k)
        self.assertEqual(len(await k.filter(rows)), 4)
        conn = psycopg2.connect(self.dsn)
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT min(expires_at - now()), max(expires_at - now()) "
                            "FROM rebreak_idle.leases")
                low, high = cur.fetchone()
        finally:
            conn.close()
        self.assertGreater(low.total_seconds(), TTL - 5)
        self.assertLessEqual(high.total_seconds(), TTL)
        await k.stopService()


class _Rows:
    """The supervisor's account source: fixed rows."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def active(self) -> Deferred:
        return succeed([dict(r) for r in self.rows])

    def record_error(self, account_id: str, text: str) -> None:
        raise AssertionError(text)


class _Session(Service):
    def __init__(self, account: Account, started: list[str]) -> None:
        self.account = account
        self.started = started

    def startService(self) -> None:
        super().startService()
        self.started.append(self.account.id)

    def snapshot(self) -> dict:
        return {"id": self.account.id}


def _decode(row: dict) -> Account:
    return Account(row["id"], "u", row["email"], "imap.example.test", 993, "tls", "u",
                   "password", "pw")


class StaleRefreshTests(_KeeperCase):
    @inline
    async def test_ownership_lost_during_the_marks_query_starts_nothing(self) -> None:
        """A refresh filtered its rows by the leases, then waited for the marks of the new
        accounts; meanwhile the leases ran out (no renewal for a TTL). The refresh must
        not start sessions from its stale list (before: it started all 12)."""
        rows = make_rows(12)
        keeper = self.keeper("a")
        marks: Deferred = Deferred()
        loads: list[list[str]] = []

        def load(ids: list[str]) -> Deferred:
            loads.append(ids)
            return marks

        loader = MarkLoader(MailboxMemory(), load, then=keeper.filter, owned=keeper.owned)
        started: list[str] = []
        sup = Supervisor(_Rows(rows), lambda a: _Session(a, started), _decode,
                         supervisor_settings(Settings(database_url=self.dsn,
                                                      admin_secret="s" * 8,
                                                      encryption_key="k" * 32)),
                         self.clock, account_filter=loader)
        await self.register(keeper)
        sup.startService()  # the first refresh runs at once
        self.addCleanup(sup.stopService)
        while not loads:  # the lease round is real I/O
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(keeper.owned()), 12)
        self.clock.advance(TTL)  # no renewal for a whole TTL: the proof is gone
        self.assertEqual(keeper.owned(), frozenset())
        marks.callback({})  # the refresh goes on from here without waiting
        self.assertTrue(sup.ready)
        self.clock.advance(1)  # the ramp
        self.assertEqual(started, [])
        self.assertEqual(sup.sessions, {})


class StartTogetherTests(_KeeperCase):
    @inline
    async def test_the_first_replica_up_claims_nothing_until_the_others_registered(self) -> None:
        """Three replicas started together: the first to run its round saw only itself
        live and claimed all 300, then gave 200 back (before: 300 on its first round)."""
        rows = make_rows(300)
        released: list[frozenset[str]] = []
        first = self.keeper("r0", on_release=released.append)
        first.startService()
        await self.settle(first)
        self.assertEqual(await first.filter(rows), [])  # registered only
        self.assertEqual(self.table(), {})
        others = [self.keeper(f"r{i}", on_release=released.append) for i in (1, 2)]
        for k in others:
            k.startService()
        await self.settle()
        keepers = [first, *others]
        await defer.gatherResults([k.filter(rows) for k in others])
        await self.tick(RENEW)  # one renewal interval after registering: each claims its share
        self.assertPartition(rows, keepers, [100, 100, 100])
        for _ in range(3):
            await self.tick(RENEW)
        self.assertPartition(rows, keepers, [100, 100, 100])
        self.assertEqual(released, [])  # nothing was ever given back
        self.assertEqual(self.changes, {"r0": 1, "r1": 1, "r2": 1})
        for k in keepers:
            await k.stopService()

    @inline
    async def test_a_replica_alone_claims_after_one_renewal_interval(self) -> None:
        rows = make_rows(20)
        k = self.keeper("a")
        k.startService()
        await self.settle(k)
        self.assertEqual(await k.filter(rows), [])
        await self.tick(RENEW - 1)
        self.assertEqual(k.owned(), frozenset())
        await self.tick(1)  # its second round, one interval after the first, claims all
        self.assertPartition(rows, [k], [20])
        self.assertEqual(self.changes, {"a": 1})  # the supervisor refreshes at once
        await k.stopService()


class LoggingOutSession(_Session):
    """A session whose LOGOUT finishes when the test says so."""

    def __init__(self, account: Account, started: list[str],
                 logouts: dict[str, Deferred]) -> None:
        super().__init__(account, started)
        self.logouts = logouts

    def stopService(self) -> Deferred:
        super().stopService()
        d: Deferred = Deferred()
        self.logouts[self.account.id] = d
        return d


class HandOverTests(_KeeperCase):
    @inline
    async def test_released_accounts_log_out_before_anyone_may_claim_them(self) -> None:
        """A newcomer makes the holder release half of its accounts. The holder stops those
        sessions in the round itself (before: only at its next refresh, the ramp even
        starting more meanwhile), its rows stay until the LOGOUTs are done, and the
        newcomer can claim them only then: no account on two connections."""
        rows = make_rows(20)
        a, b = self.keeper("a"), self.keeper("b")
        started: list[str] = []
        logouts: dict[str, Deferred] = {}
        sup = Supervisor(_Rows(rows), lambda acc: LoggingOutSession(acc, started, logouts),
                         _decode, supervisor_settings(Settings(
                             database_url=self.dsn, admin_secret="s" * 8,
                             encryption_key="k" * 32, connect_rate=1000)),
                         self.clock, account_filter=a.filter)
        a.on_release = sup.release_accounts
        a.startService()
        await self.register(a)
        sup.startService()  # the first refresh: a claims all 20, the ramp starts them

        def stop() -> Deferred:
            stopped = sup.stopService()
            for d in logouts.values():  # the remaining sessions log out at once
                if not d.called:
                    d.callback(None)
            return stopped

        self.addCleanup(stop)
        while len(started) < 20:  # the lease round is real I/O
            await deferLater(reactor, 0.01, lambda: None)
        await b.renew()
        await b.filter(rows)  # b registers: 2 live replicas, a's share is 10 now
        await self.tick(RENEW, a)  # a's renewal releases 10
        gone = {r["id"] for r in rows} - a.owned()
        self.assertEqual(len(gone), 10)
        # stopped in the round, before any refresh (its debounce has not run out)
        self.assertEqual(set(logouts), gone)
        self.assertEqual(set(sup.sessions), set(a.owned()))
        # their rows are still a's while they log out: b's round claims nothing
        self.assertEqual(set(self.table().values()), {"a"})
        self.assertEqual(await b.filter(rows), [])
        for d in logouts.values():
            d.callback(None)
        await self.settle(a)
        self.assertEqual({c for c, r in self.table().items() if r == "a"}, a.owned())
        self.assertEqual({r["id"] for r in await b.filter(rows)}, gone)
        self.assertPartition(rows, [a, b], [10, 10])
        await b.stopService()


class LostDatabaseTests(_KeeperCase):
    def setUp(self) -> None:
        super().setUp()
        self.server = PostgresServer()
        self.addCleanup(self.server.destroy)
        self.dsn = self.server.create_database()
        from rebreak_idle.db.migrate import apply

        apply(self.dsn, dev_schema=True)

    @inline
    async def test_unreachable_database_drops_ownership_after_ttl_and_recovers(self) -> None:
        rows = make_rows(12)
        k = self.keeper("a")
        k.startService()
        await self.register(k)
        self.assertEqual(len(await k.filter(rows)), 12)
        last_ok = self.clock.seconds()
        self.server.stop("fast")
        # failed renewals inside the TTL: still owned
        await self.tick(RENEW)
        await self.tick(RENEW)
        self.assertEqual(len(k.owned()), 12)
        self.assertEqual(len(await k.filter(rows)), 12)
        self.assertEqual(self.losses, {})
        # one TTL after the last successful round the proof is gone
        self.clock.advance(last_ok + TTL - self.clock.seconds())
        self.assertEqual(k.owned(), frozenset())
        self.assertEqual(self.losses, {"a": 1})
        self.assertEqual(await k.filter(rows), [])
        await self.tick(RENEW)
        self.assertEqual(self.losses, {"a": 1})  # called once per loss
        # the database is back: the keeper reconnects and takes its accounts back
        self.server.start()
        await self.tick(RENEW)
        self.assertEqual(len(k.owned()), 12)
        self.assertEqual(self.changes.get("a"), 1)
        await k.stopService()

    @inline
    async def test_others_wait_until_the_cut_off_replica_has_given_up(self) -> None:
        """A replica cut off from the database stops before the others take over."""
        rows = make_rows(20)
        a = self.keeper("a")
        b = self.keeper("b")
        a.startService()
        b.startService()
        await self.settle()
        await self.register(a, b)
        await a.filter(rows)
        await b.filter(rows)
        a_accounts = set(a.owned())
        a.disconnect()  # its renewals stop (a partition), but a does not know it yet
        a_proof_until = self.clock.seconds() + TTL
        # simulate a's view: it would drop at a_proof_until; b must not claim before
        while self.clock.seconds() < a_proof_until:
            await self.tick(RENEW, b)
            if self.clock.seconds() <= a_proof_until:
                self.assertFalse(b.owned() & a_accounts)
        await self.tick(RENEW, b)
        self.assertEqual(b.owned(), {r["id"] for r in rows})
        await b.stopService()


class AnsweringCursor:
    """A cursor for a round without accounts known yet (heartbeat, live count, renew):
    every statement succeeds; one live replica; the renewal returns lease "x"."""

    def execute(self, statement: str, params: object = None) -> Deferred:
        return succeed(None)

    def fetchone(self) -> tuple:
        return (1,)

    def fetchall(self) -> list[tuple]:
        return [("x",)]


class TimeoutTests(TestCase):
    """A round that hangs is abandoned after ``round_timeout`` (Clock-driven, no DB)."""

    def test_hung_round_times_out_and_ownership_expires(self) -> None:
        clock = Clock()
        pending: list[Deferred] = []
        answered: list[bool] = []

        def run_interaction(interaction: Callable[[Any], Deferred]) -> Deferred:
            if not answered:  # the first round succeeds: one live replica, lease "x" renewed
                answered.append(True)
                return interaction(AnsweringCursor())
            d: Deferred = Deferred()
            pending.append(d)
            return d

        lost: list[int] = []
        k = LeaseKeeper(settings("postgresql://x", "h"), run_interaction=run_interaction,
                        clock=clock, on_lost_ownership=lambda: lost.append(1))
        self.assertEqual(self.successResultOf(k.renew()), True)
        self.assertEqual(k.owned(), {"x"})
        done = k.renew()
        self.assertNoResult(done)
        clock.advance(k.round_timeout)
        self.assertEqual(self.successResultOf(done), False)
        self.assertEqual(k.owned(), {"x"})
        pending[0].callback(None)  # a late answer is ignored
        clock.advance(TTL)
        self.assertEqual(k.owned(), frozenset())
        self.assertEqual(lost, [1])
