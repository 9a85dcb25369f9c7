"""The session's mail watch alone: INBOX's count and candidate mark, the scans it asks
for, and the marks it remembers once a scan was acknowledged."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.accounts.account import Account
from rebreak_idle.session.mail_watch import MailWatch
from rebreak_idle.session.mailbox_marks import MailboxMark, MailboxMemory
from rebreak_idle.timing.wheel import TimerWheel

ACCOUNT = Account(id="acc-1", user_id="u", email="ann@example.test", host="imap.example.test",
                  port=993, security="tls", username="ann", auth_method="password",
                  secret="pw")


class Owner:
    account = ACCOUNT

    def __init__(self) -> None:
        self.running = True
        self.client: Any = None

    def current(self, client: Any) -> bool:
        return client is self.client and self.running


class Client:
    on_exists: Any = None
    on_expunge: Any = None


class MailWatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.owner = Owner()
        self.memory = MailboxMemory()
        self.asked: list[tuple[int, str, Deferred[bool]]] = []
        self.watch = MailWatch(self.owner, self.on_new_mail, self.memory,
                               SimpleNamespace(extra_folders=()), self.clock,
                               TimerWheel(self.clock))
        self.client = Client()
        self.watch.selected(self.client, MailboxMark(7, 100, 5))

    def on_new_mail(self, account: Account, exists: int, reason: str,
                    **kw: Any) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        self.asked.append((exists, reason, d))
        return d

    def test_select_routes_the_clients_events(self) -> None:
        self.assertEqual(self.watch.exists, 5)
        self.client.on_exists(6)
        self.assertEqual(self.watch.exists, 6)
        self.client.on_expunge(3)
        self.assertEqual(self.watch.exists, 5)

    def test_new_mail_asks_a_scan_and_a_2xx_remembers_the_mark(self) -> None:
        self.clock.advance(10)
        self.watch.on_exists(6)
        (exists, reason, acked), = self.asked
        self.assertEqual((exists, reason), (6, "exists"))
        self.assertEqual(self.watch.last_exists, (10.0, 6))
        self.assertEqual(self.watch.last_scan_reason, "exists")
        self.assertIsNone(self.memory.get("acc-1"))
        acked.callback(True)
        self.assertEqual(self.memory.get("acc-1"), MailboxMark(7, 101, 6))
        self.assertFalse(self.watch.changed())

    def test_no_mark_without_a_2xx_or_after_stop(self) -> None:
        self.watch.on_exists(6)
        self.watch.on_exists(7)
        (_, _, refused), (_, _, late) = self.asked
        refused.callback(False)
        self.owner.running = False
        late.callback(True)
        self.assertIsNone(self.memory.get("acc-1"))
        self.assertTrue(self.watch.changed())

    def test_a_lower_or_equal_count_asks_nothing(self) -> None:
        self.watch.on_exists(5)
        self.watch.on_exists(4)
        self.assertEqual(self.asked, [])

    def test_nothing_after_stop(self) -> None:
        self.owner.running = False
        self.watch.on_exists(9)
        self.assertEqual((self.asked, self.watch.exists), ([], 5))

    def test_a_failing_on_new_mail_is_logged(self) -> None:
        def broken(*a: Any, **kw: Any) -> None:
            raise RuntimeError("boom")

        watch = MailWatch(self.owner, broken, self.memory, SimpleNamespace(extra_folders=()),
                          self.clock, TimerWheel(self.clock))
        watch.selected(self.client, MailboxMark(7, 100, 5))
        watch.on_exists(6)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_no_folders_by_default(self) -> None:
        self.assertIsNone(Deferred.fromCoroutine(self.watch.watch_folders(self.client)).result)
        self.assertIsNone(self.watch.folders)
        self.assertEqual(self.watch.status_commands(self.client, 30.0), ())
        self.assertIsNone(self.watch.check_folders(self.client))

    def test_slots(self) -> None:
        self.assertFalse(hasattr(self.watch, "__dict__"))

    def test_the_session_is_the_mail_watchs_owner(self) -> None:
        from rebreak_idle.config import Settings, session_settings
        from rebreak_idle.session.mail_watch import MailOwner
        from rebreak_idle.session.session import MailboxSession

        settings = Settings(database_url="postgresql://x", admin_secret="s" * 8,
                            encryption_key="k" * 32)
        session = MailboxSession(ACCOUNT, session_settings(settings), object(),  # type: ignore[arg-type]
                                 self.on_new_mail, self.clock)
        self.assertIsInstance(session, MailOwner)
