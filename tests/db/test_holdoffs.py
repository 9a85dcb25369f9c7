"""Credential hold-offs across restarts, and OAuth tokens without reconnects."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import psycopg2
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from rebreak_idle.accounts.account import Account
from rebreak_idle.db.holdoffs import Holdoff, HoldoffStore, login_tag, tag_key
from rebreak_idle.db.store import AccountStore
from rebreak_idle.fleet.supervisor import _no
from rebreak_idle.interfaces import Holdoff as SeamHoldoff
from rebreak_idle.interfaces import IHoldoffRecorder
from rebreak_idle.session.provider_limits import ProviderLimits
from rebreak_idle.session.states import State
from rebreak_idle.session.tokens import token_only_change
from rebreak_idle.testing.pg import fresh_database, sql
from tests.support.account_rows import add_row, inline
from tests.support.provider_days import DAY, HOUR, Sim, account

KEY = b"k" * 32


def tag_of(login: Account) -> str:
    return login_tag(tag_key(KEY), login)


class FakeTable:
    """rebreak_idle.account_holdoff in memory, behind the pool's two calls."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[int, float, str]] = {}
        self.errors: dict[str, str] = {}  # rebreak.mail_connections.last_connect_error
        self.statements: list[str] = []

    def query(self, sql: str, params: Any = None) -> Deferred:
        self.statements.append(sql.split()[0])
        (ids,) = params
        return succeed([(k, *v, self.errors.get(k), None if k not in self.errors else 5.0)
                        for k, v in self.rows.items() if k in ids])

    def operation(self, sql: str, params: Any = None) -> Deferred:
        self.statements.append(sql.split()[0])
        if sql.startswith("INSERT"):
            account_id, strikes, until, tag = params
            self.rows[account_id] = (strikes, float(until), tag)
        elif sql.startswith("DELETE"):
            self.rows.pop(params[0], None)
        return succeed(None)

    def store(self) -> HoldoffStore:
        return HoldoffStore(self.query, self.operation, KEY)


def with_holdoffs(sim: Sim, table: FakeTable) -> None:
    for session in sim.sessions:
        session.limits = ProviderLimits(None, None, table.store())


class SeamTests(SynchronousTestCase):
    def test_the_store_is_the_sessions_holdoff_recorder(self) -> None:
        """Sessions see hold-offs through interfaces.IHoldoffRecorder, not the SQL."""
        table = FakeTable()
        store = table.store()
        self.assertTrue(verifyObject(IHoldoffRecorder, store))
        self.assertIs(Holdoff, SeamHoldoff)
        got: list[Any] = []
        store.get("a").addCallback(got.append)
        self.assertEqual(got, [None])
        store.save("a", SeamHoldoff(2, 99.0, store.tag(account(secret="s"))))
        self.assertEqual(table.rows, {"a": (2, 99.0, tag_of(account(secret="s")))})
        store.clear("a")
        self.assertEqual(table.rows, {})


class RestartTests(SynchronousTestCase):
    def test_a_restart_does_not_retry_a_wrong_password_early(self) -> None:
        table = FakeTable()
        first = Sim(self, "dovecot", [account(secret="wrong")])
        with_holdoffs(first, table)
        first.start()
        first.run(3 * HOUR)  # 30 min, then 1 h: two more strikes
        self.assertEqual(first.server.logins, 3)
        (strikes, until, tag), = table.rows.values()
        self.assertEqual(strikes, 3)
        self.assertEqual(tag, tag_of(account(secret="wrong")))
        first.stop()
        # five restarts in a row (a crash loop): no login before the hold-off is over
        for _ in range(5):
            again = Sim(self, "dovecot", [account(secret="wrong")])
            again.clock.advance(first.clock.seconds())
            with_holdoffs(again, table)
            again.start()
            self.assertEqual(again.server.logins, 0)
            self.assertEqual(again.sessions[0].state, State.AUTH_FAILED)
            again.stop()
        last = Sim(self, "dovecot", [account(secret="wrong")])
        last.clock.advance(first.clock.seconds())
        with_holdoffs(last, table)
        last.start()
        last.run(until - first.clock.seconds() - 1)
        self.assertEqual(last.server.logins, 0)
        last.run(2)
        self.assertEqual(last.server.logins, 1)
        self.assertEqual(table.rows[account().id][0], 4)  # the hold-off keeps growing

    def test_a_changed_secret_retries_at_once_and_success_clears(self) -> None:
        table = FakeTable()
        table.rows[account().id] = (3, 10 * DAY, tag_of(account(secret="old-wrong")))
        sim = Sim(self, "dovecot", [account(secret="right")])
        with_holdoffs(sim, table)
        sim.start()
        self.assertEqual(sim.sessions[0].state, State.IDLE)
        self.assertEqual(table.rows, {})
        self.assertEqual(table.statements.count("DELETE"), 1)

    def test_fixing_the_username_lifts_the_holdoff(self) -> None:
        """The hold-off follows the login, not the secret alone: a user who fixes a wrong
        username (same password) is tried at once by the restarted session."""
        table = FakeTable()
        typo = replace(account(), username="u0-typo")
        first = Sim(self, "dovecot", [typo])
        first.server.password = "nobody's"
        first.server.passwords["u0"] = "right"
        with_holdoffs(first, table)
        first.start()
        first.run(HOUR)
        self.assertEqual(first.sessions[0].state, State.AUTH_FAILED)
        self.assertEqual(table.rows[typo.id][0], 2)
        first.stop()
        for fixed in (account(), replace(typo, port=993), replace(typo, host="127.0.0.2")):
            again = Sim(self, "dovecot", [fixed])
            again.clock.advance(first.clock.seconds())
            again.server.passwords["u0"] = "right"
            with_holdoffs(again, table)
            again.start()
            self.assertEqual(again.server.logins, 1, fixed)
            again.stop()
        self.assertEqual(table.rows, {})  # the fixed login succeeded: the row is gone
        unchanged = Sim(self, "dovecot", [typo])  # and the same typo again: a new strike
        unchanged.server.password = "nobody's"
        with_holdoffs(unchanged, table)
        unchanged.clock.advance(first.clock.seconds())
        unchanged.start()
        self.assertEqual(table.rows[typo.id][0], 1)

    def test_a_takeover_honours_the_holdoff_and_keeps_the_strikes(self) -> None:
        """Replica B started (and read the table) before replica A's strikes; when B takes
        the account over, its session waits out A's hold-off and counts on from A's
        strikes (before: B had read the table once at its start, so it tried the
        known-bad password at once and began again at one strike)."""
        table = FakeTable()
        b = Sim(self, "dovecot", [account(1), account(secret="wrong")])
        store_b = table.store()
        b.sessions[0].limits = ProviderLimits(None, None, store_b)
        b.sessions[1].limits = ProviderLimits(None, None, store_b)
        b.sessions[0].startService()  # B watches another account from the start
        b.pump()
        a = Sim(self, "dovecot", [account(secret="wrong")])
        with_holdoffs(a, table)
        a.start()
        a.run(3 * HOUR)
        self.assertEqual(a.server.logins, 3)
        (strikes, until, _), = table.rows.values()
        self.assertEqual(strikes, 3)
        a.stop()  # A lost the account
        b.clock.advance(a.clock.seconds() - b.clock.seconds())
        taken = b.sessions[1]
        taken.startService()  # B took it over
        b.pump()
        self.assertEqual(b.server.logins, 1)  # only account 1's login
        self.assertEqual(taken.state, State.AUTH_FAILED)
        b.run(until - b.clock.seconds() + 1)
        self.assertEqual(b.server.logins, 2)
        self.assertEqual(table.rows[account().id][0], 4)  # counted on from A's 3

    def test_after_a_restart_status_shows_the_stored_error(self) -> None:
        """A session held off by a hold-off of an earlier run shows the stored
        last_connect_error and its class in /status, not an empty error."""
        table = FakeTable()
        text = "[AUTHENTICATIONFAILED] Invalid credentials (Failure)"
        table.rows[account().id] = (2, 5 * HOUR, tag_of(account(secret="wrong")))
        table.errors[account().id] = text
        sim = Sim(self, "dovecot", [account(secret="wrong")])
        with_holdoffs(sim, table)
        sim.start()
        snap = sim.sessions[0].snapshot()
        self.assertEqual((snap["state"], snap["last_error"], snap["last_end_class"]),
                         ("auth-failed", text, "credentials"))
        self.assertEqual(snap["last_error_at"], "1970-01-01T00:00:05+00:00")
        self.assertEqual(sim.server.logins, 0)

    def test_unreadable_table_is_logged_once_per_outage(self) -> None:
        """Every session start reads its row: with the table unreadable (no migration, the
        database away) the sessions start without a hold-off, and the log says so once."""
        table = FakeTable()
        broken = [True]

        def query(sql: str, params: Any = None) -> Deferred:
            if broken[0]:
                return fail(psycopg2.errors.UndefinedTable(
                    'relation "rebreak_idle.account_holdoff" does not exist'))
            return table.query(sql, params)

        store = HoldoffStore(query, table.operation, KEY)
        lines: list[str] = []
        observer = lambda e: lines.append(formatEvent(e))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        got: list[Any] = []
        for n in range(5):
            store.get(f"a{n}").addCallback(got.append)
        self.assertEqual(got, [None] * 5)
        broken[0] = False
        table.rows["a9"] = (1, 99.0, "t")
        store.get("a9").addCallback(got.append)
        self.assertEqual(got[-1].strikes, 1)
        said = [line for line in lines if "hold-offs" in line]
        self.assertEqual(len(said), 2, said)
        self.assertIn("unreadable", said[0])
        self.assertIn("does not exist", said[0])
        self.assertIn("can be read again", said[1])

    def test_old_secret_only_rows_do_not_match(self) -> None:
        """A row of the earlier tag (an HMAC of the secret alone, under the AES key) is
        not taken for the login's: one login is tried, nothing crashes, and the outcome
        replaces the row with the new tag."""
        import hashlib
        import hmac
        table = FakeTable()
        old = hmac.new(KEY, b"wrong", hashlib.sha256).hexdigest()[:32]
        table.rows[account().id] = (3, 10 * DAY, old)
        sim = Sim(self, "dovecot", [account(secret="wrong")])
        with_holdoffs(sim, table)
        sim.start()
        self.assertEqual(sim.server.logins, 1)
        self.assertEqual(sim.sessions[0].state, State.AUTH_FAILED)
        (strikes, _, tag), = table.rows.values()
        self.assertEqual((strikes, tag), (1, tag_of(account(secret="wrong"))))

    def test_no_row_no_write(self) -> None:
        table = FakeTable()
        sim = Sim(self, "dovecot", [account(n) for n in range(5)])
        with_holdoffs(sim, table)
        sim.start()
        self.assertTrue(all(s.state is State.IDLE for s in sim.sessions))
        self.assertNotIn("DELETE", table.statements)
        self.assertNotIn("INSERT", table.statements)


class PostgresHoldoffTests(TestCase):
    timeout = 60

    @inline
    async def test_save_load_clear_in_postgres(self) -> None:
        dsn = fresh_database()
        row = add_row(dsn)
        store = AccountStore(dsn, reactor, shutdown_timeout=5)
        self.addCleanup(store.stopService)
        writes: list[Deferred] = []

        def run_operation(statement: str, params: Any = None) -> Deferred:
            d = store.pool.run_operation(statement, params)
            writes.append(d)
            return d

        first = HoldoffStore(store.pool.run_query, run_operation, KEY)
        self.assertIsNone(await first.get(row))  # creates the table, reads nothing
        until = reactor.seconds() + 3600
        first.save(row, Holdoff(2, until, first.tag(account(secret="pw"))))
        first.save(str(uuid.uuid4()),
                   Holdoff(1, reactor.seconds() - 10, first.tag(account(secret="x"))))
        await gatherResults(writes)  # the writes themselves (the pool has several connections)
        second = HoldoffStore(store.pool.run_query, run_operation, KEY)
        held = await second.get(row)
        self.assertEqual((held.strikes, held.tag), (2, first.tag(account(secret="pw"))))
        self.assertAlmostEqual(held.until, until, places=3)
        second.clear(row)
        await gatherResults(writes)
        third = HoldoffStore(store.pool.run_query, store.pool.run_operation, KEY)
        self.assertIsNone(await third.get(row))
        fresh = await store.one(row)
        self.assertEqual(fresh["id"], row)
        self.assertIsNone(await store.one(str(uuid.uuid4())))
        self.assertIsNone(await store.one("not-a-uuid"))


    @inline
    async def test_each_read_sees_what_another_replica_saved(self) -> None:
        """Replica B read the table before replica A saved a hold-off; B's next read (a
        session start after a takeover) sees it, with the row's stored error. Reads asked
        for together go out as one query."""
        dsn = fresh_database()
        row, other = add_row(dsn), add_row(dsn)
        sql(dsn, "UPDATE rebreak.mail_connections SET last_connect_error = %s, "
                 "last_connect_error_at = to_timestamp(1700000000) WHERE id = %s",
            ("[AUTHENTICATIONFAILED] Invalid credentials", row))
        store = AccountStore(dsn, reactor, shutdown_timeout=5)
        self.addCleanup(store.stopService)
        queries: list[str] = []

        def run_query(statement: str, params: Any = None) -> Deferred:
            queries.append(statement)
            return store.pool.run_query(statement, params)

        writes: list[Deferred] = []

        def run_operation(statement: str, params: Any = None) -> Deferred:
            d = store.pool.run_operation(statement, params)
            writes.append(d)
            return d

        async def written() -> None:
            """Wait for the writes themselves: the pool has several connections, so a
            later query on another one may finish before them."""
            await gatherResults(writes)

        replica_a = HoldoffStore(store.pool.run_query, run_operation, KEY)
        replica_b = HoldoffStore(run_query, run_operation, KEY)
        self.assertIsNone(await replica_b.get(other))  # B's start
        until = reactor.seconds() + 3600
        replica_a.save(row, Holdoff(3, until, replica_a.tag(account(secret="pw"))))
        await written()
        queries.clear()
        first, second, third = replica_b.get(row), replica_b.get(other), replica_b.get(row)
        held = await first
        self.assertEqual((held.strikes, held.tag, held.error, held.error_at),
                         (3, replica_b.tag(account(secret="pw")),
                          "[AUTHENTICATIONFAILED] Invalid credentials", 1700000000.0))
        self.assertIsNone(await second)
        self.assertEqual(await third, held)
        self.assertLessEqual(len(queries), 2)  # the first alone, the others together
        replica_b.clear(row)  # B's login worked: the row is gone for everyone
        await written()
        self.assertIsNone(await replica_a.get(row))

class OAuthTests(SynchronousTestCase):
    def test_token_only_change(self) -> None:
        old = account(method="xoauth2", secret="t1")
        self.assertTrue(token_only_change(old, replace(old, secret="t2")))
        self.assertFalse(token_only_change(old, replace(old, secret="t2", port=993)))
        self.assertFalse(token_only_change(old, old))
        pw = account(secret="p1")
        self.assertFalse(token_only_change(pw, replace(pw, secret="p2")))
        self.assertFalse(_no(old))

    def test_new_token_is_used_at_the_next_login_without_a_reconnect(self) -> None:
        sim = Sim(self, "m365", [account(method="xoauth2", secret="t1")])
        sim.server.tokens["u0"] = "t1"
        sim.start()
        session = sim.sessions[0]
        self.assertTrue(session.renew_secret(replace(session.account, secret="t2")))
        sim.run(HOUR - 10)
        self.assertEqual(sim.server.logins, 1)  # the healthy session kept its connection
        sim.server.tokens["u0"] = "t2"  # the old token is no longer accepted
        sim.run(20)  # the token-expiry BYE: the next login uses t2
        self.assertEqual(sim.server.logins, 2)
        self.assertEqual(sim.server.oauth_rejections, 0)
        self.assertEqual(session.state, State.IDLE)
        self.assertEqual(sim.recorder.errors, [])

    def test_refused_token_rereads_the_row_before_the_holdoff(self) -> None:
        rows: dict[str, Account] = {}
        reads: list[str] = []

        def reread(account_id: str) -> Deferred:
            reads.append(account_id)
            return succeed(rows.get(account_id))

        sim = Sim(self, "m365", [account(method="xoauth2", secret="expired")])
        sim.server.tokens["u0"] = "fresh"
        session = sim.sessions[0]
        session.limits = ProviderLimits(reread, None, None)
        rows[session.account.id] = replace(session.account, secret="fresh")
        sim.start()
        self.assertEqual(session.state, State.IDLE)
        self.assertEqual(reads, [session.account.id])
        self.assertEqual(sim.server.oauth_rejections, 1)
        self.assertEqual(len(sim.server.connections), 1)  # the same connection
        self.assertEqual(sim.recorder.errors, [])

    def test_refused_token_without_a_newer_one_holds_off_with_the_json(self) -> None:
        sim = Sim(self, "m365", [account(method="xoauth2", secret="expired")])
        sim.server.tokens["u0"] = "fresh"
        session = sim.sessions[0]
        session.limits = ProviderLimits(lambda _id: succeed(session.account), None, None)
        sim.start()
        self.assertEqual(session.state, State.AUTH_FAILED)
        (_, _, text), = sim.recorder.errors
        self.assertIn('[AUTHENTICATIONFAILED] Invalid credentials (Failure) {"status":"401"',
                      text)
        self.assertNotIn("expired", text.replace("[AUTHENTICATIONFAILED]", ""))
        self.assertFalse(session.renew_secret(replace(session.account, secret="x")))
