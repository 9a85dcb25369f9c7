"""REBREAK_SOURCE_ADDRESSES and REBREAK_HOST_MAX_CONNECTIONS over real loopback TCP:
connections spread over 127.0.0.2 and 127.0.0.3, one per source address at most."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from rebreak_idle.accounts.account import Account
from rebreak_idle.config import session_settings
from rebreak_idle.session.host_budget import HostBudget
from rebreak_idle.session.session import MailboxSession
from tests.support.recorder import Recorder
from tests.support.scripted_imap import PROFILES, ScriptedIMAPServer
from tests.support.session_harness import make_settings
from tests.support.wait import until


class SourceAddressTests(TestCase):
    timeout = 30

    async def test_spread_over_source_addresses_with_a_limit(self) -> None:
        server = ScriptedIMAPServer(reactor, profile=PROFILES["dovecot"])
        port = server.listen()
        self.addCleanup(server.stop)
        budget = HostBudget(reactor, max_connections=1, sources=("127.0.0.2", "127.0.0.3"))
        settings = session_settings(make_settings())
        sessions = []
        for n in range(3):
            acc = Account(id=f"a{n}", user_id="u", email=f"s{n}@loop.test", host="127.0.0.1",
                          port=port, security="plain", username=f"s{n}",
                          auth_method="password", secret="pw")
            session = MailboxSession(acc, settings, Recorder(reactor), lambda *a: None,
                                     reactor, budget=budget)
            sessions.append(session)
            session.startService()
            self.addCleanup(lambda s=session: s.stopService() if s.running else None)
        await until(lambda: server.idling() == 2, what="two sessions idle")
        self.assertEqual(sorted(c.peer for c in server.connections), ["127.0.0.2", "127.0.0.3"])
        waiting = [s for s in sessions if s.snapshot()["queued"]]
        self.assertEqual(len(waiting), 1)
        self.assertEqual(waiting[0].state.value, "connecting")
        self.assertEqual(budget.queued("127.0.0.1"), 1)
        # one leaves: the queued one takes its source address
        leaving = next(s for s in sessions if s is not waiting[0])
        freed = next(c.peer for c in server.connections if c.user == leaving.account.username)
        await leaving.stopService()
        await until(lambda: waiting[0].state.value == "idle", what="the queued one connects")
        self.assertEqual(server.connections[-1].peer, freed)
        self.assertFalse(waiting[0].snapshot()["queued"])
