"""An account source in memory (rows, their decoder, settings) for the supervisor,
and a capture of its log lines."""

from __future__ import annotations

import uuid
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from rebreak_idle.accounts.secrets import encrypt_secret
from rebreak_idle.config import Settings, SupervisorSettings, supervisor_settings
from rebreak_idle.interfaces import IAccountSource
from rebreak_idle.service import row_decoder

KEY = "k" * 32


#: rows into Accounts as the daemon decodes them (the secret decrypted with KEY)
DECODE = row_decoder(KEY.encode())


def settings(**kw: Any) -> SupervisorSettings:
    return supervisor_settings(Settings(database_url="postgresql://x", admin_secret="s" * 8,
                                        encryption_key=KEY, **kw))


def row(n: int = 0, password: str = "pw", **cols: Any) -> dict:  # noqa: S107
    base = {"id": str(uuid.UUID(int=n + 1)), "user_id": str(uuid.UUID(int=10_000 + n)),
            "email": f"u{n}@example.org", "imap_host": "imap.example.org", "imap_port": 993,
            "imap_security": "tls", "imap_username": None, "auth_method": "password",
            "encrypted_secret": encrypt_secret(password, KEY.encode()),
            "last_connect_error": None, "heartbeat_age": None}
    base.update(cols)
    return base


@implementer(IAccountSource)
class MemoryStore:
    """The store seam for the clock-driven tests: rows in memory, errors recorded."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows
        self.errors: list[tuple[str, str]] = []
        self.reads = 0
        self.gate: Deferred | None = None  # when set, active() waits for it
        self.fail = False

    def active(self) -> Deferred:
        self.reads += 1
        if self.fail:
            return defer.fail(OSError("connection refused"))
        if self.gate is not None:
            gate, self.gate = self.gate, None
            return gate.addCallback(lambda _: [dict(r) for r in self.rows])
        return succeed([dict(r) for r in self.rows])

    def record_error(self, account_id: str, text: str) -> None:
        self.errors.append((account_id, text))


def capture_logs(case: SynchronousTestCase, level: LogLevel = LogLevel.info) -> list[str]:
    """The text of every event at ``level`` or above logged while ``case`` runs."""
    lines: list[str] = []

    def observer(event: dict) -> None:
        if event.get("log_level", LogLevel.info) >= level:
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return lines
