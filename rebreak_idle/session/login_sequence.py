"""The one login sequence of a connection, shared by the session and ``rebreak-idle probe``:
greeting → STARTTLS (``starttls`` rows) → login (PLAIN / LOGIN / XOAUTH2) → ID (RFC 2971,
when offered: some servers refuse SELECT without it) → SELECT INBOX → ``STATUS INBOX
(UIDNEXT MESSAGES)`` when SELECT told no UIDNEXT (Courier IMAP).

The capabilities that count are those after login: the client asks again when the login
answer carries none (Cyrus advertises IDLE only then).

:class:`LoginSequence` is a small object the owner composes: it tells the owner where it
is (:class:`Phase`, through ``on_phase``) and runs each command through ``step(name,
action)`` (the probe times and reports each; the session just awaits). It returns a
:class:`LoggedIn`: the account the login used (an OAuth row re-read may give a newer
token) and the mailbox's numbers.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..accounts.account import Account
from ..session_errors import SessionError
from .mailbox_marks import MailboxMark, status_mark
from .provider_signals import CLIENT_ID

__all__ = ["LoggedIn", "LoginSequence", "Phase", "Step"]

#: ``step(name, action)``: run ``action()`` (a Deferred or coroutine), return its result.
Step = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]


class Phase(enum.Enum):
    """Where the sequence is, as told to ``on_phase``."""

    GREETED = "greeted"                # greeting (and STARTTLS) done: capabilities known
    AUTHENTICATING = "authenticating"  # the login is about to be sent
    LOGGED_IN = "logged-in"            # the login succeeded (LoggedIn.account is the one)
    SELECTING = "selecting"            # SELECT is about to be sent
    SELECTED = "selected"              # SELECT answered: EXISTS/EXPUNGE move the count now


@dataclass
class LoggedIn:
    """What the sequence learnt. ``selected``: SELECT's answer (``IdleClient.select()``);
    ``mark``: its numbers; ``status``: when SELECT told no UIDNEXT, the mark whose count
    and UIDNEXT come from one STATUS answer
    (:func:`~rebreak_idle.session.mailbox_marks.status_mark`);
    ``uidnext``: SELECT's UIDNEXT, else the one STATUS told (None when neither did: the
    mark stays count-only)."""

    account: Account
    selected: dict[str, Any] | None = None
    mark: MailboxMark | None = None
    status: MailboxMark | None = None
    uidnext: int | None = None


async def _just_run(name: str, action: Callable[[], Awaitable[Any]]) -> Any:
    return await action()


def _ignore(_: object) -> None:
    return None


class LoginSequence:
    """One run of the sequence on ``client`` (an :class:`~rebreak_idle.imap.IdleClient`)
    for ``account``. ``tls_options()``: the TLS connection creator for STARTTLS;
    ``xoauth2(client, account)``: the XOAUTH2 login, returning the account it used
    (default: one ``login_xoauth2``); ``on_phase(phase, logged_in)``: told each
    :class:`Phase`; ``step``: see the module docstring."""

    def __init__(self, client: Any, account: Account, tls_options: Callable[[], Any], *,
                 xoauth2: Callable[[Any, Account], Awaitable[Account]] | None = None,
                 on_phase: Callable[[Phase, LoggedIn], None] | None = None,
                 step: Step | None = None) -> None:
        self._client = client
        self._tls_options = tls_options
        self._xoauth2 = xoauth2
        self._on_phase = on_phase
        self._step = _just_run if step is None else step
        self.result = LoggedIn(account)

    def _tell(self, phase: Phase) -> None:
        if self._on_phase is not None:
            self._on_phase(phase, self.result)

    async def run(self) -> LoggedIn:
        """The whole sequence; fails with the first command that fails (ID excepted: a
        refused ID is ignored)."""
        await self.greet()
        await self.login()
        await self.select()
        return self.result

    async def greet(self) -> None:
        """The greeting (the client's greeting deadline applies), then STARTTLS."""
        client, account = self._client, self.result.account
        await self._step("greeting", lambda: client.greeted)
        if account.security == "starttls":
            if not client.has_starttls:
                raise SessionError("protocol", "server does not offer STARTTLS")
            await self._step("starttls", lambda: client.startTLS(self._tls_options()))
        self._tell(Phase.GREETED)

    async def login(self) -> None:
        """The login, then ID when offered (after login: the capabilities that count)."""
        client, account = self._client, self.result.account
        self._tell(Phase.AUTHENTICATING)
        if account.auth_method == "xoauth2":
            xoauth2 = self._xoauth2
            if xoauth2 is None:
                await self._step("login", lambda: client.login_xoauth2(account.username,
                                                                       account.secret))
            else:
                self.result.account = await self._step("login",
                                                       lambda: xoauth2(client, account))
        else:
            await self._step("login", lambda: client.login(account.username, account.secret))
        self._tell(Phase.LOGGED_IN)
        if client.has_id:  # RFC 2971; some servers (163.com) refuse SELECT without it
            await self._step("id", lambda: client.id(CLIENT_ID).addErrback(_ignore))

    async def select(self) -> None:
        """SELECT INBOX; STATUS for UIDNEXT when SELECT told none (never a bare count if
        avoidable)."""
        client = self._client
        self._tell(Phase.SELECTING)
        info = await self._step("select", client.select)
        result = self.result
        result.selected = info
        result.mark = MailboxMark.from_select(info)
        result.uidnext = result.mark.uidnext
        self._tell(Phase.SELECTED)
        if result.uidnext is None:  # Courier: UIDNEXT only through STATUS
            selected = result.mark
            result.status = await self._step("status", lambda: status_mark(client, selected))
            result.uidnext = result.status.uidnext
