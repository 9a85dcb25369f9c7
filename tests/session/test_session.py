"""MailboxSession over the real IdleClient, the scripted IMAP server
(tests.support.scripted_imap) joined in memory by iosim, and a Clock:
every timing path (renewal, heartbeat, NOOP timeout, backoff growth and reset, auth
hold-off, polling, stop in each state) without sockets or sleeps."""

from __future__ import annotations

import errno
import json
from typing import Any

from twisted.internet.error import ConnectBindError, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from rebreak_idle import metrics
from rebreak_idle.accounts.account import Account
from rebreak_idle.config import session_settings
from rebreak_idle.interfaces import IRecorder, ISession
from rebreak_idle.net.tls import TLSClientEndpoint
from rebreak_idle.session.mailbox_marks import MailboxMark, MailboxMemory
from rebreak_idle.session.session import MailboxSession, timer_resolution
from rebreak_idle.session.states import TRANSITIONS, ForbiddenTransition, State
from rebreak_idle.timing.backoff import Backoff, format_delay
from tests.support.profiles import PROFILES
from tests.support.recorder import Recorder
from tests.support.scripted_imap import ScriptedConnection
from tests.support.session_harness import (
    ACCOUNT,
    SECRET,
    Harness,
    make_settings,
)


def _head(line: str) -> str:
    """A sent command without its secret-bearing or variable arguments."""
    for head in ("LOGIN", "AUTHENTICATE PLAIN", "ID"):
        if line.startswith(head + " "):
            return head
    return line


def gauge(state: str) -> float:
    return metrics.REGISTRY.get_sample_value("rebreak_idle_sessions", {"state": state}) or 0.0


def counter(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name + "_total", labels) or 0.0


class BackoffTests(SynchronousTestCase):
    def test_growth_cap_jitter_reset(self) -> None:
        b = Backoff(5, 60, jitter=lambda: 0.0)
        self.assertEqual([b.next() for _ in range(6)], [5, 10, 20, 40, 60, 60])
        self.assertEqual(b.attempt, 6)
        b.reset()
        self.assertEqual(b.next(), 5)
        stretched = Backoff(5, 60, jitter=lambda: 1.0)
        self.assertEqual(stretched.next(), 6.25)

    def test_format(self) -> None:
        self.assertEqual([format_delay(d) for d in (5, 6.25, 0.5, 12.4, 1800)],
                         ["5", "6.2", "0.5", "12", "1800"])
        # rounded down: the attempt never comes sooner than the line says
        self.assertEqual([format_delay(d) for d in (0.452, 0.7, 0.2 * 8, 9.99, 10.6, 59.99)],
                         ["0.4", "0.7", "1.6", "9.9", "10", "59"])


class ConnectTests(SynchronousTestCase):
    def test_connect_login_select_idle(self) -> None:
        h = Harness(self)
        h.start()
        s = h.session
        self.assertEqual(s.state, "idle")
        self.assertEqual(h.sent(), ['LOGIN "ann" "s3cret-Pa55word"', "SELECT INBOX", "IDLE"])
        self.assertEqual(h.recorder.cleared, [0.0])
        self.assertEqual(h.recorder.heartbeats, [0.0])
        self.assertEqual(h.recorder.errors, [])
        # first connect since start: catch up on what arrived before
        self.assertEqual(h.mails, [(3, "connected")])
        self.assertEqual(h.lines("connected"),
                         ["[idle/ann@example.test] connected (127.0.0.1:143)"])
        self.assertEqual(h.memory.get("acc-1"), MailboxMark(1000, 4, 3))

    def test_the_login_sequence_on_cyrus_and_courier(self) -> None:
        """The sequence the probe shares (login_sequence.py): Cyrus tells IDLE only after
        login, Courier tells UIDNEXT only to STATUS (asked with the count: one answer)."""
        for name, commands in (
                ("cyrus", ["AUTHENTICATE PLAIN", "ID", "SELECT INBOX", "IDLE"]),
                ("courier", ["LOGIN", "SELECT INBOX", "STATUS INBOX (UIDNEXT MESSAGES)", "IDLE"])):
            h = Harness(self)
            h.server.profile = profile = PROFILES[name]
            h.server.capabilities = profile.capabilities
            h.server.select_uidnext = profile.select_uidnext
            h.start()
            self.assertEqual(h.session.state, "idle", name)
            self.assertEqual([_head(c) for c in h.sent()], commands, name)
            self.assertEqual(h.memory.get("acc-1"), MailboxMark(1000, 4, 3), name)

    def test_secret_not_logged_or_recorded(self) -> None:
        h = Harness(self)
        h.server.password = "other"
        h.start()
        h.run(1)
        self.assertNotIn(SECRET, "\n".join(h.logs))
        self.assertNotIn(SECRET, repr(h.recorder.errors))
        self.assertNotIn(SECRET, json.dumps(h.session.snapshot()))
        self.assertNotIn(SECRET, repr(h.session.account))

    def test_echoed_secret_masked_in_protocol_errors(self) -> None:
        """A server that echoes the password in a line the client refuses ("unknown
        tag", "malformed"): the error text shows ``***``, not the password in any
        escaped form (a password with a backslash and both quotes)."""
        for secret, line in [("pa\\ss'wo\"rd", "Z999 NO bad password {}"),
                             ("pa\\ss'wo\"rd", "* 3 EXISTS {}"),
                             ("pa\\ss'wo\"rd\x01", "Z999 NO bad password {}")]:
            h = Harness(self, account=Account(**{**ACCOUNT.__dict__, "secret": secret}))
            h.server.password = None
            h.start()
            h.server.current.send(line.format(secret).encode())
            h.pump()
            self.assertEqual(h.session.state, "backoff")
            text = h.recorder.errors[-1][2]
            self.assertIn("***", text)
            for shown in (secret, repr(secret)[1:-1], "pa", "rd"):
                self.assertNotIn(shown, text.replace("password", ""))
            h.stop_for_good()

    def test_starttls_missing_is_a_protocol_error(self) -> None:
        account = Account(**{**ACCOUNT.__dict__, "security": "starttls"})
        h = Harness(self, account=account)
        before = counter("rebreak_idle_reconnects", cause="protocol")
        h.start()
        self.assertEqual(h.session.state, "backoff")
        self.assertEqual(h.recorder.errors[-1][2], "server does not offer STARTTLS")
        self.assertEqual(h.server.logins, 0)
        self.assertEqual(counter("rebreak_idle_reconnects", cause="protocol"), before + 1)

    def test_snapshot_is_json(self) -> None:
        h = Harness(self)
        h.start()
        h.server.deliver()
        h.pump()
        snap = json.loads(json.dumps(h.session.snapshot()))
        self.assertEqual(snap["id"], "acc-1")
        self.assertEqual(snap["email"], "ann@example.test")
        self.assertEqual(snap["state"], "idle")
        self.assertEqual(snap["attempt"], 0)
        self.assertIsNone(snap["last_error"])
        self.assertEqual(snap["last_heartbeat"], "1970-01-01T00:00:00+00:00")
        self.assertEqual(snap["last_exists"], {"at": "1970-01-01T00:00:00+00:00", "count": 4})
        self.assertEqual(snap["last_scan_reason"], "exists")
        self.assertEqual(set(snap), {"id", "email", "state", "since", "attempt",
                                     "next_attempt_in", "last_error", "last_error_at",
                                     "last_heartbeat", "last_exists", "last_scan_reason",
                                     "last_end_class", "queued"})
        self.assertEqual((snap["last_end_class"], snap["queued"]), (None, False))

    def test_session_gauge_follows_state(self) -> None:
        base = {s: gauge(s) for s in ("idle", "backoff", "connecting")}
        h = Harness(self)
        h.start()
        self.assertEqual(gauge("idle"), base["idle"] + 1)
        self.assertEqual(gauge("connecting"), base["connecting"])
        h.server.current.close()
        h.pump()
        self.assertEqual(gauge("idle"), base["idle"])
        self.assertEqual(gauge("backoff"), base["backoff"] + 1)
        self.assertEqual(h.stop(), [None])
        self.assertEqual(gauge("backoff"), base["backoff"])
        self.assertEqual(h.session.state, "stopped")


class NewMailTests(SynchronousTestCase):
    def test_exists_while_idle(self) -> None:
        h = Harness(self)
        h.start()
        events = counter("rebreak_idle_exists_events")
        h.server.deliver()
        h.pump()
        h.server.deliver(2)
        h.pump()
        self.assertEqual(h.mails, [(3, "connected"), (4, "exists"), (6, "exists")])
        self.assertEqual(counter("rebreak_idle_exists_events"), events + 2)
        self.assertEqual(len(h.lines("exists-event received (new mail)")), 2)
        self.assertEqual(h.lines("exists-event")[0],
                         "[idle/ann@example.test] exists-event received (new mail)")
        # the expected UIDNEXT moves with the announced messages
        self.assertEqual(h.memory.get("acc-1"), MailboxMark(1000, 7, 6))

    def test_expunge_lowers_the_count(self) -> None:
        h = Harness(self)
        h.start()
        h.server.expunge(1)
        h.pump()
        h.server.current.send("* 2 EXISTS")  # same count as now: no new mail
        h.pump()
        self.assertEqual(h.mails, [(3, "connected")])
        h.server.deliver()  # 3 again, above the current count 2
        h.pump()
        self.assertEqual(h.mails, [(3, "connected"), (3, "exists")])

    def test_on_new_mail_failure_does_not_break_the_session(self) -> None:
        calls: list[str] = []

        def broken(account: Account, exists: int, reason: str) -> None:
            calls.append(reason)
            raise RuntimeError("boom")

        h = Harness(self, on_new_mail=broken)
        h.session.startService()
        h.pump()
        self.assertEqual(calls, ["connected"])
        self.assertEqual(h.session.state, "idle")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(h.lines("on_new_mail failed"),
                         ["[idle/ann@example.test] on_new_mail failed"])


class CatchUpTests(SynchronousTestCase):
    def reconnect(self, h: Harness) -> None:
        h.server.current.close()
        h.pump()
        self.assertEqual(h.session.state, "backoff")
        h.run(h.settings.reconnect_delay)
        self.assertEqual(h.session.state, "idle")

    def test_no_catch_up_when_nothing_changed(self) -> None:
        h = Harness(self)
        h.start()
        h.server.deliver()
        h.pump()
        self.reconnect(h)
        self.assertEqual(h.mails, [(3, "connected"), (4, "exists")])

    def test_catch_up_when_mail_arrived_while_down(self) -> None:
        h = Harness(self)
        h.start()
        h.server.current.close()
        h.pump()
        h.server.deliver(2)
        h.run(h.settings.reconnect_delay)
        self.assertEqual(h.session.state, "idle")
        self.assertEqual(h.mails, [(3, "connected"), (5, "connected")])

    def test_catch_up_when_uidvalidity_changed(self) -> None:
        h = Harness(self)
        h.start()
        h.server.uidvalidity += 1
        self.reconnect(h)
        self.assertEqual(h.mails, [(3, "connected"), (3, "connected")])

    def test_memory_outlives_a_restarted_session(self) -> None:
        memory = MailboxMemory()
        h = Harness(self, memory=memory)
        h.start()
        self.assertEqual(h.stop(), [None])
        again = Harness(self, memory=memory)
        again.start()
        self.assertEqual(again.mails, [])
        self.assertEqual(again.session.state, "idle")


class TimerTests(SynchronousTestCase):
    def test_renewal(self) -> None:
        h = Harness(self, settings=make_settings(idle_renew=100, heartbeat_interval=1000))
        h.start()
        h.run(99)
        self.assertEqual(h.sent()[-1], "IDLE")
        h.run(1)
        self.assertEqual(h.sent()[2:], ["IDLE", "DONE", "IDLE"])
        self.assertEqual(h.lines("renewing"),
                         ["[idle/ann@example.test] idle renewing (25min threshold)"])
        h.run(100)
        self.assertEqual(h.sent()[2:], ["IDLE", "DONE", "IDLE", "DONE", "IDLE"])
        self.assertEqual(h.recorder.heartbeats, [0.0])  # a renewal is no heartbeat

    def test_heartbeat(self) -> None:
        h = Harness(self)  # defaults: heartbeat 120 s, renewal 1500 s
        h.start()
        h.run(119)
        self.assertEqual(h.sent()[-1], "IDLE")
        h.run(1)
        self.assertEqual(h.sent()[2:], ["IDLE", "DONE", "NOOP", "IDLE"])
        self.assertEqual(h.recorder.heartbeats, [0.0, 120.0])
        self.assertEqual(h.session.last_heartbeat_at, 120.0)
        h.run(120 * 12)
        self.assertEqual(len(h.recorder.heartbeats), 14)
        self.assertEqual(h.lines("renewing"), [])  # every heartbeat re-enters IDLE
        self.assertEqual(h.session.state, "idle")

    def test_idle_sessions_share_one_reactor_timer(self) -> None:
        h = Harness(self, timers=True)
        bob = Account(**{**ACCOUNT.__dict__, "id": "acc-2", "email": "bob@example.test"})
        other = MailboxSession(bob, session_settings(h.settings), h.recorder,
                               lambda *a: None, h.clock, endpoint=h.endpoint,
                               memory=h.memory, timers=h.timers)
        h.start()
        other.startService()
        h.pump()
        self.assertEqual(len(h.recorder.heartbeats), 2)
        self.assertEqual(len(h.timers), 2)  # each session's next heartbeat ...
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)  # ... on one reactor timer
        h.run(120)
        self.assertEqual(h.recorder.heartbeats, [0.0, 0.0, 120.0, 120.0])
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)
        for conn in h.server.connections:
            self.assertEqual(h.sent(conn)[-3:], ["DONE", "NOOP", "IDLE"])
        h.stop()
        other.stopService()
        h.pump()
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(len(h.timers), 0)

    def test_timer_resolution(self) -> None:
        self.assertEqual(timer_resolution(make_settings()), 1.0)  # 120 s / 30 s / 60 s
        fast = make_settings(heartbeat_interval=1.0, noop_timeout=1.0)
        self.assertEqual(timer_resolution(fast), 0.05)  # never more than 5 % late

    def test_exists_during_heartbeat_noop(self) -> None:
        h = Harness(self)
        h.start()
        h.server.current.push = False  # the server does not push during IDLE
        h.server.deliver()
        h.pump()
        self.assertEqual(h.mails, [(3, "connected")])
        h.run(120)  # NOOP answers with the new count
        self.assertEqual(h.mails, [(3, "connected"), (4, "exists")])

    def test_noop_timeout_means_dead_connection(self) -> None:
        h = Harness(self)
        h.start()
        timeouts = counter("rebreak_idle_reconnects", cause="timeout")
        first = h.server.current
        h.run(100)
        first.responsive = False  # accepts bytes, never answers (half-open TCP)
        h.run(20)
        self.assertEqual(h.sent(first)[-3:], ["DONE", "NOOP", "IDLE"])  # one write
        h.run(29.9)
        self.assertEqual(h.session.state, "idle")
        h.run(0.1)
        self.assertEqual(h.session.state, "backoff")
        self.assertEqual(h.recorder.errors[-1][1:], ("acc-1", "DONE timed out after 30s"))
        self.assertEqual(counter("rebreak_idle_reconnects", cause="timeout"), timeouts + 1)
        self.assertEqual(h.lines("connect failed"),
                         ["[idle/ann@example.test] connect failed: DONE timed out after 30s"])
        self.assertEqual(h.lines("reconnecting"),
                         ["[idle/ann@example.test] reconnecting in 5s (attempt 1)"])
        h.run(5)
        self.assertEqual(h.session.state, "idle")
        self.assertEqual(len(h.server.connections), 2)

    def test_noop_without_answer(self) -> None:
        h = Harness(self, settings=make_settings(noop_timeout=10))
        h.start()
        conn = h.server.current
        original = conn.handle

        def no_noop_answer(line: str) -> None:
            if line.endswith(" NOOP"):
                # no answer to the NOOP, hence (commands are answered in order) to nothing
                # after it: the IDLE sent in the same write stays unanswered too
                conn.responsive = False
            else:
                original(line)

        conn.handle = no_noop_answer  # type: ignore[method-assign]
        h.run(130)
        self.assertEqual(h.session.state, "backoff")
        self.assertEqual(h.recorder.errors[-1][2], "NOOP timed out after 10s")

    def test_server_ending_idle_is_reentered(self) -> None:
        h = Harness(self)
        h.server.end_idle_after_continuation = True
        h.start()
        self.assertEqual(h.sent(), ['LOGIN "ann" "s3cret-Pa55word"', "SELECT INBOX", "IDLE",
                                    "IDLE"])
        self.assertEqual(h.session.state, "idle")
        h.server.deliver()
        h.pump()
        self.assertEqual(h.mails[-1], (4, "exists"))

    def test_server_ending_idle_just_before_a_heartbeat(self) -> None:
        """The server ends IDLE and answers the re-sent IDLE only after the heartbeat was
        due: the heartbeat waits for the new IDLE instead of failing with "not idling"."""
        h = Harness(self)
        h.start()
        conn = h.server.current
        h.run(119.5)
        conn.responsive = False  # the re-sent IDLE waits for its continuation
        conn.send(f"{conn.idle_tag} OK IDLE ended by the server")
        conn.idle_tag = None
        h.pump()
        self.assertEqual(h.sent()[-2:], ["IDLE", "IDLE"])
        h.run(1)  # the heartbeat was due at 120
        self.assertEqual(h.recorder.errors, [])
        self.assertEqual(h.session.state, "idle")
        conn.responsive = True
        conn.handle(conn.lines[-1])  # "+ idling", at last
        h.run(1)
        self.assertEqual(h.sent()[-4:], ["IDLE", "DONE", "NOOP", "IDLE"])
        self.assertEqual(h.recorder.heartbeats, [0.0, 121.0])
        self.assertEqual(h.recorder.errors, [])
        self.assertEqual(h.session.state, "idle")

    def test_polling_without_idle(self) -> None:
        h = Harness(self, settings=make_settings(poll_interval=60))
        h.server.capabilities = "IMAP4rev1"
        h.start()
        self.assertEqual(h.session.state, "polling")
        self.assertEqual(h.sent(), ['LOGIN "ann" "s3cret-Pa55word"', "SELECT INBOX"])
        h.server.deliver()
        h.run(59)
        self.assertEqual(h.mails, [(3, "connected")])
        h.run(1)
        self.assertEqual(h.sent()[-1], "NOOP")
        self.assertEqual(h.mails, [(3, "connected"), (4, "exists")])
        self.assertEqual(h.recorder.heartbeats, [0.0, 60.0])
        h.run(120)
        self.assertEqual(h.recorder.heartbeats, [0.0, 60.0, 120.0, 180.0])
        h.server.current.responsive = False
        h.run(60 + 30)
        self.assertEqual(h.session.state, "backoff")
        self.assertEqual(h.recorder.errors[-1][2], "NOOP timed out after 30s")


class FailureTests(SynchronousTestCase):
    def test_backoff_growth_and_cap(self) -> None:
        h = Harness(self, settings=make_settings(reconnect_delay=5, reconnect_max_delay=60))
        h.endpoint.refuse = ConnectionRefusedError()
        network = counter("rebreak_idle_reconnects", cause="network")
        h.start()
        delays = []
        for _ in range(7):
            self.assertEqual(h.session.state, "backoff")
            (call,) = h.clock.getDelayedCalls()
            delays.append(call.getTime() - h.clock.seconds())
            h.run(delays[-1])
        self.assertEqual(delays, [5, 10, 20, 40, 60, 60, 60])
        self.assertEqual(h.endpoint.attempts, 8)
        self.assertEqual(h.recorder.errors[-1][2], "connection refused")
        self.assertEqual(h.lines("reconnecting")[:3], [
            "[idle/ann@example.test] reconnecting in 5s (attempt 1)",
            "[idle/ann@example.test] reconnecting in 10s (attempt 2)",
            "[idle/ann@example.test] reconnecting in 20s (attempt 3)",
        ])
        self.assertEqual(h.lines("connect failed")[0],
                         "[idle/ann@example.test] connect failed: connection refused")
        self.assertEqual(counter("rebreak_idle_reconnects", cause="network"), network + 8)
        self.assertEqual(h.session.snapshot()["attempt"], 8)

    def test_out_of_descriptors_is_not_the_accounts_error(self) -> None:
        """EMFILE when the socket is made: the process's limit, so nothing is written as
        the account's last_connect_error and no "connect failed" line blames it; the
        session retries with its backoff."""
        h = Harness(self)
        h.endpoint.refuse = ConnectBindError(errno.EMFILE, "Too many open files")
        h.start()
        self.assertEqual(h.session.state, "backoff")
        self.assertEqual(h.recorder.errors, [])
        self.assertEqual(h.lines("connect failed"), [])
        (line,) = h.lines("connect postponed")
        self.assertIn("no file descriptor left", line)
        self.assertEqual(h.session.snapshot()["last_error"], None)
        h.endpoint.refuse = None
        h.run(10)
        self.assertEqual(h.session.state, "idle")

    def test_jitter_stretches_delays(self) -> None:
        h = Harness(self, jitter=0.5)
        h.endpoint.refuse = ConnectionRefusedError()
        h.start()
        (call,) = h.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 5 * 1.125)
        self.assertEqual(h.lines("reconnecting"),
                         ["[idle/ann@example.test] reconnecting in 5.6s (attempt 1)"])

    def test_backoff_keeps_growing_when_connections_die_young(self) -> None:
        h = Harness(self)
        h.start()
        for expected in (5, 10, 20):
            h.run(30)  # shorter than a healthy connection
            h.server.current.close()
            h.pump()
            (call,) = h.clock.getDelayedCalls()
            self.assertEqual(call.getTime() - h.clock.seconds(), expected)
            h.run(expected)
            self.assertEqual(h.session.state, "idle")

    def test_backoff_reset_after_healthy_connection(self) -> None:
        h = Harness(self)
        h.endpoint.refuse = ConnectionRefusedError()
        h.start()
        h.run(5)
        h.run(10)
        self.assertEqual(h.session.snapshot()["attempt"], 3)
        h.endpoint.refuse = None
        h.run(20)
        self.assertEqual(h.session.state, "idle")
        h.run(120)  # healthy: up for min(HEALTHY_AFTER, heartbeat interval)
        h.server.current.close()
        h.pump()
        (call,) = h.clock.getDelayedCalls()
        self.assertEqual(call.getTime() - h.clock.seconds(), 5)
        self.assertEqual(h.lines("reconnecting")[-1],
                         "[idle/ann@example.test] reconnecting in 5s (attempt 1)")
        self.assertEqual(h.recorder.errors[-1][2], "connection closed by server")

    def test_bye(self) -> None:
        h = Harness(self)
        h.start()
        byes = counter("rebreak_idle_reconnects", cause="bye")
        h.server.current.send("* BYE Server shutting down")
        h.pump()
        self.assertEqual(h.session.state, "backoff")
        self.assertEqual(h.recorder.errors[-1][2], "Server shutting down")
        self.assertEqual(counter("rebreak_idle_reconnects", cause="bye"), byes + 1)

    def test_auth_failure_holds_off(self) -> None:
        h = Harness(self, settings=make_settings(auth_failure_holdoff=1800))
        h.server.password = "changed-by-user"
        auths = counter("rebreak_idle_reconnects", cause="auth")
        h.start()
        self.assertEqual(h.session.state, "auth-failed")
        self.assertEqual(h.server.logins, 1)
        text = "[AUTHENTICATIONFAILED] Invalid credentials (Failure)"
        self.assertEqual(h.recorder.errors, [(0.0, "acc-1", text)])
        self.assertEqual(h.recorder.cleared, [])
        self.assertEqual(counter("rebreak_idle_reconnects", cause="auth"), auths + 1)
        self.assertEqual(h.lines("connect failed"),
                         [f"[idle/ann@example.test] connect failed: {text}"])
        self.assertEqual(h.lines("reconnecting"),
                         ["[idle/ann@example.test] reconnecting in 1800s (attempt 1)"])
        snap = h.session.snapshot()
        self.assertEqual((snap["state"], snap["last_error"], snap["next_attempt_in"]),
                         ("auth-failed", text, 1800))
        h.run(1799)
        self.assertEqual(h.server.logins, 1)
        h.run(1)
        self.assertEqual(h.server.logins, 2)
        self.assertEqual(h.session.state, "auth-failed")
        h.server.password = SECRET
        # the second rejection in a row doubles the hold-off (docs/providers.md)
        self.assertEqual(h.session.snapshot()["next_attempt_in"], 3600)
        h.run(3599)
        self.assertEqual(h.server.logins, 2)
        h.run(1)
        self.assertEqual(h.session.state, "idle")
        self.assertEqual(h.recorder.cleared, [5400.0])
        self.assertIsNone(h.session.snapshot()["last_error"])

    def test_transient_login_refusal_uses_backoff(self) -> None:
        h = Harness(self)
        h.server.password = "x"
        h.server.login_reply = "NO [UNAVAILABLE] Try again later"
        h.start()
        self.assertEqual(h.session.state, "backoff")
        self.assertEqual(h.recorder.errors[-1][2], "[UNAVAILABLE] Try again later")
        h.run(5)
        self.assertEqual(h.server.logins, 2)


class StopTests(SynchronousTestCase):
    def test_stop_while_idle_sends_done_and_logout(self) -> None:
        h = Harness(self)
        h.start()
        conn = h.server.current
        result = h.stop()
        self.assertEqual(result, [None])
        self.assertEqual(h.sent(conn)[-3:], ["IDLE", "DONE", "LOGOUT"])
        self.assertEqual(h.session.state, "stopped")
        self.assertEqual(h.recorder.errors, [])
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(len(h.server.connections), 1)
        self.assertEqual(h.lines("connect failed"), [])

    def test_stop_while_polling(self) -> None:
        h = Harness(self)
        h.server.capabilities = "IMAP4rev1"
        h.start()
        self.assertEqual(h.stop(), [None])
        self.assertEqual(h.sent()[-1], "LOGOUT")
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_stop_with_unresponsive_server(self) -> None:
        h = Harness(self)
        h.start()
        h.server.current.responsive = False
        result = h.stop()
        self.assertEqual(result, [])
        h.run(4.9)
        self.assertEqual(result, [])
        # shown while DONE + LOGOUT are out: the table's stopping, counted by the gauge
        self.assertEqual(h.session.state, "stopping")
        self.assertEqual(h.session.snapshot()["state"], "stopping")
        self.assertEqual(metrics.REGISTRY.get_sample_value(
            "rebreak_idle_sessions", {"state": "stopping"}), 1.0)
        h.run(0.1)  # the LOGOUT deadline: close the connection
        self.assertEqual(result, [None])
        self.assertEqual(h.session.state, "stopped")
        self.assertEqual(metrics.REGISTRY.get_sample_value(
            "rebreak_idle_sessions", {"state": "stopping"}), 0.0)
        self.assertEqual(h.sent()[-3:], ["IDLE", "DONE", "LOGOUT"])  # written together
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(h.recorder.errors, [])

    def test_stop_during_connect(self) -> None:
        h = Harness(self)
        h.endpoint.hang = True
        h.start()
        self.assertEqual(h.session.state, "connecting")
        self.assertEqual(h.stop(), [None])
        self.assertEqual(h.endpoint.cancelled, 1)
        self.assertEqual(h.session.state, "stopped")
        self.assertEqual(h.recorder.errors, [])
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_stop_during_login(self) -> None:
        h = Harness(self)
        original = ScriptedConnection.handle

        def silent_login(conn: ScriptedConnection, line: str) -> None:
            if " LOGIN " not in line:
                original(conn, line)

        self.patch(ScriptedConnection, "handle", silent_login)
        h.start()
        self.assertEqual(h.session.state, "authenticating")
        self.assertEqual(h.stop(), [None])
        self.assertEqual(h.session.state, "stopped")
        self.assertEqual(h.recorder.errors, [])
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_stop_during_backoff(self) -> None:
        h = Harness(self)
        h.endpoint.refuse = ConnectionRefusedError()
        h.start()
        self.assertEqual(h.session.state, "backoff")
        self.assertEqual(h.stop(), [None])
        self.assertEqual(h.clock.getDelayedCalls(), [])
        h.run(100)
        self.assertEqual(h.endpoint.attempts, 1)

    def test_stop_during_auth_holdoff(self) -> None:
        h = Harness(self)
        h.server.password = "nope"
        h.start()
        self.assertEqual(h.session.state, "auth-failed")
        self.assertEqual(h.stop(), [None])
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_stop_during_heartbeat(self) -> None:
        h = Harness(self)
        h.start()
        conn = h.server.current
        conn.responsive = False
        h.run(120)  # DONE sent, no answer yet
        self.assertEqual(h.stop(), [])
        h.run(5)
        self.assertEqual(h.session.state, "stopped")
        self.assertEqual(h.recorder.errors, [])
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_stop_from_inside_record_error(self) -> None:
        h = Harness(self)
        h.endpoint.refuse = ConnectionRefusedError()
        stopped: list[Any] = []
        original = h.recorder.record_error

        def stop_now(account_id: str, text: str) -> None:
            original(account_id, text)
            h.session.stopService().addBoth(stopped.append)

        h.recorder.record_error = stop_now  # type: ignore[method-assign]
        h.start()
        h.run(0)
        self.assertEqual(stopped, [None])
        self.assertEqual(h.session.state, "stopped")
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(h.endpoint.attempts, 1)

    def test_stop_before_start_and_twice(self) -> None:
        h = Harness(self)
        self.assertEqual(h.stop(), [None])
        h.start()
        first = h.stop()
        self.assertEqual(first, [None])
        self.assertEqual(h.stop(), [None])

    def test_restart_after_stop(self) -> None:
        h = Harness(self)
        h.start()
        h.stop()
        h.start()
        self.assertEqual(h.session.state, "idle")
        self.assertEqual(len(h.server.connections), 2)
        h.stop()


class InterfaceTests(SynchronousTestCase):
    def test_recorder_double_provides_interface(self) -> None:
        verifyObject(IRecorder, Recorder(Clock()))

    def test_session_provides_interface(self) -> None:
        verifyObject(ISession, Harness(self).session)


class StateTests(SynchronousTestCase):
    def test_forbidden_transition_raises(self) -> None:
        h = Harness(self)
        h.start()
        self.assertIs(h.session.state, State.IDLE)
        with self.assertRaises(ForbiddenTransition):
            h.session._set_state(State.AUTHENTICATING)
        self.assertIs(h.session.state, State.IDLE)  # unchanged
        h.stop()

    def test_table_covers_every_state(self) -> None:
        self.assertEqual(set(TRANSITIONS), set(State))
        for state, targets in TRANSITIONS.items():
            self.assertNotIn(state, targets)
            if state is not State.STOPPED:  # a stop is always allowed, through stopping
                self.assertTrue({State.STOPPED, State.STOPPING} & targets, state)
        # values that /status, metrics and logs show
        self.assertEqual([s.value for s in State],
                         ["stopped", "connecting", "authenticating", "selecting", "idle",
                          "polling", "backoff", "auth-failed", "stopping"])

    def test_selecting_while_select_and_idle_run(self) -> None:
        h = Harness(self)
        original = ScriptedConnection.handle

        def silent_select(conn: ScriptedConnection, line: str) -> None:
            if " SELECT " not in line:
                original(conn, line)

        self.patch(ScriptedConnection, "handle", silent_select)
        h.start()
        self.assertEqual(h.session.state, "selecting")
        self.assertEqual(h.session.snapshot()["state"], "selecting")
        self.assertEqual(h.stop(), [None])
        self.assertEqual(h.session.state, "stopped")


class EndpointTests(SynchronousTestCase):
    """IP literals connect without the resolver (no thread hop per connect); names keep
    HostnameEndpoint; implicit TLS wraps whichever it is."""

    def endpoint(self, host: str, security: str = "plain") -> Any:
        from twisted.internet.testing import MemoryReactorClock

        account = Account(**{**ACCOUNT.__dict__, "host": host, "security": security})
        session = MailboxSession(account, session_settings(make_settings()), Recorder(Clock()),
                                 lambda *a: None, MemoryReactorClock(),
                                 tls_creator=lambda host: object())
        return session._make_endpoint()

    def test_kinds(self) -> None:
        from twisted.internet.endpoints import (
            HostnameEndpoint,
            TCP4ClientEndpoint,
            TCP6ClientEndpoint,
        )

        self.assertIsInstance(self.endpoint("127.0.0.1"), TCP4ClientEndpoint)
        self.assertIsInstance(self.endpoint("::1"), TCP6ClientEndpoint)
        self.assertIsInstance(self.endpoint("imap.example.test"), HostnameEndpoint)
        wrapped = self.endpoint("127.0.0.1", "tls")
        self.assertIsInstance(wrapped, TLSClientEndpoint)
        self.assertIsInstance(wrapped.endpoint, TCP4ClientEndpoint)


class OneMachineTests(SynchronousTestCase):
    """The session's own machine drives the connection: it connects, waits the reconnect
    policy's delay on one timer of its own, and connects again (no second machine that
    reads the delay back)."""

    def test_the_wait_is_one_timer_of_the_policys_delay(self) -> None:
        h = Harness(self)
        h.endpoint.refuse = ConnectionRefusedError()
        h.start()
        self.assertEqual(h.session.state, "backoff")
        self.assertEqual(h.session.snapshot()["next_attempt_in"], 5.0)
        (wait,) = h.clock.getDelayedCalls()
        self.assertEqual(wait.getTime(), 5.0)
        h.clock.advance(4.99)
        self.assertEqual(h.endpoint.attempts, 1)
        h.clock.advance(0.01)
        h.pump()
        self.assertEqual(h.endpoint.attempts, 2)
        self.assertEqual(h.session.state, "backoff")
        self.assertEqual(h.session.snapshot()["next_attempt_in"], 10.0)
        (wait,) = h.clock.getDelayedCalls()
        self.assertEqual(wait.getTime(), 15.0)

    def test_a_wait_ended_by_a_connection_that_works(self) -> None:
        h = Harness(self)
        h.endpoint.refuse = ConnectionRefusedError()
        h.start()
        h.endpoint.refuse = None
        h.run(5)
        self.assertEqual(h.session.state, "idle")
        self.assertEqual(h.endpoint.attempts, 2)
        self.assertIsNone(h.session.snapshot()["next_attempt_in"])

    def test_a_lost_connection_waits_then_connects_again(self) -> None:
        h = Harness(self)
        h.start()
        h.server.current.close()
        h.pump()
        self.assertEqual(h.session.state, "backoff")
        (wait,) = h.clock.getDelayedCalls()
        self.assertEqual(wait.getTime() - h.clock.seconds(), 5.0)
        h.run(5)
        self.assertEqual(h.session.state, "idle")
        self.assertEqual(h.endpoint.attempts, 2)
