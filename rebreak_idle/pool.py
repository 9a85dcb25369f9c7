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

Note: libpq resolves a host *name* in the DSN synchronously; use ``hostaddr=`` (or an IP
address) where a slow resolver would matter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import psycopg2
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from txpostgres.txpostgres import Connection

__all__ = [
    "Pool", "PoolClosed", "StatementTimeout", "connect", "db_error_text", "is_connection_error",
    "new_connection",
]

log = Logger()


def db_error_text(e: BaseException) -> str:
    """One line describing a database failure (libpq messages span several lines)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


class PoolClosed(Exception):
    """The pool was closed before the statement could run."""


class StatementTimeout(Exception):
    """A connect or a statement ran past its deadline; its connection was closed."""


def is_connection_error(e: BaseException) -> bool:
    """True when ``e`` means the connection (not the statement) is broken."""
    if isinstance(e, psycopg2.OperationalError | psycopg2.InterfaceError | StatementTimeout):
        # QueryCanceledError and TransactionRollbackError are OperationalErrors whose
        # connection is fine; they are not worth a reconnect
        return not isinstance(
            e, psycopg2.extensions.QueryCanceledError | psycopg2.errors.TransactionRollbackError
        )
    from twisted.internet.error import ConnectionDone, ConnectionLost

    return isinstance(e, ConnectionDone | ConnectionLost)


class _Connection(Connection):
    """A txpostgres connection that closes itself quietly when the server goes away.

    txpostgres keeps every connection registered as a reader (for NOTIFY); when the server
    closes an idle connection, ``poll()`` raises in ``doRead`` with nobody to report to and
    the reactor would log it as an unhandled error. Here it just marks the connection dead.
    """

    lost_callbacks: list
    _killed = False

    def doRead(self) -> None:
        try:
            Connection.doRead(self)
        except psycopg2.Error:
            self.kill()

    def kill(self) -> None:
        """Close the connection (idempotent), then tell the lost callbacks."""
        if self._killed or self._connection is None:
            return
        self._killed = True
        with contextlib.suppress(Exception):  # closing a broken connection may fail
            self.close()
        for cb in list(getattr(self, "lost_callbacks", ())):
            cb(self)

    @property
    def alive(self) -> bool:
        return not self._killed and self._connection is not None and not self._connection.closed


def new_connection(reactor: Any) -> _Connection:
    """An unconnected connection (``kill()`` aborts a :func:`connect` in progress)."""
    conn = _Connection(reactor=reactor)
    conn.lost_callbacks = []
    return conn


async def connect(dsn: str, reactor: Any, timeout: float,
                  conn: _Connection | None = None) -> _Connection:
    """Open ``conn`` (or a new connection) with a deadline: libpq does not enforce
    ``connect_timeout`` on asynchronous connections."""
    conn = new_connection(reactor) if conn is None else conn
    if not conn.alive and conn._killed:
        raise PoolClosed("the connection was closed before it was opened")
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        conn.kill()

    d = conn.connect(dsn)
    timer = reactor.callLater(timeout, expire)
    try:
        await d
    except BaseException:
        conn.kill()
        if expired:
            raise StatementTimeout(f"connecting took longer than {timeout:g}s") from None
        raise
    finally:
        if timer.active():
            timer.cancel()
    if not conn.alive:  # closed (deadline, pool closed) just as it succeeded
        raise StatementTimeout(f"connecting took longer than {timeout:g}s")
    return conn


class Pool:
    """Up to ``size`` connections to ``dsn``; statements wait for a free one.

    ``reactor`` must provide IReactorFDSet and IReactorTime (the real reactor).
    """

    def __init__(self, dsn: str, reactor: Any, size: int = 2, connect_timeout: float = 10.0,
                 statement_timeout: float = 30.0) -> None:
        self._dsn = dsn
        self._reactor = reactor
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
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

    async def _checkout(self) -> tuple[_Connection, bool]:
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

    def _give_back(self, conn: _Connection) -> None:
        if self.closed or not conn.alive:
            conn.kill()
        else:
            self._idle.append(conn)

    async def _execute(self, conn: _Connection, fetch: bool, sql: str,
                       params: Sequence[Any] | None) -> Any:
        timed_out = []

        def expire() -> None:
            timed_out.append(True)
            conn.kill()

        timer = self._reactor.callLater(self._statement_timeout, expire)
        try:
            if fetch:
                return await conn.runQuery(sql, params)
            return await conn.runOperation(sql, params)
        except Exception:
            if timed_out:
                raise StatementTimeout(
                    f"statement took longer than {self._statement_timeout:g}s") from None
            raise
        finally:
            if timer.active():
                timer.cancel()
