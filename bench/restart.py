"""``python -m bench.restart --n 10000``: how many scans a restart and a replica takeover
send, with the marks of ``rebreak_idle.mailbox_state`` (issue 15). It counts, it does not
time: the figures hold on a loaded machine.

Phases, on one database, load server and sink (plain IMAP, 127.0.0.1):

0. **first start**: the daemon with N accounts; every mailbox is new, so N ``connected``
   scans; wait until N sessions idle and N marks are stored; SIGTERM.
1. **restart, nothing new**: start again, wait until N idle plus ``--settle`` seconds:
   scans sent (goal 0); SIGTERM.
2. **restart, mail while down**: ``deliver`` one message to ``--changed`` (100) accounts
   while no daemon runs, start again: scans sent (goal exactly ``--changed``, each of those
   accounts once); SIGTERM.
3. **takeover**: three replicas with leases (``REBREAK_LEASES=on``) share the N accounts;
   once they are steady, one is SIGKILLed, ``--changed`` of its accounts get a message,
   and the two others take its ~N/3 accounts over after the lease TTL: scans sent (goal:
   the changed ones only).

One JSON line on stdout (and appended to ``bench/results-restart.jsonl``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg2

from .runner import Bench, Control, RunConfig, free_port, http_get_json

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results-restart.jsonl"


class RestartBench:
    def __init__(self, bench: Bench, n: int, changed: int, settle: float,
                 connect_rate: float) -> None:
        self.bench = bench
        self.n = n
        self.changed = changed
        self.settle = settle
        self.connect_rate = connect_rate
        self.log = bench.log

    # -- helpers ---------------------------------------------------------------------

    def arrivals(self) -> list[list[Any]]:
        return http_get_json(self.sink_url + "/_bench/arrivals?since=0")

    def marks(self) -> int:
        with contextlib.closing(psycopg2.connect(self.dsn)) as c, c.cursor() as cur:
            cur.execute("SELECT count(*) FROM rebreak_idle.mailbox_state")
            return int(cur.fetchone()[0])

    def owned_by(self, replica: str) -> list[str]:
        with contextlib.closing(psycopg2.connect(self.dsn)) as c, c.cursor() as cur:
            cur.execute("SELECT connection_id::text FROM rebreak_idle.leases "
                        "WHERE replica_id = %s AND expires_at > now()", (replica,))
            return [r[0] for r in cur.fetchall()]

    def wait(self, check: Any, what: str, deadline: float) -> bool:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if check():
                return True
            time.sleep(0.2)
        self.log(f"not within {deadline:.0f}s: {what}")
        return False

    def idling(self) -> int:
        return int(self.control.stats()["idling"])

    def start(self, name: str, **env: str) -> Any:
        run_dir = self.run_dir / name
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = RunConfig(n=self.n, tls=False, connect_rate=self.connect_rate, heartbeat=120.0,
                        refresh_interval=30.0,
                        extra_env={"REBREAK_WRITE_FLUSH_INTERVAL": "2", **env})
        return self.bench.start_daemon(run_dir, self.daemon_dsn, self.sink_port, cfg,
                                       free_port())

    def steady(self, before: int, deadline: float) -> int:
        """Wait until N sessions idle, then until no scan arrived for ``settle`` seconds;
        the scans that arrived since ``before``."""
        self.wait(lambda: self.idling() >= self.n, f"{self.n} idling", deadline)
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < self.settle:
            count = len(self.arrivals())
            if count != last:
                last, quiet_since = count, time.monotonic()
            time.sleep(0.5)
        return last - before

    def ramp_deadline(self) -> float:
        return 3 * self.n / self.connect_rate + 120

    # -- the run ---------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        bench = self.bench
        self.run_dir = bench.workdir / f"restart-n{self.n}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "n": self.n,
                                  "changed": self.changed, "machine": bench.machine,
                                  "loadavg_before": [round(x, 2) for x in os.getloadavg()],
                                  "errors": []}
        ls, ls_ready, sink, sink_ready = bench.start_helpers(self.run_dir)
        self.control = Control("127.0.0.1", ls_ready["control_port"])
        self.sink_port = sink_ready["port"]
        self.sink_url = f"http://127.0.0.1:{self.sink_port}"
        self.dsn, self.daemon_dsn, _ = bench.new_database()
        users = bench.seed(self.dsn, self.n, ls_ready["port"], False)
        by_id = {cid: user for user, cid in users.items()}
        procs: list[Any] = []
        try:
            self.log(f"restart n={self.n}: first start")
            d = self.start("first")
            procs.append(d)
            result["first_start_scans"] = self.steady(0, self.ramp_deadline())
            self.wait(lambda: self.marks() >= self.n, "marks stored", 60)
            result["marks_stored"] = self.marks()
            bench.children.stop(d, 60)

            self.log("restart with nothing new")
            before = len(self.arrivals())
            d = self.start("nothing-new")
            procs.append(d)
            result["restart_nothing_new_scans"] = self.steady(before, self.ramp_deadline())
            bench.children.stop(d, 60)

            self.log(f"restart after mail to {self.changed} accounts while down")
            changed = list(users)[: self.changed]
            for user in changed:
                self.control.ask(f"deliver {user}")
            before = len(self.arrivals())
            d = self.start("mail-while-down")
            procs.append(d)
            result["restart_changed_scans"] = self.steady(before, self.ramp_deadline())
            got = Counter(by_id.get(a[1]) for a in self.arrivals()[before:])
            result["restart_changed_each_once"] = (set(got) == set(changed)
                                                  and set(got.values()) == {1})
            bench.children.stop(d, 60)

            result.update(self.takeover(users, by_id))
        except (RuntimeError, OSError, psycopg2.Error, ValueError, KeyError) as e:
            result["errors"].append(f"{type(e).__name__}: {e}")
            self.log(f"restart bench: {e}")
        finally:
            self.control.close()
            for proc in procs:
                bench.children.stop(proc)
            bench.children.stop(ls)
            bench.children.stop(sink)
        return result

    def takeover(self, users: dict[str, str], by_id: dict[str, str]) -> dict[str, Any]:
        lease = {"REBREAK_LEASES": "on", "REBREAK_LEASE_TTL": "10", "REBREAK_LEASE_RENEW": "2"}
        self.log("takeover: three replicas share the accounts")
        replicas = {name: self.start(f"replica-{name}", REBREAK_REPLICA_ID=name, **lease)
                    for name in ("a", "b", "c")}
        before_all = len(self.arrivals())
        out: dict[str, Any] = {}
        try:
            self.steady(before_all, self.ramp_deadline())
            self.wait(lambda: sum(len(self.owned_by(r)) for r in replicas) >= self.n
                      and self.idling() >= self.n, "shares settled", 120)
            time.sleep(self.settle)
            out["takeover_setup_scans"] = len(self.arrivals()) - before_all
            victims = self.owned_by("c")
            out["takeover_accounts"] = len(victims)
            before = len(self.arrivals())
            replicas["c"].kill()  # a crash: its leases expire after the TTL
            replicas["c"].wait(30)
            changed = [by_id[cid] for cid in victims[: self.changed]]
            for user in changed:
                self.control.ask(f"deliver {user}")
            self.wait(lambda: sum(len(self.owned_by(r)) for r in ("a", "b")) >= self.n,
                      "a and b own everything", 120)
            out["takeover_scans"] = self.steady(before, self.ramp_deadline())
            got = Counter(by_id.get(a[1]) for a in self.arrivals()[before:])
            out["takeover_changed_each_once"] = (set(got) == set(changed)
                                                and set(got.values()) == {1})
        finally:
            for proc in replicas.values():
                self.bench.children.stop(proc, 60)
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.restart", description=__doc__)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--changed", type=int, default=100)
    p.add_argument("--settle", type=float, default=10.0,
                   help="seconds without a new scan that end a phase")
    p.add_argument("--connect-rate", type=float, default=500.0)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    bench = Bench(None, args.workdir)
    try:
        result = RestartBench(bench, args.n, args.changed, args.settle,
                              args.connect_rate).run()
    finally:
        bench.close()
    line = json.dumps(result, sort_keys=True)
    sys.stdout.write(line + "\n")
    with args.results.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
