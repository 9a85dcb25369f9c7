"""The session's heartbeat: one timer per connection and what it runs — the heartbeat
(DONE, NOOP, the extra folders' STATUS and IDLE in one write), the IDLE renewal and the
poll of a server without IDLE.

:class:`Heartbeat` is a collaborator of :class:`~rebreak_idle.session.session.MailboxSession`, made
once per session and told when a connection is ready (:meth:`Heartbeat.start`) and when it
ends (:meth:`Heartbeat.stop`). It reaches its session only through the narrow
:class:`HeartbeatOwner` protocol and the extra folders through :class:`FolderScans`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import imap

if TYPE_CHECKING:
    from ..config import SessionSettings, Settings

__all__ = ["FolderScans", "Heartbeat", "HeartbeatOwner", "timer_resolution"]

log = Logger(namespace="rebreak_idle.session")


def timer_resolution(settings: SessionSettings | Settings) -> float:
    """Tick of the sessions' :class:`~rebreak_idle.timing.wheel.TimerWheel`: 1 s, or a twentieth of
    the shortest heartbeat, poll or command interval when that is shorter (so a timer is
    never more than 5 % of its interval late)."""
    shortest = min(settings.heartbeat_interval, settings.poll_interval,
                   settings.noop_timeout, settings.command_timeout)
    return max(0.001, min(1.0, shortest / 20))


@runtime_checkable
class HeartbeatOwner(Protocol):
    """What the heartbeat asks of its session."""

    @property
    def email(self) -> str:
        """The account's address, for the renewal's log line."""

    @property
    def account_id(self) -> str:
        """The account's id, for the recorder and the log fields."""

    @property
    def client(self) -> imap.IdleClient | None:
        """The live connection's client, or None."""

    def current(self, client: imap.IdleClient) -> bool:
        """``client`` is the session's live connection and the session runs."""

    def step_failed(self, failure: Failure, client: imap.IdleClient) -> None:
        """A heartbeat, renewal or poll step of ``client`` failed: close the connection."""


@runtime_checkable
class FolderScans(Protocol):
    """What the heartbeat asks of the extra folders of the connection (the session's
    :class:`~rebreak_idle.session.mail_watch.MailWatch`)."""

    def status_commands(self, client: imap.IdleClient, timeout: float) -> Any:
        """The STATUS commands to write between DONE + NOOP and IDLE (may be empty)."""

    def check_folders(self, client: imap.IdleClient) -> Deferred[None] | None:
        """STATUS of each extra folder, then ask for the scans of changed ones (None when
        no folder is watched)."""


class Heartbeat:
    """Heartbeats, renewals and polls of one session's connections. ``timers``: the
    TimerWheel the daemon's sessions share; ``recorder``: the session's IRecorder (its
    ``record_heartbeat``)."""

    __slots__ = ("_folders", "_idle_since", "_owner", "_polling", "_reactor", "_recorder",
                 "_settings", "_timer", "_timers", "last_at")

    def __init__(self, owner: HeartbeatOwner, folders: FolderScans, settings: Any,
                 recorder: Any, reactor: Any, timers: Any) -> None:
        self._owner = owner
        self._folders = folders
        self._settings = settings
        self._recorder = recorder
        self._reactor = reactor
        self._timers = timers
        self._timer: Any = None
        self._idle_since = 0.0
        self._polling = False
        #: reactor time of the last heartbeat (IDLE entered or a NOOP answered), or None
        self.last_at: float | None = None

    # -- the connection's life ------------------------------------------------------------

    def start(self, client: imap.IdleClient, polling: bool) -> None:
        """The connection is logged in and idling (or, ``polling``, without IDLE): record
        the first heartbeat and arm the timer."""
        self._polling = polling
        self._idle_since = self._reactor.seconds()
        self.beat()
        self._schedule()

    def stop(self) -> None:
        """The connection ended or the session stops: no more timer."""
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    @property
    def armed(self) -> bool:
        """A heartbeat, renewal or poll is scheduled."""
        return self._timer is not None

    def beat(self) -> None:
        """Record a heartbeat now."""
        self.last_at = self._reactor.seconds()
        self._recorder.record_heartbeat(self._owner.account_id)

    def idle_ended(self, client: imap.IdleClient) -> Deferred[None]:
        """The server ended IDLE by itself: enter it again; the timer waits for the
        server's answer (a heartbeat in between would find the client not idling)."""
        self.stop()
        return client.idle().addCallback(self._idling_again, client)

    # -- the timer ------------------------------------------------------------------------

    def _schedule(self) -> None:
        """Arm the one timer for the next heartbeat, renewal or poll."""
        settings = self._settings
        base = self.last_at
        assert base is not None  # start() recorded the first one
        if self._polling:
            due = base + settings.poll_interval
        else:
            due = min(self._idle_since + settings.idle_renew, base + settings.heartbeat_interval)
        self.stop()
        self._timer = self._timers.callLater(due - self._reactor.seconds(), self._tick)

    def _tick(self) -> None:
        self._timer = None
        owner = self._owner
        client = owner.client
        if client is None or not owner.current(client):
            return
        if self._polling:
            step = Deferred.fromCoroutine(self._poll(client))
        elif self._reactor.seconds() >= ((self.last_at or 0.0)
                                         + self._settings.heartbeat_interval):
            # DONE, NOOP and IDLE in one write; the NOOP's OK records the heartbeat. No
            # answer to DONE or NOOP within noop_timeout fails with CommandTimeout and the
            # client closes the connection (half-open TCP, NAT drop). Plain callbacks, not
            # a coroutine: this runs 10,000 times per heartbeat interval.
            between = self._folders.status_commands(client, self._settings.noop_timeout)
            step = client.done_noop(idle_again=True, between=between)
            step.addCallback(self._heartbeat_answered, client)
        else:
            step = Deferred.fromCoroutine(self._renew(client))
        step.addErrback(owner.step_failed, client)

    def _heartbeat_answered(self, _: object, client: imap.IdleClient) -> Deferred[None]:
        self.beat()
        return client.idle().addCallback(self._idling_again, client)

    def _idling_again(self, _: object, client: imap.IdleClient) -> None:
        self._idle_since = self._reactor.seconds()
        if self._owner.current(client):
            self._schedule()

    async def _renew(self, client: imap.IdleClient) -> None:
        """End IDLE with DONE and enter it again (no heartbeat was due)."""
        owner = self._owner
        log.info("[idle/{email}] idle renewing (25min threshold)",
                 email=owner.email, account_id=owner.account_id)
        await client.done()
        await client.idle()
        self._idling_again(None, client)

    async def _poll(self, client: imap.IdleClient) -> None:
        await client.noop()
        self.beat()
        checked = self._folders.check_folders(client)
        if checked is not None:
            await checked
        if self._owner.current(client):
            self._schedule()
