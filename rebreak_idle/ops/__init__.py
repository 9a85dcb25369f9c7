"""Ops: what the process needs beside its rooms — the log observers and the folding of
repeated log lines, memory figures and the garbage-collector tuning.

Used by the wiring and the session; must not know about sessions, the supervisor, IMAP,
SQL or HTTP scans (the ``probe`` command, which uses all of them, is an entry point beside
``cli``).
"""
