"""``python -m bench.faults``: the fault bench. A few hundred accounts watched by the real
daemon for 10+ minutes while faults are injected on a schedule, alone and overlapping; it
reports whether every delivered message was covered by a scan (issue 23).

Real processes, all on 127.0.0.1:

- a throwaway PostgreSQL (``rebreak_idle/testing/pg.py``), stopped and started again;
- the daemon, ``twist rebreak-idle`` (or ``--replicas N`` of them with leases), SIGKILLed
  and started again;
- the load IMAP server (:mod:`bench.loadserver`): delivers mail (``* N EXISTS`` to the
  selected connection), sends ``* BYE``, turns one connection silent (reads and writes
  nothing, stays open) or deaf (IDLE without EXISTS, DONE never answered);
- the backend (:mod:`bench.sink`): records every scan request and answers 200, 503 (with
  or without ``Retry-After``), or refuses connections.

Mail: a third of the accounts get exactly one message in the whole run (sparse: nothing
later covers an earlier miss; some of them get it right after a fault of their own), a
third get one about every ``--dense-interval`` seconds, the rest none.

Every wait has a deadline and every loop a count; the children run in their own process
groups and are killed on exit, Ctrl-C or an error. See bench/README.md ("Fault bench").
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

from .faultreport import Delivery, Scan, Window, account_windows, cover, from_raw, to_raw
from .runner import (
    ADMIN_SECRET,
    ROOT,
    Bench,
    Control,
    RunConfig,
    free_port,
    http_get,
    http_get_json,
    rss_kb,
)

__all__ = ["FULL", "QUICK", "Fault", "main", "plan_mail"]

PER_ACCOUNT = ("bye", "silent", "deaf")
#: the daemon's gauges of owed scans, sampled every 5 s where it has them
OWED_GAUGES = ("rebreak_idle_scans_owed", "rebreak_idle_oldest_owed_scan_age_seconds")


@dataclass(frozen=True)
class Fault:
    """One entry of the schedule, ``at`` seconds after all sessions first idled.

    ``backend``: ``answer`` (``refuse`` or ``503``, with ``retry_after``) for ``seconds``;
    ``db``: PostgreSQL stopped for ``seconds``; ``kill``: every daemon SIGKILLed and started
    again after ``seconds``; ``replica``: the last replica SIGKILLed, started again after
    ``seconds`` (only with ``--replicas`` 2 or more); ``bye`` / ``silent`` / ``deaf``:
    ``share`` of the accounts, spread over ``seconds``. ``targeted`` sparse accounts get
    their one message just after the fault (an account of the fault for the last three)."""

    at: float
    kind: str
    seconds: float = 0.0
    answer: str = ""
    retry_after: int | None = None
    share: float = 0.0
    targeted: int = 0


#: the default schedule, for 600 s (longer runs stretch the start times, not the lengths)
FULL: tuple[Fault, ...] = (
    Fault(20, "bye", 30, share=0.04, targeted=3),
    Fault(60, "backend", 45, answer="refuse", targeted=4),
    Fault(70, "bye", 25, share=0.04, targeted=3),  # BYEs while the backend refuses
    Fault(85, "silent", 5, share=0.03, targeted=3),
    Fault(130, "db", 15, targeted=2),
    Fault(135, "deaf", 5, share=0.03, targeted=3),  # deaf IDLEs while the database is down
    Fault(180, "backend", 40, answer="503", targeted=4),
    Fault(200, "kill", 5, targeted=3),  # the daemon killed during a 503 spell
    Fault(260, "kill", 3, targeted=3),
    Fault(300, "silent", 5, share=0.03, targeted=3),
    Fault(330, "backend", 40, answer="503", retry_after=7, targeted=4),
    Fault(340, "bye", 20, share=0.04, targeted=3),
    Fault(345, "deaf", 5, share=0.02, targeted=2),
    Fault(400, "replica", 40, targeted=3),
    Fault(450, "backend", 70, answer="refuse", targeted=4),
    Fault(465, "kill", 4, targeted=3),  # restarted while the backend still refuses
    Fault(480, "db", 10, targeted=2),
    Fault(540, "bye", 15, share=0.04, targeted=3),
    Fault(545, "deaf", 5, share=0.02, targeted=2),
)
FULL_SECONDS = 600.0

#: ``--quick``: about two minutes of faults
QUICK: tuple[Fault, ...] = (
    Fault(8, "kill", 3, targeted=2),
    Fault(20, "backend", 40, answer="refuse", targeted=4),
    Fault(28, "bye", 20, share=0.03, targeted=2),
    Fault(64, "db", 8, targeted=2),
    Fault(66, "silent", 3, share=0.02, targeted=2),
    Fault(68, "deaf", 3, share=0.02, targeted=2),
    Fault(76, "backend", 12, answer="503", targeted=2),
    Fault(90, "backend", 12, answer="503", retry_after=5, targeted=2),
    Fault(92, "replica", 15, targeted=2),
    Fault(104, "bye", 4, share=0.02, targeted=1),
)
QUICK_SECONDS = 120.0


def scaled(schedule: Sequence[Fault], base: float, duration: float) -> list[Fault]:
    """The schedule with its start times stretched from ``base`` to ``duration`` seconds."""
    k = duration / base
    return [Fault(**{**asdict(f), "at": round(f.at * k, 1)}) for f in schedule]


@dataclass
class MailPlan:
    deliveries: list[tuple[float, str, str]]  # (at, email, kind), sorted
    targets: dict[int, list[str]]  # schedule index -> sparse accounts aimed at that fault


def plan_mail(emails: Sequence[str], schedule: Sequence[Fault], duration: float,
              dense_interval: float, rng: random.Random) -> MailPlan:
    """When each account gets mail. Sparse accounts (the first third) get one message,
    dense ones (the second third) one about every ``dense_interval`` s; the sparse ones
    aimed at a fault get theirs 1 s (fleet faults) or 2 s (their own fault) after it."""
    third = len(emails) // 3
    sparse, dense = list(emails[:third]), list(emails[third:2 * third])
    pool = sparse[:]
    rng.shuffle(pool)
    last = max(2.0, duration - max(15.0, duration * 0.05))
    out: list[tuple[float, str, str]] = []
    targets: dict[int, list[str]] = {}
    for i, f in enumerate(schedule):
        picked = [pool.pop() for _ in range(min(f.targeted, len(pool)))]
        targets[i] = picked
        if f.kind not in PER_ACCOUNT:
            out += [(min(last, f.at + 1.0 + 0.2 * j), e, "sparse") for j, e in enumerate(picked)]
    for e in pool:
        out.append((round(rng.uniform(2.0, last), 3), e, "sparse"))
    for e in dense:
        t = rng.uniform(2.0, 2.0 + dense_interval)
        for _ in range(100_000):
            if t > last:
                break
            out.append((round(t, 3), e, "dense"))
            t += rng.expovariate(1.0 / dense_interval)
    out.sort()
    return MailPlan(out, targets)


# -- the run ---------------------------------------------------------------------------------

@dataclass
class Step:
    at: float  # seconds after t0
    what: str
    action: Callable[[], None]
    restore: bool = False  # puts a part back: done at the end if the run stops first


@dataclass
class Daemons:
    """The daemon processes (one, or replicas with leases), by name."""

    bench: Bench
    run_dir: Path
    dsn: str
    backend_port: int
    cfg: RunConfig
    replicas: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    status_ports: dict[str, int] = field(default_factory=dict)
    killed: set[str] = field(default_factory=set)
    starts: int = 0

    @property
    def names(self) -> list[str]:
        return [chr(ord("a") + i) for i in range(self.replicas)]

    def start(self, name: str) -> None:
        env = dict(self.cfg.extra_env)
        if self.replicas > 1:
            env.update(REBREAK_LEASES="on", REBREAK_REPLICA_ID=name, REBREAK_LEASE_TTL="10",
                       REBREAK_LEASE_RENEW="2")
        cfg = RunConfig(**{**asdict(self.cfg), "extra_env": env})
        run_dir = self.run_dir / f"daemon-{name}"
        run_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.procs[name] = self.bench.start_daemon(run_dir, self.dsn, self.backend_port, cfg,
                                                   port)
        self.status_ports[name] = port
        self.killed.discard(name)
        self.starts += 1

    def kill(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        self.killed.add(name)

    def accounts_of(self, name: str) -> list[str]:
        """Connection ids of the accounts that replica watches (its /status)."""
        port = self.status_ports.get(name)
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
            status, body = http_get(f"http://127.0.0.1:{port}/status", 5.0,
                                    {"x-admin-secret": ADMIN_SECRET})
            if status == 200:
                doc = json.loads(body)
                rows = doc.get("accounts", doc) if isinstance(doc, dict) else doc
                return [str(r["id"]) for r in rows if isinstance(r, dict) and "id" in r]
        return []

    def unexpected_exits(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None and n not in self.killed]

    def gauges(self, names: Sequence[str]) -> dict[str, float]:
        """The sum over the live daemons of each gauge in ``names`` that their /metrics
        show (absent ones are left out)."""
        out: dict[str, float] = {}
        for name, port in self.status_ports.items():
            if self.procs[name].poll() is not None:
                continue
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, body = http_get(f"http://127.0.0.1:{port}/metrics", 2.0)
                if status != 200:
                    continue
                for line in body.decode(errors="replace").splitlines():
                    metric, _, value = line.partition(" ")
                    if metric in names:
                        with contextlib.suppress(ValueError):
                            out[metric] = out.get(metric, 0.0) + float(value)
        return out

    def rss(self) -> list[int]:
        out = []
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(OSError, RuntimeError):
                    out.append(rss_kb(p.pid))
        return out

    def stop_all(self) -> None:
        for proc in self.procs.values():
            self.bench.children.stop(proc, 20.0)


class FaultBench:
    def __init__(self, bench: Bench, args: argparse.Namespace) -> None:
        self.bench = bench
        self.args = args
        self.log = bench.log
        self.rng = random.Random(args.seed)
        self.duration = args.duration
        base, table = (QUICK_SECONDS, QUICK) if args.quick else (FULL_SECONDS, FULL)
        self.schedule = scaled(table, base, self.duration)
        self.errors: list[str] = []
        self.executed: list[dict[str, Any]] = []  # what was done, with wall times
        self.fleet_windows: list[Window] = []
        self.account_faults: list[tuple[str, str, float]] = []  # (kind, cid, time)
        self.samples: list[tuple[float, frozenset[str]]] = []
        self.rss_samples: list[int] = []
        self.deliveries: list[Delivery] = []
        self.db_down = False
        self.spell: dict[str, Any] | None = None  # the backend-down spell going on
        self.owed_max: dict[str, float] = {}
        self.raw: dict[str, Any] | None = None

    # -- parts ---------------------------------------------------------------------------

    def backend(self, answer: str, retry_after: int | None = None) -> None:
        query = f"answer={answer}" + (f"&retry_after={retry_after}" if retry_after else "")
        status, body = http_get(f"{self.sink_control}/_bench/mode?{query}", 30.0)
        if status != 200:  # the run goes on; the report says so
            self.errors.append(f"backend mode {query}: HTTP {status} "
                               f"{body.decode(errors='replace')}")

    def scans(self) -> list[Scan]:
        rows = http_get_json(f"{self.sink_control}/_bench/requests?since=0", 30.0)
        return [Scan(str(cid), str(mailbox), float(rx), float(ans), int(status))
                for rx, ans, status, cid, mailbox, _reason, _exists in rows]

    def watched(self) -> frozenset[str]:
        return frozenset(self.users[e] for e in json.loads(self.control.ask("watched"))
                         if e in self.users)

    # -- the schedule --------------------------------------------------------------------

    def steps(self, targets: dict[int, list[str]]) -> list[Step]:
        out: list[Step] = []
        for i, f in enumerate(self.schedule):
            if f.kind == "backend":
                kind = ("refused" if f.answer == "refuse"
                        else "503+retry-after" if f.retry_after else "503")
                spell: dict[str, Any] = {"kind": kind}
                out.append(Step(f.at, f"backend {kind} for {f.seconds:.0f}s",
                                self._backend_down(f, spell)))
                out.append(Step(f.at + f.seconds, f"backend answers 200 again (after {kind})",
                                self._backend_up(spell), restore=True))
            elif f.kind == "db":
                out.append(Step(f.at, f"database stopped for {f.seconds:.0f}s", self._db_stop))
                out.append(Step(f.at + f.seconds, "database started", self._db_start,
                                restore=True))
            elif f.kind == "kill":
                out.append(Step(f.at, f"daemon SIGKILLed, restarted after {f.seconds:.0f}s",
                                self._kill_all))
                out.append(Step(f.at + f.seconds, "daemon started", self._start_killed,
                                restore=True))
            elif f.kind == "replica":
                if self.args.replicas < 2:
                    self.executed.append({"at_s": f.at, "what": "replica kill skipped "
                                          "(--replicas 1)"})
                    continue
                out.append(Step(f.at, f"replica killed for {f.seconds:.0f}s",
                                self._kill_replica))
                out.append(Step(f.at + f.seconds, "replica started", self._start_killed,
                                restore=True))
            else:
                chosen = self._accounts_for(f, targets.get(i, []))
                for j, email in enumerate(chosen):
                    at = f.at + f.seconds * j / max(1, len(chosen))
                    out.append(Step(at, f"{f.kind} {email}",
                                    self._account_fault(f.kind, email)))
                    if email in targets.get(i, []):
                        self.targeted_mail.append((at + 2.0, email))
                what = f"{f.kind} to {len(chosen)} accounts over {f.seconds:.0f}s"
                self.executed.append({"at_s": f.at, "what": what, "planned": True})
        out.sort(key=lambda s: s.at)
        return out

    def _accounts_for(self, f: Fault, aimed: list[str]) -> list[str]:
        count = max(1, round(f.share * len(self.emails)))
        others = [e for e in self.emails if e not in aimed]
        return aimed + self.rng.sample(others, max(0, count - len(aimed)))

    def _backend_down(self, f: Fault, spell: dict) -> Callable[[], None]:
        """A spell begins; one that is still on ends here (one backend, one answer)."""
        def go() -> None:
            self.backend("refuse" if f.answer == "refuse" else "503", f.retry_after)
            self._end_spell()
            spell["start"] = time.time()
            self.spell = spell
        return go

    def _backend_up(self, spell: dict) -> Callable[[], None]:
        def go() -> None:
            if self.spell is spell:
                self.backend("ok")
                self._end_spell()
        return go

    def _end_spell(self) -> None:
        if self.spell is not None:
            self.fleet_windows.append(Window(self.spell["kind"], self.spell["start"],
                                             time.time()))
            self.spell = None

    def _db_stop(self) -> None:
        if self.bench.pg is None:
            self.errors.append("database restart skipped: REBREAK_TEST_DATABASE_URL is set")
            return
        self.bench.pg.stop("fast")
        self.db_down, self.db_since = True, time.time()

    def _db_start(self) -> None:
        if self.bench.pg is None or not self.db_down:
            return
        self.bench.pg.start()
        self.db_down = False
        self.fleet_windows.append(Window("db-restart", self.db_since, time.time()))

    def _kill_all(self) -> None:
        t = time.time()
        for name in self.daemons.names:
            self.daemons.kill(name)
        self.account_faults += [("daemon-kill", cid, t) for cid in self.users.values()]

    def _kill_replica(self) -> None:
        name = self.daemons.names[-1]
        watched = self.daemons.accounts_of(name)
        t = time.time()
        self.daemons.kill(name)
        self.account_faults += [("replica-kill", cid, t) for cid in watched]

    def _start_killed(self) -> None:
        for name in sorted(self.daemons.killed):
            self.daemons.start(name)

    def _account_fault(self, kind: str, email: str) -> Callable[[], None]:
        def go() -> None:
            if self.control.ask(f"{kind} {email}") == "ok":
                self.account_faults.append((kind, self.users[email], time.time()))
            else:
                self.account_fault_misses += 1
        return go

    # -- the run -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        args, bench = self.args, self.bench
        run_dir = bench.workdir / "faults"
        run_dir.mkdir(parents=True, exist_ok=True)
        helpers_budget = self.duration + args.drain + 900
        ls, ls_ready, sink, sink_ready = bench.start_helpers(
            run_dir, args.accounts, helpers_budget, sink_port=port_outside_ephemeral_range())
        self.control = Control("127.0.0.1", ls_ready["control_port"])
        self.sink_control = f"http://127.0.0.1:{sink_ready['control_port']}"
        dsn, daemon_dsn, _ = bench.new_database()
        self.users = bench.seed(dsn, args.accounts, ls_ready["ports"], False)
        self.emails = sorted(self.users)
        self.account_fault_misses = 0
        self.targeted_mail: list[tuple[float, str]] = []
        plan = plan_mail(self.emails, self.schedule, self.duration, args.dense_interval,
                         self.rng)
        steps = self.steps(plan.targets)
        mail = sorted(plan.deliveries + [(t, e, "sparse") for t, e in self.targeted_mail])
        cfg = RunConfig(n=args.accounts, tls=False, connect_rate=args.connect_rate,
                        heartbeat=args.heartbeat, refresh_interval=30.0,
                        extra_env={"REBREAK_NOOP_TIMEOUT": str(args.noop_timeout),
                                   "REBREAK_SHUTDOWN_TIMEOUT": "5",
                                   **dict(item.split("=", 1) for item in args.env)})
        self.daemons = Daemons(bench, run_dir, daemon_dsn, sink_ready["port"], cfg,
                               args.replicas)
        result: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "accounts": args.accounts,
            "duration_s": self.duration, "quick": args.quick, "replicas": args.replicas,
            "heartbeat_s": args.heartbeat, "noop_timeout_s": args.noop_timeout,
            "connect_rate": args.connect_rate, "seed": args.seed,
            "code": code_version(), "machine": bench.machine, "run_dir": str(run_dir)}
        try:
            for name in self.daemons.names:
                self.daemons.start(name)
            self.log(f"{args.accounts} accounts, {args.replicas} daemon(s): waiting for IDLE")
            if not self.wait_idle(args.accounts, 60 + 3 * args.accounts / args.connect_rate):
                raise RuntimeError("the sessions did not all reach IDLE")
            t0 = time.time()
            result["t0"] = t0
            self.log(f"all idle; {len(steps)} fault steps and {len(mail)} messages over "
                     f"{self.duration:.0f}s")
            self.loop(t0, steps, mail)
            self.log("schedule done; parts restored; waiting for the last scans "
                     f"(at most {args.drain:.0f}s)")
            self.drain(t0)
            result.update(self.collect(t0))
        except (RuntimeError, OSError, psycopg2.Error, ValueError, KeyError) as e:
            self.errors.append(f"{type(e).__name__}: {e}")
            self.log(f"fault bench: {e}")
        finally:
            self.control.close()
            self.daemons.stop_all()
            bench.children.stop(ls)
            bench.children.stop(sink)
        result["errors"] = self.errors
        result["daemon_log"] = daemon_log_summary(run_dir)
        if self.raw is not None:  # for --from-raw
            with (run_dir / "raw.json").open("w", encoding="utf-8") as f:
                json.dump({"result": result, "raw": self.raw}, f)
        return result

    def wait_idle(self, n: int, deadline: float) -> bool:
        end = time.monotonic() + deadline
        for _ in range(int(deadline * 5) + 10):
            if self.control.stats()["idling"] >= n:
                return True
            if time.monotonic() > end:
                break
            time.sleep(0.2)
        return False

    def loop(self, t0: float, steps: list[Step], mail: list[tuple[float, str, str]]) -> None:
        si = mi = 0
        next_sample = next_rss = t0
        end = t0 + self.duration
        for _ in range(int(self.duration * 100) + 1000):
            now = time.time()
            if now >= end:
                break
            while si < len(steps) and t0 + steps[si].at <= now:
                self.do(steps[si], t0)
                si += 1
            while mi < len(mail) and t0 + mail[mi][0] <= now:
                self.deliver(mail[mi][1], mail[mi][2])
                mi += 1
            if now >= next_sample:
                self.samples.append((time.time(), self.watched()))
                next_sample += 1.0
            if now >= next_rss:
                self.rss_samples += self.daemons.rss()
                self.sample_owed()
                next_rss += 5.0
            for name in self.daemons.unexpected_exits():
                self.errors.append(f"daemon {name} exited by itself at "
                                   f"{time.time() - t0:.1f}s; started again")
                self.daemons.start(name)
            upcoming = [t0 + steps[si].at] if si < len(steps) else []
            upcoming += [t0 + mail[mi][0]] if mi < len(mail) else []
            wake = min([next_sample, end, *upcoming])
            time.sleep(min(0.5, max(0.0, wake - time.time())))
        for step in steps[si:]:  # put back what is still down
            if step.restore:
                self.do(step, t0)

    def sample_owed(self) -> None:
        """The owed-scan gauges (issue 23), where the daemon has them: the most seen."""
        for name, value in self.daemons.gauges(OWED_GAUGES).items():
            self.owed_max[name] = max(self.owed_max.get(name, 0.0), value)

    def do(self, step: Step, t0: float) -> None:
        self.log(f"{time.time() - t0:6.1f}s {step.what}")
        step.action()
        if not step.what.startswith(PER_ACCOUNT):
            self.executed.append({"at_s": round(time.time() - t0, 1), "what": step.what})

    def deliver(self, email: str, kind: str) -> None:
        words = self.control.ask(f"deliver {email}").split()
        if words[0] != "ok":
            self.errors.append(f"deliver {email}: {' '.join(words)}")
            return
        self.deliveries.append(Delivery(self.users[email], email, float(words[3]),
                                        int(words[2]), kind))

    def drain(self, t0: float) -> None:
        end = time.time() + self.args.drain
        next_sample = time.time()
        for _ in range(int(self.args.drain * 10) + 10):
            if time.time() >= end:
                break
            if time.time() >= next_sample:
                self.samples.append((time.time(), self.watched()))
                self.rss_samples += self.daemons.rss()
                if all(s is not None for s in cover(self.deliveries, self.scans())):
                    self.log(f"{time.time() - t0:6.1f}s every message covered")
                    break
                next_sample += 2.0
            time.sleep(0.1)

    def collect(self, t0: float) -> dict[str, Any]:
        logins_by_email = json.loads(self.control.ask("logins"))
        logins = {self.users[e]: v for e, v in logins_by_email.items() if e in self.users}
        end = time.time()
        windows = self.fleet_windows + account_windows(self.account_faults, logins, end)
        self.samples.append((end, self.watched()))
        self.raw = to_raw(self.deliveries, self.scans(), windows, t0, self.samples,
                          list(self.users.values()), logins, self.rss_samples)
        report = from_raw(self.raw)
        report["account_fault_misses"] = self.account_fault_misses
        report["account_faults"] = {k: sum(1 for f in self.account_faults if f[0] == k)
                                    for k in ("bye", "silent", "deaf", "daemon-kill",
                                              "replica-kill")}
        report["schedule"] = sorted(self.executed, key=lambda e: e["at_s"])
        report["daemon_starts"] = self.daemons.starts
        report["owed_gauges_max"] = {k.removeprefix("rebreak_idle_"): round(v, 1)
                                     for k, v in sorted(self.owed_max.items())}
        return report


# -- outside the run ------------------------------------------------------------------------

def port_outside_ephemeral_range() -> int:
    """A free loopback port below the kernel's ephemeral range, for the backend: while it
    refuses connections, the daemon's thousands of connection attempts to it would
    otherwise, now and then, get that very port as their own source port and connect to
    themselves (TCP simultaneous open), and the backend could not listen there again."""
    low = 32768
    with contextlib.suppress(OSError, ValueError), open(
            "/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low // 2), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return 0


def code_version() -> dict[str, str]:
    """Which code the daemon runs: the rebreak_idle it imports and the commit."""
    out = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["rebreak_idle"] = subprocess.run(
            [sys.executable, "-c", "import rebreak_idle; print(rebreak_idle.__file__)"],
            capture_output=True, text=True, timeout=30, cwd="/").stdout.strip()
        out["commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True,
            text=True, timeout=30).stdout.strip()
    return out


_DOWN = re.compile(r"\[idle/db\] backend down: ")
_BACK = re.compile(r"\[idle/db\] backend back after ([0-9.]+)s: sending (\d+) owed scans")


def daemon_log_summary(run_dir: Path) -> dict[str, Any]:
    """The backend-health lines of the daemons' logs (issue 23), and tracebacks."""
    down = back = tracebacks = 0
    backs: list[str] = []
    for path in sorted(run_dir.glob("daemon-*/daemon.log")):
        for line in path.read_text(errors="replace").splitlines():
            if _DOWN.search(line):
                down += 1
            m = _BACK.search(line)
            if m:
                back += 1
                backs.append(f"{m.group(1)}s/{m.group(2)}")
            if line.startswith("Traceback"):
                tracebacks += 1
    return {"backend_down_lines": down, "backend_back_lines": back,
            "backend_back": backs[:20], "tracebacks": tracebacks}


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def render(r: dict[str, Any]) -> str:
    """The printed report."""
    out = [f"fault bench: {r['accounts']} accounts, {r['duration_s']:.0f}s of faults, "
           f"{r['replicas']} daemon(s), heartbeat {r['heartbeat_s']:.0f}s, NOOP timeout "
           f"{r['noop_timeout_s']:.0f}s, connect rate {r['connect_rate']:.0f}/s",
           f"code: {r['code'].get('commit', '?')} ({r['code'].get('rebreak_idle', '?')})"]
    if "delivered" not in r:
        out += [f"error: {e}" for e in r["errors"]]
        return "\n".join(out)
    out += ["", "schedule (s after all sessions first idled):"]
    out += [f"  {e['at_s']:6.1f}  {e['what']}" for e in r["schedule"]]
    out += ["", f"messages delivered: {r['delivered']} (sparse {r['delivered_sparse']}, "
            f"dense {r['delivered_dense']})",
            f"covered by an acknowledged scan that started after delivery: {r['covered']} / "
            f"{r['delivered']}   uncovered: {r['uncovered']}",
            f"scan requests: {r['scan_requests']} ({r['scan_requests_acknowledged']} "
            "answered 2xx)",
            "", "delay delivery -> covering scan (s)       n      p50      p99      max"]
    rows = [("outside backend-down spells", r["delay_s"]["outside"]),
            ("inside backend-down spells", r["delay_s"]["inside"]),
            ("sparse accounts", r["delay_s"]["sparse"]),
            ("dense accounts", r["delay_s"]["dense"])]
    rows += [(f"  at delivery: {k}", v) for k, v in r["delay_s_by_fault"].items()]
    out += [f"  {name:<36}{d['n']:>5} {_fmt(d['p50']):>8} {_fmt(d['p99']):>8} "
            f"{_fmt(d['max']):>8}" for name, d in rows]
    out += ["", "backend-down spells: from-to (s), kind, messages inside covered/delivered, "
            "scan requests that reached the backend in the spell, first 2xx scan after the "
            "return (s), covering scans of the messages inside after the return (p50 / max s)"]
    for s in r["spells"]:
        a = s["covered_after_return_s"]
        out.append(f"  {s['from_s']:6.1f}-{s['to_s']:6.1f} {s['kind']:<16} "
                   f"{s['covered']}/{s['delivered']:<5} requests {s['requests']:<5} "
                   f"first 2xx {_fmt(s['first_2xx_after_return_s']):>6}   "
                   f"covering {_fmt(a['p50'])} / {_fmt(a['max'])}")
    if "logins" in r:
        lg = r["logins"]
        out.append(f"\nlogins per account: min {lg['min']:.0f}, median {lg['median']:.0f}, "
                   f"max {lg['max']:.0f}")
    if "unwatched_s" in r:
        u = r["unwatched_s"]
        out.append(f"seconds unwatched per account (IMAP server's view, sampled every 1 s): "
                   f"min {u['min']}, median {u['median']}, max {u['max']}, total {u['total']}")
    if "rss_mib" in r:
        out.append(f"daemon RSS (MiB): median {r['rss_mib']['median']}, max "
                   f"{r['rss_mib']['max']} ({r['rss_mib']['samples']} samples)")
    faults = r.get("account_faults", {})
    out.append("account faults done: " + ", ".join(f"{k} {v}" for k, v in faults.items())
               + f" (not done, account not connected: {r.get('account_fault_misses')}); "
               f"daemon starts {r.get('daemon_starts')}")
    owed = r.get("owed_gauges_max")
    out.append("owed-scan gauges, most seen (every 5 s): " + (", ".join(
        f"{k} {v}" for k, v in owed.items()) if owed else "none exposed"))
    dl = r.get("daemon_log", {})
    out.append(f"daemon log: 'backend down' x{dl.get('backend_down_lines')}, 'backend back "
               f"after' x{dl.get('backend_back_lines')} {' '.join(dl.get('backend_back', []))}"
               f", tracebacks {dl.get('tracebacks')}")
    if r["missed"]:
        out += ["", "uncovered messages by account (s after t0, kind, fault at delivery):"]
        for email, missed in r["missed"].items():
            items = ", ".join(f"{m['at_s']}s #{m['exists']} {m['kind']} {m['during']}"
                              for m in missed)
            out.append(f"  {email} ({r['ids'].get(email)}): {items}")
    out += [f"error: {e}" for e in r["errors"]]
    return "\n".join(out)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=(
        "Fault bench of rebreak-idle: the real daemon, PostgreSQL, an IMAP server and a "
        "backend on 127.0.0.1, faults on a schedule; reports whether every delivered "
        "message was covered by an acknowledged scan that started after it."))
    p.add_argument("--accounts", type=int, default=300)
    p.add_argument("--duration", type=float, default=None,
                   help=f"seconds of faults and mail (default {FULL_SECONDS:.0f}; "
                        f"{QUICK_SECONDS:.0f} with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="a shorter schedule (about 3 minutes in all) for trying it")
    p.add_argument("--replicas", type=int, default=1,
                   help="daemons sharing the accounts with leases (2: one is killed once)")
    p.add_argument("--heartbeat", type=float, default=30.0,
                   help="REBREAK_HEARTBEAT_INTERVAL (default 30 s)")
    p.add_argument("--noop-timeout", type=float, default=10.0,
                   help="REBREAK_NOOP_TIMEOUT (default 10 s)")
    p.add_argument("--connect-rate", type=float, default=50.0,
                   help="REBREAK_CONNECT_RATE (default 50/s, the daemon's default)")
    p.add_argument("--dense-interval", type=float, default=None,
                   help="mean seconds between two messages of a dense account "
                        "(default 30; 15 with --quick)")
    p.add_argument("--drain", type=float, default=None,
                   help="seconds to wait after the schedule for the last scans "
                        "(default 90; 60 with --quick)")
    p.add_argument("--seed", type=int, default=23)
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment of the daemon (repeatable)")
    p.add_argument("--daemon-cmd", default=None,
                   help="command of the daemon (default: the venv's 'twist rebreak-idle')")
    p.add_argument("--results", type=Path, default=None,
                   help="append the result as one JSON line to this file")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the logs here (default a new /tmp/rebreak-bench-*)")
    p.add_argument("--from-raw", type=Path, default=None, metavar="RAW_JSON",
                   help="print the report of an earlier run again from its raw.json "
                        "(in its work directory, faults/raw.json), with today's arithmetic")
    args = p.parse_args(argv)
    if args.from_raw is not None:
        saved = json.loads(args.from_raw.read_text(encoding="utf-8"))
        sys.stdout.write(render({**saved["result"], **from_raw(saved["raw"])}) + "\n")
        return 0
    if args.duration is None:
        args.duration = QUICK_SECONDS if args.quick else FULL_SECONDS
    if args.dense_interval is None:
        args.dense_interval = 15.0 if args.quick else 30.0
    if args.drain is None:
        args.drain = 60.0 if args.quick else 90.0
    if args.accounts < 3 or args.replicas < 1 or args.duration <= 0:
        p.error("needs at least 3 accounts, 1 replica and a positive duration")
    # the daemon and the helpers run this tree's code, not another install of it
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    signal.signal(signal.SIGTERM, _interrupt)
    bench = Bench(args.daemon_cmd, args.workdir)
    bench.log(f"work directory {bench.workdir}")
    try:
        result = FaultBench(bench, args).run()
    except KeyboardInterrupt:
        bench.log("interrupted; stopping the children")
        return 130
    finally:
        bench.close()
    sys.stdout.write(render(result) + "\n")
    sys.stdout.flush()
    if args.results is not None:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with args.results.open("a", encoding="utf-8") as f:
            f.write(json.dumps(result, sort_keys=True) + "\n")
    return 1 if result["errors"] or result.get("uncovered") else 0


if __name__ == "__main__":
    raise SystemExit(main())
