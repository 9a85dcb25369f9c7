"""A mailbox session against the in-process IMAP server of rebreak_idle.testing:
its user, account and settings, and the events and records it leaves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor

from rebreak_idle.accounts.account import Account
from rebreak_idle.config import Settings

USER = "ann@example.org"
PASSWORD = "correct horse battery"
DEADLINE = 10.0


class Events:
    """Things that happened, and Deferreds that fire when one matching a predicate has."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []
        self._waiting: list[tuple[Callable[[tuple[Any, ...]], bool], defer.Deferred]] = []

    def add(self, *item: Any) -> None:
        self.items.append(item)
        waiting, self._waiting = self._waiting, []
        for predicate, d in waiting:
            if predicate(item):
                # fire on the next turn: the session is in the middle of something
                reactor.callLater(0, d.callback, item)
            else:
                self._waiting.append((predicate, d))

    def wait(self, predicate: Callable[[tuple[Any, ...]], bool],
             timeout: float = DEADLINE, *, new: bool = False) -> defer.Deferred:
        if not new:
            for item in self.items:
                if predicate(item):
                    return defer.succeed(item)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((predicate, d))
        return d.addTimeout(timeout, reactor)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [i for i in self.items if i[0] == kind]


def settings(**kw: Any) -> Settings:
    base: dict[str, Any] = {"reconnect_delay": 0.05, "reconnect_max_delay": 0.2,
                            "command_timeout": 5.0, "noop_timeout": 5.0}
    base.update(kw)
    return Settings(database_url="postgresql://x", admin_secret="s" * 8,
                    encryption_key="k" * 32, **base)


def account(port: int, security: str = "plain", secret: str = PASSWORD,
            method: str = "password", username: str = USER) -> Account:
    return Account(id=f"acc-{security}-{method}", user_id="user-1", email=USER,
                   host="127.0.0.1", port=port, security=security, username=username,
                   auth_method=method, secret=secret)
