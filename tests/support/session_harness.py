"""A mailbox session driven over a fake endpoint and a StringTransport, with a
recorder of its state changes, errors and marks (the doubles the session's unit tests share)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.test.iosim import IOPump
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from rebreak_idle.accounts.account import Account
from rebreak_idle.config import Settings, session_settings
from rebreak_idle.session.mailbox_marks import MailboxMemory
from rebreak_idle.session.session import MailboxSession
from rebreak_idle.timing.wheel import TimerWheel
from tests.support.recorder import Recorder
from tests.support.scripted_imap import ScriptedConnection, ScriptedIMAPServer

SECRET = "s3cret-Pa55word"
ACCOUNT = Account(id="acc-1", user_id="user-1", email="ann@example.test", host="127.0.0.1",
                  port=143, security="plain", username="ann", auth_method="password",
                  secret=SECRET)


def make_settings(**kw: Any) -> Settings:
    return Settings(database_url="postgresql://x", admin_secret="s" * 8,
                    encryption_key="k" * 32, **kw)


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """Connects to the scripted server in memory, refuses, or hangs, as the test says."""

    def __init__(self, server: ScriptedIMAPServer) -> None:
        self.server = server
        self.attempts = 0
        self.refuse: Exception | None = None
        self.hang = False
        self.pending: Deferred[Any] | None = None
        self.cancelled = 0
        self.pumps: list[IOPump] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        self.attempts += 1
        if self.refuse is not None:
            return fail(self.refuse)
        if self.hang:
            def cancel(d: Deferred[Any]) -> None:
                self.cancelled += 1
            self.pending = Deferred(cancel)
            return self.pending
        proxy = factory.buildProtocol(None)
        self.pumps.append(self.server.connect(proxy))
        return succeed(proxy)

    def pump(self, clock: Clock) -> None:
        """Let the in-memory connections (iosim pumps) move bytes and deliver connection
        losses until nothing moves; calls due now run in between."""
        clock.advance(0)
        while any([pump.flush() for pump in list(self.pumps)]):
            pass

    def run(self, clock: Clock, seconds: float) -> None:
        """Advance ``clock`` by ``seconds``, firing timers one by one with the network
        pumped in between (as a reactor would)."""
        end = clock.seconds() + seconds
        self.pump(clock)
        while True:
            due = [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= end]
            if not due:
                break
            clock.advance(max(0.0, min(due) - clock.seconds()))
            self.pump(clock)
        clock.advance(end - clock.seconds())
        self.pump(clock)


class Harness:
    def __init__(self, test: SynchronousTestCase, *, settings: Settings | None = None,
                 account: Account = ACCOUNT, jitter: float = 0.0,
                 memory: MailboxMemory | None = None, timers: bool = False,
                 on_new_mail: Any = None, acknowledge: bool = True) -> None:
        self.clock = Clock()
        test.addCleanup(self.stop_for_good)
        self.timers = TimerWheel(self.clock) if timers else None
        self.settings = settings or make_settings()
        self.recorder = Recorder(self.clock)
        self.server = ScriptedIMAPServer(self.clock, password=SECRET,
                                         capabilities="IMAP4rev1 IDLE")
        self.endpoint = FakeEndpoint(self.server)
        self.mails: list[tuple[int, str]] = []
        self.logs: list[str] = []
        self.errors: list[dict[str, Any]] = []
        self.memory = MailboxMemory() if memory is None else memory
        self.acknowledge = acknowledge

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "rebreak_idle.session":
                self.logs.append(formatEvent(event))
                if event.get("log_level") in (LogLevel.error, LogLevel.critical):
                    self.errors.append(event)

        globalLogPublisher.addObserver(observe)
        test.addCleanup(globalLogPublisher.removeObserver, observe)
        if on_new_mail is None:
            def on_new_mail(acc: Account, n: int, reason: str) -> Deferred[bool]:
                # the backend answers 2xx at once (``acknowledge``), or never acknowledges
                self.mails.append((n, reason))
                return succeed(self.acknowledge)
        self.session = MailboxSession(
            account, session_settings(self.settings), self.recorder, on_new_mail, self.clock,
            endpoint=self.endpoint, jitter=lambda: jitter, memory=self.memory,
            timers=self.timers)

    def start(self) -> None:
        self.session.startService()
        self.pump()

    def stop_for_good(self) -> None:
        """At the end of a test: stop the session (LOGOUT, or the stop deadline) so that
        the process-wide sessions gauge holds no session of this test."""
        if self.session.running:
            self.stop()
            self.run(10)

    def pump(self) -> None:
        self.endpoint.pump(self.clock)

    def run(self, seconds: float) -> None:
        self.endpoint.run(self.clock, seconds)

    def stop(self) -> list[Any]:
        box: list[Any] = []
        self.session.stopService().addBoth(box.append)
        self.pump()
        return box

    def sent(self, conn: ScriptedConnection | None = None) -> list[str]:
        """Commands the client sent on a connection, without tags."""
        conn = conn or self.server.current
        return [line if line == "DONE" else line.split(" ", 1)[1] for line in conn.lines]

    def lines(self, fragment: str) -> list[str]:
        return [line for line in self.logs if fragment in line]
