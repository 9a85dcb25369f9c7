"""Renders the figures of ``bench/results.jsonl`` into ``docs/benchmarks.md``.

The table goes between ``<!-- bench:begin -->`` and ``<!-- bench:end -->``; the prose
around it is kept. ``python -m bench.report`` re-renders from the results file; the
latest run of each (N, mode) with the real daemon is shown.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["RESULTS", "load_results", "render_docs", "render_table"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.jsonl"
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

SKELETON = f"""# Benchmarks

Figures of the load benchmark (`bench/`, see `bench/README.md`): the real daemon
(`twist rebreak-idle`, one process) against a load IMAP server and a backend sink, all on
127.0.0.1 of one machine. Re-run with `make bench BENCH_ARGS="--n 100 1000 10000 --tls both"`.

{BEGIN}
{END}
"""


def load_results(path: Path = RESULTS) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _latest(results: list[dict], real_only: bool) -> list[dict]:
    latest: dict[tuple[int, str], dict] = {}
    for r in results:
        if real_only and (not str(r.get("daemon_cmd", "")).endswith("rebreak-idle")
                          or r.get("profiled")
                          or (r.get("config") or {}).get("extra_env", {}).get(
                              "REBREAK_EXTRA_FOLDERS")):
            continue
        latest[(r["n"], r["mode"])] = r
    return [latest[k] for k in sorted(latest)]


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")


def render_table(results: list[dict], real_only: bool = True) -> str:
    rows = _latest(results, real_only)
    if not rows:
        return "_No runs recorded yet: run `python -m bench`._\n"
    m = rows[-1]["machine"]
    lines = [
        f"Machine: {m['nproc']} cores, {m['cpu']}, {m['mem_gib']} GiB memory, Linux "
        f"{m.get('kernel', '?')}; Python {m['python']}, Twisted {m['twisted']}.",
        "",
        "| N | mode | date | connect rate /s | all idling after s | RSS MiB (RSS₀) | "
        "RSS per session KiB | idle CPU % (window, heartbeat) | NOOPs in window | "
        "EXISTS→POST p50 / p95 / p99 / max ms | injected | lost | SQL statements/min |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cfg, t, lat = r.get("config", {}), r.get("targets", {}), r.get("latency_ms") or {}
        big = r["n"] >= 10_000  # the targets are stated for 10,000 sessions
        rss = r.get("rss_kb")
        lines.append(
            f"| {r['n']:,} | {r['mode']} | {r['date'][:10]} | {_fmt(cfg.get('connect_rate'), 0)} "
            f"| {_fmt(r.get('all_idle_s'))}{_mark(t.get('all_idle')) if big else ''} "
            f"| {_fmt(None if rss is None else rss / 1024)} ({_fmt(r['rss0_kb'] / 1024)}) "
            f"| {_fmt(r.get('rss_per_session_kb'))}"
            f"{_mark(t.get('rss_per_session')) if big else ''} "
            f"| {_fmt(r.get('cpu_pct'), 2)}{_mark(t.get('cpu')) if big else ''} "
            f"({_fmt(r.get('cpu_window_s'), 0)} s, {_fmt(cfg.get('heartbeat'), 0)} s) "
            f"| {_fmt(r.get('heartbeats_in_window'))} "
            f"| {_fmt(lat.get('p50'), 2)}{_mark(t.get('p50')) if big else ''} / "
            f"{_fmt(lat.get('p95'), 2)} / {_fmt(lat.get('p99'), 2)}"
            f"{_mark(t.get('p99')) if big else ''} / {_fmt(lat.get('max'), 2)} "
            f"| {_fmt(r.get('injected'))} | {_fmt(r.get('lost'))}"
            f"{_mark(t.get('lost')) if big else ''} "
            f"| {_fmt(r.get('sql_per_min'))}{_mark(t.get('sql')) if big else ''} |")
    errors = [(r["n"], r["mode"], e) for r in rows for e in r.get("errors", [])]
    if errors:
        lines += ["", "Errors of these runs:", ""]
        lines += [f"- N={n:,} {mode}: `{e.splitlines()[0]}`" for n, mode, e in errors]
    lines += ["", "✓/✗: target of the issue met or not (checked at N = 10,000: all idling "
              "≤ 60 s, RSS per session ≤ 25 KiB plain / ≤ 60 KiB TLS, idle CPU ≤ 3 % of one "
              "core, p50 ≤ 5 ms, p99 ≤ 50 ms, no lost event, ≤ 20 SQL statements/min)."]
    return "\n".join(lines) + "\n"


def render_docs(results_path: Path = RESULTS, docs: Path = DOCS) -> str:
    """Rewrite the table of ``docs`` from ``results_path``; returns the table."""
    table = render_table(load_results(results_path))
    text = docs.read_text(encoding="utf-8") if docs.exists() else SKELETON
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(f"{head}{BEGIN}\n{table}{END}{tail}", encoding="utf-8")
    return table


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    results = Path(argv[0]) if argv else RESULTS
    sys.stdout.write(render_docs(results))


if __name__ == "__main__":
    main()
