"""Extra folders (REBREAK_EXTRA_FOLDERS): names and LIST lines, the setting, the scan
trigger's mailbox field and its owed entry per folder, and sessions against the
in-process server (a ``\\Junk`` folder, one named Unbekannt) with the heartbeat's one write
checked."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from rebreak_idle.accounts.account import Account
from rebreak_idle.config import session_settings
from rebreak_idle.imap.listing import (
    ListEntry,
    decode_mutf7,
    encode_mutf7,
    parse_list,
    quote_mailbox,
)
from rebreak_idle.scan.owed import OwedScans
from rebreak_idle.scan.request import Job
from rebreak_idle.session.folders import FolderWatch
from rebreak_idle.session.mailbox_marks import MailboxMark, MailboxMemory
from rebreak_idle.session.session import MailboxSession
from rebreak_idle.testing.imapserver import InProcessIMAPServer
from tests.support.dovecot import DovecotServer, skip_without_dovecot
from tests.support.profiles import PROFILES
from tests.support.recorder import Recorder
from tests.support.scripted_imap import Folder
from tests.support.session_harness import Harness as ScriptedHarness
from tests.support.session_harness import make_settings
from tests.support.session_servers import PASSWORD, USER, Events, account, settings
from tests.support.wait import until


class NameTests(TestCase):
    def test_modified_utf7(self) -> None:
        for text, wire in [("Entwürfe", b"Entw&APw-rfe"), ("A&B", b"A&-B"),
                           ("Unbekannt", b"Unbekannt"), ("日本語", b"&ZeVnLIqe-"),
                           ("Gelöschte Elemente", b"Gel&APY-schte Elemente")]:
            self.assertEqual(encode_mutf7(text), wire)
            self.assertEqual(decode_mutf7(wire), text)

    def test_malformed_utf7_is_shown_as_sent(self) -> None:
        self.assertEqual(decode_mutf7(b"a&A-b"), "a&A-b")
        self.assertEqual(decode_mutf7(b"&\xff"), "&\ufffd")

    def test_quoting(self) -> None:
        self.assertEqual(quote_mailbox(b"Unbekannt"), b"Unbekannt")
        self.assertEqual(quote_mailbox(b"Junk Email"), b'"Junk Email"')
        self.assertEqual(quote_mailbox(b"[Gmail]/Spam"), b'"[Gmail]/Spam"')
        self.assertEqual(quote_mailbox(b'a"b\\c'), b'"a\\"b\\\\c"')
        self.assertIsNone(quote_mailbox(b"bad\r\nA1 DELETE INBOX"))
        self.assertIsNone(quote_mailbox("Entwürfe".encode()))
        self.assertIsNone(quote_mailbox(b""))
        self.assertIsNone(quote_mailbox(b"x" * 1001))

    def test_list_lines(self) -> None:
        entry = parse_list(b'(\\HasNoChildren \\Junk) "/" "Spam"')
        self.assertEqual(entry, ListEntry(("\\HasNoChildren", "\\Junk"), "/", b"Spam"))
        assert entry is not None
        self.assertTrue(entry.has("\\junk"))
        self.assertEqual(parse_list(b'() NIL Unbekannt'),
                         ListEntry((), None, b"Unbekannt"))
        literal = parse_list(b'() "." {10}\r\nJunk Email')
        self.assertEqual(literal, ListEntry((), ".", b"Junk Email"))
        self.assertEqual(parse_list(b'(\\Junk) "/" "Gel&APY-scht"').name,  # type: ignore
                         "Gelöscht")
        for bad in [b"", b"garbage", b'"/" "Spam"', b'() "/"', b'(\\Junk) "/" ""',
                    b'((x)) "/" Spam', b'() "/" "' + b"x" * 2000 + b'"']:
            self.assertIsNone(parse_list(bad), bad)




ACCOUNT = Account(id="a1", user_id="u1", email="x@example.org", host="h", port=993,
                  security="tls", username="x", auth_method="password", secret="pw")


class TriggerTests(TestCase):
    def test_inbox_body_is_the_contracts(self) -> None:
        self.assertEqual(Job(ACCOUNT, 3, "exists").payload(),
                         b'{"connectionId": "a1", "userId": "u1", "reason": "exists", '
                         b'"exists": 3}')

    def test_folder_body_has_the_mailbox(self) -> None:
        body = json.loads(Job(ACCOUNT, 2, "exists", mailbox="Unbekannt").payload())
        self.assertEqual(body, {"connectionId": "a1", "userId": "u1", "reason": "exists",
                                "exists": 2, "mailbox": "Unbekannt"})

    def test_same_mailbox_coalesces_and_inbox_never_replaces_a_folder(self) -> None:
        owed = OwedScans()
        got: list[tuple[str | None, bool]] = []
        jobs = []
        for mailbox in ("Spam", None, "Spam", None, "Unbekannt"):
            job = Job(ACCOUNT, 1, "exists", mailbox=mailbox)
            d: defer.Deferred[bool] = defer.Deferred()
            d.addCallback(lambda ok, m=mailbox: got.append((m, ok)))
            job.acks.append(d)
            jobs.append(job)
            owed.owe(job, float(len(jobs)))
        self.assertEqual(len(owed), 3)  # one entry per mailbox
        self.assertEqual(got, [("Spam", False), (None, False)])  # the replaced ones
        self.assertIs(owed.take("a1"), jobs[2])  # the folder waited longest
        self.assertIs(owed.take("a1"), jobs[3])
        self.assertIs(owed.take("a1"), jobs[4])


class WatchTests(TestCase):
    def test_changes(self) -> None:
        watch = FolderWatch([ListEntry(("\\Junk",), "/", b"Spam"),
                             ListEntry((), "/", b"Unbekannt")])
        memory = MailboxMemory()
        one, two = MailboxMark(7, 5, 4), MailboxMark(7, 6, 5)
        memory.remember("a1", one, "Spam")
        watch.marks = {"Spam": one, "Unbekannt": one}
        self.assertEqual(watch.changes(memory, "a1", connecting=True), [("Unbekannt", one)])
        # asked for and unanswered: not again
        self.assertEqual(watch.changes(memory, "a1", connecting=True), [])
        watch.settled("Unbekannt", one)
        memory.remember("a1", one, "Unbekannt")
        self.assertEqual(watch.changes(memory, "a1", connecting=False), [])
        watch.marks["Spam"] = two
        self.assertEqual(watch.changes(memory, "a1", connecting=False), [("Spam", two)])


class InProcessFolderTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.server = InProcessIMAPServer(reactor)
        self.server.add_user(USER, PASSWORD)
        self.server.add_folder(USER, "Spam", ("\\HasNoChildren", "\\Junk"))
        self.server.add_folder(USER, "Unbekannt", ("\\HasNoChildren",))
        self.server.add_folder(USER, "Archive", ("\\Archive",))
        self.addCleanup(self.server.stop)
        self.events = Events()
        self.memory = MailboxMemory()
        self.port = self.server.listen().getHost().port

    def session(self, folders: tuple[str, ...], **kw: Any) -> MailboxSession:
        events = self.events

        def on_new_mail(a: Account, n: int, reason: str, mailbox: str = "INBOX"
                        ) -> defer.Deferred:
            events.add("mail", reason, n, mailbox)
            return defer.succeed(True)

        s = MailboxSession(account(self.port), session_settings(settings(
            extra_folders=folders, **kw)), Recorder(reactor, events.add), on_new_mail, reactor,
            memory=self.memory)
        s.startService()
        self.addCleanup(s.stopService)
        return s

    def wait_mail(self, *item: Any) -> defer.Deferred:
        return self.events.wait(lambda i: i == ("mail", *item))

    async def _folder_mail_within_a_heartbeat(self) -> None:
        self.server.deliver(USER, "old junk", folder="Spam")
        s = self.session(("\\Junk", "Unbekannt", "Missing", "\\Drafts"),
                         heartbeat_interval=0.5)
        await self.wait_mail("connected", 0, "INBOX")
        await self.wait_mail("connected", 1, "Spam")
        # Unbekannt is empty: nothing to scan (Missing and \Drafts are not there)
        self.assertEqual(s.mail.folders.names, ["Spam", "Unbekannt"])  # type: ignore[union-attr]
        client = s.client
        assert client is not None
        writes: list[bytes] = []
        real = client.transport.write

        def write(data: bytes) -> None:
            writes.append(data)
            real(data)

        client.transport.write = write
        self.server.deliver(USER, "Casino", folder="Unbekannt")
        await self.wait_mail("exists", 1, "Unbekannt")
        heartbeat = next(w for w in writes if w.startswith(b"DONE\r\n"))
        lines = heartbeat.split(b"\r\n")[:-1]
        self.assertEqual(lines[0], b"DONE")
        self.assertEqual([line.split(b" ", 2)[1] for line in lines[1:]],
                         [b"NOOP", b"STATUS", b"STATUS", b"IDLE"])
        self.assertIn(b" STATUS Spam (UIDNEXT UIDVALIDITY MESSAGES)", heartbeat)
        self.assertIn(b" STATUS Unbekannt (UIDNEXT UIDVALIDITY MESSAGES)", heartbeat)
        await until(lambda: self.memory.get(s.account.id, "Unbekannt") is not None
                    and self.memory.get(s.account.id, "Unbekannt").exists == 1)
        # INBOX mail still comes as it always did
        self.server.deliver(USER, "hello")
        await self.wait_mail("exists", 1, "INBOX")
        await s.stopService()
        # a restart: unchanged folders ask for nothing, a changed one does
        self.server.deliver(USER, "more junk", folder="Spam")
        before = len(self.events.of("mail"))
        self.session(("\\Junk", "Unbekannt"), heartbeat_interval=0.5)
        await self.wait_mail("connected", 2, "Spam")
        await self.events.wait(lambda i: i[0] == "heartbeat", new=True)
        await self.events.wait(lambda i: i[0] == "heartbeat", new=True)
        self.assertEqual(self.events.of("mail")[before:], [("mail", "connected", 2, "Spam")])

    def test_folder_mail_within_a_heartbeat(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._folder_mail_within_a_heartbeat())

    async def _off_by_default(self) -> None:
        s = self.session(())
        await self.wait_mail("connected", 0, "INBOX")
        self.server.deliver(USER, "junk", folder="Spam")
        self.server.deliver(USER, "hello")
        await self.wait_mail("exists", 1, "INBOX")
        self.assertIsNone(s.mail.folders)
        self.assertEqual([m[3] for m in self.events.of("mail")], ["INBOX", "INBOX"])

    def test_off_by_default(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._off_by_default())


class MemoryTests(TestCase):
    def test_forget_drops_the_folders_too(self) -> None:
        memory = MailboxMemory()
        mark = MailboxMark(1, 2, 1)
        memory.remember("a1", mark)
        memory.remember("a1", mark, "Spam")
        memory.load(["a2"], {("a2", "Unbekannt"): mark, ("a2", "INBOX"): mark})
        memory.remember("a3", mark, "Spam")
        memory.forget("a1")
        memory.forget("a2")
        self.assertIsNone(memory.get("a1", "Spam"))
        self.assertIsNone(memory.get("a2", "Unbekannt"))
        self.assertEqual(len(memory), 1)
        self.assertEqual(memory.get("a3", "Spam"), mark)


class DovecotFolderTests(TestCase):
    """The same against Dovecot with SPECIAL-USE (``mailbox Junk { special_use = \\Junk }``
    in tests/support/dovecot.py) and a folder named Unbekannt."""

    skip = skip_without_dovecot()
    timeout = 60

    async def _junk_and_unbekannt(self) -> None:
        dovecot = DovecotServer.shared()
        user = next(iter(dovecot.users))
        events = Events()

        def on_new_mail(a: Account, n: int, reason: str, mailbox: str = "INBOX"
                        ) -> defer.Deferred:
            events.add("mail", reason, n, mailbox)
            return defer.succeed(True)

        acct = Account(id="dovecot-folders", user_id="u1", email=user, host="127.0.0.1",
                       port=dovecot.imap_port, security="plain", username=user,
                       auth_method="password", secret=dovecot.users[user])
        memory = MailboxMemory()
        s = MailboxSession(acct, session_settings(settings(
            extra_folders=("\\Junk", "Unbekannt"), heartbeat_interval=0.5,
            tls_ca_file=dovecot.ca_file)), Recorder(reactor, events.add), on_new_mail, reactor,
            memory=memory)
        dovecot.deliver(user, subject="Old junk", folder="Junk")  # an empty one asks nothing
        s.startService()
        self.addCleanup(s.stopService)
        junk = await events.wait(lambda i: i[:2] == ("mail", "connected") and i[3] == "Junk")
        self.assertIn(b"SPECIAL-USE", s.client.capabilities)  # type: ignore[union-attr]
        self.assertEqual(s.mail.folders.names, ["Junk", "Unbekannt"])  # type: ignore[union-attr]
        await until(lambda: memory.get(acct.id, "Junk") is not None)
        dovecot.deliver(user, subject="Casino bonus", folder="Junk")
        await events.wait(lambda i: i == ("mail", "exists", junk[2] + 1, "Junk"), new=True)
        self.assertEqual(events.of("error"), [])

    def test_junk_and_unbekannt(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._junk_and_unbekannt())


class ScriptedFolderTests(SynchronousTestCase):
    """Sessions on the scripted server's folders, in memory on a Clock (its provider
    profiles: Courier, Cyrus)."""

    def harness(self, folders: tuple[str, ...], profile: str | None = None,
                **listed: Folder) -> ScriptedHarness:
        mails: list[tuple[int, str, str]] = []

        def on_new_mail(acc: Account, n: int, reason: str, mailbox: str = "INBOX"
                        ) -> defer.Deferred:
            mails.append((n, reason, mailbox))
            return defer.succeed(True)

        h = ScriptedHarness(self, settings=make_settings(extra_folders=folders,
                                                         heartbeat_interval=60.0),
                            on_new_mail=on_new_mail)
        if profile is not None:
            h.server.profile = PROFILES[profile]
            h.server.capabilities = PROFILES[profile].capabilities
            h.server.select_uidnext = PROFILES[profile].select_uidnext
        h.server.folders.update(listed)
        h.folder_mails = mails  # type: ignore[attr-defined]
        return h

    def test_control_character_name_is_not_watched(self) -> None:
        """``* LIST (\\Junk) "/" "&AAA-"`` (a NUL once decoded): not watched, one log
        line says so; the other folder is watched as usual."""
        h = self.harness(("\\Junk",), profile="cyrus",
                         **{"&AAA-": Folder(("\\Junk",), exists=1),
                            "INBOX.Junk": Folder(("\\junk",), exists=2, uidnext=3)})
        h.start()
        self.assertEqual(h.session.state, "idle")
        self.assertEqual(h.folder_mails, [(3, "connected", "INBOX"),  # type: ignore
                                          (2, "connected", "INBOX.Junk")])
        self.assertEqual(h.lines("not watched"),
                         ["[idle/ann@example.test] folder '\\x00' not watched: its name "
                          "has control characters"])
        self.assertIsNone(h.memory.get("acc-1", "\x00"))
        self.assertEqual(h.memory.get("acc-1", "INBOX.Junk"), MailboxMark(2000, 3, 2))

    def beats(self, h: ScriptedHarness, n: int) -> None:
        for _ in range(n):
            h.run(h.settings.heartbeat_interval)

    def test_courier_empty_unopened_folder_asks_for_nothing(self) -> None:
        """Courier answers a new UIDVALIDITY to each STATUS of a folder no client has
        opened: with no mail in it, no heartbeat asks for a scan (each one did)."""
        junk = Folder(exists=0)
        h = self.harness(("INBOX.Junk",), profile="courier", **{"INBOX.Junk": junk})
        h.start()
        self.beats(h, 5)
        self.assertGreaterEqual(junk.uidvalidity, 2006)  # asked at least 6 times
        self.assertEqual(h.folder_mails, [(3, "connected", "INBOX")])  # type: ignore

    def test_courier_unstable_uidvalidity_with_mail(self) -> None:
        """The same folder with mail in it: one scan after the first connect, one per
        delivery, none per heartbeat, none after a reconnect that finds nothing new."""
        junk = Folder(exists=1, uidnext=2)
        h = self.harness(("INBOX.Junk",), profile="courier", **{"INBOX.Junk": junk})
        h.start()
        self.beats(h, 4)
        mails = h.folder_mails  # type: ignore[attr-defined]
        self.assertEqual(mails, [(3, "connected", "INBOX"), (1, "connected", "INBOX.Junk")])
        junk.deliver()
        self.beats(h, 4)
        self.assertEqual(mails[2:], [(2, "exists", "INBOX.Junk")])
        h.server.current.close()
        h.run(h.settings.reconnect_delay * 4)
        self.beats(h, 2)
        self.assertEqual((h.session.state, len(h.server.connections)), ("idle", 2))
        self.assertEqual(mails[3:], [])

    def test_real_uidvalidity_change_still_scans(self) -> None:
        """A server whose UIDVALIDITY is stable: a new one (the folder made anew, same
        numbers) asks for a scan once two answers agree — one heartbeat later, or at once
        after a connect (a second STATUS)."""
        junk = Folder(("\\Junk",), exists=1, uidnext=2, opened=True)
        h = self.harness(("\\Junk",), **{"Junk": junk})
        h.start()
        mails = h.folder_mails  # type: ignore[attr-defined]
        self.assertEqual(mails, [(3, "connected", "INBOX"), (1, "connected", "Junk")])
        junk.uidvalidity += 1
        self.beats(h, 1)
        self.assertEqual(len(mails), 2)
        self.beats(h, 1)
        self.assertEqual(mails[2:], [(1, "exists", "Junk")])
        self.assertEqual(h.memory.get("acc-1", "Junk"), MailboxMark(2001, 2, 1))
        h.server.current.close()
        h.pump()
        junk.uidvalidity += 1
        h.run(h.settings.reconnect_delay * 4)
        self.assertEqual(mails[3:], [(1, "connected", "Junk")])
        self.assertEqual(h.memory.get("acc-1", "Junk"), MailboxMark(2002, 2, 1))
