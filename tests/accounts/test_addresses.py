"""The one loopback check (account validation and the IMAP client use it)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.accounts import account
from rebreak_idle.accounts.addresses import is_loopback


class LoopbackTests(SynchronousTestCase):
    def test_loopback(self) -> None:
        for host in ("localhost", "LOCALHOST.", "127.0.0.1", "127.3.4.5", "::1", "[::1]",
                     "::1%lo"):
            self.assertTrue(is_loopback(host), host)

    def test_not_loopback(self) -> None:
        for host in ("", "10.1.2.3", "192.0.2.7", "imap.example.org", "::2", "[fe80::1]",
                     "localhost.example.org", "127.0.0.1.example.org"):
            self.assertFalse(is_loopback(host), host)

    def test_account_uses_it(self) -> None:
        self.assertIs(account.is_loopback, is_loopback)
