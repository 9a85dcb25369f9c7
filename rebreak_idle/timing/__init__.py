"""Timing: backoff sequences, the timer wheel, delayed-call helpers and the stop budget.

Pure time arithmetic on a reactor's clock: must not know about IMAP, SQL, HTTP, accounts
or sessions.
"""
