"""Prometheus metrics of the daemon, in one registry of its own (served by status/server.py).

Rooms update these directly; label values are fixed words (never an e-mail or a secret),
so the number of series stays bounded whatever the number of accounts.
"""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

__all__ = ["REGISTRY"]

REGISTRY = CollectorRegistry(auto_describe=True)

_Metric = TypeVar("_Metric", bound=MetricWrapperBase)


def _metric(kind: type[_Metric], name: str, documentation: str, *labels: str,
            **options: Any) -> _Metric:
    """A ``kind`` (Counter, Gauge, Histogram) with these labels in :data:`REGISTRY`."""
    return kind(name, documentation, labels, registry=REGISTRY, **options)


SESSIONS = _metric(Gauge, "rebreak_idle_sessions", "Mailbox sessions by state", "state")
EXISTS_EVENTS = _metric(Counter, "rebreak_idle_exists_events",
                        "EXISTS events announcing new mail")
RECONNECTS = _metric(Counter, "rebreak_idle_reconnects", "Reconnects scheduled, by cause",
                     "cause")
# rebreak_idle_oldest_heartbeat_age_seconds and the other gauges of the live sessions are
# computed at scrape time: rebreak_idle.live_metrics.

SCANS = _metric(Counter, "rebreak_idle_scan_triggers", "Scan triggers by reason and outcome",
                "reason", "outcome")
SCAN_RETRIES = _metric(Counter, "rebreak_idle_scan_retries",
                       "Scan trigger attempts that failed (no answer, 5xx, 408, 429): the "
                       "scan stays owed and is sent again")
SCANS_IN_FLIGHT = _metric(Gauge, "rebreak_idle_scans_in_flight", "Scan requests in flight")
SCAN_QUEUE = _metric(Gauge, "rebreak_idle_scan_queue_length",
                     "Scan requests waiting for a concurrency slot")
SCAN_LATENCY = _metric(Histogram, "rebreak_idle_scan_latency_seconds",
                       "Duration of one scan request",
                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

REFRESH_DURATION = _metric(Histogram, "rebreak_idle_refresh_duration_seconds",
                           "Duration of one account-list refresh",
                           buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
REFRESH_FAILURES = _metric(Counter, "rebreak_idle_refresh_failures",
                           "Account-list refreshes that failed")
DB_WRITE_BUFFER = _metric(Gauge, "rebreak_idle_db_write_buffer",
                          "Status writes waiting to be flushed to PostgreSQL")
DB_WRITE_FAILURES = _metric(Counter, "rebreak_idle_db_write_failures",
                            "Status write statements that failed")

LEASES_HELD = _metric(Gauge, "rebreak_idle_leases_held", "Account leases held by this replica")
LIVE_REPLICAS = _metric(Gauge, "rebreak_idle_live_replicas",
                        "Replicas with a heartbeat younger than the lease TTL")
LEASE_ROUND_FAILURES = _metric(Counter, "rebreak_idle_lease_round_failures",
                               "Lease renewals/claims that failed")

CONNECTION_ENDS = _metric(Counter, "rebreak_idle_connection_ends",
                          "Connections (or attempts) ended, by class (see docs/providers.md)",
                          "class")
LOGIN_QUEUE = _metric(Gauge, "rebreak_idle_login_queue",
                      "Connection attempts waiting for a host's login budget or connection "
                      "limit")
SESSION_CAPACITY = _metric(Gauge, "rebreak_idle_session_capacity",
                           "Sessions this process may run at once: the soft file descriptor "
                           "limit minus a reserve (NaN: no limit)")
DESCRIPTOR_LIMIT = _metric(Gauge, "rebreak_idle_descriptor_limit",
                           "The process's soft RLIMIT_NOFILE after start-up (NaN: unlimited)")
BUILD_INFO = _metric(Gauge, "rebreak_idle_build_info",
                     "Always 1; the version label is the daemon's version", "version")
