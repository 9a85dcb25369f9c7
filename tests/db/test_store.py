"""AccountStore on a real PostgreSQL: the account query, batched status writes, outages,
LISTEN/NOTIFY."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import psycopg2
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from rebreak_idle import metrics
from rebreak_idle.accounts.account import COLUMNS
from rebreak_idle.config import Settings
from rebreak_idle.db.connect import PoolClosed, StatementTimeout
from rebreak_idle.db.store import AccountStore
from rebreak_idle.db.writes import WriteBuffer, refused, write_isolating
from rebreak_idle.failures import describe
from rebreak_idle.interfaces import IAccountSource, IRecorder
from rebreak_idle.service import Daemon
from rebreak_idle.testing.pg import PostgresServer, fresh_database, sql
from tests.support.account_rows import StoreTestCase, add_row, inline, statement_calls, status
from tests.support.fleet import capture_logs


def sample(name: str, **labels: str) -> float | None:
    """A metric's current value, read through the daemon's registry."""
    return metrics.REGISTRY.get_sample_value(name, labels)


class ActiveTests(StoreTestCase):
    @inline
    async def test_active_rows_as_dicts(self) -> None:
        dsn = fresh_database()
        a = add_row(dsn, imap_username="user-a", auth_method="xoauth2")
        add_row(dsn, active=False)
        rows = await self.make_store(dsn).active()
        self.assertEqual(len(rows), 1)
        row = rows[0]
        for column in COLUMNS:
            self.assertIn(column, row)
        self.assertEqual(row["id"], a)
        self.assertEqual(row["imap_username"], "user-a")
        self.assertEqual(row["auth_method"], "xoauth2")
        self.assertEqual(row["imap_port"], 993)
        self.assertIsNone(row["heartbeat_age"])

    @inline
    async def test_key_value_dsn_with_libpq_parameters(self) -> None:
        uri = fresh_database()
        add_row(uri)
        params = psycopg2.extensions.parse_dsn(uri)
        dsn = " ".join(f"{k}={v}" for k, v in params.items()) + " sslmode=disable"
        self.assertEqual(len(await self.make_store(dsn).active()), 1)
        self.assertEqual(len(await self.make_store(
            uri + "?sslmode=disable&application_name=rebreak-idle").active()), 1)


class WriteTests(StoreTestCase):
    @inline
    async def test_error_clear_heartbeat(self) -> None:
        dsn = fresh_database()
        a, b = add_row(dsn), add_row(dsn)
        store = self.make_store(dsn)
        store.record_error(a, "[AUTHENTICATIONFAILED] Invalid credentials")
        store.record_heartbeat(b)
        await store.flush()
        err, err_at, hb = status(dsn, a)
        self.assertEqual(err, "[AUTHENTICATIONFAILED] Invalid credentials")
        self.assertIsNotNone(err_at)
        self.assertIsNone(hb)
        self.assertIsNotNone(status(dsn, b)[2])
        store.clear_error(a)
        await store.flush()
        self.assertEqual(status(dsn, a)[:2], (None, None))
        self.assertEqual(store.pending, 0)

    @inline
    async def test_errors_are_written_promptly_in_one_statement(self) -> None:
        dsn = fresh_database()
        sql(dsn, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        ids = [add_row(dsn) for _ in range(5)]
        store = self.make_store(dsn, flush_interval=3600)
        store.startService()
        sql(dsn, "SELECT pg_stat_statements_reset()")
        for i, row_id in enumerate(ids):
            store.record_error(row_id, f"first {i}")
            store.record_error(row_id, f"error {i}")  # last value wins
        store.clear_error(ids[0])
        # the prompt flush is scheduled for the next reactor turn; wait for it to be done
        await defer.Deferred.fromCoroutine(_turn())
        await store.flush()
        self.assertEqual(status(dsn, ids[0])[0], None)
        self.assertEqual([status(dsn, i)[0] for i in ids[1:]],
                         ["error 1", "error 2", "error 3", "error 4"])
        self.assertEqual(statement_calls(dsn, "UPDATE rebreak.mail_connections AS m SET "
                                              "last_connect_error"), 1)

    @inline
    async def test_heartbeats_are_one_statement_per_flush(self) -> None:
        dsn = fresh_database()
        sql(dsn, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        ids = [add_row(dsn) for _ in range(300)]
        store = self.make_store(dsn)
        sql(dsn, "SELECT pg_stat_statements_reset()")
        for row_id in ids:
            store.record_heartbeat(row_id)
            store.record_heartbeat(row_id)
        self.assertEqual(store.pending, 300)
        self.assertEqual(sample("rebreak_idle_db_write_buffer"), 300)
        await store.flush()
        self.assertEqual(sample("rebreak_idle_db_write_buffer"), 0)
        count = sql(dsn, "SELECT count(*) FROM rebreak.mail_connections "
                         "WHERE last_idle_heartbeat_at IS NOT NULL")[0][0]
        self.assertEqual(count, 300)
        self.assertEqual(statement_calls(dsn, "UPDATE rebreak.mail_connections AS m SET "
                                              "last_idle_heartbeat_at"), 1)

    @inline
    async def test_heartbeats_wait_for_the_flush_interval(self) -> None:
        dsn = fresh_database()
        a = add_row(dsn)
        clock = Clock()
        clock.advance(1_700_000_000)
        store = self.make_store(dsn, clock=clock, flush_interval=5)
        store.startService()
        store.record_heartbeat(a)
        clock.advance(4)
        self.assertEqual(store.pending, 1)
        clock.advance(1)  # the flush starts now; wait for it through the lock
        await store.flush()
        hb = status(dsn, a)[2]
        self.assertEqual(hb.timestamp(), 1_700_000_000)

    def logs(self) -> list[str]:
        return capture_logs(self, LogLevel.debug)

    @inline
    async def test_a_refused_error_text_is_dropped_alone(self) -> None:
        """A server's error text with a NUL cannot be stored: that one update is dropped
        with one line, the 5 others of the batch are written, later writes work."""
        dsn = fresh_database()
        ids = [add_row(dsn) for _ in range(6)]
        store = self.make_store(dsn)
        lines = self.logs()
        for n, row_id in enumerate(ids[:5]):
            store.record_error(row_id, f"error {n}")
        store.record_error(ids[5], "NO [AUTHENTICATIONFAILED] bad\x00byte")
        await store.flush()
        self.assertEqual(store.pending, 0)
        self.assertEqual([status(dsn, i)[0] for i in ids],
                         ["error 0", "error 1", "error 2", "error 3", "error 4", None])
        refused = [line for line in lines if "refused" in line]
        self.assertEqual(len(refused), 1, lines)
        self.assertIn(f"error update of account {ids[5]}", refused[0])
        store.clear_error(ids[0])
        store.record_error(ids[5], "later")
        await store.flush()
        self.assertEqual((status(dsn, ids[0])[0], status(dsn, ids[5])[0]), (None, "later"))
        self.assertEqual(len([line for line in lines if "refused" in line]), 1)

    @inline
    async def test_a_refused_heartbeat_is_dropped_alone(self) -> None:
        """An id that Python reads as a UUID but PostgreSQL refuses (``urn:uuid:…``): the
        heartbeat is dropped with one line, the 5 others are written."""
        dsn = fresh_database()
        ids = [add_row(dsn) for _ in range(5)]
        store = self.make_store(dsn)
        lines = self.logs()
        odd = f"urn:uuid:{uuid.uuid4()}"
        for row_id in ids[:2]:
            store.record_heartbeat(row_id)
        store.record_heartbeat(odd)
        for row_id in ids[2:]:
            store.record_heartbeat(row_id)
        await store.flush()
        self.assertEqual(store.pending, 0)
        self.assertTrue(all(status(dsn, i)[2] is not None for i in ids))
        refused = [line for line in lines if "refused" in line]
        self.assertEqual(len(refused), 1, lines)
        self.assertIn(f"heartbeat update of account {odd}", refused[0])
        self.assertIn("invalid input syntax for type uuid", refused[0])

    def test_malformed_ids_are_ignored(self) -> None:
        store = AccountStore("postgresql://127.0.0.1:1/none", reactor)
        store.record_heartbeat("not-a-uuid")
        store.record_error("'; DROP TABLE x; --", "boom")
        self.assertEqual(store.pending, 0)


class OutageTests(StoreTestCase):
    timeout = 120

    @inline
    async def test_writes_survive_a_database_restart(self) -> None:
        server = PostgresServer()
        self.addCleanup(server.destroy)
        dsn = server.create_database()
        from rebreak_idle.db.migrate import apply

        apply(dsn, dev_schema=True)
        a, b = add_row(dsn), add_row(dsn)
        store = self.make_store(dsn, connect_timeout=5)
        self.assertEqual(len(await store.active()), 2)  # the pool holds a connection now
        server.stop()
        failures = sample("rebreak_idle_db_write_failures_total")
        store.record_heartbeat(a)
        store.record_error(b, "connect failed: timeout")
        await store.flush()
        self.assertEqual(store.pending, 2)
        self.assertGreater(sample("rebreak_idle_db_write_failures_total"), failures)
        with self.assertRaises(psycopg2.OperationalError):
            await store.active()
        store.record_heartbeat(b)
        server.start()
        await store.flush()
        self.assertEqual(store.pending, 0)
        self.assertIsNotNone(status(dsn, a)[2])
        self.assertIsNotNone(status(dsn, b)[2])
        self.assertEqual(status(dsn, b)[0], "connect failed: timeout")
        self.assertEqual(len(await store.active()), 2)

    @inline
    async def test_dead_pooled_connection_is_replaced(self) -> None:
        dsn = fresh_database()
        add_row(dsn)
        store = self.make_store(dsn, pool_size=1)
        await store.active()
        sql(dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        self.assertEqual(len(await store.active()), 1)


class BufferTests(SynchronousTestCase):
    def test_bounded_oldest_dropped(self) -> None:
        buf = WriteBuffer(3)
        for key in "abcde":
            buf.put(key, key.upper())
        self.assertEqual(buf.dropped, 2)
        self.assertEqual(list(buf.take()), ["c", "d", "e"])

    def test_restore_keeps_newer_values(self) -> None:
        buf = WriteBuffer(10)
        buf.put("a", 1)
        buf.put("b", 1)
        taken = buf.take()
        buf.put("b", 2)
        buf.restore(taken)
        self.assertEqual(buf.take(), {"a": 1, "b": 2})

    def test_last_value_wins_and_moves_to_the_end(self) -> None:
        buf = WriteBuffer(2)
        buf.put("a", 1)
        buf.put("b", 1)
        buf.put("a", 2)
        buf.put("c", 1)  # drops b, the oldest
        self.assertEqual(buf.take(), {"a": 2, "c": 1})


class IsolatingTests(SynchronousTestCase):
    """write_isolating: a refused row alone is dropped; a lost connection keeps the rest."""

    def run_write(self, entries: dict, fail: Callable[[dict], Exception | None]
                  ) -> tuple[list[dict], list, dict, Exception | None]:
        written: list[dict] = []
        dropped: list = []

        def write(part: dict) -> Deferred:
            error = fail(part)
            if error is not None:
                return defer.fail(error)
            written.append(part)
            return succeed(None)

        box: list = []
        Deferred.fromCoroutine(write_isolating(
            write, entries, lambda k, v, e: dropped.append((k, v)))).addBoth(box.append)
        ((left, error),) = box
        return written, dropped, left, error

    def test_one_refused_row_among_many(self) -> None:
        entries = {n: n for n in range(1000)}
        statements = []

        def fail(part: dict) -> Exception | None:
            statements.append(len(part))
            return psycopg2.DataError("bad") if 617 in part else None

        written, dropped, left, error = self.run_write(entries, fail)
        self.assertEqual(dropped, [(617, 617)])
        self.assertEqual(sorted(k for part in written for k in part),
                         [n for n in range(1000) if n != 617])
        self.assertEqual((left, error), ({}, None))
        self.assertLessEqual(len(statements), 2 * 10 + 1)  # about 2·log2(n)

    def test_a_lost_connection_keeps_what_is_not_written(self) -> None:
        entries = {n: n for n in range(8)}
        calls: list[int] = []

        def fail(part: dict) -> Exception | None:
            calls.append(len(part))
            if len(calls) == 1:
                return ValueError("A string literal cannot contain NUL (0x00) characters.")
            if len(calls) == 2:
                return None  # the first half went out
            return psycopg2.OperationalError("server closed the connection unexpectedly")

        written, dropped, left, error = self.run_write(entries, fail)
        self.assertEqual(written, [{0: 0, 1: 1, 2: 2, 3: 3}])
        self.assertEqual(dropped, [])
        self.assertEqual(left, {4: 4, 5: 5, 6: 6, 7: 7})
        self.assertIsInstance(error, psycopg2.OperationalError)

    def test_what_counts_as_refused(self) -> None:
        self.assertTrue(refused(ValueError("NUL")))
        self.assertTrue(refused(psycopg2.errors.InvalidTextRepresentation("uuid")))
        self.assertTrue(refused(psycopg2.errors.NumericValueOutOfRange("bigint")))
        self.assertTrue(refused(psycopg2.errors.NotNullViolation("null")))
        self.assertFalse(refused(psycopg2.OperationalError("server closed")))
        self.assertFalse(refused(psycopg2.extensions.QueryCanceledError("timeout")))
        self.assertFalse(refused(StatementTimeout("statement took longer than 30s")))
        self.assertFalse(refused(PoolClosed("closed")))


class FlushCoalescingTests(SynchronousTestCase):
    """A slow database must not make flushes pile up (each prompt error write asks for
    one): while a pass runs, every flush() waits for one shared pass after it."""

    def test_flushes_during_a_slow_write_share_one_pass(self) -> None:
        store = AccountStore("postgresql://127.0.0.1:1/none", Clock())
        self.addCleanup(store.pool.close)
        calls: list[tuple] = []
        gate: Deferred = Deferred()

        def run_operation(sql: str, params: tuple) -> Deferred:
            calls.append(params)
            return gate if len(calls) == 1 else succeed(None)

        store.pool.run_operation = run_operation  # the database seam, held by the test
        first_id = str(uuid.uuid4())
        store.record_heartbeat(first_id)
        results = [store.flush()]
        for _ in range(5000):  # far beyond the recursion limit if each one queued
            store.record_error(str(uuid.uuid4()), "connect failed")
            results.append(store.flush())
        self.assertEqual(len(calls), 1)
        self.assertEqual(calls[0], ([first_id], calls[0][1]))

        gate.callback(None)
        self.assertEqual(len(calls), 2, "one more pass for all 5,000 waiting callers")
        self.assertEqual(len(calls[1][0]), 5000, "one statement for every buffered error")
        fired = [d for d in results if d.called]
        self.assertEqual(len(fired), len(results))
        self.assertEqual(store.pending, 0)


class ListenTests(StoreTestCase):
    @inline
    async def test_notify_calls_back_and_survives_a_killed_connection(self) -> None:
        dsn = fresh_database()
        store = self.make_store(dsn)
        store.startService()
        calls: list[Deferred] = [Deferred() for _ in range(3)]
        seen = iter(calls)
        listener = store.listen("rebreak_idle", lambda: next(seen).callback(None))
        await listener.when_listening().addTimeout(10, reactor)
        sql(dsn, "NOTIFY rebreak_idle")
        await calls[0].addTimeout(10, reactor)
        # the LISTEN connection is killed: it comes back and reports once (missed events)
        sql(dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE datname = current_database() AND query LIKE 'LISTEN%%'")
        await calls[1].addTimeout(20, reactor)
        self.assertTrue(listener.listening)
        sql(dsn, "SELECT pg_notify('other_channel', '')")
        sql(dsn, "SELECT pg_notify('rebreak_idle', 'x')")
        await calls[2].addTimeout(10, reactor)


async def _turn() -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, 0, lambda: None)


class SilentServerTests(StoreTestCase):
    """A server that accepts TCP connections and never answers: a network cut as libpq
    sees it."""

    def silent_dsn(self) -> str:
        from twisted.internet.protocol import Factory, Protocol

        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"host=127.0.0.1 port={port.getHost().port} user=u dbname=d sslmode=disable"

    @inline
    async def test_connect_deadline(self) -> None:
        from rebreak_idle.db.pool import StatementTimeout

        store = self.make_store(self.silent_dsn(), connect_timeout=0.3)
        with self.assertRaises(StatementTimeout):
            await store.active()
        store.record_heartbeat(str(uuid.uuid4()))
        await store.flush()
        self.assertEqual(store.pending, 1)

    @inline
    async def test_close_while_connecting(self) -> None:
        from rebreak_idle.db.pool import PoolClosed

        store = AccountStore(self.silent_dsn(), reactor, connect_timeout=30, shutdown_timeout=1)
        store.startService()
        listener = store.listen("ch", lambda: None)
        pending = store.active()
        results: list = []
        pending.addBoth(results.append)
        await store.stopService()
        self.assertFalse(listener.running)
        self.assertEqual(len(results), 1)
        self.assertIsInstance(results[0].value, PoolClosed)


class ServiceTests(SynchronousTestCase):
    """The store is a service of the daemon: stopping it writes what is buffered (within
    ``shutdown_timeout``), then closes the connections."""

    def store_with(self, answer: Callable[[], Deferred]) -> tuple[AccountStore, Clock]:
        clock = Clock()
        store = AccountStore("postgresql://127.0.0.1:1/none", clock, shutdown_timeout=10)
        self.addCleanup(store.pool.close)
        store.pool.run_operation = lambda sql, params: answer()  # the database seam
        store.startService()
        return store, clock

    def logs(self) -> list[str]:
        return capture_logs(self, LogLevel.debug)

    def test_stop_writes_what_is_buffered_then_closes(self) -> None:
        store, clock = self.store_with(lambda: succeed(None))
        verifyObject(IAccountSource, store)
        verifyObject(IRecorder, store)
        lines = self.logs()
        for _ in range(3):
            store.record_heartbeat(str(uuid.uuid4()))
        self.assertEqual(store.pending, 3)
        done: list = []
        store.stopService().addCallback(done.append)
        self.assertEqual(done, [None])
        self.assertIn("[idle/db] final write of 3 status updates took 0.0s", lines)
        self.assertEqual(store.pending, 0)
        self.assertTrue(store.closed)
        self.assertTrue(store.pool.closed)
        self.assertFalse(store.running)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stop_waits_at_most_the_shutdown_timeout(self) -> None:
        store, clock = self.store_with(Deferred)  # a write that never answers
        lines = self.logs()
        store.record_heartbeat(str(uuid.uuid4()))
        done: list = []
        store.stopService().addCallback(done.append)
        clock.advance(9)
        self.assertEqual(done, [])
        self.assertFalse(store.closed)
        clock.advance(1)
        self.assertEqual(done, [None])
        self.assertTrue(store.closed)
        self.assertIn("[idle/db] final write did not finish within 10s; 1 writes lost", lines)


class DaemonStopOrderTests(TestCase):
    """The daemon's stop order, written once in service.py: the supervisor (sessions log
    out), then the store (the final write), then the lease keeper (leases released)."""

    timeout = 60

    @inline
    async def test_supervisor_then_store_then_leases(self) -> None:
        dsn = fresh_database()
        settings = Settings(database_url=dsn, admin_secret="s" * 8, encryption_key="k" * 32,
                            leases="on", replica_id="stop-order", shutdown_timeout=3.0)
        daemon = Daemon(settings, reactor)
        lines = capture_logs(self, LogLevel.debug)
        daemon.startService()
        self.addCleanup(lambda: daemon.running and daemon.stopService())
        self.assertTrue(daemon.store.running)
        self.assertTrue(await daemon.supervisor.refresh())
        await daemon.stopService()

        def first(prefix: str) -> int:
            return next(i for i, line in enumerate(lines) if line.startswith(prefix))

        self.assertLess(first("[idle/db] 0 sessions stopped in"),
                        first("[idle/db] final write of 0 status updates"))
        self.assertLess(first("[idle/db] final write of 0 status updates"),
                        first("[idle/leases] replica stop-order released its"))
        self.assertTrue(daemon.store.closed)
        self.assertFalse(daemon.store.running)


class DescribeTests(SynchronousTestCase):
    """Database failures as one line (failures.describe, the database branch)."""

    def test_libpq_message_first_line(self) -> None:
        error = psycopg2.OperationalError(
            'connection to server at "127.0.0.1", port 1 failed: Connection refused\n'
            "\tIs the server running on that host and accepting TCP/IP connections?\n")
        self.assertEqual(describe(error), 'connection to server at "127.0.0.1", port 1 '
                                          "failed: Connection refused")
        self.assertEqual(describe(psycopg2.OperationalError("")), "OperationalError")

    def test_own_deadlines_read_as_their_message(self) -> None:
        from rebreak_idle.db.pool import PoolClosed, StatementTimeout

        self.assertEqual(describe(StatementTimeout("statement took longer than 30s")),
                         "statement took longer than 30s")
        self.assertEqual(describe(PoolClosed("the database pool is closed")),
                         "the database pool is closed")
