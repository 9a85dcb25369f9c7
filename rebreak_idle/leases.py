"""Replica leases (shared accounts between several daemons). Schema only for now."""

LEASES_SQL = """
CREATE SCHEMA IF NOT EXISTS rebreak_idle;
CREATE TABLE IF NOT EXISTS rebreak_idle.leases (
    connection_id uuid PRIMARY KEY,
    replica_id    text NOT NULL,
    expires_at    timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS rebreak_idle.replicas (
    replica_id   text PRIMARY KEY,
    seen_at      timestamptz NOT NULL
);
"""
