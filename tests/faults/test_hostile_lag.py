"""Reactor lag under a CPU flood (issue 24): hostile servers push full-length lines that
were costly to parse (``* CAPABILITY A= A= ...``, ``* X (a a a ...)``) as fast as the
daemon reads, while 100 other sessions on the same reactor heartbeat with a tight NOOP
deadline. On the real reactor over loopback; every wait is on an event with a deadline.

Before the parsers were made linear and unsolicited data left unparsed, each 64 KiB read
of such lines held the reactor for about 60 ms per hostile connection; the heartbeats'
NOOP answers waited behind them and missed their deadline. The CPU figures of the same
kind of flood are printed by ``bench/parsecost.py`` (docs/benchmarks.md)."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from rebreak_idle.accounts.account import Account
from rebreak_idle.config import session_settings
from rebreak_idle.session.mailbox_marks import MailboxMemory
from rebreak_idle.session.session import MailboxSession
from tests.support.recorder import Recorder
from tests.support.scripted_imap import ScriptedIMAPServer
from tests.support.session_servers import settings
from tests.support.wait import until

SESSIONS = 100
HOSTILE = ("capability-flood-idle", "parens-flood-idle") * 2
#: per hostile connection (the old parsers took about 8 s of CPU for all four)
FLOOD_BYTES = 2 * 1024 * 1024
HEARTBEAT = 0.5
NOOP_DEADLINE = 0.25


def _account(n: int, port: int, kind: str) -> Account:
    return Account(id=f"{kind}-{n}", user_id="user-1", email=f"{kind}{n}@example.test",
                   host="127.0.0.1", port=port, security="plain", username=f"{kind}{n}",
                   auth_method="password", secret="not-checked")


class ReactorLagTests(TestCase):
    timeout = 150

    def start(self, port: int, n: int, kind: str, recorder: Recorder) -> MailboxSession:
        def on_new_mail(a: Account, exists: int, reason: str) -> defer.Deferred:
            return defer.succeed(True)

        s = MailboxSession(_account(n, port, kind), session_settings(settings(
            heartbeat_interval=HEARTBEAT, noop_timeout=NOOP_DEADLINE)), recorder,
            on_new_mail, reactor, memory=MailboxMemory())
        s.startService()
        self.addCleanup(s.stopService)
        return s

    async def test_cpu_flood_does_not_delay_other_sessions(self) -> None:
        calm = ScriptedIMAPServer(reactor, capabilities="IMAP4rev1 IDLE")
        hostile = ScriptedIMAPServer(reactor, plan=list(HOSTILE),
                                     capabilities="IMAP4rev1 IDLE",
                                     stream_limit=FLOOD_BYTES)
        for server in (calm, hostile):
            self.addCleanup(server.stop)
        calm_port, hostile_port = calm.listen(), hostile.listen()
        recorder = Recorder(reactor)
        sessions = [self.start(calm_port, n, "calm", recorder) for n in range(SESSIONS)]
        await until(lambda: calm.idling() == SESSIONS, deadline=30.0)
        for n in range(len(HOSTILE)):
            self.start(hostile_port, n, "hostile", recorder)
        await until(lambda: sum(c.misbehaved for c in hostile.connections) >= len(HOSTILE),
                    deadline=30.0)
        flooding = [c for c in hostile.connections if c.misbehaved]
        # the whole flood is read (or its connection closed), then two more heartbeats
        await until(lambda: all(c.streamed >= FLOOD_BYTES or c.lost for c in flooding),
                    deadline=90.0)
        before = dict(recorder.beats)
        await until(lambda: all(recorder.beats[s.account.id] >= before.get(s.account.id, 0) + 2
                                for s in sessions), deadline=20.0)
        self.assertEqual([e for e in recorder.errors if e[1].startswith("calm")], [])
        self.assertEqual(calm.logins, SESSIONS)  # no NOOP deadline missed: nobody reconnected
        self.assertTrue(all(s.state == "idle" for s in sessions))
