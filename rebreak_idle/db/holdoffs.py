"""Credential hold-offs that survive restarts: ``rebreak_idle.account_holdoff``.

A session whose credentials were rejected saves ``(strikes, until, secret tag)``; a session
that logs in deletes its row. At start-up the daemon reads the table once
(:meth:`HoldoffStore.get` waits for that one query); a session whose row is still running
and whose secret is unchanged waits out the rest of the hold-off instead of trying the
known-bad secret again. The secret tag is an HMAC-SHA256 of the secret under the daemon's
key (truncated): it tells "same secret" without storing anything that reveals it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from ..failures import describe
from ..interfaces import Holdoff, IHoldoffRecorder

__all__ = ["HOLDOFFS_SQL", "Holdoff", "HoldoffStore", "secret_tag"]

log = Logger(namespace="rebreak_idle.holdoffs")

#: The table (also in db/sql/migration.sql, which creates it).
HOLDOFFS_SQL = """
CREATE SCHEMA IF NOT EXISTS rebreak_idle;
CREATE TABLE IF NOT EXISTS rebreak_idle.account_holdoff (
    connection_id uuid PRIMARY KEY,
    strikes       integer NOT NULL,
    until         timestamptz NOT NULL,
    secret_tag    text NOT NULL
);
"""
_LOAD_SQL = ("SELECT connection_id::text, strikes, extract(epoch FROM until)::float8, "
             "secret_tag FROM rebreak_idle.account_holdoff WHERE until > now()")
_SAVE_SQL = ("INSERT INTO rebreak_idle.account_holdoff AS h VALUES "
             "(%s::uuid, %s, to_timestamp(%s), %s) ON CONFLICT (connection_id) DO UPDATE "
             "SET strikes = excluded.strikes, until = excluded.until, "
             "secret_tag = excluded.secret_tag")
_CLEAR_SQL = "DELETE FROM rebreak_idle.account_holdoff WHERE connection_id = %s::uuid"


def secret_tag(key: bytes, secret: str) -> str:
    """A short keyed tag of ``secret`` (equal tags: the same secret)."""
    return hmac.new(key, secret.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


@implementer(IHoldoffRecorder)
class HoldoffStore:
    """An :class:`~rebreak_idle.interfaces.IHoldoffRecorder` in the table;
    ``run_query(sql, params)`` / ``run_operation(sql, params)``: the daemon's pool."""

    def __init__(self, run_query: Callable[..., Deferred],
                 run_operation: Callable[..., Deferred], key: bytes) -> None:
        self._query = run_query
        self._operation = run_operation
        self._key = key
        self._loaded: dict[str, Holdoff] | None = None
        self._loading: Deferred | None = None
        self._waiters: list[tuple[str, Deferred]] = []

    def tag(self, secret: str) -> str:
        return secret_tag(self._key, secret)

    def get(self, account_id: str) -> Deferred:
        """Fire with the account's :class:`Holdoff` or None (once the table is read)."""
        if self._loaded is not None:
            return succeed(self._loaded.get(account_id))
        d: Deferred = Deferred()
        self._waiters.append((account_id, d))
        if self._loading is None:
            # the table comes with the migration (db/sql/migration.sql)
            self._loading = self._query(_LOAD_SQL)
            self._loading.addCallbacks(self._read, self._unreadable)
        return d

    def save(self, account_id: str, holdoff: Holdoff) -> None:
        if self._loaded is not None:
            self._loaded[account_id] = holdoff
        self._write(_SAVE_SQL, (account_id, holdoff.strikes, holdoff.until, holdoff.tag))

    def clear(self, account_id: str) -> None:
        """Forget the account's hold-off (a successful login); no query when none is known."""
        if self._loaded is not None and self._loaded.pop(account_id, None) is not None:
            self._write(_CLEAR_SQL, (account_id,))

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        d = self._operation(sql, params)
        d.addErrback(lambda f: log.warn("[idle/db] hold-off write failed: {error}",
                                        error=describe(f)))

    def _read(self, rows: list[tuple[Any, ...]]) -> None:
        loaded: dict[str, Holdoff] = {}
        for account_id, strikes, until, tag in rows:
            if isinstance(strikes, int) and isinstance(until, float) and isinstance(tag, str):
                loaded[str(account_id)] = Holdoff(max(0, min(strikes, 64)), until, tag)
        self._finish(loaded)

    def _unreadable(self, failure: Any) -> None:
        log.warn("[idle/db] hold-offs unreadable, starting without them: {error}",
                 error=describe(failure))
        self._finish({})

    def _finish(self, loaded: dict[str, Holdoff]) -> None:
        self._loaded = loaded
        waiters, self._waiters = self._waiters, []
        for account_id, d in waiters:
            d.callback(loaded.get(account_id))

