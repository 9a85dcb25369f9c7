"""Fleet: the supervisor that keeps one session per active row (start, refresh, stop,
ramp-up) and the progress of a ramp.

Must not know about IMAP protocol details, SQL or the database driver (rows come through
``interfaces.IAccountSource``), nor a session's internals (sessions are built by a
factory the wiring gives).
"""
