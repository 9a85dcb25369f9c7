"""The bounded buffers of status writes (CONTRACT §3 columns), keyed by account.

The last value per account wins; when a buffer is full the oldest entry is dropped and
counted. Entries taken for a write that failed are put back unless a newer value for the
same account arrived meanwhile. A row the database refuses (:func:`refused`: a NUL in a
folder name, an invalid value) is not put back: :func:`write_isolating` splits the batch
until that row is alone, drops it with one log line, and writes the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import psycopg2
from twisted.internet.defer import Deferred

__all__ = ["WriteBuffer", "refused", "write_isolating"]


class WriteBuffer:
    """An insertion-ordered ``account_id → value`` map with a size limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0
        self._entries: dict[Hashable, Any] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value`` for ``key`` as the newest entry; drop the oldest beyond the limit."""
        self._entries.pop(key, None)
        self._entries[key] = value
        while len(self._entries) > self.limit:
            del self._entries[next(iter(self._entries))]
            self.dropped += 1

    def take(self) -> dict[Hashable, Any]:
        """Everything buffered, oldest first; the buffer is empty afterwards."""
        taken, self._entries = self._entries, {}
        return taken

    def restore(self, taken: dict[Hashable, Any]) -> None:
        """Put back entries of a failed write (as the oldest), unless superseded."""
        merged = {k: v for k, v in taken.items() if k not in self._entries}
        merged.update(self._entries)
        self._entries = {}
        for key, value in merged.items():
            self.put(key, value)


def refused(error: BaseException) -> bool:
    """Whether ``error`` says the database (or the driver, before sending) refused the
    *data* of a statement: a value it cannot hold (a NUL in text, an invalid uuid, a
    number out of range, a broken constraint). Such a statement fails every time, so its
    rows are not kept for the next flush; a lost connection or a timeout is not a refusal
    (the rows wait)."""
    if isinstance(error, ValueError):  # psycopg2 cannot send the value (NUL in text)
        return True
    if isinstance(error, psycopg2.DataError | psycopg2.IntegrityError):
        return True
    code = getattr(error, "pgcode", None)
    return isinstance(code, str) and code[:2] in ("22", "23")


Refused = Callable[[Hashable, Any, BaseException], None]


async def write_isolating(write: Callable[[dict[Hashable, Any]], Deferred],
                          entries: dict[Hashable, Any], on_refused: Refused
                          ) -> tuple[dict[Hashable, Any], Exception | None]:
    """Write ``entries`` with ``write(entries)`` (one statement); when the database refuses
    the data (:func:`refused`), write each half again, down to the one entry it refuses,
    which is dropped with ``on_refused(key, value, error)``: one bad row costs about
    2·log2(n) statements, and the rest of the batch is written.

    Returns the entries not written because of another failure (a lost connection: keep
    them for the next flush) and that failure, or ``({}, None)``."""
    parts = [entries]
    left: dict[Hashable, Any] = {}
    failure: Exception | None = None
    while parts:
        part = parts.pop()
        if failure is not None:
            left.update(part)
            continue
        try:
            await write(part)
        except Exception as e:
            if not refused(e):
                failure = e
                left.update(part)
            elif len(part) == 1:
                ((key, value),) = part.items()
                on_refused(key, value, e)
            else:
                items = list(part.items())
                middle = len(items) // 2
                parts += [dict(items[middle:]), dict(items[:middle])]
    return left, failure
