"""``TimerWheel``: the coarse timers of every session on one reactor timer.

Each session has a timer for its next heartbeat, renewal or poll and one for the deadline
of the command in flight: 10,000 sessions would keep 10,000 to 20,000 ``DelayedCall``s in the
reactor's heap, and the reactor would wake up for each of them on its own. None of these
timers needs to be exact (heartbeats every 120 s, deadlines of 30 to 60 s), so the wheel groups
them into ticks of ``resolution`` seconds (default 1 s): one reactor ``DelayedCall`` for
the earliest tick with a timer, and all the timers of a tick run in the same reactor turn.

A timer never fires early and at most ``resolution`` seconds late. ``TimerWheel`` provides
``IReactorTime`` (``seconds`` is the reactor's), so it can be handed to code that takes a
clock; its handles provide ``IDelayedCall`` (``cancel``, ``reset``, ``delay``, ``active``,
``getTime``). A timer scheduled while the wheel is firing never runs in the same turn.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any

from twisted.internet import error
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from .delayed_calls import cancel_pending, rearm

__all__ = ["TimerWheel", "WheelTimer"]

log = Logger(namespace="rebreak_idle.wheel")

_EPSILON = 1e-9  # a reactor time computed as tick * resolution may come out a hair short


@implementer(IDelayedCall)
class WheelTimer:
    """One timer of a :class:`TimerWheel` (an ``IDelayedCall``)."""

    __slots__ = ("_args", "_func", "_kw", "_state", "_tick", "_wheel", "_when")

    # _state: 0 pending, 1 called, 2 cancelled
    def __init__(self, wheel: TimerWheel, when: float, func: Callable[..., Any],
                 args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        self._wheel = wheel
        self._when = when
        self._tick = 0
        self._func = func
        self._args = args
        self._kw = kw
        self._state = 0

    def getTime(self) -> float:
        """When the timer is due (it runs at the end of that tick at the latest)."""
        return self._when

    def active(self) -> bool:
        return self._state == 0

    def _check_pending(self) -> None:
        if self._state == 1:
            raise error.AlreadyCalled()
        if self._state == 2:
            raise error.AlreadyCancelled()

    def cancel(self) -> None:
        self._check_pending()
        self._state = 2
        self._wheel._count -= 1
        self._wheel._remove(self)
        self._func = self._args = self._kw = None  # type: ignore[assignment]

    def reset(self, secondsFromNow: float) -> None:
        self._move(self._wheel.seconds() + secondsFromNow)

    def delay(self, secondsLater: float) -> None:
        self._move(self._when + secondsLater)

    def _move(self, when: float) -> None:
        self._check_pending()
        wheel = self._wheel
        wheel._remove(self)
        self._when = when
        wheel._add(self)

    def __repr__(self) -> str:
        state = ("pending", "called", "cancelled")[self._state]
        return f"<WheelTimer {state} at {self._when:.3f} {self._func!r}>"


@implementer(IReactorTime)
class TimerWheel:
    """Timers of ``resolution`` seconds granularity on top of ``clock`` (the reactor or
    a ``task.Clock``)."""

    def __init__(self, clock: IReactorTime, resolution: float = 1.0) -> None:
        if resolution <= 0:
            raise ValueError("resolution must be positive")
        self._clock = clock
        self.resolution = resolution
        self._buckets: dict[int, dict[WheelTimer, None]] = {}
        self._ticks: list[int] = []  # heap of the ticks that have (or had) a bucket
        self._call: IDelayedCall | None = None
        self._armed_tick: int | None = None
        self._firing = False
        self._count = 0

    def __len__(self) -> int:
        """Pending timers."""
        return self._count

    # IReactorTime

    def seconds(self) -> float:
        return self._clock.seconds()

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any,
                  **kw: Any) -> WheelTimer:
        timer = WheelTimer(self, self._clock.seconds() + max(0.0, delay), callable, args, kw)
        self._count += 1
        self._add(timer)
        return timer

    def getDelayedCalls(self) -> list[WheelTimer]:
        return [timer for bucket in self._buckets.values() for timer in bucket]

    # internals

    def _add(self, timer: WheelTimer) -> None:
        tick = math.ceil(timer._when / self.resolution - _EPSILON)
        timer._tick = tick
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
            heapq.heappush(self._ticks, tick)
        bucket[timer] = None
        if not self._firing and (self._armed_tick is None or tick < self._armed_tick):
            self._arm(tick)

    def _remove(self, timer: WheelTimer) -> None:
        # a timer of a bucket being fired is not in _buckets any more: the firing loop
        # skips it by its state or its new tick
        tick = timer._tick
        bucket = self._buckets.get(tick)
        if bucket is not None and bucket.pop(timer, 0) is None and not bucket:
            del self._buckets[tick]  # its tick stays in the heap, skipped later
            if tick == self._armed_tick and not self._firing:
                self._arm_next()  # no reactor wake-up for an empty tick

    def _arm(self, tick: int) -> None:
        delay = max(0.0, tick * self.resolution - self._clock.seconds())
        self._armed_tick = tick
        self._call = rearm(self._call, self._clock, delay, self._fire)

    def _arm_next(self) -> None:
        ticks, buckets = self._ticks, self._buckets
        while ticks and ticks[0] not in buckets:
            heapq.heappop(ticks)
        if ticks:
            self._arm(ticks[0])
        else:
            self._armed_tick = None
            call, self._call = self._call, None
            cancel_pending(call)

    def _fire(self) -> None:
        self._call = None
        self._armed_tick = None
        now_tick = math.floor(self._clock.seconds() / self.resolution + _EPSILON)
        ticks, buckets = self._ticks, self._buckets
        due: list[tuple[int, list[WheelTimer]]] = []
        while ticks and ticks[0] <= now_tick:
            tick = heapq.heappop(ticks)
            bucket = buckets.pop(tick, None)
            if bucket:
                due.append((tick, list(bucket)))
        self._firing = True
        try:
            for tick, timers in due:
                for timer in timers:
                    if timer._state != 0 or timer._tick != tick:
                        continue  # cancelled or moved by an earlier timer of this turn
                    timer._state = 1
                    self._count -= 1
                    func, args, kw = timer._func, timer._args, timer._kw
                    timer._func = timer._args = timer._kw = None  # type: ignore[assignment]
                    try:
                        func(*args, **kw)
                    except Exception:
                        log.failure("timer {func!r} failed", func=func)
        finally:
            self._firing = False
            self._arm_next()
