"""OAuth access tokens (``xoauth2`` rows) without needless reconnects.

The backend refreshes tokens about hourly and writes the new one into the row. A healthy
session keeps its connection (the server checked the token at login); it uses the newest
token at its next login (:func:`token_only_change` tells the supervisor when a changed row
needs no restart). A token refused at login makes the session re-read its row once
(:func:`fresher_account`, through the store's one-account query) and, when the backend has
written a newer token since, log in with it at once on the same connection, before any
hold-off.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ..accounts.account import Account
from ..failures import describe

__all__ = ["Reread", "fresher_account", "token_only_change"]

log = Logger(namespace="rebreak_idle.tokens")

#: ``reread(account_id)``: the account's row read again (decoded), or None when it is gone,
#: inactive or invalid.
Reread = Callable[[str], Deferred]


def token_only_change(old: Account, new: Account) -> bool:
    """Only the OAuth token of an ``xoauth2`` account changed (nothing to reconnect for)."""
    return (old.auth_method == new.auth_method == "xoauth2" and old.secret != new.secret
            and old.connection_key[:-1] == new.connection_key[:-1])


async def fresher_account(reread: Reread | None, account: Account) -> Account | None:
    """The account as its row says now, when that holds a different token for the same
    connection; None otherwise (also when the read fails: the hold-off then applies)."""
    if reread is None or account.auth_method != "xoauth2":
        return None
    try:
        fresh = await reread(account.id)
    except Exception as e:
        log.info("{label} re-reading the row after a refused token failed: {error}",
                 label=account.label, error=describe(e), account_id=account.id)
        return None
    if isinstance(fresh, Account) and token_only_change(account, fresh):
        return fresh
    return None
