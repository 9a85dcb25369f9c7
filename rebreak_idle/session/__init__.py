"""Session: one IMAP IDLE session per mailbox (:class:`~.session.MailboxSession`), its
states, login sequence, heartbeat, reconnect policy, provider signals and limits, host
login budget, tokens, folders and the marks it keeps per mailbox.

Must not know about SQL or the database driver (marks and holdoffs come as interfaces),
nor how a scan is sent over HTTP (treq, twisted.web, scan/): it calls an
``IScanTrigger``.
"""
