"""A simulated provider day: many sessions on one Clock against scripted provider
answers (logins refused, caps, throttles), hour by hour."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.accounts.account import Account
from rebreak_idle.config import session_settings
from rebreak_idle.session.session import MailboxSession
from rebreak_idle.session.states import State
from tests.support.recorder import Recorder
from tests.support.scripted_imap import PROFILES, ScriptedIMAPServer
from tests.support.session_harness import FakeEndpoint, make_settings

DAY = 86400.0
HOUR = 3600.0


def account(n: int = 0, *, method: str = "password",
            secret: str = "right") -> Account:  # noqa: S107
    return Account(id=f"acc-{n}", user_id=f"user-{n}", email=f"u{n}@provider.test",
                   host="127.0.0.1", port=143, security="plain", username=f"u{n}",
                   auth_method=method, secret=secret)


class WatchedSession(MailboxSession):
    """A session that notes every time it was not watching (not ready) after its first
    connect, and every state it went through."""

    def _set_state(self, state: State) -> None:
        was = self.state.ready
        super()._set_state(state)
        sim = self.sim
        now = self._reactor.seconds()
        sim.states.add(state)
        if was and not state.ready:
            self.down_since = now
        elif state.ready and not was and getattr(self, "down_since", None) is not None:
            sim.gaps.append(now - self.down_since)
            self.down_since = None


class Sim:
    def __init__(self, test: SynchronousTestCase, profile: str, accounts: list[Account], *,
                 seed: int = 7) -> None:
        self.clock = Clock()
        self.server = ScriptedIMAPServer(self.clock, profile=PROFILES[profile])
        self.server.password = "right"
        self.recorder = Recorder(self.clock)
        self.endpoint = FakeEndpoint(self.server)
        self.states: set[State] = set()
        self.gaps: list[float] = []
        self.logs: list[str] = []
        rng = random.Random(seed)
        settings = session_settings(make_settings())

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "rebreak_idle.session":
                self.logs.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        test.addCleanup(globalLogPublisher.removeObserver, observe)
        self.sessions = []
        for acc in accounts:
            session = WatchedSession(acc, settings, self.recorder, lambda *a: None,
                                     self.clock, endpoint=self.endpoint, jitter=rng.random)
            session.sim = self
            self.sessions.append(session)
        test.addCleanup(self.stop)

    def start(self) -> None:
        for session in self.sessions:
            session.startService()
        self.pump()

    def stop(self) -> None:
        for session in self.sessions:
            if session.running:
                session.stopService()
        self.run(10)

    def pump(self) -> None:
        self.endpoint.pump(self.clock)

    def run(self, seconds: float) -> None:
        self.endpoint.run(self.clock, seconds)

    def logins_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.server.login_times if start <= t < end)

    def lines(self, fragment: str) -> list[str]:
        return [line for line in self.logs if fragment in line]
