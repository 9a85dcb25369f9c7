"""Pruning the daemon's own tables (rebreak_idle.mailbox_state, account_holdoff) of rows
whose account is gone from rebreak.mail_connections, on a real PostgreSQL."""

from __future__ import annotations

import uuid

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from rebreak_idle.db.prune import prune_gone
from rebreak_idle.db.store import AccountStore
from rebreak_idle.testing.pg import fresh_database, sql
from tests.support.account_rows import add_row


def add_mark(dsn: str, account_id: str, mailbox: str = "INBOX") -> None:
    sql(dsn, "INSERT INTO rebreak_idle.mailbox_state (connection_id, mailbox, uidvalidity, "
             "uidnext, message_count) VALUES (%s, %s, 1, 2, 3)", (account_id, mailbox))


def add_holdoff(dsn: str, account_id: str) -> None:
    sql(dsn, "INSERT INTO rebreak_idle.account_holdoff VALUES (%s, 2, now(), 'tag')",
        (account_id,))


def ids_in(dsn: str, table: str) -> set[str]:
    return {i for (i,) in sql(dsn, f"SELECT DISTINCT connection_id::text "  # noqa: S608
                                   f"FROM rebreak_idle.{table}")}


class PruneTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dsn = fresh_database()
        self.store = AccountStore(self.dsn, reactor, shutdown_timeout=5)
        self.addCleanup(self.store.stopService)
        self.lines: list[str] = []
        observer = lambda e: self.lines.append(formatEvent(e))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def prune(self, **kw: int) -> Deferred:
        return Deferred.fromCoroutine(prune_gone(self.store.pool.run_query, **kw))

    async def test_rows_of_deleted_accounts_go_in_batches(self) -> None:
        active, inactive = add_row(self.dsn), add_row(self.dsn, active=False)
        gone = [str(uuid.uuid4()) for _ in range(5)]
        for account_id in (active, inactive, *gone):
            add_mark(self.dsn, account_id)
            add_mark(self.dsn, account_id, "Junk")
        for account_id in (active, inactive, *gone[:3]):
            add_holdoff(self.dsn, account_id)
        # 2 statements of 3 rows per table and refresh: 6 of the 10 marks, all 3 hold-offs
        self.assertEqual(await self.prune(batch=3, batches=2),
                         {"mailbox_state": 6, "account_holdoff": 3})
        self.assertEqual(len(ids_in(self.dsn, "mailbox_state") - {active, inactive}), 2)
        self.assertEqual(ids_in(self.dsn, "account_holdoff"), {active, inactive})
        self.assertEqual(await self.prune(batch=3, batches=2),
                         {"mailbox_state": 4, "account_holdoff": 0})
        # the rows of accounts still in the table (active or not) stay
        self.assertEqual(ids_in(self.dsn, "mailbox_state"), {active, inactive})
        self.assertEqual(len(sql(self.dsn, "SELECT 1 FROM rebreak_idle.mailbox_state")), 4)
        self.assertEqual(await self.prune(), {"mailbox_state": 0, "account_holdoff": 0})
        pruned = [line for line in self.lines if "pruned" in line]
        self.assertEqual(pruned, [
            "[idle/db] pruned 6 mailbox mark row(s) of deleted accounts",
            "[idle/db] pruned 3 hold-off row(s) of deleted accounts",
            "[idle/db] pruned 4 mailbox mark row(s) of deleted accounts"])

    async def test_a_failure_is_logged_and_left_for_the_next_refresh(self) -> None:
        add_mark(self.dsn, str(uuid.uuid4()))
        sql(self.dsn, "ALTER TABLE rebreak_idle.account_holdoff RENAME TO away")
        self.assertEqual(await self.prune(), {"mailbox_state": 1, "account_holdoff": 0})
        self.assertTrue([line for line in self.lines
                         if line.startswith("[idle/db] pruning hold-off rows of deleted "
                                            "accounts failed")])

    async def test_the_store_prunes_at_most_once_per_interval(self) -> None:
        """A refresh after every NOTIFY must not scan both tables each time."""
        clock = Clock()
        store = AccountStore(self.dsn, reactor, clock=clock, prune_interval=300,
                             shutdown_timeout=5)
        self.addCleanup(store.stopService)
        add_mark(self.dsn, str(uuid.uuid4()))
        self.assertEqual(await store.prune(), {"mailbox_state": 1, "account_holdoff": 0})
        add_mark(self.dsn, str(uuid.uuid4()))
        clock.advance(299)
        self.assertEqual(await store.prune(), {})  # too soon: no statement
        self.assertEqual(len(ids_in(self.dsn, "mailbox_state")), 1)
        clock.advance(1)
        self.assertEqual(await store.prune(), {"mailbox_state": 1, "account_holdoff": 0})
