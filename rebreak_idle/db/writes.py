"""The bounded buffers of status writes (CONTRACT §3 columns), keyed by account.

The last value per account wins; when a buffer is full the oldest entry is dropped and
counted. Entries taken for a write that failed are put back unless a newer value for the
same account arrived meanwhile.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

__all__ = ["WriteBuffer"]


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
