"""Credential hold-offs that survive restarts and takeovers: ``rebreak_idle.account_holdoff``.

A session whose credentials were rejected saves ``(strikes, until, login tag)``; a session
that logs in deletes its row. Every session start reads its account's row
(:meth:`HoldoffStore.get`; the reads of sessions started together go out as one query),
so a restarted process, a restarted session and a replica that takes the account over all
see the same hold-off and strike count. A session whose login is unchanged waits out the
rest of the hold-off instead of trying the known-bad login again; one whose username,
host, port, security, method or secret changed tries at once.

The login tag (kept in the ``secret_tag`` column) is an HMAC-SHA256 of those settings
under a key derived from ``ENCRYPTION_KEY``, truncated: it tells "same login" without
storing anything that reveals the secret, and without the key it cannot be used to guess
a password offline. Rows of the earlier secret-only tag simply do not match (one login is
tried, and its outcome replaces the row).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from ..accounts.account import Account
from ..failures import describe
from ..interfaces import Holdoff, IHoldoffRecorder

__all__ = ["HOLDOFFS_SQL", "Holdoff", "HoldoffStore", "login_tag", "tag_key"]

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
#: The rows of some accounts, with the account's stored error (for /status after a
#: restart or a takeover).
_LOAD_SQL = ("SELECT h.connection_id::text, h.strikes, extract(epoch FROM h.until)::float8, "
             "h.secret_tag, m.last_connect_error, "
             "extract(epoch FROM m.last_connect_error_at)::float8 "
             "FROM rebreak_idle.account_holdoff AS h "
             "LEFT JOIN rebreak.mail_connections AS m ON m.id = h.connection_id "
             "WHERE h.connection_id = ANY(%s::uuid[])")
_SAVE_SQL = ("INSERT INTO rebreak_idle.account_holdoff AS h VALUES "
             "(%s::uuid, %s, to_timestamp(%s), %s) ON CONFLICT (connection_id) DO UPDATE "
             "SET strikes = excluded.strikes, until = excluded.until, "
             "secret_tag = excluded.secret_tag")
_CLEAR_SQL = "DELETE FROM rebreak_idle.account_holdoff WHERE connection_id = %s::uuid"
#: a stored error longer than this is cut for /status
_ERROR_LIMIT = 1000


def tag_key(encryption_key: bytes) -> bytes:
    """The login tags' HMAC key, derived from the daemon's key (never the AES key itself)."""
    return hmac.new(encryption_key, b"rebreak-idle account_holdoff login tag v2",
                    hashlib.sha256).digest()


def login_tag(key: bytes, account: Account) -> str:
    """A short keyed tag of what a login of ``account`` uses: host, port, security,
    username, method and secret (equal tags: the same login)."""
    login = json.dumps([account.host, account.port, account.security, account.username,
                        account.auth_method, account.secret], ensure_ascii=True)
    return hmac.new(key, login.encode("ascii"), hashlib.sha256).hexdigest()[:32]


@implementer(IHoldoffRecorder)
class HoldoffStore:
    """An :class:`~rebreak_idle.interfaces.IHoldoffRecorder` in the table;
    ``run_query(sql, params)`` / ``run_operation(sql, params)``: the daemon's pool;
    ``key``: the daemon's key (``ENCRYPTION_KEY``'s bytes; the tags use a key derived
    from it)."""

    def __init__(self, run_query: Callable[..., Deferred],
                 run_operation: Callable[..., Deferred], key: bytes) -> None:
        self._query = run_query
        self._operation = run_operation
        self._key = tag_key(key)
        #: accounts whose row exists as far as this process knows (read or saved here)
        self._held: set[str] = set()
        self._reading = False
        self._failing = False  # the last read failed (logged once)
        self._waiters: list[tuple[str, Deferred]] = []

    def tag(self, account: Account) -> str:
        return login_tag(self._key, account)

    def get(self, account_id: str) -> Deferred:
        """Fire with the account's :class:`Holdoff` (as the table holds it now) or None;
        never fails. Reads asked for while one runs go out together in the next query."""
        d: Deferred = Deferred()
        self._waiters.append((str(account_id), d))
        if not self._reading:
            self._read_waiting()
        return d

    def save(self, account_id: str, holdoff: Holdoff) -> None:
        self._held.add(str(account_id))
        self._write(_SAVE_SQL, (account_id, holdoff.strikes, holdoff.until, holdoff.tag))

    def clear(self, account_id: str) -> None:
        """Forget the account's hold-off (a successful login); no query when none is known."""
        if str(account_id) in self._held:
            self._held.discard(str(account_id))
            self._write(_CLEAR_SQL, (account_id,))

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        d = self._operation(sql, params)
        d.addErrback(lambda f: log.warn("[idle/db] hold-off write failed: {error}",
                                        error=describe(f)))

    def _read_waiting(self) -> None:
        waiters, self._waiters = self._waiters, []
        if not waiters:
            self._reading = False
            return
        self._reading = True
        ids = sorted({account_id for account_id, _ in waiters})
        d = self._query(_LOAD_SQL, (ids,))
        d.addCallbacks(self._decode, self._unreadable, errbackArgs=(len(ids),))
        d.addCallback(self._answer, waiters)

    def _decode(self, rows: list[tuple[Any, ...]]) -> dict[str, Holdoff]:
        loaded: dict[str, Holdoff] = {}
        for row in rows:
            try:
                account_id, strikes, until, tag, error, error_at = row
            except (TypeError, ValueError):
                continue
            if not (isinstance(strikes, int) and isinstance(until, float)
                    and isinstance(tag, str)):
                continue
            loaded[str(account_id)] = Holdoff(
                max(0, min(strikes, 64)), until, tag,
                error[:_ERROR_LIMIT] if isinstance(error, str) and error else None,
                error_at if isinstance(error_at, float) else None)
        self._held.update(loaded)
        if self._failing:
            log.info("[idle/db] hold-offs can be read again")
            self._failing = False
        return loaded

    def _unreadable(self, failure: Any, n: int) -> dict[str, Holdoff]:
        if not self._failing:  # once per outage, not once per ramp step
            log.warn("[idle/db] hold-offs of {n} account(s) unreadable, starting them "
                     "without (and so on until they can be read): {error}", n=n,
                     error=describe(failure))
        self._failing = True
        return {}

    def _answer(self, loaded: dict[str, Holdoff], waiters: list[tuple[str, Deferred]]
                ) -> None:
        for account_id, d in waiters:
            d.callback(loaded.get(account_id))
        self._read_waiting()  # those asked for meanwhile, in one query
