"""Supervisor: refresh, reconcile, the start-up ramp, shutdown; with a real PostgreSQL for
the outage and NOTIFY cases."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from rebreak_idle import metrics
from rebreak_idle.accounts.account import Account
from rebreak_idle.accounts.secrets import encrypt_secret
from rebreak_idle.config import Settings, StatusSettings, supervisor_settings
from rebreak_idle.db.store import AccountStore
from rebreak_idle.fleet.supervisor import SLOT_ENTRIES, SLOT_TRANSITIONS, SlotState, Supervisor
from rebreak_idle.interfaces import IAccountSource
from rebreak_idle.session.states import State
from rebreak_idle.status.server import make_status_resource
from rebreak_idle.testing.pg import PostgresServer, fresh_database, sql
from tests.support.account_rows import add_row, inline, status
from tests.support.fleet import DECODE, KEY, MemoryStore, capture_logs, row, settings
from tests.support.recorder import Recorder
from tests.support.scripted_imap import ScriptedIMAPServer


def sample(name: str, **labels: str) -> float | None:
    """A metric's current value, read through the daemon's registry."""
    return metrics.REGISTRY.get_sample_value(name, labels)


class TestSession(Service):
    """The session seam: a real Service that records its life."""

    def __init__(self, account: Account, events: list, stop_result: Deferred | None = None,
                 recorder: Any = None) -> None:
        self.account = account
        self.events = events
        self.stop_result = stop_result
        self.recorder = recorder

    def startService(self) -> None:
        super().startService()
        self.events.append(("start", self.account.id))
        if self.recorder is not None:
            self.recorder.record_heartbeat(self.account.id)

    def stopService(self) -> Deferred:
        super().stopService()
        self.events.append(("stop", self.account.id))
        return self.stop_result if self.stop_result is not None else succeed(None)

    def snapshot(self) -> dict:
        return {"id": self.account.id, "email": self.account.email,
                "state": "running" if self.running else "new"}


class ReconcileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list = []
        self.store = MemoryStore([row(0), row(1)])
        self.logs = capture_logs(self)

    def supervisor(self, **kw: Any) -> Supervisor:
        filt = kw.pop("account_filter", None)
        sup = Supervisor(self.store, lambda a: TestSession(a, self.events), DECODE,
                         settings(**kw), self.clock, account_filter=filt)
        return sup

    def test_first_refresh_starts_sessions_and_is_ready(self) -> None:
        sup = self.supervisor()
        self.assertFalse(sup.ready)
        verifyObject(IAccountSource, self.store)
        sup.startService()
        self.assertTrue(sup.ready)
        self.assertEqual(sorted(sup.sessions), [row(0)["id"], row(1)["id"]])
        self.assertEqual(self.events, [("start", row(0)["id"]), ("start", row(1)["id"])])
        self.assertIn("[idle/db] refreshed — 2 active connections, 2 sessions", self.logs)
        self.assertEqual(sorted(s["state"] for s in sup.snapshot()), ["running", "running"])

    def test_reconcile_new_gone_changed_unchanged(self) -> None:
        sup = self.supervisor(refresh_interval=300)
        sup.startService()
        first = dict(sup.sessions)
        self.events.clear()
        # row 0 unchanged, row 1 deactivated (gone from the active rows), row 2 new
        self.store.rows = [row(0), row(2)]
        self.clock.advance(300)
        self.assertIs(sup.sessions[row(0)["id"]], first[row(0)["id"]])
        self.assertNotIn(row(1)["id"], sup.sessions)
        self.assertEqual(self.events, [("stop", row(1)["id"]), ("start", row(2)["id"])])
        self.events.clear()
        old = sup.sessions[row(2)["id"]]
        self.store.rows = [row(0), row(2, password="new password")]
        self.clock.advance(300)
        self.assertEqual(self.events, [("stop", row(2)["id"]), ("start", row(2)["id"])])
        self.assertFalse(old.running)
        self.assertEqual(sup.sessions[row(2)["id"]].account.secret, "new password")
        self.events.clear()
        # identical rows: untouched
        self.clock.advance(300)
        self.assertEqual(self.events, [])
        self.assertIn("[idle/db] refreshed — 2 active connections, 2 sessions", self.logs)

    def row_0_changed_while_the_old_session_logs_out(self) -> tuple[Supervisor, Deferred]:
        """Both rows running, then row 0's secret changes; the old session's stop (its
        LOGOUT) stays pending until the test fires the returned Deferred."""
        logging_out: Deferred = Deferred()
        stops = iter([logging_out])
        sup = Supervisor(self.store,
                         lambda a: TestSession(a, self.events, stop_result=next(stops, None)),
                         DECODE, settings(refresh_interval=300), self.clock)
        sup.startService()
        self.events.clear()
        self.store.rows = [row(0, password="new password"), row(1)]
        self.clock.advance(300)
        return sup, logging_out

    def test_restarted_session_waits_for_the_old_ones_logout(self) -> None:
        """Changed settings: the new session connects only after the old one has logged
        out (one connection per mailbox, never two sessions watching it)."""
        sup, logging_out = self.row_0_changed_while_the_old_session_logs_out()
        self.assertEqual(self.events, [("stop", row(0)["id"])])
        states = {s["id"]: s["state"] for s in sup.snapshot()}
        self.assertEqual(states[row(0)["id"]], "queued")
        self.clock.advance(300)  # a refresh meanwhile changes nothing
        self.assertEqual(self.events, [("stop", row(0)["id"])])
        logging_out.callback(None)
        self.assertEqual(self.events, [("stop", row(0)["id"]), ("start", row(0)["id"])])
        self.assertEqual(sup.sessions[row(0)["id"]].account.secret, "new password")

    def test_a_successor_waiting_for_the_logout_counts_as_queued(self) -> None:
        """/status says "queued" for it, and so does the sessions gauge."""
        sup, logging_out = self.row_0_changed_while_the_old_session_logs_out()
        states = [s["state"] for s in sup.snapshot()]
        self.assertEqual(states.count("queued"), 1)
        self.assertEqual(sample("rebreak_idle_sessions", state="queued"), 1)
        logging_out.callback(None)
        self.assertEqual(sample("rebreak_idle_sessions", state="queued"), 0)

    def test_successor_dropped_while_waiting_is_never_started(self) -> None:
        sup, logging_out = self.row_0_changed_while_the_old_session_logs_out()
        self.store.rows = [row(1)]  # deactivated before the old session was gone
        self.clock.advance(300)
        logging_out.callback(None)
        self.assertEqual(self.events, [("stop", row(0)["id"])])
        self.assertNotIn(row(0)["id"], sup.sessions)
        self.assertEqual(sample("rebreak_idle_sessions", state="queued"), 0)

    def test_stop_all_sessions_without_a_read(self) -> None:
        """A replica that lost its leases stops watching at once (no database read); the
        next successful refresh starts the sessions again."""
        sup = self.supervisor()
        sup.startService()
        self.events.clear()
        reads = self.store.reads
        self.store.fail = True
        sup.stop_all_sessions()
        self.assertEqual(self.store.reads, reads)
        self.assertEqual(sup.sessions, {})
        self.assertEqual(sorted(self.events),
                         [("stop", row(0)["id"]), ("stop", row(1)["id"])])
        self.store.fail = False
        sup.refresh()
        self.assertEqual(sorted(sup.sessions), [row(0)["id"], row(1)["id"]])

    def test_released_accounts_stop_at_once_and_never_leave_the_ramp_queue(self) -> None:
        """A lease round gave two accounts away: the running one logs out at once and the
        queued one never starts, without a read; the returned Deferred fires once the
        logout is done (only then may the lease row go)."""
        self.store.rows = [row(0), row(1), row(2)]
        logging_out: Deferred = Deferred()
        sup = Supervisor(self.store,
                         lambda a: TestSession(a, self.events, stop_result=logging_out),
                         DECODE, settings(connect_rate=10), self.clock)  # one per 0.1 s
        sup.startService()
        self.assertEqual(self.events, [("start", row(0)["id"])])
        reads = self.store.reads
        done = sup.release_accounts(frozenset({row(0)["id"], row(1)["id"]}))
        self.assertEqual(self.events, [("start", row(0)["id"]), ("stop", row(0)["id"])])
        self.assertNoResult(done)  # its LOGOUT is still under way
        self.assertEqual(sorted(sup.sessions), [row(2)["id"]])
        logging_out.callback(None)
        self.assertIsNone(self.successResultOf(done))
        self.clock.advance(1)  # the ramp goes on: only the account still held starts
        self.assertEqual(self.events, [("start", row(0)["id"]), ("stop", row(0)["id"]),
                                       ("start", row(2)["id"])])
        self.assertEqual(self.store.reads, reads)

    def test_changed_host_restarts(self) -> None:
        sup = self.supervisor()
        sup.startService()
        self.events.clear()
        self.store.rows = [row(0, imap_host="other.example.org"), row(1)]
        sup.refresh()
        self.assertEqual(self.events, [("stop", row(0)["id"]), ("start", row(0)["id"])])
        self.assertEqual(sup.sessions[row(0)["id"]].account.host, "other.example.org")

    def test_bad_rows_get_an_error_once_and_no_session(self) -> None:
        bad_secret = row(5, encrypted_secret="00:11:22")
        bad_port = row(6, imap_port=0)
        self.store.rows = [row(0), bad_secret, bad_port, row(1)]
        sup = self.supervisor()
        sup.startService()
        self.assertEqual(sorted(sup.sessions), [row(0)["id"], row(1)["id"]])
        errors = dict(self.store.errors)
        self.assertIn("IV must be 12 or 16 bytes", errors[bad_secret["id"]])
        self.assertIn("imap_port", errors[bad_port["id"]])
        states = {s["id"]: s["state"] for s in sup.snapshot()}
        self.assertEqual(states[bad_secret["id"]], "invalid")
        self.assertEqual(states[bad_port["id"]], "invalid")
        # the same error is not written again on the next refreshes
        sup.refresh()
        self.assertEqual(len(self.store.errors), 2)
        # nor after a restart, when the database already holds it
        bad_secret["last_connect_error"] = errors[bad_secret["id"]]
        self.store.rows = [bad_secret]
        sup2 = self.supervisor()
        sup2.startService()
        self.assertEqual(len(self.store.errors), 2)
        # a different error is written
        self.store.rows = [row(5, encrypted_secret="zz:11:22")]
        sup2.refresh()
        self.assertEqual(len(self.store.errors), 3)
        self.assertIn("hexadecimal", self.store.errors[-1][1])

    def test_a_row_becoming_invalid_loses_its_session(self) -> None:
        sup = self.supervisor()
        sup.startService()
        self.store.rows = [row(0), row(1, imap_security="plain")]
        sup.refresh()
        self.assertEqual(list(sup.sessions), [row(0)["id"]])
        self.assertIn(("stop", row(1)["id"]), self.events)

    def test_failed_refresh_keeps_sessions(self) -> None:
        sup = self.supervisor()
        sup.startService()
        failures = sample("rebreak_idle_refresh_failures_total")
        self.store.fail = True
        self.store.rows = []
        results: list = []
        sup.refresh().addCallback(results.append)
        self.assertEqual(results, [False])
        self.assertEqual(len(sup.sessions), 2)
        self.assertEqual(sample("rebreak_idle_refresh_failures_total"), failures + 1)
        self.assertTrue(any(line.startswith("[idle/db] refresh failed") for line in self.logs))

    def test_not_ready_until_a_refresh_succeeds(self) -> None:
        self.store.fail = True
        sup = self.supervisor(refresh_interval=60)
        sup.startService()
        self.assertFalse(sup.ready)
        self.store.fail = False
        self.clock.advance(60)
        self.assertTrue(sup.ready)

    def test_overlapping_refreshes_coalesce(self) -> None:
        sup = self.supervisor()
        sup.startService()
        reads = self.store.reads
        gate = self.store.gate = Deferred()
        results: list = []
        for _ in range(4):
            sup.refresh().addCallback(results.append)
        self.assertEqual(self.store.reads, reads + 1)  # one running, the rest wait
        gate.callback(None)
        self.assertEqual(self.store.reads, reads + 2)  # exactly one more ran after it
        self.assertEqual(results, [True] * 4)

    def test_account_filter(self) -> None:
        seen: list = []

        def only_first(rows: list[dict]) -> Deferred:
            seen.append(len(rows))
            return succeed(rows[:1])

        sup = self.supervisor(account_filter=only_first)
        sup.startService()
        self.assertEqual(seen, [2])
        self.assertEqual(list(sup.sessions), [row(0)["id"]])

    def test_after_refresh_runs_after_each_successful_refresh(self) -> None:
        """The store's pruning runs as the refresh's last step; a failed read skips it, a
        failing step is logged and the refresh still counts."""
        calls: list[int] = []

        def after() -> Deferred:
            calls.append(len(sup.sessions))
            if len(calls) == 2:
                return defer.fail(RuntimeError("prune broke"))
            return succeed(None)

        sup = Supervisor(self.store, lambda a: TestSession(a, self.events), DECODE,
                         settings(), self.clock, after_refresh=after)
        sup.startService()
        self.addCleanup(sup.stopService)
        self.assertEqual(calls, [2])  # after the reconcile
        results: list = []
        sup.refresh().addCallback(results.append)
        self.store.fail = True
        sup.refresh().addCallback(results.append)
        self.assertEqual((calls, results), ([2, 2], [True, False]))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_heartbeat_age_gauge(self) -> None:
        """Computed at scrape time from the idle sessions (tests/test_live_metrics.py), no
        longer from the table's column: these sessions are not idle, so it is 0."""
        self.store.rows = [row(0, heartbeat_age=12.5), row(1, heartbeat_age=80.0)]
        sup = self.supervisor()
        sup.startService()
        self.addCleanup(sup.stopService)
        self.assertEqual(sample("rebreak_idle_oldest_heartbeat_age_seconds"), 0.0)


class RampTests(SynchronousTestCase):
    def test_sessions_start_at_the_connect_rate(self) -> None:
        clock, events = Clock(), []
        store = MemoryStore([row(n) for n in range(120)])
        sup = Supervisor(store, lambda a: TestSession(a, events), DECODE,
                         settings(connect_rate=50), clock)
        sup.startService()
        self.assertEqual(len(events), 5)  # 50/s in batches of 0.1 s
        self.assertEqual(len(sup.sessions), 120)  # created, most still queued
        states = [snap["state"] for snap in sup.snapshot()]
        self.assertEqual((states.count("running"), states.count("queued")), (5, 115))
        clock.advance(0.1)
        self.assertEqual(len(events), 10)
        clock.pump([0.1] * 10)
        self.assertEqual(len(events), 60)
        clock.pump([0.1] * 12)
        self.assertEqual(len(events), 120)
        self.assertEqual(len(clock.getDelayedCalls()), 1)  # only the refresh timer remains

    def test_queued_session_removed_before_start_is_never_started(self) -> None:
        clock, events = Clock(), []
        store = MemoryStore([row(n) for n in range(3)])
        sup = Supervisor(store, lambda a: TestSession(a, events), DECODE,
                         settings(connect_rate=1), clock)
        sup.startService()
        self.assertEqual(events, [("start", row(0)["id"])])
        store.rows = [row(0), row(2)]
        sup.refresh()
        clock.advance(1)
        clock.advance(1)
        self.assertEqual(events, [("start", row(0)["id"]), ("start", row(2)["id"])])


class ShutdownTests(SynchronousTestCase):
    def test_stop_logs_out_every_session(self) -> None:
        """(The store's final write comes after, in the daemon's stop: test_store.)"""
        clock, events = Clock(), []
        store = MemoryStore([row(0), row(1)])
        sup = Supervisor(store, lambda a: TestSession(a, events), DECODE, settings(), clock)
        sup.startService()
        done: list = []
        lines: list[str] = []
        observer = lambda e: lines.append(formatEvent(e))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        sup.stopService().addCallback(done.append)
        self.assertEqual(done, [None])
        self.assertIn("[idle/db] 2 sessions stopped in 0.0s", lines)
        self.assertEqual(sorted(e for e in events if e[0] == "stop"),
                         [("stop", row(0)["id"]), ("stop", row(1)["id"])])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stop_waits_at_most_the_shutdown_timeout(self) -> None:
        clock, events = Clock(), []
        store = MemoryStore([row(0)])
        hang: Deferred = Deferred()
        sup = Supervisor(store, lambda a: TestSession(a, events, stop_result=hang), DECODE,
                         settings(shutdown_timeout=10), clock)
        sup.startService()
        done: list = []
        sup.stopService().addCallback(done.append)
        clock.advance(9)
        self.assertEqual(done, [])
        clock.advance(1)
        self.assertEqual(done, [None])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_refresh_finishing_after_stop_starts_nothing(self) -> None:
        clock, events = Clock(), []
        store = MemoryStore([row(0)])
        store.gate = gate = Deferred()
        sup = Supervisor(store, lambda a: TestSession(a, events), DECODE, settings(), clock)
        sup.startService()
        sup.stopService()
        gate.callback(None)
        self.assertEqual(events, [])
        self.assertEqual(sup.sessions, {})


class NotifyDebounceTests(SynchronousTestCase):
    def test_notifications_within_a_second_cause_one_refresh(self) -> None:
        clock = Clock()
        store = MemoryStore([row(0)])
        sup = Supervisor(store, lambda a: TestSession(a, []), DECODE, settings(), clock)
        sup.startService()
        reads = store.reads
        for _ in range(5):
            sup.request_refresh()
            clock.advance(0.1)
        self.assertEqual(store.reads, reads)
        clock.advance(0.6)
        self.assertEqual(store.reads, reads + 1)


class DatabaseTests(TestCase):
    """The supervisor with a real AccountStore on a real PostgreSQL."""

    timeout = 120

    def rows(self, dsn: str, n: int) -> list[str]:
        return [add_row(dsn, secret=encrypt_secret("pw", KEY.encode())) for _ in range(n)]

    def start_store(self, store: AccountStore) -> AccountStore:
        """Start the store as the daemon does (before the supervisor; stopped after it)."""
        store.startService()
        self.addCleanup(lambda: store.stopService() if store.running else None)
        return store

    @inline
    async def test_database_restart_while_sessions_run(self) -> None:
        server = PostgresServer()
        self.addCleanup(server.destroy)
        dsn = server.create_database()
        from rebreak_idle.db.migrate import apply

        apply(dsn, dev_schema=True)
        ids = self.rows(dsn, 3)
        store = self.start_store(AccountStore(dsn, reactor, flush_interval=3600,
                                              connect_timeout=5))
        events: list = []
        sessions: list[TestSession] = []

        def factory(account: Account) -> TestSession:
            sessions.append(TestSession(account, events, recorder=store))
            return sessions[-1]

        sup = Supervisor(store, factory, DECODE, settings(refresh_interval=3600), reactor)
        sup.startService()
        self.addCleanup(lambda: sup.stopService() if sup.running else None)
        self.assertTrue(await sup.refresh())
        await store.flush()
        self.assertEqual(len(sup.sessions), 3)
        before = [status(dsn, i)[2] for i in ids]
        self.assertNotIn(None, before)

        server.stop()
        for i in ids:
            store.record_heartbeat(i)
        store.record_error(ids[0], "connect failed: timeout")
        self.assertFalse(await sup.refresh())  # logged, not raised
        await store.flush()
        self.assertEqual(store.pending, 4)
        self.assertEqual(len(sup.sessions), 3)
        self.assertTrue(all(s.running for s in sessions))

        server.start()
        self.assertTrue(await sup.refresh())
        await store.flush()
        self.assertEqual(store.pending, 0)
        after = [status(dsn, i)[2] for i in ids]
        self.assertTrue(all(a > b for a, b in zip(after, before, strict=True)))
        self.assertEqual(status(dsn, ids[0])[0], "connect failed: timeout")
        self.assertEqual([e for e in events if e[0] == "stop"], [])
        await sup.stopService()
        self.assertEqual(len([e for e in events if e[0] == "stop"]), 3)
        await store.stopService()
        self.assertTrue(store.pool.closed)

    @inline
    async def test_bad_secret_next_to_good_rows(self) -> None:
        dsn = fresh_database()
        good = self.rows(dsn, 2)
        bad = add_row(dsn, secret="not-a-secret")
        store = self.start_store(AccountStore(dsn, reactor))
        sup = Supervisor(store, lambda a: TestSession(a, []), DECODE, settings(), reactor)
        sup.startService()
        self.addCleanup(lambda: sup.stopService() if sup.running else None)
        self.assertTrue(await sup.refresh())
        self.assertEqual(sorted(sup.sessions), sorted(good))
        await store.flush()
        self.assertIn("3 ':'-separated parts", status(dsn, bad)[0])

    @inline
    async def test_notify_triggers_a_refresh(self) -> None:
        dsn = fresh_database()
        store = AccountStore(dsn, reactor)
        arrived: Deferred = Deferred()

        def factory(account: Account) -> TestSession:
            if not arrived.called:
                arrived.callback(account.id)
            return TestSession(account, [])

        sup = Supervisor(store, factory, DECODE, settings(refresh_interval=3600), reactor)
        listener = store.listen("rebreak_idle", sup.request_refresh)  # as the daemon wires it
        self.start_store(store)
        sup.startService()
        self.addCleanup(lambda: sup.stopService() if sup.running else None)
        await listener.when_listening().addTimeout(10, reactor)
        self.assertTrue(await sup.refresh())
        self.assertEqual(sup.sessions, {})
        new_id = self.rows(dsn, 1)[0]
        sql(dsn, "SELECT pg_notify('rebreak_idle', '')")
        self.assertEqual(await arrived.addTimeout(10, reactor), new_id)
        self.assertTrue(await sup.refresh())
        self.assertEqual(list(sup.sessions), [new_id])


@implementer(IStreamClientEndpoint)
class _InMemory:
    """Joins each connection to the scripted IMAP server in memory (iosim)."""

    def __init__(self, server: ScriptedIMAPServer) -> None:
        self.server = server
        self.pumps: list[Any] = []

    def connect(self, factory: Any) -> Deferred:
        client = factory.buildProtocol(None)
        self.pumps.append(self.server.connect(client))
        return succeed(client)

    def pump(self, clock: Clock) -> None:
        clock.advance(0)
        while any([p.flush() for p in list(self.pumps)]):
            clock.advance(0)


class StateCountTests(SynchronousTestCase):
    """The status page's counts come from the sessions' tally, kept up to date on each
    move (no walk of the sessions): through connects, a refused password, a dropped
    connection, a stop (during and after its LOGOUT), a restart and an invalid row, the
    page shows what the snapshot says."""

    def setUp(self) -> None:
        from rebreak_idle.config import session_settings
        from rebreak_idle.session.session import MailboxSession

        self.clock = Clock()
        self.server = ScriptedIMAPServer(self.clock, password="pw")
        self.server.passwords["u3@example.org"] = "not-pw"
        self.endpoint = _InMemory(self.server)
        self.store = MemoryStore([row(n) for n in range(5)])
        config = Settings(database_url="postgresql://x", admin_secret="s" * 8,
                          encryption_key=KEY, connect_rate=2.0, reconnect_delay=5.0)
        self.sup = Supervisor(self.store, self.session, DECODE, supervisor_settings(config),
                              self.clock)
        self._settings = session_settings(config)
        self._make = MailboxSession
        self.snapshots = 0
        page = make_status_resource(
            StatusSettings(status_endpoint="tcp:0", admin_secret="s" * 8),
            ready=lambda: True, snapshot=self.snapshot, counts=self.sup.counts)
        self.page = page.getChildWithDefault(b"", DummyRequest([b""]))
        self.addCleanup(self.stop)

    def session(self, account: Account) -> Any:
        return self._make(account, self._settings, Recorder(Clock()), lambda *a: None,
                          self.clock, endpoint=self.endpoint, jitter=lambda: 0.0,
                          tally=self.sup.tally)

    def snapshot(self) -> list[dict]:
        self.snapshots += 1
        return self.sup.snapshot()

    def stop(self) -> None:
        if self.sup.running:
            self.sup.stopService()
            for _ in range(20):
                self.endpoint.pump(self.clock)
                self.clock.advance(1)

    def shown(self) -> dict[str, int]:
        """The states table of ``GET /`` without the admin header."""
        request = DummyRequest([b""])
        body = self.page.render(request).decode()
        table = body.split("<table id=states>", 1)[1].split("</table>", 1)[0]
        return {state: int(n) for state, n in
                re.findall(r"<tr><td>([^<]+)</td><td>(\d+)</td></tr>", table)}

    def assertPageIsTrue(self) -> None:
        snapshots = self.snapshots
        expected = Counter(str(s["state"]) for s in self.sup.snapshot())
        self.assertEqual(self.shown(), dict(expected))
        self.assertEqual(self.snapshots, snapshots)  # the page took no snapshot

    def advance(self, seconds: float) -> None:
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self.endpoint.pump(self.clock)
            self.clock.advance(0.5)
        self.endpoint.pump(self.clock)

    def test_counts_follow_every_move(self) -> None:
        self.sup.startService()  # 2 per second: one started, four queued
        self.endpoint.pump(self.clock)
        self.assertEqual(self.shown(), {"idle": 1, "queued": 4})
        self.assertPageIsTrue()
        self.advance(3)
        self.assertEqual(self.shown(), {"idle": 4, "auth-failed": 1})
        self.assertPageIsTrue()
        self.server.connections[0].close()  # a dropped connection: backoff
        self.endpoint.pump(self.clock)
        self.assertEqual(self.shown(), {"idle": 3, "backoff": 1, "auth-failed": 1})
        self.assertPageIsTrue()
        self.advance(10)  # reconnected
        self.assertPageIsTrue()
        # a stop whose LOGOUT hangs (shown nowhere while it logs out), a restart (new
        # secret: the new session waits for the old one's LOGOUT) and an invalid row
        for conn in self.server.connections:
            conn.responsive = False
        self.store.rows[1:3] = [row(1, password="pw2"), row(2, encrypted_secret="broken")]
        del self.store.rows[0]
        self.server.passwords["u1@example.org"] = "pw2"
        self.sup.refresh()
        self.endpoint.pump(self.clock)
        self.assertEqual(self.shown(), {"idle": 1, "queued": 1, "invalid": 1,
                                        "auth-failed": 1})
        self.assertPageIsTrue()
        self.advance(15)  # the LOGOUT deadlines pass; the successor starts
        self.assertEqual(self.shown(), {"idle": 2, "invalid": 1, "auth-failed": 1})
        self.assertPageIsTrue()
        self.stop()
        self.assertEqual(self.shown(), {"invalid": 1})
        self.assertEqual(self.sup.tally.counts(), dict.fromkeys(State, 0))


class DescriptorCapacityTests(SynchronousTestCase):
    """More active accounts than the descriptor limit allows: the accounts beyond wait,
    shown as waiting-for-descriptors, said once, and start when sessions end."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list = []
        self.store = MemoryStore([row(n) for n in range(10)])
        self.logs = capture_logs(self)

    def supervisor(self, capacity: int | None) -> Supervisor:
        sup = Supervisor(self.store, lambda a: TestSession(a, self.events), DECODE,
                         settings(refresh_interval=5, connect_rate=1000), self.clock,
                         capacity=capacity)
        self.addCleanup(sup.stopService)
        return sup

    def states(self, sup: Supervisor) -> list[str]:
        return sorted(s["state"] for s in sup.snapshot())

    def test_accounts_beyond_the_capacity_wait_and_say_so_once(self) -> None:
        sup = self.supervisor(capacity=6)
        sup.startService()
        self.clock.advance(1)
        self.assertEqual(sum(1 for e in self.events if e[0] == "start"), 6)
        self.assertEqual(self.states(sup), ["running"] * 6 + ["waiting-for-descriptors"] * 4)
        self.assertEqual(sample("rebreak_idle_sessions", state="waiting-for-descriptors"), 4)
        self.assertEqual(sample("rebreak_idle_sessions", state="queued"), 0)
        for _ in range(5):  # later refreshes: nothing started, nothing said again
            self.clock.advance(5)
        self.assertEqual(sum(1 for e in self.events if e[0] == "start"), 6)
        warned = [line for line in self.logs if "file descriptor limit is reached" in line]
        self.assertEqual(len(warned), 1, self.logs)
        self.assertIn("it allows 6 sessions, 4 accounts wait (state waiting-for-descriptors)",
                      warned[0])

    def test_a_session_that_ends_lets_a_waiting_account_start(self) -> None:
        sup = self.supervisor(capacity=6)
        sup.startService()
        self.clock.advance(1)
        started = [e[1] for e in self.events if e[0] == "start"]
        self.store.rows = [r for r in self.store.rows if r["id"] not in started[:2]]
        self.clock.advance(5)
        self.assertEqual(sum(1 for e in self.events if e[0] == "start"), 8)
        self.assertEqual(self.states(sup), ["running"] * 6 + ["waiting-for-descriptors"] * 2)
        self.store.rows = self.store.rows[:6]
        self.clock.advance(5)
        self.assertEqual(self.states(sup), ["running"] * 6)
        self.assertEqual(sample("rebreak_idle_sessions", state="waiting-for-descriptors"), 0)

    def test_without_a_limit_everything_starts(self) -> None:
        sup = self.supervisor(capacity=None)
        sup.startService()
        self.clock.advance(1)
        self.assertEqual(self.states(sup), ["running"] * 10)


class SlotStateTests(SynchronousTestCase):
    """One slot per account, in one SlotState; the moves follow SLOT_TRANSITIONS and the
    counts follow the moves."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list = []
        self.logging_out: Deferred = Deferred()
        self.store = MemoryStore([row(0), row(1, encrypted_secret="garbage")])
        stops = iter([self.logging_out])

        def make(account: Account) -> TestSession:
            return TestSession(account, self.events, next(stops, None))

        self.sup = Supervisor(self.store, make, DECODE, settings(refresh_interval=300),
                              self.clock)

    def states(self) -> dict[str, str]:
        out = {}
        for n in range(2):
            slot = self.sup.slot(row(n)["id"])
            out[str(n)] = slot.state.value if slot is not None else "-"
        return out

    def test_table_names_every_state(self) -> None:
        self.assertEqual(set(SLOT_TRANSITIONS), set(SlotState))
        for targets in SLOT_TRANSITIONS.values():
            self.assertLessEqual(targets, set(SlotState))
        self.assertEqual(set(SLOT_ENTRIES), {SlotState.QUEUED, SlotState.SUCCESSOR,
                                             SlotState.INVALID})

    def test_moves_of_a_replaced_account_and_an_invalid_row(self) -> None:
        seen = [self.states()]
        self.sup.startService()
        seen.append(self.states())
        # (a TestSession moves no session tally: a started one counts as "stopped")
        self.assertEqual(self.sup.counts(), {"stopped": 1, "invalid": 1})
        # row 0's secret changes while its session logs out; row 1 becomes valid
        self.store.rows = [row(0, password="new"), row(1)]
        self.clock.advance(300)
        seen.append(self.states())
        self.assertEqual(self.sup.counts(), {"stopped": 1, "queued": 1})
        self.assertEqual(len(self.sup.stopping()), 1)
        self.logging_out.callback(None)  # the old session's LOGOUT is done
        seen.append(self.states())
        self.store.rows = [row(1, encrypted_secret="garbage")]
        self.clock.advance(300)
        seen.append(self.states())
        self.assertEqual(seen, [{"0": "-", "1": "-"}, {"0": "running", "1": "invalid"},
                                {"0": "successor", "1": "running"},
                                {"0": "running", "1": "running"},
                                {"0": "-", "1": "invalid"}])
        self.assertEqual(self.sup.counts(), {"invalid": 1})
        self.assertEqual(len(self.sup.sessions), 0)
        self.assertEqual([r.id for r in self.sup.invalid_rows()], [row(1)["id"]])

    def test_forbidden_move_raises(self) -> None:
        self.sup.startService()
        slot = self.sup.slot(row(0)["id"])
        with self.assertRaises(RuntimeError):
            self.sup._move(row(0)["id"], slot, SlotState.QUEUED)  # started: only departs
        self.assertIs(slot.state, SlotState.RUNNING)
        self.assertEqual(self.sup.counts(), {"stopped": 1, "invalid": 1})
