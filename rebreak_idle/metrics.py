"""Prometheus metrics of the daemon, in one registry of its own (served by status.py).

Rooms update these directly; label values are fixed words (never an e-mail or a secret),
so the number of series stays bounded whatever the number of accounts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["REGISTRY"]

REGISTRY = CollectorRegistry(auto_describe=True)

SESSIONS = Gauge(
    "rebreak_idle_sessions", "Mailbox sessions by state", ["state"], registry=REGISTRY)
EXISTS_EVENTS = Counter(
    "rebreak_idle_exists_events", "EXISTS events announcing new mail", registry=REGISTRY)
RECONNECTS = Counter(
    "rebreak_idle_reconnects", "Reconnects scheduled, by cause", ["cause"], registry=REGISTRY)
# rebreak_idle_oldest_heartbeat_age_seconds and the other gauges of the live sessions are
# computed at scrape time: rebreak_idle.live_metrics.

SCANS = Counter(
    "rebreak_idle_scan_triggers", "Scan triggers by reason and outcome",
    ["reason", "outcome"], registry=REGISTRY)
SCAN_RETRIES = Counter(
    "rebreak_idle_scan_retries", "Scan trigger attempts that were retried", registry=REGISTRY)
SCANS_IN_FLIGHT = Gauge(
    "rebreak_idle_scans_in_flight", "Scan requests in flight", registry=REGISTRY)
SCAN_QUEUE = Gauge(
    "rebreak_idle_scan_queue_length", "Scan requests waiting for a concurrency slot",
    registry=REGISTRY)
SCAN_LATENCY = Histogram(
    "rebreak_idle_scan_latency_seconds", "Duration of one scan request",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY)

REFRESH_DURATION = Histogram(
    "rebreak_idle_refresh_duration_seconds", "Duration of one account-list refresh",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY)
REFRESH_FAILURES = Counter(
    "rebreak_idle_refresh_failures", "Account-list refreshes that failed", registry=REGISTRY)
DB_WRITE_BUFFER = Gauge(
    "rebreak_idle_db_write_buffer", "Status writes waiting to be flushed to PostgreSQL",
    registry=REGISTRY)
DB_WRITE_FAILURES = Counter(
    "rebreak_idle_db_write_failures", "Status write statements that failed", registry=REGISTRY)

LEASES_HELD = Gauge(
    "rebreak_idle_leases_held", "Account leases held by this replica", registry=REGISTRY)
LIVE_REPLICAS = Gauge(
    "rebreak_idle_live_replicas", "Replicas with a heartbeat younger than the lease TTL",
    registry=REGISTRY)
LEASE_ROUND_FAILURES = Counter(
    "rebreak_idle_lease_round_failures", "Lease renewals/claims that failed", registry=REGISTRY)

CONNECTION_ENDS = Counter(
    "rebreak_idle_connection_ends", "Connections (or attempts) ended, by class (see "
    "docs/providers.md)", ["class"], registry=REGISTRY)
LOGIN_QUEUE = Gauge(
    "rebreak_idle_login_queue", "Connection attempts waiting for a host's login budget or "
    "connection limit", registry=REGISTRY)
