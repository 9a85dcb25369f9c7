"""Summaries of ``py-spy record --format raw`` output (collapsed stacks).

``python -m bench.profile FILE...`` prints, per file, the functions with most self time and
most inclusive time, and the share of samples per source package. The runner records these
files with ``--profile`` (one per phase: ramp, idle window, injections).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

__all__ = ["summarize"]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for raw in stack.split(";"):
        m = _FRAME.match(raw.strip())
        if m:
            out.append((m.group("func"), _short(m.group("file"))))
    return out


def _package(file: str) -> str:
    parts = file.split("/")
    if parts[0] in ("twisted", "OpenSSL", "cryptography", "treq", "txpostgres", "psycopg2",
                    "prometheus_client", "rebreak_idle", "hyperlink", "service_identity",
                    "zope", "automat", "attr", "idna"):
        return "/".join(parts[:2]) if parts[0] in ("twisted", "rebreak_idle") else parts[0]
    return "stdlib/" + parts[0] if "/" not in file or file.endswith(".py") else file


def summarize(path: Path, top: int = 20) -> str:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = _frames(stack)
        if not frames:
            continue
        total += n
        func, file = frames[-1]
        self_time[f"{func} ({file})"] += n
        packages[_package(file)] += n
        for name in {f"{f} ({fl})" for f, fl in frames}:
            inclusive[name] += n
    if not total:
        return f"{path.name}: no samples\n"
    out = [f"== {path.name}: {total} samples"]
    out.append("-- self time by package")
    out += [f"{100 * c / total:5.1f}%  {name}" for name, c in packages.most_common(top)]
    out.append("-- self time by function")
    out += [f"{100 * c / total:5.1f}%  {name}" for name, c in self_time.most_common(top)]
    out.append("-- inclusive time by function")
    out += [f"{100 * c / total:5.1f}%  {name}" for name, c in inclusive.most_common(top * 2)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    for name in (sys.argv[1:] if argv is None else argv):
        sys.stdout.write(summarize(Path(name)))


if __name__ == "__main__":
    main()
