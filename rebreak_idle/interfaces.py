"""The seams between the rooms (docs/design.md): small interfaces, nothing more."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from twisted.application.service import IService
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


__all__ = ["Holdoff", "IAccountSource", "IHoldoffRecorder", "IRecorder", "ISession",
           "OnNewMail"]


class IRecorder(Interface):
    """Where a session reports what the app shows (CONTRACT §3 status columns).

    Calls return at once; the recorder owns buffering, retries and error logging.
    """

    def record_error(account_id: str, text: str) -> None:
        """A connect or login failed: store ``text`` (never a secret) and the time."""

    def clear_error(account_id: str) -> None:
        """A login succeeded: clear last_connect_error and last_connect_error_at."""

    def record_heartbeat(account_id: str) -> None:
        """IDLE was entered or a heartbeat NOOP succeeded: store the time."""


class IAccountSource(Interface):
    """Where the supervisor reads the accounts to watch (the store, CONTRACT §3)."""

    def active() -> Deferred:
        """Fire with the active rows as dicts: ``account.COLUMNS`` plus
        ``last_connect_error`` (the stored text) and ``heartbeat_age`` (seconds since the
        stored heartbeat, or None); fail when they cannot be read."""

    def record_error(account_id: str, text: str) -> None:
        """A row cannot be watched: store ``text`` (never a secret) and the time."""


#: ``on_new_mail(account, exists, reason)`` with reason ``"exists"`` or ``"connected"``; may
#: return a Deferred that fires True once the backend acknowledged (2xx) a scan sent after
#: this request (then the session remembers the mailbox mark it had), False otherwise.
#: An extra folder's trigger adds ``mailbox=<folder name>``.
OnNewMail = Callable[..., "Deferred[bool] | None"]


class ISession(IService):
    """What one account's session offers the supervisor: a service (start, stop with
    LOGOUT; ``stopService`` fires once the connection is gone) for one account, and its
    view for /status."""

    account = Attribute("The Account the session watches (its connection_key tells "
                        "whether a changed row needs a new session).")
    last_heartbeat_at = Attribute("Reactor time of the last heartbeat, or None.")
    state = Attribute("The session's State (session/states.py); each change moves the "
                      "daemon's StateTally, which the status page and /metrics count.")
    last_exists_at = Attribute("Reactor time of the last EXISTS seen, or None.")
    last_error = Attribute("The last error shown for the account (no secret), or None.")

    def snapshot() -> dict:
        """JSON-able state for /status: id, email, state, last error, last heartbeat,
        last event (never a secret)."""


class Holdoff(NamedTuple):
    """One account's credential hold-off: ``strikes`` rejections in a row, the next login
    not before ``until`` (epoch seconds), for the login whose keyed tag is ``tag``;
    ``error`` / ``error_at``: the account's stored ``last_connect_error`` and its time, as
    read with the hold-off (None when saved)."""

    strikes: int
    until: float  # epoch seconds
    tag: str
    error: str | None = None
    error_at: float | None = None  # epoch seconds


class IHoldoffRecorder(Interface):
    """Where a session keeps its credential hold-off across restarts (the daemon's
    implementation is ``db.holdoffs.HoldoffStore``). ``save`` and ``clear`` return at once;
    the recorder owns the writes and their error logging."""

    def get(account_id: str) -> Deferred:
        """Fire with the account's :class:`Holdoff` or None; never fail."""

    def save(account_id: str, holdoff: Holdoff) -> None:
        """Keep ``holdoff`` for the account (a credential rejection)."""

    def clear(account_id: str) -> None:
        """Forget the account's hold-off (a successful login)."""

    def tag(account: Any) -> str:
        """A keyed tag of what a login of ``account`` uses (host, port, security, username,
        method, secret) that tells "same login" without revealing the secret."""
