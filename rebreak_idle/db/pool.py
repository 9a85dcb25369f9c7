"""A small self-healing pool of txpostgres connections.

txpostgres's own ``ConnectionPool`` never replaces a connection that died (a PostgreSQL
restart, a network cut, a pooler restart), and its ``DeadConnectionDetector`` keeps retry
timers of its own running in the background. This pool is lazier and has nothing to clean
up: a connection is opened when a statement needs one, checked before every use, closed
and forgotten as soon as it fails in a way that means it is dead (or a statement runs past
its deadline), and the statement is tried once more on a fresh connection when the
connection that failed had been idle in the pool. So the pool "reconnects by itself" with
the next statement, and an unreachable database costs one failed connect per statement.

Every statement is a single autocommit statement (psycopg2 asynchronous connections are
always in autocommit mode) with client-side parameter interpolation: no prepared
statements, no ``SET``, no session locks — safe behind a transaction-mode pooler
(PgBouncer, Supabase's Supavisor).

(psycopg2 sends one ``SET DATESTYLE TO 'ISO'`` at connect time only when the server's
DateStyle is not ISO — PostgreSQL's and Supabase's default is ISO — and nothing here depends
on it: times go out as ISO 8601 literals with an offset and come back as epoch seconds.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .connect import (
    DBConnection,
    PoolClosed,
    StatementTimeout,
    connect,
    is_connection_error,
    new_connection,
    with_deadline,
)

__all__ = ["Pool", "PoolClosed", "StatementTimeout"]

log = Logger()


class Pool:
    """Up to ``size`` connections to ``dsn``; statements wait for a free one.

    ``reactor`` must provide IReactorFDSet and IReactorTime (the real reactor).
    """

    def __init__(self, dsn: str, reactor: Any, size: int = 2, connect_timeout: float = 10.0,
                 statement_timeout: float = 30.0) -> None:
        self._dsn = dsn
        self._reactor = reactor
        self._idle: list[DBConnection] = []
        self._busy: set[DBConnection] = set()
        self._sem = defer.DeferredSemaphore(size)
        self._connect_timeout = connect_timeout
        self._statement_timeout = statement_timeout
        self.closed = False

    def run_query(self, sql: str, params: Sequence[Any] | None = None) -> Deferred:
        """Run a statement and fire with its rows (a list of tuples)."""
        return self._sem.run(lambda: Deferred.fromCoroutine(self._run(True, sql, params)))

    def run_operation(self, sql: str, params: Sequence[Any] | None = None) -> Deferred:
        """Run a statement and fire with ``None``."""
        return self._sem.run(lambda: Deferred.fromCoroutine(self._run(False, sql, params)))

    def close(self) -> None:
        """Close every connection; statements still waiting fail with :class:`PoolClosed`."""
        self.closed = True
        for conn in self._idle + list(self._busy):
            conn.kill()
        self._idle.clear()

    async def _checkout(self) -> tuple[DBConnection, bool]:
        """A live connection, marked busy (so :meth:`close` can abort it), and whether it
        is new."""
        while self._idle:
            conn = self._idle.pop()
            if conn.alive:
                self._busy.add(conn)
                return conn, False
        conn = new_connection(self._reactor)
        self._busy.add(conn)
        try:
            await connect(self._dsn, self._reactor, self._connect_timeout, conn)
        except BaseException:
            self._busy.discard(conn)
            raise
        return conn, True

    async def _run(self, fetch: bool, sql: str, params: Sequence[Any] | None) -> Any:
        for _attempt in range(2):
            if self.closed:
                raise PoolClosed("the database pool is closed")
            try:
                conn, fresh = await self._checkout()
            except Exception:
                if self.closed:
                    raise PoolClosed("the database pool is closed") from None
                raise
            try:
                result = await self._execute(conn, fetch, sql, params)
            except Exception as e:
                self._busy.discard(conn)
                if not is_connection_error(e) and conn.alive:
                    self._give_back(conn)
                    raise
                conn.kill()
                if fresh or self.closed:
                    raise
                log.debug("[idle/db] pooled connection was dead ({error}); retrying on a new one",
                          error=e)
                continue
            self._busy.discard(conn)
            self._give_back(conn)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _give_back(self, conn: DBConnection) -> None:
        if self.closed or not conn.alive:
            conn.kill()
        else:
            self._idle.append(conn)

    def _execute(self, conn: DBConnection, fetch: bool, sql: str,
                 params: Sequence[Any] | None) -> Deferred:
        run = conn.runQuery if fetch else conn.runOperation
        late = StatementTimeout(f"statement took longer than {self._statement_timeout:g}s")
        return with_deadline(run(sql, params), self._statement_timeout, self._reactor,
                             conn.kill, late)
