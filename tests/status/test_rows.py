"""The status page's rows chosen from the live sessions (status_rows) are the rows that a
snapshot of every account would give (status_query.choose), for every kind of query, as
sessions move, stop and are replaced."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.accounts.account import Account
from rebreak_idle.config import Settings
from rebreak_idle.fleet.supervisor import InvalidRow
from rebreak_idle.service import build_daemon
from rebreak_idle.session.states import TRANSITIONS, State
from rebreak_idle.status.query import PageQuery, choose

#: paths through the state table, from stopped
PATHS = (
    (State.CONNECTING, State.AUTHENTICATING, State.SELECTING, State.IDLE),
    (State.CONNECTING, State.AUTHENTICATING, State.SELECTING, State.POLLING),
    (State.CONNECTING, State.BACKOFF),
    (State.CONNECTING, State.AUTHENTICATING, State.AUTH_FAILED),
    (State.CONNECTING,),
    (),  # stopped
)


class RowsTests(SynchronousTestCase):
    def setUp(self) -> None:
        settings = Settings(database_url="postgresql://x@127.0.0.1:1/none",
                            admin_secret="s" * 8, encryption_key="k" * 32)
        self.daemon = build_daemon(settings, Clock())
        self.sup = self.daemon.supervisor
        self.made: list[Any] = []
        self.addCleanup(self.stop_all)
        for n in range(240):
            account = Account(id=f"id-{n:04d}", user_id="u",
                              email=f"{'zyx'[n % 3]}user{(n * 7919) % 240}@example.org",
                              host=f"imap{n % 9}.example.org", port=993, security="tls",
                              username="u", auth_method="password", secret="x" * 12)
            session = self.make(account)
            for state in PATHS[n % len(PATHS)] if n % 11 else ():
                session.running = True  # as started, without connecting
                session._set_state(state)
            if n % 13 == 0 and session.state is State.BACKOFF:
                session._last_error = "[AUTHENTICATIONFAILED] Needle in the error"
            self.sup.adopt(session, queued=n % 11 == 0)
        for n in range(5):
            self.sup.adopt_invalid(InvalidRow(f"bad-{n}", f"bad{n}@example.org",
                                              "encrypted_secret cannot be decrypted"))

    def make(self, account: Account) -> Any:
        session = self.daemon.new_session(account)
        self.made.append(session)
        return session

    def stop_all(self) -> None:
        """The process-wide sessions gauge holds no session of this test afterwards."""
        for session in self.made:
            if State.STOPPING in TRANSITIONS[session.state]:  # a connection closes first
                session._set_state(State.STOPPING)
            if session.state is not State.STOPPED:
                session._set_state(State.STOPPED)

    def assertSameAsSnapshot(self, query: PageQuery) -> None:
        expected = choose(self.daemon.snapshot(), query)
        got = self.daemon.page(query)
        self.assertEqual([r["id"] for r in got.page], [r["id"] for r in expected.page],
                         query)
        self.assertEqual([r["state"] for r in got.page], [r["state"] for r in expected.page])
        self.assertEqual((got.matching, got.total, got.hosts, got.host_count),
                         (expected.matching, expected.total, expected.hosts,
                          expected.host_count), query)

    def queries(self) -> list[PageQuery]:
        out: list[Any] = [PageQuery(), PageQuery(limit=7, offset=30),
                          PageQuery(limit=50, offset=200), PageQuery(offset=10_000),
                          PageQuery(q="needle"), PageQuery(q="ID-00", limit=5, offset=3),
                          PageQuery(q="user1"), PageQuery(host="imap3.example.org"),
                          PageQuery(host="imap3.example.org", state="idle"),
                          PageQuery(q="bad", state="invalid")]
        out += [PageQuery(state=s, limit=4, offset=2) for s in
                ("idle", "polling", "backoff", "auth-failed", "connecting", "queued",
                 "stopping", "stopped", "invalid", "nonsense")]
        return out

    def test_every_query_gives_the_snapshots_rows(self) -> None:
        for query in self.queries():
            self.assertSameAsSnapshot(query)

    def test_after_moves_stops_and_replacements(self) -> None:
        self.daemon.page(PageQuery())  # the sorted sessions are kept from here on
        sessions = list(self.sup.sessions.values())
        for session in sessions[:40]:  # moves: no change of the set
            if session.state is State.IDLE:
                session._set_state(State.BACKOFF)
            elif session.state is State.BACKOFF:
                session._set_state(State.CONNECTING)
        for query in self.queries():
            self.assertSameAsSnapshot(query)
        for account_id in list(self.sup.sessions)[::5]:  # stops: the set changes
            self.sup.stop_session(account_id)
        replacement = self.make(Account(
            id="id-new", user_id="u", email="aaa-first@example.org", host="imap.new",
            port=993, security="tls", username="u", auth_method="password",
            secret="x" * 12))
        self.sup.adopt(replacement, queued=True)
        for query in [*self.queries(), PageQuery(host="imap.new")]:
            self.assertSameAsSnapshot(query)
