"""Real parts for the test suite: PostgreSQL, IMAP servers, a backend double."""
