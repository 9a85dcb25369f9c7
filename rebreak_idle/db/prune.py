"""Rows of the daemon's own tables whose account is gone: ``rebreak_idle.mailbox_state``
(marks) and ``rebreak_idle.account_holdoff`` (hold-offs) of connection ids that no longer
exist in ``rebreak.mail_connections`` at all.

Run with every successful refresh (the supervisor's ``after_refresh``), in batches of
``batch`` rows, at most ``batches`` per table and refresh, so that a mass deletion is
cleaned up over a few refreshes without one long statement. Only rows of ids missing from
the backend's table are deleted: that is true for every replica alike, so each may prune
(an inactive row keeps its marks and hold-off, for when it is active again).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ..failures import describe

__all__ = ["PRUNED_TABLES", "prune_gone"]

log = Logger(namespace="rebreak_idle.db.prune")

#: table → what its rows are, for the log line
PRUNED_TABLES = {"mailbox_state": "mailbox mark", "account_holdoff": "hold-off"}

_PRUNE_SQL = (
    "WITH gone AS (DELETE FROM rebreak_idle.{table} WHERE ctid = ANY(ARRAY("
    "SELECT t.ctid FROM rebreak_idle.{table} AS t WHERE NOT EXISTS ("
    "SELECT 1 FROM rebreak.mail_connections AS m WHERE m.id = t.connection_id) "
    "LIMIT %s)) RETURNING 1) SELECT count(*) FROM gone"
)


async def prune_gone(run_query: Callable[..., Deferred], *, batch: int = 1000,
                     batches: int = 10) -> dict[str, int]:
    """Delete up to ``batch * batches`` rows per table whose account is gone; returns
    how many went per table. Never fails: a failed statement is logged and the rest is
    left for the next refresh."""
    pruned: dict[str, int] = {}
    for table, what in PRUNED_TABLES.items():
        total = 0
        try:
            for _ in range(batches):
                ((n,),) = await run_query(_PRUNE_SQL.format(table=table), (batch,))
                total += n
                if n < batch:
                    break
        except Exception as e:
            log.warn("[idle/db] pruning {what} rows of deleted accounts failed (retried with "
                     "the next refresh): {error}", what=what, error=describe(e))
        pruned[table] = total
        if total:
            log.info("[idle/db] pruned {n} {what} row(s) of deleted accounts", n=total,
                     what=what)
    return pruned
