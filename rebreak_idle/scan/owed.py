"""The owed scans: every mailbox whose newest seen mark is not yet covered by an
acknowledged (2xx) scan.

One entry per ``(account id, mailbox)`` (INBOX and each watched extra folder), whatever
the number of requests: a request for a mailbox that already owes a scan replaces the
waiting one (the latest ``exists`` and reason win; the replaced request's waiters are told
False at once: the later request's answer covers its mark, and the session remembers the
later mark then). So the book holds O(mailboxes) entries, never a queue of events, however
long the backend is down and however much mail arrives.

An entry lives from the first request that is not covered until a 2xx answers a scan sent
after the latest request: while its scan is in flight it stays in the book (``job`` is
None then); a request arriving meanwhile waits as ``job`` for one more scan. A scan that
is not acknowledged goes back into its entry (unless a newer request is waiting there).

:class:`~rebreak_idle.scan.trigger.ScanTrigger` decides when to send; this module only keeps the
book: which mailbox owes since when, and which one is the oldest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..session.mailbox_marks import INBOX
from .request import Job

__all__ = ["Owed", "OwedScans"]


@dataclass(slots=True)
class Owed:
    """One mailbox's owed scan."""

    #: reactor time of the oldest request of the mailbox not covered by a 2xx answer
    since: float
    #: the latest request, not sent yet (None while the scan covering it is in flight)
    job: Job | None
    #: reactor time ``job`` started waiting (the entry's ``since`` once the scan in
    #: flight is acknowledged)
    waiting_since: float


def _mailbox(job: Job) -> str:
    return INBOX if job.mailbox is None else job.mailbox


class OwedScans:
    """``account id`` → ``mailbox`` → :class:`Owed`."""

    __slots__ = ("_accounts", "_count")

    def __init__(self) -> None:
        self._accounts: dict[str, dict[str, Owed]] = {}
        self._count = 0

    def __len__(self) -> int:
        """The number of mailboxes that owe a scan (in flight included)."""
        return self._count

    def owe(self, job: Job, now: float) -> None:
        """A request: the mailbox owes a scan sent after ``now``."""
        mailboxes = self._accounts.setdefault(job.account.id, {})
        entry = mailboxes.get(_mailbox(job))
        if entry is None:
            mailboxes[_mailbox(job)] = Owed(now, job, now)
            self._count += 1
        elif entry.job is None:
            entry.job, entry.waiting_since = job, now
        else:
            entry.job.settle(False)  # covered by the answer to ``job``
            entry.job = job

    def take(self, account_id: str) -> Job | None:
        """The account's longest waiting request, now in flight; None when none waits (a
        busy INBOX does not starve a folder: the folder's request waited longer)."""
        entry = self._oldest_waiting(account_id)
        if entry is None:
            return None
        job, entry.job = entry.job, None
        return job

    def acknowledged(self, job: Job) -> None:
        """A 2xx answered ``job`` (taken by :meth:`take`): its mailbox is covered, unless a
        later request waits."""
        entry = self._entry(job)
        if entry is None:
            return
        if entry.job is None:
            self._remove(job.account.id, _mailbox(job))
        else:
            entry.since = entry.waiting_since

    def not_acknowledged(self, job: Job) -> None:
        """``job`` went out (or was about to) and no 2xx answered it: it is owed again,
        unless a later request of the mailbox waits already (that one covers it)."""
        entry = self._entry(job)
        if entry is None:  # dropped meanwhile (the account was discarded)
            job.settle(False)
        elif entry.job is None:
            entry.job, entry.waiting_since = job, entry.since
        else:
            job.settle(False)

    def drop(self, account_id: str) -> list[Job]:
        """Forget an account: the requests that were waiting (to tell their waiters);
        a scan in flight finds no entry when it ends."""
        mailboxes = self._accounts.pop(account_id, {})
        self._count -= len(mailboxes)
        return [e.job for e in mailboxes.values() if e.job is not None]

    def owes(self, account_id: str) -> bool:
        """Whether the account has a request waiting to be sent."""
        return self._oldest_waiting(account_id) is not None

    def owed_since(self, account_id: str) -> float | None:
        """The oldest ``since`` of the account's mailboxes; None when it owes nothing."""
        mailboxes = self._accounts.get(account_id)
        if not mailboxes:
            return None
        return min(e.since for e in mailboxes.values())

    def oldest_since(self) -> float | None:
        """The oldest ``since`` of all (for the age gauge); None when nothing is owed."""
        return min((e.since for m in self._accounts.values() for e in m.values()),
                   default=None)

    def waiting_accounts(self) -> list[str]:
        """The accounts with a request waiting to be sent, the longest waiting first."""
        ages: list[tuple[float, str]] = []
        for account_id, mailboxes in self._accounts.items():
            waiting = [e.waiting_since for e in mailboxes.values() if e.job is not None]
            if waiting:
                ages.append((min(waiting), account_id))
        ages.sort()
        return [account_id for _, account_id in ages]

    def __iter__(self) -> Iterator[tuple[str, str, Owed]]:
        for account_id, mailboxes in self._accounts.items():
            for mailbox, entry in mailboxes.items():
                yield account_id, mailbox, entry

    def _entry(self, job: Job) -> Owed | None:
        return self._accounts.get(job.account.id, {}).get(_mailbox(job))

    def _oldest_waiting(self, account_id: str) -> Owed | None:
        waiting = [e for e in self._accounts.get(account_id, {}).values()
                   if e.job is not None]
        return min(waiting, key=lambda e: e.waiting_since, default=None)

    def _remove(self, account_id: str, mailbox: str) -> None:
        mailboxes = self._accounts[account_id]
        del mailboxes[mailbox]
        self._count -= 1
        if not mailboxes:
            del self._accounts[account_id]
