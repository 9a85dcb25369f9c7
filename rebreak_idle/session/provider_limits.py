"""The provider-facing part of :class:`~rebreak_idle.session.session.MailboxSession`, a mixin: the
host budget (:mod:`rebreak_idle.session.host_budget`) around every connect attempt, credential
hold-offs kept across restarts (an ``interfaces.IHoldoffRecorder``), and OAuth tokens that
are renewed without a reconnect (:mod:`rebreak_idle.session.tokens`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import imap
from ..accounts.account import Account
from ..accounts.destinations import policy_for
from ..interfaces import Holdoff, IHoldoffRecorder
from ..net.connecting import server_endpoint
from ..timing.backoff import format_delay
from .host_budget import GatedEndpoint, HostBudget, Slot
from .provider_signals import CREDENTIALS, RECYCLE
from .reconnect_policy import Outcome, classify, settle
from .states import State
from .tokens import Reread, fresher_account

__all__ = ["ProviderLimits"]

log = Logger(namespace="rebreak_idle.session")


class ProviderLimits:
    """Mixed into MailboxSession (which provides the attributes declared here)."""

    account: Account
    running: bool
    state: State
    _reactor: Any
    _timers: Any
    _settings: Any
    _endpoint: IStreamClientEndpoint | None
    _service: Any
    _client: Any
    _delay: float | None
    _timer: Any
    _strikes: int
    _early_closes: int
    _healthy_after: float
    _recorder: Any
    _last_error: str | None
    _last_error_at: float | None
    _last_class: str | None
    _set_state: Callable[[State], None]
    _start_client: Callable[[], None]
    _tls_options: Callable[[], Any]

    def _init_limits(self, reread: Reread | None, budget: HostBudget | None,
                     holdoffs: IHoldoffRecorder | None) -> None:
        self._reread = reread
        self._budget = budget if budget is not None and budget.limited else None
        self._holdoffs = holdoffs
        self._slot: Slot | None = None  # this attempt's admission by the host budget
        self._queued = False  # waiting for the host budget
        self._early_closes = 0  # connections closed before the greeting, in a row

    # -- OAuth ----------------------------------------------------------------------------

    def renew_secret(self, account: Account) -> bool:
        """Take ``account``'s newer OAuth token for the next login, keeping the connection;
        False (the caller restarts the session) while waiting out a credential hold-off."""
        if self.state is State.AUTH_FAILED:
            return False
        self.account = account
        return True

    async def _login_xoauth2(self, client: Any, account: Account) -> Account:
        """AUTHENTICATE XOAUTH2; a refused token re-reads the row once and, when the backend
        wrote a newer token, tries that on the same connection. Returns the account used."""
        try:
            await client.login_xoauth2(account.username, account.secret)
            return account
        except imap.AuthenticationFailed as refused:
            fresh = None
            if classify(Failure(refused)).kind == CREDENTIALS:
                fresh = await fresher_account(self._reread, account)
            if fresh is None or client is not self._client or not self.running:
                raise
        self.account = fresh
        await client.login_xoauth2(fresh.username, fresh.secret)
        return fresh

    # -- hold-offs across restarts --------------------------------------------------------

    def _begin(self) -> None:
        """startService: connect now, or after a hold-off saved by an earlier run."""
        if self._holdoffs is None:
            self._start_client()
        else:
            self._holdoffs.get(self.account.id).addCallback(self._resume)

    def _resume(self, held: Holdoff | None) -> None:
        """Start, or first wait out a credential hold-off saved by an earlier session of
        the account (this process before a restart, or another replica before a takeover)
        unless the login (username, host, port, security, method, secret) changed since.
        The strikes go on counting from the saved ones."""
        if not self.running or self._service is not None:
            return
        now, holdoffs = self._reactor.seconds(), self._holdoffs
        if held is None or holdoffs is None or held.tag != holdoffs.tag(self.account):
            self._start_client()
            return
        self._strikes = held.strikes
        self._last_class = CREDENTIALS
        self._last_error = held.error
        self._last_error_at = held.error_at
        if held.until <= now:
            self._start_client()
            return
        self._delay = held.until - now
        self._set_state(State.AUTH_FAILED)
        log.info("[idle/{email}] credentials were rejected before a restart or takeover; "
                 "reconnecting in {delay}s (attempt {attempt})", email=self.account.email,
                 delay=format_delay(self._delay), attempt=held.strikes,
                 account_id=self.account.id)
        self._timer = self._timers.callLater(self._delay, self._start_client)

    def _settle(self, outcome: Outcome, uptime: float) -> None:
        """The outcome's final class (:func:`~rebreak_idle.session.reconnect_policy.settle`),
        counting connections closed before the greeting."""
        early = self.state is State.CONNECTING and outcome.weak
        self._early_closes = self._early_closes + 1 if early else 0
        settle(outcome, ready=self.state.ready, uptime=uptime,
               healthy_after=self._healthy_after, early_closes=self._early_closes)

    def _report(self, outcome: Outcome, now: float) -> None:
        """Record and log why the connection ended; a recycle is routine: the mailbox is
        fine, nothing is recorded and no ``connect failed`` line is logged."""
        account = self.account
        if outcome.cause == "descriptors":  # the process's limit: not the account's error
            log.warn("[idle/{email}] connect postponed: {reason}; not the account's error "
                     "(docs/operations.md, \"File descriptors\")", email=account.email,
                     reason=outcome.text, account_id=account.id)
            return
        if outcome.kind == RECYCLE:
            log.info("[idle/{email}] connection recycled by the server: {reason}",
                     email=account.email, reason=outcome.text, account_id=account.id)
            return
        self._last_error, self._last_error_at = outcome.text, now
        self._recorder.record_error(account.id, outcome.text)
        log.warn("[idle/{email}] connect failed: {error}", email=account.email,
                 error=outcome.text, cause=outcome.cause, kind=outcome.kind,
                 account_id=account.id)

    def _strike(self, until: float) -> None:
        """One more credential rejection, held off until ``until``: count and keep it."""
        self._strikes += 1
        if self._holdoffs is not None:
            self._holdoffs.save(self.account.id, Holdoff(
                self._strikes, until, self._holdoffs.tag(self.account)))

    def _logged_in(self) -> None:
        self._strikes = self._early_closes = 0
        if self._holdoffs is not None:
            self._holdoffs.clear(self.account.id)

    # -- the host budget ------------------------------------------------------------------

    def _make_endpoint(self) -> IStreamClientEndpoint:
        if self._budget is None:
            return self._bound_endpoint(None)
        self._queued = True
        return GatedEndpoint(self._budget, self.account.host, self._bound_endpoint,
                             self._admitted)

    def _bound_endpoint(self, source: str | None) -> IStreamClientEndpoint:
        if self._endpoint is not None:
            return self._endpoint
        return server_endpoint(self._reactor, self.account, self._settings.command_timeout,
                               self._tls_options,
                               policy_for(self._settings.allow_private_hosts), source)

    def _admitted(self, slot: Slot) -> None:
        self._release()
        self._slot = slot

    def _release(self) -> None:
        """Give the attempt's budget slot back (the connection or attempt ended)."""
        slot, self._slot = self._slot, None
        self._queued = False
        if slot is not None:
            slot.release()
