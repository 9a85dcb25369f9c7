"""Gauges computed at scrape time from the live sessions (a prometheus_client custom
collector on :data:`rebreak_idle.metrics.REGISTRY`).

The supervisor :meth:`~LiveSessions.attach`\\ es itself while it runs. The accounts by
state come from the counts the sessions keep up to date (``Supervisor.counts``, no walk);
the heartbeat and EXISTS ages change with the clock, so each GET /metrics reads them from
the sessions in a few comprehensions (O(N) attribute reads per scrape, about 20 ms of the
scrape at 50,000 sessions: ``python -m bench.statuscost``; nothing per heartbeat):

``rebreak_idle_oldest_heartbeat_age_seconds``
    seconds since the oldest last heartbeat among the sessions that are idle (IDLE or
    polling): sessions in auth-failed, backoff or queued do not heartbeat and are left
    out (the ``rebreak_idle_accounts{state}`` gauge counts those). 0 with none idle.
``rebreak_idle_heartbeat_age_seconds``
    histogram of the same ages, one observation per idle session.
``rebreak_idle_last_exists_age_seconds``
    seconds since the newest EXISTS any session saw (NaN before the first one).
``rebreak_idle_accounts{state}``
    the supervisor's accounts by state as the status page counts them: the session states,
    ``queued`` (waiting for the start-up ramp or for its predecessor's LOGOUT),
    ``waiting-for-descriptors`` (held back by the descriptor limit) and ``invalid`` (rows
    that cannot be watched).

The scan trigger attaches itself to :data:`SCANS_LIVE` while it runs
(:mod:`rebreak_idle.scan.trigger`, docs/reliability.md "Owed scans"):

``rebreak_idle_backend_state{state}``
    1 for the backend's current state (``up``, ``down``, ``refusing``), 0 for the others.
``rebreak_idle_scans_owed``
    mailboxes owing a scan: new mail not yet covered by an acknowledged (2xx) scan.
``rebreak_idle_oldest_owed_scan_age_seconds``
    seconds since the oldest of them first owed it (0 when none does).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .metrics import REGISTRY
from .session.states import State

__all__ = ["HEARTBEAT_BUCKETS", "LIVE", "SCANS_LIVE", "LiveScans", "LiveSessions"]

#: Buckets of the heartbeat age histogram (seconds).
HEARTBEAT_BUCKETS = (15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0)
_READY = frozenset({State.IDLE, State.POLLING})


class LiveSessions(Collector):
    """The collector; :data:`LIVE` is the one registered on the daemon's registry."""

    #: the label names of its families (read by the alert-rule tests)
    _labelnames = ("state",)

    def __init__(self) -> None:
        self._source: Any = None

    def attach(self, supervisor: Any) -> None:
        """Compute from ``supervisor`` (its ``sessions``, ``clock`` and the kept-up-to-date
        ``counts()``) from now on."""
        self._source = supervisor

    def detach(self, supervisor: Any) -> None:
        if self._source is supervisor:
            self._source = None

    @property
    def source(self) -> Any:
        """The supervisor computed from (None when detached)."""
        return self._source

    def describe(self) -> list[Any]:
        return list(self._families(None))

    def collect(self) -> Iterator[Any]:
        return self._families(self._source)

    def _families(self, sup: Any) -> Iterator[Any]:
        oldest = GaugeMetricFamily(
            "rebreak_idle_oldest_heartbeat_age_seconds",
            "Seconds since the oldest last heartbeat among idle (IDLE or polling) sessions")
        ages = HistogramMetricFamily(
            "rebreak_idle_heartbeat_age_seconds",
            "Seconds since the last heartbeat of each idle (IDLE or polling) session")
        exists = GaugeMetricFamily(
            "rebreak_idle_last_exists_age_seconds",
            "Seconds since the newest EXISTS that any session saw")
        accounts = GaugeMetricFamily(
            "rebreak_idle_accounts", "Accounts by state (queued and invalid included)",
            labels=["state"])
        if sup is None:
            yield from (oldest, ages, exists, accounts)
            return
        now = sup.clock.seconds()
        sessions = list(sup.sessions.values())
        # one comprehension per figure: the per-session work is a few attribute reads
        beats = [s.last_heartbeat_at for s in sessions if getattr(s, "state", None) in _READY]
        heartbeat_ages = sorted([max(0.0, now - b) for b in beats if b is not None])
        seen = [t for t in [getattr(s, "last_exists_at", None) for s in sessions]
                if t is not None]
        newest_exists = max(seen) if seen else None
        oldest.add_metric([], heartbeat_ages[-1] if heartbeat_ages else 0.0)
        ages.add_metric([], _buckets(heartbeat_ages), sum_value=math.fsum(heartbeat_ages))
        exists.add_metric([], math.nan if newest_exists is None
                          else max(0.0, now - newest_exists))
        for state, n in sorted(sup.counts().items()):  # kept up to date: no scan
            accounts.add_metric([state], n)
        yield from (oldest, ages, exists, accounts)


def _buckets(ascending: list[float]) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs of the sorted ``ascending``, ``+Inf`` last."""
    out = [(repr(bound), float(bisect_right(ascending, bound))) for bound in HEARTBEAT_BUCKETS]
    out.append(("+Inf", float(len(ascending))))
    return out


LIVE = LiveSessions()
REGISTRY.register(LIVE)

#: the backend's states, as the scan trigger's health names them
BACKEND_STATES = ("up", "down", "refusing")


class LiveScans(Collector):
    """The owed scans and the backend's state, read from the scan trigger at scrape time
    (``health.state``, ``owed()``); :data:`SCANS_LIVE` is the one registered."""

    _labelnames = ("state",)

    def __init__(self) -> None:
        self._source: Any = None

    def attach(self, trigger: Any) -> None:
        self._source = trigger

    def detach(self, trigger: Any) -> None:
        if self._source is trigger:
            self._source = None

    def describe(self) -> list[Any]:
        return list(self._families(None))

    def collect(self) -> Iterator[Any]:
        return self._families(self._source)

    def _families(self, trigger: Any) -> Iterator[Any]:
        state = GaugeMetricFamily(
            "rebreak_idle_backend_state",
            "1 for the backend's current state as the scan trigger sees it (up, down: no "
            "answer or 5xx/408/429, refusing: 401/403/404)", labels=["state"])
        owed = GaugeMetricFamily(
            "rebreak_idle_scans_owed",
            "Mailboxes owing a scan: new mail not yet covered by an acknowledged scan")
        age = GaugeMetricFamily(
            "rebreak_idle_oldest_owed_scan_age_seconds",
            "Seconds since the oldest owed scan was first asked for (0 when none is owed)")
        if trigger is None:
            yield from (state, owed, age)
            return
        current = str(trigger.health.state)
        for name in BACKEND_STATES:
            state.add_metric([name], 1.0 if name == current else 0.0)
        count, oldest = trigger.owed()
        owed.add_metric([], float(count))
        age.add_metric([], 0.0 if oldest is None else oldest)
        yield from (state, owed, age)


SCANS_LIVE = LiveScans()
REGISTRY.register(SCANS_LIVE)
