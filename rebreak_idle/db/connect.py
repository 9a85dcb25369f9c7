"""Connection primitives: one txpostgres connection that closes itself quietly, opening it
with a deadline, and telling a broken connection from a failed statement.

Note: libpq resolves a host *name* in the DSN synchronously; use ``hostaddr=`` (or an IP
address) where a slow resolver would matter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import psycopg2
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from txpostgres.txpostgres import Connection

__all__ = ["DBConnection", "DatabaseFailure", "PoolClosed", "StatementTimeout", "connect",
           "is_connection_error", "new_connection", "with_deadline"]


class DatabaseFailure(Exception):
    """A failure of this package's own making; its message is its one-line description
    (``text``, as :func:`rebreak_idle.failures.describe` reads it)."""

    @property
    def text(self) -> str:
        return str(self)


class PoolClosed(DatabaseFailure):
    """The pool was closed before the statement could run."""


class StatementTimeout(DatabaseFailure):
    """A connect or a statement ran past its deadline; its connection was closed."""


def is_connection_error(e: BaseException) -> bool:
    """True when ``e`` means the connection (not the statement) is broken."""
    if isinstance(e, psycopg2.OperationalError | psycopg2.InterfaceError | StatementTimeout):
        # QueryCanceledError and TransactionRollbackError are OperationalErrors whose
        # connection is fine; they are not worth a reconnect
        return not isinstance(
            e, psycopg2.extensions.QueryCanceledError | psycopg2.errors.TransactionRollbackError
        )
    return isinstance(e, ConnectionDone | ConnectionLost)


class DBConnection(Connection):
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
    def killed(self) -> bool:
        """Whether :meth:`kill` was called (an unopened connection is not killed)."""
        return self._killed

    @property
    def alive(self) -> bool:
        return not self._killed and self._connection is not None and not self._connection.closed


def new_connection(reactor: Any) -> DBConnection:
    """An unconnected connection (``kill()`` aborts a :func:`connect` in progress)."""
    conn = DBConnection(reactor=reactor)
    conn.lost_callbacks = []
    return conn


def with_deadline(d: Deferred, seconds: float, clock: Any, on_expiry: Callable[[], object],
                  error: Exception) -> Deferred:
    """``d`` with a deadline (``Deferred.addTimeout``): after ``seconds``, ``on_expiry()``
    runs (it closes the connection) and the result fails with ``error``.

    txpostgres Deferreds are not cancelled: their canceller sends a blocking cancel
    request and keeps the Deferred waiting. The deadline is on a plain Deferred that ``d``
    feeds; a late result of ``d`` is dropped."""
    guarded: Deferred = Deferred()
    d.chainDeferred(guarded)

    def expired(_: Any, timeout: float) -> Any:
        on_expiry()
        raise error

    return guarded.addTimeout(seconds, clock, onTimeoutCancel=expired)


async def connect(dsn: str, reactor: Any, timeout: float,
                  conn: DBConnection | None = None) -> DBConnection:
    """Open ``conn`` (or a new connection) with a deadline: libpq does not enforce
    ``connect_timeout`` on asynchronous connections."""
    conn = new_connection(reactor) if conn is None else conn
    if conn.killed:
        raise PoolClosed("the connection was closed before it was opened")
    late = StatementTimeout(f"connecting took longer than {timeout:g}s")
    try:
        await with_deadline(conn.connect(dsn), timeout, reactor, conn.kill, late)
    except BaseException:
        conn.kill()
        raise
    if not conn.alive:  # closed (deadline, pool closed) just as it succeeded
        raise late
    return conn
