"""``makeService(settings)``: wires the rooms together (the only module that knows them all).

    AccountStore ──rows──▶ Supervisor ──one per row──▶ MailboxSession ──new mail──▶ ScanTrigger
         ▲  (IRecorder: errors, heartbeats)  │                                       (treq POST)
         └───────────────────────────────────┘
    LeaseKeeper (REBREAK_LEASES=on) narrows the rows; StatusService serves /healthz … /status.

Children of the top ``MultiService`` stop concurrently; each one bounds its own stop by
``shutdown_timeout`` (sessions: DONE + LOGOUT; store: flush; scans: finish or abandon), so
SIGTERM ends the process within about that deadline.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger

from . import gc_tuning
from .account import Account
from .config import Settings, session_settings
from .marks import MailboxMemory
from .scan import ScanTrigger
from .session import MailboxSession, timer_resolution
from .status import StatusService, make_status_resource
from .store import AccountStore
from .supervisor import Supervisor
from .wheel import TimerWheel

__all__ = ["Daemon", "makeService"]

log = Logger()


class Daemon(MultiService):
    """The running daemon: its parts are attributes, for tests, the demo and the status
    server. ``handle_signals``: the daemon owns the process (``twist``/``twistd``): it
    installs the SIGTERM/SIGINT handlers and tunes the garbage collector
    (:mod:`rebreak_idle.gc_tuning`)."""

    def __init__(self, settings: Settings, reactor: Any, *, handle_signals: bool = False
                 ) -> None:
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        self.handle_signals = handle_signals
        #: the sessions' heartbeat timers and command deadlines, on one reactor timer
        self.timers = TimerWheel(reactor, timer_resolution(settings))
        #: what the sessions last saw of each mailbox (outlives a restarted session)
        self.marks = MailboxMemory()
        self._session_settings = session_settings(settings)
        self.store = AccountStore(settings.database_url, reactor,
                                  flush_interval=settings.write_flush_interval)
        self.scans = ScanTrigger(settings, reactor)
        self.scans.setServiceParent(self)

        self.leases: Any = None
        account_filter = None
        if settings.leases_enabled:
            from .leases import LeaseKeeper

            self.leases = LeaseKeeper(settings, reactor=reactor,
                                      on_change=self._owned_changed,
                                      on_lost_ownership=self._ownership_lost)
            self.leases.setServiceParent(self)
            account_filter = self.leases.filter

        self.supervisor = Supervisor(self.store, self._new_session, settings, reactor,
                                     account_filter=account_filter)
        self.supervisor.setServiceParent(self)

        self.status: StatusService | None = None
        if settings.status_endpoint:
            resource = make_status_resource(
                ready=lambda: self.supervisor.ready,
                snapshot=self.snapshot,
                admin_secret=settings.admin_secret,
            )
            self.status = StatusService(settings.status_endpoint, resource, reactor)
            self.status.setServiceParent(self)

    def _new_session(self, account: Account) -> IService:
        return MailboxSession(account, self._session_settings, self.store, self.scans.request,
                              self.reactor, memory=self.marks, timers=self.timers)

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
        """One object per account for /status: the session's view plus its last scan."""
        out = []
        for entry in self.supervisor.snapshot():
            entry = dict(entry)
            entry["last_scan"] = self.scans.last_outcome(entry["id"])
            out.append(entry)
        return out

    def startService(self) -> None:
        s = self.settings
        log.info(
            "rebreak-idle starting: backend {backend}, refresh {refresh:g}s, heartbeat "
            "{heartbeat:g}s, IDLE renewal {renew:g}s, status server {status}, leases {leases}",
            backend=s.backend_url, refresh=s.refresh_interval, heartbeat=s.heartbeat_interval,
            renew=s.idle_renew, status=s.status_endpoint or "off", leases=s.leases,
        )
        super().startService()
        if self.handle_signals:
            gc_tuning.tune_for_many_sessions()
            self.reactor.callWhenRunning(self._install_signal_handlers)

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
        """Stop the children concurrently (each bounded by ``shutdown_timeout``); the lease
        keeper last, so that no other replica takes an account over while its session is
        still logging out."""
        log.info("rebreak-idle stopping: {n} sessions", n=len(self.supervisor.sessions))
        if self.handle_signals:
            gc_tuning.stopping()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        Service.stopService(self)
        children = [c for c in reversed(list(self)) if c is not self.leases]
        await DeferredList([maybeDeferred(c.stopService) for c in children],
                           consumeErrors=True)
        if self.leases is not None:
            await maybeDeferred(self.leases.stopService).addErrback(
                lambda f: log.failure("releasing leases failed", f))
        log.info("rebreak-idle stopped")


def makeService(settings: Settings, reactor: Any = None) -> Daemon:
    """The daemon's top service for ``settings``. Without ``reactor`` (the commands) it runs
    on the global reactor and owns SIGTERM/SIGINT (graceful stop, exit 0)."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        return Daemon(settings, global_reactor, handle_signals=True)
    return Daemon(settings, reactor)
