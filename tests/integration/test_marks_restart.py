"""Marks across restarts, crashes and replica takeovers (issue 15): the real daemon on a
real PostgreSQL, the in-process IMAP server and the backend double (tests.support.faults).

Every case checks both halves of the guarantee: an unchanged mailbox costs no scan, and
every message that arrived is covered by an acknowledged scan."""

from __future__ import annotations

import psycopg2
from twisted.trial.unittest import TestCase

from rebreak_idle.service import build_daemon
from rebreak_idle.session.mailbox_marks import MailboxMark
from tests.support.faults import FaultCase, until
from tests.support.leaks import IMAP_PASSWORDS

USERS = ("ann@marks.test", "bob@marks.test", "cat@marks.test")


class RestartTests(FaultCase, TestCase):
    timeout = 90

    async def watch(self) -> dict[str, str]:
        await self.start_parts()
        return {u: self.add_account(u, IMAP_PASSWORDS[n]) for n, u in enumerate(USERS)}

    def stored(self) -> dict[str, tuple]:
        return {r[0]: tuple(r[1:]) for r in self.sql(
            "SELECT connection_id::text, mailbox, uidvalidity, uidnext, message_count "
            "FROM rebreak_idle.mailbox_state")}

    def connected_scans(self, account_id: str) -> int:
        return sum(1 for r in self.scans_of(account_id) if r.body["reason"] == "connected")

    async def run_until_marked(self, ids: dict[str, str], **settings: object) -> None:
        """Start the daemon, wait until every mailbox idles and its mark is stored, stop."""
        starts = self.logs.count(r"\] connected \(")
        daemon = self.start_daemon(**settings)
        await self.wait_log(r"\] connected \(", starts + len(ids))
        for user in ids:
            await self.idle(user)
        await until(lambda: set(self.stored()) >= set(ids.values()), what="marks stored")
        await self.stop_daemon(daemon)

    async def restart(self, ids: dict[str, str], **settings: object) -> None:
        starts = self.logs.count(r"\] connected \(")
        daemon = self.start_daemon(**settings)
        await self.wait_log(r"\] connected \(", starts + len(ids))
        for user in ids:
            await self.idle(user)
        # a scan is asked for right after "connected" is logged: now nothing is pending
        await until(lambda: not daemon.scans.busy(), what="scans settled")
        self.daemon = daemon

    async def test_restart_with_nothing_new_sends_no_scan(self) -> None:
        ids = await self.watch()
        await self.run_until_marked(ids)
        self.assertEqual(len(self.backend.requests), 3)
        await self.restart(ids)
        self.assertEqual(len(self.backend.requests), 3)
        self.assertEqual(self.logs.count("scan-triggered"), 3)

    async def test_restart_after_mail_while_down_scans_exactly_that_mailbox(self) -> None:
        ids = await self.watch()
        await self.run_until_marked(ids)
        self.imap.deliver(USERS[1], subject="while the daemon was down")
        await self.restart(ids)
        await until(lambda: self.connected_scans(ids[USERS[1]]) == 2, what="catch-up scan")
        self.assertEqual([self.connected_scans(ids[u]) for u in USERS], [1, 2, 1])
        self.assertEqual(len(self.backend.requests), 4)
        uidnext = self.imap.inbox(USERS[1]).uid_next
        await until(lambda: self.stored()[ids[USERS[1]]][2] == uidnext, what="mark advanced")

    async def test_uidvalidity_change_scans(self) -> None:
        ids = await self.watch()
        await self.run_until_marked(ids)
        self.imap.inbox(USERS[0]).uid_validity += 1
        await self.restart(ids)
        await until(lambda: self.connected_scans(ids[USERS[0]]) == 2, what="catch-up scan")
        self.assertEqual([self.connected_scans(ids[u]) for u in USERS], [2, 1, 1])

    async def test_scans_owed_at_stop_then_restart_scans_again(self) -> None:
        ids = await self.watch()
        gate = self.backend.hold()  # the backend never answers: every scan stays owed
        self.addCleanup(gate.release)
        daemon = self.start_daemon(scan_timeout=0.3)
        await self.wait_log(r"\[idle/db\] backend down: no answer within 0.3s", deadline=20)
        await until(lambda: daemon.scans.owed()[0] == 3, what="three scans owed")
        await self.stop_daemon(daemon)  # the owed scans are dropped, never stored
        self.assertEqual(self.stored(), {})  # no acknowledged scan: no mark
        before = len(self.backend.requests)
        gate.release()
        await self.restart(ids)
        await until(lambda: len(self.backend.requests) == before + 3
                    and all(r.status == 200 for r in self.backend.requests[-3:]),
                    what="the scans again")
        await until(lambda: len(self.stored()) == 3, what="marks stored")

    async def test_server_without_uidnext_delete_one_deliver_one(self) -> None:
        ids = await self.watch()
        self.imap.select_uidnext = False  # Courier: UIDNEXT only through STATUS
        for user in USERS:
            self.imap.deliver(user)
        await self.run_until_marked(ids)
        self.assertEqual(self.stored()[ids[USERS[2]]][2:], (2, 1))  # UIDNEXT 2, 1 message
        [uid] = [m["uid"] for m in self.imap.messages(USERS[2])]
        self.imap.delete(USERS[2], uid)
        self.imap.deliver(USERS[2])  # the count is 1 again
        await self.restart(ids)
        await until(lambda: self.connected_scans(ids[USERS[2]]) == 2, what="catch-up scan")
        self.assertEqual([self.connected_scans(ids[u]) for u in USERS], [1, 1, 2])
        self.assertGreater(self.imap.commands[b"STATUS"], 0)


class CrashTests(FaultCase, TestCase):
    timeout = 120

    async def test_sigkill_mid_batch_repeats_never_misses(self) -> None:
        """The marks' batch write is held on a table lock when the daemon is killed and
        never lands: the restart repeats those scans (and the mail that came while it was
        down is scanned too) — at worst a repeated scan, never a missed one."""
        await self.start_parts()
        ids = {u: self.add_account(u, IMAP_PASSWORDS[n]) for n, u in enumerate(USERS)}
        lock = psycopg2.connect(self.admin_dsn)
        self.addCleanup(lock.close)
        with lock.cursor() as cur:
            cur.execute("LOCK TABLE rebreak_idle.mailbox_state IN EXCLUSIVE MODE")
        child, _ = self.start_child_daemon(write_flush_interval=0.2)
        await self.backend.wait_for(3, deadline=30)
        await until(lambda: self.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'INSERT INTO rebreak_idle.mailbox_state%%'")[0][0] == 1,
            deadline=20, what="the mark write waiting on the lock")
        await child.kill()
        # PostgreSQL would notice the dead client only after the lock is gone, and then
        # commit the batch: end its backend first, so that the batch is lost (the worst case)
        self.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE query LIKE 'INSERT INTO rebreak_idle.mailbox_state%%'")
        lock.rollback()
        self.assertEqual(self.sql("SELECT count(*) FROM rebreak_idle.mailbox_state"), [(0,)])
        self.imap.deliver(USERS[0])
        daemon = self.start_daemon()
        await self.backend.wait_for(6, deadline=30)
        await until(lambda: not daemon.scans.busy())
        scanned = [r.body["connectionId"] for r in self.backend.requests[3:]]
        self.assertEqual(sorted(scanned), sorted(ids.values()))  # repeated, none missed
        await until(lambda: self.sql(
            "SELECT count(*) FROM rebreak_idle.mailbox_state")[0][0] == 3, what="marks")


class HandoverTests(FaultCase, TestCase):
    timeout = 120

    async def test_two_replicas_hand_accounts_over(self) -> None:
        """Replica A watches four mailboxes; B starts and takes half (its sessions scan
        nothing: the marks are A's); A stops, mail arrives for one of A's mailboxes, B
        takes them all: exactly that one is scanned."""
        await self.start_parts()
        users = [f"u{n}@handover.test" for n in range(4)]
        ids = {u: self.add_account(u, IMAP_PASSWORDS[n % 3]) for n, u in enumerate(users)}
        lease = dict(leases="on", lease_ttl=3.0, lease_renew=0.3)
        a = self.start_daemon(replica_id="replica-a", **lease)
        await self.backend.wait_for(4, deadline=30)
        await until(lambda: self.sql(
            "SELECT count(*) FROM rebreak_idle.mailbox_state")[0][0] == 4, what="marks")
        b = build_daemon(self.settings(replica_id="replica-b", **lease), self.reactor)
        b.startService()
        self.addCleanup(self.stop_daemon, b)
        await until(lambda: len(b.supervisor.sessions) == 2 and len(a.supervisor.sessions)
                    == 2, deadline=30, what="fair shares")
        for account_id in b.supervisor.sessions:
            await until(lambda aid=account_id: b.supervisor.sessions[aid].state.value
                        == "idle", deadline=20, what="B's sessions idle")
        self.assertEqual(len(self.backend.requests), 4)  # B's takeover scanned nothing
        for account_id in b.supervisor.sessions:
            self.assertIsInstance(b.marks.get(account_id), MailboxMark)
        a_users = [u for u in users if ids[u] in a.supervisor.sessions]
        await self.stop_daemon(a)
        self.imap.deliver(a_users[0], subject="while nobody watched")
        await until(lambda: len(b.supervisor.sessions) == 4, deadline=30, what="B owns all")
        await until(lambda: len(self.backend.requests) == 5, deadline=20, what="one scan")
        await until(lambda: all(s.state.value == "idle" for s in b.supervisor.sessions.values()),
                    deadline=20, what="all idle on B")
        self.assertEqual(len(self.backend.requests), 5)
        last = self.backend.requests[-1].body
        self.assertEqual((last["connectionId"], last["reason"]), (ids[a_users[0]], "connected"))
