"""Extra folders watched besides INBOX (``REBREAK_EXTRA_FOLDERS``, off by default): the
Junk folder found by its RFC 6154 special-use attribute, a provider folder such as web.de's
``Unbekannt`` found by name (docs/folders.md).

* the setting, ``\\Junk,Unbekannt`` (an entry starting with a backslash is a special-use
  attribute, any other a name as the user sees it), is read by
  :func:`rebreak_idle.config.parse_folders`;
* :func:`resolve` finds them on one connection after SELECT: attributes with
  ``LIST (SPECIAL-USE) "" "*"`` when the server advertises SPECIAL-USE, else with the
  attributes of ``LIST "" "*"`` (which then finds the names too); names otherwise with
  ``LIST "" <name>`` (modified UTF-7). A folder that is not there is skipped without an
  error;
* :class:`FolderWatch` (one per connection, lean) holds the folders found, their last
  STATUS marks, and the marks of scans asked for and not yet answered. The session
  writes each folder's ``STATUS (UIDNEXT UIDVALIDITY MESSAGES)`` into the heartbeat's
  one write (DONE, NOOP, STATUS..., IDLE) and asks :meth:`FolderWatch.changes` which
  folders changed against the acknowledged marks of :class:`~rebreak_idle.session.mailbox_marks.
  MailboxMemory` (keyed ``(account id, folder name)``, persisted like INBOX's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from ..config import MAX_FOLDERS
from ..imap.commands import Command
from ..imap.listing import ListEntry, decode_mutf7, encode_mutf7, quote_mailbox
from .mailbox_marks import MailboxMark, MailboxMemory

__all__ = ["STATUS_ITEMS", "FolderWatch", "decode_mutf7", "mark_of", "resolve"]

log = Logger(namespace="rebreak_idle.folders")

STATUS_ITEMS = (b"UIDNEXT", b"UIDVALIDITY", b"MESSAGES")



def _wanted(specs: Iterable[str]) -> tuple[list[str], dict[bytes, str]]:
    attributes = [s for s in specs if s.startswith("\\")]
    names = {encode_mutf7(s): s for s in specs if not s.startswith("\\")}
    return attributes, names


async def resolve(client: Any, specs: tuple[str, ...],
                  refused: list[ListEntry] | None = None) -> list[ListEntry]:
    """The listed folders matching ``specs``, in the order of ``specs``, each once (INBOX
    and unselectable folders left out); missing ones are skipped. A matching folder
    whose name has a control character is not watched: it goes to ``refused`` (for the
    session's log line)."""
    attributes, names = _wanted(specs)
    found: dict[str, ListEntry] = {}

    def keep(entry: ListEntry) -> bool:
        if entry.raw.upper() == b"INBOX" or entry.has("\\Noselect") \
                or entry.has("\\NonExistent") or quote_mailbox(entry.raw) is None:
            return False
        hit = [a for a in attributes if entry.has(a)]
        if entry.raw in names:
            hit.append(names[entry.raw])
        if hit and entry.control_characters:
            if refused is not None and entry not in refused:
                refused.append(entry)
            return False
        for spec in hit:
            found.setdefault(spec, entry)
        return bool(hit)

    limit = 4 * MAX_FOLDERS
    hints = tuple(a.lower().encode("ascii") for a in attributes) + tuple(
        raw.lower() for raw in names)
    listed_all = False
    if attributes:
        # RFC 6154 §5.1: LIST (SPECIAL-USE) lists only the special-use mailboxes (a
        # short answer even on a server with thousands of folders); without it the
        # attributes come with the plain LIST, which then finds the names as well
        special = b"SPECIAL-USE" in client.capabilities
        await client.list_mailboxes(b"*", special_use=special, keep=keep, limit=limit,
                                    hints=hints)
        listed_all = not special
    for raw, spec in names.items():
        if spec not in found and not listed_all:
            await client.list_mailboxes(raw, keep=keep, limit=limit)
    entries: list[ListEntry] = []
    for spec in specs:
        entry = found.get(spec)
        if entry is not None and entry not in entries:
            entries.append(entry)
    return entries


def mark_of(answer: dict[str, int]) -> MailboxMark:
    return MailboxMark(answer.get("UIDVALIDITY"), answer.get("UIDNEXT") or None,
                       answer.get("MESSAGES", 0))


def _uidvalidity_only(mark: MailboxMark, stored: MailboxMark | None) -> bool:
    """Whether ``mark`` differs from ``stored`` in UIDVALIDITY alone (same UIDNEXT and
    count)."""
    return (stored is not None and mark.uidnext is not None
            and mark.uidvalidity != stored.uidvalidity
            and mark.uidnext == stored.uidnext and mark.exists == stored.exists)


class FolderWatch:
    """One connection's extra folders: the entries, their marks (last STATUS) and the
    ones before (``before``), the marks whose scan was asked for and is not answered yet.

    Two rules keep a folder from asking for scans it does not need:

    * an empty folder (MESSAGES 0) has nothing to scan;
    * a change of UIDVALIDITY alone (same UIDNEXT and count) counts only once two STATUS
      answers in a row agree on the new value. Courier-IMAP answers a new UIDVALIDITY to
      every STATUS of a folder no client has opened yet (every heartbeat sent a scan per
      account); a real change (a folder made anew) is seen one STATUS later. After a
      connect, such a change is asked about a second time at once."""

    __slots__ = ("before", "entries", "marks", "names", "pending")

    def __init__(self, entries: list[ListEntry]) -> None:
        self.entries = entries
        self.names = [e.name for e in entries]
        self.marks: dict[str, MailboxMark] = {}
        self.before: dict[str, MailboxMark] = {}
        self.pending: dict[str, MailboxMark] = {}

    async def check(self, client: Any, memory: MailboxMemory | None = None,
                    account_id: str = "") -> None:
        """STATUS of every folder now (after a connect); a refused one is left out. A
        folder whose answer differs from its acknowledged mark (in ``memory``) in
        UIDVALIDITY alone is asked a second time (see the class docstring)."""
        for entry, name in zip(self.entries, self.names, strict=True):
            try:
                mark = mark_of(await client.status(entry.raw, STATUS_ITEMS))
                stored = memory.get(account_id, name) if memory is not None else None
                if _uidvalidity_only(mark, stored):
                    self._answered(await client.status(entry.raw, STATUS_ITEMS), name)
                    self.before[name] = mark
                    continue
            except Exception as e:
                if not _refused(e):
                    raise
                continue
            self.marks[name] = mark

    def status_commands(self, client: Any, timeout: float,
                        checked: Callable[[], None]) -> tuple[Command, ...]:
        """The STATUS commands for the heartbeat's write; ``checked()`` runs once all are
        answered (a refused one keeps its old mark; a lost connection is the NOOP's)."""
        commands = []
        for name, entry in zip(self.names, self.entries, strict=True):
            cmd = client.status_command(entry.raw, STATUS_ITEMS, timeout)
            if cmd is None:
                continue
            cmd.deferred.addCallback(self._answered, name)
            commands.append(cmd)
        if commands:
            all_answered = defer.DeferredList([c.deferred for c in commands],
                                              consumeErrors=True)
            all_answered.addCallback(lambda _: checked())
        return tuple(commands)

    def _answered(self, answer: dict[str, int], name: str) -> None:
        previous = self.marks.get(name)
        if previous is not None:
            self.before[name] = previous
        self.marks[name] = mark_of(answer)

    def changes(self, memory: MailboxMemory, account_id: str, connecting: bool
                ) -> list[tuple[str, MailboxMark]]:
        """Folders to scan: after a connect those whose mark needs a scan against the
        acknowledged one (as INBOX, CONTRACT §5), at a heartbeat those whose numbers
        changed; never one whose scan of the same mark is still unanswered, never an
        empty one, never for a UIDVALIDITY that two answers in a row do not agree on."""
        out = []
        for name in self.names:
            mark = self.marks.get(name)
            if mark is None or mark.exists == 0 or self.pending.get(name) == mark:
                continue
            stored = memory.get(account_id, name)
            if _uidvalidity_only(mark, stored):
                before = self.before.get(name)
                if before is None or before.uidvalidity != mark.uidvalidity:
                    continue  # not confirmed (yet): Courier's unopened folder
            if mark.needs_scan(stored) if connecting else mark.changed_since(stored):
                self.pending[name] = mark
                out.append((name, mark))
        return out

    def settled(self, name: str, mark: MailboxMark) -> None:
        if self.pending.get(name) == mark:
            del self.pending[name]


def _refused(error: Exception) -> bool:
    from ..imap import CommandFailed

    return isinstance(error, CommandFailed)

