"""What the default per-host login budget costs when a provider drops every session at once.

    python -m bench.reconnect_storm --sessions 5000            # the default budget
    python -m bench.reconnect_storm --sessions 5000 --rate off # unpaced, for comparison

N sessions of one host (``127.0.0.1``: the in-process IMAP server of
``rebreak_idle.testing``, plain IMAP over loopback) share one
:class:`~rebreak_idle.session.host_budget.HostBudget` built as the daemon builds it from its
settings
(``REBREAK_HOST_LOGIN_RATE`` / ``_BURST`` defaults unless ``--rate`` / ``--burst``). The
sessions first start unpaced (``--paced-start`` to pace that too; the start-up is not what
is measured), then the server closes every connection at once and the run measures:

* ``all_idle_s``: from the drop until every session is in IDLE again;
* ``expected_s``: what the budget alone allows, (N - burst) / rate, plus the first reconnect
  delay (``REBREAK_RECONNECT_DELAY`` with its jitter);
* ``max_attempts_1s``: the most connection attempts the budget let out in any one second
  after the drop (what the host sees as new connections);
* ``max_logins_1s``: the most logins completed in one second (both ends share this one
  process, so a pause of it — a garbage collection — bunches completions together);
* ``p50_back_s`` / ``p99_back_s``: how long one mailbox was not watched.

It prints one JSON line on stdout (progress on stderr). All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import succeed

from rebreak_idle.accounts.account import Account
from rebreak_idle.config import Settings, session_settings
from rebreak_idle.ops import gc_tuning
from rebreak_idle.session.host_budget import HostBudget
from rebreak_idle.session.session import MailboxSession, timer_resolution
from rebreak_idle.testing.imapserver import InProcessIMAPServer
from rebreak_idle.timing.wheel import TimerWheel

from .loopback import raise_nofile_limit

PASSWORD = "storm-password"


class CountingBudget(HostBudget):
    """The daemon's budget, noting when it lets each attempt out."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.granted: list[float] = []

    def acquire(self, host: str) -> defer.Deferred:
        def note(slot: Any) -> Any:
            self.granted.append(time.monotonic())
            return slot

        return super().acquire(host).addCallback(note)


def max_per_second(times: list[float]) -> int:
    """The most of ``times`` within any window of one second."""
    times, best, first = sorted(times), 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= 1.0:
            first += 1
        best = max(best, last - first + 1)
    return best


class LoginClock:
    """The sessions' recorder: a successful login clears the account's error, so each
    ``clear_error`` is one login; its time is kept."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.logins: list[float] = []
        self.errors = 0

    def record_error(self, account_id: str, text: str) -> None:
        self.errors += 1

    def clear_error(self, account_id: str) -> None:
        self.logins.append(time.monotonic())

    def record_heartbeat(self, account_id: str) -> None:
        pass


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def until(reactor: Any, check: Any, deadline: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > deadline:
            raise SystemExit(f"reconnect_storm: not within {deadline:g}s: {what}")
        await task.deferLater(reactor, 0.05, lambda: None)
    return time.monotonic() - start


async def storm(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    base = Settings(database_url="postgresql://unused", admin_secret="s" * 8,
                    encryption_key="k" * 32)
    rate = base.host_login_rate if args.rate is None else (
        None if args.rate == "off" else float(args.rate))
    burst = base.host_login_burst if args.burst is None else args.burst
    settings = session_settings(base)
    server = InProcessIMAPServer(reactor)
    port = server.listen().getHost().port
    # an unpaced start still goes through the budget (a session without one never asks)
    budget = CountingBudget(reactor, rate=rate if args.paced_start or rate is None else 1e9,
                            burst=burst)
    gc_tuning.tune_for_many_sessions()  # as the daemon does when it owns the process
    recorder = LoginClock(reactor)
    timers = TimerWheel(reactor, timer_resolution(settings))
    sessions = []
    for n in range(args.sessions):
        user = f"storm{n:05d}@load.test"
        server.add_user(user, PASSWORD)
        account = Account(id=f"00000000-0000-0000-0000-{n:012d}", user_id="u", email=user,
                          host="127.0.0.1", port=port, security="plain", username=user,
                          auth_method="password", secret=PASSWORD)
        sessions.append(MailboxSession(account, settings, recorder,
                                       lambda *a: succeed(True), reactor, timers=timers,
                                       budget=budget))
    print(f"starting {args.sessions} sessions", file=sys.stderr)
    start_rate = 1000.0
    for i, session in enumerate(sessions):
        session.startService()
        if i % int(start_rate / 10) == 0:
            await task.deferLater(reactor, 0.1, lambda: None)
    n = args.sessions
    started = await until(reactor, lambda: server.idling_connections() == n,
                          deadline=3600, what=f"{n} sessions idle")
    print(f"all {n} idle after {started:.1f}s; dropping them", file=sys.stderr)
    budget.rate = rate  # from now on: the budget under test
    await task.deferLater(reactor, 2.0, lambda: None)
    recorder.logins.clear()
    budget.granted.clear()
    errors_before = recorder.errors
    dropped = time.monotonic()
    server.drop_connections()
    back = await until(reactor, lambda: server.idling_connections() == n and
                       len(recorder.logins) >= n, deadline=7200, what="all idle again")
    logins = [t - dropped for t in recorder.logins]
    for session in sessions:
        session.stopService()
    await server.stop()
    first_delay = settings.reconnect_delay
    return {
        "bench": "reconnect_storm", "sessions": n, "host_login_rate": rate or "off",
        "host_login_burst": burst, "reconnect_delay_s": first_delay,
        "start_s": round(started, 1), "all_idle_s": round(back, 1),
        "expected_s": None if rate is None else round((n - burst) / rate + first_delay, 1),
        "max_attempts_1s": max_per_second(budget.granted),
        "max_logins_1s": max_per_second(recorder.logins),
        "p50_back_s": round(percentile(logins, 0.5), 1),
        "p99_back_s": round(percentile(logins, 0.99), 1),
        "errors_recorded": recorder.errors - errors_before,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.reconnect_storm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=5000)
    p.add_argument("--rate", help="logins per second to the host (default: the daemon's "
                   "default; off: unpaced)")
    p.add_argument("--burst", type=int, help="the bucket's burst (default: the daemon's)")
    p.add_argument("--paced-start", action="store_true",
                   help="pace the initial start-up too (slower; not what is measured)")
    args = p.parse_args(argv)
    raise_nofile_limit()

    def run(reactor: Any) -> defer.Deferred:
        d = defer.ensureDeferred(storm(reactor, args))
        d.addCallback(lambda result: print(json.dumps(result), flush=True))
        return d

    task.react(run)


if __name__ == "__main__":
    main()
