"""Scan: the POST of a scan trigger to the backend (:class:`~.trigger.ScanTrigger`), its
request, the scans still owed after a failure, the backend's health and the HTTP pool.

Must not know about IMAP, SQL or the database driver, nor a session's internals.
"""
