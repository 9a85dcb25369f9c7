"""``twist rebreak-idle`` with every garbage collection timed, without touching the daemon.

Used as the daemon command by the runner's ``--gc-log``: a ``gc.callbacks`` hook records
each collection as ``<monotonic seconds> <generation> <milliseconds> <objects collected>``
and writes the lines to ``$BENCH_GC_LOG`` when the process exits. ``time.monotonic`` is
the system-wide CLOCK_MONOTONIC on Linux, so the runner can split the collections by the
phases it timed itself (:func:`summarise`). With ``BENCH_GC_DEFAULT=1`` the daemon's own
collector tuning (:mod:`rebreak_idle.ops.gc_tuning`) is skipped, which measures CPython's
default thresholds for comparison (such runs are kept out of the docs table).
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "summarise"]

_events: list[tuple[float, int, float, int]] = []
_started: list[float] = []


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started.append(time.perf_counter())
    elif _started:
        took = (time.perf_counter() - _started.pop()) * 1000.0
        _events.append((time.monotonic(), info["generation"], took, info["collected"]))


def _write() -> None:
    out = os.environ.get("BENCH_GC_LOG", "gc.txt")
    with open(out, "w", encoding="ascii") as f:
        f.writelines(f"{t:.3f} {gen} {ms:.2f} {n}\n" for t, gen, ms, n in _events)


def summarise(path: Path, phases: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Collections per phase (``name -> (start, end)`` in monotonic seconds): for each
    generation the number of collections and their milliseconds."""
    events = []
    for line in path.read_text(encoding="ascii").splitlines():
        t, gen, ms, _ = line.split()
        events.append((float(t), int(gen), float(ms)))
    out: dict[str, Any] = {}
    for name, (start, end) in phases.items():
        per_gen = {}
        for gen in (0, 1, 2):
            times = [ms for t, g, ms in events if g == gen and start <= t <= end]
            per_gen[f"gen{gen}"] = [len(times), round(sum(times), 1)]
        out[name] = per_gen
    return out


def main() -> None:
    gc.callbacks.append(_callback)
    atexit.register(_write)
    if os.environ.get("BENCH_GC_DEFAULT") == "1":
        from rebreak_idle.ops import gc_tuning

        gc_tuning.tune_for_many_sessions = lambda: None
    from twisted.application.twist._twist import Twist

    Twist.main(["twist", "rebreak-idle", *sys.argv[1:]])


if __name__ == "__main__":
    main()
