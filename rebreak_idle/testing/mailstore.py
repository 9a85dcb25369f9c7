"""In-memory mail for :mod:`rebreak_idle.testing.imapserver`: messages, mailboxes, accounts.

A :class:`MemoryMailbox` holds :class:`MemoryMessage` s (raw RFC 822 bytes) and tells its
listeners (the connections that selected it) ``* N EXISTS`` when a message is added and
``* N EXPUNGE`` when one is removed; :class:`MemoryAccount` makes its mailboxes of that kind.
"""

from __future__ import annotations

import email.utils
import itertools
import time
from collections.abc import Iterable
from email.parser import BytesParser
from email.policy import compat32
from io import BytesIO
from typing import Any

from twisted.internet import defer
from twisted.mail import imap4
from zope.interface import implementer

__all__ = ["MemoryAccount", "MemoryMailbox", "MemoryMessage"]


@implementer(imap4.IMessage)
class MemoryMessage:
    """One stored message (raw RFC 822 bytes)."""

    def __init__(self, raw: bytes, uid: int, flags: Iterable[str] = ()) -> None:
        self.raw = raw
        self.uid = uid
        self.flags = list(flags)
        self.date = email.utils.formatdate(time.time())
        parsed = BytesParser(policy=compat32).parsebytes(raw)
        self.headers = {k.lower(): str(v) for k, v in parsed.items()}
        _, sep, body = raw.partition(b"\r\n\r\n")
        if not sep:
            _, sep, body = raw.partition(b"\n\n")
        self.body = body

    @property
    def subject(self) -> str:
        return self.headers.get("subject", "")

    @property
    def sender(self) -> str:
        return self.headers.get("from", "")

    def getHeaders(self, negate: bool, *names: Any) -> dict[str, str]:
        wanted = {n.decode() if isinstance(n, bytes) else n for n in names}
        wanted = {n.lower() for n in wanted}
        return {k: v for k, v in self.headers.items() if (k in wanted) != negate}

    def getBodyFile(self) -> BytesIO:
        return BytesIO(self.body)

    def getSize(self) -> int:
        return len(self.raw)

    def getInternalDate(self) -> str:
        return self.date

    def getUID(self) -> int:
        return self.uid

    def getFlags(self) -> list[str]:
        return list(self.flags)

    def isMultipart(self) -> bool:
        return False

    def getSubPart(self, part: int) -> Any:
        raise IndexError(part)


@implementer(imap4.IMailboxInfo, imap4.IMailbox, imap4.ISearchableMailbox)
class MemoryMailbox:
    """An in-memory mailbox whose listeners (selected connections) get EXISTS/EXPUNGE."""

    _validity = itertools.count(int(time.time()))
    #: LIST attributes (RFC 6154 special use: ``\\Junk``), see MemoryAccount.add_folder
    attributes: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.messages: list[MemoryMessage] = []
        self.listeners: list[Any] = []
        self.uid_validity = next(self._validity)
        self.uid_next = 1
        self._expunger: Any = None

    # IMailboxInfo
    def getFlags(self) -> list[str]:
        return ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"]

    def getHierarchicalDelimiter(self) -> str:
        return "/"

    # IMailbox
    def getUIDValidity(self) -> int:
        return self.uid_validity

    def getUIDNext(self) -> int:
        return self.uid_next

    def getUID(self, message: int) -> int:
        return self.messages[message - 1].uid

    def getMessageCount(self) -> int:
        return len(self.messages)

    def getRecentCount(self) -> int:
        return 0

    def getUnseenCount(self) -> int:
        return sum(1 for m in self.messages if "\\Seen" not in m.flags)

    def isWriteable(self) -> bool:
        return True

    def destroy(self) -> None:
        self.messages.clear()

    def requestStatus(self, names: Iterable[str]) -> dict[str, int]:
        values = {"MESSAGES": self.getMessageCount(), "RECENT": 0,
                  "UIDNEXT": self.uid_next, "UIDVALIDITY": self.uid_validity,
                  "UNSEEN": self.getUnseenCount()}
        return {n: values[n] for n in names if n in values}

    def addListener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def removeListener(self, listener: Any) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def add(self, raw: bytes, flags: Iterable[str] = ()) -> int:
        """Store a message, tell listeners ``* N EXISTS``; returns its UID."""
        uid = self.uid_next
        self.uid_next += 1
        self.messages.append(MemoryMessage(raw, uid, flags))
        for listener in list(self.listeners):
            listener.newMessages(len(self.messages), None)
        return uid

    def addMessage(self, message: Any, flags: Iterable[str], date: Any = None) -> Any:
        raw = message.read() if hasattr(message, "read") else bytes(message)
        self.add(raw, [f.decode() if isinstance(f, bytes) else f for f in flags])
        return defer.succeed(None)

    def remove_uids(self, uids: Iterable[int]) -> list[int]:
        """Remove messages by UID; tell listeners (except an EXPUNGE's issuer, which
        Twisted answers itself) ``* N EXPUNGE``. Returns the sequence numbers sent, in
        sending order (descending, so each number is valid when sent)."""
        doomed = set(uids)
        seqs = [i + 1 for i, m in enumerate(self.messages) if m.uid in doomed]
        seqs.sort(reverse=True)
        for seq in seqs:
            del self.messages[seq - 1]
        for listener in list(self.listeners):
            if listener is self._expunger:
                continue
            for seq in seqs:
                listener.sendUntaggedResponse(b"%d EXPUNGE" % seq, isAsync=True)
        return seqs

    def expunge(self) -> list[int]:
        return self.remove_uids([m.uid for m in self.messages if "\\Deleted" in m.flags])

    def _select(self, messages: imap4.MessageSet, uid: bool) -> list[tuple[int, MemoryMessage]]:
        if not self.messages:
            return []
        if uid:
            messages.last = self.messages[-1].uid
            return [(i + 1, m) for i, m in enumerate(self.messages) if m.uid in messages]
        messages.last = len(self.messages)
        return [(n, self.messages[n - 1]) for n in messages if 1 <= n <= len(self.messages)]

    def fetch(self, messages: imap4.MessageSet, uid: bool) -> list[tuple[int, MemoryMessage]]:
        return self._select(messages, uid)

    def store(self, messages: imap4.MessageSet, flags: list[str], mode: int,
              uid: bool) -> dict[int, list[str]]:
        result = {}
        for seq, msg in self._select(messages, uid):
            if mode == 1:
                msg.flags.extend(f for f in flags if f not in msg.flags)
            elif mode == -1:
                msg.flags = [f for f in msg.flags if f not in flags]
            else:
                msg.flags = list(flags)
            result[seq] = list(msg.flags)
        return result

    def search(self, query: list[Any], uid: bool) -> list[int]:
        """Only ``ALL`` (and anything else is treated as ALL)."""
        return [m.uid if uid else i + 1 for i, m in enumerate(self.messages)]


class MemoryAccount(imap4.MemoryAccount):
    """An IMAP account whose mailboxes are :class:`MemoryMailbox` es."""

    def _emptyMailbox(self, name: str, id: int) -> MemoryMailbox:
        return MemoryMailbox()

    def add_folder(self, name: str, attributes: Iterable[str] = ()) -> MemoryMailbox:
        """A mailbox listed as ``name`` (Twisted's account keeps names upper case) with
        LIST attributes such as ``\\Junk`` (RFC 6154)."""
        self.addMailbox(name)
        box = self.select(name)
        box.attributes = tuple(attributes)
        self.__dict__.setdefault("display", {})[name.upper()] = name
        return box

    def listMailboxes(self, ref: Any, wildcard: Any) -> list[tuple[str, Any]]:
        display = self.__dict__.get("display", {})
        wildcard = wildcard.upper() if isinstance(wildcard, str) else wildcard
        return [(display.get(name, name), box)
                for name, box in super().listMailboxes(ref, wildcard)]
