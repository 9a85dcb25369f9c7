"""What one request to the status server costs with many accounts, without a database or
IMAP server.

``python -m bench.statuscost --n 50000 --runs 21`` builds the daemon's own wiring
(``build_daemon``; nothing started but the status server, on a free loopback port), gives
its supervisor N synthetic sessions (real ``MailboxSession`` objects moved through their
state table: most idle, some polling, in backoff, auth-failed, queued, plus invalid rows;
heartbeats and EXISTS times set), then times each route over real HTTP on 127.0.0.1 and
prints one JSON line per route with the median, the fastest and the slowest run in
milliseconds (the whole request: connect, render, read)::

    {"route": "/", "n": 50000, "median_ms": 1.9, "min_ms": 1.6, "max_ms": 3.1, ...}

Routes: ``/`` without the admin header (the counts), ``/`` with it on the first page, a
page deep in the table, a search and a filter, one page of ``/status``, ``/metrics``, and
``/status`` without parameters (every account as JSON, the one route that is O(N) by
design).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

__all__ = ["main"]

ADMIN_SECRET = "bench-admin-secret-0123456789"
#: (state path from STOPPED, share of the sessions)
_MIX = (
    (("connecting", "authenticating", "selecting", "idle"), 0.90),
    (("connecting", "authenticating", "selecting", "polling"), 0.04),
    (("connecting", "backoff"), 0.03),
    (("connecting", "authenticating", "auth-failed"), 0.02),
)
_QUEUED_SHARE = 0.01
_INVALID = 100


def _build(n: int) -> tuple[Any, Any]:
    from twisted.internet import reactor

    from rebreak_idle.accounts.account import Account
    from rebreak_idle.config import Settings
    from rebreak_idle.fleet.supervisor import InvalidRow
    from rebreak_idle.live_metrics import LIVE
    from rebreak_idle.service import build_daemon
    from rebreak_idle.session.states import State

    settings = Settings(database_url="postgresql://bench@127.0.0.1:1/none",
                        admin_secret=ADMIN_SECRET, encryption_key="k" * 32,
                        status_endpoint="tcp:0:interface=127.0.0.1")
    daemon = build_daemon(settings, reactor)
    sup = daemon.supervisor
    now = reactor.seconds()
    hosts = [f"imap{h}.example.org" for h in range(200)]
    done = 0
    for path, share in _MIX:
        for _ in range(int(n * share)):
            k = done
            done += 1
            account = Account(id=f"00000000-0000-4000-8000-{k:012d}", user_id="u",
                              email=f"user{k}@example.org", host=hosts[k % len(hosts)],
                              port=993, security="tls", username=f"user{k}",
                              auth_method="password", secret="x" * 12)
            session = daemon.new_session(account)
            for state in path:
                session._set_state(State(state))
            session.heartbeat.last_at = now - (k % 300)
            if k % 7 == 0:
                session.mail.last_exists = (now - (k % 3600), 10 + k % 50)
            sup.adopt(session)
    for k in range(done, n):  # queued: made, not started yet
        account = Account(id=f"00000000-0000-4000-8000-{k:012d}", user_id="u",
                          email=f"user{k}@example.org", host=hosts[k % len(hosts)],
                          port=993, security="tls", username=f"user{k}",
                          auth_method="password", secret="x" * 12)
        session = daemon.new_session(account)
        sup.adopt(session, queued=True)
    for k in range(_INVALID):
        sup.adopt_invalid(InvalidRow(f"bad-{k}", f"bad{k}@example.org",
                                     "encrypted_secret cannot be decrypted"))
    sup._ready = True
    LIVE.attach(sup)
    return daemon, reactor


async def _measure(daemon: Any, reactor: Any, runs: int, n: int) -> list[dict[str, Any]]:
    import treq
    from twisted.web.client import Agent, HTTPConnectionPool

    status = daemon.status
    status.startService()
    port = (await status.when_listening()).getHost().port
    base = f"http://127.0.0.1:{port}"
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = treq.client.HTTPClient(Agent(reactor, pool=pool))
    admin = {"x-admin-secret": ADMIN_SECRET}
    routes = (
        ("/", "/", {}),
        ("/ (admin, first page)", "/", admin),
        ("/ (admin, page at 25000)", f"/?offset={n // 2}&limit=100", admin),
        ("/ (admin, search)", "/?q=user4242", admin),
        ("/ (admin, state filter)", "/?state=backoff", admin),
        ("/status (one page)", f"/status?limit=100&offset={n // 2}", admin),
        ("/metrics", "/metrics", {}),
        ("/status (all accounts)", "/status", admin),
    )
    out = []
    for name, path, headers in routes:
        times, size = [], 0
        for _ in range(runs):
            started = time.perf_counter()
            response = await client.get(base + path, headers=headers)
            body = await response.content()
            times.append((time.perf_counter() - started) * 1000)
            if response.code != 200:
                raise SystemExit(f"{path}: HTTP {response.code}")
            size = len(body)
        out.append({"route": name, "n": n, "runs": runs,
                    "median_ms": round(statistics.median(times), 1),
                    "min_ms": round(min(times), 1), "max_ms": round(max(times), 1),
                    "bytes": size})
    await pool.closeCachedConnections()
    await status.stopService()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.statuscost",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="synthetic sessions")
    parser.add_argument("--runs", type=int, default=21, help="requests per route")
    args = parser.parse_args(argv)

    from twisted.internet import defer, task

    built = time.perf_counter()
    daemon, reactor = _build(args.n)
    print(f"built {args.n} sessions in {time.perf_counter() - built:.1f}s", file=sys.stderr)
    results: list[dict[str, Any]] = []

    async def run(_reactor: Any) -> None:
        results.extend(await _measure(daemon, reactor, args.runs, args.n))

    try:
        task.react(lambda r: defer.Deferred.fromCoroutine(run(r)))
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    for line in results:
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
