"""Ops: what the operator runs and reads beside the daemon — the probe command, the log
observers and log folding, memory figures and the garbage-collector tuning.

The probe is an entry point and may use the other rooms; the rest must not know about
sessions, IMAP, SQL or HTTP scans.
"""
