"""Two idioms of a held ``IDelayedCall`` (of the reactor, a ``task.Clock`` or the
:class:`~rebreak_idle.timing.wheel.TimerWheel`): move it or make a new one, and cancel it if it
is still pending."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["cancel_pending", "rearm"]


def rearm(call: IDelayedCall | None, clock: IReactorTime, delay: float,
          func: Callable[[], Any]) -> IDelayedCall:
    """``call`` reset to run ``delay`` seconds from now while it is pending, else a new
    ``clock.callLater(delay, func)``: the call to keep."""
    if call is not None and call.active():
        call.reset(delay)
        return call
    return clock.callLater(delay, func)


def cancel_pending(call: IDelayedCall | None) -> None:
    """Cancel ``call`` unless it is None, has run or was cancelled."""
    if call is not None and call.active():
        call.cancel()
