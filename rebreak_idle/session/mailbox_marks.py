"""What the backend has scanned of each mailbox, to tell after a (re)connect whether a
``connected`` scan is needed (CONTRACT §5).

A :class:`MailboxMark` is a small frozen value: UIDVALIDITY, UIDNEXT (None when the server
told none) and the EXISTS count. With a UIDNEXT, the mark compares by UIDVALIDITY and
UIDNEXT; without one, by UIDVALIDITY and the count — but a count cannot tell "one deleted
and one delivered" from "nothing happened", so :meth:`MailboxMark.needs_scan` treats a
count-only mark (or one without UIDVALIDITY) as always in doubt: such a connect scans.

:class:`MailboxMemory` is the daemon's one table of marks, keyed by
``(account id, mailbox)``: ``"INBOX"`` and the extra folders (:mod:`rebreak_idle.session.folders`).
It holds only *acknowledged* marks:
a session remembers a mark once the backend has answered 2xx to a scan that was sent
after the session saw that mark (see :meth:`rebreak_idle.session.session.MailboxSession`), so
a mark never claims more than the backend has scanned. The memory is loaded from
``rebreak_idle.mailbox_state`` (:mod:`rebreak_idle.db.marks`) for each account before its
first session starts, and every :meth:`MailboxMemory.remember` queues a batched write
there, so that the marks survive restarts, crashes and replica takeovers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["INBOX", "MailboxMark", "MailboxMemory", "MarkWriter", "status_mark"]

#: The mailbox every session watches (issue: other folders get rows of their own).
INBOX = "INBOX"

#: ``writer(account_id, mailbox, mark)``: queue a write of an acknowledged mark.
MarkWriter = Callable[[str, str, "MailboxMark"], None]


@dataclass(frozen=True, slots=True)
class MailboxMark:
    uidvalidity: int | None
    uidnext: int | None
    exists: int

    @classmethod
    def from_select(cls, info: Mapping[str, Any]) -> MailboxMark:
        """The mark of a SELECT result (``IdleClient.select()``'s dict)."""
        return cls(info.get("UIDVALIDITY"), info.get("UIDNEXT"),
                   int(info.get("EXISTS") or 0))

    @property
    def count_only(self) -> bool:
        """True when the mark has no UIDNEXT (or no UIDVALIDITY): only a count."""
        return self.uidnext is None or self.uidvalidity is None

    def changed_since(self, previous: MailboxMark | None) -> bool:
        """Whether the numbers differ from ``previous`` (None: never seen)."""
        if previous is None or previous.uidvalidity != self.uidvalidity:
            return True
        if self.uidnext is not None or previous.uidnext is not None:
            return previous.uidnext != self.uidnext
        return previous.exists != self.exists

    def needs_scan(self, stored: MailboxMark | None) -> bool:
        """Whether a connect that sees this mark must ask for a ``connected`` scan, given
        the acknowledged ``stored`` mark: when it changed, and whenever either mark is
        count-only (an equal count proves nothing: never a miss)."""
        return (stored is None or self.count_only or stored.count_only
                or self.changed_since(stored))

    def after_new_mail(self, previous_count: int, count: int) -> MailboxMark:
        """The mark once ``* count EXISTS`` announced new messages (count above
        ``previous_count``): they took UIDs from UIDNEXT on, so the expected UIDNEXT moves
        with them. The guess is never above the server's UIDNEXT (each new message takes a
        distinct UID at or above the old UIDNEXT): a wrong guess costs a repeated scan at
        the next connect, never a missed one."""
        uidnext = self.uidnext
        if isinstance(uidnext, int):
            uidnext += count - previous_count
        return MailboxMark(self.uidvalidity, uidnext, count)

    def after_expunge(self) -> MailboxMark:
        """The mark once ``* n EXPUNGE`` removed a message (the count goes down)."""
        return MailboxMark(self.uidvalidity, self.uidnext, max(0, self.exists - 1))

    def with_uidnext(self, uidnext: int | None) -> MailboxMark:
        """The mark with the UIDNEXT learned another way (``STATUS``)."""
        return MailboxMark(self.uidvalidity, uidnext, self.exists)

    def with_count(self, exists: int) -> MailboxMark:
        return MailboxMark(self.uidvalidity, self.uidnext, exists)


async def status_mark(client: Any, mark: MailboxMark, mailbox: str = INBOX) -> MailboxMark:
    """``mark`` (a SELECT's, without UIDNEXT) with UIDNEXT *and* the count taken from one
    ``STATUS mailbox (UIDNEXT MESSAGES)`` answer, for a server whose SELECT told no
    UIDNEXT (Courier; RFC 3501 §6.3.10 allows STATUS on the selected mailbox). Both from
    one answer: a message delivered between the SELECT and the STATUS is in both numbers
    (a count from SELECT beside a UIDNEXT from STATUS made the mark one ahead once its
    EXISTS came, and the next delivery while disconnected looked like no change).
    The mark stays count-only when the server refuses STATUS or leaves UIDNEXT out (every
    connect scans). Other failures (timeout, connection lost) propagate."""
    from ..imap import CommandFailed

    try:
        answer = await client.status(mailbox, ("UIDNEXT", "MESSAGES"))
    except CommandFailed:
        return mark
    uidnext = answer.get("UIDNEXT") or None
    if uidnext is None:
        return mark
    return MailboxMark(mark.uidvalidity, uidnext, answer.get("MESSAGES", mark.exists))


class MailboxMemory:
    """``(account id, mailbox)`` → the last acknowledged :class:`MailboxMark`.

    ``writer`` (the store's ``record_mark``) gets every remembered mark, to persist it;
    :meth:`load` fills in what the database holds, once per account (at start, and when
    this replica takes the account over after :meth:`forget`)."""

    __slots__ = ("_folders", "_loaded", "_marks", "_writer")

    def __init__(self, writer: MarkWriter | None = None) -> None:
        self._marks: dict[tuple[str, str], MailboxMark] = {}
        self._loaded: set[str] = set()
        self._writer = writer
        #: account id → its mailboxes other than INBOX (extra folders), for forget()
        self._folders: dict[str, set[str]] = {}

    def get(self, account_id: str, mailbox: str = INBOX) -> MailboxMark | None:
        return self._marks.get((account_id, mailbox))

    def remember(self, account_id: str, mark: MailboxMark, mailbox: str = INBOX) -> None:
        """Store an acknowledged mark (and queue its write, when a writer is set)."""
        key = (account_id, mailbox)
        if self._marks.get(key) == mark:
            return
        self._marks[key] = mark
        if mailbox != INBOX:
            self._folders.setdefault(account_id, set()).add(mailbox)
        if self._writer is not None:
            self._writer(account_id, mailbox, mark)

    def forget(self, account_id: str, mailboxes: Iterable[str] = (INBOX,)) -> None:
        """Drop an account no longer watched here: its marks, and that they were loaded
        (a later takeover reads what another replica stored meanwhile). The marks of
        its extra folders go with INBOX's."""
        for mailbox in (*mailboxes, *self._folders.pop(account_id, ())):
            self._marks.pop((account_id, mailbox), None)
        self._loaded.discard(account_id)

    def unloaded(self, account_ids: Iterable[str]) -> list[str]:
        """The ids among ``account_ids`` whose stored marks were not loaded yet."""
        loaded = self._loaded
        return [a for a in account_ids if a not in loaded]

    def load(self, account_ids: Iterable[str],
             marks: Mapping[tuple[str, str], MailboxMark]) -> None:
        """The database's marks of ``account_ids`` (read just now): they replace what is
        held for those accounts; the accounts count as loaded from now on."""
        ids = set(account_ids)
        for (account_id, mailbox), mark in marks.items():
            if account_id in ids:
                self._marks[(account_id, mailbox)] = mark
                if mailbox != INBOX:
                    self._folders.setdefault(account_id, set()).add(mailbox)
        self._loaded |= ids

    def __len__(self) -> int:
        return len(self._marks)
