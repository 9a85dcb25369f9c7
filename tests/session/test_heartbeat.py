"""The session's heartbeat alone: its timer, the heartbeat's one write, the renewal and the
poll, with a recording client and owner (no session, no server)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.session.heartbeat import Heartbeat
from rebreak_idle.timing.wheel import TimerWheel
from tests.support.recorder import Recorder

SETTINGS = SimpleNamespace(heartbeat_interval=120.0, idle_renew=1500.0, poll_interval=60.0,
                           noop_timeout=30.0, command_timeout=60.0)


class Client:
    """Records the commands the heartbeat sends; each answers OK at once unless the test
    set ``broken``."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.broken: Exception | None = None

    def _answer(self, *what: Any) -> Deferred[None]:
        self.sent.append(what if len(what) > 1 else what[0])
        return fail(self.broken) if self.broken is not None else succeed(None)

    def done_noop(self, idle_again: bool, between: Any) -> Deferred[None]:
        return self._answer("DONE NOOP IDLE" if idle_again else "DONE NOOP", between)

    def idle(self) -> Deferred[None]:
        return self._answer("IDLE")

    def done(self) -> Deferred[None]:
        return self._answer("DONE")

    def noop(self) -> Deferred[None]:
        return self._answer("NOOP")


class Owner:
    email = "ann@example.test"
    account_id = "acc-1"

    def __init__(self) -> None:
        self.client: Client | None = Client()
        self.running = True
        self.failed: list[tuple[Failure, Any]] = []

    def current(self, client: Any) -> bool:
        return client is self.client and self.running

    def step_failed(self, failure: Failure, client: Any) -> None:
        self.failed.append((failure, client))


class Folders:
    def __init__(self) -> None:
        self.checked = 0

    def status_commands(self, client: Any, timeout: float) -> Any:
        return ("STATUS Junk",)

    def check_folders(self, client: Any) -> Deferred[None] | None:
        self.checked += 1
        return succeed(None)


class HeartbeatTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.owner = Owner()
        self.folders = Folders()
        self.recorder = Recorder(self.clock)
        self.heartbeat = Heartbeat(self.owner, self.folders, SETTINGS, self.recorder,
                                   self.clock, TimerWheel(self.clock))

    def test_start_records_a_heartbeat_and_arms_one_timer(self) -> None:
        self.heartbeat.start(self.owner.client, polling=False)
        self.assertEqual(self.recorder.heartbeats, [0.0])
        self.assertEqual(self.recorder.beats, {"acc-1": 1})
        self.assertEqual(self.heartbeat.last_at, 0.0)
        self.assertTrue(self.heartbeat.armed)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_heartbeat_is_one_write_with_the_folders_status(self) -> None:
        client = self.owner.client
        self.heartbeat.start(client, polling=False)
        self.clock.advance(119)
        self.assertEqual(client.sent, [])
        self.clock.advance(1)
        self.assertEqual(client.sent, [("DONE NOOP IDLE", ("STATUS Junk",)), "IDLE"])
        self.assertEqual(self.recorder.heartbeats, [0.0, 120.0])
        self.assertTrue(self.heartbeat.armed)  # the next one

    def test_renewal_before_the_heartbeat_when_due_first(self) -> None:
        settings = SimpleNamespace(**{**vars(SETTINGS), "idle_renew": 50.0})
        heartbeat = Heartbeat(self.owner, self.folders, settings, self.recorder, self.clock,
                              TimerWheel(self.clock))
        lines: list[str] = []
        observer = lambda e: lines.append(formatEvent(e))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        heartbeat.start(self.owner.client, polling=False)
        self.clock.advance(50)
        self.assertEqual(self.owner.client.sent, ["DONE", "IDLE"])
        self.assertEqual(len(self.recorder.heartbeats), 1)  # a renewal is no heartbeat
        self.assertIn("[idle/ann@example.test] idle renewing (25min threshold)", lines)

    def test_poll_sends_noop_and_checks_the_folders(self) -> None:
        self.heartbeat.start(self.owner.client, polling=True)
        self.clock.advance(60)
        self.assertEqual(self.owner.client.sent, ["NOOP"])
        self.assertEqual(self.folders.checked, 1)
        self.assertEqual(self.recorder.heartbeats, [0.0, 60.0])
        self.clock.advance(60)
        self.assertEqual(self.owner.client.sent, ["NOOP", "NOOP"])

    def test_a_failed_step_goes_to_the_owner_with_its_client(self) -> None:
        client = self.owner.client
        client.broken = ConnectionError("gone")
        self.heartbeat.start(client, polling=True)
        self.clock.advance(60)
        (failure, failed_client), = self.owner.failed
        self.assertTrue(failure.check(ConnectionError))
        self.assertIs(failed_client, client)

    def test_no_step_for_a_connection_that_is_no_longer_current(self) -> None:
        client = self.owner.client
        self.heartbeat.start(client, polling=False)
        self.owner.client = None  # the connection ended meanwhile
        self.clock.advance(120)
        self.assertEqual(client.sent, [])
        self.assertFalse(self.heartbeat.armed)

    def test_stop_cancels_the_timer(self) -> None:
        self.heartbeat.start(self.owner.client, polling=False)
        self.heartbeat.stop()
        self.assertFalse(self.heartbeat.armed)
        self.clock.advance(3600)
        self.assertEqual(self.owner.client.sent, [])

    def test_idle_ended_by_the_server_is_entered_again(self) -> None:
        client = self.owner.client
        self.heartbeat.start(client, polling=False)
        self.clock.advance(30)
        self.heartbeat.idle_ended(client)
        self.assertEqual(client.sent, ["IDLE"])
        self.assertTrue(self.heartbeat.armed)  # again, once the server answered

    def test_slots(self) -> None:
        self.assertFalse(hasattr(self.heartbeat, "__dict__"))


class SeamTests(SynchronousTestCase):
    def test_the_session_is_the_heartbeats_owner_and_its_mail_the_folders(self) -> None:
        from rebreak_idle.accounts.account import Account
        from rebreak_idle.config import Settings, session_settings
        from rebreak_idle.session.heartbeat import FolderScans, HeartbeatOwner
        from rebreak_idle.session.session import MailboxSession

        account = Account(id="acc-1", user_id="u", email="ann@example.test", host="h",
                          port=143, security="plain", username="ann",
                          auth_method="password", secret="pw")
        settings = Settings(database_url="postgresql://x", admin_secret="s" * 8,
                            encryption_key="k" * 32)
        session = MailboxSession(account, session_settings(settings), Recorder(Clock()),
                                 lambda *a, **kw: None, Clock())
        self.assertIsInstance(session, HeartbeatOwner)
        self.assertIsInstance(session.mail, FolderScans)
        self.assertEqual((session.email, session.account_id), ("ann@example.test", "acc-1"))
        self.assertIsNone(session.client)
