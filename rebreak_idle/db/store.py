"""``AccountStore``: the daemon's only door to PostgreSQL (CONTRACT §3).

Reads the active rows of ``rebreak.mail_connections`` and writes the three status columns
(``last_connect_error``, ``last_connect_error_at``, ``last_idle_heartbeat_at``). It is the
sessions' :class:`~rebreak_idle.interfaces.IRecorder`, the supervisor's
:class:`~rebreak_idle.interfaces.IAccountSource`, and a service of the daemon: starting it
starts the periodic flush and the LISTEN connections; stopping it writes what is still
buffered and closes every connection (the daemon stops it after the supervisor, whose
sessions record until they have logged out, and before the lease keeper).

Writes
    Heartbeats are buffered (last value per account wins) and written every
    ``flush_interval`` seconds as **one** statement
    (``UPDATE … FROM unnest(ids, times)``). Errors and clears drive the app's status banner,
    so they are written promptly: everything recorded in the same reactor turn goes out as
    one statement. While the database is unreachable the buffers keep their entries
    (bounded by ``max_buffer`` per buffer; the oldest is dropped and counted) and the next
    flush after it is back writes them. ``metrics.DB_WRITE_BUFFER`` is the number of
    entries waiting, ``metrics.DB_WRITE_FAILURES`` counts statements that failed.

Connections
    A small self-healing pool (:mod:`rebreak_idle.db.pool`): single autocommit statements,
    no prepared statements, no ``SET``, no session locks — it works through a
    transaction-mode pooler (PgBouncer, Supabase's pooler on port 6543). A dead connection
    is replaced with the next statement. ``DATABASE_URL`` may be a URI or a key=value DSN;
    ``sslmode`` and every other libpq parameter pass through unchanged.

Instant refresh (optional)
    With ``REBREAK_NOTIFY_CHANNEL`` set, :meth:`AccountStore.listen` keeps a dedicated
    connection in ``LISTEN <channel>`` (:mod:`rebreak_idle.db.listener`) and calls back on every
    notification, reconnecting when it dies. LISTEN needs a session, so it does **not** work
    through a transaction-mode pooler: point ``DATABASE_URL`` at the database directly (or
    the pooler's session mode, port 5432 on Supabase), or leave the channel unset and rely
    on the periodic refresh. The backend sends the notification with a trigger such as::

        CREATE OR REPLACE FUNCTION rebreak.notify_mail_connections() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
          PERFORM pg_notify('rebreak_idle', '');
          RETURN NULL;
        END $$;

        CREATE TRIGGER mail_connections_notify
        AFTER INSERT OR DELETE OR UPDATE OF imap_host, imap_port, imap_security,
              imap_username, auth_method, encrypted_secret, is_active
        ON rebreak.mail_connections
        FOR EACH STATEMENT EXECUTE FUNCTION rebreak.notify_mail_connections();

    (``UPDATE OF`` leaves out the status columns the daemon itself writes, so its own
    writes do not wake it up.) See docs/notify.md.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from .. import metrics
from ..accounts.account import COLUMNS
from ..deferreds import Coalesced
from ..failures import describe
from ..interfaces import IAccountSource, IRecorder
from ..session.mailbox_marks import MailboxMark
from .listener import Listener
from .marks import LOAD_SQL, MarkWrites, decode_rows
from .pool import Pool
from .prune import prune_gone
from .writes import WriteBuffer, write_isolating

__all__ = ["ACTIVE_SQL", "AccountStore"]

log = Logger()

#: The account query: the columns of ``account.COLUMNS`` plus two for the supervisor.
ACTIVE_SQL = (
    "SELECT id::text, user_id::text, email, imap_host, imap_port, imap_security, "
    "imap_username, auth_method, encrypted_secret, last_connect_error, "
    "extract(epoch FROM now() - last_idle_heartbeat_at)::float8 "
    "FROM rebreak.mail_connections WHERE is_active"
)
_ACTIVE_KEYS = (*COLUMNS, "last_connect_error", "heartbeat_age")
#: One account's row, as ACTIVE_SQL reads it (a refused OAuth token re-reads its row).

#: One row by id or by e-mail (``rebreak-idle probe``), active or not: the account query's
#: columns plus ``is_active``.
_ROW_SELECT = ACTIVE_SQL.replace(" FROM rebreak.mail_connections WHERE is_active",
                                 ", is_active FROM rebreak.mail_connections ")
assert _ROW_SELECT != ACTIVE_SQL
ROW_BY_ID_SQL = _ROW_SELECT + "WHERE id = %s::uuid"
ROW_BY_EMAIL_SQL = _ROW_SELECT + "WHERE lower(email) = lower(%s) ORDER BY id LIMIT 20"

HEARTBEATS_SQL = (
    "UPDATE rebreak.mail_connections AS m SET last_idle_heartbeat_at = v.at "
    "FROM unnest(%s::uuid[], %s::timestamptz[]) AS v(id, at) WHERE m.id = v.id"
)
ERRORS_SQL = (
    "UPDATE rebreak.mail_connections AS m "
    "SET last_connect_error = v.error, last_connect_error_at = v.at "
    "FROM unnest(%s::uuid[], %s::text[], %s::timestamptz[]) AS v(id, error, at) "
    "WHERE m.id = v.id AND (v.error IS NOT NULL OR m.last_connect_error IS NOT NULL "
    "OR m.last_connect_error_at IS NOT NULL)"
)


@functools.lru_cache(maxsize=1 << 16)
def _valid_id(account_id: str) -> bool:
    """Whether the id is a UUID (remembered: every heartbeat of a session asks again)."""
    try:
        uuid.UUID(str(account_id))
    except ValueError:
        return False
    return True


@implementer(IRecorder, IAccountSource)
class AccountStore(Service):
    """Reads accounts and buffers status writes; see the module docstring.

    ``reactor`` runs the sockets (IReactorFDSet + IReactorTime); ``clock`` (default: the
    reactor) times the flushes and stamps the recorded times. :meth:`startService` begins
    the periodic flushing (statements work before it: connections open on demand);
    :meth:`stopService` writes what is buffered (waiting at most ``shutdown_timeout``
    seconds) and disconnects.
    """

    name = "store"

    def __init__(self, dsn: str, reactor: Any, *, clock: Any = None,
                 flush_interval: float = 5.0, max_buffer: int = 100_000, pool_size: int = 2,
                 connect_timeout: float = 10.0, statement_timeout: float = 30.0,
                 shutdown_timeout: float = 10.0, prune_interval: float = 300.0) -> None:
        self._dsn = dsn
        self._prune_interval = prune_interval
        self._pruned_at: float | None = None
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._flush_interval = flush_interval
        self._connect_timeout = connect_timeout
        self._shutdown_timeout = shutdown_timeout
        self.pool = Pool(dsn, reactor, size=pool_size, connect_timeout=connect_timeout,
                         statement_timeout=statement_timeout)
        self._heartbeats = WriteBuffer(max_buffer)
        self._errors = WriteBuffer(max_buffer)
        self._marks = MarkWrites(max_buffer)
        self._reported_drops = 0
        self._flush = Coalesced(lambda: Deferred.fromCoroutine(self._flush_once()),
                                lambda f: log.failure("[idle/db] status write pass crashed", f))
        self._loop: LoopingCall | None = None
        self._prompt: Any = None  # IDelayedCall of the prompt error flush
        self._writes_failing = False
        self._listeners: list[Listener] = []
        self._in_flight = 0  # entries taken by the write that is running
        self.closed = False
        #: the final write's deadline when set (the daemon's shared stop budget)
        self.stop_timeout: float | None = None

    # -- reading --------------------------------------------------------------------

    def active(self) -> Deferred:
        """Fire with the active rows as dicts: ``account.COLUMNS`` plus
        ``last_connect_error`` and ``heartbeat_age`` (seconds since the stored heartbeat,
        or None)."""
        d = self.pool.run_query(ACTIVE_SQL)
        d.addCallback(lambda rows: [dict(zip(_ACTIVE_KEYS, row, strict=True)) for row in rows])
        return d

    def rows_of(self, *, account_id: str | None = None, email: str | None = None
                ) -> Deferred:
        """Fire with the rows (dicts as :meth:`active` gives them, plus ``is_active``) of
        ``account_id`` (none when it is not a UUID) or of ``email`` (at most 20)."""
        if account_id is not None:
            if not _valid_id(account_id):
                return succeed([])
            d = self.pool.run_query(ROW_BY_ID_SQL, (account_id,))
        else:
            d = self.pool.run_query(ROW_BY_EMAIL_SQL, (email,))
        keys = (*_ACTIVE_KEYS, "is_active")
        d.addCallback(lambda rows: [dict(zip(keys, row, strict=True)) for row in rows])
        return d

    def one(self, account_id: str) -> Deferred:
        """Fire with one active account's row (as :meth:`active` gives it) or None."""

        def active_one(rows: list[dict]) -> dict | None:
            for row in rows:
                if row.pop("is_active"):
                    return row
            return None

        return self.rows_of(account_id=account_id).addCallback(active_one)

    # -- IRecorder ------------------------------------------------------------------

    def record_error(self, account_id: str, text: str) -> None:
        if self._accept(account_id):
            self._errors.put(str(account_id), (str(text), self._now()))
            self._after_put(prompt=True)

    def clear_error(self, account_id: str) -> None:
        if self._accept(account_id):
            self._errors.put(str(account_id), (None, None))
            self._after_put(prompt=True)

    def record_heartbeat(self, account_id: str) -> None:
        if self._accept(account_id):
            self._heartbeats.put(str(account_id), self._now())
            self._after_put(prompt=False)

    # -- mailbox marks (rebreak_idle.mailbox_state, :mod:`rebreak_idle.db.marks`) -----

    def record_mark(self, account_id: str, mailbox: str, mark: MailboxMark) -> None:
        """Queue the write of an acknowledged mark (batched like the heartbeats)."""
        if self._accept(account_id):
            self._marks.put(str(account_id), mailbox, mark, self._now())
            self._after_put(prompt=False)

    def load_marks(self, account_ids: list[str]) -> Deferred:
        """Fire with the stored marks of these accounts: ``{(id, mailbox): mark}``."""
        ids = [a for a in account_ids if _valid_id(a)]
        return self.pool.run_query(LOAD_SQL, (ids,)).addCallback(decode_rows)

    def prune(self) -> Deferred:
        """Delete marks and hold-offs of accounts gone from the table, in batches
        (:mod:`rebreak_idle.db.prune`), at most once per ``prune_interval`` seconds (a
        refresh after every NOTIFY does not scan the tables each time); fires with the
        counts per table (empty when skipped), never fails."""
        now = self._clock.seconds()
        if self.pool.closed or (self._pruned_at is not None
                                and now - self._pruned_at < self._prune_interval):
            return succeed({})
        self._pruned_at = now
        return Deferred.fromCoroutine(prune_gone(self.pool.run_query))

    @property
    def pending(self) -> int:
        """Entries waiting to be written."""
        return (len(self._heartbeats) + len(self._errors) + self._in_flight
                + len(self._marks))

    # -- flushing -------------------------------------------------------------------

    def startService(self) -> None:
        """Begin flushing every ``flush_interval`` seconds, and listening."""
        super().startService()
        if self._loop is None:
            self._loop = LoopingCall(self.flush)
            self._loop.clock = self._clock
            self._loop.start(self._flush_interval, now=False).addErrback(
                lambda f: log.failure("[idle/db] write loop stopped", f))
        for listener in self._listeners:
            listener.start()

    def flush(self) -> Deferred:
        """Write everything buffered now (one statement per kind); fires with None when
        done, also when the write failed (the entries stay buffered). Flushes never
        overlap and never queue up (:class:`~rebreak_idle.deferreds.Coalesced`): a slow
        database cannot make the prompt flushes of thousands of errors pile up."""
        return self._flush()

    def stopService(self) -> Deferred:
        """Stop flushing, stop listening, write what is buffered (waiting at most
        ``shutdown_timeout`` seconds), then close every connection."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._cancel_prompt()
        for listener in self._listeners:
            listener.stop()
        self._listeners.clear()
        started, pending = self._clock.seconds(), self.pending
        timeout = self._shutdown_timeout if self.stop_timeout is None else self.stop_timeout
        d = self.flush()
        d.addTimeout(timeout, self._clock)
        d.addErrback(lambda f: log.warn(
            "[idle/db] final write did not finish within {timeout:g}s; {n} writes lost",
            timeout=timeout, n=self.pending))

        def shut(_: Any) -> None:
            log.info("[idle/db] final write of {n} status updates took {seconds:.1f}s",
                     n=pending, seconds=self._clock.seconds() - started)
            self.closed = True
            self.pool.close()

        return d.addCallback(shut)

    # -- LISTEN -----------------------------------------------------------------------

    def listen(self, channel: str, on_notify: Callable[[], None], *,
               refresh_interval: float | None = None) -> Listener:
        """Keep a dedicated connection in ``LISTEN channel`` and call ``on_notify()`` on
        every notification (and after each reconnect, as notifications may have been
        missed). It starts with the service (at once if it runs) and stops with it."""
        listener = Listener(self._dsn, channel, on_notify, self._reactor, clock=self._clock,
                            connect_timeout=self._connect_timeout,
                            refresh_interval=refresh_interval)
        self._listeners.append(listener)
        if self.running:
            listener.start()
        return listener

    # -- internals ------------------------------------------------------------------

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.seconds(), tz=UTC)

    def _accept(self, account_id: str) -> bool:
        if _valid_id(account_id):
            return True
        log.warn("[idle/db] ignoring a status write for a malformed account id {account_id!r}",
                 account_id=account_id)
        return False

    def _after_put(self, prompt: bool) -> None:
        self._update_gauge()
        if prompt and not self._writes_failing and self._prompt is None and not self.closed:
            self._prompt = self._clock.callLater(0, self._prompt_flush)

    def _prompt_flush(self) -> None:
        self._prompt = None
        self.flush()  # never fails

    def _cancel_prompt(self) -> None:
        if self._prompt is not None and self._prompt.active():
            self._prompt.cancel()
        self._prompt = None

    def _update_gauge(self) -> None:
        metrics.DB_WRITE_BUFFER.set(self.pending)
        dropped = self._heartbeats.dropped + self._errors.dropped + self._marks.buffer.dropped
        if dropped > self._reported_drops:
            log.warn("[idle/db] write buffer full: dropped {n} oldest status writes so far",
                     n=dropped)
            self._reported_drops = dropped

    async def _flush_once(self) -> None:
        await self._write(self._errors, ERRORS_SQL, _error_params, "error")
        await self._write(self._heartbeats, HEARTBEATS_SQL, _heartbeat_params, "heartbeat")
        if not self.pool.closed:
            await self._marks.flush(self.pool.run_operation)
        self._update_gauge()

    async def _write(self, buffer: WriteBuffer, sql: str,
                     params: Callable[[dict], tuple], kind: str) -> None:
        """Write ``buffer``'s entries in one statement. A lost connection keeps them
        buffered; an entry the database refuses is dropped alone, the rest is written
        (:func:`~rebreak_idle.db.writes.write_isolating`)."""
        if self.pool.closed:
            return
        taken = buffer.take()
        if not taken:
            return
        self._in_flight = len(taken)

        def refused(account_id: Any, _value: Any, error: BaseException) -> None:
            metrics.DB_WRITE_FAILURES.inc()
            log.warn("[idle/db] the database refused the {kind} update of account "
                     "{account_id}; dropped it: {error}", kind=kind, account_id=account_id,
                     error=describe(error))

        try:
            left, error = await write_isolating(
                lambda part: self.pool.run_operation(sql, params(part)), taken, refused)
        finally:
            self._in_flight = 0
        if error is not None:  # every other failure keeps the entries buffered
            buffer.restore(left)
            metrics.DB_WRITE_FAILURES.inc()
            if not self._writes_failing:
                log.warn("[idle/db] writing {n} {kind} update(s) failed, keeping them for the "
                         "next attempt: {error}", n=len(left), kind=kind, error=describe(error))
            self._writes_failing = True
            return
        if self._writes_failing:
            log.info("[idle/db] status writes work again")
            self._writes_failing = False


def _error_params(errors: dict) -> tuple[list, ...]:
    return (list(errors), [e[0] for e in errors.values()], [e[1] for e in errors.values()])


def _heartbeat_params(heartbeats: dict) -> tuple[list, ...]:
    return (list(heartbeats), list(heartbeats.values()))
