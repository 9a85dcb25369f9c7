"""``python -m bench --n 100 1000 10000 --tls both`` (also ``make bench BENCH_ARGS=...``)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from .replicas import RESULTS as REPLICA_RESULTS
from .replicas import ReplicaBench, ReplicaConfig, summary
from .report import RESULTS, render_docs
from .runner import Bench, RunConfig

__all__ = ["main"]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=(
        "Load benchmark of rebreak-idle: the real daemon against a load IMAP server and a "
        "backend sink on 127.0.0.1."))
    p.add_argument("--n", type=int, nargs="+", default=[100, 1000],
                   help="numbers of accounts, one run each (default: 100 1000)")
    p.add_argument("--tls", choices=("plain", "tls", "both"), default="both")
    p.add_argument("--connect-rate", type=float, default=500.0,
                   help="REBREAK_CONNECT_RATE of the daemon (default 500/s)")
    p.add_argument("--heartbeat", type=float, default=30.0,
                   help="REBREAK_HEARTBEAT_INTERVAL during the idle window (default 30 s)")
    p.add_argument("--cpu-window", type=float, default=None,
                   help="idle window in seconds (default: max(60, heartbeat), so that every "
                        "session's heartbeat falls into it)")
    p.add_argument("--inject-rate", type=float, default=50.0, help="EXISTS injections per s")
    p.add_argument("--inject-seconds", type=float, default=20.0)
    p.add_argument("--lost-after", type=float, default=10.0,
                   help="an injection without POST after this many seconds is lost")
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds after the ramp before measuring")
    p.add_argument("--idle-deadline", type=float, default=None,
                   help="give up waiting for all sessions idling after this many seconds "
                        "(default 3*N/rate+30)")
    p.add_argument("--daemon-cmd", default=None,
                   help="command of the daemon (default: the venv's 'twist rebreak-idle')")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment of the daemon (repeatable)")
    p.add_argument("--profile", action="store_true",
                   help="record each phase with py-spy into the work directory (such runs "
                        "are kept out of the docs table)")
    p.add_argument("--tracemalloc", action="store_true",
                   help="run the daemon under bench.memprofile and dump the largest "
                        "allocation sites at steady state (kept out of the docs table)")
    p.add_argument("--gc-log", action="store_true",
                   help="run the daemon under bench.gclog: garbage collections (count, ms) "
                        "per generation and phase in the JSON line (kept out of the docs "
                        "table)")
    p.add_argument("--gc-default", action="store_true",
                   help="as --gc-log, with CPython's default GC thresholds instead of the "
                        "daemon's (for comparison; kept out of the docs table)")
    p.add_argument("--extra-folders", action="store_true",
                   help="watch the load server's Junk and Unbekannt folders as well "
                   "(REBREAK_EXTRA_FOLDERS; such runs stay out of the docs table)")
    p.add_argument("--replicas", type=int, default=None, metavar="R",
                   help="run R daemon replicas with leases against several load servers "
                        "(bench/replicas.py); results in bench/results-replicas.jsonl")
    p.add_argument("--load-servers", type=int, default=None,
                   help="with --replicas: load-server processes (default N/12,500 rounded up)")
    p.add_argument("--host-login-rate", default="500",
                   help="with --replicas: REBREAK_HOST_LOGIN_RATE of each replica ('default': "
                        "leave the daemon's default)")
    p.add_argument("--host-login-burst", type=int, default=None,
                   help="with --replicas: REBREAK_HOST_LOGIN_BURST of each replica")
    p.add_argument("--lease-ttl", type=float, default=30.0, help="with --replicas")
    p.add_argument("--lease-renew", type=float, default=10.0, help="with --replicas")
    p.add_argument("--no-takeover", action="store_true",
                   help="with --replicas: skip the SIGKILL of one replica")
    p.add_argument("--results", type=Path, default=None, help="JSON lines file to append to")
    p.add_argument("--no-docs", action="store_true", help="do not re-render docs/benchmarks.md")
    p.add_argument("--workdir", type=Path, default=None, help="keep logs here (default tmp)")
    args = p.parse_args(argv)

    modes = {"plain": [False], "tls": [True], "both": [False, True]}[args.tls]
    extra = dict(item.split("=", 1) for item in args.env)
    if args.extra_folders:
        extra.setdefault("REBREAK_EXTRA_FOLDERS", "\\Junk,Unbekannt")
    signal.signal(signal.SIGTERM, _interrupt)
    bench = Bench(args.daemon_cmd, args.workdir)
    bench.log(f"work directory {bench.workdir}; RLIMIT_NOFILE {bench.nofile}")
    if args.replicas is not None:
        return _replicas(args, bench, modes, extra)
    args.results = args.results or RESULTS
    failed = False
    try:
        for n in args.n:
            for tls in modes:
                cfg = RunConfig(
                    n=n, tls=tls, connect_rate=args.connect_rate, heartbeat=args.heartbeat,
                    cpu_window=args.cpu_window or max(60.0, args.heartbeat),
                    inject_rate=args.inject_rate,
                    inject_seconds=args.inject_seconds, lost_after=args.lost_after,
                    settle=args.settle, idle_deadline=args.idle_deadline, extra_env=extra,
                    profile=args.profile, tracemalloc=args.tracemalloc,
                    gc_log=args.gc_log or args.gc_default, gc_default=args.gc_default)
                result = bench.run(cfg)
                failed = failed or bool(result["errors"])
                line = json.dumps(result, sort_keys=True)
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
                args.results.parent.mkdir(parents=True, exist_ok=True)
                with args.results.open("a", encoding="utf-8") as f:
                    f.write(line + "\n")
    except KeyboardInterrupt:
        bench.log("interrupted; stopping the children")
        return 130
    finally:
        bench.close()
    if not args.no_docs:
        render_docs(args.results)
    return 1 if failed else 0


def _replicas(args: argparse.Namespace, bench: Bench, modes: list[bool],
              extra: dict[str, str]) -> int:
    results = args.results or REPLICA_RESULTS
    rate = None if args.host_login_rate == "default" else float(args.host_login_rate)
    failed = False
    try:
        for n in args.n:
            for tls in modes:
                cfg = ReplicaConfig(
                    n=n, replicas=args.replicas, tls=tls, load_servers=args.load_servers,
                    connect_rate=args.connect_rate, host_login_rate=rate,
                    host_login_burst=args.host_login_burst, lease_ttl=args.lease_ttl,
                    lease_renew=args.lease_renew, heartbeat=args.heartbeat,
                    cpu_window=args.cpu_window or max(60.0, args.heartbeat),
                    inject_rate=args.inject_rate, inject_seconds=args.inject_seconds,
                    lost_after=args.lost_after, settle=args.settle,
                    ramp_deadline=args.idle_deadline, takeover=not args.no_takeover,
                    extra_env=extra)
                result = ReplicaBench(bench, cfg).run()
                failed = failed or bool(result["errors"])
                line = json.dumps(result, sort_keys=True)
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
                sys.stderr.write(summary(result) + "\n")
                results.parent.mkdir(parents=True, exist_ok=True)
                with results.open("a", encoding="utf-8") as f:
                    f.write(line + "\n")
    except KeyboardInterrupt:
        bench.log("interrupted; stopping the children")
        return 130
    finally:
        bench.close()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
