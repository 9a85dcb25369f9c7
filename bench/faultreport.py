"""The figures of the fault bench (:mod:`bench.faults`), from what its helpers recorded:
which delivered message is covered by which scan, delays, unwatched seconds, logins.

Pure functions on plain records (no processes, no clock), so that they can be checked on
their own (``tests/bench/test_faults.py``).

A message is **covered** by the first scan of its account and mailbox that the backend
answered with a 2xx and that *started* (reached the backend) at or after the message's
delivery: only such a scan can have seen it. Its **delay** is that start minus the
delivery.
"""

from __future__ import annotations

import bisect
import itertools
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from .runner import percentile

__all__ = ["Delivery", "Scan", "Window", "account_windows", "cover", "distribution",
           "from_raw", "label", "summarise", "to_raw", "unwatched_seconds", "window_at"]

#: kinds of window in which the backend is down
BACKEND_DOWN = ("refused", "503", "503+retry-after")


@dataclass(frozen=True)
class Delivery:
    account: str  # connection id
    email: str
    at: float  # wall time the IMAP server stored it
    exists: int
    kind: str  # "sparse" (one message for that account in the whole run) or "dense"
    mailbox: str = "INBOX"


@dataclass(frozen=True)
class Scan:
    account: str
    mailbox: str
    received: float  # wall time the whole request reached the backend
    answered: float
    status: int

    @property
    def acknowledged(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class Window:
    """A fault from ``start`` to ``end``: the whole fleet's (``account`` None) or one
    account's (BYE, silent socket, deaf IDLE: until that account's next login)."""

    kind: str
    start: float
    end: float
    account: str | None = None

    def holds(self, t: float) -> bool:
        return self.start <= t < self.end


def cover(deliveries: Sequence[Delivery], scans: Iterable[Scan]) -> list[Scan | None]:
    """For each delivery (same order), the first acknowledged scan of its account and
    mailbox received at or after it; None when there is none (a miss)."""
    starts: dict[tuple[str, str], list[float]] = defaultdict(list)
    found: dict[tuple[str, str], list[Scan]] = defaultdict(list)
    for scan in sorted((s for s in scans if s.acknowledged), key=lambda s: s.received):
        key = (scan.account, scan.mailbox)
        starts[key].append(scan.received)
        found[key].append(scan)
    out: list[Scan | None] = []
    for d in deliveries:
        key = (d.account, d.mailbox)
        i = bisect.bisect_left(starts.get(key, []), d.at)
        out.append(found[key][i] if i < len(found.get(key, [])) else None)
    return out


def distribution(values: Sequence[float]) -> dict[str, float | int | None]:
    """Count, p50, p99 and max (nearest rank), rounded to milliseconds."""
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    return {"n": len(values), "p50": r(percentile(list(values), 50)),
            "p99": r(percentile(list(values), 99)), "max": r(max(values, default=None))}


def window_at(t: float, windows: Iterable[Window], kinds: Sequence[str] = (),
              account: str | None = None) -> Window | None:
    """The latest-starting window of ``kinds`` (any when empty) that holds ``t``; with
    ``account``, that account's own windows count besides the fleet's."""
    best = None
    for w in windows:
        if kinds and w.kind not in kinds:
            continue
        if w.account is not None and w.account != account:
            continue
        if w.holds(t) and (best is None or w.start > best.start):
            best = w
    return best


def account_windows(faults: Iterable[tuple[str, str, float]],
                    logins: dict[str, list[float]], end: float) -> list[Window]:
    """One window per (kind, account, time) fault, until that account's next login after
    it (``end`` when there is none)."""
    out = []
    for kind, account, t in faults:
        times = sorted(logins.get(account, ()))
        i = bisect.bisect_right(times, t)
        out.append(Window(kind, t, times[i] if i < len(times) else end, account))
    return out


def label(d: Delivery, windows: Sequence[Window]) -> str:
    """What the account went through when ``d`` arrived: a backend-down spell first, then
    its own fault or a daemon kill (until it logged in again), then a database restart;
    ``none`` otherwise."""
    for kinds in (BACKEND_DOWN, ("bye", "silent", "deaf", "daemon-kill", "replica-kill"),
                  ("db-restart",)):
        w = window_at(d.at, windows, kinds, d.account)
        if w is not None:
            return w.kind
    return "none"


def unwatched_seconds(samples: Sequence[tuple[float, frozenset[str] | set[str]]],
                      accounts: Iterable[str]) -> dict[str, float]:
    """Seconds each account was not watched: between two consecutive samples
    ``(time, watched accounts)``, an account missing from the first is counted for the
    whole interval."""
    out = dict.fromkeys(accounts, 0.0)
    for (t0, watched), (t1, _) in itertools.pairwise(samples):
        for account in out:
            if account not in watched:
                out[account] += t1 - t0
    return out


def _spread(values: Iterable[float]) -> dict[str, float | None]:
    vals = sorted(values)
    if not vals:
        return {"min": None, "median": None, "max": None}
    return {"min": round(vals[0], 1), "median": round(statistics.median(vals), 1),
            "max": round(vals[-1], 1)}


def from_raw(raw: dict) -> dict:
    """:func:`summarise` of what :func:`to_raw` saved."""
    return summarise(
        [Delivery(**d) for d in raw["deliveries"]], [Scan(**s) for s in raw["scans"]],
        [Window(**w) for w in raw["windows"]], raw["t0"],
        samples=[(t, frozenset(raw["accounts"]) - set(unwatched))
                 for t, unwatched in raw["unwatched_samples"]],
        accounts=raw["accounts"], logins=raw["logins"], rss_kb=raw["rss_kb"])


def to_raw(deliveries: Sequence[Delivery], scans: Sequence[Scan], windows: Sequence[Window],
           t0: float, samples: Sequence[tuple[float, frozenset[str] | set[str]]],
           accounts: Sequence[str], logins: dict[str, list[float]], rss_kb: Sequence[int]
           ) -> dict:
    """What :func:`summarise` needs, as JSON (samples as the unwatched accounts)."""
    everyone = set(accounts)
    return {"t0": t0, "deliveries": [asdict(d) for d in deliveries],
            "scans": [asdict(s) for s in scans], "windows": [asdict(w) for w in windows],
            "accounts": list(accounts),
            "unwatched_samples": [[t, sorted(everyone - set(w))] for t, w in samples],
            "logins": logins, "rss_kb": list(rss_kb)}


def summarise(deliveries: Sequence[Delivery], scans: Sequence[Scan],
              windows: Sequence[Window], t0: float, *,
              samples: Sequence[tuple[float, frozenset[str] | set[str]]] = (),
              accounts: Sequence[str] = (), logins: dict[str, list[float]] | None = None,
              rss_kb: Sequence[int] = ()) -> dict:
    """The report of one run as a JSON-able dict (times relative to ``t0``)."""
    covering = cover(deliveries, scans)
    delays: dict[str, list[float]] = defaultdict(list)
    by_label: dict[str, list[float]] = defaultdict(list)
    missed: dict[str, list[dict]] = defaultdict(list)
    for d, scan in zip(deliveries, covering, strict=True):
        tag = label(d, windows)
        if scan is None:
            missed[d.email].append({"at_s": round(d.at - t0, 2), "exists": d.exists,
                                    "kind": d.kind, "during": tag})
            continue
        delay = scan.received - d.at
        inside = tag in BACKEND_DOWN
        delays["inside" if inside else "outside"].append(delay)
        delays[d.kind].append(delay)
        by_label[tag].append(delay)
    spells = []
    for w in windows:
        if w.kind not in BACKEND_DOWN:
            continue
        inside = [(d, s) for d, s in zip(deliveries, covering, strict=True) if w.holds(d.at)]
        after = [s.received - w.end for _, s in inside if s is not None]
        first = min((s.received for s in scans if s.acknowledged and s.received >= w.end),
                    default=None)
        spells.append({
            "kind": w.kind, "from_s": round(w.start - t0, 1), "to_s": round(w.end - t0, 1),
            "delivered": len(inside), "covered": sum(1 for _, s in inside if s is not None),
            "requests": sum(1 for s in scans if w.holds(s.received)),
            "first_2xx_after_return_s": None if first is None else round(first - w.end, 2),
            "covered_after_return_s": distribution([max(0.0, a) for a in after])})
    report: dict = {
        "delivered": len(deliveries),
        "delivered_sparse": sum(1 for d in deliveries if d.kind == "sparse"),
        "delivered_dense": sum(1 for d in deliveries if d.kind == "dense"),
        "covered": sum(1 for s in covering if s is not None),
        "scan_requests": len(scans),
        "scan_requests_acknowledged": sum(1 for s in scans if s.acknowledged),
        "delay_s": {k: distribution(delays.get(k, []))
                    for k in ("inside", "outside", "sparse", "dense")},
        "delay_s_by_fault": {k: distribution(v) for k, v in sorted(by_label.items())},
        "spells": spells,
        "missed": dict(sorted(missed.items())),
        "ids": {d.email: d.account for d in deliveries if d.email in missed},
    }
    report["uncovered"] = report["delivered"] - report["covered"]
    if samples and accounts:
        unwatched = unwatched_seconds(samples, accounts)
        report["unwatched_s"] = _spread(unwatched.values())
        report["unwatched_s"]["total"] = round(sum(unwatched.values()), 1)
    if logins is not None and accounts:
        report["logins"] = _spread(float(len(logins.get(a, ()))) for a in accounts)
    if rss_kb:
        report["rss_mib"] = {"median": round(statistics.median(rss_kb) / 1024, 1),
                             "max": round(max(rss_kb) / 1024, 1), "samples": len(rss_kb)}
    return report
