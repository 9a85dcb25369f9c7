"""Marks advance only on an acknowledged scan (issue: the lost catch-up), STATUS for
servers without UIDNEXT, and ScanTrigger's acknowledgements under coalescing."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase, TestCase

from rebreak_idle.config import session_settings
from rebreak_idle.session.mailbox_marks import MailboxMark, MailboxMemory
from rebreak_idle.session.session import MailboxSession
from rebreak_idle.testing.imapserver import InProcessIMAPServer
from tests.support.profiles import PROFILES
from tests.support.recorder import Recorder
from tests.support.scan_harness import Harness as ScanHarness
from tests.support.scan_harness import account
from tests.support.session_harness import Harness
from tests.support.session_servers import PASSWORD, USER, settings
from tests.support.session_servers import account as server_account
from tests.support.wait import until


class LostCatchUpTests(SynchronousTestCase):
    def reconnect(self, h: Harness) -> None:
        h.run(h.settings.reconnect_delay * 4)

    def test_first_idle_refused_then_the_next_connect_still_scans(self) -> None:
        h = Harness(self)
        h.server.refuse_idle = 1
        h.start()
        self.assertEqual(h.session.state, "backoff")
        self.assertEqual(h.mails, [])  # the connect never got to its scan
        self.assertIsNone(h.memory.get("acc-1"))
        self.reconnect(h)
        self.assertEqual(h.session.state, "idle")
        self.assertEqual(h.mails, [(3, "connected")])
        self.assertEqual(h.memory.get("acc-1"), MailboxMark(1000, 4, 3))

    def test_scan_not_acknowledged_keeps_the_old_mark(self) -> None:
        h = Harness(self, acknowledge=False)
        h.start()
        h.server.deliver()
        h.pump()
        self.assertEqual(h.mails, [(3, "connected"), (4, "exists")])
        self.assertIsNone(h.memory.get("acc-1"))
        h.server.current.close()
        self.reconnect(h)
        self.assertEqual(h.mails, [(3, "connected"), (4, "exists"), (4, "connected")])

    def test_acknowledged_exists_scan_advances_the_mark(self) -> None:
        h = Harness(self)
        h.start()
        h.server.deliver()
        h.pump()
        self.assertEqual(h.memory.get("acc-1"), MailboxMark(1000, 5, 4))
        h.acknowledge = False
        h.server.deliver()
        h.pump()  # announced but never acknowledged: the mark stays
        self.assertEqual(h.memory.get("acc-1"), MailboxMark(1000, 5, 4))
        h.server.current.close()
        self.reconnect(h)
        self.assertEqual(h.mails[-1], (5, "connected"))

    def test_late_acknowledgement(self) -> None:
        from twisted.internet.defer import Deferred

        pending: list[Deferred[bool]] = []

        def on_new_mail(acc: Any, n: int, reason: str) -> Deferred[bool]:
            d: Deferred[bool] = Deferred()
            pending.append(d)
            return d

        h = Harness(self, on_new_mail=on_new_mail)
        h.start()
        h.server.deliver()
        h.pump()
        self.assertIsNone(h.memory.get("acc-1"))
        pending[0].callback(True)  # the connected scan: covers what SELECT saw
        self.assertEqual(h.memory.get("acc-1"), MailboxMark(1000, 4, 3))
        pending[1].callback(False)  # the exists scan was given up
        self.assertEqual(h.memory.get("acc-1"), MailboxMark(1000, 4, 3))


class NoUidnextTests(SynchronousTestCase):
    def test_status_gives_uidnext(self) -> None:
        h = Harness(self)
        h.server.select_uidnext = False
        h.start()
        self.assertIn("STATUS INBOX (UIDNEXT MESSAGES)", h.sent())
        self.assertEqual(h.memory.get("acc-1"), MailboxMark(1000, 4, 3))
        h.server.current.close()
        h.run(h.settings.reconnect_delay * 4)
        self.assertEqual(h.mails, [(3, "connected")])  # unchanged: no scan

    def test_courier_delivery_between_select_and_status(self) -> None:
        """Courier (UIDNEXT only through STATUS): a message delivered after the SELECT
        and before the STATUS is in the count and UIDNEXT of the one STATUS answer, so
        the mark is never ahead of the server and the next delivery while disconnected
        is still seen (with the count from SELECT the mark ended one ahead)."""
        h = Harness(self)
        h.server.profile = PROFILES["courier"]
        h.server.select_uidnext = PROFILES["courier"].select_uidnext
        h.server.after_select.append(h.server.deliver)  # in between
        h.start()
        self.assertEqual(h.mails, [(4, "connected")])
        h.run(h.settings.heartbeat_interval + 1)  # the NOOP hears "* 4 EXISTS"
        self.assertEqual(h.memory.get("acc-1"), MailboxMark(1000, 5, 4))
        h.server.current.close()
        h.pump()
        h.server.deliver()  # while disconnected
        h.run(h.settings.reconnect_delay * 4)
        self.assertEqual(h.session.state, "idle")
        self.assertEqual(h.mails, [(4, "connected"), (5, "connected")])
        self.assertEqual(h.memory.get("acc-1"), MailboxMark(1000, 6, 5))

    def test_delete_one_deliver_one_while_disconnected(self) -> None:
        h = Harness(self)
        h.server.select_uidnext = False
        h.start()
        h.server.current.close()
        h.pump()
        h.server.exists -= 1  # one deleted ...
        h.server.deliver()  # ... one delivered: the count is 3 again
        h.run(h.settings.reconnect_delay * 4)
        self.assertEqual(h.mails, [(3, "connected"), (3, "connected")])
        self.assertEqual(h.memory.get("acc-1"), MailboxMark(1000, 5, 3))

    def test_count_only_server_scans_every_connect(self) -> None:
        h = Harness(self)
        h.server.select_uidnext = False
        h.server.status_enabled = False
        h.start()
        self.assertEqual(h.memory.get("acc-1"), MailboxMark(1000, None, 3))
        h.server.current.close()
        h.run(h.settings.reconnect_delay * 4)
        self.assertEqual(h.session.state, "idle")
        self.assertEqual(h.mails, [(3, "connected"), (3, "connected")])

    def test_expunge_lowers_the_candidate_count(self) -> None:
        h = Harness(self, acknowledge=False)
        h.server.select_uidnext = False
        h.server.status_enabled = False
        h.start()
        h.server.expunge(1)
        h.pump()
        h.acknowledge = True
        h.server.deliver()
        h.pump()
        self.assertEqual(h.mails[-1], (3, "exists"))
        self.assertEqual(h.memory.get("acc-1"), MailboxMark(1000, None, 3))


class TriggerAcknowledgementTests(SynchronousTestCase):
    def outcomes(self, d: Any) -> list[Any]:
        box: list[Any] = []
        d.addBoth(box.append)
        return box

    def test_2xx_acknowledges(self) -> None:
        h = ScanHarness(self)
        acked = self.outcomes(h.trigger.submit(account(1), 3, "connected"))
        self.assertEqual(acked, [])
        h.answer(0, 200, {"scanned": 0, "blocked": 0})
        self.assertEqual(acked, [True])

    def test_4xx_and_5xx_keep_it_owed_until_a_2xx(self) -> None:
        h = ScanHarness(self, scan_attempts=2)
        refused = self.outcomes(h.trigger.submit(account(1), 3, "connected"))
        h.answer(0, 400)
        self.assertEqual(refused, [])  # owed: tried again later
        h.advance(180)
        h.answer(0, 200)
        self.assertEqual(refused, [True])
        failing = self.outcomes(h.trigger.submit(account(2), 3, "connected"))
        h.answer(0, 503)
        h.advance(1)
        h.answer(0, 503)  # more than scan_attempts: never given up
        h.advance(2)
        self.assertEqual(failing, [])
        h.answer(0, 200)
        self.assertEqual(failing, [True])

    def test_coalesced_requests_are_covered_by_the_follow_up(self) -> None:
        h = ScanHarness(self)
        first = self.outcomes(h.trigger.submit(account(1), 3, "connected"))
        second = self.outcomes(h.trigger.submit(account(1), 4, "exists"))
        third = self.outcomes(h.trigger.submit(account(1), 5, "exists"))
        # the second was replaced by the third before it went out: False at once (the
        # session remembers the third's later mark when it is acknowledged)
        self.assertEqual((first, second, third), ([], [False], []))
        h.answer(0, 200)
        self.assertEqual((first, second, third), ([True], [False], []))
        self.assertEqual(len(h.requests), 2)  # one follow-up, sent after both
        self.assertEqual(h.requests[1].parsed["exists"], 5)
        h.answer(0, 200)
        self.assertEqual(third, [True])

    def test_follow_up_failing_stays_owed(self) -> None:
        h = ScanHarness(self, scan_attempts=1)
        first = self.outcomes(h.trigger.submit(account(1), 3, "connected"))
        second = self.outcomes(h.trigger.submit(account(1), 4, "exists"))
        third = self.outcomes(h.trigger.submit(account(1), 5, "exists"))
        h.answer(0, 200)
        h.answer(0, 500)
        self.assertEqual((first, second, third), ([True], [False], []))
        h.advance(1)  # the probe
        self.assertEqual(h.requests[-1].parsed["exists"], 5)
        h.answer(0, 200)
        self.assertEqual(third, [True])

    def test_dropped_by_discard_and_stop(self) -> None:
        h = ScanHarness(self)
        running = self.outcomes(h.trigger.submit(account(1), 3, "connected"))
        pending = self.outcomes(h.trigger.submit(account(1), 4, "exists"))
        h.trigger.discard(account(1).id)
        self.assertEqual(pending, [False])
        other = self.outcomes(h.trigger.submit(account(2), 1, "connected"))
        h.trigger.stopService()
        h.advance(h.settings.shutdown_timeout)
        self.assertEqual((running, other), ([False], [False]))
        late = self.outcomes(h.trigger.submit(account(3), 1, "connected"))
        self.assertEqual(late, [False])  # shutting down: never sent

    def test_session_and_trigger_together(self) -> None:
        h = ScanHarness(self)
        memory = MailboxMemory()
        s = Harness(self, memory=memory, on_new_mail=h.trigger.submit)
        s.start()
        self.assertEqual(len(h.requests), 1)
        self.assertIsNone(memory.get("acc-1"))
        h.answer(0, 200)
        self.assertEqual(memory.get("acc-1"), MailboxMark(1000, 4, 3))

    def test_acknowledged_after_the_account_was_forgotten_puts_no_mark_back(self) -> None:
        """The account's row was deleted while its connect scan ran: the session stopped,
        the daemon forgot its marks and its scans (the running one is left to finish).
        Its 2xx must not put the mark back (in memory and in rebreak_idle.mailbox_state)
        for an account nobody watches."""
        h = ScanHarness(self)
        written: list[tuple] = []
        memory = MailboxMemory(writer=lambda *mark: written.append(mark))
        s = Harness(self, memory=memory, on_new_mail=h.trigger.submit)
        s.start()
        self.assertEqual(len(h.requests), 1)
        s.session.stopService()
        s.pump()
        memory.forget("acc-1")  # what the daemon does once the session is gone
        h.trigger.discard("acc-1")
        h.answer(0, 200)
        self.assertIsNone(memory.get("acc-1"))
        self.assertEqual((written, len(memory)), ([], 0))


class FolderAfterStopTests(TestCase):
    """The extra folders' marks the same way: a folder scan acknowledged after the
    session stopped and the account was forgotten puts no folder mark back."""

    timeout = 30

    async def test_folder_scan_acknowledged_after_forget(self) -> None:
        server = InProcessIMAPServer(reactor)
        server.add_user(USER, PASSWORD)
        server.add_folder(USER, "Spam", ("\\HasNoChildren", "\\Junk"))
        server.deliver(USER, "old junk", folder="Spam")
        self.addCleanup(server.stop)
        port = server.listen().getHost().port
        memory = MailboxMemory()
        held: dict[str, Deferred] = {}

        def on_new_mail(a: Any, n: int, reason: str, mailbox: str = "INBOX") -> Deferred:
            if mailbox == "INBOX":
                return succeed(True)
            held[mailbox] = Deferred()
            return held[mailbox]

        session = MailboxSession(server_account(port), session_settings(settings(
            extra_folders=("\\Junk",))), Recorder(reactor), on_new_mail, reactor,
            memory=memory)
        session.startService()
        self.addCleanup(session.stopService)
        await until(lambda: "Spam" in held, deadline=10, what="the Spam scan asked for")
        await session.stopService()
        memory.forget(session.account.id)  # the account's row is gone
        held["Spam"].callback(True)
        self.assertIsNone(memory.get(session.account.id, "Spam"))
        self.assertEqual(len(memory), 0)
