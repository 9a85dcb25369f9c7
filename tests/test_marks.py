"""MailboxMark and MailboxMemory: when a (re)connect needs a catch-up scan."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.marks import MailboxMark, MailboxMemory


class MarkTests(SynchronousTestCase):
    def test_from_select(self) -> None:
        info = {"EXISTS": 3, "UIDVALIDITY": 1000, "UIDNEXT": 4, "FLAGS": []}
        self.assertEqual(MailboxMark.from_select(info), MailboxMark(1000, 4, 3))
        self.assertEqual(MailboxMark.from_select({"EXISTS": None}), MailboxMark(None, None, 0))

    def test_changed_with_uidnext(self) -> None:
        mark = MailboxMark(1000, 4, 3)
        self.assertTrue(mark.changed_since(None))
        self.assertFalse(mark.changed_since(MailboxMark(1000, 4, 3)))
        self.assertFalse(mark.changed_since(MailboxMark(1000, 4, 2)))  # count not compared
        self.assertTrue(mark.changed_since(MailboxMark(1000, 5, 3)))
        self.assertTrue(mark.changed_since(MailboxMark(1001, 4, 3)))
        self.assertTrue(mark.changed_since(MailboxMark(1000, None, 3)))

    def test_changed_without_uidnext(self) -> None:
        mark = MailboxMark(7, None, 3)
        self.assertFalse(mark.changed_since(MailboxMark(7, None, 3)))
        self.assertTrue(mark.changed_since(MailboxMark(7, None, 2)))
        self.assertTrue(mark.changed_since(MailboxMark(7, 4, 3)))
        self.assertTrue(mark.changed_since(MailboxMark(8, None, 3)))

    def test_after_new_mail(self) -> None:
        self.assertEqual(MailboxMark(1000, 4, 3).after_new_mail(3, 5), MailboxMark(1000, 6, 5))
        self.assertEqual(MailboxMark(7, None, 3).after_new_mail(3, 4), MailboxMark(7, None, 4))

    def test_frozen(self) -> None:
        with self.assertRaises(AttributeError):
            MailboxMark(1, 2, 3).exists = 4  # type: ignore[misc]


class MemoryTests(SynchronousTestCase):
    def test_get_remember_forget(self) -> None:
        memory = MailboxMemory()
        self.assertIsNone(memory.get("a"))
        memory.remember("a", MailboxMark(1, 2, 3))
        self.assertEqual(memory.get("a"), MailboxMark(1, 2, 3))
        self.assertEqual(len(memory), 1)
        memory.forget("a")
        memory.forget("a")
        self.assertIsNone(memory.get("a"))
        self.assertEqual(len(memory), 0)
