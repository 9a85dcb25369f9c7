"""``twist rebreak-idle`` under tracemalloc, without touching the daemon's code.

Used as ``--daemon-cmd '.venv/bin/python -m bench.memprofile'`` (the runner does this with
``--tracemalloc``): tracing starts before the daemon is imported; on SIGUSR1 a snapshot is
taken and the largest allocation sites (by line and by file) are written to
``$BENCH_TRACEMALLOC_OUT``. Tracing slows the daemon down and adds its own memory, so its
figures are for attribution only, never for the table.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import tracemalloc

__all__ = ["main"]


def _dump(signum: int, frame: object) -> None:
    out = os.environ.get("BENCH_TRACEMALLOC_OUT", "tracemalloc.txt")
    t0 = time.monotonic()
    snap = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)])
    current, peak = tracemalloc.get_traced_memory()
    lines = [f"traced: current {current / 1024:.0f} KiB, peak {peak / 1024:.0f} KiB"]
    for key, limit in (("filename", 25), ("lineno", 40)):
        stats = snap.statistics(key)
        lines.append(f"-- top {limit} by {key}")
        for s in stats[:limit]:
            frame0 = s.traceback[0]
            lines.append(f"{s.size / 1024:10.0f} KiB {s.count:9d} blocks  "
                         f"{frame0.filename}:{frame0.lineno}")
    stats = snap.statistics("traceback")
    lines.append("-- top 12 by traceback")
    for s in stats[:12]:
        lines.append(f"{s.size / 1024:10.0f} KiB {s.count:9d} blocks")
        lines += [f"      {f.filename}:{f.lineno}" for f in s.traceback]
    lines.append(f"(snapshot took {time.monotonic() - t0:.1f} s)")
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(out + ".tmp", out)


def main() -> None:
    tracemalloc.start(int(os.environ.get("BENCH_TRACEMALLOC_FRAMES", "8")))
    signal.signal(signal.SIGUSR1, _dump)
    from twisted.application.twist._twist import Twist

    Twist.main(["twist", "rebreak-idle", *sys.argv[1:]])


if __name__ == "__main__":
    main()
