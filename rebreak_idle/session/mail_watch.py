"""What a session's mailboxes say and which scans to ask for: INBOX's live count and
candidate mark, the extra folders of the connection (:mod:`rebreak_idle.session.folders`), the
scan requests (``on_new_mail``) and the marks remembered once a scan covering them was
acknowledged (2xx) in the daemon's :class:`~rebreak_idle.session.mailbox_marks.MailboxMemory`.

:class:`MailWatch` is a collaborator of :class:`~rebreak_idle.session.session.MailboxSession`, made
once per session; it reaches its session only through :class:`MailOwner`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .. import imap, metrics
from ..accounts.account import Account
from ..imap.listing import ListEntry
from ..interfaces import OnNewMail
from ..ops.log_folding import EventFold, exists_fold
from .folders import FolderWatch, resolve
from .mailbox_marks import MailboxMark, MailboxMemory

__all__ = ["MailOwner", "MailWatch"]

log = Logger(namespace="rebreak_idle.session")


@runtime_checkable
class MailOwner(Protocol):
    """What the mail watch asks of its session."""

    @property
    def account(self) -> Account:
        """The watched account (its id keys the marks; its address names the log lines)."""

    @property
    def running(self) -> bool:
        """False once the session stops: no scan asked for, no mark remembered after."""

    def current(self, client: imap.IdleClient) -> bool:
        """``client`` is the session's live connection and the session runs."""


class MailWatch:
    """INBOX's count and candidate mark, the extra folders and the scans of one session.
    ``timers``: the shared TimerWheel (a flood of EXISTS folds into counts on it)."""

    __slots__ = ("_exists_log", "_memory", "_on_new_mail", "_owner", "_reactor", "_settings",
                 "_timers", "exists", "folders", "last_exists", "last_scan_reason", "mark")

    def __init__(self, owner: MailOwner, on_new_mail: OnNewMail, memory: MailboxMemory,
                 settings: Any, reactor: Any, timers: Any) -> None:
        self._owner = owner
        self._on_new_mail = on_new_mail
        self._memory = memory
        self._settings = settings
        self._reactor = reactor
        self._timers = timers
        self._exists_log: EventFold | None = None
        #: the live count, once SELECT has answered
        self.exists = 0
        #: INBOX's candidate mark: remembered once a scan covering it is acknowledged
        self.mark: MailboxMark | None = None
        #: the extra folders of the current connection (off by default: None)
        self.folders: FolderWatch | None = None
        #: (reactor time, count) of the last EXISTS seen, for /status
        self.last_exists: tuple[float, int] | None = None
        self.last_scan_reason: str | None = None

    # -- INBOX ----------------------------------------------------------------------------

    def selected(self, client: imap.IdleClient, mark: MailboxMark) -> None:
        """SELECT answered with ``mark``: from now on EXISTS and EXPUNGE move the count."""
        self.exists = mark.exists
        self.mark = mark
        client.on_exists = self.on_exists
        client.on_expunge = self.on_expunge

    def status(self, mark: MailboxMark) -> None:
        """Courier: the count and UIDNEXT from one STATUS answer."""
        self.mark = mark
        self.exists = mark.exists

    def changed(self) -> bool:
        """The candidate mark is not covered by the acknowledged one."""
        mark = self.mark
        return mark is not None and mark.needs_scan(
            self._memory.get(self._owner.account.id))

    def on_exists(self, count: int) -> None:
        owner = self._owner
        if not owner.running:
            return  # after stop, nobody cares
        previous, self.exists = self.exists, count
        if count <= previous:
            return
        if self.mark is not None:
            self.mark = self.mark.after_new_mail(previous, count)
        self.last_exists = (self._reactor.seconds(), count)
        metrics.EXISTS_EVENTS.inc()
        if self._exists_log is None:  # made at the first event: a flood folds into counts
            account = owner.account
            self._exists_log = exists_fold(self._timers, account.email, account.id,
                                           lambda: self.exists)
        self._exists_log.event()
        self.new_mail(count, "exists")

    def on_expunge(self, seq: int) -> None:
        if self.exists:
            self.exists -= 1
        if self.mark is not None:
            self.mark = self.mark.after_expunge()

    def flush(self) -> None:
        """The session stops: log the folded EXISTS counts now."""
        if self._exists_log is not None:
            self._exists_log.flush()

    def new_mail(self, exists: int, reason: str) -> None:
        """Ask for a scan; a Deferred returned by ``on_new_mail`` fires True once a scan
        covering it was acknowledged (2xx): the candidate mark is remembered then."""
        self.last_scan_reason = reason
        mark = self.mark
        account = self._owner.account
        try:
            acked = self._on_new_mail(account, exists, reason)
        except Exception:
            log.failure("{label} on_new_mail failed", label=account.label,
                        account_id=account.id)
            return
        if isinstance(acked, Deferred) and mark is not None:
            acked.addCallback(self._acknowledged, mark)
            acked.addErrback(lambda f: log.failure("remembering a mark failed", f))

    def _acknowledged(self, ok: object, mark: MailboxMark) -> None:
        """The scan asked for with ``mark`` as the candidate ended: a 2xx answer covers
        it (the request went out after the session saw it), so it is the mark now. Not
        once the session has stopped: the account may be forgotten (its row deleted) or
        watched by a newer session (never a miss: at worst one more scan)."""
        if ok is True and self._owner.running:
            self._memory.remember(self._owner.account.id, mark)

    # -- extra folders --------------------------------------------------------------------

    async def watch_folders(self, client: imap.IdleClient) -> None:
        """After SELECT: find the extra folders (LIST) and read their marks (STATUS)."""
        self.folders = None
        specs = self._settings.extra_folders
        if not specs:
            return
        account = self._owner.account
        refused: list[ListEntry] = []
        watch = FolderWatch(await resolve(client, specs, refused))
        for entry in refused:
            log.info("{label} folder {folder} not watched: its name has control "
                     "characters", label=account.label,
                     folder=repr(entry.name), account_id=account.id)
        await watch.check(client, self._memory, account.id)
        if self._owner.current(client):
            self.folders = watch
            log.debug("{label} watching folders {names}", label=account.label,
                      names=watch.names, account_id=account.id)

    def status_commands(self, client: imap.IdleClient, timeout: float) -> Any:
        """The extra folders' STATUS commands for the heartbeat's one write."""
        watch = self.folders
        if watch is None:
            return ()
        return watch.status_commands(client, timeout,
                                     lambda: self.folders_checked(client=client))

    def check_folders(self, client: imap.IdleClient) -> Deferred[None] | None:
        """The poll's STATUS of each extra folder, then the scans of changed ones."""
        watch = self.folders
        if watch is None:
            return None
        return Deferred.fromCoroutine(watch.check(client)).addCallback(
            lambda _: self.folders_checked())

    def folders_checked(self, connecting: bool = False,
                        client: imap.IdleClient | None = None) -> None:
        watch = self.folders
        owner = self._owner
        if watch is None or not owner.running or (client is not None
                                                  and not owner.current(client)):
            return
        account_id = owner.account.id
        for name, mark in watch.changes(self._memory, account_id, connecting):
            self._folder_mail(watch, name, mark, "connected" if connecting else "exists")

    def _folder_mail(self, watch: FolderWatch, name: str, mark: MailboxMark,
                     reason: str) -> None:
        """The scan trigger of folder ``name`` (one field more than INBOX's); its 2xx
        makes ``mark`` the folder's acknowledged mark."""
        account = self._owner.account
        try:
            acked = self._on_new_mail(account, mark.exists, reason, mailbox=name)
        except Exception:
            log.failure("{label} on_new_mail failed", label=account.label,
                        account_id=account.id)
            watch.settled(name, mark)
            return

        def answered(ok: object) -> None:
            watch.settled(name, mark)
            if ok is True and self._owner.running:  # not after stop (see _acknowledged)
                self._memory.remember(account.id, mark, name)

        if isinstance(acked, Deferred):
            acked.addCallback(answered)
            acked.addErrback(lambda f: log.failure("remembering a mark failed", f))
        else:
            watch.settled(name, mark)
