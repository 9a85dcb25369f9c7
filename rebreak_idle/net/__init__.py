"""Net: how a connection reaches its server — endpoints, source addresses, TLS contexts,
and the process's file-descriptor limit every connection draws on.

Shared by the session and the probe. Must not know about IMAP commands, SQL, HTTP scans
or the supervisor.
"""
