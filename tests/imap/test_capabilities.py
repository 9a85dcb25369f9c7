"""CapabilityCache: the capabilities the client last learnt, on their own (no client)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.imap.capabilities import CapabilityCache


class CapabilityCacheTests(SynchronousTestCase):
    def test_unknown_until_taken(self) -> None:
        caps = CapabilityCache()
        self.assertFalse(caps.known)
        self.assertEqual(caps.words, {})
        self.assertFalse(caps.has(b"IDLE"))

    def test_take_a_list(self) -> None:
        caps = CapabilityCache()
        caps.take(b"IMAP4rev1 idle AUTH=PLAIN AUTH=XOAUTH2")
        self.assertTrue(caps.known)
        self.assertTrue(caps.has(b"IDLE"))
        self.assertTrue(caps.has(b"AUTH", b"PLAIN"))
        self.assertTrue(caps.has(b"AUTH", b"XOAUTH2"))
        self.assertFalse(caps.has(b"AUTH", b"LOGIN"))
        self.assertFalse(caps.has(b"STARTTLS"))

    def test_take_only_a_capability_code(self) -> None:
        caps = CapabilityCache()
        self.assertFalse(caps.take_code(b"READ-WRITE"))
        self.assertFalse(caps.take_code(None))
        self.assertFalse(caps.known)
        self.assertTrue(caps.take_code(b"CAPABILITY IMAP4rev1 IDLE"))
        self.assertTrue(caps.known)
        self.assertTrue(caps.has(b"IDLE"))

    def test_stale_keeps_the_words_forget_drops_them(self) -> None:
        caps = CapabilityCache()
        caps.take(b"IMAP4rev1 IDLE STARTTLS")
        caps.stale()
        self.assertFalse(caps.known)
        self.assertTrue(caps.has(b"IDLE"))  # still usable until asked again
        caps.forget()
        self.assertFalse(caps.known)
        self.assertFalse(caps.has(b"STARTTLS"))  # nothing said before TLS is trusted

    def test_small(self) -> None:
        """One per connection: slots, no per-instance dict."""
        self.assertFalse(hasattr(CapabilityCache(), "__dict__"))
