"""MailboxMark and MailboxMemory: when a (re)connect needs a catch-up scan."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.session.mailbox_marks import MailboxMark, MailboxMemory


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


class NeedsScanTests(SynchronousTestCase):
    def test_no_stored_mark(self) -> None:
        self.assertTrue(MailboxMark(1000, 4, 3).needs_scan(None))

    def test_uidnext_marks(self) -> None:
        mark = MailboxMark(1000, 4, 3)
        self.assertFalse(mark.needs_scan(MailboxMark(1000, 4, 3)))
        self.assertFalse(mark.needs_scan(MailboxMark(1000, 4, 5)))  # deletions: no scan
        self.assertTrue(mark.needs_scan(MailboxMark(1000, 3, 3)))  # UIDNEXT moved
        self.assertTrue(mark.needs_scan(MailboxMark(999, 4, 3)))  # UIDVALIDITY changed

    def test_count_only_marks_are_always_in_doubt(self) -> None:
        # one deleted + one delivered leaves the count equal: an equal count proves nothing
        self.assertTrue(MailboxMark(7, None, 3).needs_scan(MailboxMark(7, None, 3)))
        self.assertTrue(MailboxMark(7, 4, 3).needs_scan(MailboxMark(7, None, 3)))
        self.assertTrue(MailboxMark(7, None, 3).needs_scan(MailboxMark(7, 4, 3)))
        self.assertTrue(MailboxMark(None, 4, 3).needs_scan(MailboxMark(None, 4, 3)))

    def test_expunge_and_learned_uidnext(self) -> None:
        self.assertEqual(MailboxMark(7, None, 3).after_expunge(), MailboxMark(7, None, 2))
        self.assertEqual(MailboxMark(7, None, 0).after_expunge(), MailboxMark(7, None, 0))
        self.assertEqual(MailboxMark(7, None, 3).with_uidnext(9), MailboxMark(7, 9, 3))
        self.assertEqual(MailboxMark(7, 9, 3).with_count(5), MailboxMark(7, 9, 5))


class PersistentMemoryTests(SynchronousTestCase):
    def test_remember_queues_a_write_once_per_change(self) -> None:
        writes: list[tuple] = []
        memory = MailboxMemory(writer=lambda *a: writes.append(a))
        memory.remember("a", MailboxMark(1, 2, 3))
        memory.remember("a", MailboxMark(1, 2, 3))  # unchanged: no write
        memory.remember("a", MailboxMark(1, 3, 4))
        self.assertEqual(writes, [("a", "INBOX", MailboxMark(1, 2, 3)),
                                  ("a", "INBOX", MailboxMark(1, 3, 4))])

    def test_keys_are_per_mailbox(self) -> None:
        memory = MailboxMemory()
        memory.remember("a", MailboxMark(1, 2, 3))
        memory.remember("a", MailboxMark(5, 6, 7), mailbox="Spam")
        self.assertEqual(memory.get("a"), MailboxMark(1, 2, 3))
        self.assertEqual(memory.get("a", "Spam"), MailboxMark(5, 6, 7))
        memory.forget("a", ("INBOX", "Spam"))
        self.assertEqual(len(memory), 0)

    def test_load_once_and_again_after_forget(self) -> None:
        memory = MailboxMemory()
        self.assertEqual(memory.unloaded(["a", "b"]), ["a", "b"])
        memory.load(["a", "b"], {("a", "INBOX"): MailboxMark(1, 2, 3),
                                 ("z", "INBOX"): MailboxMark(9, 9, 9)})  # not asked: ignored
        self.assertEqual(memory.unloaded(["a", "b", "c"]), ["c"])
        self.assertEqual(memory.get("a"), MailboxMark(1, 2, 3))
        self.assertIsNone(memory.get("z"))
        memory.forget("a")  # this replica no longer watches it
        self.assertEqual(memory.unloaded(["a", "b"]), ["a"])
        self.assertIsNone(memory.get("a"))
        memory.load(["a"], {("a", "INBOX"): MailboxMark(1, 5, 4)})  # taken over again
        self.assertEqual(memory.get("a"), MailboxMark(1, 5, 4))
