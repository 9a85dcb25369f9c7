"""One deadline for the whole graceful stop (``REBREAK_SHUTDOWN_TIMEOUT`` in total).

The daemon stops in phases (the sessions with the scans and the status server, then the
final status write, then the lease release); :class:`StopBudget` gives each phase what
remains of the one budget, keeping a small floor for the last phases so that a slow
first phase cannot leave the final write or the lease release no time at all.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PHASE_FLOOR", "StopBudget"]

#: Seconds the final write and the lease release each get at least.
PHASE_FLOOR = 1.0


class StopBudget:
    """``total`` seconds from now on ``clock``, for ``later`` phases after the first."""

    def __init__(self, clock: Any, total: float, *, later: int = 1,
                 floor: float = PHASE_FLOOR) -> None:
        self._clock = clock
        self.total = total
        self.floor = min(floor, total / (later + 1)) if later else 0.0
        self._later = later
        self.deadline = clock.seconds() + total

    def first(self) -> float:
        """The first phase's share: everything but the floors of the later phases."""
        return max(0.0, self.total - self._later * self.floor)

    def remaining(self, *, later: int = 0) -> float:
        """What remains now (keeping ``later`` floors for the phases after this one), at
        least the floor."""
        left = self.deadline - self._clock.seconds() - later * self.floor
        return max(self.floor, left)
