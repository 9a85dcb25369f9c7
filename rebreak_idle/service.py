"""``build_daemon(settings, reactor)``: wires the rooms together (the only module that knows
them all).

    AccountStore ──rows──▶ Supervisor ──one per row──▶ MailboxSession ──new mail──▶ ScanTrigger
         ▲  (IRecorder: errors, heartbeats)  │                                       (treq POST)
         └───────────────────────────────────┘
    LeaseKeeper (REBREAK_LEASES=on) narrows the rows; StatusService serves /healthz … /status.

The stop order is written once, in :meth:`Daemon.stopService`: the supervisor (sessions:
DONE + LOGOUT) with the scans and the status server, then the store (the final write of
what the sessions recorded), then the lease keeper. The phases share one deadline,
``shutdown_timeout`` in total (:class:`~rebreak_idle.timing.stop_budget.StopBudget`): each later
phase gets what remains, at least a small floor.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger

from . import __version__, metrics
from .accounts.account import Account, InvalidAccount, account_from_row
from .accounts.destinations import policy_for
from .accounts.secrets import SecretError, decrypt_secret
from .config import (
    Settings,
    lease_settings,
    scan_settings,
    session_settings,
    status_settings,
    supervisor_settings,
)
from .db.holdoffs import HoldoffStore
from .db.listener import Listener
from .db.marks import MarkLoader
from .db.store import AccountStore
from .deferreds import within
from .fleet.supervisor import Decode, InvalidRow, Supervisor
from .net import descriptors
from .ops import gc_tuning, memory
from .scan.trigger import ScanTrigger
from .session.host_budget import HostBudget
from .session.mailbox_marks import MailboxMemory
from .session.session import MailboxSession, timer_resolution
from .status.query import PageQuery, Selection
from .status.rows import StatusRows
from .status.server import StatusService, make_status_resource
from .timing.stop_budget import StopBudget
from .timing.wheel import TimerWheel

__all__ = ["Daemon", "build_daemon", "row_decoder"]

log = Logger()


class Daemon(MultiService):
    """The running daemon: its parts are attributes, for tests, the demo and the status
    server. ``owns_process``: the daemon owns the process (``twist``/``twistd``): it
    installs the SIGTERM/SIGINT handlers and tunes the garbage collector
    (:mod:`rebreak_idle.ops.gc_tuning`)."""

    def __init__(self, settings: Settings, reactor: Any, *, owns_process: bool = False
                 ) -> None:
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        self.owns_process = owns_process
        #: the descriptor limit: raised to the hard limit when the daemon owns the process
        #: (as Node.js does); the sessions it allows (rebreak_idle.net.descriptors)
        self.descriptors = descriptors.raise_soft_limit() if owns_process else None
        self.capacity = None if self.descriptors is None else \
            descriptors.session_capacity(self.descriptors)
        #: the sessions' heartbeat timers and command deadlines, on one reactor timer
        self.timers = TimerWheel(reactor, timer_resolution(settings))
        self._session_settings = session_settings(settings)
        #: per IMAP host: the login budget and the connection limit (docs/providers.md)
        self.budget = HostBudget(reactor, rate=settings.host_login_rate,
                                 burst=settings.host_login_burst,
                                 max_connections=settings.host_max_connections,
                                 sources=settings.source_addresses)
        self.store = AccountStore(settings.database_url, reactor,
                                  flush_interval=settings.write_flush_interval,
                                  shutdown_timeout=settings.shutdown_timeout,
                                  prune_interval=settings.refresh_interval)
        #: the last acknowledged mark of each mailbox (rebreak_idle.mailbox_state): outlives
        #: a restarted session, the process and a replica takeover
        self.marks = MailboxMemory(writer=self.store.record_mark)
        #: credential hold-offs that survive restarts (rebreak_idle.account_holdoff)
        self.holdoffs = HoldoffStore(self.store.pool.run_query, self.store.pool.run_operation,
                                     settings.key_bytes)
        self.scans = ScanTrigger(scan_settings(settings), reactor)
        self.scans.setServiceParent(self)
        self.store.setServiceParent(self)

        self.leases: Any = None
        account_filter = owned = None
        if settings.leases_enabled:
            from .db.leases import LeaseKeeper

            self.leases = LeaseKeeper(lease_settings(settings), reactor=reactor,
                                      on_change=self._owned_changed,
                                      on_lost_ownership=self._ownership_lost)
            self.leases.setServiceParent(self)
            account_filter, owned = self.leases.filter, self.leases.owned
        # before sessions start: the stored marks of the accounts not loaded yet (and,
        # with leases, only the accounts still owned once they are read)
        account_filter = MarkLoader(self.marks, self.store.load_marks, then=account_filter,
                                    owned=owned)

        self.supervisor = Supervisor(self.store, self.new_session,
                                     row_decoder(settings.key_bytes,
                                                 settings.allow_private_hosts),
                                     supervisor_settings(settings), reactor,
                                     account_filter=account_filter,
                                     on_session_removed=self._session_removed,
                                     after_refresh=self.store.prune,
                                     capacity=self.capacity)
        self.supervisor.setServiceParent(self)
        if self.leases is not None:
            # accounts released or lost stop at once; a released lease's row goes only
            # once its session has logged out (docs/replicas.md)
            self.leases.on_release = self.supervisor.release_accounts
        #: the LISTEN connection of REBREAK_NOTIFY_CHANNEL (None without one); its
        #: ``notifications_arrive`` says whether NOTIFY reaches the daemon
        self.listener: Listener | None = None
        if settings.notify_channel:
            self.listener = self.store.listen(settings.notify_channel,
                                              self.supervisor.request_refresh,
                                              refresh_interval=settings.refresh_interval)

        self._rows = StatusRows(self.supervisor,
                                lambda entry: self._with_scan(self.supervisor.snapshot_of(entry)))
        self.status: StatusService | None = None
        status = status_settings(settings)
        if status is not None:
            resource = make_status_resource(status, ready=lambda: self.supervisor.ready,
                                            snapshot=self.snapshot,
                                            counts=self.supervisor.counts, page=self.page)
            self.status = StatusService(status, resource, reactor)
            self.status.setServiceParent(self)

    def new_session(self, account: Account) -> IService:
        """The daemon's one session factory (start-up, takeover, reconnect): a
        MailboxSession with the daemon's shared parts (store, scans, marks, timers, host
        budget, hold-offs, state tally)."""
        return MailboxSession(account, self._session_settings, self.store, self.scans.submit,
                              self.reactor, memory=self.marks, timers=self.timers,
                              reread=self._reread, budget=self.budget,
                              holdoffs=self.holdoffs, tally=self.supervisor.tally)

    def _reread(self, account_id: str) -> Deferred:
        """One account's row read again and decoded (a refused OAuth token)."""
        decode = self.supervisor.decode

        def decoded(row: Any) -> Account | None:
            account = None if row is None else decode(row)
            return account if isinstance(account, Account) else None

        return self.store.one(account_id).addCallback(decoded)

    def _session_removed(self, account_id: str) -> None:
        """No session of the account is left here: forget its scans and its marks (the
        stored marks are read again if this replica watches it again)."""
        self.scans.discard(account_id)
        self.marks.forget(account_id)

    def _owned_changed(self) -> None:
        self.supervisor.request_refresh()

    def _ownership_lost(self) -> None:
        """No lease round succeeded for a whole TTL (database unreachable): another replica
        may own these accounts now, so stop watching them rather than watch twice. The
        next refresh that succeeds starts what this replica owns again."""
        log.warn("[idle/db] lease ownership lost (no renewal for {ttl:g}s): stopping "
                 "{n} sessions", ttl=self.settings.lease_ttl, n=len(self.supervisor.sessions))
        self.supervisor.stop_all_sessions()

    def snapshot(self) -> list[dict]:
        """One object per account for /status: the session's view plus its last scan and
        since when it owes a scan (``scan_owed_since``, ISO 8601; null when it owes none)."""
        return [self._with_scan(entry) for entry in self.supervisor.snapshot()]

    def page(self, query: PageQuery) -> Selection[dict]:
        """The status page's rows for ``query`` (:mod:`rebreak_idle.status.rows`: no
        snapshot of every account, only of the page's rows)."""
        return self._rows.page(query)

    def _with_scan(self, entry: dict) -> dict:
        entry["last_scan"] = self.scans.last_outcome(entry["id"])
        owed = self.scans.owed_since(entry["id"])
        entry["scan_owed_since"] = (None if owed is None
                                    else datetime.fromtimestamp(owed, UTC).isoformat())
        session = self.supervisor.sessions.get(entry["id"])
        entry["imap_host"] = None if session is None else session.account.host
        return entry

    def startService(self) -> None:
        s = self.settings
        log.info(
            "rebreak-idle {version} starting: backend {backend}, refresh {refresh:g}s, "
            "heartbeat {heartbeat:g}s, IDLE renewal {renew:g}s, status server {status}, "
            "leases {leases}, host login budget {budget}",
            version=__version__, backend=s.backend_url, refresh=s.refresh_interval,
            heartbeat=s.heartbeat_interval, renew=s.idle_renew,
            status=s.status_endpoint or "off", leases=s.leases,
            budget="off" if s.host_login_rate is None else
            f"{s.host_login_rate:g}/s, burst {s.host_login_burst}",
        )
        metrics.BUILD_INFO.labels(version=__version__).set(1)
        self._log_descriptors()
        super().startService()
        if self.owns_process:
            gc_tuning.tune_for_many_sessions()
            self.reactor.callWhenRunning(self._install_signal_handlers)
            self.supervisor.ramp.on_settled = memory.release_free_heap

    def _log_descriptors(self) -> None:
        limit = self.descriptors
        if limit is None:
            return
        nan = float("nan")
        metrics.DESCRIPTOR_LIMIT.set(nan if limit.soft is None else limit.soft)
        metrics.SESSION_CAPACITY.set(nan if self.capacity is None else self.capacity)
        raised = "" if limit.was == limit.soft else f", raised from {limit.was}"
        log.info("[idle/db] file descriptor limit {soft}{raised} (hard {hard}): up to "
                 "{capacity} sessions ({reserve} descriptors kept for the database, backend "
                 "and status connections)", soft=limit.soft or "unlimited", raised=raised,
                 hard=limit.hard or "unlimited", capacity=self.capacity or "unlimited",
                 reserve=descriptors.DESCRIPTOR_RESERVE)

    def _install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: a graceful stop (LOGOUT, flush, scans) and exit status 0.

        Twisted's own handlers record the signal and re-raise it once the reactor has
        stopped, so the process would end "killed by SIGTERM"; an operator's stop is a
        clean exit here. Installed once the reactor runs, after the reactor's handlers."""
        import signal

        def graceful(signum: int, _frame: object) -> None:
            log.info("received {signal}: stopping gracefully",
                     signal=signal.Signals(signum).name)
            self.reactor.callFromThread(self._stop_reactor)

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, graceful)

    def _stop_reactor(self) -> None:
        if self.reactor.running:
            self.reactor.stop()

    def stopService(self) -> Deferred:
        """Stop the children (within ``shutdown_timeout`` in all) in this order: the
        supervisor, whose sessions log out, concurrently with the other parts; then the
        store, which writes what the sessions recorded; the lease keeper last, so that no
        other replica takes an account over while its session is still logging out."""
        log.info("rebreak-idle stopping: {n} sessions", n=len(self.supervisor.sessions))
        if self.owns_process:
            gc_tuning.stopping()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        Service.stopService(self)
        later = 1 if self.leases is None else 2
        budget = StopBudget(self.reactor, self.settings.shutdown_timeout, later=later)
        self.supervisor.stop_timeout = budget.first()
        children = [c for c in reversed(list(self)) if c not in (self.store, self.leases)]
        first = DeferredList([maybeDeferred(c.stopService) for c in children],
                             consumeErrors=True)
        if not await within(first, budget.first(), self.reactor):
            log.warn("rebreak-idle: the sessions, scans and status server did not stop "
                     "within {seconds:g}s; going on", seconds=budget.first())
        self.store.stop_timeout = budget.remaining(later=later - 1)
        await maybeDeferred(self.store.stopService).addErrback(
            lambda f: log.failure("the final status write failed", f))
        if self.leases is not None:
            releasing = maybeDeferred(self.leases.stopService).addErrback(
                lambda f: log.failure("releasing leases failed", f))
            if not await within(releasing, budget.remaining(), self.reactor):
                log.warn("[idle/leases] the lease release did not finish in time; the "
                         "leases expire after REBREAK_LEASE_TTL")
        log.info("rebreak-idle stopped in {seconds:.1f}s",
                 seconds=self.reactor.seconds() - (budget.deadline - budget.total))


def build_daemon(settings: Settings, reactor: Any, *, owns_process: bool = False) -> Daemon:
    """The daemon's top service for ``settings`` on ``reactor``. ``owns_process`` (the
    commands: ``twist``, ``twistd``): it also handles SIGTERM/SIGINT (graceful stop, exit 0)
    and tunes the garbage collector; tests, the demo and the benchmarks leave it off."""
    return Daemon(settings, reactor, owns_process=owns_process)


def row_decoder(key: bytes, allow_private_hosts: tuple[str, ...] = ()) -> Decode:
    """The supervisor's ``decode(row)``: the row's Account with its secret decrypted by
    ``key`` (CONTRACT §4), or an InvalidRow saying why it cannot be watched (the
    destination policy of ``allow_private_hosts`` included)."""
    policy = policy_for(allow_private_hosts)

    def decrypt(value: str) -> str:
        return decrypt_secret(value, key)

    def decode(row: Mapping[str, Any]) -> Account | InvalidRow:
        try:
            return account_from_row(row, decrypt, policy)
        except (SecretError, InvalidAccount) as e:
            return InvalidRow(str(row["id"]), row.get("email"), str(e))

    return decode
