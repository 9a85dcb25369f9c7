"""Reconnect delays of one session: exponential growth with jitter, a cap, and a reset.

Twisted's ``backoffPolicy`` maps ClientService's own attempt counter to a delay, but that
counter restarts at every TCP connection, and a session must keep backing off against a
server that accepts connections and drops them at once. :class:`Backoff` keeps its own
count, which the session resets only after a connection that stayed healthy.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

__all__ = ["Backoff", "format_delay"]


class Backoff:
    """``initial * factor ** (attempt - 1)`` seconds, capped at ``maximum``, stretched by up
    to ``spread`` (a fraction) of random jitter so that thousands of sessions dropped at once
    by one server do not all come back in the same second."""

    __slots__ = ("attempt", "factor", "initial", "jitter", "maximum", "spread")

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        factor: float = 2.0,
        spread: float = 0.25,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.maximum = max(maximum, initial)
        self.factor = factor
        self.spread = spread
        self.jitter = jitter
        self.attempt = 0

    def next(self) -> float:
        """Count one more failed attempt and return the delay before the next one."""
        self.attempt += 1
        try:
            base = self.initial * self.factor ** min(self.attempt - 1, 64)
        except OverflowError:  # pragma: no cover - min() above keeps it finite
            base = self.maximum
        base = min(base, self.maximum)
        return base * (1.0 + self.spread * self.jitter())

    def reset(self) -> None:
        """Start again from ``initial`` (after a connection that stayed healthy)."""
        self.attempt = 0


def format_delay(seconds: float) -> str:
    """The ``<s>`` of ``reconnecting in <s>s``: whole seconds from 10 s on, else one decimal
    (``5``, ``6.2``, ``0.5``, ``1800``), rounded down, so that the next attempt never comes
    sooner than the line says (0.452 s reads ``0.4``, not ``0.5``)."""
    if seconds >= 10:
        return str(math.floor(seconds + 1e-9))
    tenths = math.floor(seconds * 10 + 1e-9)
    return str(tenths // 10) if tenths % 10 == 0 else f"{tenths / 10:.1f}"
