"""Process-wide limits per IMAP host: a login budget and a connection limit.

Every connection attempt of every session passes :meth:`HostBudget.acquire` for its host:
at start-up, at a replica takeover and at every reconnect (the login budget is on by
default, ``REBREAK_HOST_LOGIN_RATE``; docs/providers.md says why the rate). It fires with a
:class:`Slot` once

* the host's token bucket (``REBREAK_HOST_LOGIN_RATE`` per second, up to
  ``REBREAK_HOST_LOGIN_BURST`` at once) has a token, and
* one of the local source addresses (``REBREAK_SOURCE_ADDRESSES``; none: the system's
  choice) has fewer than ``REBREAK_HOST_MAX_CONNECTIONS`` connections open to the host.

Attempts wait in a first-come queue per host; one reactor timer per host (never one per
session) refills the bucket. A host is named as DNS compares names (:func:`host_key`:
``Imap.Example.com.`` and ``imap.example.com`` share one budget), and a host that no session
uses any more (nothing open, nothing queued, its bucket full again) is forgotten. The
session releases its slot when the connection (attempt) ends, and reports when it is ready
(idle or polling): after a wave of queued attempts the budget logs how long it took until
all of them had settled. Providers limit per account, per IP and per login rate (Gmail 15
connections per account, Dovecot ``mail_max_userip_connections``, Courier ``MAXPERIP``;
EmailEngine spreads connections over local addresses the same way): see docs/providers.md.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from .. import metrics

__all__ = ["GatedEndpoint", "HostBudget", "Slot", "host_key"]

log = Logger(namespace="rebreak_idle.budget")

#: A token, give or take float rounding.
_ONE = 1.0 - 1e-9
#: A wave of at least this many queued attempts is logged when it has settled.
WAVE_LOGGED = 10
#: The host table is swept of unused hosts once it holds this many (then at twice the
#: size left after each sweep).
SWEEP_AT = 64


def host_key(host: str) -> str:
    """The budget's name of ``host``: lower case, without a trailing dot, internationalised
    names in their ASCII (IDNA) form; IP literals unchanged but for case."""
    name = host.strip().rstrip(".").lower()
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


class Slot:
    """One admitted connection attempt: ``source`` is the local address to bind (or None).
    :meth:`release` when the connection or attempt ended (idempotent); :meth:`ready` when
    the session is watching."""

    __slots__ = ("_budget", "_host", "_state", "source")

    def __init__(self, budget: HostBudget, host: _Host, source: str | None,
                 in_wave: bool) -> None:
        self._budget = budget
        self._host = host
        self.source = source
        self._state = 1 if in_wave else 0  # 1: counted in the host's wave, not settled yet

    def ready(self) -> None:
        if self._state == 1:
            self._state = 0
            self._host.settled(self._budget.clock.seconds(), ok=True)

    def release(self) -> None:
        if self._state == 2:
            return
        if self._state == 1:
            self._host.settled(self._budget.clock.seconds(), ok=False)
        self._state = 2
        self._host.open[self.source] -= 1
        self._budget._admit(self._host)
        self._budget._forget_if_unused(self._host)


class _Host:
    __slots__ = ("name", "open", "queue", "stamp", "timer", "tokens", "wave_left",
                 "wave_ok", "wave_size", "wave_start")

    def __init__(self, name: str, burst: float, now: float,
                 sources: tuple[str | None, ...]) -> None:
        self.name = name
        self.tokens = burst
        self.stamp = now
        self.queue: deque[Deferred] = deque()
        self.timer: IDelayedCall | None = None
        self.open: dict[str | None, int] = dict.fromkeys(sources, 0)
        self.wave_start: float | None = None
        self.wave_size = self.wave_left = self.wave_ok = 0

    def settled(self, now: float, ok: bool) -> None:
        self.wave_left -= 1
        self.wave_ok += ok
        if self.wave_left <= 0 and not self.queue and self.wave_start is not None:
            if self.wave_size >= WAVE_LOGGED:
                log.info("[idle/budget] {host}: {n} queued connection attempts settled in "
                         "{seconds:.1f}s ({ok} watching)", host=self.name, n=self.wave_size,
                         seconds=now - self.wave_start, ok=self.wave_ok)
            self.wave_start = None
            self.wave_size = self.wave_left = self.wave_ok = 0


class HostBudget:
    """See the module docstring. ``rate`` None: no login budget; ``max_connections``
    None: no connection limit; ``sources``: local addresses to spread connections over."""

    def __init__(self, clock: Any, *, rate: float | None = None, burst: int = 10,
                 max_connections: int | None = None,
                 sources: tuple[str, ...] = ()) -> None:
        self.clock = clock
        self.rate = rate
        self.burst = float(max(1, burst))
        self.max_connections = max_connections
        self.sources: tuple[str | None, ...] = tuple(sources) or (None,)
        self._hosts: dict[str, _Host] = {}
        self._sweep_at = SWEEP_AT
        self._rr = 0

    @property
    def limited(self) -> bool:
        """Whether this budget limits anything (else sessions need not ask)."""
        return self.rate is not None or self.max_connections is not None or \
            self.sources != (None,)

    def queued(self, host: str | None = None) -> int:
        """Attempts waiting (for ``host``, or in all)."""
        if host is not None:
            h = self._hosts.get(host_key(host))
            return len(h.queue) if h else 0
        return sum(len(h.queue) for h in self._hosts.values())

    def open_connections(self, host: str) -> int:
        h = self._hosts.get(host_key(host))
        return sum(h.open.values()) if h else 0

    def hosts(self) -> list[str]:
        """The hosts this budget keeps state for (in use, or whose bucket is refilling)."""
        return list(self._hosts)

    def acquire(self, host: str) -> Deferred:
        """Fire with a :class:`Slot` when an attempt to ``host`` may start (cancel the
        Deferred to leave the queue)."""
        key = host_key(host)
        h = self._hosts.get(key)
        if h is None:
            if len(self._hosts) >= self._sweep_at:
                self._sweep()
            h = self._hosts[key] = _Host(key, self.burst, self.clock.seconds(), self.sources)
        if not h.queue:
            self._refill(h)
            source = self._free_source(h)
            if source is not False and (self.rate is None or h.tokens >= _ONE):
                return succeed(self._grant(h, source, in_wave=False))

        def leave(d: Deferred) -> None:
            try:
                h.queue.remove(d)
            except ValueError:
                return
            metrics.LOGIN_QUEUE.dec()
            h.wave_left -= 1
            h.wave_size -= 1

        d: Deferred = Deferred(leave)
        h.queue.append(d)
        metrics.LOGIN_QUEUE.inc()
        if h.wave_start is None:
            h.wave_start = self.clock.seconds()
        h.wave_size += 1
        h.wave_left += 1
        self._admit(h)
        return d

    # -- inside ---------------------------------------------------------------------------

    def _refill(self, h: _Host) -> None:
        now = self.clock.seconds()
        if self.rate is not None:
            h.tokens = min(self.burst, h.tokens + (now - h.stamp) * self.rate)
        h.stamp = now

    def _free_source(self, h: _Host) -> str | bool | None:
        """The least used source address with room, or False when all are full."""
        best = min(h.open, key=lambda s: h.open[s])
        if self.max_connections is not None and h.open[best] >= self.max_connections:
            return False
        return best

    def _grant(self, h: _Host, source: str | None, in_wave: bool) -> Slot:
        if self.rate is not None:
            h.tokens -= 1.0
        h.open[source] += 1
        return Slot(self, h, source, in_wave)

    def _admit(self, h: _Host) -> None:
        """Start queued attempts while the budget allows; arm the host's one timer when
        only the bucket holds them back."""
        self._refill(h)
        while h.queue:
            source = self._free_source(h)
            if source is False:
                return  # a release admits the next
            if self.rate is not None and h.tokens < _ONE:
                if h.timer is None or not h.timer.active():
                    # at least a millisecond: float rounding must not make a Zeno loop
                    wait = max((1.0 - h.tokens) / self.rate, 0.001)
                    h.timer = self.clock.callLater(wait, self._tick, h)
                return
            d = h.queue.popleft()
            metrics.LOGIN_QUEUE.dec()
            d.callback(self._grant(h, source, in_wave=True))

    def _tick(self, h: _Host) -> None:
        h.timer = None
        self._admit(h)

    def _forget_if_unused(self, h: _Host) -> None:
        """Drop ``h`` when nothing holds or waits for it and its bucket is full again (a
        new entry would be the same)."""
        if h.queue or any(h.open.values()) or (h.timer is not None and h.timer.active()):
            return
        self._refill(h)
        if self.rate is None or h.tokens >= self.burst - 1e-9:
            if self._hosts.get(h.name) is h:
                del self._hosts[h.name]

    def _sweep(self) -> None:
        """Forget every unused host whose release did not (its bucket was still filling).
        Runs when a new host appears and the table has doubled since the last sweep, so
        its cost per new host stays constant."""
        for h in list(self._hosts.values()):
            self._forget_if_unused(h)
        self._sweep_at = max(SWEEP_AT, 2 * len(self._hosts))


@implementer(IStreamClientEndpoint)
class GatedEndpoint:
    """An endpoint that waits for the host's :class:`HostBudget` before connecting:
    ``make(source)`` builds the real endpoint bound to the slot's source address;
    ``admitted(slot)`` hands the slot to the session (which releases it)."""

    __slots__ = ("_admitted", "_budget", "_host", "_make")

    def __init__(self, budget: HostBudget, host: str,
                 make: Callable[[str | None], IStreamClientEndpoint],
                 admitted: Callable[[Slot], None]) -> None:
        self._budget = budget
        self._host = host
        self._make = make
        self._admitted = admitted

    def connect(self, factory: IProtocolFactory) -> Deferred:
        def go(slot: Slot) -> Deferred:
            self._admitted(slot)
            try:
                return self._make(slot.source).connect(factory)
            except Exception:
                slot.release()
                raise

        return self._budget.acquire(self._host).addCallback(go)
