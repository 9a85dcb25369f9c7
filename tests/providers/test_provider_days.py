"""Simulated days against the provider profiles of the scripted IMAP server: real sessions,
a Clock, in-memory connections; logins counted per account and per host."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.session.states import State
from tests.support.provider_days import DAY, HOUR, Sim, account
from tests.support.scripted_imap import PROFILES

#: profile → (logins in a simulated day, longest unwatched gap in seconds); filled by
#: test_a_day_per_profile and printed for the record.
FIGURES: dict[str, tuple[int, float]] = {}


class ProfileDayTests(SynchronousTestCase):
    def test_a_day_per_profile(self) -> None:
        """One healthy account per profile for a simulated day: the routine ends of each
        provider (session expiry, token expiry, silent drops) cost one login each, a gap
        of seconds, and no error write."""
        for name in PROFILES:
            method = "xoauth2" if name == "m365" else "password"
            sim = Sim(self, name, [account(method=method)])
            sim.start()
            sim.run(DAY)
            logins = sim.logins_between(0, DAY)
            sim.run(10)  # a recycle at the very end of the day is back
            gap = max(sim.gaps, default=0.0)
            FIGURES[name] = (logins, gap)
            self.assertEqual(sim.recorder.errors, [], name)
            self.assertLessEqual(logins, 26, name)
            self.assertLessEqual(gap, 10.0, name)
            self.assertEqual(sim.sessions[0].state, State.IDLE, name)
        print("\nprofile  logins/day  longest unwatched gap (s)")
        for name, (logins, gap) in FIGURES.items():
            print(f"{name:8} {logins:10d}  {gap:.1f}")


class ProviderSignalTests(SynchronousTestCase):
    def test_gmail_over_the_cap_is_a_handful_of_logins_and_never_a_wrong_password(self
                                                                                  ) -> None:
        sim = Sim(self, "gmail", [account()])
        sim.server.other_clients["u0"] = 15  # the user's phones and laptops
        sim.start()
        sim.run(DAY)
        self.assertLessEqual(sim.logins_between(0, HOUR), 6)
        for hour in range(1, 24):
            self.assertLessEqual(sim.logins_between(hour * HOUR, (hour + 1) * HOUR), 2, hour)
        self.assertNotIn(State.AUTH_FAILED, sim.states)
        errors = {text for _, _, text in sim.recorder.errors}
        self.assertEqual(errors, {"[ALERT] Too many simultaneous connections. (Failure)"})
        self.assertEqual(sim.sessions[0].snapshot()["last_end_class"], "capacity")
        print(f"\ngmail over the cap: {sim.server.logins} logins in a day, "
              f"{sim.logins_between(0, HOUR)} in the first hour")
        # a slot frees up: watched again within the longest wait
        sim.server.other_clients["u0"] = 10
        sim.run(1.25 * HOUR + 1)
        self.assertEqual(sim.sessions[0].state, State.IDLE)

    def test_m365_oauth_session_recycles_hourly_without_error_writes(self) -> None:
        token = "token-of-the-hour"
        sim = Sim(self, "m365", [account(method="xoauth2", secret=token)])
        sim.server.tokens["u0"] = token
        sim.start()
        sim.run(DAY)
        self.assertIn(sim.server.logins, (24, 25))
        self.assertEqual(sim.recorder.errors, [])
        self.assertEqual(sim.lines("connect failed"), [])
        self.assertEqual(len(sim.lines("connection recycled by the server: Session "
                                       "invalidated - AccessTokenExpired")),
                         sim.server.logins - 1)
        self.assertLessEqual(max(sim.gaps), 5.0)
        self.assertTrue(all("(attempt 1)" in line for line in sim.lines("reconnecting in")))

    def test_m365_throttling_waits_the_suggested_time(self) -> None:
        sim = Sim(self, "m365", [account()])
        sim.start()
        sim.server.throttled_until = sim.clock.seconds() + 1000
        sim.server.current.close()
        sim.run(1000)
        # at the drop and about 300 s apart after it
        self.assertLessEqual(sim.server.logins, 1 + 4)
        sim.run(400)
        self.assertEqual(sim.sessions[0].state, State.IDLE)
        closed, *throttled = [t for _, _, t in sim.recorder.errors]
        self.assertEqual(closed, "connection closed by server")
        self.assertTrue(throttled and all("Request is throttled" in t for t in throttled))

    def test_wrong_password_costs_a_few_logins_a_day(self) -> None:
        sim = Sim(self, "yahoo", [account(secret="wrong")])
        sim.server.login_reply = "NO [AUTHENTICATIONFAILED] Too many bad auth attempts"
        sim.start()
        sim.run(DAY)
        first_day = sim.server.logins
        self.assertLessEqual(first_day, 7)
        sim.run(2 * DAY)
        self.assertLessEqual(sim.server.logins - first_day, 3)  # one a day
        print(f"\nwrong password: {first_day} logins on day 1, "
              f"{sim.server.logins - first_day} on days 2-3")
        self.assertEqual(sim.sessions[0].state, State.AUTH_FAILED)

    def test_dovecot_connection_limit_is_capacity(self) -> None:
        sim = Sim(self, "dovecot", [account()])
        sim.server.other_clients["u0"] = 10
        sim.start()
        sim.run(HOUR)
        self.assertNotIn(State.AUTH_FAILED, sim.states)
        self.assertLessEqual(sim.server.logins, 6)
        self.assertEqual(sim.sessions[0].snapshot()["last_end_class"], "capacity")

    def test_server_restart_is_a_recycle_for_healthy_sessions(self) -> None:
        sim = Sim(self, "dovecot", [account(n) for n in range(20)])
        sim.start()
        sim.run(HOUR)
        for conn in list(sim.server.connections):
            if not conn.lost:
                conn.send("* BYE Server shutting down.")
                conn.close()
        sim.run(10)
        self.assertEqual(sim.server.logins, 40)
        self.assertEqual(sim.recorder.errors, [])
        self.assertLessEqual(max(sim.gaps), 5.0)


class IdTests(SynchronousTestCase):
    def test_id_after_login_when_advertised(self) -> None:
        sim = Sim(self, "163", [account()])
        sim.start()
        self.assertEqual(sim.sessions[0].state, State.IDLE)
        self.assertEqual(len(sim.server.ids), 1)
        sent = sim.server.ids[0]
        self.assertTrue(sent.startswith('("name" "rebreak-idle" "version" "'), sent)
        self.assertNotIn("u0", sent)
        commands = [line.split(" ")[1] for line in sim.server.current.lines if " " in line]
        self.assertLess(commands.index("ID"), commands.index("SELECT"))

    def test_id_refused_is_ignored(self) -> None:
        sim = Sim(self, "dovecot", [account()])
        sim.server.id_reply = "BAD ID not supported today"
        sim.start()
        self.assertEqual(sim.sessions[0].state, State.IDLE)
        self.assertEqual(sim.recorder.errors, [])

    def test_no_id_without_the_capability(self) -> None:
        sim = Sim(self, "dovecot", [account()])
        sim.server.capabilities = "IMAP4rev1 IDLE AUTH=PLAIN SASL-IR"
        sim.start()
        self.assertEqual(sim.sessions[0].state, State.IDLE)
        self.assertEqual(sim.server.ids, [])
