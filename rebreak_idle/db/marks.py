"""The marks table ``rebreak_idle.mailbox_state``: one row per ``(connection_id, mailbox)``
holding the last *acknowledged* :class:`~rebreak_idle.session.mailbox_marks.MailboxMark`
(the daemon's own table, created by the migration; nothing is added to the backend's
tables).

- :class:`MarkWrites`: the bounded buffer of marks to write; the store's flush writes them
  every ``flush_interval`` seconds as one ``INSERT ... ON CONFLICT DO UPDATE`` over
  ``unnest`` (like the heartbeats). A failed write keeps them for the next flush; a mark
  the database refuses (a NUL in a folder name) is dropped alone, with one log line. A crash
  (SIGKILL) loses at most the marks of the last interval: one statement is atomic, and a
  lost mark is an older mark, so the next connect repeats a scan rather than skipping one.
- :func:`decode_rows`: rows read back, treated as hostile (a row that is not a sane mark
  is skipped, which costs one scan, never a miss).
- :class:`MarkLoader`: the supervisor's account filter step that loads the marks of the
  accounts about to get a session and not loaded yet (all of them at start; those this
  replica takes over later), in one query, before the sessions start.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from datetime import datetime
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .. import metrics
from ..failures import describe
from ..session.mailbox_marks import MailboxMark, MailboxMemory
from .writes import WriteBuffer, write_isolating

__all__ = ["LOAD_SQL", "UPSERT_SQL", "MarkLoader", "MarkWrites", "decode_rows"]

log = Logger(namespace="rebreak_idle.db.marks")

UPSERT_SQL = (
    "INSERT INTO rebreak_idle.mailbox_state "
    "(connection_id, mailbox, uidvalidity, uidnext, message_count, updated_at) "
    "SELECT * FROM unnest(%s::uuid[], %s::text[], %s::bigint[], %s::bigint[], %s::bigint[], "
    "%s::timestamptz[]) "
    "ON CONFLICT (connection_id, mailbox) DO UPDATE SET uidvalidity = EXCLUDED.uidvalidity, "
    "uidnext = EXCLUDED.uidnext, message_count = EXCLUDED.message_count, "
    "updated_at = EXCLUDED.updated_at"
)
LOAD_SQL = (
    "SELECT connection_id::text, mailbox, uidvalidity, uidnext, message_count "
    "FROM rebreak_idle.mailbox_state WHERE connection_id = ANY(%s::uuid[])"
)

#: RFC 3501 §9: nz-number and number are unsigned 32-bit.
_UINT32 = 0xFFFFFFFF
_MAILBOX_LIMIT = 1000


def _number(value: Any, low: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _UINT32:
        raise ValueError("not an IMAP number")
    return value


def decode_rows(rows: Iterable[Any]) -> dict[tuple[str, str], MailboxMark]:
    """``(id, mailbox, uidvalidity, uidnext, message_count)`` rows → marks; a row that is
    not a sane mark (wrong types, out of range, over-long mailbox name) is left out."""
    marks: dict[tuple[str, str], MailboxMark] = {}
    skipped = 0
    for row in rows:
        try:
            account_id, mailbox, uidvalidity, uidnext, count = row
            if not isinstance(account_id, str) or not isinstance(mailbox, str) \
                    or len(mailbox) > _MAILBOX_LIMIT:
                raise ValueError("bad key")
            mark = MailboxMark(
                None if uidvalidity is None else _number(uidvalidity, 1),
                None if uidnext is None else _number(uidnext, 1),
                _number(count, 0) or 0)
        except (TypeError, ValueError):
            skipped += 1
            continue
        marks[(account_id, mailbox)] = mark
    if skipped:
        log.warn("[idle/db] ignored {n} malformed mailbox mark row(s) (those mailboxes get "
                 "a catch-up scan)", n=skipped)
    return marks


class MarkWrites:
    """Marks waiting to be written (last value per ``(id, mailbox)`` wins; bounded)."""

    def __init__(self, limit: int) -> None:
        self.buffer = WriteBuffer(limit)
        self.in_flight = 0
        self._failing = False

    def __len__(self) -> int:
        return len(self.buffer) + self.in_flight

    def put(self, account_id: str, mailbox: str, mark: MailboxMark, at: datetime) -> None:
        self.buffer.put((account_id, mailbox), (mark, at))

    async def flush(self, run_operation: Callable[[str, tuple], Deferred]) -> None:
        """Write everything buffered in one statement; on a lost connection keep it
        buffered; a mark the database refuses is dropped alone (:func:`write_isolating`)."""
        taken = self.buffer.take()
        if not taken:
            return
        self.in_flight = len(taken)
        try:
            left, error = await write_isolating(
                lambda part: run_operation(UPSERT_SQL, _params(part)), taken, _refused)
        finally:
            self.in_flight = 0
        if error is not None:
            self.buffer.restore(left)
            metrics.DB_WRITE_FAILURES.inc()
            if not self._failing:
                log.warn("[idle/db] writing {n} mailbox mark(s) failed, keeping them for the "
                         "next attempt: {error}", n=len(left), error=describe(error))
            self._failing = True
            return
        if self._failing:
            log.info("[idle/db] mailbox mark writes work again")
            self._failing = False


def _params(part: dict) -> tuple[list, ...]:
    keys, values = list(part), list(part.values())
    return ([k[0] for k in keys], [k[1] for k in keys],
            [m.uidvalidity for m, _ in values], [m.uidnext for m, _ in values],
            [m.exists for m, _ in values], [at for _, at in values])


def _refused(key: Any, value: Any, error: BaseException) -> None:
    account_id, mailbox = key
    metrics.DB_WRITE_FAILURES.inc()
    log.warn("[idle/db] the database refused the mark of mailbox {mailbox} of account "
             "{account_id}; dropped it (that mailbox gets a catch-up scan after a "
             "reconnect): {error}", mailbox=ascii(mailbox)[:200], account_id=account_id,
             error=describe(error))


class MarkLoader:
    """``await loader(rows)`` → ``rows``, once the marks of their accounts not loaded yet
    are in ``memory`` (one query). ``then`` (the lease filter) narrows the rows first, so
    that only the accounts this replica watches are read. When the read fails the rows
    pass anyway: those sessions start without a mark and scan once (never a miss).
    ``owned()`` (the lease keeper's owned set) narrows them again once the marks are
    read: ownership lost or given away while the query ran starts no session from the
    stale list."""

    def __init__(self, memory: MailboxMemory,
                 load: Callable[[list[str]], Deferred],
                 then: Callable[[list[dict]], Deferred] | None = None,
                 owned: Callable[[], Collection[str]] | None = None) -> None:
        self._memory = memory
        self._load = load
        self._then = then
        self._owned = owned

    def __call__(self, rows: list[dict]) -> Deferred:
        return Deferred.fromCoroutine(self._filter(rows))

    async def _filter(self, rows: list[dict]) -> list[dict]:
        if self._then is not None:
            rows = await self._then(rows)
        ids = self._memory.unloaded(str(row["id"]) for row in rows)
        if ids:
            try:
                marks = await self._load(ids)
            except Exception as e:
                log.warn("[idle/db] reading the mailbox marks of {n} account(s) failed "
                         "(they get a catch-up scan): {error}", n=len(ids),
                         error=describe(e))
            else:
                self._memory.load(ids, marks)
        if self._owned is not None:
            owned = self._owned()
            rows = [row for row in rows if str(row["id"]) in owned]
        return rows
