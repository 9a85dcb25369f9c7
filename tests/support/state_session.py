"""A session stand-in (a Service with a state and the counts the supervisor
reads), for the supervisor, live metrics and ramp tests."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service

from rebreak_idle.accounts.account import Account
from rebreak_idle.session.states import State, StateTally


class StateSession(Service):
    """A session with the attributes the collector reads; it moves the daemon's tally of
    states as a MailboxSession does."""

    def __init__(self, account: Account, tally: StateTally | None = None) -> None:
        self.account = account
        self.tally = StateTally() if tally is None else tally
        self.state = State.STOPPED
        self.last_heartbeat_at: float | None = None
        self.last_exists_at: float | None = None

    def move(self, state: State) -> None:
        self.tally.moved(self.state, state)
        self.state = state

    def startService(self) -> None:
        super().startService()
        self.move(State.CONNECTING)

    def snapshot(self) -> dict[str, Any]:
        return {"id": self.account.id, "state": self.state}
