"""``rebreak_idle.mailbox_state`` on a real PostgreSQL: the migration, batched mark writes,
reading them back (hostile rows skipped), and the loader step before sessions start."""

from __future__ import annotations

import uuid
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.db.marks import MarkLoader, decode_rows
from rebreak_idle.db.migrate import apply
from rebreak_idle.session.mailbox_marks import MailboxMark, MailboxMemory
from rebreak_idle.testing.pg import fresh_database, sql
from tests.support.account_rows import StoreTestCase, inline, statement_calls
from tests.support.fleet import capture_logs


class MigrationTests(SynchronousTestCase):
    def test_table_and_key(self) -> None:
        dsn = fresh_database()
        apply(dsn)  # idempotent
        cols = dict(sql(dsn, "SELECT column_name, data_type FROM information_schema.columns "
                             "WHERE table_schema = 'rebreak_idle' "
                             "AND table_name = 'mailbox_state'"))
        self.assertEqual(cols, {"connection_id": "uuid", "mailbox": "text",
                                "uidvalidity": "bigint", "uidnext": "bigint",
                                "message_count": "bigint",
                                "updated_at": "timestamp with time zone"})
        key = sql(dsn, "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                       "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                       "WHERE i.indrelid = 'rebreak_idle.mailbox_state'::regclass "
                       "AND i.indisprimary ORDER BY a.attname")
        self.assertEqual([k for (k,) in key], ["connection_id", "mailbox"])
        backend = [c for (c,) in sql(dsn, "SELECT column_name FROM information_schema.columns "
                                          "WHERE table_schema = 'rebreak'")]
        self.assertFalse([c for c in backend if "uid" in c or "mark" in c])


class WriteTests(StoreTestCase):
    @inline
    async def test_one_statement_per_flush_and_read_back(self) -> None:
        dsn = fresh_database()
        sql(dsn, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        store = self.make_store(dsn)
        ids = [str(uuid.uuid4()) for _ in range(500)]
        sql(dsn, "SELECT pg_stat_statements_reset()")
        for n, account_id in enumerate(ids):
            store.record_mark(account_id, "INBOX", MailboxMark(7, n + 1, n))
            store.record_mark(account_id, "INBOX", MailboxMark(7, n + 2, n + 1))  # wins
        store.record_mark(ids[0], "Archive", MailboxMark(9, None, 4))
        store.record_mark("not-a-uuid", "INBOX", MailboxMark(1, 1, 1))  # refused
        self.assertEqual(store.pending, 501)
        await store.flush()
        self.assertEqual(store.pending, 0)
        self.assertEqual(statement_calls(dsn, "INSERT INTO rebreak_idle.mailbox_state"), 1)
        marks = await store.load_marks([*ids[:3], "not-a-uuid"])
        self.assertEqual(marks, {(ids[0], "INBOX"): MailboxMark(7, 2, 1),
                                 (ids[0], "Archive"): MailboxMark(9, None, 4),
                                 (ids[1], "INBOX"): MailboxMark(7, 3, 2),
                                 (ids[2], "INBOX"): MailboxMark(7, 4, 3)})
        store.record_mark(ids[1], "INBOX", MailboxMark(8, 1, 0))  # an update of the row
        await store.flush()
        marks = await store.load_marks([ids[1]])
        self.assertEqual(marks, {(ids[1], "INBOX"): MailboxMark(8, 1, 0)})

    @inline
    async def test_failed_write_keeps_the_marks(self) -> None:
        dsn = fresh_database()
        store = self.make_store(dsn)
        sql(dsn, "ALTER TABLE rebreak_idle.mailbox_state RENAME TO gone")
        account_id = str(uuid.uuid4())
        store.record_mark(account_id, "INBOX", MailboxMark(1, 2, 3))
        store.record_heartbeat(str(uuid.uuid4()))
        await store.flush()
        self.assertEqual(store.pending, 1)  # the heartbeat went out, the mark waits
        sql(dsn, "ALTER TABLE rebreak_idle.gone RENAME TO mailbox_state")
        await store.flush()
        self.assertEqual(store.pending, 0)
        self.assertEqual(await store.load_marks([account_id]),
                         {(account_id, "INBOX"): MailboxMark(1, 2, 3)})
        self.flushLoggedErrors()


    def logs(self) -> list[str]:
        return capture_logs(self, LogLevel.debug)

    @inline
    async def test_a_refused_folder_name_is_dropped_alone(self) -> None:
        """A folder named "\\x00" (``&AAA-`` decoded) cannot be stored: its mark is dropped
        with one line, the 5 good marks of the same batch are written, and later flushes
        keep working (before: the whole batch was put back, every flush failed)."""
        dsn = fresh_database()
        store = self.make_store(dsn)
        lines = self.logs()
        ids = [str(uuid.uuid4()) for _ in range(5)]
        for n, account_id in enumerate(ids[:3]):
            store.record_mark(account_id, "INBOX", MailboxMark(7, n + 1, n))
        store.record_mark(ids[0], "\x00", MailboxMark(1, 2, 3))
        for n, account_id in enumerate(ids[3:]):
            store.record_mark(account_id, "INBOX", MailboxMark(8, n + 1, n))
        await store.flush()
        self.assertEqual(store.pending, 0)
        stored = sql(dsn, "SELECT connection_id::text, mailbox FROM rebreak_idle.mailbox_state")
        self.assertEqual(sorted(stored), sorted((i, "INBOX") for i in ids))
        refused = [line for line in lines if "refused" in line]
        self.assertEqual(len(refused), 1, lines)
        self.assertIn(ids[0], refused[0])
        self.assertIn("'\\x00'", refused[0])  # the name, escaped
        self.assertIn("NUL", refused[0])
        self.assertNotIn("keeping them", " ".join(lines))
        store.record_mark(ids[1], "INBOX", MailboxMark(9, 9, 9))  # later flushes work
        await store.flush()
        self.assertEqual(await store.load_marks([ids[1]]),
                         {(ids[1], "INBOX"): MailboxMark(9, 9, 9)})
        self.assertEqual(len([line for line in lines if "refused" in line]), 1)


class DecodeTests(SynchronousTestCase):
    def test_hostile_rows_are_skipped(self) -> None:
        good = ("a", "INBOX", 7, 3, 2)
        rows = [good, ("b", "INBOX", None, None, 0), ("c", "INBOX", 0, 3, 2),
                ("d", "INBOX", 7, 2**32, 2), ("e", "INBOX", 7, 3, -1),
                ("f", "INBOX", "7", 3, 2), ("g", None, 7, 3, 2), ("h", "x" * 2000, 7, 3, 2),
                ("i", "INBOX", True, 3, 2), ("j", "INBOX", 7), None, 42]
        self.assertEqual(decode_rows(rows), {("a", "INBOX"): MailboxMark(7, 3, 2),
                                             ("b", "INBOX"): MailboxMark(None, None, 0)})


class LoaderTests(SynchronousTestCase):
    def rows(self, *ids: str) -> list[dict[str, Any]]:
        return [{"id": i} for i in ids]

    def test_loads_only_what_is_new_after_the_filter(self) -> None:
        memory = MailboxMemory()
        asked: list[list[str]] = []

        def load(ids: list[str]) -> Deferred:
            asked.append(ids)
            return succeed({(i, "INBOX"): MailboxMark(1, 2, 3) for i in ids})

        def leases(rows: list[dict]) -> Deferred:
            return succeed([r for r in rows if r["id"] != "c"])

        loader = MarkLoader(memory, load, then=leases)
        box: list[Any] = []
        loader(self.rows("a", "b", "c")).addBoth(box.append)
        self.assertEqual(box, [self.rows("a", "b")])
        self.assertEqual(asked, [["a", "b"]])
        loader(self.rows("a", "b", "d")).addBoth(box.append)
        self.assertEqual(asked, [["a", "b"], ["d"]])
        loader(self.rows("a", "b", "d")).addBoth(box.append)
        self.assertEqual(len(asked), 2)  # nothing new: no query
        self.assertEqual(memory.get("d"), MailboxMark(1, 2, 3))

    def test_failed_read_lets_the_rows_pass_and_retries_later(self) -> None:
        memory = MailboxMemory()
        answers = [fail(RuntimeError("database down")), succeed({})]
        loader = MarkLoader(memory, lambda ids: answers.pop(0))
        box: list[Any] = []
        loader(self.rows("a")).addBoth(box.append)
        self.assertEqual(box, [self.rows("a")])
        self.assertEqual(memory.unloaded(["a"]), ["a"])
        loader(self.rows("a")).addBoth(box.append)
        self.assertEqual(memory.unloaded(["a"]), [])
