"""Gauges computed at scrape time from the live sessions (a prometheus_client custom
collector on :data:`rebreak_idle.metrics.REGISTRY`).

The supervisor :meth:`~LiveSessions.attach`\\ es itself while it runs; each GET /metrics
then walks its sessions once (O(N) per scrape, nothing per heartbeat):

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
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .metrics import REGISTRY

__all__ = ["HEARTBEAT_BUCKETS", "LIVE", "LiveSessions"]

#: Buckets of the heartbeat age histogram (seconds).
HEARTBEAT_BUCKETS = (15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0)
_READY = frozenset({"idle", "polling"})


class LiveSessions(Collector):
    """The collector; :data:`LIVE` is the one registered on the daemon's registry."""

    #: the label names of its families (read by the alert-rule tests)
    _labelnames = ("state",)

    def __init__(self) -> None:
        self._source: Any = None

    def attach(self, supervisor: Any) -> None:
        """Compute from ``supervisor`` (``sessions``, ``clock``, ``_is_queued``,
        ``_waiting_for_descriptors``, ``_invalid``) from now on."""
        self._source = supervisor

    def detach(self, supervisor: Any) -> None:
        if self._source is supervisor:
            self._source = None

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
        states: Counter[str] = Counter()
        heartbeat_ages: list[float] = []
        newest_exists: float | None = None
        waiting = sup._waiting_for_descriptors()
        for account_id, session in list(sup.sessions.items()):
            if account_id in waiting:
                states["waiting-for-descriptors"] += 1
                continue
            if sup._is_queued(account_id):
                states["queued"] += 1
                continue
            state = str(getattr(session, "state", "unknown"))
            states[state] += 1
            beat = getattr(session, "last_heartbeat_at", None)
            if state in _READY and beat is not None:
                heartbeat_ages.append(max(0.0, now - beat))
            seen = getattr(session, "last_exists_at", None)
            if seen is not None and (newest_exists is None or seen > newest_exists):
                newest_exists = seen
        states["invalid"] += len(getattr(sup, "_invalid", ()))
        oldest.add_metric([], max(heartbeat_ages) if heartbeat_ages else 0.0)
        ages.add_metric([], _buckets(heartbeat_ages), sum_value=sum(heartbeat_ages))
        exists.add_metric([], math.nan if newest_exists is None
                          else max(0.0, now - newest_exists))
        for state, n in sorted(states.items()):
            accounts.add_metric([state], n)
        yield from (oldest, ages, exists, accounts)


def _buckets(values: list[float]) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs of ``values``, ``+Inf`` last."""
    out = []
    for bound in HEARTBEAT_BUCKETS:
        out.append((repr(bound), float(sum(1 for v in values if v <= bound))))
    out.append(("+Inf", float(len(values))))
    return out


LIVE = LiveSessions()
REGISTRY.register(LIVE)
