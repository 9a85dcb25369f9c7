"""Accounts: the validated mailbox row, its decrypted secret, its addresses and the policy
on where a connection may go (destinations).

Owns what a row means. Must not know about IMAP, SQL or the database driver, HTTP or
sessions: the row arrives as values and leaves as an :class:`~.account.Account`.
"""
