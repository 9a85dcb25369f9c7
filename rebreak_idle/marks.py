"""What the daemon last saw of each mailbox, to tell after a (re)connect whether it may
have changed unseen (CONTRACT §5: then a ``connected`` scan is triggered).

A :class:`MailboxMark` is a small frozen value: UIDVALIDITY, UIDNEXT (None when the server
sends none) and the EXISTS count. With a UIDNEXT, the mark compares by UIDVALIDITY and
UIDNEXT; without one, by UIDVALIDITY and the count. :class:`MailboxMemory` holds one mark
per account; the daemon owns one and gives it to every session, so that a session
restarted by the supervisor does not rescan an unchanged mailbox.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MailboxMark", "MailboxMemory"]


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

    def changed_since(self, previous: MailboxMark | None) -> bool:
        """Whether the mailbox may have changed since ``previous`` (None: never seen)."""
        if previous is None or previous.uidvalidity != self.uidvalidity:
            return True
        if self.uidnext is not None or previous.uidnext is not None:
            return previous.uidnext != self.uidnext
        return previous.exists != self.exists

    def after_new_mail(self, previous_count: int, count: int) -> MailboxMark:
        """The mark once ``* count EXISTS`` announced new messages (count above
        ``previous_count``): they took UIDs from UIDNEXT on, so the expected UIDNEXT moves
        with them and a reconnect does not rescan what was already announced."""
        uidnext = self.uidnext
        if isinstance(uidnext, int):
            uidnext += count - previous_count
        return MailboxMark(self.uidvalidity, uidnext, count)


class MailboxMemory:
    """account id → its last :class:`MailboxMark` (this process only, for now)."""

    __slots__ = ("_marks",)

    def __init__(self) -> None:
        self._marks: dict[str, MailboxMark] = {}

    def get(self, account_id: str) -> MailboxMark | None:
        return self._marks.get(account_id)

    def remember(self, account_id: str, mark: MailboxMark) -> None:
        self._marks[account_id] = mark

    def forget(self, account_id: str) -> None:
        self._marks.pop(account_id, None)

    def __len__(self) -> int:
        return len(self._marks)
