"""What a session must respect at the provider, as one collaborator of
:class:`~rebreak_idle.session.session.MailboxSession`: the host budget
(:mod:`rebreak_idle.session.host_budget`) around every connect attempt, the credential strikes and
hold-offs kept across restarts (an ``interfaces.IHoldoffRecorder``), connections closed before the
greeting, and the OAuth token re-read (:mod:`rebreak_idle.session.tokens`).

:class:`ProviderLimits` holds no reference to its session: each method takes what it
needs (the account, the state) and returns what the session acts on.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint

from ..accounts.account import Account
from ..interfaces import Holdoff, IHoldoffRecorder
from .host_budget import GatedEndpoint, HostBudget, Slot
from .reconnect_policy import Outcome, settle
from .tokens import Reread, fresher_account

__all__ = ["ProviderLimits"]


class ProviderLimits:
    """One session's host budget slot, credential strikes, early closes and token
    re-read. ``reread``: the row's newer OAuth token (None: no re-read); ``budget``: the
    daemon's host budget (None or unlimited: none); ``holdoffs``: where hold-offs are kept
    across restarts (None: not kept)."""

    __slots__ = ("_budget", "_holdoffs", "_reread", "_slot", "early_closes", "strikes")

    def __init__(self, reread: Reread | None = None, budget: HostBudget | None = None,
                 holdoffs: IHoldoffRecorder | None = None) -> None:
        self._reread = reread
        self._budget = budget if budget is not None and budget.limited else None
        self._holdoffs = holdoffs
        self._slot: Slot | None = None  # this attempt's admission by the host budget
        #: consecutive credential rejections
        self.strikes = 0
        #: connections closed before the greeting, in a row
        self.early_closes = 0

    @property
    def budget(self) -> HostBudget | None:
        """The host budget the attempts pass (None: not limited)."""
        return self._budget

    # -- the host budget ------------------------------------------------------------------

    def endpoint(self, host: str,
                 bound: Callable[[str | None], IStreamClientEndpoint]
                 ) -> IStreamClientEndpoint:
        """The attempt's endpoint: ``bound(source address)`` once the host budget admits
        it (at once without a budget)."""
        if self._budget is None:
            return bound(None)
        return GatedEndpoint(self._budget, host, bound, self._admitted)

    @property
    def admitted(self) -> bool:
        """The current attempt holds a slot of the host budget (or no budget applies):
        a connecting session that is not admitted waits for the budget."""
        return self._budget is None or self._slot is not None

    def _admitted(self, slot: Slot) -> None:
        self.release()
        self._slot = slot

    def ready(self) -> None:
        """The attempt logged in and selected: the host budget counts it as good."""
        if self._slot is not None:
            self._slot.ready()

    def release(self) -> None:
        """Give the attempt's budget slot back (the connection or attempt ended)."""
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()

    # -- credentials ----------------------------------------------------------------------

    def saved_holdoff(self, account: Account) -> Deferred[Holdoff | None]:
        """The hold-off an earlier session of ``account`` saved (this process before a
        restart, another replica before a takeover), None unless the login (username,
        host, port, security, method, secret) is still the one it was saved for. The
        strikes go on counting from the saved ones."""
        holdoffs = self._holdoffs
        if holdoffs is None:
            return succeed(None)

        def same_login(held: Holdoff | None) -> Holdoff | None:
            if held is None or held.tag != holdoffs.tag(account):
                return None
            self.strikes = held.strikes
            return held

        return holdoffs.get(account.id).addCallback(same_login)

    def strike(self, account: Account, until: float) -> None:
        """One more credential rejection, held off until ``until``: count and keep it."""
        self.strikes += 1
        if self._holdoffs is not None:
            self._holdoffs.save(account.id, Holdoff(
                self.strikes, until, self._holdoffs.tag(account)))

    def logged_in(self, account_id: str) -> None:
        """A login succeeded: no strike, no early close, no hold-off kept."""
        self.strikes = self.early_closes = 0
        if self._holdoffs is not None:
            self._holdoffs.clear(account_id)

    def settle(self, outcome: Outcome, *, connecting: bool, ready: bool, uptime: float,
               healthy_after: float) -> None:
        """The outcome's final class (:func:`~rebreak_idle.session.reconnect_policy. settle`),
        counting connections closed before the greeting (``connecting``: no greeting yet)."""
        early = connecting and outcome.weak
        self.early_closes = self.early_closes + 1 if early else 0
        settle(outcome, ready=ready, uptime=uptime, healthy_after=healthy_after,
               early_closes=self.early_closes)

    async def fresher(self, account: Account) -> Account | None:
        """The row's newer OAuth token than ``account``'s, or None."""
        return await fresher_account(self._reread, account)
