"""The session's one timer and what it runs (a mixin of
:class:`~rebreak_idle.session.session.MailboxSession`): the heartbeat (DONE, NOOP, the extra
folders' STATUS and IDLE in one write), the IDLE renewal, the poll of a server without
IDLE, and the scans of extra folders (:mod:`rebreak_idle.session.folders`) that changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .. import imap
from ..imap.listing import ListEntry
from .folders import FolderWatch, resolve
from .mailbox_marks import MailboxMark
from .states import State

if TYPE_CHECKING:
    from ..config import SessionSettings, Settings

__all__ = ["HeartbeatLoop", "timer_resolution"]

log = Logger(namespace="rebreak_idle.session")


def timer_resolution(settings: SessionSettings | Settings) -> float:
    """Tick of the sessions' :class:`~rebreak_idle.timing.wheel.TimerWheel`: 1 s, or a twentieth of
    the shortest heartbeat, poll or command interval when that is shorter (so a timer is
    never more than 5 % of its interval late)."""
    shortest = min(settings.heartbeat_interval, settings.poll_interval,
                   settings.noop_timeout, settings.command_timeout)
    return max(0.001, min(1.0, shortest / 20))


class HeartbeatLoop:
    """Timer, heartbeat, renewal, poll and extra folders of a session (no state of its
    own besides ``_folders``, the current connection's :class:`FolderWatch` or None)."""

    _folders: FolderWatch | None = None
    # provided by the session
    account: Any
    running: bool
    state: State
    _client: imap.IdleClient | None
    _settings: Any
    _reactor: Any
    _recorder: Any
    _timers: Any
    _timer: Any
    _memory: Any
    _on_new_mail: Any
    _last_heartbeat: float | None
    _idle_since: float
    _cancel_timer: Any
    _step_failed: Any

    # -- extra folders ------------------------------------------------------------------

    async def _watch_folders(self, client: imap.IdleClient) -> None:
        """After SELECT: find the extra folders (LIST) and read their marks (STATUS)."""
        if self._folders is not None:  # (off by default: no attribute per session then)
            self._folders = None
        specs = self._settings.extra_folders
        if not specs:
            return
        refused: list[ListEntry] = []
        watch = FolderWatch(await resolve(client, specs, refused))
        for entry in refused:
            log.info("{label} folder {folder} not watched: its name has control "
                     "characters", label=self.account.label,
                     folder=repr(entry.name), account_id=self.account.id)
        await watch.check(client, self._memory, self.account.id)
        if client is self._client:
            self._folders = watch
            log.debug("{label} watching folders {names}", label=self.account.label,
                      names=watch.names, account_id=self.account.id)

    def _folders_checked(self, connecting: bool = False,
                         client: imap.IdleClient | None = None) -> None:
        watch = self._folders
        if watch is None or not self.running or (client is not None
                                                 and client is not self._client):
            return
        for name, mark in watch.changes(self._memory, self.account.id, connecting):
            self._folder_mail(watch, name, mark, "connected" if connecting else "exists")

    def _folder_mail(self, watch: FolderWatch, name: str, mark: MailboxMark,
                     reason: str) -> None:
        """The scan trigger of folder ``name`` (one field more than INBOX's); its 2xx
        makes ``mark`` the folder's acknowledged mark."""
        account = self.account
        try:
            acked = self._on_new_mail(account, mark.exists, reason, mailbox=name)
        except Exception:
            log.failure("{label} on_new_mail failed", label=account.label,
                        account_id=account.id)
            watch.settled(name, mark)
            return

        def answered(ok: object) -> None:
            watch.settled(name, mark)
            if ok is True and self.running:  # not after stop (see _acknowledged)
                self._memory.remember(account.id, mark, name)

        if isinstance(acked, Deferred):
            acked.addCallback(answered)
            acked.addErrback(lambda f: log.failure("remembering a mark failed", f))
        else:
            watch.settled(name, mark)

    # -- the timer ----------------------------------------------------------------------

    def _heartbeat(self) -> None:
        self._last_heartbeat = self._reactor.seconds()
        self._recorder.record_heartbeat(self.account.id)

    def _schedule(self) -> None:
        """Arm the one timer for the next heartbeat, renewal or poll."""
        settings = self._settings
        base = self._last_heartbeat
        assert base is not None  # the connect recorded the first one
        if self.state is State.POLLING:
            due = base + settings.poll_interval
        else:
            due = min(self._idle_since + settings.idle_renew, base + settings.heartbeat_interval)
        self._cancel_timer()
        self._timer = self._timers.callLater(due - self._reactor.seconds(), self._tick)

    def _tick(self) -> None:
        self._timer = None
        client = self._client
        if client is None or not self.running:
            return
        if self.state is State.POLLING:
            step = Deferred.fromCoroutine(self._poll(client))
        elif self._reactor.seconds() >= ((self._last_heartbeat or 0.0)
                                         + self._settings.heartbeat_interval):
            # DONE, NOOP and IDLE in one write; the NOOP's OK records the heartbeat. No
            # answer to DONE or NOOP within noop_timeout fails with CommandTimeout and the
            # client closes the connection (half-open TCP, NAT drop). Plain callbacks, not
            # a coroutine: this runs 10,000 times per heartbeat interval.
            watch = self._folders
            between = () if watch is None else watch.status_commands(
                client, self._settings.noop_timeout, lambda: self._folders_checked(
                    client=client))
            step = client.done_noop(idle_again=True, between=between)
            step.addCallback(self._heartbeat_answered, client)
        else:
            step = Deferred.fromCoroutine(self._renew(client))
        step.addErrback(self._step_failed, client)

    def _heartbeat_answered(self, _: object, client: imap.IdleClient) -> Deferred[None]:
        self._heartbeat()
        return client.idle().addCallback(self._idling_again, client)

    def _idling_again(self, _: object, client: imap.IdleClient) -> None:
        self._idle_since = self._reactor.seconds()
        if client is self._client and self.running:
            self._schedule()

    async def _renew(self, client: imap.IdleClient) -> None:
        """End IDLE with DONE and enter it again (no heartbeat was due)."""
        log.info("[idle/{email}] idle renewing (25min threshold)",
                 email=self.account.email, account_id=self.account.id)
        await client.done()
        await client.idle()
        self._idling_again(None, client)

    async def _poll(self, client: imap.IdleClient) -> None:
        await client.noop()
        self._heartbeat()
        if self._folders is not None:
            await self._folders.check(client)
            self._folders_checked()
        if client is self._client and self.running:
            self._schedule()

