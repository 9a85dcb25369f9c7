"""The one recorder double (IRecorder) the tests share: it keeps every call, with the time
of the clock it was given, and can pass each call on to a listener (an ``Events.add``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from rebreak_idle.interfaces import IRecorder


@implementer(IRecorder)
class Recorder:
    """``errors``: (time, account id, text); ``cleared`` and ``heartbeats``: the times of
    the calls; ``beats``: the heartbeats per account id.
    ``listener`` (optional) is called as ``("error", text, time)``, ``("cleared",)`` and
    ``("heartbeat", time)``."""

    def __init__(self, clock: IReactorTime,
                 listener: Callable[..., Any] | None = None) -> None:
        self.clock = clock
        self.listener = listener
        self.errors: list[tuple[float, str, str]] = []
        self.cleared: list[float] = []
        self.heartbeats: list[float] = []
        self.beats: Counter[str] = Counter()

    def record_error(self, account_id: str, text: str) -> None:
        now = self.clock.seconds()
        self.errors.append((now, account_id, text))
        if self.listener is not None:
            self.listener("error", text, now)

    def clear_error(self, account_id: str) -> None:
        self.cleared.append(self.clock.seconds())
        if self.listener is not None:
            self.listener("cleared")

    def record_heartbeat(self, account_id: str) -> None:
        now = self.clock.seconds()
        self.heartbeats.append(now)
        self.beats[account_id] += 1
        if self.listener is not None:
            self.listener("heartbeat", now)

